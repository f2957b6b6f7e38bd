//! The Pod Security Standards, as pure functions: which of the upstream pod-security-admission
//! checks a pod spec fails at a level, the messages upstream prints for them, and the policy a
//! namespace's `pod-security.kubernetes.io/*` labels select.
//!
//! The rules are those upstream evaluates for the `latest` version of a v1.32 API server (the
//! version Strake reports), whatever version a namespace label names: older rule sets only
//! differ for pods that no supported kubelet would run anyway. Check ids, reasons and details
//! are upstream's, word for word, so that clients and tests matching on upstream's messages see
//! the same text. The rules that arrived after 1.32 (host fields in probes and lifecycle
//! handlers from 1.34, user-namespace relaxations from 1.35, more safe sysctls from 1.37) are
//! not applied.
//!
//! Workloads (Deployments, Jobs, CronJobs…) are checked by passing their pod template's
//! metadata and spec to [`check`]; finding the template is the caller's business.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use k8s_openapi::api::core::v1::{
    Capabilities, ContainerPort, PodSecurityContext, PodSpec, SELinuxOptions, SecurityContext,
    Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The namespace label naming the level pods must meet to be admitted.
pub const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";
/// The namespace label naming the rule version of the enforce level.
pub const ENFORCE_VERSION_LABEL: &str = "pod-security.kubernetes.io/enforce-version";
/// The namespace label naming the level whose violations are recorded in the audit log.
pub const AUDIT_LABEL: &str = "pod-security.kubernetes.io/audit";
/// The namespace label naming the rule version of the audit level.
pub const AUDIT_VERSION_LABEL: &str = "pod-security.kubernetes.io/audit-version";
/// The namespace label naming the level whose violations are returned as warnings.
pub const WARN_LABEL: &str = "pod-security.kubernetes.io/warn";
/// The namespace label naming the rule version of the warn level.
pub const WARN_VERSION_LABEL: &str = "pod-security.kubernetes.io/warn-version";
/// The version that means "the rules of this server".
pub const LATEST: &str = "latest";

/// Upstream's complaint about a level label's value (after the label and value).
const LEVELS_HINT: &str = "must be one of privileged, baseline, restricted";
/// Upstream's complaint about a version label's value.
const VERSION_HINT: &str = r#"must be "latest" or "v1.x""#;

/// A Pod Security Standards level. Ordered by strictness, so `a < b` means `a` allows more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Level {
    /// No restrictions at all.
    #[default]
    Privileged,
    /// Forbids the known privilege escalations; the default pod passes.
    Baseline,
    /// Baseline plus the current hardening practice (non-root, no capabilities, seccomp…).
    Restricted,
}

impl Level {
    /// The level as its label value is spelled.
    pub const fn as_str(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = String;

    /// Only the exact lowercase spellings, as upstream: `Restricted` is not a level.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "privileged" => Ok(Level::Privileged),
            "baseline" => Ok(Level::Baseline),
            "restricted" => Ok(Level::Restricted),
            _ => Err(format!("invalid Pod Security level {s:?}: {LEVELS_HINT}")),
        }
    }
}

/// A level and the rule version a namespace asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub level: Level,
    /// `latest` or `v1.N`, as given. Only kept for messages: the latest rules are evaluated.
    pub version: String,
}

impl Policy {
    /// The level at the `latest` version.
    pub fn new(level: Level) -> Self {
        Policy {
            level,
            version: LATEST.to_string(),
        }
    }

    /// `level:version`, as upstream quotes the policy in its messages (`restricted:latest`).
    pub fn label(&self) -> String {
        format!("{}:{}", self.level, self.version)
    }
}

impl Default for Policy {
    /// What a namespace without labels gets: `privileged:latest`.
    fn default() -> Self {
        Policy::new(Level::Privileged)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.level, self.version)
    }
}

/// One failed check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The upstream check id, e.g. `hostNamespaces`.
    pub check: &'static str,
    /// The short reason, e.g. `host namespaces`.
    pub reason: String,
    /// What exactly is wrong, e.g. `hostNetwork=true`.
    pub detail: String,
}

/// The three policies a namespace's labels select.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NamespacePolicy {
    /// Pods failing this are refused.
    pub enforce: Policy,
    /// Violations of this are recorded in the audit annotations.
    pub audit: Policy,
    /// Violations of this are returned as warnings.
    pub warn: Policy,
}

/// What one check found wrong: its reason and detail. None when the pod passes.
type Found = Option<(&'static str, String)>;

/// A check: its upstream id, the level it belongs to, whether a stricter restricted check
/// replaces it at restricted, and the function evaluating it.
struct Check {
    id: &'static str,
    level: Level,
    replaced_at_restricted: bool,
    run: fn(&ObjectMeta, &PodSpec) -> Found,
}

const fn baseline(id: &'static str, run: fn(&ObjectMeta, &PodSpec) -> Found) -> Check {
    Check {
        id,
        level: Level::Baseline,
        replaced_at_restricted: false,
        run,
    }
}

/// A baseline check a restricted one replaces at restricted (upstream's overrides):
/// `capabilities_baseline` by `capabilities_restricted`, `hostPathVolumes` by
/// `restrictedVolumes`, `seccompProfile_baseline` by `seccompProfile_restricted`. Otherwise a
/// pod adding SYS_ADMIN would be told so twice.
const fn replaced(id: &'static str, run: fn(&ObjectMeta, &PodSpec) -> Found) -> Check {
    Check {
        replaced_at_restricted: true,
        ..baseline(id, run)
    }
}

const fn restricted(id: &'static str, run: fn(&ObjectMeta, &PodSpec) -> Found) -> Check {
    Check {
        level: Level::Restricted,
        ..baseline(id, run)
    }
}

/// Every check in upstream's order: the baseline checks, then the restricted ones, each group
/// sorted by id bytewise.
const CHECKS: &[Check] = &[
    baseline("appArmorProfile", app_armor_profile),
    replaced("capabilities_baseline", capabilities_baseline),
    baseline("hostNamespaces", host_namespaces),
    replaced("hostPathVolumes", host_path_volumes),
    baseline("hostPorts", host_ports),
    baseline("privileged", privileged),
    baseline("procMount", proc_mount),
    baseline("seLinuxOptions", se_linux_options),
    replaced("seccompProfile_baseline", seccomp_profile_baseline),
    baseline("sysctls", sysctls),
    baseline("windowsHostProcess", windows_host_process),
    restricted("allowPrivilegeEscalation", allow_privilege_escalation),
    restricted("capabilities_restricted", capabilities_restricted),
    restricted("restrictedVolumes", restricted_volumes),
    restricted("runAsNonRoot", run_as_non_root),
    restricted("runAsUser", run_as_user),
    restricted("seccompProfile_restricted", seccomp_profile_restricted),
];

/// The checks a pod (its metadata and spec) fails at `level`, in upstream's order. Empty when
/// it passes; always empty at Privileged.
pub fn check(level: Level, meta: &ObjectMeta, spec: &PodSpec) -> Vec<Violation> {
    CHECKS
        .iter()
        .filter(|c| c.level <= level && !(level == Level::Restricted && c.replaced_at_restricted))
        .filter_map(|c| {
            (c.run)(meta, spec).map(|(reason, detail)| Violation {
                check: c.id,
                reason: reason.to_string(),
                detail,
            })
        })
        .collect()
}

/// The violations as upstream lists them after the policy: each `reason (detail)`, joined by
/// `, `.
pub fn details(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| {
            if v.detail.is_empty() {
                v.reason.clone()
            } else {
                format!("{} ({})", v.reason, v.detail)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Just the reasons, joined by `, `: upstream's short form, used when warning that existing
/// pods would fail a namespace's new enforce level.
pub fn reasons(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| v.reason.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The reason a pod is refused, as upstream words it:
/// `violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false (container "c"
/// must set securityContext.allowPrivilegeEscalation=false), ...`.
pub fn message(policy_label: &str, violations: &[Violation]) -> String {
    format!(
        "violates PodSecurity \"{policy_label}\": {}",
        details(violations)
    )
}

/// The warning (and audit annotation) for a pod that fails the warn (or audit) policy:
/// `would violate PodSecurity "restricted:latest": ...`.
pub fn warning(policy_label: &str, violations: &[Violation]) -> String {
    format!(
        "would violate PodSecurity \"{policy_label}\": {}",
        details(violations)
    )
}

/// The policies a namespace's labels select. A missing level is privileged and a missing
/// version `latest`; as upstream, a namespace that sets only a stricter enforce level also
/// warns at it (with its version, unless the warn version is set). A label whose value is not
/// a level (or a version: `latest` or `v1.N`) is an error naming the label and the value, in
/// upstream's words; several are listed in brackets.
pub fn namespace_policy(labels: &BTreeMap<String, String>) -> Result<NamespacePolicy, String> {
    let mut errors = Vec::new();
    let mut policy = NamespacePolicy::default();

    let enforce_level = read_level(labels, ENFORCE_LABEL, &mut errors);
    if let Some(level) = enforce_level {
        policy.enforce.level = level;
    }
    if let Some(version) = read_version(labels, ENFORCE_VERSION_LABEL, &mut errors) {
        policy.enforce.version = version;
    }
    if let Some(level) = read_level(labels, AUDIT_LABEL, &mut errors) {
        policy.audit.level = level;
    }
    if let Some(version) = read_version(labels, AUDIT_VERSION_LABEL, &mut errors) {
        policy.audit.version = version;
    }
    if let Some(level) = read_level(labels, WARN_LABEL, &mut errors) {
        policy.warn.level = level;
    }
    if let Some(version) = read_version(labels, WARN_VERSION_LABEL, &mut errors) {
        policy.warn.version = version;
    }

    if !labels.contains_key(WARN_LABEL) && enforce_level.is_some_and(|l| l > policy.warn.level) {
        policy.warn.level = policy.enforce.level;
        if !labels.contains_key(WARN_VERSION_LABEL) {
            policy.warn.version.clone_from(&policy.enforce.version);
        }
    }

    match errors.len() {
        0 => Ok(policy),
        1 => Err(errors.remove(0)),
        _ => Err(format!("[{}]", errors.join(", "))),
    }
}

/// The level a label names, if it is set; a bad value is recorded in `errors`.
fn read_level(
    labels: &BTreeMap<String, String>,
    label: &str,
    errors: &mut Vec<String>,
) -> Option<Level> {
    let value = labels.get(label)?;
    match value.parse::<Level>() {
        Ok(level) => Some(level),
        Err(_) => {
            errors.push(invalid_label(label, value, LEVELS_HINT));
            None
        }
    }
}

/// The version a label names, if it is set; a bad value is recorded in `errors`.
fn read_version(
    labels: &BTreeMap<String, String>,
    label: &str,
    errors: &mut Vec<String>,
) -> Option<String> {
    let value = labels.get(label)?;
    if valid_version(value) {
        Some(value.clone())
    } else {
        errors.push(invalid_label(label, value, VERSION_HINT));
        None
    }
}

/// Upstream's field error for a bad label value.
fn invalid_label(label: &str, value: &str, why: &str) -> String {
    format!("metadata.labels[{label}]: Invalid value: {value:?}: {why}")
}

/// `latest`, or `v1.` and a minor without leading zeros.
fn valid_version(version: &str) -> bool {
    if version == LATEST {
        return true;
    }
    let Some(minor) = version.strip_prefix("v1.") else {
        return false;
    };
    !minor.is_empty()
        && minor.bytes().all(|b| b.is_ascii_digit())
        && (minor == "0" || !minor.starts_with('0'))
        && minor.parse::<u64>().is_ok()
}

// Helpers shared by the checks.

/// One container of any kind, with just what the checks look at.
#[derive(Clone, Copy)]
struct Ctr<'a> {
    name: &'a str,
    sc: Option<&'a SecurityContext>,
    ports: &'a [ContainerPort],
}

impl<'a> Ctr<'a> {
    fn new(
        name: &'a str,
        sc: Option<&'a SecurityContext>,
        ports: Option<&'a [ContainerPort]>,
    ) -> Self {
        Ctr {
            name,
            sc,
            ports: ports.unwrap_or(&[]),
        }
    }

    fn capabilities(self) -> Option<&'a Capabilities> {
        self.sc.and_then(|sc| sc.capabilities.as_ref())
    }
}

/// Every container the pod runs, in upstream's order: init containers, containers, ephemeral
/// containers. Ephemeral containers count: `kubectl debug` must not be a way around the level.
fn containers(spec: &PodSpec) -> impl Iterator<Item = Ctr<'_>> {
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| Ctr::new(&c.name, c.security_context.as_ref(), c.ports.as_deref()));
    let main = spec
        .containers
        .iter()
        .map(|c| Ctr::new(&c.name, c.security_context.as_ref(), c.ports.as_deref()));
    let ephemeral = spec
        .ephemeral_containers
        .iter()
        .flatten()
        .map(|c| Ctr::new(&c.name, c.security_context.as_ref(), c.ports.as_deref()));
    init.chain(main).chain(ephemeral)
}

fn volumes(spec: &PodSpec) -> impl Iterator<Item = &Volume> {
    spec.volumes.iter().flatten()
}

fn pod_sc(spec: &PodSpec) -> Option<&PodSecurityContext> {
    spec.security_context.as_ref()
}

/// Whether the pod declares itself a Windows pod. The API refuses the Linux-only security
/// fields on such pods, so the restricted checks requiring them exempt it.
fn is_windows(spec: &PodSpec) -> bool {
    spec.os.as_ref().is_some_and(|os| os.name == "windows")
}

fn pluralize(singular: &'static str, plural: &'static str, n: usize) -> &'static str {
    if n == 1 { singular } else { plural }
}

/// The items each in double quotes, joined by `, ` (no escaping, as upstream).
fn join_quote<I>(items: I) -> String
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    items
        .into_iter()
        .map(|s| format!("\"{}\"", s.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `container "a"` or `containers "a", "b"`.
fn containers_phrase(names: &[&str]) -> String {
    format!(
        "{} {}",
        pluralize("container", "containers", names.len()),
        join_quote(names)
    )
}

/// Who set a forbidden value: `pod` and/or the containers, for joining with ` and `.
fn setters(pod: bool, containers: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    if pod {
        out.push("pod".to_string());
    }
    if !containers.is_empty() {
        out.push(containers_phrase(containers));
    }
    out
}

// Baseline checks.

/// The legacy per-container AppArmor annotation (its suffix is the container name).
const APPARMOR_ANNOTATION_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";

/// Only the runtime's default profile or one loaded on the node; never `Unconfined`.
fn app_armor_type_allowed(t: &str) -> bool {
    matches!(t, "RuntimeDefault" | "Localhost")
}

fn app_armor_annotation_allowed(v: &str) -> bool {
    v.is_empty() || v == "runtime/default" || v.starts_with("localhost/")
}

/// AppArmor may not be turned off or overridden, by the field or the legacy annotations.
fn app_armor_profile(meta: &ObjectMeta, spec: &PodSpec) -> Found {
    let mut values = BTreeSet::new();
    let mut pod_bad = false;
    if let Some(p) = pod_sc(spec).and_then(|sc| sc.app_armor_profile.as_ref())
        && !app_armor_type_allowed(&p.type_)
    {
        pod_bad = true;
        values.insert(p.type_.as_str());
    }
    let mut bad = Vec::new();
    for c in containers(spec) {
        if let Some(p) = c.sc.and_then(|sc| sc.app_armor_profile.as_ref())
            && !app_armor_type_allowed(&p.type_)
        {
            bad.push(c.name);
            values.insert(p.type_.as_str());
        }
    }
    let mut annotations: Vec<String> = meta
        .annotations
        .iter()
        .flatten()
        .filter(|(k, v)| {
            k.starts_with(APPARMOR_ANNOTATION_PREFIX) && !app_armor_annotation_allowed(v)
        })
        .map(|(k, v)| format!("{k}=\"{v}\""))
        .collect();
    annotations.sort();

    let mut who = setters(pod_bad, &bad);
    if !annotations.is_empty() {
        who.push(pluralize("annotation", "annotations", annotations.len()).to_string());
    }
    if who.is_empty() {
        return None;
    }
    let mut listed: Vec<&str> = values.into_iter().collect();
    listed.extend(annotations.iter().map(String::as_str));
    Some((
        pluralize(
            "forbidden AppArmor profile",
            "forbidden AppArmor profiles",
            listed.len(),
        ),
        format!(
            "{} must not set AppArmor profile type to {}",
            who.join(" and "),
            join_quote(&listed)
        ),
    ))
}

/// The capabilities container runtimes grant by default; adding them changes nothing.
const DEFAULT_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// No capability beyond the runtime's default set may be added.
fn capabilities_baseline(_: &ObjectMeta, spec: &PodSpec) -> Found {
    let mut bad = Vec::new();
    let mut forbidden = BTreeSet::new();
    for c in containers(spec) {
        let mut valid = true;
        for cap in c
            .capabilities()
            .into_iter()
            .flat_map(|caps| caps.add.iter().flatten())
        {
            if !DEFAULT_CAPABILITIES.contains(&cap.as_str()) {
                valid = false;
                forbidden.insert(cap.as_str());
            }
        }
        if !valid {
            bad.push(c.name);
        }
    }
    (!bad.is_empty()).then(|| {
        (
            "non-default capabilities",
            format!(
                "{} must not include {} in securityContext.capabilities.add",
                containers_phrase(&bad),
                join_quote(&forbidden)
            ),
        )
    })
}

/// The host's network, PID and IPC namespaces may not be shared.
fn host_namespaces(_: &ObjectMeta, spec: &PodSpec) -> Found {
    let mut shared = Vec::new();
    if spec.host_network == Some(true) {
        shared.push("hostNetwork=true");
    }
    if spec.host_pid == Some(true) {
        shared.push("hostPID=true");
    }
    if spec.host_ipc == Some(true) {
        shared.push("hostIPC=true");
    }
    (!shared.is_empty()).then(|| ("host namespaces", shared.join(", ")))
}

/// No hostPath volumes: they reach the node's filesystem.
fn host_path_volumes(_: &ObjectMeta, spec: &PodSpec) -> Found {
    let names: Vec<&str> = volumes(spec)
        .filter(|v| v.host_path.is_some())
        .map(|v| v.name.as_str())
        .collect();
    (!names.is_empty()).then(|| {
        (
            "hostPath volumes",
            format!(
                "{} {}",
                pluralize("volume", "volumes", names.len()),
                join_quote(&names)
            ),
        )
    })
}

/// No host ports: they bind on the node's network.
fn host_ports(_: &ObjectMeta, spec: &PodSpec) -> Found {
    let mut bad = Vec::new();
    let mut ports = BTreeSet::new();
    for c in containers(spec) {
        let used: Vec<i32> = c
            .ports
            .iter()
            .filter_map(|p| p.host_port)
            .filter(|&p| p != 0)
            .collect();
        if !used.is_empty() {
            bad.push(c.name);
            // Sorted as text, as upstream does.
            ports.extend(used.iter().map(i32::to_string));
        }
    }
    if bad.is_empty() {
        return None;
    }
    let ports: Vec<String> = ports.into_iter().collect();
    Some((
        "hostPort",
        format!(
            "{} {} {} {}",
            containers_phrase(&bad),
            pluralize("uses", "use", bad.len()),
            pluralize("hostPort", "hostPorts", ports.len()),
            ports.join(", ")
        ),
    ))
}

/// No privileged containers.
fn privileged(_: &ObjectMeta, spec: &PodSpec) -> Found {
    let bad: Vec<&str> = containers(spec)
        .filter(|c| c.sc.and_then(|sc| sc.privileged) == Some(true))
        .map(|c| c.name)
        .collect();
    (!bad.is_empty()).then(|| {
        (
            "privileged",
            format!(
                "{} must not set securityContext.privileged=true",
                containers_phrase(&bad)
            ),
        )
    })
}

/// /proc must keep its default masks.
fn proc_mount(_: &ObjectMeta, spec: &PodSpec) -> Found {
    let mut bad = Vec::new();
    let mut types = BTreeSet::new();
    for c in containers(spec) {
        if let Some(t) = c.sc.and_then(|sc| sc.proc_mount.as_deref())
            && t != "Default"
        {
            bad.push(c.name);
            types.insert(t);
        }
    }
    (!bad.is_empty()).then(|| {
        (
            "procMount",
            format!(
                "{} must not set securityContext.procMount to {}",
                containers_phrase(&bad),
                join_quote(&types)
            ),
        )
    })
}

/// The SELinux types a container may ask for (empty is the runtime's choice).
const SELINUX_TYPES: &[&str] = &[
    "",
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

/// What forbidden SELinux options the pod and its containers set, accumulated.
#[derive(Default)]
struct SeLinuxFindings<'a> {
    types: BTreeSet<&'a str>,
    user: bool,
    role: bool,
}

impl<'a> SeLinuxFindings<'a> {
    /// Records what `opts` sets that is forbidden; whether it sets nothing forbidden.
    fn allowed(&mut self, opts: &'a SELinuxOptions) -> bool {
        let mut ok = true;
        let t = opts.type_.as_deref().unwrap_or("");
        if !SELINUX_TYPES.contains(&t) {
            ok = false;
            self.types.insert(t);
        }
        if opts.user.as_deref().is_some_and(|u| !u.is_empty()) {
            ok = false;
            self.user = true;
        }
        if opts.role.as_deref().is_some_and(|r| !r.is_empty()) {
            ok = false;
            self.role = true;
        }
        ok
    }
}

/// SELinux may only pick one of the container types, and never a user or role.
fn se_linux_options(_: &ObjectMeta, spec: &PodSpec) -> Found {
    let mut found = SeLinuxFindings::default();
    let pod_bad = pod_sc(spec)
        .and_then(|sc| sc.se_linux_options.as_ref())
        .is_some_and(|opts| !found.allowed(opts));
    let mut bad = Vec::new();
    for c in containers(spec) {
        if let Some(opts) = c.sc.and_then(|sc| sc.se_linux_options.as_ref())
            && !found.allowed(opts)
        {
            bad.push(c.name);
        }
    }
    let who = setters(pod_bad, &bad);
    if who.is_empty() {
        return None;
    }
    let mut what = Vec::new();
    if !found.types.is_empty() {
        what.push(format!(
            "{} {}",
            pluralize("type", "types", found.types.len()),
            join_quote(&found.types)
        ));
    }
    if found.user {
        what.push("user may not be set".to_string());
    }
    if found.role {
        what.push("role may not be set".to_string());
    }
    Some((
        "seLinuxOptions",
        format!(
            "{} set forbidden securityContext.seLinuxOptions: {}",
            who.join(" and "),
            what.join("; ")
        ),
    ))
}

/// The seccomp profile types that keep filtering on.
fn seccomp_allowed(t: &str) -> bool {
    matches!(t, "RuntimeDefault" | "Localhost")
}

/// The seccomp profiles the pod and its containers set.
struct SeccompScan<'a> {
    /// The pod sets a forbidden profile.
    pod_bad: bool,
    /// The pod sets an allowed profile, which containers without their own inherit.
    pod_allowed: bool,
    /// Containers setting a forbidden profile.
    bad: Vec<&'a str>,
    /// Containers setting no profile.
    unset: Vec<&'a str>,
    /// The forbidden profile types set.
    values: BTreeSet<&'a str>,
}

fn scan_seccomp(spec: &PodSpec) -> SeccompScan<'_> {
    let mut scan = SeccompScan {
        pod_bad: false,
        pod_allowed: false,
        bad: Vec::new(),
        unset: Vec::new(),
        values: BTreeSet::new(),
    };
    if let Some(p) = pod_sc(spec).and_then(|sc| sc.seccomp_profile.as_ref()) {
        if seccomp_allowed(&p.type_) {
            scan.pod_allowed = true;
        } else {
            scan.pod_bad = true;
            scan.values.insert(p.type_.as_str());
        }
    }
    for c in containers(spec) {
        match c.sc.and_then(|sc| sc.seccomp_profile.as_ref()) {
            Some(p) if !seccomp_allowed(&p.type_) => {
                scan.bad.push(c.name);
                scan.values.insert(p.type_.as_str());
            }
            Some(_) => {}
            None => scan.unset.push(c.name),
        }
    }
    scan
}

/// The complaint about explicitly forbidden seccomp profiles, shared by both levels.
fn seccomp_explicit(scan: &SeccompScan<'_>) -> Found {
    let who = setters(scan.pod_bad, &scan.bad);
    (!who.is_empty()).then(|| {
        (
            "seccompProfile",
            format!(
                "{} must not set securityContext.seccompProfile.type to {}",
                who.join(" and "),
                join_quote(&scan.values)
            ),
        )
    })
}

/// If a seccomp profile is set, it must not be `Unconfined`.
fn seccomp_profile_baseline(_: &ObjectMeta, spec: &PodSpec) -> Found {
    seccomp_explicit(&scan_seccomp(spec))
}

/// The sysctls that are namespaced and isolated from other pods, so safe for any pod to set.
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

/// Only the safe sysctls.
fn sysctls(_: &ObjectMeta, spec: &PodSpec) -> Found {
    let bad: Vec<&str> = pod_sc(spec)
        .and_then(|sc| sc.sysctls.as_deref())
        .unwrap_or(&[])
        .iter()
        .map(|s| s.name.as_str())
        .filter(|name| !SAFE_SYSCTLS.contains(name))
        .collect();
    (!bad.is_empty()).then(|| ("forbidden sysctls", bad.join(", ")))
}

/// No Windows HostProcess containers: they run as processes on the host.
fn windows_host_process(_: &ObjectMeta, spec: &PodSpec) -> Found {
    let pod_bad = pod_sc(spec)
        .and_then(|sc| sc.windows_options.as_ref())
        .and_then(|w| w.host_process)
        == Some(true);
    let bad: Vec<&str> = containers(spec)
        .filter(|c| {
            c.sc.and_then(|sc| sc.windows_options.as_ref())
                .and_then(|w| w.host_process)
                == Some(true)
        })
        .map(|c| c.name)
        .collect();
    let who = setters(pod_bad, &bad);
    (!who.is_empty()).then(|| {
        (
            "hostProcess",
            format!(
                "{} must not set securityContext.windowsOptions.hostProcess=true",
                who.join(" and ")
            ),
        )
    })
}

// Restricted checks.

/// Every container must say allowPrivilegeEscalation=false; unset means allowed.
fn allow_privilege_escalation(_: &ObjectMeta, spec: &PodSpec) -> Found {
    if is_windows(spec) {
        return None;
    }
    let bad: Vec<&str> = containers(spec)
        .filter(|c| c.sc.and_then(|sc| sc.allow_privilege_escalation) != Some(false))
        .map(|c| c.name)
        .collect();
    (!bad.is_empty()).then(|| {
        (
            "allowPrivilegeEscalation != false",
            format!(
                "{} must set securityContext.allowPrivilegeEscalation=false",
                containers_phrase(&bad)
            ),
        )
    })
}

/// Every container must drop ALL, and may add back only NET_BIND_SERVICE.
fn capabilities_restricted(_: &ObjectMeta, spec: &PodSpec) -> Found {
    if is_windows(spec) {
        return None;
    }
    let mut missing_drop = Vec::new();
    let mut adding = Vec::new();
    let mut forbidden = BTreeSet::new();
    for c in containers(spec) {
        let Some(caps) = c.capabilities() else {
            missing_drop.push(c.name);
            continue;
        };
        if !caps.drop.iter().flatten().any(|d| d == "ALL") {
            missing_drop.push(c.name);
        }
        let mut adds_forbidden = false;
        for cap in caps.add.iter().flatten() {
            if cap != "NET_BIND_SERVICE" {
                adds_forbidden = true;
                forbidden.insert(cap.as_str());
            }
        }
        if adds_forbidden {
            adding.push(c.name);
        }
    }
    let mut what = Vec::new();
    if !missing_drop.is_empty() {
        what.push(format!(
            "{} must set securityContext.capabilities.drop=[\"ALL\"]",
            containers_phrase(&missing_drop)
        ));
    }
    if !adding.is_empty() {
        what.push(format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&adding),
            join_quote(&forbidden)
        ));
    }
    (!what.is_empty()).then(|| ("unrestricted capabilities", what.join("; ")))
}

/// Whether a volume is of a type restricted pods may use: those that only expose the pod's
/// own API objects, scratch space, or storage claimed through the API.
fn volume_allowed(v: &Volume) -> bool {
    v.config_map.is_some()
        || v.csi.is_some()
        || v.downward_api.is_some()
        || v.empty_dir.is_some()
        || v.ephemeral.is_some()
        || v.image.is_some()
        || v.persistent_volume_claim.is_some()
        || v.projected.is_some()
        || v.secret.is_some()
}

/// The type of a volume restricted pods may not use, by its field name; None for a volume
/// with no source at all, which API defaulting makes an emptyDir before upstream sees it.
fn restricted_volume_type(v: &Volume) -> Option<&'static str> {
    let types = [
        (v.host_path.is_some(), "hostPath"),
        (v.gce_persistent_disk.is_some(), "gcePersistentDisk"),
        (v.aws_elastic_block_store.is_some(), "awsElasticBlockStore"),
        (v.git_repo.is_some(), "gitRepo"),
        (v.nfs.is_some(), "nfs"),
        (v.iscsi.is_some(), "iscsi"),
        (v.glusterfs.is_some(), "glusterfs"),
        (v.rbd.is_some(), "rbd"),
        (v.flex_volume.is_some(), "flexVolume"),
        (v.cinder.is_some(), "cinder"),
        (v.cephfs.is_some(), "cephfs"),
        (v.flocker.is_some(), "flocker"),
        (v.fc.is_some(), "fc"),
        (v.azure_file.is_some(), "azureFile"),
        (v.vsphere_volume.is_some(), "vsphereVolume"),
        (v.quobyte.is_some(), "quobyte"),
        (v.azure_disk.is_some(), "azureDisk"),
        (v.photon_persistent_disk.is_some(), "photonPersistentDisk"),
        (v.portworx_volume.is_some(), "portworxVolume"),
        (v.scale_io.is_some(), "scaleIO"),
        (v.storageos.is_some(), "storageos"),
    ];
    types.iter().find(|(set, _)| *set).map(|&(_, name)| name)
}

/// Only the volume types in [`volume_allowed`].
fn restricted_volumes(_: &ObjectMeta, spec: &PodSpec) -> Found {
    let mut bad = Vec::new();
    let mut types = BTreeSet::new();
    for v in volumes(spec) {
        if volume_allowed(v) {
            continue;
        }
        if let Some(t) = restricted_volume_type(v) {
            bad.push(v.name.as_str());
            types.insert(t);
        }
    }
    (!bad.is_empty()).then(|| {
        (
            "restricted volume types",
            format!(
                "{} {} {} {} {}",
                pluralize("volume", "volumes", bad.len()),
                join_quote(&bad),
                pluralize("uses", "use", bad.len()),
                pluralize(
                    "restricted volume type",
                    "restricted volume types",
                    types.len()
                ),
                join_quote(&types)
            ),
        )
    })
}

/// The pod, or else every container, must set runAsNonRoot=true, and none may set false.
fn run_as_non_root(_: &ObjectMeta, spec: &PodSpec) -> Found {
    let pod_value = pod_sc(spec).and_then(|sc| sc.run_as_non_root);
    let mut explicit = Vec::new();
    let mut implicit = Vec::new();
    for c in containers(spec) {
        match c.sc.and_then(|sc| sc.run_as_non_root) {
            Some(false) => explicit.push(c.name),
            // Without its own value a container inherits the pod's.
            None if pod_value != Some(true) => implicit.push(c.name),
            Some(true) | None => {}
        }
    }
    let who = setters(pod_value == Some(false), &explicit);
    if !who.is_empty() {
        return Some((
            "runAsNonRoot != true",
            format!(
                "{} must not set securityContext.runAsNonRoot=false",
                who.join(" and ")
            ),
        ));
    }
    (!implicit.is_empty()).then(|| {
        (
            "runAsNonRoot != true",
            format!(
                "pod or {} must set securityContext.runAsNonRoot=true",
                containers_phrase(&implicit)
            ),
        )
    })
}

/// Neither the pod nor a container may ask for uid 0.
fn run_as_user(_: &ObjectMeta, spec: &PodSpec) -> Found {
    let pod_bad = pod_sc(spec).and_then(|sc| sc.run_as_user) == Some(0);
    let bad: Vec<&str> = containers(spec)
        .filter(|c| c.sc.and_then(|sc| sc.run_as_user) == Some(0))
        .map(|c| c.name)
        .collect();
    let who = setters(pod_bad, &bad);
    (!who.is_empty()).then(|| {
        (
            "runAsUser=0",
            format!("{} must not set runAsUser=0", who.join(" and ")),
        )
    })
}

/// A seccomp profile must be set, on the pod or on every container, and not be `Unconfined`.
fn seccomp_profile_restricted(_: &ObjectMeta, spec: &PodSpec) -> Found {
    if is_windows(spec) {
        return None;
    }
    let scan = scan_seccomp(spec);
    if let Some(found) = seccomp_explicit(&scan) {
        return Some(found);
    }
    (!scan.pod_allowed && !scan.unset.is_empty()).then(|| {
        (
            "seccompProfile",
            format!(
                "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
                containers_phrase(&scan.unset)
            ),
        )
    })
}

#[cfg(test)]
mod tests;
