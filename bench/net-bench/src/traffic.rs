//! Pod-to-pod traffic across two "nodes" (network namespaces joined by a veth pair), each with
//! its pod bridge and one pod: request/response round trips (1 byte each way, one connection)
//! and bulk throughput (one connection), host-gw and over VXLAN, straight to the pod's
//! address and through a ClusterIP (the node's nf_tables rules), so each path is measured
//! against the same path without a Service.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use strake_net::routes::{Backend, Peer, PodRoutes};
use strake_net::services::{self, Desired, Protocol, ServicePort};
use strake_net::{Ipam, Ipv4Net, NodeNetwork, connect_in, link_namespaces};
use strake_runtime::Sandbox;

const ECHO_PORT: u16 = 7000;
const SINK_PORT: u16 = 7001;
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 200, 1);

/// Serves forever in `netns`: port 7000 echoes every byte, port 7001 swallows everything.
fn servers(netns: &Path) -> anyhow::Result<()> {
    for port in [ECHO_PORT, SINK_PORT] {
        let netns = netns.to_owned();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let bound = std::fs::File::open(&netns)
                .map_err(|e| e.to_string())
                .and_then(|f| {
                    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| e.to_string())
                })
                .and_then(|()| TcpListener::bind(("0.0.0.0", port)).map_err(|e| e.to_string()));
            let listener = match bound {
                Ok(l) => {
                    let _ = tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            for mut s in listener.incoming().map_while(Result::ok) {
                std::thread::spawn(move || {
                    let _ = s.set_nodelay(true);
                    let mut buf = vec![0u8; 1 << 16];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || (port == ECHO_PORT && s.write_all(&buf[..n]).is_err()) {
                            break;
                        }
                    }
                });
            }
        });
        rx.recv()?
            .map_err(|e| anyhow::anyhow!("serving on {port}: {e}"))?;
    }
    Ok(())
}

struct Measured {
    rtt_avg: Duration,
    rtt_p99: Duration,
    gbits: f64,
}

fn measure(
    from: &Path,
    ip: Ipv4Addr,
    round_trips: usize,
    bytes: usize,
) -> anyhow::Result<Measured> {
    let mut s = connect_in(
        from,
        SocketAddr::from((ip, ECHO_PORT)),
        Duration::from_secs(3),
    )
    .with_context(|| format!("connecting to {ip}:{ECHO_PORT}"))?;
    s.set_nodelay(true)?;
    let mut rtts = Vec::with_capacity(round_trips);
    let mut b = [0u8; 1];
    for _ in 0..round_trips {
        let t = Instant::now();
        s.write_all(b"x")?;
        s.read_exact(&mut b)?;
        rtts.push(t.elapsed());
    }
    rtts.sort_unstable();
    let rtt_avg = rtts.iter().sum::<Duration>() / rtts.len() as u32;
    let rtt_p99 = rtts[rtts.len() * 99 / 100];
    let mut s = connect_in(
        from,
        SocketAddr::from((ip, SINK_PORT)),
        Duration::from_secs(3),
    )?;
    let chunk = vec![0u8; 1 << 16];
    let t = Instant::now();
    let mut sent = 0;
    while sent < bytes {
        s.write_all(&chunk)?;
        sent += chunk.len();
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let mut rest = [0u8; 1];
    let _ = s.read(&mut rest); // the sink closes once it has read everything
    let gbits = sent as f64 * 8.0 / t.elapsed().as_secs_f64() / 1e9;
    Ok(Measured {
        rtt_avg,
        rtt_p99,
        gbits,
    })
}

/// Builds the two nodes, measures every path and prints a table.
pub fn run(round_trips: usize, megabytes: usize) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let names = ["n1", "n2", "p1", "p2"];
    let dirs: Vec<_> = names.iter().map(|n| tmp.path().join(n)).collect();
    let result = (|| -> anyhow::Result<()> {
        let [n1, n2, p1, p2] = [0, 1, 2, 3].map(|i| Sandbox::create(&dirs[i], names[i]));
        let (n1, n2, p1, p2) = (n1?, n2?, p1?, p2?);
        let (ip1, ip2) = (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2));
        link_namespaces(
            &n1.net,
            &n2.net,
            "wire",
            Ipv4Net::new(ip1, 24)?,
            Ipv4Net::new(ip2, 24)?,
        )?;
        let (c1, c2): (Ipv4Net, Ipv4Net) = ("10.98.1.0/24".parse()?, "10.98.2.0/24".parse()?);
        let mut pods = Vec::new();
        for (node, pod, cidr, key) in [(&n1, &p1, c1, "p1"), (&n2, &p2, c2, "p2")] {
            // The VXLAN MTU on both, so one set of bridges serves both backends.
            let net = NodeNetwork::setup("strake0", cidr, Some(1450), Some(node.net.clone()))?;
            let ipam = Ipam::open(&tmp.path().join(format!("{key}-ipam")), cidr)?;
            let ip = ipam.allocate(key)?;
            net.attach(&pod.net, key, ip)?;
            pods.push(ip);
        }
        let target = pods[1];
        servers(&p2.net)?;
        let peer = |name: &str, node_ip, pod_cidr| Peer {
            name: name.into(),
            node_ip,
            pod_cidr,
        };
        let service = Desired {
            pod_cidr: Some(c1),
            cluster_cidr: "10.98.0.0/16".parse()?,
            node_ips: vec![ip1],
            services: [ECHO_PORT, SINK_PORT]
                .map(|port| ServicePort {
                    name: format!("bench/traffic:{port}/TCP"),
                    cluster_ip: Some(CLUSTER_IP),
                    external_ips: Vec::new(),
                    protocol: Protocol::Tcp,
                    port,
                    node_port: None,
                    endpoints: vec![(target, port)],
                    local_endpoints: Vec::new(),
                    internal_local: false,
                    external_local: false,
                    affinity_timeout: None,
                })
                .to_vec(),
            dns: None,
        };
        services::sync(&service, Some(&n1.net))?;
        println!(
            "pod to pod across two nodes (network namespaces on one veth), {round_trips} round trips of 1 byte, {megabytes} MB bulk, one connection each"
        );
        println!("| backend | path | round trip avg | p99 | throughput |");
        println!("|---|---|---|---|---|");
        for backend in [Backend::HostGw, Backend::Vxlan] {
            let r1 = PodRoutes::setup(backend, ip1, c1, Some(n1.net.clone()))?;
            let r2 = PodRoutes::setup(backend, ip2, c2, Some(n2.net.clone()))?;
            r1.sync(&[peer("n2", ip2, c2)])?;
            r2.sync(&[peer("n1", ip1, c1)])?;
            for (path, ip) in [("pod IP", target), ("ClusterIP", CLUSTER_IP)] {
                let m = measure(&p1.net, ip, round_trips, megabytes << 20)?;
                println!(
                    "| {backend} | {path} | {:.1} µs | {:.1} µs | {:.2} Gbit/s |",
                    m.rtt_avg.as_secs_f64() * 1e6,
                    m.rtt_p99.as_secs_f64() * 1e6,
                    m.gbits
                );
            }
        }
        Ok(())
    })();
    for d in &dirs {
        let _ = Sandbox::remove(d);
    }
    result
}
