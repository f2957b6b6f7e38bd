use serde_json::{Value, json};

use super::*;

fn spec(v: Value) -> PodSpec {
    serde_json::from_value(v).expect("a valid pod spec")
}

/// A pod that meets the restricted level, and so every level.
fn compliant() -> Value {
    json!({
        "securityContext": {
            "runAsNonRoot": true,
            "seccompProfile": {"type": "RuntimeDefault"}
        },
        "containers": [{
            "name": "c",
            "image": "busybox",
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"]}
            }
        }]
    })
}

/// Sets the value at a `/`-separated path (numbers index arrays), creating objects on the way.
fn set(v: &mut Value, path: &str, value: Value) {
    let mut cur = v;
    for key in path.split('/') {
        cur = match key.parse::<usize>() {
            Ok(i) => &mut cur[i],
            Err(_) => &mut cur[key],
        };
    }
    *cur = value;
}

/// The compliant pod with one field changed.
fn with(path: &str, value: Value) -> PodSpec {
    let mut v = compliant();
    set(&mut v, path, value);
    spec(v)
}

fn ids(level: Level, spec: &PodSpec) -> Vec<&'static str> {
    check(level, &ObjectMeta::default(), spec)
        .into_iter()
        .map(|v| v.check)
        .collect()
}

/// The single violation a pod has at `level`, asserting there is exactly one.
fn only(level: Level, meta: &ObjectMeta, spec: &PodSpec) -> Violation {
    let mut found = check(level, meta, spec);
    assert_eq!(found.len(), 1, "expected one violation, got {found:?}");
    found.remove(0)
}

fn violation(check: &'static str, reason: &str, detail: &str) -> Violation {
    Violation {
        check,
        reason: reason.to_string(),
        detail: detail.to_string(),
    }
}

fn annotated(key: &str, value: &str) -> ObjectMeta {
    ObjectMeta {
        annotations: Some(BTreeMap::from([(key.to_string(), value.to_string())])),
        ..ObjectMeta::default()
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn levels_order_and_parse() {
    assert!(Level::Privileged < Level::Baseline);
    assert!(Level::Baseline < Level::Restricted);
    for level in [Level::Privileged, Level::Baseline, Level::Restricted] {
        assert_eq!(level.as_str().parse::<Level>(), Ok(level));
        assert_eq!(level.to_string(), level.as_str());
    }
    let err = "Restricted".parse::<Level>().unwrap_err();
    assert!(err.contains("\"Restricted\""), "{err}");
    assert!("".parse::<Level>().is_err());
}

#[test]
fn policy_label() {
    assert_eq!(Policy::new(Level::Restricted).label(), "restricted:latest");
    let p = Policy {
        level: Level::Baseline,
        version: "v1.30".into(),
    };
    assert_eq!(p.label(), "baseline:v1.30");
    assert_eq!(p.to_string(), "baseline:v1.30");
    assert_eq!(Policy::default().label(), "privileged:latest");
}

#[test]
fn check_order_is_upstreams() {
    let of = |level: Level| -> Vec<&str> {
        CHECKS
            .iter()
            .filter(|c| c.level == level)
            .map(|c| c.id)
            .collect()
    };
    let (baseline, restricted) = (of(Level::Baseline), of(Level::Restricted));
    for group in [&baseline, &restricted] {
        let mut sorted = group.clone();
        sorted.sort_unstable();
        assert_eq!(group, &sorted);
    }
    assert_eq!((baseline.len(), restricted.len()), (11, 6));
    // Restricted: the kept baseline checks, then the restricted ones.
    let overridden: Vec<&str> = CHECKS
        .iter()
        .filter(|c| c.replaced_at_restricted)
        .map(|c| c.id)
        .collect();
    assert_eq!(
        overridden,
        [
            "capabilities_baseline",
            "hostPathVolumes",
            "seccompProfile_baseline"
        ]
    );
    assert!(CHECKS.iter().position(|c| c.level == Level::Restricted) == Some(baseline.len()));
}

#[test]
fn compliant_pod_passes_every_level() {
    let s = spec(compliant());
    for level in [Level::Privileged, Level::Baseline, Level::Restricted] {
        let found = check(level, &ObjectMeta::default(), &s);
        assert!(found.is_empty(), "{level}: {found:?}");
    }
}

#[test]
fn default_pod_passes_baseline_but_not_restricted() {
    let s = spec(json!({"containers": [{"name": "c", "image": "busybox"}]}));
    assert!(ids(Level::Baseline, &s).is_empty());
    let found = check(Level::Restricted, &ObjectMeta::default(), &s);
    assert_eq!(
        found.iter().map(|v| v.check).collect::<Vec<_>>(),
        [
            "allowPrivilegeEscalation",
            "capabilities_restricted",
            "runAsNonRoot",
            "seccompProfile_restricted"
        ]
    );
    assert_eq!(
        message("restricted:latest", &found),
        "violates PodSecurity \"restricted:latest\": \
         allowPrivilegeEscalation != false (container \"c\" must set securityContext.allowPrivilegeEscalation=false), \
         unrestricted capabilities (container \"c\" must set securityContext.capabilities.drop=[\"ALL\"]), \
         runAsNonRoot != true (pod or container \"c\" must set securityContext.runAsNonRoot=true), \
         seccompProfile (pod or container \"c\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
    );
    assert_eq!(
        reasons(&found),
        "allowPrivilegeEscalation != false, unrestricted capabilities, runAsNonRoot != true, seccompProfile"
    );
    assert!(warning("restricted:latest", &found).starts_with(
        "would violate PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false ("
    ));
}

#[test]
fn privileged_level_checks_nothing() {
    let mut v = compliant();
    set(&mut v, "hostNetwork", json!(true));
    set(
        &mut v,
        "containers/0/securityContext/privileged",
        json!(true),
    );
    set(
        &mut v,
        "volumes",
        json!([{"name": "root", "hostPath": {"path": "/"}}]),
    );
    let s = spec(v);
    assert!(ids(Level::Privileged, &s).is_empty());
    assert_eq!(
        ids(Level::Baseline, &s),
        ["hostNamespaces", "hostPathVolumes", "privileged"]
    );
}

#[test]
fn message_without_detail() {
    let v = [violation("x", "bad", ""), violation("y", "worse", "why")];
    assert_eq!(
        message("baseline:v1.30", &v),
        "violates PodSecurity \"baseline:v1.30\": bad, worse (why)"
    );
}

// Baseline checks.

#[test]
fn host_namespaces() {
    let mut v = compliant();
    set(&mut v, "hostNetwork", json!(true));
    set(&mut v, "hostPID", json!(true));
    set(&mut v, "hostIPC", json!(false));
    let s = spec(v);
    assert_eq!(
        only(Level::Baseline, &ObjectMeta::default(), &s),
        violation(
            "hostNamespaces",
            "host namespaces",
            "hostNetwork=true, hostPID=true"
        )
    );
    assert_eq!(ids(Level::Restricted, &s), ["hostNamespaces"]);
}

#[test]
fn privileged_containers() {
    let s = with("containers/0/securityContext/privileged", json!(true));
    assert_eq!(
        only(Level::Baseline, &ObjectMeta::default(), &s),
        violation(
            "privileged",
            "privileged",
            "container \"c\" must not set securityContext.privileged=true"
        )
    );
    assert_eq!(ids(Level::Restricted, &s), ["privileged"]);
    assert!(
        ids(
            Level::Baseline,
            &with("containers/0/securityContext/privileged", json!(false))
        )
        .is_empty()
    );
}

#[test]
fn init_and_ephemeral_containers_are_checked() {
    let mut v = compliant();
    set(
        &mut v,
        "initContainers",
        json!([{"name": "i", "image": "x", "securityContext": {"privileged": true}}]),
    );
    set(
        &mut v,
        "ephemeralContainers",
        json!([{"name": "e", "image": "x", "securityContext": {"privileged": true}}]),
    );
    let s = spec(v);
    assert_eq!(
        only(Level::Baseline, &ObjectMeta::default(), &s).detail,
        "containers \"i\", \"e\" must not set securityContext.privileged=true"
    );
}

#[test]
fn capabilities_baseline() {
    let s = with(
        "containers/0/securityContext/capabilities/add",
        json!(["CHOWN", "SYS_ADMIN"]),
    );
    assert_eq!(
        only(Level::Baseline, &ObjectMeta::default(), &s),
        violation(
            "capabilities_baseline",
            "non-default capabilities",
            "container \"c\" must not include \"SYS_ADMIN\" in securityContext.capabilities.add"
        )
    );
    // Restricted replaces the baseline check with its own, stricter one.
    assert_eq!(
        only(Level::Restricted, &ObjectMeta::default(), &s),
        violation(
            "capabilities_restricted",
            "unrestricted capabilities",
            "container \"c\" must not include \"CHOWN\", \"SYS_ADMIN\" in securityContext.capabilities.add"
        )
    );
    let defaults = with(
        "containers/0/securityContext/capabilities/add",
        json!(["NET_BIND_SERVICE", "KILL"]),
    );
    assert!(ids(Level::Baseline, &defaults).is_empty());
}

#[test]
fn host_path_volumes() {
    let s = with(
        "volumes",
        json!([
            {"name": "a", "hostPath": {"path": "/"}},
            {"name": "ok", "emptyDir": {}},
            {"name": "b", "hostPath": {"path": "/tmp"}}
        ]),
    );
    assert_eq!(
        only(Level::Baseline, &ObjectMeta::default(), &s),
        violation(
            "hostPathVolumes",
            "hostPath volumes",
            "volumes \"a\", \"b\""
        )
    );
    assert_eq!(
        only(Level::Restricted, &ObjectMeta::default(), &s),
        violation(
            "restrictedVolumes",
            "restricted volume types",
            "volumes \"a\", \"b\" use restricted volume type \"hostPath\""
        )
    );
    let one = with("volumes", json!([{"name": "v", "hostPath": {"path": "/"}}]));
    assert_eq!(
        only(Level::Baseline, &ObjectMeta::default(), &one).detail,
        "volume \"v\""
    );
}

#[test]
fn host_ports() {
    let s = with(
        "containers/0/ports",
        json!([{"containerPort": 80, "hostPort": 8080}, {"containerPort": 81}]),
    );
    assert_eq!(
        only(Level::Baseline, &ObjectMeta::default(), &s),
        violation(
            "hostPorts",
            "hostPort",
            "container \"c\" uses hostPort 8080"
        )
    );
    assert_eq!(ids(Level::Restricted, &s), ["hostPorts"]);

    let mut v = compliant();
    set(
        &mut v,
        "containers/0/ports",
        json!([{"containerPort": 80, "hostPort": 9090}, {"containerPort": 81, "hostPort": 10000}]),
    );
    set(
        &mut v,
        "initContainers",
        json!([{"name": "i", "ports": [{"containerPort": 1, "hostPort": 9090}]}]),
    );
    assert_eq!(
        only(Level::Baseline, &ObjectMeta::default(), &spec(v)).detail,
        "containers \"i\", \"c\" use hostPorts 10000, 9090"
    );
}

#[test]
fn app_armor_profile_field() {
    let s = with(
        "securityContext/appArmorProfile",
        json!({"type": "Unconfined"}),
    );
    assert_eq!(
        only(Level::Baseline, &ObjectMeta::default(), &s),
        violation(
            "appArmorProfile",
            "forbidden AppArmor profile",
            "pod must not set AppArmor profile type to \"Unconfined\""
        )
    );
    assert_eq!(ids(Level::Restricted, &s), ["appArmorProfile"]);
    for allowed in ["RuntimeDefault", "Localhost"] {
        let s = with(
            "containers/0/securityContext/appArmorProfile",
            json!({"type": allowed, "localhostProfile": "p"}),
        );
        assert!(ids(Level::Restricted, &s).is_empty(), "{allowed}");
    }
}

#[test]
fn app_armor_profile_annotation() {
    let s = spec(compliant());
    let key = "container.apparmor.security.beta.kubernetes.io/c";
    assert_eq!(
        only(Level::Baseline, &annotated(key, "unconfined"), &s),
        violation(
            "appArmorProfile",
            "forbidden AppArmor profile",
            "annotation must not set AppArmor profile type to \"container.apparmor.security.beta.kubernetes.io/c=\"unconfined\"\""
        )
    );
    for allowed in ["runtime/default", "localhost/my-profile", ""] {
        assert!(
            check(Level::Restricted, &annotated(key, allowed), &s).is_empty(),
            "{allowed}"
        );
    }
    // Other annotations are no concern of this check.
    assert!(
        check(
            Level::Baseline,
            &annotated("example.com/x", "unconfined"),
            &s
        )
        .is_empty()
    );
}

#[test]
fn se_linux_options() {
    let s = with(
        "containers/0/securityContext/seLinuxOptions",
        json!({"type": "spc_t", "user": "root"}),
    );
    assert_eq!(
        only(Level::Baseline, &ObjectMeta::default(), &s),
        violation(
            "seLinuxOptions",
            "seLinuxOptions",
            "container \"c\" set forbidden securityContext.seLinuxOptions: type \"spc_t\"; user may not be set"
        )
    );
    assert_eq!(ids(Level::Restricted, &s), ["seLinuxOptions"]);
    let role = with("securityContext/seLinuxOptions", json!({"role": "r"}));
    assert_eq!(
        only(Level::Baseline, &ObjectMeta::default(), &role).detail,
        "pod set forbidden securityContext.seLinuxOptions: role may not be set"
    );
    let ok = with(
        "securityContext/seLinuxOptions",
        json!({"type": "container_t", "level": "s0:c1,c2"}),
    );
    assert!(ids(Level::Restricted, &ok).is_empty());
}

#[test]
fn proc_mount() {
    let s = with("containers/0/securityContext/procMount", json!("Unmasked"));
    assert_eq!(
        only(Level::Baseline, &ObjectMeta::default(), &s),
        violation(
            "procMount",
            "procMount",
            "container \"c\" must not set securityContext.procMount to \"Unmasked\""
        )
    );
    assert_eq!(ids(Level::Restricted, &s), ["procMount"]);
    let default = with("containers/0/securityContext/procMount", json!("Default"));
    assert!(ids(Level::Restricted, &default).is_empty());
}

#[test]
fn seccomp_profile_baseline() {
    let s = with(
        "securityContext/seccompProfile",
        json!({"type": "Unconfined"}),
    );
    let expected = "pod must not set securityContext.seccompProfile.type to \"Unconfined\"";
    assert_eq!(
        only(Level::Baseline, &ObjectMeta::default(), &s),
        violation("seccompProfile_baseline", "seccompProfile", expected)
    );
    assert_eq!(
        only(Level::Restricted, &ObjectMeta::default(), &s),
        violation("seccompProfile_restricted", "seccompProfile", expected)
    );
    let container = with(
        "containers/0/securityContext/seccompProfile",
        json!({"type": "Unconfined"}),
    );
    assert_eq!(
        only(Level::Baseline, &ObjectMeta::default(), &container).detail,
        "container \"c\" must not set securityContext.seccompProfile.type to \"Unconfined\""
    );
}

#[test]
fn sysctls() {
    let s = with(
        "securityContext/sysctls",
        json!([
            {"name": "kernel.msgmax", "value": "1"},
            {"name": "net.ipv4.tcp_keepalive_time", "value": "60"},
            {"name": "net.core.somaxconn", "value": "1024"}
        ]),
    );
    assert_eq!(
        only(Level::Baseline, &ObjectMeta::default(), &s),
        violation(
            "sysctls",
            "forbidden sysctls",
            "kernel.msgmax, net.core.somaxconn"
        )
    );
    assert_eq!(ids(Level::Restricted, &s), ["sysctls"]);
    let safe: Vec<Value> = SAFE_SYSCTLS
        .iter()
        .map(|name| json!({"name": name, "value": "1"}))
        .collect();
    assert!(
        ids(
            Level::Restricted,
            &with("securityContext/sysctls", json!(safe))
        )
        .is_empty()
    );
}

#[test]
fn windows_host_process() {
    let s = with(
        "securityContext/windowsOptions",
        json!({"hostProcess": true}),
    );
    assert_eq!(
        only(Level::Baseline, &ObjectMeta::default(), &s),
        violation(
            "windowsHostProcess",
            "hostProcess",
            "pod must not set securityContext.windowsOptions.hostProcess=true"
        )
    );
    assert_eq!(ids(Level::Restricted, &s), ["windowsHostProcess"]);
}

// Restricted checks.

#[test]
fn allow_privilege_escalation() {
    let s = with(
        "containers/0/securityContext/allowPrivilegeEscalation",
        json!(true),
    );
    assert!(ids(Level::Baseline, &s).is_empty());
    assert_eq!(
        only(Level::Restricted, &ObjectMeta::default(), &s),
        violation(
            "allowPrivilegeEscalation",
            "allowPrivilegeEscalation != false",
            "container \"c\" must set securityContext.allowPrivilegeEscalation=false"
        )
    );
}

#[test]
fn capabilities_restricted() {
    let s = with(
        "containers/0/securityContext/capabilities",
        json!({"drop": ["NET_RAW"]}),
    );
    assert!(ids(Level::Baseline, &s).is_empty());
    assert_eq!(
        only(Level::Restricted, &ObjectMeta::default(), &s),
        violation(
            "capabilities_restricted",
            "unrestricted capabilities",
            "container \"c\" must set securityContext.capabilities.drop=[\"ALL\"]"
        )
    );
    let both = with(
        "containers/0/securityContext/capabilities",
        json!({"add": ["NET_RAW"]}),
    );
    assert_eq!(
        only(Level::Restricted, &ObjectMeta::default(), &both).detail,
        "container \"c\" must set securityContext.capabilities.drop=[\"ALL\"]; \
         container \"c\" must not include \"NET_RAW\" in securityContext.capabilities.add"
    );
    let bind = with(
        "containers/0/securityContext/capabilities",
        json!({"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}),
    );
    assert!(ids(Level::Restricted, &bind).is_empty());
}

#[test]
fn restricted_volumes() {
    let s = with(
        "volumes",
        json!([{"name": "data", "nfs": {"server": "nas", "path": "/export"}}]),
    );
    assert!(ids(Level::Baseline, &s).is_empty());
    assert_eq!(
        only(Level::Restricted, &ObjectMeta::default(), &s),
        violation(
            "restrictedVolumes",
            "restricted volume types",
            "volume \"data\" uses restricted volume type \"nfs\""
        )
    );
    let allowed = with(
        "volumes",
        json!([
            {"name": "a", "configMap": {"name": "cm"}},
            {"name": "b", "secret": {"secretName": "s"}},
            {"name": "c", "emptyDir": {}},
            {"name": "d", "persistentVolumeClaim": {"claimName": "pvc"}},
            {"name": "e", "projected": {"sources": []}},
            {"name": "f", "downwardAPI": {}},
            {"name": "g", "csi": {"driver": "d"}},
            {"name": "h", "ephemeral": {}},
            {"name": "i", "image": {"reference": "busybox"}}
        ]),
    );
    assert!(ids(Level::Restricted, &allowed).is_empty());
}

#[test]
fn run_as_non_root() {
    let explicit = with("containers/0/securityContext/runAsNonRoot", json!(false));
    assert!(ids(Level::Baseline, &explicit).is_empty());
    assert_eq!(
        only(Level::Restricted, &ObjectMeta::default(), &explicit),
        violation(
            "runAsNonRoot",
            "runAsNonRoot != true",
            "container \"c\" must not set securityContext.runAsNonRoot=false"
        )
    );
    let unset = with("securityContext/runAsNonRoot", Value::Null);
    assert_eq!(
        only(Level::Restricted, &ObjectMeta::default(), &unset).detail,
        "pod or container \"c\" must set securityContext.runAsNonRoot=true"
    );
    let mut v = compliant();
    set(&mut v, "securityContext/runAsNonRoot", Value::Null);
    set(
        &mut v,
        "containers/0/securityContext/runAsNonRoot",
        json!(true),
    );
    assert!(ids(Level::Restricted, &spec(v)).is_empty());
}

#[test]
fn run_as_user() {
    let s = with("securityContext/runAsUser", json!(0));
    assert!(ids(Level::Baseline, &s).is_empty());
    assert_eq!(
        only(Level::Restricted, &ObjectMeta::default(), &s),
        violation("runAsUser", "runAsUser=0", "pod must not set runAsUser=0")
    );
    assert!(
        ids(
            Level::Restricted,
            &with("securityContext/runAsUser", json!(1000))
        )
        .is_empty()
    );
}

#[test]
fn seccomp_profile_restricted() {
    let unset = with("securityContext/seccompProfile", Value::Null);
    assert!(ids(Level::Baseline, &unset).is_empty());
    assert_eq!(
        only(Level::Restricted, &ObjectMeta::default(), &unset),
        violation(
            "seccompProfile_restricted",
            "seccompProfile",
            "pod or container \"c\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\""
        )
    );
    let mut v = compliant();
    set(&mut v, "securityContext/seccompProfile", Value::Null);
    set(
        &mut v,
        "containers/0/securityContext/seccompProfile",
        json!({"type": "Localhost", "localhostProfile": "p.json"}),
    );
    assert!(ids(Level::Restricted, &spec(v)).is_empty());
}

#[test]
fn windows_pods_are_exempt_from_linux_only_fields() {
    let s = spec(json!({
        "os": {"name": "windows"},
        "securityContext": {"runAsNonRoot": true},
        "containers": [{"name": "c", "image": "mcr.microsoft.com/windows/nanoserver"}]
    }));
    assert!(ids(Level::Restricted, &s).is_empty());
}

// Namespace labels.

#[test]
fn namespace_policy_defaults() {
    let p = namespace_policy(&BTreeMap::new()).expect("no labels is fine");
    assert_eq!(p, NamespacePolicy::default());
    assert_eq!(p.enforce, Policy::new(Level::Privileged));
    assert_eq!(p.audit.label(), "privileged:latest");
    assert_eq!(p.warn.label(), "privileged:latest");
}

#[test]
fn namespace_policy_reads_labels() {
    let p = namespace_policy(&labels(&[
        (ENFORCE_LABEL, "baseline"),
        (ENFORCE_VERSION_LABEL, "v1.30"),
        (AUDIT_LABEL, "restricted"),
        (WARN_LABEL, "restricted"),
        (WARN_VERSION_LABEL, "latest"),
    ]))
    .expect("valid labels");
    assert_eq!(p.enforce.label(), "baseline:v1.30");
    assert_eq!(p.audit.label(), "restricted:latest");
    assert_eq!(p.warn.label(), "restricted:latest");
}

#[test]
fn namespace_policy_warns_at_enforce_level_by_default() {
    let p = namespace_policy(&labels(&[
        (ENFORCE_LABEL, "restricted"),
        (ENFORCE_VERSION_LABEL, "v1.29"),
    ]))
    .expect("valid labels");
    assert_eq!(p.warn.label(), "restricted:v1.29");
    assert_eq!(p.audit.label(), "privileged:latest");

    // An explicit warn level is kept, even if laxer.
    let p = namespace_policy(&labels(&[
        (ENFORCE_LABEL, "restricted"),
        (WARN_LABEL, "privileged"),
    ]))
    .expect("valid labels");
    assert_eq!(p.warn.level, Level::Privileged);
}

#[test]
fn namespace_policy_bad_values() {
    let err = namespace_policy(&labels(&[(ENFORCE_LABEL, "strict")])).unwrap_err();
    assert_eq!(
        err,
        "metadata.labels[pod-security.kubernetes.io/enforce]: Invalid value: \"strict\": \
         must be one of privileged, baseline, restricted"
    );
    let err = namespace_policy(&labels(&[(WARN_VERSION_LABEL, "1.30")])).unwrap_err();
    assert!(
        err.contains(WARN_VERSION_LABEL) && err.contains("\"1.30\""),
        "{err}"
    );
    let err = namespace_policy(&labels(&[(AUDIT_LABEL, "x"), (WARN_LABEL, "y")])).unwrap_err();
    assert!(
        err.starts_with('[') && err.contains("\"x\"") && err.contains("\"y\""),
        "{err}"
    );
}

#[test]
fn versions() {
    for ok in ["latest", "v1.0", "v1.25", "v1.100"] {
        assert!(valid_version(ok), "{ok}");
    }
    for bad in [
        "", "v1.", "v1.01", "v2.1", "1.25", "v1.2x", "Latest", "v1.-1",
    ] {
        assert!(!valid_version(bad), "{bad}");
    }
}
