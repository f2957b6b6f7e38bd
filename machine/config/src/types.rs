//! The document's shape. Decoding only checks types; every value that can be wrong in more than one
//! place at once (addresses, names, sizes) decodes leniently so that [`MachineConfig::validate`]
//! can report all of them together, each with its path.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The only `apiVersion` this crate reads.
pub const API_VERSION: &str = "strake.dev/v1alpha1";
/// The only `kind` this crate reads.
pub const KIND: &str = "MachineConfig";
/// Pods per node unless `machine.agent.maxPods` says otherwise (the kubelet's default).
pub const DEFAULT_MAX_PODS: u32 = 110;
/// Pod network unless `cluster.podSubnets` says otherwise.
pub const DEFAULT_POD_SUBNET: &str = "10.244.0.0/16";
/// Service network unless `cluster.serviceSubnets` says otherwise.
pub const DEFAULT_SERVICE_SUBNET: &str = "10.96.0.0/12";

/// One `kind: MachineConfig` document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MachineConfig {
    /// Kept as text (not checked by the decoder) so a wrong version is reported with the rest.
    pub api_version: String,
    pub kind: String,
    pub machine: Machine,
    pub cluster: Cluster,
}

/// Everything about this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Machine {
    pub role: Role,
    /// The machine CA: it signs the machine API's serving certificate and the clients that may
    /// call it (`strakectl gen config` makes one). Kept apart from the cluster CA. Absent: the
    /// machine API is off once the node is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<MachineCa>,
    /// RFC 1123, lowercase: it becomes the Kubernetes node name. Absent: DHCP or a generated name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Absent when the machine already runs from its disk or boots from the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install: Option<Install>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub network: Network,
    #[serde(default, skip_serializing_if = "is_default")]
    pub time: Time,
    #[serde(default, skip_serializing_if = "is_default")]
    pub kernel: Kernel,
    #[serde(default, skip_serializing_if = "is_default")]
    pub registries: Registries,
    /// Always written out, so that `to_yaml` shows the defaults in force.
    #[serde(default)]
    pub agent: Agent,
    /// `net.ipv4.ip_forward` → `"1"`. Numbers are accepted and kept as their text.
    #[serde(
        default,
        deserialize_with = "scalar_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub sysctls: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<File>,
}

/// A CA certificate and its private key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MachineCa {
    pub crt: String,
    pub key: String,
}

/// Which role this node plays in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs the store, API server, scheduler and controllers (and an agent).
    Controlplane,
    /// Runs only the node agent.
    Worker,
}

/// Where the OS is installed. Exactly one of `disk` and `diskSelector` must be set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Install {
    /// A device path such as `/dev/vda`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
    /// For fleets whose device names differ from machine to machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_selector: Option<DiskSelector>,
    /// Erase the whole disk first, not just the partitions Strake owns.
    #[serde(default, skip_serializing_if = "is_default")]
    pub wipe: bool,
}

/// Picks the install disk by its properties; every criterion given must match.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiskSelector {
    /// `">= 10GB"`, `"<= 2TB"` or an exact `"10GB"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Parsed<SizeMatcher>>,
    /// A glob (`*`, `?`) over the model string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wwn: Option<String>,
}

/// Links, addresses and resolvers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Network {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<Parsed<IpAddr>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search_domains: Vec<String>,
}

/// One link. Exactly one of `interface` and `deviceSelector` names it; a bond or bridge is created
/// by this entry and so must be named.
///
/// `dhcp: true` together with static `addresses` is allowed (as in Talos): the static addresses are
/// added next to the leased one, which is how a node keeps a fixed service address on a DHCP LAN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Interface {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_selector: Option<DeviceSelector>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub dhcp: bool,
    /// Host addresses with their prefix (`192.168.1.5/24`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<Parsed<IpNet>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// 68 (the IPv4 minimum) to 9216 (jumbo frames).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vlans: Vec<Vlan>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bond: Option<Bond>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<Bridge>,
    /// A virtual IP the control planes share on this link, held by one at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<Vip>,
}

/// The control planes' shared address: held by the store's leader, announced by gratuitous
/// ARP when it moves (so the control planes must share the link's L2 segment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Vip {
    /// An IPv4 address on the link's subnet that no machine uses.
    pub ip: Parsed<IpAddr>,
}

/// Picks a physical link by its properties; every criterion given must match.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceSelector {
    /// A MAC address; any octet may be or contain `*` (`52:54:00:*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_addr: Option<String>,
    /// The kernel driver bound to the link (`virtio_net`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
}

/// A static route. Without a gateway the network is on-link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    pub network: Parsed<IpNet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Parsed<IpAddr>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
}

/// An 802.1Q VLAN on top of its interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Vlan {
    /// 1..=4094; wider here so an out-of-range ID is reported with its path, not as a type error.
    pub vlan_id: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<Parsed<IpNet>>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub dhcp: bool,
    /// At most the parent interface's MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// Makes the entry a bond of the named links.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Bond {
    /// Each member must be declared as its own entry in `machine.network.interfaces` (it may have no
    /// settings): validation cannot see the hardware, and an undeclared name would otherwise only
    /// fail when the network is applied.
    pub interfaces: Vec<String>,
    pub mode: BondMode,
}

/// The Linux bonding modes, spelled as the kernel spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BondMode {
    BalanceRr,
    ActiveBackup,
    BalanceXor,
    Broadcast,
    #[serde(rename = "802.3ad")]
    Lacp,
    BalanceTlb,
    BalanceAlb,
}

/// Makes the entry a bridge over the named links (members declared as for [`Bond`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Bridge {
    pub interfaces: Vec<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub stp: bool,
}

/// Time synchronisation.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Time {
    /// NTP servers: host names or IP addresses, with an optional `:port` (123 by default).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub disabled: bool,
    /// An IANA name (`UTC`, `Europe/Paris`); only its shape is checked, the image carries the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

/// Kernel command line additions and modules (both need a reboot).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Kernel {
    /// One argument per entry (`console=ttyS0`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<KernelModule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KernelModule {
    pub name: String,
}

/// Image registry mirrors and per-registry TLS and credentials.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Registries {
    /// Registry host (`docker.io`, `*` for every registry) → where to pull from instead.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mirrors: BTreeMap<String, Mirror>,
    /// Registry or mirror host (`host` or `host:port`) → how to talk to it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, RegistryConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mirror {
    /// `https://` or `http://` URLs, tried in order.
    pub endpoints: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistryConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<RegistryAuth>,
    /// PEM certificate(s) to trust for this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// Refused together with `ca`: one of the two would be silently ignored.
    #[serde(default, skip_serializing_if = "is_default")]
    pub insecure_skip_verify: bool,
}

/// Either `username` and `password`, or `auth` (base64 `user:password`, as in Docker's config).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistryAuth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
}

/// Node agent (kubelet) settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Agent {
    #[serde(default = "default_max_pods")]
    pub max_pods: u32,
    /// Eviction signal (`memory.available`) → quantity (`100Mi`) or percentage (`10%`).
    #[serde(
        default,
        deserialize_with = "scalar_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub eviction_hard: BTreeMap<String, String>,
    /// Resource (`cpu`, `memory`, `ephemeral-storage`, `pid`) → quantity kept from pods for the OS.
    #[serde(
        default,
        deserialize_with = "scalar_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub system_reserved: BTreeMap<String, String>,
    /// As `systemReserved`, for the Strake services themselves.
    #[serde(
        default,
        deserialize_with = "scalar_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub kube_reserved: BTreeMap<String, String>,
}

impl Default for Agent {
    fn default() -> Self {
        Self {
            max_pods: DEFAULT_MAX_PODS,
            eviction_hard: BTreeMap::new(),
            system_reserved: BTreeMap::new(),
            kube_reserved: BTreeMap::new(),
        }
    }
}

/// A file written at boot. Only under [`crate::FILE_PREFIXES`]: this is for extra configuration,
/// not a way to replace the OS's own files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct File {
    pub path: String,
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub permissions: FileMode,
    #[serde(default)]
    pub op: FileOp,
}

/// What to do when the file already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileOp {
    /// Write it only if it does not exist.
    #[default]
    Create,
    Append,
    Overwrite,
}

/// Unix permission bits, `0o644` unless given.
///
/// YAML reads `0o644` as the intended number, but reads `0644` as the decimal 644 in YAML 1.2, so
/// the decoder takes an integer or a string of octal digits (`"0644"`, `"0o644"`), refuses
/// anything else, and writes the mode back as the string `"0o644"`, which means the same in both
/// readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl Default for FileMode {
    fn default() -> Self {
        Self(0o644)
    }
}

impl Serialize for FileMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("0o{:o}", self.0))
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FileModeVisitor)
    }
}

struct FileModeVisitor;

impl<'de> Visitor<'de> for FileModeVisitor {
    type Value = FileMode;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "a file mode: an integer such as 0o644 or a string of octal digits such as \"0644\"",
        )
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<FileMode, E> {
        u32::try_from(v)
            .map(FileMode)
            .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<FileMode, E> {
        u32::try_from(v)
            .map(FileMode)
            .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<FileMode, E> {
        let digits = v.strip_prefix("0o").unwrap_or(v);
        if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return Err(E::invalid_value(de::Unexpected::Str(v), &self));
        }
        u32::from_str_radix(digits, 8)
            .map(FileMode)
            .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
    }
}

/// The cluster this node creates or joins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cluster {
    /// A DNS label.
    pub name: String,
    /// The API server to join. Absent only on the first control-plane node, which creates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Parsed<Endpoint>>,
    /// The bootstrap token (`[a-z0-9]{6}.[a-z0-9]{16}`): presented by joining nodes and accepted
    /// by the first control-plane node, so every node needs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// `sha256:` and the hex digest of the cluster CA's public key; required wherever `endpoint`
    /// is, so that the token is never sent to an impostor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pin: Option<String>,
    /// The cluster CA (certificate and key), on control planes only: the first one signs with it
    /// instead of making its own, so the pin in worker configs can be known beforehand
    /// (`strakectl gen config` makes both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<MachineCa>,
    #[serde(default = "default_pod_subnets")]
    pub pod_subnets: Vec<Parsed<IpNet>>,
    #[serde(default = "default_service_subnets")]
    pub service_subnets: Vec<Parsed<IpNet>>,
}

/// A value written as text that must parse as `T`.
///
/// The text is kept with the result, so a bad value is reported by [`MachineConfig::validate`]
/// together with every other problem instead of stopping the decoder at the first one, and the
/// document round-trips exactly as written. After a clean validation every [`Parsed::get`] in the
/// document is `Some`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed<T> {
    raw: String,
    value: Result<T, String>,
}

impl<T: FromStr> Parsed<T>
where
    T::Err: fmt::Display,
{
    pub fn new(raw: impl Into<String>) -> Self {
        let raw = raw.into();
        let value = raw.parse::<T>().map_err(|e| e.to_string());
        Self { raw, value }
    }
}

impl<T> Parsed<T> {
    /// The text as written.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// The parsed value, `None` if the text did not parse.
    pub fn get(&self) -> Option<&T> {
        self.value.as_ref().ok()
    }

    /// Why the text did not parse.
    pub fn error(&self) -> Option<&str> {
        self.value.as_ref().err().map(String::as_str)
    }
}

impl<T> Serialize for Parsed<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

impl<'de, T: FromStr> Deserialize<'de> for Parsed<T>
where
    T::Err: fmt::Display,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = ScalarText::deserialize(d)?.0;
        Ok(Self::new(raw))
    }
}

/// Size comparison for [`DiskSelector::size`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeOp {
    AtLeast,
    AtMost,
    Exactly,
}

/// `">= 10GB"`, `"<= 2TiB"`, `"500GB"`: an optional `>=`, `<=` or `==`, an integer and a unit
/// (`B`, `KB`..`PB` in powers of 1000, `KiB`..`PiB` in powers of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeMatcher {
    pub op: SizeOp,
    pub bytes: u64,
}

impl SizeMatcher {
    pub fn matches(&self, size: u64) -> bool {
        match self.op {
            SizeOp::AtLeast => size >= self.bytes,
            SizeOp::AtMost => size <= self.bytes,
            SizeOp::Exactly => size == self.bytes,
        }
    }
}

impl FromStr for SizeMatcher {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (op, rest) = if let Some(r) = s.strip_prefix(">=") {
            (SizeOp::AtLeast, r)
        } else if let Some(r) = s.strip_prefix("<=") {
            (SizeOp::AtMost, r)
        } else if let Some(r) = s.strip_prefix("==") {
            (SizeOp::Exactly, r)
        } else {
            (SizeOp::Exactly, s)
        };
        let rest = rest.trim();
        let split = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (digits, unit) = rest.split_at(split);
        let number: u64 = digits.parse().map_err(|_| {
            "expected an optional >=, <= or ==, then an integer and a unit".to_owned()
        })?;
        let scale: u64 = match unit.trim() {
            "B" => 1,
            "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            "PB" => 1_000_000_000_000_000,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            "PiB" => 1 << 50,
            other => {
                return Err(format!(
                    "unknown unit `{other}` (use B, KB..PB or KiB..PiB)"
                ));
            }
        };
        let bytes = number
            .checked_mul(scale)
            .ok_or_else(|| "size is too large".to_owned())?;
        Ok(Self { op, bytes })
    }
}

/// The cluster API endpoint, `https://host:port` (port 6443 when omitted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// A DNS name or an IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let rest = s
            .strip_prefix("https://")
            .ok_or_else(|| "must start with https://".to_owned())?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#', '@']) {
            return Err("must be https://host:port, without a path, query or user".into());
        }
        let (host, port) = crate::checks::split_host_port(authority)?;
        crate::checks::check_host(host)?;
        Ok(Self {
            host: host.to_owned(),
            port: port.unwrap_or(6443),
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "https://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "https://{}:{}", self.host, self.port)
        }
    }
}

/// A scalar kept as text: `cpu: 1` and `cpu: "1"` mean the same, and JSON layers may carry either.
/// Booleans are refused: YAML reads `yes` as `true`, which no sysctl or quantity means.
struct ScalarText(String);

impl<'de> Deserialize<'de> for ScalarText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarTextVisitor)
    }
}

struct ScalarTextVisitor;

impl<'de> Visitor<'de> for ScalarTextVisitor {
    type Value = ScalarText;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or a number")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ScalarText, E> {
        Ok(ScalarText(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<ScalarText, E> {
        Ok(ScalarText(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ScalarText, E> {
        Ok(ScalarText(v.to_string()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ScalarText, E> {
        Ok(ScalarText(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<ScalarText, E> {
        Ok(ScalarText(v.to_string()))
    }
}

fn scalar_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let map = BTreeMap::<String, ScalarText>::deserialize(d)?;
    Ok(map.into_iter().map(|(k, v)| (k, v.0)).collect())
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn default_max_pods() -> u32 {
    DEFAULT_MAX_PODS
}

fn default_pod_subnets() -> Vec<Parsed<IpNet>> {
    vec![Parsed::new(DEFAULT_POD_SUBNET)]
}

fn default_service_subnets() -> Vec<Parsed<IpNet>> {
    vec![Parsed::new(DEFAULT_SERVICE_SUBNET)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_matchers() {
        let m: SizeMatcher = ">= 10GB".parse().unwrap();
        assert_eq!(
            m,
            SizeMatcher {
                op: SizeOp::AtLeast,
                bytes: 10_000_000_000
            }
        );
        assert!(m.matches(10_000_000_000) && !m.matches(9_999_999_999));
        let m: SizeMatcher = "<=2TiB".parse().unwrap();
        assert_eq!((m.op, m.bytes), (SizeOp::AtMost, 2 << 40));
        assert_eq!("10 GB".parse::<SizeMatcher>().unwrap().op, SizeOp::Exactly);
        for bad in [
            "",
            ">=",
            "10",
            "10 XB",
            "ten GB",
            "-1GB",
            "99999999999999PB",
            ">= 1.5GB",
        ] {
            assert!(bad.parse::<SizeMatcher>().is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoints() {
        let e: Endpoint = "https://10.0.0.1:6443".parse().unwrap();
        assert_eq!((e.host.as_str(), e.port), ("10.0.0.1", 6443));
        let e: Endpoint = "https://api.example.com/".parse().unwrap();
        assert_eq!(e.to_string(), "https://api.example.com:6443");
        let e: Endpoint = "https://[fd00::1]:443".parse().unwrap();
        assert_eq!(e.to_string(), "https://[fd00::1]:443");
        for bad in [
            "http://10.0.0.1:6443",
            "https://",
            "https://a:0",
            "https://a:99999",
            "https://a/b",
            "https://u@a:1",
            "https://[fd00::1",
            "https://bad_host:1",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn file_modes_from_yaml_and_json() {
        #[derive(Deserialize)]
        struct F {
            m: FileMode,
        }
        for (text, want) in [
            ("m: 0o600", 0o600),
            ("m: \"0600\"", 0o600),
            ("m: '0o755'", 0o755),
            ("m: 420", 0o644),
        ] {
            assert_eq!(
                serde_saphyr::from_str::<F>(text).unwrap().m,
                FileMode(want),
                "{text}"
            );
        }
        // `0644` is decimal in YAML 1.2; refusing it beats silently writing mode 0o1204.
        assert!(serde_saphyr::from_str::<F>("m: 0644").is_err());
        assert!(serde_saphyr::from_str::<F>("m: \"0o9\"").is_err());
        assert!(serde_saphyr::from_str::<F>("m: -1").is_err());
        let f: F = serde_json::from_str(r#"{"m": "0o640"}"#).unwrap();
        assert_eq!(f.m, FileMode(0o640));
        assert_eq!(
            serde_json::to_string(&FileMode(0o640)).unwrap(),
            r#""0o640""#
        );
    }
}
