//! A container's environment and command line, as kubelet builds them.
//!
//! Order and precedence follow upstream: the image's env comes first; then the `envFrom`
//! sources in order (each key under its prefix; keys that are not environment variable names
//! are skipped and reported); then `env` in order, each entry a value (with `$(VAR)`
//! expanded against what came before it), a pod field, a container resource, or a key of a
//! ConfigMap or Secret (`optional` ones skip the variable when the object or key is
//! missing). A later entry replaces an earlier one of the same name. `command` and `args` are
//! expanded against the container's own variables (not the image's).
//!
//! Before all of it come the `kubernetes` Service's variables (`KUBERNETES_SERVICE_HOST`,
//! `KUBERNETES_SERVICE_PORT`, ...), which in-cluster clients read.
//!
//! The ConfigMaps and Secrets are fetched first ([`Sources::fetch`]); building is then a pure
//! function ([`build`]), so every rule is tested without an API server.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, ResourceFieldSelector, Secret};

use crate::Shared;

/// One object's data by key; `None` when the object does not exist.
type Data = Option<BTreeMap<String, String>>;

/// The ConfigMaps and Secrets a container's env refers to, by name.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    pub config_maps: BTreeMap<String, Data>,
    pub secrets: BTreeMap<String, Data>,
    /// The `kubernetes` Service's cluster IP and https port: every container gets its
    /// variables (`KUBERNETES_SERVICE_HOST`...), which in-cluster clients read, as kubelet
    /// adds them whatever `enableServiceLinks` says.
    pub api_service: Option<(String, i32)>,
}

/// The addresses the downward API reports.
#[derive(Clone, Debug)]
pub struct Ips {
    pub host: Vec<String>,
    pub pod: Vec<String>,
}

/// What [`build`] made.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Built {
    /// `NAME=value`, image variables first.
    pub env: Vec<String>,
    /// The process's argv after expansion.
    pub args: Vec<String>,
    /// A warning for each envFrom source that had keys that are not variable names.
    pub skipped: Vec<String>,
}

impl Sources {
    /// Fetches every ConfigMap and Secret that `containers`' env and envFrom name. A missing
    /// object is recorded as `None` (whether that is an error depends on `optional`); any
    /// other failure is returned, to be retried.
    pub async fn fetch(
        shared: &Shared,
        ns: &str,
        containers: &[&Container],
    ) -> Result<Self, String> {
        let mut out = Sources::default();
        match shared
            .client
            .get::<k8s_openapi::api::core::v1::Service>(Some("default"), "kubernetes")
            .await
        {
            Ok(svc) => {
                let spec = svc.spec.unwrap_or_default();
                let ip = spec.cluster_ip.filter(|ip| !ip.is_empty() && ip != "None");
                let port = spec
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some("https"))
                    .or(spec.ports.iter().flatten().next())
                    .map(|p| p.port);
                out.api_service = ip.zip(port);
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(format!("service \"kubernetes\": {e}")),
        }
        for c in containers {
            for (kind, name) in references(c) {
                match kind {
                    Kind::ConfigMap if !out.config_maps.contains_key(&name) => {
                        let data = match shared.client.get::<ConfigMap>(Some(ns), &name).await {
                            Ok(cm) => Some(cm.data.unwrap_or_default()),
                            Err(e) if e.is_not_found() => None,
                            Err(e) => return Err(format!("configmap \"{name}\": {e}")),
                        };
                        out.config_maps.insert(name, data);
                    }
                    Kind::Secret if !out.secrets.contains_key(&name) => {
                        let data = match shared.client.get::<Secret>(Some(ns), &name).await {
                            Ok(s) => Some(secret_strings(&s)),
                            Err(e) if e.is_not_found() => None,
                            Err(e) => return Err(format!("secret \"{name}\": {e}")),
                        };
                        out.secrets.insert(name, data);
                    }
                    _ => {}
                }
            }
        }
        Ok(out)
    }
}

/// A Secret's data as strings (values that are not UTF-8 are passed on lossily, as a
/// process environment cannot hold them anyway).
fn secret_strings(s: &Secret) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = s
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    for (k, v) in s.string_data.iter().flatten() {
        out.insert(k.clone(), v.clone());
    }
    out
}

#[derive(Clone, Copy)]
enum Kind {
    ConfigMap,
    Secret,
}

/// Every (kind, name) the container's env and envFrom refer to.
fn references(c: &Container) -> Vec<(Kind, String)> {
    let mut out = Vec::new();
    for f in c.env_from.iter().flatten() {
        if let Some(r) = &f.config_map_ref {
            out.push((Kind::ConfigMap, r.name.clone()));
        }
        if let Some(r) = &f.secret_ref {
            out.push((Kind::Secret, r.name.clone()));
        }
    }
    for e in c.env.iter().flatten() {
        let Some(from) = &e.value_from else { continue };
        if let Some(r) = &from.config_map_key_ref {
            out.push((Kind::ConfigMap, r.name.clone()));
        }
        if let Some(r) = &from.secret_key_ref {
            out.push((Kind::Secret, r.name.clone()));
        }
    }
    out
}

/// Whether `name` may be an environment variable's name: printable ASCII without `=` (the
/// relaxed rule upstream validates with since 1.30).
pub fn is_env_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'=')
}

/// Builds the container's environment and argv.
pub fn build(
    pod: &Pod,
    c: &Container,
    image_env: &[String],
    image_args: (&[String], &[String]),
    sources: &Sources,
    ips: &Ips,
) -> Result<Built, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    // The container's own variables, in first-set order, for expansion and the final list.
    let mut vars: Vec<(String, String)> = Vec::new();
    let set = |vars: &mut Vec<(String, String)>, k: &str, v: String| match vars
        .iter_mut()
        .find(|(n, _)| n == k)
    {
        Some(slot) => slot.1 = v,
        None => vars.push((k.to_string(), v)),
    };
    if let Some((ip, port)) = &sources.api_service {
        let url = format!("tcp://{ip}:{port}");
        let tcp = format!("KUBERNETES_PORT_{port}_TCP");
        let vals = [
            ("KUBERNETES_SERVICE_HOST".to_string(), ip.clone()),
            ("KUBERNETES_SERVICE_PORT".into(), port.to_string()),
            ("KUBERNETES_SERVICE_PORT_HTTPS".into(), port.to_string()),
            ("KUBERNETES_PORT".into(), url.clone()),
            (tcp.clone(), url),
            (format!("{tcp}_PROTO"), "tcp".into()),
            (format!("{tcp}_PORT"), port.to_string()),
            (format!("{tcp}_ADDR"), ip.clone()),
        ];
        for (k, v) in vals {
            set(&mut vars, &k, v);
        }
    }
    let mut skipped = Vec::new();
    for f in c.env_from.iter().flatten() {
        let prefix = f.prefix.as_deref().unwrap_or_default();
        let (kind, name, optional, data) = match (&f.config_map_ref, &f.secret_ref) {
            (Some(r), _) => (
                "configMap",
                &r.name,
                r.optional,
                sources.config_maps.get(&r.name),
            ),
            (None, Some(r)) => ("secret", &r.name, r.optional, sources.secrets.get(&r.name)),
            (None, None) => continue,
        };
        let Some(data) = data.cloned().flatten() else {
            if optional == Some(true) {
                continue;
            }
            let lower = kind.to_ascii_lowercase();
            return Err(format!("{lower} \"{name}\" not found"));
        };
        let mut invalid = Vec::new();
        for (k, v) in data {
            let key = format!("{prefix}{k}");
            if is_env_name(&key) {
                set(&mut vars, &key, v);
            } else {
                invalid.push(key);
            }
        }
        if !invalid.is_empty() {
            skipped.push(format!(
                "Keys [{}] from the EnvFrom {kind} {ns}/{name} were skipped since they are considered invalid environment variable names.",
                invalid.join(", ")
            ));
        }
    }
    for e in c.env.iter().flatten() {
        let value = match (e.value.as_deref(), &e.value_from) {
            (Some(v), _) if !v.is_empty() => expand(v, &vars),
            (_, None) => String::new(),
            (_, Some(from)) => {
                if let Some(f) = &from.field_ref {
                    pod_field(pod, &f.field_path, ips)
                        .map_err(|err| format!("env {}: {err}", e.name))?
                } else if let Some(r) = &from.resource_field_ref {
                    let mut r = r.clone();
                    if r.container_name.as_deref().is_none_or(str::is_empty) {
                        r.container_name = Some(c.name.clone());
                    }
                    resource_field(pod, &r).map_err(|err| format!("env {}: {err}", e.name))?
                } else if let Some(r) = &from.config_map_key_ref {
                    let optional = r.optional == Some(true);
                    match sources.config_maps.get(&r.name).cloned().flatten() {
                        None if optional => continue,
                        None => return Err(format!("configmap \"{}\" not found", r.name)),
                        Some(d) => match d.get(&r.key) {
                            Some(v) => v.clone(),
                            None if optional => continue,
                            None => {
                                return Err(format!(
                                    "couldn't find key {} in ConfigMap {ns}/{}",
                                    r.key, r.name
                                ));
                            }
                        },
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    let optional = r.optional == Some(true);
                    match sources.secrets.get(&r.name).cloned().flatten() {
                        None if optional => continue,
                        None => return Err(format!("secret \"{}\" not found", r.name)),
                        Some(d) => match d.get(&r.key) {
                            Some(v) => v.clone(),
                            None if optional => continue,
                            None => {
                                return Err(format!(
                                    "couldn't find key {} in Secret {ns}/{}",
                                    r.key, r.name
                                ));
                            }
                        },
                    }
                } else {
                    return Err(format!("env {}: valueFrom names no source", e.name));
                }
            }
        };
        set(&mut vars, &e.name, value);
    }
    let (entrypoint, cmd) = image_args;
    // As upstream: command replaces the entrypoint (and drops the image's cmd); args alone
    // replace the cmd. Only the pod's own strings are expanded.
    let args: Vec<String> = match (c.command.as_deref(), c.args.as_deref()) {
        (Some(command), args) if !command.is_empty() => command
            .iter()
            .chain(args.into_iter().flatten())
            .map(|a| expand(a, &vars))
            .collect(),
        (_, Some(args)) if !args.is_empty() => entrypoint
            .iter()
            .cloned()
            .chain(args.iter().map(|a| expand(a, &vars)))
            .collect(),
        _ => entrypoint.iter().chain(cmd).cloned().collect(),
    };
    let mut env: Vec<String> = image_env
        .iter()
        .filter(|e| {
            let k = e.split_once('=').map_or(e.as_str(), |(k, _)| k);
            !vars.iter().any(|(n, _)| n == k)
        })
        .cloned()
        .collect();
    env.extend(vars.into_iter().map(|(k, v)| format!("{k}={v}")));
    Ok(Built { env, args, skipped })
}

/// Upstream's `$(VAR)` expansion: a defined variable is replaced, an undefined reference is
/// kept as written, `$$` is a literal `$`, and any other `$` stays.
pub fn expand(input: &str, vars: &[(String, String)]) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(end) => {
                    let name = &body[..end];
                    match vars.iter().rev().find(|(n, _)| n == name) {
                        Some((_, v)) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = body;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A pod field as the downward API gives it to env and to volume files (single values:
/// whole label and annotation maps are the volume's own).
pub fn pod_field(pod: &Pod, path: &str, ips: &Ips) -> Result<String, String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "status.hostIP" => ips.host.first().cloned().unwrap_or_default(),
        "status.hostIPs" => ips.host.join(","),
        "status.podIP" => ips.pod.first().cloned().unwrap_or_default(),
        "status.podIPs" => ips.pod.join(","),
        p => {
            let keyed = p
                .strip_prefix("metadata.labels['")
                .map(|k| (&meta.labels, k))
                .or_else(|| {
                    p.strip_prefix("metadata.annotations['")
                        .map(|k| (&meta.annotations, k))
                });
            match keyed.and_then(|(m, k)| Some((m, k.strip_suffix("']")?))) {
                Some((m, k)) => m
                    .as_ref()
                    .and_then(|m| m.get(k))
                    .cloned()
                    .unwrap_or_default(),
                None => return Err(format!("fieldRef {p:?} is not a supported pod field")),
            }
        }
    })
}

/// Reads a quantity in a resource's unit (millicores or bytes).
type ParseQuantity = fn(&str) -> Result<i64, strake_scheduler::QuantityError>;

/// A container resource as the downward API gives it: limits or requests of cpu (whole
/// units of the divisor, rounded up; default 1 core), memory or ephemeral-storage (units of
/// the divisor, default bytes). An unset limit reads as the request, else 0.
pub fn resource_field(pod: &Pod, r: &ResourceFieldSelector) -> Result<String, String> {
    let spec = pod.spec.as_ref();
    let containers = spec.into_iter().flat_map(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
    });
    let c = match r.container_name.as_deref().filter(|n| !n.is_empty()) {
        Some(n) => containers.into_iter().find(|c| c.name == n),
        None => spec.and_then(|s| s.containers.first()),
    }
    .ok_or_else(|| format!("resourceFieldRef: no container {:?}", r.container_name))?;
    let unsupported = || format!("resourceFieldRef: unsupported resource {:?}", r.resource);
    let (which, name) = r.resource.split_once('.').ok_or_else(unsupported)?;
    let res = c.resources.as_ref();
    let requests = res.and_then(|r| r.requests.as_ref());
    let limits = res.and_then(|r| r.limits.as_ref());
    let q = match which {
        "limits" => limits
            .and_then(|l| l.get(name))
            .or(requests.and_then(|l| l.get(name))),
        "requests" => requests.and_then(|l| l.get(name)),
        _ => return Err(unsupported()),
    };
    // cpu in millicores (default divisor: one core), the others in bytes (default: one byte).
    let (parse, unit): (ParseQuantity, i64) = match name {
        "cpu" => (strake_scheduler::parse_cpu_millis, 1000),
        "memory" | "ephemeral-storage" => (strake_scheduler::parse_bytes, 1),
        _ => return Err(unsupported()),
    };
    let amount = q
        .map(|q| parse(&q.0))
        .transpose()
        .map_err(|e| e.to_string())?
        .unwrap_or(0);
    let divisor = r
        .divisor
        .as_ref()
        .map(|d| parse(&d.0))
        .transpose()
        .map_err(|e| e.to_string())?
        .unwrap_or(unit)
        .max(1);
    Ok(((amount + divisor - 1) / divisor).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(containers: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u-1",
                         "labels": {"app": "web"}, "annotations": {"team": "a"}},
            "spec": {"nodeName": "n1", "serviceAccountName": "robot", "containers": containers},
        }))
        .unwrap()
    }

    fn ips() -> Ips {
        Ips {
            host: vec!["10.0.2.15".into()],
            pod: vec!["10.244.0.5".into(), "fd00::5".into()],
        }
    }

    fn sources() -> Sources {
        let data = |pairs: &[(&str, &str)]| {
            Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        Sources {
            config_maps: [
                (
                    "cfg".to_string(),
                    data(&[("MODE", "fast"), ("bad=key", "x"), ("LEVEL", "3")]),
                ),
                ("gone".to_string(), None),
            ]
            .into(),
            secrets: [("creds".to_string(), data(&[("password", "hunter2")]))].into(),
            api_service: None,
        }
    }

    fn built(c: serde_json::Value) -> Result<Built, String> {
        let p = pod(json!([c]));
        let c = p.spec.as_ref().unwrap().containers[0].clone();
        let image_env = vec!["PATH=/bin".to_string(), "MODE=slow".to_string()];
        let (ep, cmd) = (vec!["/entry".to_string()], vec!["serve".to_string()]);
        build(&p, &c, &image_env, (&ep, &cmd), &sources(), &ips())
    }

    fn env_of(b: &Built) -> BTreeMap<String, String> {
        b.env
            .iter()
            .map(|e| {
                let (k, v) = e.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    #[test]
    fn env_from_env_and_references_follow_upstreams_order() {
        let b = built(json!({
            "name": "c", "image": "i",
            "envFrom": [{"configMapRef": {"name": "cfg"}},
                        {"secretRef": {"name": "creds"}, "prefix": "DB_"},
                        {"configMapRef": {"name": "gone", "optional": true}}],
            "env": [
                {"name": "LEVEL", "value": "9"},
                {"name": "URL", "value": "http://$(DB_password)@host/$(MODE)/$(NOPE)/$$(MODE)"},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "IPS", "valueFrom": {"fieldRef": {"fieldPath": "status.podIPs"}}},
                {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
                {"name": "KEY", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "MODE"}}},
                {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "x", "optional": true}}},
                {"name": "OPT2", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "x", "optional": true}}},
            ],
            "args": ["--mode=$(MODE)", "$(LEVEL)"],
        }))
        .unwrap();
        let env = env_of(&b);
        assert_eq!(env["PATH"], "/bin", "image env is kept");
        assert_eq!(env["MODE"], "fast", "envFrom replaces the image's value");
        assert_eq!(env["LEVEL"], "9", "env replaces envFrom");
        assert_eq!(env["DB_password"], "hunter2");
        assert_eq!(env["URL"], "http://hunter2@host/fast/$(NOPE)/$(MODE)");
        assert_eq!(env["POD"], "p");
        assert_eq!(env["APP"], "web");
        assert_eq!(env["IPS"], "10.244.0.5,fd00::5");
        assert_eq!(env["SA"], "robot");
        assert_eq!(env["KEY"], "fast");
        assert_eq!(env["PW"], "hunter2");
        assert!(
            !env.contains_key("OPT") && !env.contains_key("OPT2"),
            "optional and missing: unset"
        );
        assert!(!env.contains_key("bad=key"));
        assert_eq!(
            b.skipped,
            vec![
                "Keys [bad=key] from the EnvFrom configMap ns/cfg were skipped since they are considered invalid environment variable names."
            ]
        );
        assert_eq!(
            b.args,
            vec!["/entry", "--mode=fast", "9"],
            "args replace cmd, keep entrypoint"
        );
        assert_eq!(b.env.iter().filter(|e| e.starts_with("MODE=")).count(), 1);
    }

    #[test]
    fn every_container_finds_the_api_and_may_override_or_expand_it() {
        let p = pod(json!([{"name": "c", "image": "i", "env": [
            {"name": "API", "value": "https://$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)"},
            {"name": "KUBERNETES_SERVICE_PORT_HTTPS", "value": "8443"}]}]));
        let c = p.spec.as_ref().unwrap().containers[0].clone();
        let mut s = sources();
        s.api_service = Some(("10.96.0.1".into(), 443));
        let b = build(&p, &c, &[], (&["/entry".into()], &[]), &s, &ips()).unwrap();
        let env = env_of(&b);
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "10.96.0.1");
        assert_eq!(env["KUBERNETES_SERVICE_PORT"], "443");
        assert_eq!(env["KUBERNETES_PORT"], "tcp://10.96.0.1:443");
        assert_eq!(env["KUBERNETES_PORT_443_TCP_ADDR"], "10.96.0.1");
        assert_eq!(env["KUBERNETES_PORT_443_TCP_PROTO"], "tcp");
        assert_eq!(env["API"], "https://10.96.0.1:443");
        assert_eq!(env["KUBERNETES_SERVICE_PORT_HTTPS"], "8443");
    }

    #[test]
    fn missing_objects_and_keys_are_named() {
        let e = built(json!({"name": "c", "image": "i",
            "env": [{"name": "K", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "nope"}}}]}));
        assert_eq!(e.unwrap_err(), "couldn't find key nope in ConfigMap ns/cfg");
        let e = built(json!({"name": "c", "image": "i",
            "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "user"}}}]}));
        assert_eq!(e.unwrap_err(), "couldn't find key user in Secret ns/creds");
        let e = built(
            json!({"name": "c", "image": "i", "envFrom": [{"configMapRef": {"name": "gone"}}]}),
        );
        assert_eq!(e.unwrap_err(), "configmap \"gone\" not found");
        let e = built(json!({"name": "c", "image": "i",
            "env": [{"name": "K", "valueFrom": {"fieldRef": {"fieldPath": "spec.nope"}}}]}));
        assert!(e.unwrap_err().contains("spec.nope"));
    }

    #[test]
    fn command_replaces_entrypoint_and_image_defaults_are_not_expanded() {
        let b = built(
            json!({"name": "c", "image": "i", "command": ["sh", "-c", "echo $(A) $HOME"],
                             "env": [{"name": "A", "value": "x"}]}),
        )
        .unwrap();
        assert_eq!(b.args, vec!["sh", "-c", "echo x $HOME"]);
        let b = built(json!({"name": "c", "image": "i"})).unwrap();
        assert_eq!(b.args, vec!["/entry", "serve"]);
    }

    #[test]
    fn expansion_edge_cases() {
        let vars = vec![("A".to_string(), "1".to_string())];
        assert_eq!(expand("$(A)$(A)", &vars), "11");
        assert_eq!(expand("$(A", &vars), "$(A");
        assert_eq!(expand("$", &vars), "$");
        assert_eq!(expand("a$b", &vars), "a$b");
        assert_eq!(expand("$$$(A)", &vars), "$1");
        assert_eq!(expand("$()", &vars), "$()");
        assert!(is_env_name("my.var-1") && !is_env_name("a=b") && !is_env_name(""));
    }
}
