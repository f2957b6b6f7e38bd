//! Helpers for the end-to-end tests: a local docker-registry, a busybox OCI image built from
//! Debian's busybox-static, kubectl invocation, and polling with deadlines.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use strake_oci::{ImageConfig, LayerBuilder, LayerCompression};

/// The workspace root (tests run with the crate dir as cwd).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The strakectl binary `scripts/test.sh` builds.
pub fn strakectl_path() -> anyhow::Result<PathBuf> {
    let p = workspace_root().join("target/debug/strakectl");
    anyhow::ensure!(
        p.exists(),
        "{} is missing: scripts/test.sh builds it with the image",
        p.display()
    );
    Ok(p)
}

/// Runs strakectl (ignoring any $STRAKECONFIG of the caller's).
pub fn strakectl(args: &[&str]) -> anyhow::Result<Output> {
    let out = Command::new(strakectl_path()?)
        .args(args)
        .env_remove("STRAKECONFIG")
        .output()
        .context("running strakectl")?;
    Ok(out)
}

/// Runs strakectl and returns its standard output; fails with its standard error.
pub fn strakectl_ok(args: &[&str]) -> anyhow::Result<String> {
    let out = strakectl(args)?;
    anyhow::ensure!(
        out.status.success(),
        "strakectl {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The kubectl binary matching the server's reported minor version.
pub fn kubectl_path() -> anyhow::Result<PathBuf> {
    let p = std::env::var_os("STRAKE_KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/google-cloud-sdk/bin/kubectl.1.32"));
    if !p.exists() {
        bail!(
            "{} not found: the end-to-end test needs kubectl 1.32 (set STRAKE_KUBECTL to its path)",
            p.display()
        );
    }
    Ok(p)
}

/// Runs kubectl with a kubeconfig; returns its output whatever the exit status.
pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> anyhow::Result<Output> {
    let out = Command::new(kubectl_path()?)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--request-timeout=30s")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running kubectl")?;
    Ok(out)
}

/// Runs kubectl with `input` on its stdin; returns its output whatever the exit status.
pub fn kubectl_with_input(
    kubeconfig: &Path,
    args: &[&str],
    input: &[u8],
) -> anyhow::Result<Output> {
    use std::io::Write;
    let mut child = Command::new(kubectl_path()?)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--request-timeout=30s")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running kubectl")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input).context("writing kubectl's stdin")?;
    }
    child.wait_with_output().context("waiting for kubectl")
}

/// Runs kubectl and requires success; returns stdout.
pub fn kubectl_ok(kubeconfig: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = kubectl(kubeconfig, args)?;
    if !out.status.success() {
        bail!(
            "kubectl {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits (up to `timeout`, failing early if `vm` dies) for the API server at `server` to
/// answer `/version`, then fetches an admin's credentials with the bootstrap token and writes
/// a kubeconfig naming the cluster `cluster` to `kubeconfig`. Returns the credentials and the
/// VM's uptime when the API first answered.
pub fn bootstrap_admin(
    rt: &tokio::runtime::Runtime,
    vm: &mut strake_qemu::Vm,
    server: &str,
    token: &strake_pki::BootstrapToken,
    timeout: Duration,
    cluster: &str,
    kubeconfig: &Path,
) -> anyhow::Result<(strake_kubeclient::Credentials, Duration)> {
    // Short tries: QEMU's port forward accepts connections before the guest listens, and
    // those stall.
    vm.wait_until("the API server to answer /version", timeout, || {
        rt.block_on(strake_kubeclient::answers_version(
            server,
            Duration::from_millis(500),
        ))
    })?;
    let api_ready = vm.uptime();
    let mut creds = None;
    vm.wait_until(
        "the token bootstrap to succeed",
        Duration::from_secs(60),
        || {
            creds = rt
                .block_on(strake_kubeclient::bootstrap(
                    server,
                    token,
                    "/strake/v1/kubeconfig",
                    &serde_json::json!({}),
                ))
                .ok();
            creds.is_some()
        },
    )?;
    let creds = creds.context("credentials")?;
    std::fs::write(kubeconfig, creds.kubeconfig(cluster, server))?;
    Ok((creds, api_ready))
}

/// Polls `f` until it yields a value or `timeout` passes; the error names `what`.
pub fn poll<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Debian's docker-registry on 127.0.0.1, with storage in a temp dir; killed on drop.
pub struct Registry {
    child: Child,
    pub port: u16,
    _dir: tempdir::TempDir,
}

mod tempdir {
    use std::path::{Path, PathBuf};

    /// A directory removed on drop (kept tiny to avoid another dependency).
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new(prefix: &str) -> std::io::Result<TempDir> {
            let base = std::env::temp_dir();
            for i in 0..1000u32 {
                let p = base.join(format!("{prefix}-{}-{i}", std::process::id()));
                match std::fs::create_dir(&p) {
                    Ok(()) => return Ok(TempDir(p)),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(std::io::Error::other("no free temp dir name"))
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub use tempdir::TempDir;

impl Registry {
    /// A registry on the host's loopback.
    pub fn start() -> anyhow::Result<Registry> {
        Registry::start_on(std::net::Ipv4Addr::LOCALHOST)
    }

    /// A registry listening on `ip` (in the calling thread's network namespace: a lab's
    /// segment address, say, for the lab's VMs to pull from).
    pub fn start_on(ip: std::net::Ipv4Addr) -> anyhow::Result<Registry> {
        let bin = Path::new("/usr/bin/docker-registry");
        if !bin.exists() {
            bail!(
                "/usr/bin/docker-registry not found: install Debian's docker-registry package (scripts/test.sh does)"
            );
        }
        let dir = TempDir::new("strake-registry")?;
        let port = strake_qemu::free_port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {ip}:{port}\n",
                dir.path().join("data").display()
            ),
        )?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting docker-registry")?;
        let reg = Registry {
            child,
            port,
            _dir: dir,
        };
        poll("docker-registry to listen", Duration::from_secs(20), || {
            std::net::TcpStream::connect((ip, port)).ok()
        })?;
        Ok(reg)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds a busybox image from the host's static busybox and pushes it as `repo:tag`.
pub async fn push_busybox(port: u16, repo: &str, tag: &str) -> anyhow::Result<()> {
    let busybox =
        std::fs::read("/bin/busybox").context("reading /bin/busybox (install busybox-static)")?;
    let mut layer = LayerBuilder::new(LayerCompression::Gzip);
    layer.add_dir("bin", 0o755)?;
    layer.add_dir("tmp", 0o1777)?;
    layer.add_dir("etc", 0o755)?;
    layer.add_file("bin/busybox", &busybox, 0o755)?;
    for applet in [
        "sh", "echo", "sleep", "cat", "ls", "true", "false", "date", "id", "ps", "tar", "wc",
        "touch", "mkdir", "env", "httpd", "wget", "hostname", "timeout", "nc", "nslookup",
    ] {
        layer.add_symlink(&format!("bin/{applet}"), "/bin/busybox")?;
    }
    layer.add_file(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        0o644,
    )?;
    layer.add_file("etc/group", b"root:x:0:\nnogroup:x:65534:\n", 0o644)?;
    let layer = layer.finish()?;
    let config = ImageConfig {
        entrypoint: vec![],
        cmd: vec!["sh".into()],
        env: vec!["PATH=/bin".into()],
        working_dir: None,
        user: None,
    };
    strake_oci::push_image(&format!("127.0.0.1:{port}"), repo, tag, vec![layer], config).await?;
    Ok(())
}

/// Where the image under test is: `STRAKE_IMAGE_DIR`, else `build/image` (what
/// `scripts/test.sh` builds). Fails naming the first of `files` that is missing.
pub fn image_dir(files: &[&str]) -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os("STRAKE_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("build/image"));
    for f in files {
        anyhow::ensure!(
            dir.join(f).exists(),
            "{} is missing: run scripts/test.sh (it builds the image) or set STRAKE_IMAGE_DIR",
            dir.join(f).display()
        );
    }
    Ok(dir)
}

/// The fingerprint maintenance mode prints on the console (`sha256:<64 hex>`).
pub fn fingerprint_on(console: &str) -> Option<String> {
    let marker = "certificate fingerprint sha256:";
    let at = console.find(marker)?;
    let hex: String = console[at + marker.len()..]
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    (hex.len() == 64).then(|| format!("sha256:{hex}"))
}

/// Waits (up to `timeout`) for maintenance mode's certificate fingerprint on `vm`'s console
/// and returns it with the console. The marker can be on the console before the rest of its
/// line, so the console is read again until the whole fingerprint is there.
pub fn wait_for_fingerprint(
    vm: &mut strake_qemu::Vm,
    timeout: Duration,
) -> anyhow::Result<(String, String)> {
    vm.wait_for_console("certificate fingerprint sha256:", timeout)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let console = vm.console();
        if let Some(fingerprint) = fingerprint_on(&console) {
            return Ok((fingerprint, console));
        }
        if Instant::now() > deadline {
            bail!("the console shows no whole certificate fingerprint within 10 s of its start");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Passes `result` through, printing the VM's console tail first when it is an error.
pub fn on_failure(vm: &strake_qemu::Vm, result: anyhow::Result<()>) -> anyhow::Result<()> {
    if result.is_err() {
        eprintln!(
            "---- guest console of {} ----\n{}\n-----------------------",
            vm.config().name,
            strake_qemu::tail(&vm.config().serial_log(), 150)
        );
    }
    result
}
