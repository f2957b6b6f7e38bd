//! cluster-bench: the controller and scheduler benchmarks of the controllers issue, on hollow
//! nodes against the real API server, store and controllers (in a child process), reported
//! beside upstream's published figures:
//!
//! - `sched`: scheduling throughput at N nodes (5,000) for each pod count (10,000, 30,000), in
//!   scheduler_perf's SchedulingBasic shape (pods of 100m/500Mi, nodes of 4 cpu/32Gi/110
//!   pods). The pods are queued before the scheduler starts; throughput is pods bound per
//!   second from its start to the last binding.
//! - `deploy`: a Deployment scaled 0 → 1,000 replicas, until all are Running.
//! - `rss`: the control plane's RSS at 1,000 nodes and 30,000 Running pods.
//! - `loss`: a node lost among 1,000 (tolerationSeconds 0): until its pods run elsewhere.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use cluster_bench::track::Tracker;
use cluster_bench::{ControlPlane, ServeOptions, wait_for};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use serde_json::json;
use strake_hollow::Hollow;
use strake_kubeclient::Client;

#[derive(Parser, Debug)]
#[command(about = "Benchmarks the Strake scheduler and controllers on hollow nodes")]
struct Args {
    /// Run as the control-plane child (internal).
    #[arg(long)]
    serve: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 40)]
    node_monitor_grace_seconds: u64,
    #[arg(long, default_value_t = 0)]
    default_toleration_seconds: i64,
    /// Scenarios to run (sched, deploy, rss, loss).
    #[arg(long, value_delimiter = ',', default_value = "sched,deploy,rss,loss")]
    only: Vec<String>,
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    #[arg(long, value_delimiter = ',', default_value = "10000,30000")]
    pods: Vec<usize>,
    #[arg(long, default_value_t = 1000)]
    deploy_replicas: i32,
    #[arg(long, default_value_t = 100)]
    deploy_nodes: usize,
    #[arg(long, default_value_t = 1000)]
    rss_nodes: usize,
    #[arg(long, default_value_t = 30000)]
    rss_pods: usize,
    #[arg(long, default_value_t = 1000)]
    loss_nodes: usize,
    #[arg(long, default_value_t = 2000)]
    loss_replicas: i32,
    /// Seconds between a hollow node's Lease renewals (a kubelet's: 10).
    #[arg(long, default_value_t = 10)]
    lease_interval: u64,
}

/// The allocator the strake binary uses, so the control-plane child measures as it runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NS: &str = "bench";
const LONG: Duration = Duration::from_secs(1800);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Some(dir) = &args.serve {
        return rt.block_on(cluster_bench::serve(
            dir,
            ServeOptions {
                node_monitor_grace: Duration::from_secs(args.node_monitor_grace_seconds),
                default_toleration_seconds: args.default_toleration_seconds,
            },
        ));
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    rt.block_on(bench(&args))
}

fn opts(args: &Args) -> ServeOptions {
    ServeOptions {
        node_monitor_grace: Duration::from_secs(args.node_monitor_grace_seconds),
        default_toleration_seconds: args.default_toleration_seconds,
    }
}

async fn control_plane(args: &Args) -> anyhow::Result<ControlPlane> {
    let cp = ControlPlane::start(&std::env::current_exe()?, &opts(args)).await?;
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NS}}))?;
    cp.client.create(None, &ns).await?;
    Ok(cp)
}

/// Hollow nodes whose tasks end with the scenario.
struct Nodes {
    hollow: Arc<Hollow>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn hollow(args: &Args, client: &Client, nodes: usize, report: bool) -> anyhow::Result<Nodes> {
    let h = Hollow::new(
        client.clone(),
        strake_hollow::Config {
            count: nodes,
            memory: "32Gi".into(),
            lease_interval: Duration::from_secs(args.lease_interval),
            report_pods: report,
            ..Default::default()
        },
    );
    let t = Instant::now();
    h.register().await?;
    println!(
        "  {nodes} hollow nodes registered in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let mut tasks = vec![tokio::spawn(h.clone().heartbeats())];
    if report {
        tasks.push(tokio::spawn(h.clone().pods()));
    }
    Ok(Nodes { hollow: h, tasks })
}

/// A SchedulingBasic pod: one pause container asking 100m and 500Mi.
fn basic_pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {"containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10",
            "ports": [{"containerPort": 80}],
            "resources": {"requests": {"cpu": "100m", "memory": "500Mi"},
                          "limits": {"cpu": "100m", "memory": "500Mi"}}}]}
    }))
    .expect("a pod")
}

async fn create_pods(client: &Client, prefix: &str, n: usize) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..n)
        .map(|i| {
            let client = client.clone();
            let name = format!("{prefix}-{i}");
            async move {
                client
                    .create(Some(NS), &basic_pod(&name))
                    .await
                    .map(|_| ())
                    .with_context(|| format!("creating pod {name}"))
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    Ok(t.elapsed())
}

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10",
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}}
    }))
    .expect("a deployment")
}

struct Row {
    what: String,
    ours: String,
    upstream: String,
}

async fn sched(args: &Args, pods: usize, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    println!("sched: {} nodes, {pods} pods (SchedulingBasic)", args.nodes);
    let mut cp = control_plane(args).await?;
    let _h = hollow(args, &cp.client, args.nodes, false).await?;
    let took = create_pods(&cp.client, "basic", pods).await?;
    println!(
        "  {pods} pods created in {:.1} s ({:.0}/s)",
        took.as_secs_f64(),
        pods as f64 / took.as_secs_f64()
    );
    let tracker = Tracker::start(cp.client.clone(), NS);
    let t0 = Instant::now();
    cp.start_controllers()?;
    wait_for("every pod bound", LONG, || async {
        (tracker.bound() >= pods).then_some(())
    })
    .await?;
    let (first, last) = tracker.with(|s| {
        let times = s.bound.values().map(|(t, _)| *t);
        (times.clone().min(), times.max())
    });
    let (first, last) = (first.context("no binding")?, last.context("no binding")?);
    let total = (last - t0).as_secs_f64();
    let steady = (last - first).as_secs_f64().max(1e-3);
    let rss = cp.rss_kib()? as f64 / 1024.0;
    println!(
        "  all bound {total:.1} s after the scheduler started ({:.0} pods/s); first binding after {:.1} s, then {:.0} pods/s; control-plane RSS {rss:.0} MiB",
        pods as f64 / total,
        (first - t0).as_secs_f64(),
        (pods - 1) as f64 / steady
    );
    let upstream = if pods >= 30000 { "810" } else { "680" };
    rows.push(Row {
        what: format!("scheduling throughput, {} nodes, {pods} pods", args.nodes),
        ours: format!(
            "{:.0} pods/s ({:.0} after the first binding)",
            pods as f64 / total,
            (pods - 1) as f64 / steady
        ),
        upstream: format!("{upstream} pods/s (scheduler_perf threshold)"),
    });
    Ok(())
}

async fn deploy(args: &Args, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let n = args.deploy_replicas;
    println!("deploy: 0 -> {n} replicas on {} nodes", args.deploy_nodes);
    let mut cp = control_plane(args).await?;
    cp.start_controllers()?;
    let _h = hollow(args, &cp.client, args.deploy_nodes, true).await?;
    let tracker = Tracker::start(cp.client.clone(), NS);
    let t0 = Instant::now();
    cp.client.create(Some(NS), &deployment("web", n)).await?;
    wait_for("every replica Running", LONG, || async {
        (tracker.running() >= n as usize).then_some(())
    })
    .await?;
    let took = t0.elapsed().as_secs_f64();
    println!("  all {n} Running after {took:.1} s");
    rows.push(Row {
        what: format!("Deployment 0 -> {n} replicas, all Running"),
        ours: format!("{took:.1} s"),
        upstream: "target <= 10 s (no upstream figure)".into(),
    });
    Ok(())
}

async fn rss(args: &Args, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let (nodes, pods) = (args.rss_nodes, args.rss_pods);
    println!("rss: {nodes} nodes, {pods} Running pods");
    let mut cp = control_plane(args).await?;
    cp.start_controllers()?;
    let _h = hollow(args, &cp.client, nodes, true).await?;
    let tracker = Tracker::start(cp.client.clone(), NS);
    let t0 = Instant::now();
    create_pods(&cp.client, "load", pods).await?;
    wait_for("every pod Running", LONG, || async {
        (tracker.running() >= pods).then_some(())
    })
    .await?;
    println!("  all Running after {:.1} s", t0.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(15)).await;
    let mib = cp.rss_kib()? as f64 / 1024.0;
    println!("  control-plane RSS {mib:.0} MiB");
    rows.push(Row {
        what: format!("control-plane RSS, {nodes} nodes, {pods} pods"),
        ours: format!("{mib:.0} MiB"),
        upstream: "k0s: 3.3 GB at 200 workers and 20,000 pods; target <= 1 GB".into(),
    });
    Ok(())
}

async fn loss(args: &Args, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let (nodes, n) = (args.loss_nodes, args.loss_replicas);
    println!(
        "loss: one node lost among {nodes}, {n} replicas, tolerationSeconds {}",
        args.default_toleration_seconds
    );
    let mut cp = control_plane(args).await?;
    cp.start_controllers()?;
    let nodes_guard = hollow(args, &cp.client, nodes, true).await?;
    let h = nodes_guard.hollow.clone();
    let tracker = Tracker::start(cp.client.clone(), NS);
    cp.client.create(Some(NS), &deployment("web", n)).await?;
    wait_for("every replica Running", LONG, || async {
        (tracker.running() >= n as usize).then_some(())
    })
    .await?;
    let lost = h.name(0);
    let on_lost = tracker.with(|s| s.bound.values().filter(|(_, node)| *node == lost).count());
    h.silence(&lost);
    let t0 = Instant::now();
    wait_for("the lost node's pods replaced", LONG, || async {
        (tracker.running_off(&lost) >= n as usize).then_some(())
    })
    .await?;
    let took = t0.elapsed().as_secs_f64();
    let grace = args.node_monitor_grace_seconds;
    println!(
        "  {on_lost} pods of {lost} replaced {took:.1} s after it went silent (grace {grace} s)"
    );
    rows.push(Row {
        what: format!(
            "a lost node's {on_lost} pods replaced, {nodes} nodes, tolerationSeconds {}",
            args.default_toleration_seconds
        ),
        ours: format!(
            "{took:.1} s ({:.1} s after the {grace} s grace)",
            took - grace as f64
        ),
        upstream: format!("upstream defaults: {grace} s grace + 300 s toleration"),
    });
    let _ = cp.rss_kib();
    Ok(())
}

async fn bench(args: &Args) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for s in &args.only {
        match s.as_str() {
            "sched" => {
                for p in &args.pods {
                    sched(args, *p, &mut rows).await?;
                }
            }
            "deploy" => deploy(args, &mut rows).await?,
            "rss" => rss(args, &mut rows).await?,
            "loss" => loss(args, &mut rows).await?,
            other => anyhow::bail!("unknown scenario {other:?} (sched, deploy, rss, loss)"),
        }
    }
    println!("\n| benchmark | Strake | upstream |\n|---|---|---|");
    for r in rows {
        println!("| {} | {} | {} |", r.what, r.ours, r.upstream);
    }
    Ok(())
}
