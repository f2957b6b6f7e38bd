//! The machine config (`strake.dev/v1alpha1` `MachineConfig`) as init uses it. A config comes
//! inline on the kernel command line (`strake.config=<base64 YAML>`) or, on later boots, from
//! STATE, where init keeps the last one it was given. It is validated whole before anything
//! changes: a bad one stops the boot with every error on the console.
//!
//! It is the user layer over the command line's `strake.*` keys: what it sets wins. This version
//! applies the role, hostname, cluster token and endpoint, install disk (by path or selector), first interface (DHCP or
//! a static IPv4 address with its default route and nameservers), kernel modules, time servers
//! (one SNTP step at boot), sysctls and files. Every other field it is given is named on the console as not applied yet.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use ipnet::IpNet;
use strake_machineconfig::{FileOp, MachineConfig, Role as MachineRole};

use crate::config::{BootConfig, IpConfig, Role, StaticIp};
use crate::mounts::host_path;

/// Where STATE keeps the last config given at boot (command line, fw_cfg).
pub const STORED: &str = "/var/lib/strake/config/machine.yaml";
/// Where STATE keeps a config applied through the machine API. It wins over every other
/// source: once a user applied one, a stale one on the command line or fw_cfg cannot undo it.
pub const APPLIED: &str = "/var/lib/strake/config/applied.yaml";
/// A config applied with mode `staged`: init makes it the applied one at the next boot.
pub const STAGED: &str = "/var/lib/strake/config/staged.yaml";
/// The config in force on this boot, for machined (0600, tmpfs).
pub const IN_FORCE: &str = "/run/strake/machine.yaml";
/// Maintenance mode's hand-off: machined writes the config here and sends init SIGUSR1...
pub const HANDOFF: &str = "/run/strake/apply/machine.yaml";
/// ...and init answers here, as JSON [`HandoffResult`].
pub const HANDOFF_RESULT: &str = "/run/strake/apply/result.json";
/// Where a config QEMU hands over (`-fw_cfg name=opt/strake/config,file=...`) shows up.
pub const FW_CFG: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/strake/config/raw";
/// Largest config accepted from a source that is not the command line.
const MAX_BYTES: u64 = 1 << 20;

/// Where a config came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    CommandLine,
    /// A volume labelled STRAKECFG (`crate::cfgdrive`).
    ConfigDrive,
    FwCfg,
    /// Kept on STATE from an earlier boot's command line or fw_cfg.
    State,
    /// Applied through the machine API (kept on STATE as [`APPLIED`]).
    Api,
}

impl Source {
    pub fn describe(self) -> &'static str {
        match self {
            Source::CommandLine => "the kernel command line (strake.config=)",
            Source::ConfigDrive => "the config drive (a volume labelled STRAKECFG)",
            Source::FwCfg => "QEMU fw_cfg (opt/strake/config)",
            Source::State => STORED,
            Source::Api => "the machine API (apply-config)",
        }
    }

    /// Where STATE keeps a config from this source.
    pub fn kept_at(self) -> &'static str {
        match self {
            Source::Api => APPLIED,
            _ => STORED,
        }
    }
}

/// What init answers machined after a maintenance-mode hand-off.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HandoffResult {
    pub ok: bool,
    pub message: String,
}

/// A validated config, its text as given, and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: MachineConfig,
    pub yaml: String,
    pub source: Source,
}

/// Parses and validates; the error lists every problem, one per line, each with its field path.
pub fn load(yaml: &str, source: Source) -> Result<Loaded, String> {
    match MachineConfig::parse(yaml) {
        Ok(config) => Ok(Loaded {
            config,
            yaml: yaml.to_owned(),
            source,
        }),
        Err(e) => Err(format!(
            "the machine config from {} is not valid:\n{e}",
            source.describe()
        )),
    }
}

/// Folds the config onto the command line's configuration. Returns the paths of fields the
/// config sets that this version does not apply.
pub fn fold(cfg: &MachineConfig, boot: &mut BootConfig) -> Vec<String> {
    let mut ignored = Vec::new();
    let m = &cfg.machine;
    boot.role = match m.role {
        MachineRole::Controlplane => Role::Controlplane,
        MachineRole::Worker => Role::Worker,
    };
    if let Some(h) = &m.hostname {
        boot.hostname = Some(h.to_ascii_lowercase());
    }
    if let Some(t) = &cfg.cluster.token {
        boot.token = Some(t.clone());
    }
    if let Some(ep) = cfg.cluster.endpoint.as_ref().and_then(|e| e.get()) {
        boot.api_endpoint = Some(if ep.host.contains(':') {
            format!("[{}]:{}", ep.host, ep.port)
        } else {
            format!("{}:{}", ep.host, ep.port)
        });
    }
    if let Some(pin) = &cfg.cluster.ca_pin {
        boot.ca_pin = Some(pin.to_ascii_lowercase());
    }
    if let Some(install) = &m.install {
        // A selector is resolved against the disks when STATE is prepared.
        if let Some(d) = &install.disk {
            boot.state_disk = Some(d.strip_prefix("/dev/").unwrap_or(d).to_owned());
        }
        if install.wipe {
            ignored.push("machine.install.wipe".into());
        }
    }
    for module in &m.kernel.modules {
        if !boot.extra_modules.contains(&module.name) {
            boot.extra_modules.push(module.name.clone());
        }
    }
    if !m.kernel.args.is_empty() {
        ignored.push("machine.kernel.args".into());
    }
    fold_network(cfg, boot, &mut ignored);
    // The control plane holds it on whichever link carries the node's address.
    if let Some(std::net::IpAddr::V4(ip)) = m
        .network
        .interfaces
        .iter()
        .find_map(|i| i.vip.as_ref().and_then(|v| v.ip.get().copied()))
    {
        boot.vip = Some(ip);
    }
    // Time servers are asked once the network is up (`boot::sync_time`).
    if m.time.timezone.is_some() {
        ignored.push("machine.time.timezone".into());
    }
    // A registry reached over plain HTTP is a mirror of itself at an http:// endpoint (as in
    // Talos); other mirrors, credentials and CAs are not applied yet.
    for (name, mirror) in &m.registries.mirrors {
        let plain = format!("http://{name}");
        let itself = mirror
            .endpoints
            .iter()
            .all(|e| e.trim_end_matches('/') == plain);
        if itself && !mirror.endpoints.is_empty() {
            if !boot.insecure_registries.contains(name) {
                boot.insecure_registries.push(name.clone());
            }
        } else {
            ignored.push(path_of_mirror(name));
        }
    }
    if !m.registries.config.is_empty() {
        ignored.push("machine.registries.config".into());
    }
    let agent = &m.agent;
    if agent.max_pods != strake_machineconfig::DEFAULT_MAX_PODS
        || !agent.eviction_hard.is_empty()
        || !agent.system_reserved.is_empty()
        || !agent.kube_reserved.is_empty()
    {
        ignored.push("machine.agent".into());
    }
    let default_subnet = |list: &[strake_machineconfig::Parsed<IpNet>], default: &str| {
        list.is_empty() || (list.len() == 1 && list[0].raw() == default)
    };
    if !default_subnet(
        &cfg.cluster.pod_subnets,
        strake_machineconfig::DEFAULT_POD_SUBNET,
    ) || !default_subnet(
        &cfg.cluster.service_subnets,
        strake_machineconfig::DEFAULT_SERVICE_SUBNET,
    ) {
        ignored.push("cluster.podSubnets/serviceSubnets".into());
    }
    ignored
}

fn path_of_mirror(name: &str) -> String {
    format!(
        "machine.registries.mirrors[{}]",
        serde_json::Value::from(name)
    )
}

fn fold_network(cfg: &MachineConfig, boot: &mut BootConfig, ignored: &mut Vec<String>) {
    let net = &cfg.machine.network;
    if !net.search_domains.is_empty() {
        ignored.push("machine.network.searchDomains".into());
    }
    let Some(first) = net.interfaces.first() else {
        return;
    };
    for i in 1..net.interfaces.len() {
        ignored.push(format!("machine.network.interfaces[{i}]"));
    }
    let at = "machine.network.interfaces[0]";
    if first.device_selector.is_some() {
        ignored.push(format!("{at}.deviceSelector"));
    }
    for (what, set) in [
        ("mtu", first.mtu.is_some()),
        ("vlans", !first.vlans.is_empty()),
        ("bond", first.bond.is_some()),
        ("bridge", first.bridge.is_some()),
    ] {
        if set {
            ignored.push(format!("{at}.{what}"));
        }
    }
    let v4 = first.addresses.iter().find_map(|a| match a.get() {
        Some(IpNet::V4(n)) => Some(*n),
        _ => None,
    });
    if first
        .addresses
        .iter()
        .any(|a| matches!(a.get(), Some(IpNet::V6(_))))
    {
        ignored.push(format!("{at}.addresses (IPv6)"));
    }
    let mut gateway = None;
    for (i, r) in first.routes.iter().enumerate() {
        let default = matches!(r.network.get(), Some(IpNet::V4(n)) if n.prefix_len() == 0);
        match r.gateway.as_ref().and_then(|g| g.get()) {
            Some(std::net::IpAddr::V4(g)) if default && gateway.is_none() => gateway = Some(*g),
            _ => ignored.push(format!("{at}.routes[{i}]")),
        }
    }
    match v4 {
        Some(net4) => {
            boot.ip = IpConfig::Static(StaticIp {
                address: net4.addr(),
                prefix: net4.prefix_len(),
                gateway,
                interface: first.interface.clone(),
                dns: net
                    .nameservers
                    .iter()
                    .filter_map(|n| match n.get() {
                        Some(std::net::IpAddr::V4(a)) => Some(*a),
                        _ => None,
                    })
                    .collect(),
            });
        }
        None if first.dhcp => boot.ip = IpConfig::Dhcp,
        None => {}
    }
}

/// Keeps `yaml` as the config STATE boots with next time (0600: it holds the join token),
/// replacing the old one atomically.
pub fn store(root: &Path, yaml: &str) -> std::io::Result<()> {
    store_at(root, STORED, yaml)
}

/// Writes `text` at `abs` (under `root`) atomically, 0600, in a 0700 directory, and syncs both.
pub fn store_at(root: &Path, abs: &str, text: &str) -> std::io::Result<()> {
    let path = host_path(root, abs);
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let tmp = path.with_extension("new");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The stored config's text, if STATE has one.
pub fn stored(root: &Path) -> Option<std::io::Result<String>> {
    read_source(root, STORED)
}

/// The config applied through the machine API, if STATE has one. A staged one is promoted
/// first: this is the boot it was staged for.
pub fn applied(root: &Path) -> Option<std::io::Result<String>> {
    let staged = host_path(root, STAGED);
    if staged.exists()
        && let Err(e) = std::fs::rename(&staged, host_path(root, APPLIED))
    {
        return Some(Err(e));
    }
    read_source(root, APPLIED)
}

/// Whether this boot promoted a staged config (call before [`applied`]).
pub fn has_staged(root: &Path) -> bool {
    host_path(root, STAGED).exists()
}

/// The handed-off config and the answer to it.
pub fn handoff(root: &Path) -> Option<std::io::Result<String>> {
    read_source(root, HANDOFF)
}

pub fn answer_handoff(root: &Path, result: &HandoffResult) -> std::io::Result<()> {
    let json = serde_json::to_string(result).map_err(std::io::Error::other)?;
    store_at(root, HANDOFF_RESULT, &json)
}

/// The config QEMU's fw_cfg carries, if any.
pub fn fw_cfg(root: &Path) -> Option<std::io::Result<String>> {
    read_source(root, FW_CFG)
}

/// A config file's text: `None` if there is none, an error if it cannot be read, is larger than
/// 1 MiB or is not UTF-8.
fn read_source(root: &Path, abs: &str) -> Option<std::io::Result<String>> {
    use std::io::Read as _;
    let file = match std::fs::File::open(host_path(root, abs)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => return Some(Err(e)),
        Ok(f) => f,
    };
    let mut bytes = Vec::new();
    Some(
        file.take(MAX_BYTES + 1)
            .read_to_end(&mut bytes)
            .and_then(|n| {
                if n as u64 > MAX_BYTES {
                    return Err(std::io::Error::other("larger than 1 MiB"));
                }
                String::from_utf8(bytes).map_err(|_| std::io::Error::other("not UTF-8"))
            }),
    )
}

/// Writes each sysctl under `/proc/sys`; returns one message per sysctl the kernel refused.
pub fn apply_sysctls(root: &Path, cfg: &MachineConfig) -> Vec<String> {
    let mut failed = Vec::new();
    for (name, value) in &cfg.machine.sysctls {
        let path = host_path(root, &format!("/proc/sys/{}", name.replace('.', "/")));
        if let Err(e) = std::fs::write(&path, value) {
            failed.push(format!("machine.sysctls[{name:?}] = {value:?}: {e}"));
        }
    }
    failed
}

/// Writes the config's files (their paths were checked to be under the allowed prefixes).
pub fn write_files(root: &Path, cfg: &MachineConfig) -> Result<(), String> {
    for (i, f) in cfg.machine.files.iter().enumerate() {
        let err = |e: std::io::Error| format!("machine.files[{i}] {}: {e}", f.path);
        let path = host_path(root, &f.path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.mode(f.permissions.0);
        match f.op {
            FileOp::Create => opts.write(true).create_new(true),
            FileOp::Append => opts.append(true).create(true),
            FileOp::Overwrite => opts.write(true).create(true).truncate(true),
        };
        match opts.open(&path) {
            Ok(mut file) => file.write_all(f.content.as_bytes()).map_err(err)?,
            // `create` leaves an existing file as it is.
            Err(e) if f.op == FileOp::Create && e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(err(e)),
        }
    }
    Ok(())
}

/// Where the control plane keeps the cluster CA (its `--data-dir`'s `pki`).
pub const PKI_DIR: &str = "/var/lib/strake/pki";

/// What [`install_cluster_ca`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaInstall {
    /// The config gives no cluster CA, or the node is not a control plane.
    NotGiven,
    Written,
    /// STATE already holds this CA.
    Same,
    /// STATE holds another CA, which is kept: the cluster's certificates and every credential
    /// hang on it.
    Kept,
}

/// Puts the config's cluster CA (`cluster.ca`) where the control plane looks for it, before it
/// starts and would make its own. A different CA already on STATE is never overwritten.
pub fn install_cluster_ca(root: &Path, cfg: &MachineConfig) -> Result<CaInstall, String> {
    let Some(ca) = cfg
        .cluster
        .ca
        .as_ref()
        .filter(|_| cfg.machine.role == MachineRole::Controlplane)
    else {
        return Ok(CaInstall::NotGiven);
    };
    let dir = host_path(root, PKI_DIR);
    let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
    if crt.exists() || key.exists() {
        let held = std::fs::read_to_string(&crt).unwrap_or_default();
        return Ok(if held.trim() == ca.crt.trim() {
            CaInstall::Same
        } else {
            CaInstall::Kept
        });
    }
    let err = |what: &Path, e: std::io::Error| format!("writing {}: {e}", what.display());
    std::fs::create_dir_all(&dir).map_err(|e| err(&dir, e))?;
    for (path, text, mode) in [(&key, &ca.key, 0o600), (&crt, &ca.crt, 0o644)] {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map_err(|e| err(path, e))?;
        f.write_all(text.as_bytes()).map_err(|e| err(path, e))?;
        f.sync_all().map_err(|e| err(path, e))?;
    }
    Ok(CaInstall::Written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_ca_is_written_once_and_never_over_another() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let yaml = "apiVersion: strake.dev/v1alpha1\nkind: MachineConfig\nmachine:\n  role: controlplane\ncluster:\n  name: lab\n  token: abcdef.0123456789abcdef\n  ca:\n    crt: \"-----BEGIN CERTIFICATE-----\\nAA==\\n-----END CERTIFICATE-----\\n\"\n    key: \"-----BEGIN PRIVATE KEY-----\\nAA==\\n-----END PRIVATE KEY-----\\n\"\n";
        let cfg = load(yaml, Source::CommandLine).unwrap().config;
        assert_eq!(install_cluster_ca(root, &cfg), Ok(CaInstall::Written));
        let key = host_path(root, PKI_DIR).join("ca.key");
        assert!(
            std::fs::read_to_string(&key)
                .unwrap()
                .contains("PRIVATE KEY")
        );
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(install_cluster_ca(root, &cfg), Ok(CaInstall::Same));
        let crt = host_path(root, PKI_DIR).join("ca.crt");
        std::fs::write(&crt, "another").unwrap();
        assert_eq!(install_cluster_ca(root, &cfg), Ok(CaInstall::Kept));
        assert_eq!(std::fs::read_to_string(&crt).unwrap(), "another");
        let mut worker = cfg.clone();
        worker.machine.role = MachineRole::Worker;
        assert_eq!(install_cluster_ca(root, &worker), Ok(CaInstall::NotGiven));
    }

    const CONFIG: &str = "\
apiVersion: strake.dev/v1alpha1
kind: MachineConfig
machine:
  role: worker
  hostname: node-7
  install:
    disk: /dev/vdb
  network:
    interfaces:
      - interface: eth0
        addresses: [192.168.10.7/24]
        routes:
          - network: 0.0.0.0/0
            gateway: 192.168.10.1
      - interface: eth1
        dhcp: true
    nameservers: [192.168.10.1]
  kernel:
    modules:
      - name: dm_verity
  time:
    servers: [time.example.com]
  sysctls:
    net.ipv4.ip_forward: \"1\"
  files:
    - path: /etc/strake/extra/motd
      content: hello
      permissions: 0o600
cluster:
  name: lab
  endpoint: https://10.0.0.5:6443
  token: abcdef.0123456789abcdef
  caPin: sha256:0000000000000000000000000000000000000000000000000000000000000000
";

    #[test]
    fn a_config_overrides_the_command_line_and_names_what_it_does_not_apply() {
        let loaded = load(CONFIG, Source::CommandLine).unwrap();
        let (mut boot, _) = BootConfig::parse_cmdline(
            "strake.role=controlplane strake.hostname=x strake.modules=vxlan",
        );
        let ignored = fold(&loaded.config, &mut boot);
        assert_eq!(boot.role, Role::Worker);
        assert_eq!(boot.hostname.as_deref(), Some("node-7"));
        assert_eq!(boot.token.as_deref(), Some("abcdef.0123456789abcdef"));
        assert_eq!(boot.api_endpoint.as_deref(), Some("10.0.0.5:6443"));
        assert_eq!(boot.state_disk.as_deref(), Some("vdb"));
        assert_eq!(boot.extra_modules, ["vxlan", "dm_verity"]);
        assert_eq!(
            boot.ip,
            IpConfig::Static(StaticIp {
                address: "192.168.10.7".parse().unwrap(),
                prefix: 24,
                gateway: Some("192.168.10.1".parse().unwrap()),
                interface: Some("eth0".into()),
                dns: vec!["192.168.10.1".parse().unwrap()],
            })
        );
        assert_eq!(ignored, ["machine.network.interfaces[1]"]);
        assert_eq!(
            boot.ca_pin.as_deref(),
            Some("sha256:0000000000000000000000000000000000000000000000000000000000000000")
        );
    }

    #[test]
    fn a_registry_mirrored_to_itself_over_http_is_an_insecure_registry() {
        let with = CONFIG.replace(
            "  sysctls:",
            "  registries:\n    mirrors:\n      10.0.2.2:5000:\n        endpoints: [\"http://10.0.2.2:5000\"]\n      docker.io:\n        endpoints: [\"https://mirror.lab\"]\n  sysctls:",
        );
        let loaded = load(&with, Source::CommandLine).unwrap();
        let (mut boot, _) = BootConfig::parse_cmdline("strake.registry.insecure=r.lab:80");
        let ignored = fold(&loaded.config, &mut boot);
        assert_eq!(boot.insecure_registries, ["r.lab:80", "10.0.2.2:5000"]);
        assert!(
            ignored.contains(&"machine.registries.mirrors[\"docker.io\"]".to_string()),
            "{ignored:?}"
        );
    }

    #[test]
    fn a_bad_config_is_refused_with_every_error() {
        let bad = CONFIG
            .replace("192.168.10.7/24", "192.168.10.300/24")
            .replace("role: worker", "role: worker\n  colour: blue");
        let err = load(&bad, Source::CommandLine).unwrap_err();
        assert!(err.contains("colour"), "{err}");
        let bad = CONFIG
            .replace("192.168.10.7/24", "192.168.10.300/24")
            .replace("hostname: node-7", "hostname: -bad-");
        let err = load(&bad, Source::State).unwrap_err();
        assert!(err.contains(STORED), "{err}");
        assert!(err.contains("machine.hostname"), "{err}");
        assert!(
            err.contains("machine.network.interfaces[0].addresses[0]"),
            "{err}"
        );
    }

    #[test]
    fn stored_files_and_sysctls_land_under_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        assert!(stored(root).is_none());
        store(root, CONFIG).unwrap();
        assert_eq!(stored(root).unwrap().unwrap(), CONFIG);
        let mode = std::fs::metadata(host_path(root, STORED))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let cfg = load(CONFIG, Source::State).unwrap().config;
        std::fs::create_dir_all(root.join("proc/sys/net/ipv4")).unwrap();
        assert!(apply_sysctls(root, &cfg).is_empty());
        assert_eq!(
            std::fs::read_to_string(root.join("proc/sys/net/ipv4/ip_forward")).unwrap(),
            "1"
        );
        write_files(root, &cfg).unwrap();
        let motd = root.join("etc/strake/extra/motd");
        assert_eq!(std::fs::read_to_string(&motd).unwrap(), "hello");
        assert_eq!(
            std::fs::metadata(&motd).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // `create` keeps what is there.
        std::fs::write(&motd, "changed").unwrap();
        write_files(root, &cfg).unwrap();
        assert_eq!(std::fs::read_to_string(&motd).unwrap(), "changed");
    }
}
