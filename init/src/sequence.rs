//! Boot phases as data (Talos-style): a sequence is a list of named phases, each a list of named
//! tasks run in order against a context. The sequencer logs each phase with its duration and stops
//! at the first failing task, naming the phase and the task.

use std::fmt;
use std::time::{Duration, Instant};

/// One step of a phase. `run` gets the whole context (the kernel seams plus what earlier tasks
/// learned, e.g. the chosen network interface).
pub struct Task<C, E> {
    pub name: &'static str,
    pub run: fn(&mut C) -> Result<(), E>,
}

/// A named group of tasks.
pub struct Phase<C, E> {
    pub name: &'static str,
    pub tasks: Vec<Task<C, E>>,
}

impl<C, E> Phase<C, E> {
    pub fn new(name: &'static str, tasks: Vec<Task<C, E>>) -> Self {
        Phase { name, tasks }
    }
}

/// Shorthand for building a [`Task`].
pub fn task<C, E>(name: &'static str, run: fn(&mut C) -> Result<(), E>) -> Task<C, E> {
    Task { name, run }
}

/// The first failure of a sequence.
#[derive(Debug)]
pub struct SequenceError<E> {
    pub phase: &'static str,
    pub task: &'static str,
    pub source: E,
}

impl<E: fmt::Display> fmt::Display for SequenceError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "phase `{}` failed in task `{}`: {}",
            self.phase, self.task, self.source
        )
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for SequenceError<E> {}

/// What ran, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseReport {
    pub name: &'static str,
    pub duration: Duration,
}

/// Runs `phases` in order; stops at the first failing task.
pub fn run_sequence<C, E: fmt::Display>(
    phases: &[Phase<C, E>],
    ctx: &mut C,
) -> Result<Vec<PhaseReport>, SequenceError<E>> {
    let mut reports = Vec::with_capacity(phases.len());
    for phase in phases {
        let start = Instant::now();
        tracing::info!(target: "strake_init::sequence", "phase {} starting", phase.name);
        for t in &phase.tasks {
            tracing::debug!(target: "strake_init::sequence", "phase {}: task {}", phase.name, t.name);
            if let Err(source) = (t.run)(ctx) {
                let elapsed = start.elapsed();
                tracing::error!(
                    target: "strake_init::sequence",
                    "phase {} failed after {:.3}s in task {}: {source}",
                    phase.name,
                    elapsed.as_secs_f64(),
                    t.name
                );
                return Err(SequenceError {
                    phase: phase.name,
                    task: t.name,
                    source,
                });
            }
        }
        let duration = start.elapsed();
        tracing::info!(
            target: "strake_init::sequence",
            "phase {} done in {:.3}s",
            phase.name,
            duration.as_secs_f64()
        );
        reports.push(PhaseReport {
            name: phase.name,
            duration,
        });
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Ctx {
        ran: Vec<&'static str>,
    }

    fn a(c: &mut Ctx) -> Result<(), String> {
        c.ran.push("a");
        Ok(())
    }
    fn b(c: &mut Ctx) -> Result<(), String> {
        c.ran.push("b");
        Err("disk on fire".into())
    }
    fn never(c: &mut Ctx) -> Result<(), String> {
        c.ran.push("never");
        Ok(())
    }

    #[test]
    fn runs_in_order_and_stops_at_first_failure() {
        let phases = vec![
            Phase::new("one", vec![task("a", a)]),
            Phase::new(
                "two",
                vec![task("a-again", a), task("b", b), task("never", never)],
            ),
            Phase::new("three", vec![task("never", never)]),
        ];
        let mut ctx = Ctx::default();
        let err = run_sequence(&phases, &mut ctx).expect_err("must fail");
        assert_eq!(ctx.ran, ["a", "a", "b"]);
        assert_eq!((err.phase, err.task), ("two", "b"));
        assert_eq!(
            err.to_string(),
            "phase `two` failed in task `b`: disk on fire"
        );
    }

    #[test]
    fn reports_every_phase_on_success() {
        let phases = vec![
            Phase::new("one", vec![task("a", a)]),
            Phase::new("two", vec![]),
        ];
        let mut ctx = Ctx::default();
        let reports = run_sequence(&phases, &mut ctx).expect("ok");
        assert_eq!(
            reports.iter().map(|r| r.name).collect::<Vec<_>>(),
            ["one", "two"]
        );
    }
}
