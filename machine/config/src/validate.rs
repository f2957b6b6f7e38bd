//! The rules decoding cannot express. Every rule runs on every field, so one pass reports every
//! problem; a problem between two fields (a duplicate address, overlapping subnets) is reported on
//! the later field and names the earlier one.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::net::IpAddr;
use std::ops::RangeInclusive;

use ipnet::IpNet;

use crate::checks::{
    check_ca_pin, check_count, check_disk_path, check_dns_label, check_dns_name, check_file_path,
    check_host_port, check_hostname, check_link_name, check_mac_glob, check_module_name, check_mtu,
    check_no_host_bits, check_pem, check_quantity, check_quantity_or_percent, check_sysctl_name,
    check_timezone, check_token, check_url,
};
use crate::types::{
    API_VERSION, Agent, Cluster, DeviceSelector, DiskSelector, FileOp, Install, KIND, Kernel,
    Machine, MachineConfig, Network, Parsed, Registries, Role, Route, Time,
};
use crate::{FieldError, child};

const EVICTION_SIGNALS: [&str; 5] = [
    "memory.available",
    "nodefs.available",
    "nodefs.inodesFree",
    "imagefs.available",
    "pid.available",
];
const RESERVABLE: [&str; 4] = ["cpu", "memory", "ephemeral-storage", "pid"];
const MAX_PODS: RangeInclusive<u32> = 1..=1000;
const VLAN_ID: RangeInclusive<u32> = 1..=4094;

impl MachineConfig {
    /// Checks every rule decoding cannot express and returns all problems, in document order.
    /// Empty means valid. Public so that configs built in code or by merging are checked the same
    /// way as parsed ones.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut c = Check::default();
        if self.api_version != API_VERSION {
            c.err(
                "apiVersion",
                format!("must be `{API_VERSION}`, not `{}`", self.api_version),
            );
        }
        if self.kind != KIND {
            c.err("kind", format!("must be `{KIND}`, not `{}`", self.kind));
        }
        machine(&mut c, &self.machine);
        cluster(&mut c, &self.cluster, self.machine.role);
        c.errors
    }
}

#[derive(Default)]
struct Check {
    errors: Vec<FieldError>,
}

impl Check {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn result(&mut self, path: impl Into<String>, r: Result<(), String>) {
        if let Err(message) = r {
            self.err(path, message);
        }
    }

    /// Reports a value that did not parse; returns the value when it did.
    fn parsed<'a, T>(
        &mut self,
        path: impl Into<String>,
        p: &'a Parsed<T>,
        what: &str,
    ) -> Option<&'a T> {
        if let Some(reason) = p.error() {
            self.err(path, format!("`{}` is not {what}: {reason}", p.raw()));
        }
        p.get()
    }
}

fn machine(c: &mut Check, m: &Machine) {
    if let Some(ca) = &m.ca {
        c.result("machine.ca.crt", check_pem(&ca.crt, "CERTIFICATE"));
        c.result("machine.ca.key", check_pem(&ca.key, "PRIVATE KEY"));
    }
    if let Some(h) = &m.hostname {
        c.result("machine.hostname", check_hostname(h));
    }
    if let Some(i) = &m.install {
        install(c, i);
    }
    network(c, &m.network);
    for (i, iface) in m.network.interfaces.iter().enumerate() {
        if iface.vip.is_some() && m.role != Role::Controlplane {
            c.err(
                format!("machine.network.interfaces[{i}].vip"),
                "only control planes hold the virtual IP",
            );
        }
    }
    if m.network
        .interfaces
        .iter()
        .filter(|i| i.vip.is_some())
        .count()
        > 1
    {
        c.err(
            "machine.network.interfaces",
            "give at most one interface a vip",
        );
    }
    time(c, &m.time);
    kernel(c, &m.kernel);
    registries(c, &m.registries);
    agent(c, &m.agent);
    for (name, value) in &m.sysctls {
        let p = child("machine.sysctls", name);
        c.result(&p, check_sysctl_name(name));
        if value.chars().any(char::is_control) {
            c.err(p, "the value must be one line without control characters");
        }
    }
    let mut written: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, f) in m.files.iter().enumerate() {
        let p = format!("machine.files[{i}]");
        c.result(format!("{p}.path"), check_file_path(&f.path));
        if f.permissions.0 > 0o7777 {
            c.err(
                format!("{p}.permissions"),
                format!("{:#o} has bits above 0o7777", f.permissions.0),
            );
        }
        match written.entry(f.path.as_str()) {
            Entry::Vacant(v) => {
                v.insert(i);
            }
            Entry::Occupied(o) if f.op != FileOp::Append => c.err(
                format!("{p}.path"),
                format!(
                    "`{}` is already written by machine.files[{}]; use `op: append` to add to it",
                    f.path,
                    o.get()
                ),
            ),
            Entry::Occupied(_) => {}
        }
    }
}

fn install(c: &mut Check, i: &Install) {
    match (&i.disk, &i.disk_selector) {
        (Some(_), Some(_)) => c.err(
            "machine.install",
            "set only one of `disk` and `diskSelector`",
        ),
        (None, None) => c.err("machine.install", "set one of `disk` or `diskSelector`"),
        (Some(disk), None) => c.result("machine.install.disk", check_disk_path(disk)),
        (None, Some(s)) => {
            let p = "machine.install.diskSelector";
            if *s == DiskSelector::default() {
                c.err(p, "give at least one of size, model, serial or wwn");
            }
            if let Some(size) = &s.size {
                c.parsed(format!("{p}.size"), size, "a size such as \">= 10GB\"");
            }
            for (field, value) in [("model", &s.model), ("serial", &s.serial), ("wwn", &s.wwn)] {
                if let Some(v) = value
                    && (v.trim().is_empty() || v.chars().any(char::is_control))
                {
                    c.err(
                        format!("{p}.{field}"),
                        "must not be empty or contain control characters",
                    );
                }
            }
        }
    }
}

fn network(c: &mut Check, n: &Network) {
    // Link name → index of the entry that configures it.
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    // Address → path of the field that claimed it first.
    let mut claims: BTreeMap<IpAddr, String> = BTreeMap::new();
    for (i, iface) in n.interfaces.iter().enumerate() {
        let p = format!("machine.network.interfaces[{i}]");
        match (&iface.interface, &iface.device_selector) {
            (Some(_), Some(_)) => c.err(&p, "set only one of `interface` and `deviceSelector`"),
            (None, None) => c.err(&p, "set one of `interface` or `deviceSelector`"),
            (Some(name), None) => {
                c.result(format!("{p}.interface"), check_link_name(name));
                match names.entry(name.as_str()) {
                    Entry::Vacant(v) => {
                        v.insert(i);
                    }
                    Entry::Occupied(o) => c.err(
                        format!("{p}.interface"),
                        format!(
                            "`{name}` is already configured by machine.network.interfaces[{}]",
                            o.get()
                        ),
                    ),
                }
            }
            (None, Some(sel)) => {
                device_selector(c, &format!("{p}.deviceSelector"), sel);
                if iface.bond.is_some() || iface.bridge.is_some() {
                    c.err(
                        &p,
                        "a bond or bridge is created, not found: name it with `interface`",
                    );
                }
            }
        }
        if iface.bond.is_some() && iface.bridge.is_some() {
            c.err(&p, "set only one of `bond` and `bridge`");
        }
        if let Some(mtu) = iface.mtu {
            c.result(format!("{p}.mtu"), check_mtu(mtu));
        }
        addresses(c, &mut claims, &p, &iface.addresses);
        if let Some(vip) = &iface.vip {
            let vp = format!("{p}.vip.ip");
            match c
                .parsed(&vp, &vip.ip, "an IPv4 address such as 192.168.1.100")
                .copied()
            {
                Some(IpAddr::V6(_)) => c.err(
                    &vp,
                    "only IPv4 virtual IPs are supported (they are announced by ARP)",
                ),
                Some(ip) if claims.contains_key(&ip) => {
                    c.err(&vp, format!("{ip} is already assigned at {}", claims[&ip]))
                }
                Some(ip) if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() => {
                    c.err(&vp, format!("{ip} cannot be shared on a link"))
                }
                _ => {}
            }
        }
        for (j, r) in iface.routes.iter().enumerate() {
            route(c, &format!("{p}.routes[{j}]"), r);
        }
        let mut vlan_ids: BTreeMap<u32, usize> = BTreeMap::new();
        for (j, v) in iface.vlans.iter().enumerate() {
            let vp = format!("{p}.vlans[{j}]");
            if !VLAN_ID.contains(&v.vlan_id) {
                c.err(
                    format!("{vp}.vlanId"),
                    format!("{} is not a VLAN ID (1-4094)", v.vlan_id),
                );
            } else {
                match vlan_ids.entry(v.vlan_id) {
                    Entry::Occupied(o) => c.err(
                        format!("{vp}.vlanId"),
                        format!(
                            "VLAN {} is already defined at {p}.vlans[{}]",
                            v.vlan_id,
                            o.get()
                        ),
                    ),
                    Entry::Vacant(e) => {
                        e.insert(j);
                    }
                }
            }
            if let Some(mtu) = v.mtu {
                c.result(format!("{vp}.mtu"), check_mtu(mtu));
                if let Some(parent) = iface.mtu
                    && mtu > parent
                {
                    c.err(
                        format!("{vp}.mtu"),
                        format!("{mtu} is larger than the interface's MTU {parent}"),
                    );
                }
            }
            addresses(c, &mut claims, &vp, &v.addresses);
        }
    }
    members(c, n, &names);
    for (i, ns) in n.nameservers.iter().enumerate() {
        c.parsed(
            format!("machine.network.nameservers[{i}]"),
            ns,
            "an IP address",
        );
    }
    for (i, d) in n.search_domains.iter().enumerate() {
        c.result(
            format!("machine.network.searchDomains[{i}]"),
            check_dns_name(d),
        );
    }
}

/// Checks host addresses and claims each for the field that lists it, so that a second claim on the
/// same address (on any interface or VLAN, whatever its prefix) is an error naming the first.
fn addresses(
    c: &mut Check,
    claims: &mut BTreeMap<IpAddr, String>,
    parent: &str,
    list: &[Parsed<IpNet>],
) {
    for (j, a) in list.iter().enumerate() {
        let p = format!("{parent}.addresses[{j}]");
        let what = "an address with a prefix length, such as 192.168.1.5/24";
        let Some(net) = c.parsed(&p, a, what) else {
            continue;
        };
        match claims.entry(net.addr()) {
            Entry::Occupied(o) => c.err(
                p,
                format!("{} is already assigned at {}", net.addr(), o.get()),
            ),
            Entry::Vacant(v) => {
                v.insert(p);
            }
        }
    }
}

fn route(c: &mut Check, p: &str, r: &Route) {
    let net = c.parsed(
        format!("{p}.network"),
        &r.network,
        "a CIDR such as 10.0.0.0/8",
    );
    if let Some(net) = net {
        c.result(format!("{p}.network"), check_no_host_bits(net));
    }
    let gateway = r
        .gateway
        .as_ref()
        .and_then(|g| c.parsed(format!("{p}.gateway"), g, "an IP address"));
    if let (Some(net), Some(gw)) = (net, gateway)
        && net.addr().is_ipv4() != gw.is_ipv4()
    {
        c.err(
            format!("{p}.gateway"),
            format!("gateway {gw} is not in the same IP family as {net}"),
        );
    }
}

fn device_selector(c: &mut Check, p: &str, s: &DeviceSelector) {
    if s.hardware_addr.is_none() && s.driver.is_none() {
        c.err(p, "give at least one of hardwareAddr or driver");
    }
    if let Some(mac) = &s.hardware_addr {
        c.result(format!("{p}.hardwareAddr"), check_mac_glob(mac));
    }
    if let Some(driver) = &s.driver {
        c.result(format!("{p}.driver"), check_module_name(driver));
    }
}

/// Bond and bridge members: each must be declared by name, carry no addresses of its own (the
/// master holds them), and belong to one master only.
fn members(c: &mut Check, n: &Network, names: &BTreeMap<&str, usize>) {
    let mut member_of: BTreeMap<&str, String> = BTreeMap::new();
    for (i, iface) in n.interfaces.iter().enumerate() {
        let (kind, list) = match (&iface.bond, &iface.bridge) {
            (Some(b), _) => ("bond", &b.interfaces),
            (None, Some(b)) => ("bridge", &b.interfaces),
            (None, None) => continue,
        };
        let p = format!("machine.network.interfaces[{i}].{kind}.interfaces");
        if list.is_empty() {
            c.err(&p, format!("a {kind} needs at least one member"));
        }
        for (j, m) in list.iter().enumerate() {
            let mp = format!("{p}[{j}]");
            if iface.interface.as_deref() == Some(m.as_str()) {
                c.err(mp, format!("`{m}` cannot be a member of itself"));
                continue;
            }
            let declared = names
                .get(m.as_str())
                .and_then(|&k| n.interfaces.get(k).map(|e| (k, e)));
            match declared {
                None => c.err(
                    &mp,
                    format!(
                        "`{m}` is not configured: declare it as its own entry in \
                         machine.network.interfaces (it may have no settings)"
                    ),
                ),
                Some((k, e)) if e.dhcp || !e.addresses.is_empty() || !e.vlans.is_empty() => c.err(
                    &mp,
                    format!(
                        "`{m}` (machine.network.interfaces[{k}]) has its own addresses, DHCP or \
                         VLANs, which a {kind} member cannot have"
                    ),
                ),
                Some(_) => {}
            }
            match member_of.entry(m.as_str()) {
                Entry::Occupied(o) => {
                    c.err(mp, format!("`{m}` is already a member of {}", o.get()))
                }
                Entry::Vacant(v) => {
                    v.insert(format!("machine.network.interfaces[{i}]"));
                }
            }
        }
    }
}

fn time(c: &mut Check, t: &Time) {
    for (i, s) in t.servers.iter().enumerate() {
        c.result(format!("machine.time.servers[{i}]"), check_host_port(s));
    }
    if let Some(tz) = &t.timezone {
        c.result("machine.time.timezone", check_timezone(tz));
    }
}

fn kernel(c: &mut Check, k: &Kernel) {
    for (i, a) in k.args.iter().enumerate() {
        if a.is_empty() || a.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
            c.err(
                format!("machine.kernel.args[{i}]"),
                "one argument per entry, without spaces or control characters",
            );
        }
    }
    for (i, m) in k.modules.iter().enumerate() {
        c.result(
            format!("machine.kernel.modules[{i}].name"),
            check_module_name(&m.name),
        );
    }
}

fn registries(c: &mut Check, r: &Registries) {
    for (host, mirror) in &r.mirrors {
        let p = child("machine.registries.mirrors", host);
        if host != "*" {
            c.result(&p, check_host_port(host));
        }
        if mirror.endpoints.is_empty() {
            c.err(format!("{p}.endpoints"), "give at least one endpoint");
        }
        for (i, e) in mirror.endpoints.iter().enumerate() {
            c.result(format!("{p}.endpoints[{i}]"), check_url(e));
        }
    }
    for (host, cfg) in &r.config {
        let p = child("machine.registries.config", host);
        c.result(&p, check_host_port(host));
        if let Some(auth) = &cfg.auth {
            let filled = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
            match (
                filled(&auth.username),
                filled(&auth.password),
                filled(&auth.auth),
            ) {
                (true, true, false) | (false, false, true) => {}
                _ => c.err(
                    format!("{p}.auth"),
                    "give either `username` and `password`, or `auth`",
                ),
            }
        }
        if let Some(ca) = &cfg.ca {
            let pem = ca.contains("-----BEGIN CERTIFICATE-----")
                && ca.contains("-----END CERTIFICATE-----");
            if !pem {
                c.err(format!("{p}.ca"), "must be one or more PEM certificates");
            }
            if cfg.insecure_skip_verify {
                c.err(
                    format!("{p}.insecureSkipVerify"),
                    "`ca` is set, so verification is wanted: drop one of the two",
                );
            }
        }
    }
}

fn agent(c: &mut Check, a: &Agent) {
    if !MAX_PODS.contains(&a.max_pods) {
        c.err(
            "machine.agent.maxPods",
            format!("{} is not between 1 and 1000", a.max_pods),
        );
    }
    for (signal, value) in &a.eviction_hard {
        let p = child("machine.agent.evictionHard", signal);
        if EVICTION_SIGNALS.contains(&signal.as_str()) {
            c.result(p, check_quantity_or_percent(value));
        } else {
            c.err(
                p,
                format!(
                    "`{signal}` is not an eviction signal ({})",
                    EVICTION_SIGNALS.join(", ")
                ),
            );
        }
    }
    for (field, map) in [
        ("systemReserved", &a.system_reserved),
        ("kubeReserved", &a.kube_reserved),
    ] {
        for (resource, value) in map {
            let p = child(&format!("machine.agent.{field}"), resource);
            let r = match resource.as_str() {
                "pid" => check_count(value),
                other if RESERVABLE.contains(&other) => check_quantity(value),
                _ => Err(format!(
                    "`{resource}` cannot be reserved (use {})",
                    RESERVABLE.join(", ")
                )),
            };
            c.result(p, r);
        }
    }
}

fn cluster(c: &mut Check, cl: &Cluster, role: Role) {
    c.result("cluster.name", check_dns_label(&cl.name));
    if let Some(e) = &cl.endpoint {
        c.parsed("cluster.endpoint", e, "an https://host:port URL");
    }
    if role == Role::Worker && cl.endpoint.is_none() {
        c.err(
            "cluster.endpoint",
            "required: a worker joins the cluster at this address",
        );
    }
    match &cl.token {
        Some(t) => c.result("cluster.token", check_token(t)),
        None => c.err(
            "cluster.token",
            "required: joining nodes present the bootstrap token and the first node accepts it",
        ),
    }
    match &cl.ca_pin {
        Some(pin) => c.result("cluster.caPin", check_ca_pin(pin)),
        None if role == Role::Worker || cl.endpoint.is_some() => c.err(
            "cluster.caPin",
            "required to join: without it the token could be sent to an impostor",
        ),
        None => {}
    }
    if let Some(ca) = &cl.ca {
        if role == Role::Worker {
            c.err(
                "cluster.ca",
                "only control planes hold the cluster CA's key; a worker trusts the CA by cluster.caPin",
            );
        }
        c.result("cluster.ca.crt", check_pem(&ca.crt, "CERTIFICATE"));
        c.result("cluster.ca.key", check_pem(&ca.key, "PRIVATE KEY"));
    }
    // Every subnet so far, pod then service, with its path: one overlap check covers both lists.
    let mut seen: Vec<(String, IpNet)> = Vec::new();
    for (field, list) in [
        ("podSubnets", &cl.pod_subnets),
        ("serviceSubnets", &cl.service_subnets),
    ] {
        if list.is_empty() {
            c.err(format!("cluster.{field}"), "give at least one subnet");
        }
        let (mut v4, mut v6) = (None::<usize>, None::<usize>);
        for (i, s) in list.iter().enumerate() {
            let p = format!("cluster.{field}[{i}]");
            let Some(net) = c.parsed(&p, s, "a CIDR such as 10.244.0.0/16") else {
                continue;
            };
            c.result(&p, check_no_host_bits(net));
            let (family, first) = if net.addr().is_ipv4() {
                ("IPv4", &mut v4)
            } else {
                ("IPv6", &mut v6)
            };
            match *first {
                Some(k) => c.err(
                    &p,
                    format!(
                        "a second {family} subnet (after cluster.{field}[{k}]); one per family"
                    ),
                ),
                None => *first = Some(i),
            }
            if let Some((other_path, other)) = seen.iter().find(|(_, o)| overlaps(o, net)) {
                c.err(&p, format!("{net} overlaps {other} at {other_path}"));
            }
            seen.push((p, *net));
        }
    }
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(yaml: &str) -> Vec<String> {
        match MachineConfig::parse(yaml) {
            Ok(_) => Vec::new(),
            Err(e) => e.errors.into_iter().map(|e| e.path).collect(),
        }
    }

    fn messages(yaml: &str) -> Vec<String> {
        match MachineConfig::parse(yaml) {
            Ok(_) => Vec::new(),
            Err(e) => e.errors.iter().map(ToString::to_string).collect(),
        }
    }

    const HEAD: &str = "apiVersion: strake.dev/v1alpha1\nkind: MachineConfig\n";
    const CLUSTER: &str = "cluster:\n  name: lab\n  token: abcdef.0123456789abcdef\n";

    fn controlplane(machine_body: &str) -> String {
        format!("{HEAD}machine:\n  role: controlplane\n{machine_body}{CLUSTER}")
    }

    #[test]
    fn a_config_with_many_mistakes_reports_every_one_with_its_path() {
        let yaml = r#"
apiVersion: strake.dev/v1alpha1
kind: MachineConfig
machine:
  role: worker
  hostname: Bad_Host
  install:
    disk: /dev/vda
    diskSelector: {model: "QEMU*"}
  network:
    interfaces:
      - interface: eth0
        addresses: [10.0.0.5/24]
        mtu: 20000
      - interface: eth1
        addresses: [10.0.0.300/24, 10.0.0.5/16]
        vlans:
          - vlanId: 5000
  kernel:
    modules: [{name: "Bad Module"}]
  agent: {maxPods: 0}
  files:
    - path: /etc/passwd
      content: "x"
cluster:
  name: prod
  endpoint: https://10.0.0.1:6443
  podSubnets: [10.96.0.0/16]
"#;
        let mut got = paths(yaml);
        got.sort();
        let mut want = vec![
            "cluster.caPin",
            "cluster.serviceSubnets[0]",
            "cluster.token",
            "machine.agent.maxPods",
            "machine.files[0].path",
            "machine.hostname",
            "machine.install",
            "machine.kernel.modules[0].name",
            "machine.network.interfaces[0].mtu",
            "machine.network.interfaces[1].addresses[0]",
            "machine.network.interfaces[1].addresses[1]",
            "machine.network.interfaces[1].vlans[0].vlanId",
        ];
        want.sort_unstable();
        assert_eq!(got, want);
        let all = messages(yaml).join("\n");
        assert!(
            all.contains("machine.network.interfaces[1].addresses[1]: 10.0.0.5 is already assigned at machine.network.interfaces[0].addresses[0]"),
            "{all}"
        );
        assert!(
            all.contains("overlaps 10.96.0.0/16 at cluster.podSubnets[0]"),
            "{all}"
        );
    }

    #[test]
    fn the_machine_ca_must_be_a_pem_certificate_and_key() {
        let ok = controlplane(
            "  ca:\n    crt: \"-----BEGIN CERTIFICATE-----\\nMII=\\n-----END CERTIFICATE-----\\n\"\n    key: \"-----BEGIN PRIVATE KEY-----\\nMII=\\n-----END PRIVATE KEY-----\\n\"\n",
        );
        assert!(messages(&ok).is_empty(), "{:?}", messages(&ok));
        let bad = controlplane(
            "  ca:\n    crt: \"-----BEGIN PRIVATE KEY-----\\nMII=\\n-----END PRIVATE KEY-----\\n\"\n    key: hunter2\n",
        );
        assert_eq!(
            messages(&bad),
            [
                "machine.ca.crt: is a PEM `PRIVATE KEY`, not a `CERTIFICATE`",
                "machine.ca.key: is not PEM (expected `-----BEGIN PRIVATE KEY-----`)"
            ]
        );
        let cut = controlplane(
            "  ca:\n    crt: \"-----BEGIN CERTIFICATE-----\\nMII=\\n\"\n    key: \"-----BEGIN EC PRIVATE KEY-----\\nMII=\\n-----END EC PRIVATE KEY-----\\n\"\n",
        );
        assert_eq!(
            messages(&cut),
            ["machine.ca.crt: the PEM block has no `-----END CERTIFICATE-----` line"]
        );
    }

    #[test]
    fn the_same_address_on_an_interface_and_a_vlan_is_reported_on_the_second() {
        let yaml = controlplane(
            r#"  network:
    interfaces:
      - interface: eth0
        addresses: ["fd00::1/64"]
        vlans:
          - vlanId: 10
            addresses: ["fd00::1/128"]
          - vlanId: 10
"#,
        );
        let all = messages(&yaml).join("\n");
        assert!(all.contains("machine.network.interfaces[0].vlans[0].addresses[0]: fd00::1 is already assigned at machine.network.interfaces[0].addresses[0]"), "{all}");
        assert!(
            all.contains(
                "machine.network.interfaces[0].vlans[1].vlanId: VLAN 10 is already defined"
            ),
            "{all}"
        );
    }

    #[test]
    fn a_worker_needs_endpoint_token_and_ca_pin() {
        let yaml = format!("{HEAD}machine:\n  role: worker\ncluster:\n  name: lab\n");
        assert_eq!(
            paths(&yaml),
            ["cluster.endpoint", "cluster.token", "cluster.caPin"]
        );
        let yaml = format!(
            "{HEAD}machine:\n  role: worker\ncluster:\n  name: lab\n  endpoint: https://cp.lab:6443\n  \
             caPin: sha256:{}\n  token: not-a-token\n",
            "ab".repeat(32)
        );
        let errors = messages(&yaml);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("cluster.token: not a bootstrap token"));
        assert!(
            !errors[0].contains("not-a-token"),
            "the token leaked: {errors:?}"
        );
    }

    #[test]
    fn the_cluster_ca_is_a_control_plane_secret() {
        let ca = "  ca:\n    crt: \"-----BEGIN CERTIFICATE-----\\nAA==\\n-----END CERTIFICATE-----\\n\"\n    key: nope\n";
        let yaml = format!("{}{ca}", controlplane(""));
        assert_eq!(
            messages(&yaml),
            ["cluster.ca.key: is not PEM (expected `-----BEGIN PRIVATE KEY-----`)"]
        );
        let yaml = format!(
            "{HEAD}machine:\n  role: worker\ncluster:\n  name: lab\n  endpoint: https://cp.lab:6443\n  \
             caPin: sha256:{}\n  token: abcdef.0123456789abcdef\n{ca}",
            "ab".repeat(32)
        );
        assert_eq!(paths(&yaml), ["cluster.ca", "cluster.ca.key"]);
    }

    #[test]
    fn the_first_controlplane_needs_only_a_token_and_a_joining_one_a_pin() {
        assert!(paths(&controlplane("")).is_empty());
        let yaml = format!("{HEAD}machine:\n  role: controlplane\ncluster:\n  name: lab\n");
        assert_eq!(paths(&yaml), ["cluster.token"]);
        let yaml = format!(
            "{HEAD}machine:\n  role: controlplane\n{CLUSTER}  endpoint: https://cp-1.lab\n"
        );
        assert_eq!(paths(&yaml), ["cluster.caPin"]);
    }

    #[test]
    fn bond_members_must_be_declared_bare_and_used_once() {
        let yaml = controlplane(
            r#"  network:
    interfaces:
      - interface: eth0
        dhcp: true
      - interface: eth1
      - interface: eth1
      - interface: bond0
        bond: {interfaces: [eth0, eth1, eth9, bond0], mode: active-backup}
      - interface: br0
        bridge: {interfaces: [eth1]}
      - deviceSelector: {driver: virtio_net}
        bridge: {interfaces: []}
"#,
        );
        let got = messages(&yaml);
        let has =
            |path: &str, text: &str| got.iter().any(|m| m.starts_with(path) && m.contains(text));
        assert!(
            has(
                "machine.network.interfaces[2].interface",
                "already configured by machine.network.interfaces[1]"
            ),
            "{got:#?}"
        );
        assert!(
            has(
                "machine.network.interfaces[3].bond.interfaces[0]",
                "has its own addresses, DHCP"
            ),
            "{got:#?}"
        );
        assert!(
            has(
                "machine.network.interfaces[3].bond.interfaces[2]",
                "`eth9` is not configured"
            ),
            "{got:#?}"
        );
        assert!(
            has(
                "machine.network.interfaces[3].bond.interfaces[3]",
                "member of itself"
            ),
            "{got:#?}"
        );
        assert!(
            has(
                "machine.network.interfaces[4].bridge.interfaces[0]",
                "already a member of machine.network.interfaces[3]"
            ),
            "{got:#?}"
        );
        assert!(
            has(
                "machine.network.interfaces[5]: ",
                "name it with `interface`"
            ),
            "{got:#?}"
        );
        assert!(
            has(
                "machine.network.interfaces[5].bridge.interfaces",
                "at least one member"
            ),
            "{got:#?}"
        );
        assert_eq!(got.len(), 7, "{got:#?}");
    }

    #[test]
    fn dhcp_and_static_addresses_together_are_allowed() {
        let yaml = controlplane(
            "  network:\n    interfaces:\n      - interface: eth0\n        dhcp: true\n        addresses: [192.168.1.5/24]\n",
        );
        assert!(paths(&yaml).is_empty());
    }

    #[test]
    fn maps_keyed_by_dotted_names_quote_the_key_in_the_path() {
        let yaml = controlplane(
            r#"  sysctls:
    "net/../../etc": "1"
    net.ipv4.ip_forward: 1
  agent:
    evictionHard: {memory.available: "10 percent", disk.free: 1Gi}
    systemReserved: {cpu: 500m, pid: many, gpu: "1"}
  registries:
    mirrors:
      docker.io: {endpoints: ["ftp://mirror", "https://user@mirror"]}
    config:
      mirror.local:5000: {auth: {username: u}, ca: "not pem", insecureSkipVerify: true}
"#,
        );
        let mut got = paths(&yaml);
        got.sort();
        assert_eq!(
            got,
            [
                r#"machine.agent.evictionHard["disk.free"]"#,
                r#"machine.agent.evictionHard["memory.available"]"#,
                r#"machine.agent.systemReserved.gpu"#,
                r#"machine.agent.systemReserved.pid"#,
                r#"machine.registries.config["mirror.local:5000"].auth"#,
                r#"machine.registries.config["mirror.local:5000"].ca"#,
                r#"machine.registries.config["mirror.local:5000"].insecureSkipVerify"#,
                r#"machine.registries.mirrors["docker.io"].endpoints[0]"#,
                r#"machine.registries.mirrors["docker.io"].endpoints[1]"#,
                r#"machine.sysctls["net/../../etc"]"#,
            ]
        );
    }

    #[test]
    fn files_written_twice_must_append_and_modes_fit_in_12_bits() {
        let yaml = controlplane(
            r#"  files:
    - {path: /etc/strake/extra/a, content: x, permissions: 0o17777}
    - {path: /etc/strake/extra/a, content: y, op: append}
    - {path: /etc/strake/extra/a, content: z, op: overwrite}
"#,
        );
        assert_eq!(
            paths(&yaml),
            ["machine.files[0].permissions", "machine.files[2].path"]
        );
    }
}
