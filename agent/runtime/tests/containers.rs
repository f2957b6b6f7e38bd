//! Real containers through the real shim (`strake-shim-test shim ...`) on this host.
//!
//! Needs root, busybox-static at /bin/busybox and cgroups (v1, hybrid or v2). Not skipped when
//! those are missing: a host that can't run containers is a failure here.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use strake_runtime::{
    ContainerSpec, ContainerState, NetworkMode, Runtime, RuntimeError, Sandbox, Signal,
    cgroup_dirs, mount_overlay, remove_cgroup, unmount,
};

/// Tests run one at a time: they share the host's cgroups and the latency numbers need quiet.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests create real containers and must run as root"
    );
}

/// A busybox root filesystem in `dir`.
fn busybox_rootfs(dir: &Path) {
    for d in ["bin", "dev", "proc", "sys", "tmp", "etc", "root"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).expect("busybox-static at /bin/busybox");
    for applet in [
        "sh", "echo", "sleep", "true", "touch", "cat", "ls", "hostname", "id",
    ] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
}

struct Fixture {
    tmp: tempfile::TempDir,
    runtime: Runtime,
    /// Parent cgroup of every container in this fixture, removed on drop.
    cgroup_parent: String,
}

impl Fixture {
    fn new(name: &str) -> Self {
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        busybox_rootfs(&tmp.path().join("rootfs"));
        let runtime = Runtime::new(
            tmp.path().join("state"),
            env!("CARGO_BIN_EXE_strake-shim-test"),
        )
        .with_start_timeout(Duration::from_secs(20));
        Self {
            tmp,
            runtime,
            cgroup_parent: format!("/strake-test-{}-{name}", std::process::id()),
        }
    }

    fn spec(&self, id: &str, args: &[&str]) -> ContainerSpec {
        ContainerSpec {
            id: id.into(),
            rootfs: self.tmp.path().join("rootfs"),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: vec!["GREETING=hello".into()],
            cwd: "/".into(),
            hostname: id.into(),
            uid: 0,
            gid: 0,
            cgroup_path: format!("{}/{id}", self.cgroup_parent),
            memory_limit: Some(64 << 20),
            cpu_quota: Some((50_000, 100_000)),
            log_path: self.tmp.path().join("logs").join(format!("{id}.log")),
            network: NetworkMode::Host,
            ipc: None,
            uts: None,
            readonly_rootfs: false,
            mounts: Vec::new(),
        }
    }

    fn state_dir(&self, id: &str) -> PathBuf {
        self.runtime.state_root().join(id)
    }
}

impl Drop for Fixture {
    /// After a failed assertion: kill what still runs, force-delete it, drop the cgroups.
    fn drop(&mut self) {
        for id in self.runtime.list().unwrap_or_default() {
            if let Ok(ContainerState::Running { pid, .. }) = self.runtime.status(&id) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while shim_pid(&self.state_dir(&id)).is_some() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = std::process::Command::new(env!("CARGO_BIN_EXE_strake-shim-test"))
                .args(["shim", "delete", "--state-dir"])
                .arg(self.state_dir(&id))
                .args(["--id", &id])
                .status();
        }
        let _ = remove_cgroup(&self.cgroup_parent);
    }
}

/// Unmounts on drop, so a failed assertion doesn't leave a mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = unmount(&self.0);
    }
}

async fn poll_until<F: FnMut() -> bool>(what: &str, timeout: Duration, mut done: F) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The memory limit the kernel enforces for a container cgroup (v1 or v2 file).
fn memory_limit(cgroup_path: &str) -> Option<u64> {
    cgroup_dirs(cgroup_path).unwrap().iter().find_map(|dir| {
        ["memory.limit_in_bytes", "memory.max"]
            .iter()
            .find_map(|f| std::fs::read_to_string(dir.join(f)).ok())
            .and_then(|s| s.trim().parse().ok())
    })
}

#[tokio::test]
async fn runs_on_overlay_logs_and_exits_with_code_3() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new("exit3");
    let base = fx.tmp.path();
    let (upper, work, merged) = (base.join("upper"), base.join("work"), base.join("merged"));
    for d in [&upper, &work, &merged] {
        std::fs::create_dir_all(d).unwrap();
    }
    mount_overlay(&[base.join("rootfs")], &upper, &work, &merged).unwrap();
    let mounted = Mounted(merged.clone());

    let mut spec = fx.spec(
        "exit3",
        &["/bin/sh", "-c", "echo marker-$GREETING-$(hostname); echo to-stderr >&2; touch /made-here; cat /proc/self/cgroup; ls /sys/fs/cgroup; exit 3"],
    );
    spec.rootfs = merged.clone();
    let handle = fx.runtime.start(&spec).await.unwrap();
    assert!(handle.pid > 0);

    let status = fx.runtime.wait("exit3").await.unwrap();
    assert_eq!((status.exit_code, status.signal), (3, None));
    assert!(status.finished_at >= handle.started_at);
    assert_eq!(
        fx.runtime.status("exit3").unwrap(),
        ContainerState::Exited(status)
    );
    // Signalling an exited container is not an error.
    fx.runtime.signal("exit3", Signal::SIGTERM).unwrap();

    let log = std::fs::read_to_string(&spec.log_path).unwrap();
    assert!(log.contains("marker-hello-exit3"), "log was {log:?}");
    assert!(log.contains("to-stderr"), "log was {log:?}");
    // A private cgroup namespace: the container sees its own cgroup as the root.
    assert!(log.lines().any(|l| l.ends_with(":/")), "log was {log:?}");
    assert!(
        !log.contains("strake-test-"),
        "host cgroup paths leaked: {log:?}"
    );
    assert!(
        !log.contains("libcontainer"),
        "runtime logging leaked into the container log: {log:?}"
    );
    println!("container log:\n{log}");
    assert!(
        upper.join("made-here").exists(),
        "writes must land in the overlay's upper dir"
    );

    fx.runtime.remove("exit3").await.unwrap();
    assert!(!fx.state_dir("exit3").exists());
    assert_eq!(
        cgroup_dirs(&spec.cgroup_path).unwrap(),
        Vec::<PathBuf>::new()
    );
    assert!(matches!(
        fx.runtime.status("exit3"),
        Err(RuntimeError::NotFound(_))
    ));
    fx.runtime.remove("exit3").await.unwrap(); // idempotent
    unmount(&merged).unwrap();
    unmount(&merged).unwrap(); // idempotent
    drop(mounted);
}

#[tokio::test]
async fn stop_escalates_to_sigkill_when_sigterm_is_ignored() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new("stop");
    let spec = fx.spec("sleeper", &["sleep", "1000"]);
    let handle = fx.runtime.start(&spec).await.unwrap();

    match fx.runtime.status("sleeper").unwrap() {
        ContainerState::Running { pid, .. } => assert_eq!(pid, handle.pid),
        other => panic!("expected Running, got {other:?}"),
    }
    assert!(Path::new(&format!("/proc/{}", handle.pid)).exists());
    assert!(
        !cgroup_dirs(&spec.cgroup_path).unwrap().is_empty(),
        "container cgroup must exist while running"
    );
    assert_eq!(memory_limit(&spec.cgroup_path), Some(64 << 20));
    assert!(matches!(
        fx.runtime.remove("sleeper").await,
        Err(RuntimeError::StillRunning(_))
    ));

    let t = Instant::now();
    let status = fx
        .runtime
        .stop("sleeper", Duration::from_secs(1))
        .await
        .unwrap();
    let took = t.elapsed();
    // busybox sleep as pid 1 has no SIGTERM handler, so only SIGKILL ends it.
    assert_eq!((status.exit_code, status.signal), (137, Some(9)));
    assert!(
        took >= Duration::from_secs(1),
        "stopped after {took:?}, before the grace period"
    );

    fx.runtime.remove("sleeper").await.unwrap();
    assert!(!fx.state_dir("sleeper").exists());
    assert_eq!(
        cgroup_dirs(&spec.cgroup_path).unwrap(),
        Vec::<PathBuf>::new()
    );
}

#[tokio::test]
async fn sigterm_stops_a_container_that_handles_it() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new("term");
    let spec = fx.spec(
        "trapper",
        &[
            "/bin/sh",
            "-c",
            "trap 'exit 7' TERM; echo ready; while true; do sleep 0.05; done",
        ],
    );
    fx.runtime.start(&spec).await.unwrap();
    // The trap is installed once "ready" is logged.
    poll_until("the trap", Duration::from_secs(10), || {
        std::fs::read_to_string(&spec.log_path)
            .unwrap_or_default()
            .contains("ready")
    })
    .await;
    let status = fx
        .runtime
        .stop("trapper", Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!((status.exit_code, status.signal), (7, None));
    fx.runtime.remove("trapper").await.unwrap();
}

#[tokio::test]
async fn failed_create_is_reported_and_swept() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new("fail");
    let mut spec = fx.spec("broken", &["true"]);
    spec.network = NetworkMode::Path("/nonexistent/netns".into());
    let err = fx.runtime.start(&spec).await.unwrap_err();
    assert!(matches!(err, RuntimeError::StartFailed { .. }), "got {err}");
    println!("start failure as reported: {err}");
    assert!(matches!(
        fx.runtime.status("broken").unwrap(),
        ContainerState::Failed { .. }
    ));
    assert!(fx.runtime.wait("broken").await.is_err());

    fx.runtime.remove("broken").await.unwrap();
    assert!(!fx.state_dir("broken").exists());
    assert_eq!(
        cgroup_dirs(&spec.cgroup_path).unwrap(),
        Vec::<PathBuf>::new()
    );
    // The id is free again.
    assert!(matches!(
        fx.runtime.start(&spec).await,
        Err(RuntimeError::StartFailed { .. })
    ));
    fx.runtime.remove("broken").await.unwrap();
}

#[tokio::test]
async fn start_errors_leave_nothing_behind() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new("errors");
    // A program that does not exist in the rootfs.
    let spec = fx.spec("nobin", &["/no/such/program"]);
    match fx.runtime.start(&spec).await {
        Err(RuntimeError::StartFailed { error, .. }) => {
            assert!(error.contains("/no/such/program"), "{error}")
        }
        other => panic!("expected StartFailed, got {other:?}"),
    }
    fx.runtime.remove("nobin").await.unwrap();
    assert_eq!(
        cgroup_dirs(&spec.cgroup_path).unwrap(),
        Vec::<PathBuf>::new()
    );

    // A shim binary that does not exist: the error names it and no state is left.
    let broken = Runtime::new(fx.runtime.state_root(), "/nonexistent/strake");
    let spec = fx.spec("noshim", &["true"]);
    assert!(matches!(
        broken.start(&spec).await,
        Err(RuntimeError::ShimSpawn { .. })
    ));
    assert!(!fx.state_dir("noshim").exists());

    // Duplicate ids are refused while the first container exists.
    let spec = fx.spec("dup", &["sleep", "1000"]);
    fx.runtime.start(&spec).await.unwrap();
    assert!(matches!(
        fx.runtime.start(&spec).await,
        Err(RuntimeError::AlreadyExists(_))
    ));
    assert_eq!(fx.runtime.list().unwrap(), ["dup"]);
    fx.runtime.stop("dup", Duration::ZERO).await.unwrap();
    fx.runtime.remove("dup").await.unwrap();
    assert!(fx.runtime.list().unwrap().is_empty());
}

/// pid of the shim serving `state_dir`, found by its command line.
fn shim_pid(state_dir: &Path) -> Option<i32> {
    let needle = state_dir.to_str().unwrap();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_shim = args.contains(&b"run".as_slice()) && args.contains(&needle.as_bytes());
        is_shim.then_some(pid)
    })
}

#[tokio::test]
async fn remove_after_a_shim_crash_kills_and_sweeps() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new("crash");
    let spec = fx.spec("orphan", &["sleep", "1000"]);
    let handle = fx.runtime.start(&spec).await.unwrap();
    let shim = shim_pid(&fx.state_dir("orphan")).expect("shim process");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim), Signal::SIGKILL).unwrap();
    poll_until("the shim to die", Duration::from_secs(10), || {
        matches!(
            fx.runtime.status("orphan"),
            Ok(ContainerState::Unknown { .. })
        )
    })
    .await;
    assert!(matches!(
        fx.runtime.wait("orphan").await,
        Err(RuntimeError::ShimDied { .. })
    ));

    fx.runtime.remove("orphan").await.unwrap();
    assert!(!fx.state_dir("orphan").exists());
    assert_eq!(
        cgroup_dirs(&spec.cgroup_path).unwrap(),
        Vec::<PathBuf>::new()
    );
    // The init (now orphaned to the host's init, which reaps it) is gone.
    poll_until(
        "the orphaned init to vanish",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(format!("/proc/{}/stat", handle.pid))
                .map(|s| s.contains(") Z ") || !s.contains("(sleep)"))
                .unwrap_or(true)
        },
    )
    .await;
}

#[tokio::test]
async fn lifecycle_latency_of_busybox_true() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new("latency");
    let mut samples = Vec::new();
    for i in 0..21 {
        let id = format!("true-{i}");
        let spec = fx.spec(&id, &["true"]);
        let t = Instant::now();
        fx.runtime.start(&spec).await.unwrap();
        let started = t.elapsed();
        let status = fx.runtime.wait(&id).await.unwrap();
        let exited = t.elapsed();
        fx.runtime.remove(&id).await.unwrap();
        let total = t.elapsed();
        assert_eq!(status.exit_code, 0);
        assert_eq!(
            cgroup_dirs(&spec.cgroup_path).unwrap(),
            Vec::<PathBuf>::new()
        );
        if i > 0 {
            // The first run warms the page cache and is left out.
            samples.push((started, exited, total));
        }
    }
    samples.sort_by_key(|s| s.2);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (s, e, t) = samples[samples.len() / 2];
    println!(
        "busybox true through the shim, create→start→exit→delete over {} runs: \
         median {:.1} ms (started {:.1} ms, exited {:.1} ms), min {:.1} ms, max {:.1} ms",
        samples.len(),
        ms(t),
        ms(s),
        ms(e),
        ms(samples[0].2),
        ms(samples[samples.len() - 1].2)
    );
}

#[tokio::test]
async fn exec_joins_the_container_and_reports_exit_codes_and_output() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new("exec");
    let spec = fx.spec(
        "execd",
        &["sh", "-c", "echo inside > /tmp/marker; sleep 1000"],
    );
    fx.runtime.start(&spec).await.unwrap();
    let marker = fx.tmp.path().join("rootfs/tmp/marker");
    poll_until("the marker", Duration::from_secs(10), || marker.exists()).await;
    let run = |args: &[&str]| {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let rt = fx.runtime.clone();
        async move { rt.exec("execd", &args, Duration::from_secs(20)).await }
    };
    // The container's filesystem, environment and hostname, not the host's.
    let (code, out) = run(&["sh", "-c", "cat /tmp/marker; echo $GREETING; hostname"])
        .await
        .unwrap();
    assert_eq!((code, out.as_str()), (0, "inside\nhello\nexecd\n"));
    let (code, out) = run(&["sh", "-c", "echo oops >&2; exit 7"]).await.unwrap();
    assert_eq!((code, out.as_str()), (7, "oops\n"));
    match run(&["/no/such/binary"]).await {
        Err(RuntimeError::ExecFailed { error, .. }) => {
            assert!(
                error.contains("/no/such/binary") || error.contains("No such file"),
                "{error}"
            )
        }
        other => panic!("expected ExecFailed, got {other:?}"),
    }
    match fx
        .runtime
        .exec(
            "execd",
            &["sleep".into(), "30".into()],
            Duration::from_secs(1),
        )
        .await
    {
        Err(RuntimeError::ExecTimeout { .. }) => {}
        other => panic!("expected ExecTimeout, got {other:?}"),
    }
    assert!(matches!(
        fx.runtime
            .exec("nope", &["true".into()], Duration::from_secs(1))
            .await,
        Err(RuntimeError::NotFound(_))
    ));
    // Streamed: stdin through a pipe, then through a terminal the process owns.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = strake_runtime::ExecIo {
        stdin: std::process::Stdio::piped(),
        stdout: std::process::Stdio::piped(),
        stderr: std::process::Stdio::null(),
        tty: false,
    };
    let mut p = fx
        .runtime
        .spawn_exec(
            "execd",
            &["sh".into(), "-c".into(), "wc -c; exit 5".into()],
            io,
        )
        .unwrap();
    let mut stdin = p.take_stdin().unwrap();
    let mut stdout = p.take_stdout().unwrap();
    stdin.write_all(b"twelve bytes").await.unwrap();
    drop(stdin);
    let mut out = String::new();
    stdout.read_to_string(&mut out).await.unwrap();
    assert_eq!((p.wait().await.unwrap(), out.trim()), (5, "12"));
    let pty = strake_runtime::open_pty(100, 30).unwrap();
    let io = strake_runtime::ExecIo {
        stdin: pty.slave.try_clone().unwrap().into(),
        stdout: pty.slave.try_clone().unwrap().into(),
        stderr: pty.slave.into(),
        tty: true,
    };
    let script = "test -t 0 && echo tty; stty size; read line; echo got $line";
    let p = fx
        .runtime
        .spawn_exec("execd", &["sh".into(), "-c".into(), script.into()], io)
        .unwrap();
    let mut master = strake_runtime::PtyMaster::new(pty.master).unwrap();
    master.write_all(b"typed\n").await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(20), master.read(&mut buf))
            .await
            .expect("terminal output")
            .unwrap();
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    let seen = String::from_utf8_lossy(&seen);
    assert!(
        seen.contains("tty") && seen.contains("30 100") && seen.contains("got typed"),
        "{seen:?}"
    );
    assert_eq!(p.wait().await.unwrap(), 0);
    let io = strake_runtime::ExecIo {
        stdin: std::process::Stdio::null(),
        stdout: std::process::Stdio::null(),
        stderr: std::process::Stdio::null(),
        tty: false,
    };
    let p = fx
        .runtime
        .spawn_exec("execd", &["/no/such/binary".into()], io)
        .unwrap();
    assert!(matches!(
        p.wait().await,
        Err(RuntimeError::ExecFailed { .. })
    ));
    fx.runtime
        .stop("execd", Duration::from_secs(1))
        .await
        .unwrap();
    fx.runtime.remove("execd").await.unwrap();
}

/// Removes the sandbox on drop, so a failed assertion leaves no namespace pinned.
struct Pinned(PathBuf);

impl Drop for Pinned {
    fn drop(&mut self) {
        let _ = Sandbox::remove(&self.0);
    }
}

#[tokio::test]
async fn containers_of_a_sandbox_share_its_network_uts_and_ipc() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new("sandbox");
    let dir = fx.tmp.path().join("sandbox");
    let sandbox = Sandbox::create(&dir, "pod-host").unwrap();
    let _pinned = Pinned(dir.clone());
    let ns_of = |p: &Path| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    let host_net = ns_of(Path::new("/proc/self/ns/net")).unwrap();
    assert_ne!(
        ns_of(&sandbox.net).unwrap(),
        host_net,
        "a network namespace of its own"
    );

    let mut ids = Vec::new();
    for (i, id) in ["sbx-a", "sbx-b"].into_iter().enumerate() {
        let mut spec = fx.spec(
            id,
            &[
                "/bin/sh",
                "-c",
                "echo host=$(hostname); echo ifaces=$(busybox awk -F: 'NR>2{gsub(/ /,\"\",$1); printf \"%s,\", $1}' /proc/net/dev); echo pid1=$(busybox cat /proc/1/comm); ls -l /proc/self/ns/",
            ],
        );
        spec.network = NetworkMode::Path(sandbox.net.clone());
        spec.ipc = Some(sandbox.ipc.clone());
        spec.uts = Some(sandbox.uts.clone());
        // The pod's hostname is the sandbox's; a container's own setting agrees with it.
        spec.hostname = "pod-host".into();
        fx.runtime.start(&spec).await.unwrap();
        let status = fx.runtime.wait(id).await.unwrap();
        assert_eq!(status.exit_code, 0, "container {i}");
        ids.push((id, std::fs::read_to_string(&spec.log_path).unwrap()));
    }
    let ns_line = |log: &str, kind: &str| {
        log.lines()
            .find(|l| l.contains(&format!(" {kind} -> ")))
            .and_then(|l| l.rsplit(" -> ").next())
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no {kind} line in {log:?}"))
    };
    for (id, log) in &ids {
        assert!(log.contains("host=pod-host"), "{id}: {log}");
        assert!(
            log.contains("ifaces=lo,\n"),
            "{id} sees interfaces besides lo: {log}"
        );
    }
    for kind in ["net", "uts", "ipc"] {
        assert_eq!(
            ns_line(&ids[0].1, kind),
            ns_line(&ids[1].1, kind),
            "{kind} shared"
        );
    }
    // Each container has a PID namespace of its own: its shell is PID 1 there, and the namespace
    // is not the host's. (The two containers ran one after the other, so the kernel may give
    // the second one's namespace the inode number the first one's had.)
    let host_pid = format!("pid:[{}]", ns_of(Path::new("/proc/self/ns/pid")).unwrap());
    for (id, log) in &ids {
        assert!(
            log.contains("pid1=sh\n"),
            "{id} is not PID 1 of its own namespace: {log}"
        );
        assert_ne!(
            ns_line(log, "pid"),
            host_pid,
            "{id} shares the host's PID namespace"
        );
    }
    for (id, _) in &ids {
        fx.runtime.remove(id).await.unwrap();
    }
    Sandbox::remove(&dir).unwrap();
    assert!(!dir.exists());
    Sandbox::remove(&dir).unwrap(); // idempotent
    let err = Sandbox::create(&dir, "").unwrap_err();
    assert!(err.to_string().contains("hostname"), "{err}");
}
