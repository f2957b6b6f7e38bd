//! `net-bench`: how long the node's Service rules take to program, in a network namespace the
//! bench creates (the host's own rules are never touched). It builds the table for N Services
//! with M ready endpoints each, programs it whole (what the agent does on start), then changes
//! one endpoint and programs again (what the agent does on a change), several rounds each,
//! and prints the times with issue 14's targets beside them. Then it measures pod-to-pod
//! traffic across two namespaced nodes, host-gw and VXLAN, with and without a Service
//! (`traffic.rs`). Needs root.

mod traffic;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use strake_net::Ipv4Net;
use strake_net::services::{self, Desired, Protocol, ServicePort};
use strake_runtime::Sandbox;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 1000)]
    services: usize,
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Round trips per path in the traffic part.
    #[arg(long, default_value_t = 20_000)]
    round_trips: usize,
    /// Megabytes of bulk transfer per path in the traffic part.
    #[arg(long, default_value_t = 1024)]
    megabytes: usize,
}

fn desired(services: usize, endpoints: usize, shift: u32) -> Desired {
    let ports = (0..services)
        .map(|s| {
            let s32 = s as u32;
            ServicePort {
                name: format!("bench/svc-{s}:http/TCP"),
                cluster_ip: Some(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 1, 0)) + s32)),
                external_ips: Vec::new(),
                protocol: Protocol::Tcp,
                port: 80,
                node_port: Some(30000 + (s % 2768) as u16),
                endpoints: (0..endpoints as u32)
                    .map(|e| {
                        let n =
                            s32 * endpoints as u32 + e + if s == 0 && e == 0 { shift } else { 0 };
                        (
                            Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + n),
                            8080,
                        )
                    })
                    .collect(),
                local_endpoints: Vec::new(),
                internal_local: false,
                external_local: false,
                affinity_timeout: None,
            }
        })
        .collect();
    Desired {
        pod_cidr: Some(Ipv4Net::new_assert(Ipv4Addr::new(10, 244, 0, 0), 24)),
        cluster_cidr: Ipv4Net::new_assert(Ipv4Addr::new(10, 244, 0, 0), 16),
        node_ips: vec![Ipv4Addr::new(192, 0, 2, 10)],
        services: ports,
        dns: Some((Ipv4Addr::new(10, 96, 0, 10), Ipv4Addr::new(10, 244, 0, 1))),
    }
}

fn stats(mut d: Vec<Duration>) -> String {
    d.sort();
    let ms = |x: Duration| x.as_secs_f64() * 1e3;
    format!(
        "min {:.0} ms, median {:.0} ms, max {:.0} ms",
        ms(d[0]),
        ms(d[d.len() / 2]),
        ms(d[d.len() - 1])
    )
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        nix_is_root(),
        "net-bench creates a network namespace and must run as root"
    );
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("ns");
    let ns = Sandbox::create(&dir, "net-bench").context("creating the bench's namespace")?;
    let result = (|| -> anyhow::Result<()> {
        let base = desired(args.services, args.endpoints, 0);
        let mut full = Vec::new();
        let mut change = Vec::new();
        for round in 0..args.rounds.max(1) {
            services::remove(Some(&ns.net))?;
            let t = Instant::now();
            services::sync(&base, Some(&ns.net))?;
            full.push(t.elapsed());
            let changed = desired(args.services, args.endpoints, 1_000_000 + round as u32);
            let t = Instant::now();
            let incremental = services::sync_from(Some(&base), &changed, Some(&ns.net))?;
            change.push(t.elapsed());
            anyhow::ensure!(incremental, "one endpoint's change rebuilt the whole table");
        }
        println!(
            "{} services x {} endpoints ({} rounds)",
            args.services, args.endpoints, args.rounds
        );
        println!("| what | measured | target |");
        println!("|---|---|---|");
        println!("| full sync | {} | <= 1 s |", stats(full));
        println!("| one endpoint changed | {} | <= 50 ms |", stats(change));
        Ok(())
    })();
    let _ = Sandbox::remove(&dir);
    result?;
    println!();
    traffic::run(args.round_trips, args.megabytes)
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}
