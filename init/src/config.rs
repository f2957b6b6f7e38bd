//! Boot configuration from the kernel command line (`/proc/cmdline`).
//!
//! The parser is pure: it never fails. Every problem (unknown `strake.*` key, invalid value) becomes a
//! [`ConfigWarning`] naming the key, and the affected field keeps its safe default. A panic in PID 1
//! is a kernel panic, so nothing here may panic on any input.

use std::fmt;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Longest hostname the kernel accepts (`HOST_NAME_MAX`).
const HOSTNAME_MAX: usize = 64;
/// Upper bound on a bootstrap token's length; anything longer is certainly a typo.
const TOKEN_MAX: usize = 512;

/// Which role this node plays in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs the store, API server, scheduler and controllers (and an agent).
    #[default]
    Controlplane,
    /// Runs only the node agent.
    Worker,
}

/// A static IPv4 configuration given as `strake.ip=<addr>/<prefix>:<gateway>[:<iface>[:<dns>]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticIp {
    pub address: Ipv4Addr,
    /// Prefix length, always `<= 32`.
    pub prefix: u8,
    /// Default gateway; `None` when the gateway field is empty.
    pub gateway: Option<Ipv4Addr>,
    /// Interface to configure; `None` means the first ethernet interface.
    pub interface: Option<String>,
    /// DNS servers (comma separated on the command line).
    pub dns: Vec<Ipv4Addr>,
}

/// How the primary interface gets its address.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "mode")]
pub enum IpConfig {
    #[default]
    Dhcp,
    Static(StaticIp),
}

/// Everything init learned from the kernel command line; written to [`BootConfig::RUNTIME_PATH`] for
/// the services.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootConfig {
    pub role: Role,
    pub hostname: Option<String>,
    pub token: Option<String>,
    /// `host:port` of registries reachable over plain HTTP.
    pub insecure_registries: Vec<String>,
    pub ip: IpConfig,
    /// Modules to load in addition to init's default list.
    pub extra_modules: Vec<String>,
    /// `host:port` of the cluster API (workers).
    pub api_endpoint: Option<String>,
    /// The cluster CA's pin (`cluster.caPin`): the agent joins only a cluster whose CA has it.
    #[serde(default)]
    pub ca_pin: Option<String>,
    /// The control planes' shared virtual IP (`strake.vip=`, or an interface's `vip.ip`),
    /// held by the store's leader.
    #[serde(default)]
    pub vip: Option<std::net::Ipv4Addr>,
    /// How other nodes' pods are reached: `auto`, `host-gw` or `vxlan` (`strake.podnet=`).
    #[serde(default)]
    pub pod_network: Option<String>,
    /// The disk Strake owns (`strake.disk=/dev/vda`): a blank one gets a GPT with a STATE
    /// partition, and an empty STATE partition on it is formatted. Without it a STATE partition
    /// is only found by its label, and nothing is ever formatted.
    #[serde(default)]
    pub state_disk: Option<String>,
    /// A machine config given inline (`strake.config=<base64 YAML>`); init validates it and
    /// folds it over these settings. Not written to the runtime copy.
    #[serde(skip)]
    pub machine_config: Option<String>,
    /// The command line configures the node itself (`strake.role`, `strake.token` or
    /// `strake.api`): with it and no machine config the node boots into that role, without both
    /// it waits in maintenance mode.
    #[serde(skip)]
    pub node_keys: bool,
    /// No machine config and no node keys: only machined runs, in maintenance mode, waiting for
    /// `apply-config`. Set by init after the STATE phase.
    #[serde(default)]
    pub maintenance: bool,
    pub debug: bool,
}

/// A problem found on the command line; the named key fell back to its default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigWarning {
    /// A `strake.*` key this version does not know.
    UnknownKey { key: String },
    /// A known key with a value that does not validate.
    InvalidValue {
        key: String,
        value: String,
        reason: String,
    },
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownKey { key } => write!(f, "unknown kernel parameter `{key}` ignored"),
            Self::InvalidValue { key, value, reason } => {
                write!(f, "invalid `{key}={value}`: {reason}; using the default")
            }
        }
    }
}

/// Errors reading or writing the runtime copy of the boot configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading boot config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("boot config {path} is not valid: {source}")]
    Decode {
        path: String,
        source: serde_json::Error,
    },
    #[error("writing boot config {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

impl BootConfig {
    /// Where init writes the parsed configuration (mode 0600) for the services.
    pub const RUNTIME_PATH: &str = "/run/strake/boot.json";

    /// Parses a kernel command line. Never fails: problems are returned as warnings and the
    /// affected fields keep their defaults.
    pub fn parse_cmdline(s: &str) -> (BootConfig, Vec<ConfigWarning>) {
        let mut cfg = BootConfig::default();
        let mut warnings = Vec::new();
        for token in split_cmdline(s) {
            let (key, value) = match token.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (token.as_str(), None),
            };
            let Some(name) = key.strip_prefix("strake.") else {
                continue;
            };
            let value_str = value.unwrap_or("");
            let invalid = |reason: String| ConfigWarning::InvalidValue {
                key: key.to_owned(),
                value: value_str.to_owned(),
                reason,
            };
            let result: Result<(), ConfigWarning> = match name {
                "role" => parse_role(value_str).map(|r| cfg.role = r).map_err(invalid),
                "hostname" => validate_hostname(value_str)
                    .map(|()| cfg.hostname = Some(value_str.to_ascii_lowercase()))
                    .map_err(invalid),
                "token" => validate_token(value_str)
                    .map(|()| cfg.token = Some(value_str.to_owned()))
                    .map_err(invalid),
                "registry.insecure" => split_list(value_str)
                    .map(|h| validate_host_port(h).map(|()| h.to_owned()))
                    .collect::<Result<Vec<_>, _>>()
                    .map(|list| cfg.insecure_registries = list)
                    .map_err(invalid),
                "ip" => parse_ip(value_str).map(|ip| cfg.ip = ip).map_err(invalid),
                "modules" => split_list(value_str)
                    .map(|m| validate_module_name(m).map(|()| m.to_owned()))
                    .collect::<Result<Vec<_>, _>>()
                    .map(|list| cfg.extra_modules = list)
                    .map_err(invalid),
                "api" => validate_host_port(value_str)
                    .map(|()| cfg.api_endpoint = Some(value_str.to_owned()))
                    .map_err(invalid),
                "vip" => value_str
                    .parse::<std::net::Ipv4Addr>()
                    .map(|ip| cfg.vip = Some(ip))
                    .map_err(|e| invalid(format!("expected an IPv4 address: {e}"))),
                "podnet" => match value_str {
                    "auto" | "host-gw" | "vxlan" => {
                        cfg.pod_network = Some(value_str.to_owned());
                        Ok(())
                    }
                    _ => Err(invalid("expected auto, host-gw or vxlan".into())),
                },
                "config" => decode_config(value_str)
                    .map(|c| cfg.machine_config = Some(c))
                    .map_err(invalid),
                "disk" => parse_disk(value_str)
                    .map(|d| cfg.state_disk = Some(d))
                    .map_err(invalid),
                "debug" => parse_bool(value).map(|b| cfg.debug = b).map_err(invalid),
                _ => Err(ConfigWarning::UnknownKey {
                    key: key.to_owned(),
                }),
            };
            match result {
                Ok(()) if matches!(name, "role" | "token" | "api") => cfg.node_keys = true,
                Ok(()) => {}
                Err(w) => warnings.push(w),
            }
        }
        (cfg, warnings)
    }

    /// Reads the runtime copy written by init.
    pub fn load(path: impl AsRef<Path>) -> Result<BootConfig, ConfigError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| ConfigError::Decode {
            path: shown,
            source,
        })
    }

    /// Writes the configuration as JSON with mode 0600 (it may hold the bootstrap token), creating
    /// the parent directory.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), ConfigError> {
        let path = path.as_ref();
        let err = |source| ConfigError::Write {
            path: path.display().to_string(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(err)?;
        }
        let json = serde_json::to_vec_pretty(self).map_err(|e| err(std::io::Error::other(e)))?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(err)?;
        // An existing file keeps its old mode on open: force 0600.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(err)?;
        file.write_all(&json).map_err(err)?;
        file.sync_all().map_err(err)
    }
}

/// Splits a kernel command line on whitespace, honouring double quotes (`key="a b"`), like the
/// kernel's `next_arg`. Quotes are removed.
pub fn split_cmdline(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut has_token = false;
    for c in s.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                has_token = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if has_token {
                    out.push(std::mem::take(&mut cur));
                    has_token = false;
                }
            }
            c => {
                cur.push(c);
                has_token = true;
            }
        }
    }
    if has_token {
        out.push(cur);
    }
    out
}

fn split_list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|p| !p.is_empty())
}

fn parse_role(v: &str) -> Result<Role, String> {
    match v {
        "controlplane" | "control-plane" => Ok(Role::Controlplane),
        "worker" => Ok(Role::Worker),
        _ => Err("expected `controlplane` or `worker`".into()),
    }
}

/// An inline machine config: base64 (standard or URL-safe, padding optional) of UTF-8 YAML.
fn decode_config(v: &str) -> Result<String, String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let trimmed = v.trim_end_matches('=');
    let bytes = STANDARD_NO_PAD
        .decode(trimmed)
        .or_else(|_| URL_SAFE_NO_PAD.decode(trimmed))
        .map_err(|e| format!("not base64: {e}"))?;
    let text =
        String::from_utf8(bytes).map_err(|_| "the decoded config is not UTF-8".to_owned())?;
    if text.trim().is_empty() {
        return Err("the decoded config is empty".into());
    }
    Ok(text)
}

/// `/dev/vda` or `vda`: a kernel block device name, never a path elsewhere.
fn parse_disk(v: &str) -> Result<String, String> {
    let name = v.strip_prefix("/dev/").unwrap_or(v);
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphabetic();
    if ok {
        Ok(name.to_owned())
    } else {
        Err("expected a whole disk such as /dev/vda or /dev/nvme0n1".into())
    }
}

fn parse_bool(v: Option<&str>) -> Result<bool, String> {
    match v {
        None | Some("1" | "true" | "yes" | "on") => Ok(true),
        Some("0" | "false" | "no" | "off") => Ok(false),
        Some(_) => Err("expected 1/0, true/false, yes/no or on/off".into()),
    }
}

/// Validates an RFC 1123 hostname (dot-separated labels of letters, digits and hyphens).
pub fn validate_hostname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("hostname is empty".into());
    }
    if name.len() > HOSTNAME_MAX {
        return Err(format!("hostname is longer than {HOSTNAME_MAX} bytes"));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each dot-separated label must be 1 to 63 characters".into());
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err("only letters, digits, '-' and '.' are allowed".into());
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label may not start or end with '-'".into());
        }
    }
    Ok(())
}

fn validate_token(t: &str) -> Result<(), String> {
    if t.is_empty() {
        return Err("token is empty".into());
    }
    if t.len() > TOKEN_MAX {
        return Err(format!("token is longer than {TOKEN_MAX} bytes"));
    }
    if !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("token must be printable ASCII without spaces".into());
    }
    Ok(())
}

/// Validates `host:port` (host a DNS name or IPv4 address, or `[v6]:port`).
fn validate_host_port(s: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest
            .split_once("]:")
            .ok_or_else(|| format!("`{s}` is not [ipv6]:port"))?;
        h.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("`{h}` is not an IPv6 address"))?;
        (h, p)
    } else {
        let (h, p) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}` is not host:port"))?;
        if h.parse::<Ipv4Addr>().is_err() {
            validate_hostname(h).map_err(|e| format!("host `{h}`: {e}"))?;
        }
        (h, p)
    };
    if host.is_empty() {
        return Err(format!("`{s}` has an empty host"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("`{port}` in `{s}` is not a port number (1-65535)")),
        Ok(_) => Ok(()),
    }
}

fn validate_module_name(m: &str) -> Result<(), String> {
    if m.len() > 64
        || !m
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(format!("`{m}` is not a module name"));
    }
    Ok(())
}

fn parse_ip(v: &str) -> Result<IpConfig, String> {
    if v == "dhcp" {
        return Ok(IpConfig::Dhcp);
    }
    let mut fields = v.split(':');
    let cidr = fields.next().unwrap_or_default();
    let gateway = fields
        .next()
        .ok_or("expected dhcp or <addr>/<prefix>:<gateway>[:<iface>[:<dns>]]")?;
    let interface = fields.next().filter(|s| !s.is_empty());
    let dns = fields.next().unwrap_or("");
    if fields.next().is_some() {
        return Err("too many ':'-separated fields".into());
    }
    let (addr, prefix) = cidr
        .split_once('/')
        .ok_or_else(|| format!("`{cidr}` is not <addr>/<prefix>"))?;
    let address: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("`{addr}` is not an IPv4 address"))?;
    let prefix: u8 = prefix
        .parse()
        .map_err(|_| format!("`{prefix}` is not a prefix length"))?;
    if prefix > 32 {
        return Err(format!("prefix length {prefix} is larger than 32"));
    }
    let gateway = if gateway.is_empty() {
        None
    } else {
        Some(
            gateway
                .parse()
                .map_err(|_| format!("gateway `{gateway}` is not an IPv4 address"))?,
        )
    };
    if let Some(ifname) = interface
        && (ifname.len() > 15 || ifname.contains('/') || ifname.contains(char::is_whitespace))
    {
        return Err(format!("`{ifname}` is not an interface name"));
    }
    let dns = split_list(dns)
        .map(|d| {
            d.parse()
                .map_err(|_| format!("DNS server `{d}` is not an IPv4 address"))
        })
        .collect::<Result<Vec<Ipv4Addr>, String>>()?;
    Ok(IpConfig::Static(StaticIp {
        address,
        prefix,
        gateway,
        interface: interface.map(str::to_owned),
        dns,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> (BootConfig, Vec<ConfigWarning>) {
        BootConfig::parse_cmdline(s)
    }

    #[test]
    fn defaults_when_nothing_given() {
        let (cfg, w) = parse("console=ttyS0 quiet root=/dev/vda1\n");
        assert_eq!(cfg, BootConfig::default());
        assert_eq!(cfg.role, Role::Controlplane);
        assert_eq!(cfg.ip, IpConfig::Dhcp);
        assert!(w.is_empty());
    }

    #[test]
    fn full_command_line() {
        let (cfg, w) = parse(
            "console=ttyS0 strake.role=worker strake.hostname=Node-1 strake.token=abc.def \
             strake.registry.insecure=10.0.2.2:5000,reg.local:80 \
             strake.ip=192.168.1.5/24:192.168.1.1:eth1:1.1.1.1,8.8.8.8 strake.modules=vxlan,dm-verity \
             strake.api=10.0.2.15:6443 strake.podnet=vxlan strake.disk=/dev/vda strake.debug=1",
        );
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(cfg.role, Role::Worker);
        assert_eq!(cfg.hostname.as_deref(), Some("node-1"));
        assert_eq!(cfg.token.as_deref(), Some("abc.def"));
        assert_eq!(cfg.insecure_registries, ["10.0.2.2:5000", "reg.local:80"]);
        assert_eq!(
            cfg.ip,
            IpConfig::Static(StaticIp {
                address: Ipv4Addr::new(192, 168, 1, 5),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(192, 168, 1, 1)),
                interface: Some("eth1".into()),
                dns: vec![Ipv4Addr::new(1, 1, 1, 1), Ipv4Addr::new(8, 8, 8, 8)],
            })
        );
        assert_eq!(cfg.extra_modules, ["vxlan", "dm-verity"]);
        assert_eq!(cfg.api_endpoint.as_deref(), Some("10.0.2.15:6443"));
        assert_eq!(cfg.pod_network.as_deref(), Some("vxlan"));
        assert_eq!(cfg.state_disk.as_deref(), Some("vda"));
        assert!(cfg.debug);
        assert!(cfg.node_keys);
    }

    #[test]
    fn only_role_token_or_api_configure_the_node() {
        for (line, configures) in [
            (
                "strake.hostname=a strake.disk=/dev/vda strake.registry.insecure=r:1",
                false,
            ),
            ("strake.role=bogus", false),
            ("strake.role=worker", true),
            ("strake.token=abc.def", true),
            ("strake.api=10.0.0.1:6443", true),
        ] {
            assert_eq!(parse(line).0.node_keys, configures, "{line}");
        }
    }

    #[test]
    fn static_ip_minimal_and_without_gateway() {
        let (cfg, w) = parse("strake.ip=10.0.0.2/8:");
        assert!(w.is_empty(), "{w:?}");
        let IpConfig::Static(s) = cfg.ip else {
            panic!("expected static")
        };
        assert_eq!(
            (s.address, s.prefix, s.gateway, s.interface, s.dns.len()),
            (Ipv4Addr::new(10, 0, 0, 2), 8, None, None, 0)
        );
    }

    #[test]
    fn invalid_values_name_the_key_and_keep_defaults() {
        let cases = [
            ("strake.role=master", "strake.role"),
            ("strake.ip=10.0.0.1/33:10.0.0.254", "strake.ip"),
            ("strake.ip=10.0.0.1:10.0.0.254", "strake.ip"),
            ("strake.ip=10.0.0.300/24:10.0.0.1", "strake.ip"),
            ("strake.ip=10.0.0.1/24:gw", "strake.ip"),
            ("strake.ip=10.0.0.1/24", "strake.ip"),
            ("strake.ip=10.0.0.1/24:1.2.3.4:e:1.1.1.1:x", "strake.ip"),
            ("strake.hostname=-bad", "strake.hostname"),
            ("strake.hostname=a_b", "strake.hostname"),
            ("strake.hostname=", "strake.hostname"),
            ("strake.registry.insecure=host", "strake.registry.insecure"),
            (
                "strake.registry.insecure=host:0",
                "strake.registry.insecure",
            ),
            (
                "strake.registry.insecure=host:99999",
                "strake.registry.insecure",
            ),
            ("strake.api=:6443", "strake.api"),
            ("strake.debug=maybe", "strake.debug"),
            ("strake.modules=ok,../etc", "strake.modules"),
            ("strake.token=", "strake.token"),
            ("strake.podnet=flannel", "strake.podnet"),
            ("strake.disk=/dev/../etc/passwd", "strake.disk"),
            ("strake.disk=", "strake.disk"),
            ("strake.config=@@not-base64@@", "strake.config"),
            ("strake.config=", "strake.config"),
        ];
        for (line, key) in cases {
            let (cfg, w) = parse(line);
            assert_eq!(cfg, BootConfig::default(), "{line}");
            assert_eq!(w.len(), 1, "{line}: {w:?}");
            match &w[0] {
                ConfigWarning::InvalidValue { key: k, .. } => assert_eq!(k, key, "{line}"),
                other => panic!("{line}: unexpected {other:?}"),
            }
            assert!(w[0].to_string().contains(key));
        }
    }

    #[test]
    fn unknown_strake_keys_warn_and_others_are_ignored() {
        let (cfg, w) = parse("foo=bar strake.colour=blue strake.debug");
        assert!(cfg.debug);
        assert_eq!(
            w,
            vec![ConfigWarning::UnknownKey {
                key: "strake.colour".into()
            }]
        );
    }

    #[test]
    fn quoting_and_ipv6_registry() {
        assert_eq!(
            split_cmdline(r#"a="b c" d  "e f"=g"#),
            ["a=b c", "d", "e f=g"]
        );
        let (cfg, w) = parse("strake.registry.insecure=[fd00::1]:5000");
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(cfg.insecure_registries, ["[fd00::1]:5000"]);
    }

    #[test]
    fn never_panics_on_odd_input() {
        for s in [
            "strake.",
            "strake.ip=",
            "strake.ip=:::::",
            "strake.ip=/",
            "\"",
            "strake.role",
            "strake.ip=1.2.3.4/",
            "strake.api=[::1]",
            "=",
            "strake.=x",
        ] {
            let _ = parse(s);
        }
    }

    #[test]
    fn save_and_load_round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("strake/boot.json");
        let (cfg, _) = parse("strake.role=worker strake.token=t strake.ip=10.1.2.3/16:10.1.0.1");
        cfg.save(&path).expect("save");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // What only init needs (node_keys) is not written for the services.
        let mut want = cfg.clone();
        want.node_keys = false;
        assert_eq!(BootConfig::load(&path).expect("load"), want);
        std::fs::write(&path, b"{\"role\":\"pilot\"}").expect("write");
        assert!(matches!(
            BootConfig::load(&path),
            Err(ConfigError::Decode { .. })
        ));
    }
}
