//! Pod status as a pure function of what the workers recorded about each container.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// What one container is doing, as recorded by its worker.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerRecord {
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub container_id: String,
    pub restart_count: i32,
    pub state: State,
    pub last_terminated: Option<Terminated>,
    /// The container will not run again (restart policy says so, or the pod is terminating).
    pub done: bool,
    pub ever_started: bool,
    /// Readiness, as its probe (or, without one, the startup) says.
    pub ready: bool,
    /// The startup probe passed (or there is none) since the container last started.
    pub started: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum State {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: jiff::Timestamp,
    },
    Terminated(Terminated),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Terminated {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub reason: String,
    pub message: Option<String>,
    pub started_at: Option<jiff::Timestamp>,
    pub finished_at: jiff::Timestamp,
}

impl ContainerRecord {
    pub fn new(name: &str, image: &str) -> Self {
        Self {
            name: name.into(),
            image: image.into(),
            image_id: String::new(),
            container_id: String::new(),
            restart_count: 0,
            state: State::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
            },
            last_terminated: None,
            done: false,
            ever_started: false,
            ready: false,
            started: false,
        }
    }
}

fn term_state(t: &Terminated, container_id: &str) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: t.exit_code,
        signal: t.signal,
        reason: Some(t.reason.clone()),
        message: t.message.clone(),
        started_at: t.started_at.map(Time),
        finished_at: Some(Time(t.finished_at)),
        container_id: (!container_id.is_empty()).then(|| container_id.to_string()),
    }
}

fn container_status(r: &ContainerRecord) -> ContainerStatus {
    let state = match &r.state {
        State::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..Default::default()
        },
        State::Running { started_at } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(Time(*started_at)),
            }),
            ..Default::default()
        },
        State::Terminated(t) => ContainerState {
            terminated: Some(term_state(t, &r.container_id)),
            ..Default::default()
        },
    };
    let running = matches!(r.state, State::Running { .. });
    ContainerStatus {
        name: r.name.clone(),
        image: r.image.clone(),
        image_id: r.image_id.clone(),
        container_id: (!r.container_id.is_empty()).then(|| r.container_id.clone()),
        ready: running && r.ready,
        started: Some(running && r.started),
        restart_count: r.restart_count,
        state: Some(state),
        last_state: r.last_terminated.as_ref().map(|t| ContainerState {
            terminated: Some(term_state(t, "")),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pod phase: Pending until a container started; Succeeded/Failed once every container is
/// done; otherwise Running.
pub fn phase(records: &[ContainerRecord]) -> &'static str {
    if !records.is_empty()
        && records
            .iter()
            .all(|r| r.done && matches!(r.state, State::Terminated(_)))
    {
        let ok = records
            .iter()
            .all(|r| matches!(&r.state, State::Terminated(t) if t.exit_code == 0));
        return if ok { "Succeeded" } else { "Failed" };
    }
    if records.iter().any(|r| r.ever_started) {
        "Running"
    } else {
        "Pending"
    }
}

/// The full status the agent reports for `pod`.
pub fn pod_status(
    pod: &Pod,
    records: &[ContainerRecord],
    host_ip: &str,
    pod_ip: &str,
    start_time: jiff::Timestamp,
) -> PodStatus {
    let now = Time(jiff::Timestamp::now());
    let all_ready = !records.is_empty()
        && records
            .iter()
            .all(|r| r.ready && matches!(r.state, State::Running { .. }));
    let phase = phase(records);
    let old = pod.status.clone().unwrap_or_default();
    let cond = |ty: &str, ok: bool, reason: Option<&str>| {
        let status = if ok { "True" } else { "False" };
        // Keep the transition time when the condition did not change.
        let prev = old
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == ty && c.status == status)
            .and_then(|c| c.last_transition_time.clone());
        PodCondition {
            type_: ty.into(),
            status: status.into(),
            reason: reason.map(str::to_string),
            last_transition_time: prev.or_else(|| Some(now.clone())),
            ..Default::default()
        }
    };
    let not_ready = (!all_ready).then_some(if phase == "Succeeded" || phase == "Failed" {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    });
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(vec![
            cond("PodReadyToStartContainers", true, None),
            cond("Initialized", true, None),
            cond("Ready", all_ready, not_ready),
            cond("ContainersReady", all_ready, not_ready),
            cond("PodScheduled", true, None),
        ]),
        host_ip: Some(host_ip.into()),
        host_ips: Some(vec![k8s_openapi::api::core::v1::HostIP {
            ip: host_ip.into(),
        }]),
        pod_ip: Some(pod_ip.into()),
        pod_ips: Some(vec![PodIP { ip: pod_ip.into() }]),
        start_time: Some(Time(start_time)),
        container_statuses: Some(records.iter().map(container_status).collect()),
        qos_class: old.qos_class.or(Some("BestEffort".into())),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn term(code: i32) -> State {
        State::Terminated(Terminated {
            exit_code: code,
            signal: None,
            reason: "Completed".into(),
            message: None,
            started_at: None,
            finished_at: jiff::Timestamp::now(),
        })
    }

    #[test]
    fn phases() {
        let mut a = ContainerRecord::new("a", "img");
        assert_eq!(phase(std::slice::from_ref(&a)), "Pending");
        a.ever_started = true;
        a.state = State::Running {
            started_at: jiff::Timestamp::now(),
        };
        assert_eq!(phase(std::slice::from_ref(&a)), "Running");
        a.state = term(0);
        assert_eq!(
            phase(std::slice::from_ref(&a)),
            "Running",
            "not done: it will restart"
        );
        a.done = true;
        assert_eq!(phase(std::slice::from_ref(&a)), "Succeeded");
        let mut b = a.clone();
        b.state = term(2);
        assert_eq!(phase(&[a, b]), "Failed");
    }

    #[test]
    fn waiting_reason_is_reported() {
        let mut a = ContainerRecord::new("a", "img");
        a.state = State::Waiting {
            reason: "ErrImagePull".into(),
            message: Some("manifest unknown".into()),
        };
        let pod = Pod::default();
        let s = pod_status(&pod, &[a], "10.0.2.15", "10.0.2.15", jiff::Timestamp::now());
        let w = s.container_statuses.unwrap()[0]
            .state
            .clone()
            .unwrap()
            .waiting
            .unwrap();
        assert_eq!(w.reason.as_deref(), Some("ErrImagePull"));
        assert_eq!(s.phase.as_deref(), Some("Pending"));
    }
}
