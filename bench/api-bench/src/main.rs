//! api-bench: drives a Strake API server over HTTPS and reports what the API issue's targets
//! name — mutating and read latency at 100 writes/s plus 500 reads/s, a list of 10,000 pods,
//! event fan-out to 1,000 watchers of a 100 writes/s stream, and the server's RSS per 10,000
//! pods — next to the upstream SLOs (no kube-apiserver binary exists on these machines).
//!
//! The server runs in a child process (this binary with `--serve`) on a real single-voter store
//! with fsync on, so its RSS is its own.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;
use futures::StreamExt;
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(about = "Benchmarks the Strake API server over HTTPS")]
struct Args {
    /// Run as the server child (internal).
    #[arg(long)]
    serve: Option<std::path::PathBuf>,
    /// Seconds of the mixed load.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Writes per second in the mixed load and the watch stream.
    #[arg(long, default_value_t = 100)]
    writes: u64,
    /// Reads per second in the mixed load.
    #[arg(long, default_value_t = 500)]
    reads: u64,
    /// Concurrent watchers.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Pods stored for the list and RSS figures.
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Instead: mutating latency with RBAC, a Metadata-level audit log and Secrets encrypted,
    /// against the same server with all three off (AlwaysAllow, no audit, identity).
    #[arg(long)]
    security: bool,
    /// The server child without authorization, audit or encryption (internal).
    #[arg(long)]
    plain: bool,
    /// The server child with a Metadata-level audit log (internal).
    #[arg(long)]
    audit: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match &args.serve {
        Some(dir) => rt.block_on(serve(dir, args.plain, args.audit)),
        None if args.security => rt.block_on(security(&args)),
        None => rt.block_on(bench(&args)),
    }
}

/// The child: an API server on loopback; prints its URL and token, then its RSS on request.
async fn serve(dir: &std::path::Path, plain: bool, audit: bool) -> anyhow::Result<()> {
    if plain {
        // Secrets stored as they are.
        std::fs::create_dir_all(dir.join("pki"))?;
        std::fs::write(
            dir.join("pki").join(strake_apiserver::ENCRYPTION_CONFIG),
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - identity: {}\n",
        )?;
    }
    let store =
        strake_store::Store::open(strake_store::StoreConfig::single(1, dir.join("store"))).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let token = strake_pki::BootstrapToken::generate();
    let server = strake_apiserver::ApiServer::new(
        strake_apiserver::Config {
            listen: addr,
            advertise: addr.to_string(),
            pki_dir: dir.join("pki"),
            cluster_name: "bench".into(),
            token: Some(token.clone()),
            sans: vec![],
            default_toleration_seconds: strake_apiserver::DEFAULT_TOLERATION_SECONDS,
            service_cidr: strake_apiserver::DEFAULT_SERVICE_CIDR,
        },
        store,
    )?;
    let server = if plain {
        server.with_always_allow()
    } else if !audit {
        server
    } else {
        let mut audit = strake_apiserver::AuditConfig::new(dir.join("audit.log"));
        audit.policy = strake_apiserver::AuditPolicy::parse(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Metadata\n",
        )
        .map_err(anyhow::Error::msg)?;
        server.with_audit(audit)?
    };
    server.ensure_defaults().await?;
    tokio::spawn(server.serve_on(listener));
    println!("READY https://{addr} {token}");
    // Each line on stdin asks for the RSS; the parent going away ends the server.
    tokio::task::spawn_blocking(|| {
        for line in std::io::stdin().lines() {
            if line.is_err() {
                break;
            }
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            let kib = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .map(|v| v.trim().trim_end_matches(" kB").trim().to_string())
                .unwrap_or_default();
            println!("RSS {kib}");
        }
    })
    .await?;
    Ok(())
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn pod(name: &str, stamp: u128) -> Value {
    // About 3 KiB once stored, like a small real pod.
    let env: Vec<Value> = (0..40).map(|i| json!({"name": format!("SETTING_{i}"), "value": format!("value-{i}-{}", "x".repeat(30))})).collect();
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "bench"}, "annotations": {"bench/sent": stamp.to_string()}},
        "spec": {"containers": [{"name": "c", "image": "registry.example/bench:1", "env": env}]}})
}

/// The `bench/sent` stamp of a watch event's line, found without parsing the event.
fn sent_stamp(line: &[u8]) -> Option<u128> {
    const KEY: &[u8] = br#""bench/sent":"#;
    let at = line.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let rest = line[at..].strip_prefix(b"\"")?;
    let end = rest.iter().position(|b| *b == b'"')?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or_default()
}

struct Child {
    proc: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Child {
    fn rss_kib(&mut self) -> anyhow::Result<u64> {
        use std::io::Write;
        writeln!(self.stdin)?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        line.strip_prefix("RSS ")
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("bad RSS line {line:?}"))
    }
}

/// A request of the mixed load: a write (the n-th) or a read.
type MakeRequest = Arc<dyn Fn(bool, usize) -> reqwest::RequestBuilder + Send + Sync>;

/// Sends writes and reads at the configured rates for the configured time, each request on
/// its own task so a slow answer never delays the next; returns the latencies of those that
/// succeeded, writes then reads, each sorted.
async fn mixed_load(args: &Args, request: MakeRequest) -> (Vec<Duration>, Vec<Duration>) {
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for (rate, write) in [(args.writes, true), (args.reads, false)] {
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
            let mut n = 0usize;
            let mut inflight = futures::stream::FuturesUnordered::new();
            while Instant::now() < deadline {
                tick.tick().await;
                n += 1;
                let req = request(write, n);
                inflight.push(tokio::spawn(async move {
                    let t = Instant::now();
                    req.send()
                        .await
                        .ok()
                        .filter(|r| r.status().is_success())
                        .map(|_| t.elapsed())
                }));
            }
            let mut out = Vec::new();
            while let Some(r) = inflight.next().await {
                if let Ok(Some(d)) = r {
                    out.push(d);
                }
            }
            out.sort();
            out
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap_or_default());
    }
    let r = results.pop().unwrap_or_default();
    let w = results.pop().unwrap_or_default();
    (w, r)
}

/// A server child in `dir` started with `flags` (`--plain`: authorization, audit and
/// encryption off; `--audit`: a Metadata audit log), its URL and the bootstrap token it printed.
fn spawn_server(
    dir: &std::path::Path,
    flags: &[&str],
) -> anyhow::Result<(Child, String, strake_pki::BootstrapToken)> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--serve").arg(dir).args(flags);
    let mut proc = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
    let mut stdout = BufReader::new(proc.stdout.take().context("child stdout")?);
    let stdin = proc.stdin.take().context("child stdin")?;
    let mut ready = String::new();
    stdout.read_line(&mut ready)?;
    let parts: Vec<&str> = ready.split_whitespace().collect();
    let [_, url, token] = parts.as_slice() else {
        bail!("the server printed {ready:?}")
    };
    let token: strake_pki::BootstrapToken =
        token.parse().map_err(|e| anyhow::anyhow!("token: {e:?}"))?;
    Ok((
        Child {
            proc,
            stdin,
            stdout,
        },
        url.to_string(),
        token,
    ))
}

/// Creates and reads Secrets of about 3 KiB at the given rates for `seconds`, as a user that
/// only a RoleBinding to `edit` lets write; returns the sorted write and read latencies.
async fn secret_load(
    dir: &std::path::Path,
    plain: bool,
    args: &Args,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let flags: &[&str] = if plain { &["--plain"] } else { &["--audit"] };
    let (mut child, base, token) = spawn_server(dir, flags)?;
    let creds =
        strake_kubeclient::bootstrap(&base, &token, "/strake/v1/kubeconfig", &json!({})).await?;
    let client = |cert: &strake_pki::CertifiedKey| -> anyhow::Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .use_preconfigured_tls(strake_pki::client_config(&creds.ca_pem, Some(cert))?)
            .http2_prior_knowledge()
            .build()?)
    };
    let admin = client(&strake_pki::CertifiedKey {
        cert_pem: creds.cert_pem.clone(),
        key_pem: creds.key_pem.clone(),
    })?;
    // The caller is no cluster admin: RBAC finds its group's binding on every request.
    admin
        .post(format!("{base}/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings"))
        .json(&json!({"metadata": {"name": "bench-edit"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "bench-writers"}]}))
        .send()
        .await?
        .error_for_status()?;
    let ca = strake_pki::ClusterCa::load_or_generate(&dir.join("pki"), "bench")?;
    let user = ca.issue_client("bench", &["bench-writers"], time::Duration::hours(1))?;
    let http = client(&user)?;
    let secrets = format!("{base}/api/v1/namespaces/default/secrets");
    let secret = |name: &str| {
        let data: serde_json::Map<String, Value> = (0..24)
            .map(|i| (format!("key-{i}"), json!(format!("{}-{i}", "v".repeat(90)))))
            .collect();
        json!({"metadata": {"name": name, "labels": {"app": "bench"}}, "stringData": data})
    };
    // RBAC has had time to see the binding once a write as the user goes through.
    let ready = Instant::now();
    while !http
        .post(&secrets)
        .json(&secret("target"))
        .send()
        .await?
        .status()
        .is_success()
    {
        if ready.elapsed() > Duration::from_secs(10) {
            bail!("the bench user was never allowed to write secrets");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = secret("x");
    let out = mixed_load(
        args,
        Arc::new(move |write, n| {
            if write {
                let mut body = body.clone();
                body["metadata"]["name"] = format!("s-{n}").into();
                http.post(&secrets).json(&body)
            } else {
                http.get(format!("{secrets}/target"))
            }
        }),
    )
    .await;
    let _ = child.proc.kill();
    let _ = child.proc.wait();
    Ok(out)
}

/// The security comparison: the same Secret load against a server with RBAC, a Metadata audit
/// log and encryption at rest, and one with all three off, alternating, twice each.
async fn security(args: &Args) -> anyhow::Result<()> {
    let mut runs: [(Vec<Duration>, Vec<Duration>); 2] = Default::default();
    for round in 0..2 {
        for (i, plain) in [(0, true), (1, false)] {
            let dir = tempfile::tempdir()?;
            let (w, r) = secret_load(dir.path(), plain, args).await?;
            eprintln!(
                "api-bench: round {round}, {}: {} writes, {} reads",
                if plain { "off" } else { "on" },
                w.len(),
                r.len()
            );
            runs[i].0.extend(w);
            runs[i].1.extend(r);
        }
    }
    for (w, r) in &mut runs {
        w.sort();
        r.sort();
    }
    let ratio = |on: Duration, off: Duration| on.as_secs_f64() / off.as_secs_f64().max(1e-9);
    println!(
        "\n| Secrets as an `edit` user ({} s × 2 at {} writes/s + {} reads/s) | p50 | p99 | p99 on/off | target |",
        args.seconds, args.writes, args.reads
    );
    println!("|---|---|---|---|---|");
    for (what, idx) in [
        ("create, all off", 0),
        ("create, RBAC + audit + encryption", 1),
    ] {
        let w = &runs[idx].0;
        println!(
            "| {what} ({} ok) | {} | {} | {} | ≤ 1.2× |",
            w.len(),
            ms(pct(w, 0.5)),
            ms(pct(w, 0.99)),
            if idx == 1 {
                format!("{:.2}×", ratio(pct(w, 0.99), pct(&runs[0].0, 0.99)))
            } else {
                "—".into()
            }
        );
    }
    for (what, idx) in [("get, all off", 0), ("get, RBAC + audit + encryption", 1)] {
        let r = &runs[idx].1;
        println!(
            "| {what} ({} ok) | {} | {} | {} | — |",
            r.len(),
            ms(pct(r, 0.5)),
            ms(pct(r, 0.99)),
            if idx == 1 {
                format!("{:.2}×", ratio(pct(r, 0.99), pct(&runs[0].1, 0.99)))
            } else {
                "—".into()
            }
        );
    }
    Ok(())
}

async fn bench(args: &Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut child, url, token) = spawn_server(dir.path(), &[])?;
    let url = url.as_str();
    let creds =
        strake_kubeclient::bootstrap(url, &token, "/strake/v1/kubeconfig", &json!({})).await?;
    let tls = strake_pki::client_config(
        &creds.ca_pem,
        Some(&strake_pki::CertifiedKey {
            cert_pem: creds.cert_pem,
            key_pem: creds.key_pem,
        }),
    )?;
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls.clone())
        .http2_prior_knowledge()
        .build()?;
    let base = url.to_string();
    let pods = format!("{base}/api/v1/namespaces/default/pods");
    let idle = child.rss_kib()?;
    println!("api-bench: server idle RSS {:.1} MiB", idle as f64 / 1024.0);

    // 1. Mixed load: creates at `writes`/s and gets at `reads`/s.
    http.post(&pods)
        .json(&pod("target", now_us()))
        .send()
        .await?
        .error_for_status()?;
    let (w, r) = {
        let (http, pods) = (http.clone(), pods.clone());
        mixed_load(
            args,
            Arc::new(move |write, n| {
                if write {
                    http.post(&pods).json(&pod(&format!("mixed-{n}"), now_us()))
                } else {
                    http.get(format!("{pods}/target"))
                }
            }),
        )
        .await
    };
    println!(
        "\n| load ({} s at {} writes/s + {} reads/s) | p50 | p99 | target | upstream SLO |",
        args.seconds, args.writes, args.reads
    );
    println!("|---|---|---|---|---|");
    println!(
        "| create pod ({} ok) | {} | {} | p99 ≤ 20 ms | 1 s |",
        w.len(),
        ms(pct(&w, 0.5)),
        ms(pct(&w, 0.99))
    );
    println!(
        "| get pod ({} ok) | {} | {} | — | 1 s |",
        r.len(),
        ms(pct(&r, 0.5)),
        ms(pct(&r, 0.99))
    );

    // 2. Fan-out: watchers on HTTP/2 streams, a stream of writes, delivery latency per event.
    let received = Arc::new(AtomicUsize::new(0));
    let lat = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let (_, list) = (
        0,
        http.get(format!("{pods}?limit=1"))
            .send()
            .await?
            .json::<Value>()
            .await?,
    );
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_string();
    let mut watchers = Vec::new();
    // 100 watch streams per HTTP/2 connection, as servers bound concurrent streams (kubectl and
    // client-go open more connections for more).
    let mut pools = Vec::new();
    for _ in 0..args.watchers.div_ceil(100) {
        pools.push(
            reqwest::Client::builder()
                .use_preconfigured_tls(tls.clone())
                .http2_prior_knowledge()
                .build()?,
        );
    }
    for i in 0..args.watchers {
        let r = pools[i / 100].get(format!("{pods}?watch=true&resourceVersion={rv}&labelSelector=stream%3Dyes&timeoutSeconds=120")).send().await?;
        let (received, lat) = (received.clone(), lat.clone());
        watchers.push(tokio::spawn(async move {
            let mut s = r.bytes_stream();
            let mut buf = Vec::new();
            while let Some(Ok(chunk)) = s.next().await {
                buf.extend_from_slice(&chunk);
                // Events are found by their stamp alone: parsing every 3 KiB event whole, 1,000
                // times over, would make this client, on the server's two cores, the bottleneck
                // being measured.
                let mut start = 0;
                while let Some(i) = buf[start..].iter().position(|b| *b == b'\n') {
                    let line = &buf[start..start + i];
                    start += i + 1;
                    if let Some(sent) = sent_stamp(line) {
                        lat.lock().await.push(Duration::from_micros(
                            (now_us().saturating_sub(sent)) as u64,
                        ));
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
                buf.drain(..start);
            }
        }));
    }
    let events = args.writes * 5;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.writes as f64));
    for i in 0..events {
        tick.tick().await;
        let mut p = pod(&format!("stream-{i}"), now_us());
        p["metadata"]["labels"]["stream"] = "yes".into();
        let http = http.clone();
        let pods = pods.clone();
        tokio::spawn(async move { http.post(&pods).json(&p).send().await });
    }
    let want = events as usize * args.watchers;
    let waited = Instant::now();
    while received.load(Ordering::Relaxed) < want && waited.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for w in watchers {
        w.abort();
    }
    let mut l = lat.lock().await.clone();
    l.sort();
    println!("\n| fan-out | delivered | p50 | p99 | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| {} watchers × {events} events at {} writes/s | {} of {want} | {} | {} | p99 ≤ 100 ms |",
        args.watchers,
        args.writes,
        l.len(),
        ms(pct(&l, 0.5)),
        ms(pct(&l, 0.99))
    );

    // 3. Store pods, measure RSS and list latency.
    let before = child.rss_kib()?;
    let stored = Arc::new(AtomicUsize::new(0));
    let mut fill = futures::stream::iter(0..args.pods)
        .map(|i| {
            let (http, pods) = (http.clone(), pods.clone());
            async move {
                http.post(&pods)
                    .json(&pod(&format!("fill-{i}"), 0))
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .is_some()
            }
        })
        .buffer_unordered(64);
    while let Some(ok) = fill.next().await {
        if ok {
            stored.fetch_add(1, Ordering::Relaxed);
        }
    }
    let after = child.rss_kib()?;
    let t = Instant::now();
    let all: Value = http.get(&pods).send().await?.json().await?;
    let full = t.elapsed();
    let t = Instant::now();
    let mut token = String::new();
    let mut paged = 0;
    loop {
        let page: Value = http
            .get(format!("{pods}?limit=500&continue={token}"))
            .send()
            .await?
            .json()
            .await?;
        paged += page["items"].as_array().map_or(0, Vec::len);
        match page["metadata"]["continue"].as_str() {
            Some(c) => token = c.to_string(),
            None => break,
        }
    }
    let paged_t = t.elapsed();
    println!(
        "\n| stored pods | list (one page) | list (pages of 500) | server RSS added | target |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| {} | {} items in {} | {paged} items in {} | {:.1} MiB ({:.1} → {:.1} MiB) | ≤ 60 MiB per 10,000 pods of ~3 KiB |",
        stored.load(Ordering::Relaxed),
        all["items"].as_array().map_or(0, Vec::len),
        ms(full),
        ms(paged_t),
        (after as f64 - before as f64) / 1024.0,
        before as f64 / 1024.0,
        after as f64 / 1024.0
    );
    let _ = child.proc.kill();
    let _ = child.proc.wait();
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn stamps_are_found_in_watch_lines() {
        let line = br#"{"type":"ADDED","object":{"metadata":{"annotations":{"bench/sent":"1796304239323487"}}}}"#;
        assert_eq!(super::sent_stamp(line), Some(1_796_304_239_323_487));
        assert_eq!(super::sent_stamp(br#"{"type":"BOOKMARK"}"#), None);
    }
}
