//! Pod status as a pure function of what the workers recorded about each container.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Which list of the pod spec a container comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// An init container: runs to completion, in order, before the next one starts.
    Init,
    /// A native sidecar (an init container with `restartPolicy: Always`): started in the init
    /// sequence, runs beside the containers, stopped after them.
    Sidecar,
    /// One of `spec.containers`.
    Main,
}

/// What one container is doing, as recorded by its worker.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerRecord {
    pub name: String,
    pub role: Role,
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
    /// A container not yet created. Like the kubelet, containers that wait on init
    /// containers (and the init containers themselves) say `PodInitializing`.
    pub fn new(name: &str, image: &str, role: Role, pod_has_init: bool) -> Self {
        let reason = if role != Role::Main || pod_has_init {
            "PodInitializing"
        } else {
            "ContainerCreating"
        };
        Self {
            name: name.into(),
            role,
            image: image.into(),
            image_id: String::new(),
            container_id: String::new(),
            restart_count: 0,
            state: State::Waiting {
                reason: reason.into(),
                message: None,
            },
            last_terminated: None,
            done: false,
            ever_started: false,
            ready: false,
            started: false,
        }
    }

    fn exited_ok(&self) -> bool {
        matches!(&self.state, State::Terminated(t) if t.exit_code == 0)
    }

    fn running(&self) -> bool {
        matches!(self.state, State::Running { .. })
    }

    /// Done with the init sequence: an init container that succeeded, a sidecar that started.
    fn initialized(&self) -> bool {
        match self.role {
            Role::Init => self.done && self.exited_ok(),
            Role::Sidecar => self.ever_started,
            Role::Main => true,
        }
    }

    /// Counts toward the pod's readiness: running and ready (init containers never do).
    fn ready_now(&self) -> bool {
        self.running() && self.ready
    }
}

/// Whether every init container has completed and every sidecar has started.
pub fn initialized(records: &[ContainerRecord]) -> bool {
    records.iter().all(ContainerRecord::initialized)
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
    let running = r.running();
    // A completed init container reports ready, as the kubelet does.
    let ready = match r.role {
        Role::Init => r.exited_ok(),
        _ => running && r.ready,
    };
    ContainerStatus {
        name: r.name.clone(),
        image: r.image.clone(),
        image_id: r.image_id.clone(),
        container_id: (!r.container_id.is_empty()).then(|| r.container_id.clone()),
        ready,
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

/// The pod phase: Failed once an init container failed for good; Pending until the init
/// sequence is through and a container started; Succeeded/Failed once every container is
/// done (sidecars do not count); otherwise Running.
pub fn phase(records: &[ContainerRecord]) -> &'static str {
    let init_failed = records.iter().any(|r| {
        r.role == Role::Init
            && r.done
            && matches!(&r.state, State::Terminated(t) if t.exit_code != 0)
    });
    if init_failed {
        return "Failed";
    }
    let main: Vec<_> = records.iter().filter(|r| r.role == Role::Main).collect();
    if !main.is_empty()
        && main
            .iter()
            .all(|r| r.done && matches!(r.state, State::Terminated(_)))
    {
        let ok = main.iter().all(|r| r.exited_ok());
        return if ok { "Succeeded" } else { "Failed" };
    }
    if initialized(records) && main.iter().any(|r| r.ever_started) {
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
    pod_ip: Option<&str>,
    start_time: jiff::Timestamp,
) -> PodStatus {
    let now = Time(jiff::Timestamp::now());
    let initialized = initialized(records);
    let unready: Vec<&str> = records
        .iter()
        .filter(|r| r.role != Role::Init && !r.ready_now())
        .map(|r| r.name.as_str())
        .collect();
    let all_ready = initialized && unready.is_empty();
    let incomplete: Vec<&str> = records
        .iter()
        .filter(|r| !r.initialized())
        .map(|r| r.name.as_str())
        .collect();
    let phase = phase(records);
    let old = pod.status.clone().unwrap_or_default();
    let cond = |ty: &str, ok: bool, reason: Option<&str>, message: Option<String>| {
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
            message,
            last_transition_time: prev.or_else(|| Some(now.clone())),
            ..Default::default()
        }
    };
    let not_ready = (!all_ready).then_some(if phase == "Succeeded" || phase == "Failed" {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    });
    let unready_msg =
        (!all_ready).then(|| format!("containers with unready status: [{}]", unready.join(" ")));
    let (inits, mains): (Vec<_>, Vec<_>) = records.iter().partition(|r| r.role != Role::Main);
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(vec![
            cond("PodReadyToStartContainers", true, None, None),
            cond(
                "Initialized",
                initialized,
                (!initialized).then_some("ContainersNotInitialized"),
                (!initialized).then(|| {
                    format!(
                        "containers with incomplete status: [{}]",
                        incomplete.join(" ")
                    )
                }),
            ),
            cond("Ready", all_ready, not_ready, unready_msg.clone()),
            cond("ContainersReady", all_ready, not_ready, unready_msg),
            cond("PodScheduled", true, None, None),
        ]),
        host_ip: Some(host_ip.into()),
        host_ips: Some(vec![k8s_openapi::api::core::v1::HostIP {
            ip: host_ip.into(),
        }]),
        pod_ip: pod_ip.map(str::to_string),
        pod_ips: pod_ip.map(|ip| vec![PodIP { ip: ip.into() }]),
        start_time: Some(Time(start_time)),
        init_container_statuses: (!inits.is_empty())
            .then(|| inits.into_iter().map(container_status).collect()),
        container_statuses: Some(mains.into_iter().map(container_status).collect()),
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
        let mut a = ContainerRecord::new("a", "img", Role::Main, false);
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
        let mut a = ContainerRecord::new("a", "img", Role::Main, false);
        a.state = State::Waiting {
            reason: "ErrImagePull".into(),
            message: Some("manifest unknown".into()),
        };
        let pod = Pod::default();
        let s = pod_status(
            &pod,
            &[a],
            "10.0.2.15",
            Some("10.244.0.5"),
            jiff::Timestamp::now(),
        );
        let w = s.container_statuses.unwrap()[0]
            .state
            .clone()
            .unwrap()
            .waiting
            .unwrap();
        assert_eq!(w.reason.as_deref(), Some("ErrImagePull"));
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        assert_eq!(s.pod_ip.as_deref(), Some("10.244.0.5"));
        assert_eq!(s.host_ip.as_deref(), Some("10.0.2.15"));
    }

    #[test]
    fn init_containers_gate_the_pod() {
        let mut init = ContainerRecord::new("i", "img", Role::Init, true);
        let mut side = ContainerRecord::new("s", "img", Role::Sidecar, true);
        let mut main = ContainerRecord::new("m", "img", Role::Main, true);
        let status = |r: &[ContainerRecord]| {
            pod_status(
                &Pod::default(),
                r,
                "10.0.2.15",
                None,
                jiff::Timestamp::now(),
            )
        };
        let cond = |s: &PodStatus, ty: &str| {
            s.conditions
                .as_ref()
                .unwrap()
                .iter()
                .find(|c| c.type_ == ty)
                .unwrap()
                .clone()
        };
        let recs = [init.clone(), side.clone(), main.clone()];
        let s = status(&recs);
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        let c = cond(&s, "Initialized");
        assert_eq!(
            (c.status.as_str(), c.reason.as_deref()),
            ("False", Some("ContainersNotInitialized"))
        );
        assert_eq!(
            c.message.as_deref(),
            Some("containers with incomplete status: [i s]")
        );
        assert_eq!(s.init_container_statuses.as_ref().unwrap().len(), 2);
        let w = s.container_statuses.as_ref().unwrap()[0]
            .state
            .clone()
            .unwrap()
            .waiting
            .unwrap();
        assert_eq!(w.reason.as_deref(), Some("PodInitializing"));

        // The init container fails for good: the pod fails.
        init.state = term(1);
        init.done = true;
        assert_eq!(phase(&[init.clone(), side.clone(), main.clone()]), "Failed");

        // It succeeds, the sidecar and the main container run: Running and, once all are
        // ready, Ready; the completed init container reports ready.
        init.state = term(0);
        for r in [&mut side, &mut main] {
            r.ever_started = true;
            r.started = true;
            r.state = State::Running {
                started_at: jiff::Timestamp::now(),
            };
        }
        main.ready = true;
        let s = status(&[init.clone(), side.clone(), main.clone()]);
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&s, "Initialized").status, "True");
        let r = cond(&s, "Ready");
        assert_eq!(
            (r.status.as_str(), r.message.as_deref()),
            ("False", Some("containers with unready status: [s]"))
        );
        assert!(s.init_container_statuses.as_ref().unwrap()[0].ready);
        side.ready = true;
        assert_eq!(
            cond(
                &status(&[init.clone(), side.clone(), main.clone()]),
                "Ready"
            )
            .status,
            "True"
        );

        // The main container completes: Succeeded, whatever the sidecar does.
        main.state = term(0);
        main.done = true;
        assert_eq!(phase(&[init, side, main]), "Succeeded");
    }
}
