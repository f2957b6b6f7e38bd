use super::*;
use crate::supervisor::RestartPolicy;

#[test]
fn line_buffer_splits_and_bounds_lines() {
    let mut b = LineBuffer::default();
    assert_eq!(b.push(b"one\ntw"), ["one"]);
    assert_eq!(b.push(b"o\n\nthree"), ["two", ""]);
    assert_eq!(b.finish().as_deref(), Some("three"));
    assert_eq!(b.finish(), None);
    let long = vec![b'x'; MAX_LINE + 10];
    let lines = b.push(&long);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].len(), MAX_LINE);
    assert_eq!(b.finish().map(|s| s.len()), Some(10));
}

fn sh(name: &str, script: &str, restart: RestartPolicy) -> ServiceSpec {
    let mut s = ServiceSpec::new(name, &["/bin/sh", "-c", script], restart);
    s.env.push(("STRAKE_TEST".into(), "1".into()));
    s
}

fn step_until(
    runner: &mut Runner,
    events: &mut Vec<RunnerEvent>,
    what: &str,
    done: impl Fn(&[RunnerEvent]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done(events) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; events: {events:#?}"
        );
        events.extend(runner.step(Duration::from_millis(50)));
    }
}

fn output_of(events: &[RunnerEvent], service: &str) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            RunnerEvent::Output { name, line } if name == service => Some(line.clone()),
            _ => None,
        })
        .collect()
}

/// Real children: output capture, exit routing, restarts, orphans, the signal mask children get,
/// and a signal-driven shutdown. One test, because `waitpid(-1)` would steal children from any
/// other test spawning processes in parallel.
#[test]
fn supervises_real_processes() {
    // Orphans of our services must come to this process, as they would to PID 1.
    nix::sys::prctl::set_child_subreaper(true).expect("subreaper");
    block_signals().expect("block");
    let specs = vec![
        sh(
            "echo",
            "echo hello; echo oops >&2; printf partial; exit 3",
            RestartPolicy::OnFailure,
        ),
        sh(
            "mask",
            "exec grep SigBlk /proc/self/status",
            RestartPolicy::Never,
        ),
        sh("env", "echo env=$STRAKE_TEST", RestartPolicy::Never),
        sh(
            "orphaner",
            "(sleep 0.2; exit 7) & exit 0",
            RestartPolicy::Never,
        ),
        sh("sleeper", "exec sleep 30", RestartPolicy::Always),
        ServiceSpec::new(
            "missing",
            &["/nonexistent/strake-test-binary"],
            RestartPolicy::Always,
        ),
    ];
    let backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(40),
        healthy_after: Duration::from_secs(60),
    };
    let mut runner = Runner::new(specs, backoff, None).expect("runner");
    let mut events = Vec::new();

    step_until(&mut runner, &mut events, "echo to restart", |ev| {
        ev.iter()
            .filter(|e| matches!(e, RunnerEvent::Started { name, .. } if name == "echo"))
            .count()
            >= 2
    });
    let exit = events.iter().find_map(|e| match e {
        RunnerEvent::Exited(d) if d.name == "echo" => Some(d.clone()),
        _ => None,
    });
    let exit = exit.expect("echo exit routed to the supervisor");
    assert_eq!(exit.exit, ChildExit::Exited(3));
    assert_eq!(exit.restart_in, Some(Duration::from_millis(20)));

    step_until(&mut runner, &mut events, "the orphan", |ev| {
        ev.iter().any(|e| {
            matches!(
                e,
                RunnerEvent::Orphan {
                    exit: ChildExit::Exited(7),
                    ..
                }
            )
        }) && !output_of(ev, "mask").is_empty()
            && !output_of(ev, "env").is_empty()
    });
    let echo = output_of(&events, "echo");
    assert_eq!(&echo[..3], ["hello", "oops", "partial"], "{echo:?}");
    // `exec` so that the shell cannot hide an inherited mask by resetting its own.
    assert_eq!(output_of(&events, "mask"), ["SigBlk:\t0000000000000000"]);
    assert_eq!(output_of(&events, "env"), ["env=1"]);
    let orphaner = events.iter().find_map(|e| match e {
        RunnerEvent::Exited(d) if d.name == "orphaner" => Some(d.clone()),
        _ => None,
    });
    assert_eq!(orphaner.expect("orphaner exit").restart_in, None);
    let spawn_failures = events
        .iter()
        .filter(|e| matches!(e, RunnerEvent::SpawnFailed { name, .. } if name == "missing"))
        .count();
    assert!(
        spawn_failures >= 2,
        "a missing binary is retried: {spawn_failures}"
    );

    // SIGUSR2 (power off) arrives through the signalfd; raise() signals this thread only.
    nix::sys::signal::raise(Signal::SIGUSR2).expect("signal");
    let deadline = Instant::now() + Duration::from_secs(15);
    while runner.shutdown_ready().is_none() {
        assert!(
            Instant::now() < deadline,
            "shutdown did not complete: {events:#?}"
        );
        events.extend(runner.step(Duration::from_millis(50)));
    }
    assert_eq!(runner.shutdown_ready(), Some(PowerAction::PowerOff));
    assert!(events.contains(&RunnerEvent::ShutdownRequested(PowerAction::PowerOff)));
    let sleeper = events.iter().rev().find_map(|e| match e {
        RunnerEvent::Exited(d) if d.name == "sleeper" => Some(d.clone()),
        _ => None,
    });
    let sleeper = sleeper.expect("sleeper stopped");
    assert_eq!(
        (sleeper.exit, sleeper.restart_in),
        (ChildExit::Signaled(15), None)
    );
    // Nothing restarts after the shutdown began.
    let started_before = events
        .iter()
        .filter(|e| matches!(e, RunnerEvent::Started { .. }))
        .count();
    for _ in 0..3 {
        events.extend(runner.step(Duration::from_millis(30)));
    }
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, RunnerEvent::Started { .. }))
            .count(),
        started_before
    );
    runner.reap_until_empty(Instant::now() + Duration::from_secs(2));
}
