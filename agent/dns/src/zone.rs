//! The cluster's records, as upstream's DNS specification for Services and Pods lays them out
//! under the cluster domain (`cluster.local`), answered from a snapshot of the cluster:
//!
//! - `<svc>.<ns>.svc.<domain>`: A of the cluster IP, or of each ready endpoint for a headless
//!   Service; CNAME for an ExternalName Service; SRV for each named port;
//! - `<hostname>.<svc>.<ns>.svc.<domain>`: A of a headless Service's endpoint (its hostname,
//!   or its address with dashes);
//! - `_<port>._<proto>.<svc>.<ns>.svc.<domain>`: SRV of a named port;
//! - `<a-b-c-d>.<ns>.pod.<domain>`: A of the address in the name;
//! - PTR for cluster IPs and endpoint addresses.
//!
//! Everything else under the domain does not exist; names outside it are forwarded.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use hickory_proto::rr::rdata::{A, CNAME, PTR, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// Records live this long in clients' caches (upstream's CoreDNS default).
pub const TTL: u32 = 5;

/// A Service as DNS sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// None for a headless Service.
    pub cluster_ip: Option<Ipv4Addr>,
    pub external_name: Option<String>,
    pub ports: Vec<Port>,
    /// Ready endpoints.
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub name: String,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub hostname: Option<String>,
}

/// What a query gets.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Records(Vec<Record>),
    /// An ExternalName: this CNAME, and the target's records, which the caller resolves.
    Alias(Box<(Record, Name)>),
    /// The name exists, without records of the type.
    NoData,
    NxDomain,
    /// Not a cluster name: ask the upstream resolvers.
    Forward,
}

/// A snapshot of the cluster's names.
#[derive(Debug, Clone)]
pub struct Zone {
    domain: Name,
    services: HashMap<(String, String), Service>,
    reverse: HashMap<Ipv4Addr, Name>,
}

fn dashed(ip: Ipv4Addr) -> String {
    ip.to_string().replace('.', "-")
}

fn name(s: &str) -> Option<Name> {
    Name::from_ascii(s).ok()
}

impl Zone {
    /// The zone of `domain` (e.g. `cluster.local`) holding `services`.
    pub fn new(domain: &str, services: Vec<Service>) -> Option<Self> {
        let domain = name(&format!("{}.", domain.trim_end_matches('.')))?.to_lowercase();
        let mut reverse = HashMap::new();
        let mut map = HashMap::new();
        for s in services {
            let svc = format!("{}.{}.svc.{}", s.name, s.namespace, domain);
            if let (Some(ip), Some(n)) = (s.cluster_ip, name(&svc)) {
                reverse.insert(ip, n);
            }
            for e in &s.endpoints {
                let host = e.hostname.clone().unwrap_or_else(|| dashed(e.ip));
                if let Some(n) = name(&format!("{host}.{svc}")) {
                    reverse.entry(e.ip).or_insert(n);
                }
            }
            map.insert((s.namespace.clone(), s.name.clone()), s);
        }
        Some(Self {
            domain,
            services: map,
            reverse,
        })
    }

    pub fn domain(&self) -> &Name {
        &self.domain
    }

    /// The zone's SOA, for negative answers.
    pub fn soa(&self) -> Record {
        let ns = name("ns.dns").and_then(|n| n.append_domain(&self.domain).ok());
        let mail = name("hostmaster").and_then(|n| n.append_domain(&self.domain).ok());
        let soa = SOA::new(
            ns.unwrap_or_else(|| self.domain.clone()),
            mail.unwrap_or_else(|| self.domain.clone()),
            1,
            7200,
            1800,
            86400,
            TTL,
        );
        Record::from_rdata(self.domain.clone(), TTL, RData::SOA(soa))
    }

    pub fn answer(&self, qname: &Name, qtype: RecordType) -> Answer {
        let q = qname.to_lowercase();
        if !self.domain.zone_of(&q) {
            return self.reverse_answer(&q, qtype);
        }
        let depth = usize::from(q.num_labels()) - usize::from(self.domain.num_labels());
        let labels: Vec<String> = q
            .iter()
            .take(depth)
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        let l: Vec<&str> = labels.iter().map(String::as_str).collect();
        let record = |rdata: RData| Record::from_rdata(qname.clone(), TTL, rdata);
        match l.as_slice() {
            [] => match qtype {
                RecordType::SOA => Answer::Records(vec![self.soa()]),
                _ => Answer::NoData,
            },
            ["svc"] | [_, "svc"] | ["pod"] | [_, "pod"] => Answer::NoData,
            [svc, ns, "svc"] => {
                let Some(s) = self.services.get(&(ns.to_string(), svc.to_string())) else {
                    return Answer::NxDomain;
                };
                if let Some(target) = s
                    .external_name
                    .as_deref()
                    .and_then(|t| name(&format!("{}.", t.trim_end_matches('.'))))
                {
                    let cname = record(RData::CNAME(CNAME(target.clone())));
                    return Answer::Alias(Box::new((cname, target)));
                }
                match qtype {
                    RecordType::A => {
                        let ips: Vec<Ipv4Addr> = match s.cluster_ip {
                            Some(ip) => vec![ip],
                            None => s.endpoints.iter().map(|e| e.ip).collect(),
                        };
                        if ips.is_empty() {
                            return Answer::NoData;
                        }
                        Answer::Records(ips.into_iter().map(|ip| record(RData::A(A(ip)))).collect())
                    }
                    RecordType::SRV => {
                        let srv = self.srv(s, qname, |_| true);
                        if srv.is_empty() {
                            Answer::NoData
                        } else {
                            Answer::Records(srv)
                        }
                    }
                    _ => Answer::NoData,
                }
            }
            [port, proto, svc, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => {
                let Some(s) = self.services.get(&(ns.to_string(), svc.to_string())) else {
                    return Answer::NxDomain;
                };
                let (port, proto) = (&port[1..], &proto[1..]);
                let srv = self.srv(s, qname, |p| p.name == port && p.protocol == proto);
                if srv.is_empty() {
                    Answer::NxDomain
                } else if qtype == RecordType::SRV {
                    Answer::Records(srv)
                } else {
                    Answer::NoData
                }
            }
            [host, svc, ns, "svc"] => {
                let Some(s) = self.services.get(&(ns.to_string(), svc.to_string())) else {
                    return Answer::NxDomain;
                };
                let found: Vec<Ipv4Addr> = s
                    .endpoints
                    .iter()
                    .filter(|e| e.hostname.as_deref().unwrap_or(&dashed(e.ip)) == *host)
                    .map(|e| e.ip)
                    .collect();
                match (found.is_empty(), qtype) {
                    (true, _) => Answer::NxDomain,
                    (false, RecordType::A) => Answer::Records(
                        found
                            .into_iter()
                            .map(|ip| record(RData::A(A(ip))))
                            .collect(),
                    ),
                    (false, _) => Answer::NoData,
                }
            }
            [addr, _ns, "pod"] => match addr.replace('-', ".").parse::<Ipv4Addr>() {
                Ok(ip) if qtype == RecordType::A => Answer::Records(vec![record(RData::A(A(ip)))]),
                Ok(_) => Answer::NoData,
                Err(_) => Answer::NxDomain,
            },
            _ => Answer::NxDomain,
        }
    }

    /// SRV records of `s`'s named ports that `keep` keeps: one per port pointing at the
    /// Service, or, for a headless Service, one per port and endpoint.
    fn srv(&self, s: &Service, _qname: &Name, keep: impl Fn(&Port) -> bool) -> Vec<Record> {
        let svc = format!("{}.{}.svc.{}", s.name, s.namespace, self.domain);
        let mut out = Vec::new();
        for p in s.ports.iter().filter(|p| !p.name.is_empty() && keep(p)) {
            let Some(owner) = name(&format!("_{}._{}.{svc}", p.name, p.protocol)) else {
                continue;
            };
            let targets: Vec<String> = if s.cluster_ip.is_some() {
                vec![svc.clone()]
            } else {
                s.endpoints
                    .iter()
                    .map(|e| {
                        format!(
                            "{}.{svc}",
                            e.hostname.clone().unwrap_or_else(|| dashed(e.ip))
                        )
                    })
                    .collect()
            };
            let weight = (100 / targets.len().max(1)) as u16;
            for t in targets {
                if let Some(target) = name(&t) {
                    out.push(Record::from_rdata(
                        owner.clone(),
                        TTL,
                        RData::SRV(SRV::new(0, weight, p.port, target)),
                    ));
                }
            }
        }
        out
    }

    fn reverse_answer(&self, q: &Name, qtype: RecordType) -> Answer {
        let Some(arpa) = name("in-addr.arpa.") else {
            return Answer::Forward;
        };
        if !arpa.zone_of(q) || q.num_labels() != 6 {
            return Answer::Forward;
        }
        let octets: Vec<u8> = q
            .iter()
            .take(4)
            .filter_map(|l| std::str::from_utf8(l).ok()?.parse().ok())
            .collect();
        let [d, c, b, a] = octets[..] else {
            return Answer::Forward;
        };
        match self.reverse.get(&Ipv4Addr::new(a, b, c, d)) {
            Some(target) if qtype == RecordType::PTR => Answer::Records(vec![Record::from_rdata(
                q.clone(),
                TTL,
                RData::PTR(PTR(target.clone())),
            )]),
            Some(_) => Answer::NoData,
            None => Answer::Forward,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone() -> Zone {
        let port = |name: &str, port| Port {
            name: name.into(),
            protocol: "tcp".into(),
            port,
        };
        Zone::new(
            "cluster.local",
            vec![
                Service {
                    namespace: "default".into(),
                    name: "web".into(),
                    cluster_ip: Some(Ipv4Addr::new(10, 96, 3, 4)),
                    external_name: None,
                    ports: vec![port("http", 80), port("", 81)],
                    endpoints: vec![Endpoint {
                        ip: Ipv4Addr::new(10, 244, 0, 5),
                        hostname: None,
                    }],
                },
                Service {
                    namespace: "db".into(),
                    name: "pg".into(),
                    cluster_ip: None,
                    external_name: None,
                    ports: vec![port("sql", 5432)],
                    endpoints: vec![
                        Endpoint {
                            ip: Ipv4Addr::new(10, 244, 0, 7),
                            hostname: Some("pg-0".into()),
                        },
                        Endpoint {
                            ip: Ipv4Addr::new(10, 244, 0, 8),
                            hostname: None,
                        },
                    ],
                },
                Service {
                    namespace: "default".into(),
                    name: "ext".into(),
                    cluster_ip: None,
                    external_name: Some("example.org".into()),
                    ports: vec![],
                    endpoints: vec![],
                },
            ],
        )
        .unwrap()
    }

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn rdata(a: Answer) -> Vec<String> {
        match a {
            Answer::Records(r) => r.iter().map(|r| r.data().to_string()).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn services_and_pods_resolve_as_upstream_lays_them_out() {
        let z = zone();
        assert_eq!(
            rdata(z.answer(&n("web.default.svc.cluster.local."), RecordType::A)),
            ["10.96.3.4"]
        );
        assert_eq!(
            rdata(z.answer(&n("WEB.Default.svc.cluster.local."), RecordType::A)),
            ["10.96.3.4"],
            "case-insensitive"
        );
        assert_eq!(
            z.answer(&n("web.default.svc.cluster.local."), RecordType::AAAA),
            Answer::NoData
        );
        let mut headless = rdata(z.answer(&n("pg.db.svc.cluster.local."), RecordType::A));
        headless.sort();
        assert_eq!(headless, ["10.244.0.7", "10.244.0.8"]);
        assert_eq!(
            rdata(z.answer(&n("pg-0.pg.db.svc.cluster.local."), RecordType::A)),
            ["10.244.0.7"]
        );
        assert_eq!(
            rdata(z.answer(&n("10-244-0-8.pg.db.svc.cluster.local."), RecordType::A)),
            ["10.244.0.8"]
        );
        assert_eq!(
            rdata(z.answer(
                &n("_http._tcp.web.default.svc.cluster.local."),
                RecordType::SRV
            )),
            ["0 100 80 web.default.svc.cluster.local."]
        );
        assert_eq!(
            rdata(z.answer(&n("_sql._tcp.pg.db.svc.cluster.local."), RecordType::SRV)),
            [
                "0 50 5432 pg-0.pg.db.svc.cluster.local.",
                "0 50 5432 10-244-0-8.pg.db.svc.cluster.local."
            ]
        );
        assert_eq!(
            rdata(z.answer(&n("10-244-1-9.db.pod.cluster.local."), RecordType::A)),
            ["10.244.1.9"]
        );
        assert_eq!(
            rdata(z.answer(&n("4.3.96.10.in-addr.arpa."), RecordType::PTR)),
            ["web.default.svc.cluster.local."]
        );
        assert_eq!(
            rdata(z.answer(&n("7.0.244.10.in-addr.arpa."), RecordType::PTR)),
            ["pg-0.pg.db.svc.cluster.local."]
        );
        match z.answer(&n("ext.default.svc.cluster.local."), RecordType::A) {
            Answer::Alias(alias) => {
                let (r, target) = *alias;
                assert_eq!(r.data().to_string(), "example.org.");
                assert_eq!(target, n("example.org."));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_rest_of_the_domain_does_not_exist_and_other_names_are_forwarded() {
        let z = zone();
        for missing in [
            "nope.default.svc.cluster.local.",
            "web.other.svc.cluster.local.",
            "x.web.default.svc.cluster.local.",
            "_nope._tcp.web.default.svc.cluster.local.",
            "google.com.default.svc.cluster.local.",
            "a.b.cluster.local.",
        ] {
            assert_eq!(
                z.answer(&n(missing), RecordType::A),
                Answer::NxDomain,
                "{missing}"
            );
        }
        assert_eq!(
            z.answer(&n("default.svc.cluster.local."), RecordType::A),
            Answer::NoData
        );
        assert_eq!(z.answer(&n("example.com."), RecordType::A), Answer::Forward);
        assert_eq!(
            z.answer(&n("1.1.1.1.in-addr.arpa."), RecordType::PTR),
            Answer::Forward
        );
        assert!(matches!(
            z.answer(&n("cluster.local."), RecordType::SOA),
            Answer::Records(_)
        ));
    }
}
