//! The harness of the controller and scheduler benchmarks and the hollow-node tests: a real
//! control plane (store with fsync, API server, controllers and scheduler) in a child process,
//! so its RSS is its own, driven over HTTPS, with hollow nodes in this process.
//!
//! The child is this crate's binary with `--serve DIR`. It prints `READY <url> <token>` and then
//! answers lines on stdin: `START` starts the controllers and the scheduler (so a benchmark can
//! queue work before they run), `RSS` prints `RSS <KiB>`. Closing stdin ends it.

pub mod track;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use strake_kubeclient::Client;

/// The child's settings.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub node_monitor_grace: Duration,
    pub default_toleration_seconds: i64,
}

/// The child: a one-voter store, the API server on loopback, the controllers on `START`.
pub async fn serve(dir: &Path, opts: ServeOptions) -> anyhow::Result<()> {
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
            default_toleration_seconds: opts.default_toleration_seconds,
            service_cidr: strake_apiserver::DEFAULT_SERVICE_CIDR,
        },
        store,
    )?;
    server.ensure_defaults().await?;
    let registry = server.registry();
    let ca = server.ca_pem().to_string();
    tokio::spawn(server.serve_on(listener));
    println!("READY https://{addr} {token}");
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut started = false;
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            match line.trim() {
                "START" if !started => {
                    started = true;
                    let _guard = rt.enter();
                    strake_controllers::manager::start(
                        registry.clone(),
                        strake_controllers::manager::Options {
                            identity: "bench".into(),
                            workers: 4,
                            ca_pem: Some(ca.clone()),
                            node_monitor_grace: opts.node_monitor_grace,
                            metrics: None,
                            local_path: None,
                            pod_network: None,
                            signer: None,
                        },
                    );
                    println!("STARTED");
                }
                _ => {
                    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
                    let kib = status
                        .lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .map(|v| v.trim().trim_end_matches(" kB").trim().to_string())
                        .unwrap_or_default();
                    println!("RSS {kib}");
                }
            }
        }
    })
    .await?;
    Ok(())
}

/// A control plane in a child process, and an admin client for it.
pub struct ControlPlane {
    proc: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
    pub url: String,
    pub client: Client,
    _dir: tempfile::TempDir,
}

impl ControlPlane {
    /// Starts `exe --serve` (this crate's binary) and bootstraps admin credentials.
    pub async fn start(exe: &Path, opts: &ServeOptions) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut proc = Command::new(exe)
            .arg("--serve")
            .arg(dir.path())
            .arg("--node-monitor-grace-seconds")
            .arg(opts.node_monitor_grace.as_secs().to_string())
            .arg("--default-toleration-seconds")
            .arg(opts.default_toleration_seconds.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let mut stdout = BufReader::new(proc.stdout.take().context("child stdout")?);
        let stdin = proc.stdin.take().context("child stdin")?;
        let mut ready = String::new();
        stdout.read_line(&mut ready)?;
        let parts: Vec<&str> = ready.split_whitespace().collect();
        let [_, url, token] = parts.as_slice() else {
            bail!("the control plane printed {ready:?}")
        };
        let token: strake_pki::BootstrapToken =
            token.parse().map_err(|e| anyhow::anyhow!("token: {e:?}"))?;
        let creds =
            strake_kubeclient::bootstrap(url, &token, "/strake/v1/kubeconfig", &json!({})).await?;
        let client = Client::new(
            url,
            &creds.ca_pem,
            Some(&strake_pki::CertifiedKey {
                cert_pem: creds.cert_pem,
                key_pem: creds.key_pem,
            }),
        )?;
        Ok(Self {
            proc,
            stdin,
            stdout,
            url: url.to_string(),
            client,
            _dir: dir,
        })
    }

    fn ask(&mut self, line: &str) -> anyhow::Result<String> {
        writeln!(self.stdin, "{line}")?;
        let mut out = String::new();
        self.stdout.read_line(&mut out)?;
        Ok(out.trim().to_string())
    }

    /// Starts the controllers and the scheduler.
    pub fn start_controllers(&mut self) -> anyhow::Result<()> {
        let out = self.ask("START")?;
        if out != "STARTED" {
            bail!("the control plane answered {out:?} to START");
        }
        Ok(())
    }

    pub fn rss_kib(&mut self) -> anyhow::Result<u64> {
        let line = self.ask("RSS")?;
        line.strip_prefix("RSS ")
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("bad RSS line {line:?}"))
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }
}

/// Polls `f` until it yields, or fails naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
