//! NetworkPolicy for real, inside network namespaces this test creates: a node with three
//! pods on its bridge (a frontend, a backend and another), and Strake's policy table programmed
//! in the node's namespace. The seeds' `deny-all` isolates a pod both ways; `allow-specific`
//! lets the backend reach the frontend's port and nothing else, also through a Service; an
//! established connection survives a rebuild that still allows it and is cut by one that
//! forbids it; ipBlock with except and port ranges on egress. Needs root and br_netfilter;
//! never touches the host's own network.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use common::serve_in;
use strake_net::connect_in;
use strake_net::policy::{self, Allow, Block, Desired, Isolation, Peers, Ports};
use strake_net::services::{self, Protocol, ServicePort};

const SHORT: Duration = Duration::from_millis(700);

/// Whether `from` can open a connection to `to` and get the server's greeting.
fn reaches(from: &Path, to: SocketAddr) -> bool {
    let Ok(mut s) = connect_in(from, to, SHORT) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(SHORT));
    let mut buf = [0u8; 2];
    s.read_exact(&mut buf).is_ok() && &buf == b"hi"
}

/// Greets every connection on `port` in `netns` with "hi", then echoes lines, for as long as
/// the test runs.
fn greeter(netns: &Path, port: u16) {
    let _ = serve_in(netns, port, usize::MAX, |mut s, _| {
        std::thread::spawn(move || {
            let _ = s.write_all(b"hi");
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                let _ = s.write_all(line.as_bytes());
                line.clear();
            }
        });
    });
}

/// Sends a line on an open connection and waits for its echo.
fn echo(s: &mut TcpStream, text: &str) -> bool {
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(format!("{text}\n").as_bytes()).is_err() {
        return false;
    }
    let mut buf = vec![0u8; text.len() + 1];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(text.as_bytes())
}

fn iso(
    pod: &str,
    ip: Ipv4Addr,
    ingress: Option<Vec<Allow>>,
    egress: Option<Vec<Allow>>,
) -> Isolation {
    Isolation {
        pod: pod.into(),
        ip,
        ingress,
        egress,
    }
}

fn from_ips(ips: &[Ipv4Addr], ports: Option<Ports>) -> Allow {
    Allow {
        peers: Some(Peers {
            addresses: ips.iter().copied().collect::<BTreeSet<_>>(),
            blocks: vec![],
        }),
        ports,
    }
}

fn tcp(first: u16, last: u16) -> Option<Ports> {
    Some(Ports {
        protocol: Protocol::Tcp,
        range: Some((first, last)),
    })
}

#[test]
fn deny_all_allow_specific_and_established_connections() {
    common::require_root_and_br_netfilter();
    let tmp = tempfile::tempdir().unwrap();
    let lab = common::pod_node(tmp.path(), "10.97.3.0/24", &["front", "back", "other"]);
    let (node, net, cidr) = (&lab.node, &lab.net, lab.net.cidr());
    let [(front, f), (back, b), (other, o)] = [0, 1, 2].map(|i| (&lab.pods[i].0, lab.pods[i].1));
    for (ns, port) in [
        (&front.net, 8080),
        (&front.net, 8081),
        (&back.net, 8080),
        (&other.net, 8080),
    ] {
        greeter(ns, port);
    }
    let to_front = SocketAddr::from((f, 8080));
    let to_back = SocketAddr::from((b, 8080));
    let to_other = SocketAddr::from((o, 8080));

    // No policy: everyone reaches everyone.
    policy::sync(&Desired::default(), Some(&node.net)).unwrap();
    assert!(reaches(&other.net, to_front));
    assert!(reaches(&front.net, to_back));

    // deny-all on the frontend: isolated both ways.
    let deny_all = Desired {
        pods: vec![iso("web/front", f, Some(vec![]), Some(vec![]))],
    };
    policy::sync(&deny_all, Some(&node.net)).unwrap();
    assert!(!reaches(&back.net, to_front), "deny-all: nothing gets in");
    assert!(!reaches(&front.net, to_back), "deny-all: nothing gets out");
    assert!(reaches(&back.net, to_other), "other pods are not isolated");
    assert!(
        reaches(&node.net, to_front),
        "the node itself still reaches it (probes)"
    );

    // allow-specific: the backend reaches the frontend's 8080, nothing else gets in.
    let allow_specific = |extra: Vec<Ipv4Addr>| {
        let mut from = vec![b];
        from.extend(extra);
        Desired {
            pods: vec![iso(
                "web/front",
                f,
                Some(vec![from_ips(&from, tcp(8080, 8080))]),
                None,
            )],
        }
    };
    policy::sync(&allow_specific(vec![]), Some(&node.net)).unwrap();
    assert!(reaches(&back.net, to_front), "backend -> frontend:8080");
    assert!(!reaches(&other.net, to_front), "another pod is kept out");
    assert!(
        !reaches(&back.net, SocketAddr::from((f, 8081))),
        "only the allowed port"
    );
    assert!(reaches(&front.net, to_back), "egress is not isolated");

    // Through a Service: judged by the endpoint and its port, after the DNAT.
    let cluster_ip = Ipv4Addr::new(10, 100, 3, 10);
    services::sync(
        &services::Desired {
            pod_cidr: Some(cidr),
            cluster_cidr: "10.97.0.0/16".parse().unwrap(),
            node_ips: vec![net.gateway()],
            services: vec![ServicePort {
                name: "web/front:/TCP".into(),
                cluster_ip: Some(cluster_ip),
                external_ips: vec![],
                protocol: Protocol::Tcp,
                port: 80,
                node_port: None,
                endpoints: vec![(f, 8080)],
                local_endpoints: Vec::new(),
                internal_local: false,
                external_local: false,
                affinity_timeout: None,
            }],
            dns: None,
        },
        Some(&node.net),
    )
    .unwrap();
    let to_service = SocketAddr::from((cluster_ip, 80));
    assert!(
        reaches(&back.net, to_service),
        "backend -> frontend's Service"
    );
    assert!(
        !reaches(&other.net, to_service),
        "another pod, through the Service"
    );

    // An established connection survives a rebuild that still allows it...
    let mut conn = connect_in(&back.net, to_front, SHORT).unwrap();
    let mut hi = [0u8; 2];
    conn.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    conn.read_exact(&mut hi).unwrap();
    assert!(echo(&mut conn, "one"));
    policy::sync(&allow_specific(vec![o]), Some(&node.net)).unwrap();
    assert!(
        echo(&mut conn, "two"),
        "still allowed: the connection carries on"
    );
    assert!(reaches(&other.net, to_front), "the added peer gets in");
    // ...and is cut by one that forbids it.
    policy::sync(&deny_all, Some(&node.net)).unwrap();
    assert!(
        !echo(&mut conn, "three"),
        "forbidden now: the connection is cut"
    );
    drop(conn);

    // Egress to an ipBlock with an exception, and a port range.
    let egress = |allows: Vec<Allow>| Desired {
        pods: vec![iso("web/back", b, None, Some(allows))],
    };
    let block = |except: Vec<&str>| Allow {
        peers: Some(Peers {
            addresses: BTreeSet::new(),
            blocks: vec![Block {
                cidr: "10.97.3.0/24".parse().unwrap(),
                except: except.into_iter().map(|e| e.parse().unwrap()).collect(),
            }],
        }),
        ports: tcp(8000, 8090),
    };
    policy::sync(&egress(vec![block(vec![])]), Some(&node.net)).unwrap();
    assert!(reaches(&back.net, to_front));
    assert!(reaches(&back.net, to_other));
    let except_other = format!("{o}/32");
    policy::sync(
        &egress(vec![block(vec![except_other.as_str()])]),
        Some(&node.net),
    )
    .unwrap();
    assert!(reaches(&back.net, to_front), "inside the block");
    assert!(!reaches(&back.net, to_other), "the exception");
    policy::sync(
        &egress(vec![Allow {
            peers: None,
            ports: tcp(9000, 9100),
        }]),
        Some(&node.net),
    )
    .unwrap();
    assert!(!reaches(&back.net, to_front), "outside the port range");

    policy::remove(Some(&node.net)).unwrap();
    policy::remove(Some(&node.net)).unwrap(); // idempotent
    assert!(reaches(&back.net, to_other), "no table, no isolation");
    assert!(reaches(&other.net, to_front));
}
