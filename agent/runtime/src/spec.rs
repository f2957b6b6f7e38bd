//! What the agent asks for ([`ContainerSpec`]) and the pure translation into an OCI runtime
//! spec ([`build_oci_spec`]). No I/O happens here.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use crate::RuntimeError;

/// Longest container id we accept (also bounds every path built from it).
pub const MAX_ID_LEN: usize = 128;

/// `PATH` given to a container whose environment has none (the value Docker and containerd use).
pub const DEFAULT_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Soft and hard `RLIMIT_NOFILE` for container processes.
pub const NOFILE_LIMIT: u64 = 1_048_576;

/// Docker's default capability set (moby `oci/caps/defaults.go`).
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Paths hidden from the container (bind-mounted over with /dev/null or an empty tmpfs).
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths remounted read-only inside the container.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// A validated container id: `[a-z0-9][a-z0-9_.-]{0,127}`.
///
/// The first character is alphanumeric so an id is never `.`/`..` and never looks like a flag.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerId(String);

impl ContainerId {
    /// Checks `id` against the allowed alphabet and length.
    pub fn parse(id: &str) -> Result<Self, RuntimeError> {
        let invalid = |reason: &str| RuntimeError::InvalidId {
            id: id.chars().take(MAX_ID_LEN + 8).collect(),
            reason: reason.to_owned(),
        };
        if id.is_empty() {
            return Err(invalid("must not be empty"));
        }
        if id.len() > MAX_ID_LEN {
            return Err(invalid("longer than 128 characters"));
        }
        if !id.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
            return Err(invalid("must start with [a-z0-9]"));
        }
        if let Some(c) = id.chars().find(|c| {
            !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'))
        }) {
            return Err(invalid(&format!("character {c:?} is not in [a-z0-9_.-]")));
        }
        Ok(Self(id.to_owned()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which network namespace the container joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkMode {
    /// Share the host's network namespace (no network namespace in the spec).
    Host,
    /// Join the network namespace at this path (e.g. `/run/netns/pod-…`), prepared by the agent.
    Path(PathBuf),
}

/// A bind mount of a host path (a volume) into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Absolute host path.
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub destination: String,
    /// Mount read-only.
    pub readonly: bool,
}

/// Everything the runtime needs to run one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Unique id, validated by [`ContainerId::parse`].
    pub id: String,
    /// Absolute path of the root filesystem, already mounted by the agent.
    pub rootfs: PathBuf,
    /// Command and arguments (non-empty).
    pub args: Vec<String>,
    /// `KEY=value` entries; `PATH` gets [`DEFAULT_PATH_ENV`] when absent.
    pub env: Vec<String>,
    /// Absolute working directory inside the container.
    pub cwd: String,
    /// Hostname in the container's UTS namespace; empty leaves the runtime's default.
    pub hostname: String,
    /// User the process runs as.
    pub uid: u32,
    /// Primary group of the process.
    pub gid: u32,
    /// Absolute cgroup path, unique per container, e.g. `/strake/pod-<uid>/<container>`.
    pub cgroup_path: String,
    /// Memory limit in bytes.
    pub memory_limit: Option<i64>,
    /// CFS quota and period in microseconds.
    pub cpu_quota: Option<(i64, u64)>,
    /// Host file the container's stdout and stderr are appended to.
    pub log_path: PathBuf,
    /// Network namespace choice.
    pub network: NetworkMode,
    /// IPC namespace to join (the pod's); None: a new one.
    pub ipc: Option<PathBuf>,
    /// UTS namespace to join (the pod's, its hostname already set); None: a new one.
    pub uts: Option<PathBuf>,
    /// Mount the root filesystem read-only.
    pub readonly_rootfs: bool,
    /// Volumes, mounted in order after the default mounts.
    pub mounts: Vec<BindMount>,
}

fn invalid(field: &str, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::InvalidSpec {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

fn oci(err: oci_spec::OciSpecError) -> RuntimeError {
    RuntimeError::OciSpec(err.to_string())
}

/// True when `path` is `/` or `/`-separated non-empty segments other than `.` and `..`.
pub(crate) fn is_clean_absolute(path: &Path) -> bool {
    let Some(s) = path.to_str() else {
        return false;
    };
    s == "/"
        || (s.starts_with('/')
            && s[1..]
                .split('/')
                .all(|seg| !seg.is_empty() && seg != "." && seg != ".."))
}

fn validate(spec: &ContainerSpec) -> Result<(), RuntimeError> {
    ContainerId::parse(&spec.id)?;
    if !is_clean_absolute(&spec.rootfs) {
        return Err(invalid("rootfs", "must be a clean absolute path"));
    }
    if spec.args.is_empty() || spec.args[0].is_empty() {
        return Err(invalid("args", "must name a program"));
    }
    if spec.args.iter().chain(&spec.env).any(|s| s.contains('\0')) {
        return Err(invalid("args/env", "must not contain NUL bytes"));
    }
    if let Some(bad) = spec
        .env
        .iter()
        .find(|e| !e.contains('=') || e.starts_with('='))
    {
        return Err(invalid("env", format!("{bad:?} is not KEY=value")));
    }
    if !is_clean_absolute(Path::new(&spec.cwd)) {
        return Err(invalid("cwd", "must be a clean absolute path"));
    }
    if spec.hostname.len() > 64 || spec.hostname.contains(['/', '\0']) {
        return Err(invalid(
            "hostname",
            "must be at most 64 bytes without '/' or NUL",
        ));
    }
    let cgroup = Path::new(&spec.cgroup_path);
    if !is_clean_absolute(cgroup) || cgroup == Path::new("/") {
        return Err(invalid(
            "cgroup_path",
            "must be a clean absolute path below the root",
        ));
    }
    if spec.memory_limit.is_some_and(|m| m <= 0) {
        return Err(invalid("memory_limit", "must be positive"));
    }
    if let Some((quota, period)) = spec.cpu_quota {
        if quota <= 0 {
            return Err(invalid("cpu_quota", "quota must be positive"));
        }
        if !(1_000..=1_000_000).contains(&period) {
            return Err(invalid(
                "cpu_quota",
                "period must be within 1000..=1000000 µs",
            ));
        }
    }
    if let NetworkMode::Path(path) = &spec.network
        && !is_clean_absolute(path)
    {
        return Err(invalid(
            "network",
            "namespace path must be a clean absolute path",
        ));
    }
    for (field, path) in [("ipc", &spec.ipc), ("uts", &spec.uts)] {
        if path.as_deref().is_some_and(|p| !is_clean_absolute(p)) {
            return Err(invalid(
                field,
                "namespace path must be a clean absolute path",
            ));
        }
    }
    for m in &spec.mounts {
        if !is_clean_absolute(&m.source) {
            return Err(invalid(
                "mounts",
                format!("source {:?} is not a clean absolute path", m.source),
            ));
        }
        if !is_clean_absolute(Path::new(&m.destination)) || m.destination == "/" {
            return Err(invalid(
                "mounts",
                format!(
                    "destination {:?} is not a clean absolute path",
                    m.destination
                ),
            ));
        }
    }
    Ok(())
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, RuntimeError> {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| (*o).to_owned()).collect::<Vec<_>>())
        .build()
        .map_err(oci)
}

fn default_mounts() -> Result<Vec<Mount>, RuntimeError> {
    Ok(vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        )?,
    ])
}

fn namespace(typ: LinuxNamespaceType, path: Option<&Path>) -> Result<LinuxNamespace, RuntimeError> {
    let builder = LinuxNamespaceBuilder::default().typ(typ);
    match path {
        Some(p) => builder.path(p),
        None => builder,
    }
    .build()
    .map_err(oci)
}

/// Translates a [`ContainerSpec`] into the OCI runtime spec libcontainer reads from `config.json`.
///
/// Namespaces pid/ipc/uts/mount/cgroup (+ network unless [`NetworkMode::Host`]); mounts /proc, /dev
/// (tmpfs), /dev/pts, /dev/shm, /dev/mqueue, /sys (ro), /sys/fs/cgroup (ro), then the volumes;
/// Docker's default capabilities, `noNewPrivileges`, masked and read-only paths, `RLIMIT_NOFILE`,
/// a deny-all device cgroup (the runtime adds its standard allow list) and the limits.
pub fn build_oci_spec(spec: &ContainerSpec) -> Result<Spec, RuntimeError> {
    validate(spec)?;

    let caps: HashSet<Capability> = DEFAULT_CAPABILITIES.into_iter().collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()
        .map_err(oci)?;

    let mut env = spec.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(DEFAULT_PATH_ENV.to_owned());
    }

    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(spec.uid)
                .gid(spec.gid)
                .build()
                .map_err(oci)?,
        )
        .args(spec.args.clone())
        .env(env)
        .cwd(&spec.cwd)
        .capabilities(capabilities)
        .rlimits(vec![
            PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .hard(NOFILE_LIMIT)
                .soft(NOFILE_LIMIT)
                .build()
                .map_err(oci)?,
        ])
        .no_new_privileges(true)
        .build()
        .map_err(oci)?;

    let mut mounts = default_mounts()?;
    for m in &spec.mounts {
        let mut options = vec!["rbind", "rprivate"];
        if m.readonly {
            options.push("ro");
        }
        mounts.push(mount(
            &m.destination,
            "bind",
            &m.source.to_string_lossy(),
            &options,
        )?);
    }

    let mut namespaces = vec![
        namespace(LinuxNamespaceType::Pid, None)?,
        namespace(LinuxNamespaceType::Ipc, spec.ipc.as_deref())?,
        namespace(LinuxNamespaceType::Uts, spec.uts.as_deref())?,
        namespace(LinuxNamespaceType::Mount, None)?,
        namespace(LinuxNamespaceType::Cgroup, None)?,
    ];
    if let NetworkMode::Path(path) = &spec.network {
        namespaces.push(namespace(LinuxNamespaceType::Network, Some(path))?);
    }

    let mut resources = LinuxResourcesBuilder::default().devices(vec![
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .map_err(oci)?,
    ]);
    if let Some(limit) = spec.memory_limit {
        resources = resources.memory(
            LinuxMemoryBuilder::default()
                .limit(limit)
                .build()
                .map_err(oci)?,
        );
    }
    if let Some((quota, period)) = spec.cpu_quota {
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(period)
                .build()
                .map_err(oci)?,
        );
    }

    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(&spec.cgroup_path)
        .resources(resources.build().map_err(oci)?)
        .masked_paths(
            MASKED_PATHS
                .iter()
                .map(|p| (*p).to_owned())
                .collect::<Vec<_>>(),
        )
        .readonly_paths(
            READONLY_PATHS
                .iter()
                .map(|p| (*p).to_owned())
                .collect::<Vec<_>>(),
        )
        .build()
        .map_err(oci)?;

    // Builders start from oci-spec's runc-like defaults; every field that matters is set here.
    let mut built = SpecBuilder::default()
        .version(oci_spec::runtime::VERSION)
        .root(
            RootBuilder::default()
                .path(&spec.rootfs)
                .readonly(spec.readonly_rootfs)
                .build()
                .map_err(oci)?,
        )
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .build()
        .map_err(oci)?;
    built.set_hostname((!spec.hostname.is_empty()).then(|| spec.hostname.clone()));
    Ok(built)
}

/// Lowers the `RLIMIT_NOFILE` of `spec` to at most `max`: a runtime without
/// `CAP_SYS_RESOURCE` can't raise the hard limit, and libcontainer would fail the create.
pub fn clamp_nofile(spec: &mut Spec, max: u64) {
    let Some(process) = spec.process_mut().as_mut() else {
        return;
    };
    let Some(rlimits) = process.rlimits().as_ref() else {
        return;
    };
    let clamped = rlimits
        .iter()
        .map(|r| {
            if r.typ() != PosixRlimitType::RlimitNofile {
                return *r;
            }
            // Every builder field has a default, so building can't fail.
            PosixRlimitBuilder::default()
                .typ(r.typ())
                .hard(r.hard().min(max))
                .soft(r.soft().min(max))
                .build()
                .unwrap_or(*r)
        })
        .collect();
    process.set_rlimits(Some(clamped));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ContainerSpec {
        ContainerSpec {
            id: "pod-1.web_0".into(),
            rootfs: "/var/lib/strake/rootfs/web".into(),
            args: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
            env: vec!["FOO=bar".into()],
            cwd: "/".into(),
            hostname: "web".into(),
            uid: 1000,
            gid: 1000,
            cgroup_path: "/strake/pod-1/web".into(),
            memory_limit: Some(64 << 20),
            cpu_quota: Some((50_000, 100_000)),
            log_path: "/var/log/strake/web.log".into(),
            network: NetworkMode::Path("/run/netns/pod-1".into()),
            ipc: Some("/run/strake/sandboxes/1/ipc".into()),
            uts: None,
            readonly_rootfs: true,
            mounts: vec![BindMount {
                source: "/var/lib/strake/vol/data".into(),
                destination: "/data".into(),
                readonly: true,
            }],
        }
    }

    fn ns_types(spec: &Spec) -> Vec<LinuxNamespaceType> {
        spec.linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect()
    }

    #[test]
    fn ids_follow_the_documented_alphabet() {
        for ok in ["a", "0", "pod-1.web_0", &"a".repeat(128)] {
            assert_eq!(ContainerId::parse(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            ".",
            "..",
            "-a",
            "_a",
            "A",
            "a/b",
            "a b",
            "é",
            &"a".repeat(129),
        ] {
            let err = ContainerId::parse(bad).unwrap_err();
            assert!(
                matches!(err, RuntimeError::InvalidId { .. }),
                "{bad:?} gave {err}"
            );
        }
    }

    #[test]
    fn builds_the_full_spec() {
        let s = build_oci_spec(&sample()).unwrap();
        assert!(s.version().starts_with("1."));
        let root = s.root().as_ref().unwrap();
        assert_eq!(root.path(), Path::new("/var/lib/strake/rootfs/web"));
        assert_eq!(root.readonly(), Some(true));
        assert_eq!(s.hostname().as_deref(), Some("web"));

        let p = s.process().as_ref().unwrap();
        assert_eq!(p.args().as_ref().unwrap()[0], "/bin/sh");
        assert_eq!(p.user().uid(), 1000);
        assert_eq!(p.user().gid(), 1000);
        assert_eq!(p.cwd(), Path::new("/"));
        assert_eq!(p.no_new_privileges(), Some(true));
        assert_eq!(p.terminal(), Some(false));
        let env = p.env().as_ref().unwrap();
        assert!(env.contains(&"FOO=bar".to_owned()));
        assert!(env.contains(&DEFAULT_PATH_ENV.to_owned()));
        let caps = p.capabilities().as_ref().unwrap();
        let bounding = caps.bounding().as_ref().unwrap();
        assert_eq!(bounding.len(), DEFAULT_CAPABILITIES.len());
        assert!(bounding.contains(&Capability::NetBindService));
        assert!(!bounding.contains(&Capability::SysAdmin));
        assert!(caps.ambient().as_ref().unwrap().is_empty());
        let rl = &p.rlimits().as_ref().unwrap()[0];
        assert_eq!(
            (rl.typ(), rl.soft(), rl.hard()),
            (PosixRlimitType::RlimitNofile, NOFILE_LIMIT, NOFILE_LIMIT)
        );

        let linux = s.linux().as_ref().unwrap();
        assert_eq!(
            ns_types(&s),
            vec![
                LinuxNamespaceType::Pid,
                LinuxNamespaceType::Ipc,
                LinuxNamespaceType::Uts,
                LinuxNamespaceType::Mount,
                LinuxNamespaceType::Cgroup,
                LinuxNamespaceType::Network
            ]
        );
        let namespaces = linux.namespaces().as_ref().unwrap();
        let netns = namespaces.last().unwrap();
        assert_eq!(netns.path().as_deref(), Some(Path::new("/run/netns/pod-1")));
        assert_eq!(
            namespaces[1].path().as_deref(),
            Some(Path::new("/run/strake/sandboxes/1/ipc")),
            "the pod's IPC namespace is joined"
        );
        assert_eq!(namespaces[2].path(), &None, "a new UTS namespace");
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/strake/pod-1/web"))
        );
        let res = linux.resources().as_ref().unwrap();
        assert_eq!(res.memory().as_ref().unwrap().limit(), Some(64 << 20));
        let cpu = res.cpu().as_ref().unwrap();
        assert_eq!((cpu.quota(), cpu.period()), (Some(50_000), Some(100_000)));
        let dev = &res.devices().as_ref().unwrap()[0];
        assert!(!dev.allow());
        assert_eq!(dev.access().as_deref(), Some("rwm"));
        assert!(
            linux
                .masked_paths()
                .as_ref()
                .unwrap()
                .contains(&"/proc/kcore".to_owned())
        );
        assert!(
            linux
                .readonly_paths()
                .as_ref()
                .unwrap()
                .contains(&"/proc/sys".to_owned())
        );

        let mounts = s.mounts().as_ref().unwrap();
        let dests: Vec<_> = mounts
            .iter()
            .map(|m| m.destination().to_str().unwrap())
            .collect();
        assert_eq!(
            dests,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup",
                "/data"
            ]
        );
        let sys = &mounts[5];
        assert!(sys.options().as_ref().unwrap().contains(&"ro".to_owned()));
        let vol = mounts.last().unwrap();
        assert_eq!(vol.typ().as_deref(), Some("bind"));
        assert_eq!(
            vol.source().as_deref(),
            Some(Path::new("/var/lib/strake/vol/data"))
        );
        assert_eq!(
            vol.options().as_ref().unwrap(),
            &["rbind", "rprivate", "ro"]
        );
    }

    #[test]
    fn host_network_and_defaults() {
        let mut c = sample();
        c.network = NetworkMode::Host;
        c.env = vec!["PATH=/opt/bin".into()];
        c.memory_limit = None;
        c.cpu_quota = None;
        c.hostname = String::new();
        let s = build_oci_spec(&c).unwrap();
        assert!(!ns_types(&s).contains(&LinuxNamespaceType::Network));
        assert_eq!(s.hostname(), &None);
        let env = s.process().as_ref().unwrap().env().as_ref().unwrap();
        assert_eq!(env, &["PATH=/opt/bin"]);
        let res = s.linux().as_ref().unwrap().resources().as_ref().unwrap();
        assert!(res.memory().is_none() && res.cpu().is_none());
    }

    #[test]
    fn nofile_is_clamped_to_what_the_runtime_can_grant() {
        let mut s = build_oci_spec(&sample()).unwrap();
        clamp_nofile(&mut s, 20_000);
        let rl = &s.process().as_ref().unwrap().rlimits().as_ref().unwrap()[0];
        assert_eq!((rl.soft(), rl.hard()), (20_000, 20_000));
        clamp_nofile(&mut s, u64::MAX);
        let rl = &s.process().as_ref().unwrap().rlimits().as_ref().unwrap()[0];
        assert_eq!((rl.soft(), rl.hard()), (20_000, 20_000));
    }

    #[test]
    fn spec_serializes_to_oci_json() {
        let json = serde_json::to_value(build_oci_spec(&sample()).unwrap()).unwrap();
        assert_eq!(json["linux"]["cgroupsPath"], "/strake/pod-1/web");
        assert_eq!(json["process"]["noNewPrivileges"], true);
        assert_eq!(
            json["process"]["capabilities"]["bounding"]
                .as_array()
                .unwrap()
                .len(),
            14
        );
        assert_eq!(json["linux"]["resources"]["memory"]["limit"], 64 << 20);
    }

    #[test]
    fn rejects_bad_fields_naming_them() {
        type Mutation = fn(&mut ContainerSpec);
        let cases: [(&str, Mutation); 13] = [
            ("rootfs", |c| c.rootfs = "relative".into()),
            ("rootfs", |c| c.rootfs = "/a/./b".into()),
            ("args", |c| c.args.clear()),
            ("env", |c| c.env = vec!["NOEQUALS".into()]),
            ("cwd", |c| c.cwd = "tmp".into()),
            ("hostname", |c| c.hostname = "h".repeat(65)),
            ("cgroup_path", |c| c.cgroup_path = "strake/x".into()),
            ("cgroup_path", |c| c.cgroup_path = "/".into()),
            ("cgroup_path", |c| c.cgroup_path = "/strake//x".into()),
            ("memory_limit", |c| c.memory_limit = Some(0)),
            ("cpu_quota", |c| c.cpu_quota = Some((1000, 10))),
            ("network", |c| c.network = NetworkMode::Path("netns".into())),
            ("mounts", |c| c.mounts[0].destination = "data".into()),
        ];
        for (field, mutate) in cases {
            let mut c = sample();
            mutate(&mut c);
            match build_oci_spec(&c) {
                Err(RuntimeError::InvalidSpec { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: expected InvalidSpec, got {other:?}"),
            }
        }
        let mut c = sample();
        c.id = "Bad".into();
        assert!(matches!(
            build_oci_spec(&c),
            Err(RuntimeError::InvalidId { .. })
        ));
    }
}
