//! Container lifecycle hooks: `postStart` runs right after the container starts (it counts as
//! started once the hook returns; a failure kills it and the restart policy applies), and
//! `preStop` runs before the stop signal, inside the grace period. Handlers are exec and
//! httpGet (run as a probe check is), `sleep`, and the deprecated tcpSocket (a connect).

use std::time::Duration;

use k8s_openapi::api::core::v1::{LifecycleHandler, Probe};

use crate::probe::{self, Target, Verdict};

/// Which hook, in the words of upstream's Events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    PostStart,
    PreStop,
}

impl Hook {
    /// The Event reason of a failure.
    pub fn failure_reason(self) -> &'static str {
        match self {
            Hook::PostStart => "FailedPostStartHook",
            Hook::PreStop => "FailedPreStopHook",
        }
    }
}

/// Runs `handler` for at most `limit`; the error says what failed.
pub async fn run(
    handler: &LifecycleHandler,
    target: &Target,
    limit: Duration,
) -> Result<(), String> {
    if let Some(s) = &handler.sleep {
        let secs = u64::try_from(s.seconds)
            .map_err(|_| format!("invalid sleep duration {}", s.seconds))?;
        tokio::time::sleep(Duration::from_secs(secs).min(limit)).await;
        return Ok(());
    }
    // As a probe check with the hook's time limit (at least a second).
    let probe = Probe {
        exec: handler.exec.clone(),
        http_get: handler.http_get.clone(),
        tcp_socket: handler.tcp_socket.clone(),
        timeout_seconds: Some(limit.as_secs().clamp(1, i32::MAX as u64) as i32),
        ..Default::default()
    };
    if probe.exec.is_none() && probe.http_get.is_none() && probe.tcp_socket.is_none() {
        return Err("the hook has no handler (exec, httpGet, sleep or tcpSocket)".into());
    }
    match probe::check(&probe, target).await {
        Verdict::Success => Ok(()),
        Verdict::Failure(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use k8s_openapi::api::core::v1::{ExecAction, SleepAction};

    fn target(code: i32) -> Target {
        let exec: probe::ExecFn = Arc::new(move |args, _| {
            Box::pin(async move { Ok((code, format!("ran {}", args.join(" ")))) })
        });
        Target {
            ip: "127.0.0.1".into(),
            ports: Vec::new(),
            exec: Some(exec),
        }
    }

    fn exec(cmd: &[&str]) -> LifecycleHandler {
        LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(cmd.iter().map(|s| s.to_string()).collect()),
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn exec_hooks_succeed_or_say_why() {
        let limit = Duration::from_secs(5);
        assert_eq!(run(&exec(&["true"]), &target(0), limit).await, Ok(()));
        let err = run(&exec(&["false"]), &target(3), limit).await.unwrap_err();
        assert!(err.contains("exited with 3"), "{err}");
        let none = run(&LifecycleHandler::default(), &target(0), limit).await;
        assert!(none.unwrap_err().contains("no handler"));
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_hooks_are_bounded_by_the_limit() {
        let h = LifecycleHandler {
            sleep: Some(SleepAction { seconds: 600 }),
            ..Default::default()
        };
        let began = tokio::time::Instant::now();
        run(&h, &target(0), Duration::from_secs(3)).await.unwrap();
        assert_eq!(began.elapsed().as_secs(), 3);
    }
}
