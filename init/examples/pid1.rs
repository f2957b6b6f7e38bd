//! A stand-alone PID 1 for booting `strake-init` in QEMU without the rest of Strake: as PID 1 it
//! runs `strake_init::run` with one demo service (this same binary with the argument `demo`), which
//! prints the boot configuration and network state, then exits after a while so the restart
//! backoff shows on the console.

use std::time::Duration;

use strake_init::{RestartPolicy, ServiceSpec};

fn main() {
    if std::env::args().nth(1).as_deref() == Some("demo") {
        demo();
        return;
    }
    strake_init::run(|cfg| {
        let mut demo = ServiceSpec::new("demo", &["/bin/strake", "demo"], RestartPolicy::Always);
        demo.env.push(("ROLE".into(), format!("{:?}", cfg.role)));
        vec![demo]
    })
}

fn demo() {
    println!(
        "demo service up, role {}",
        std::env::var("ROLE").unwrap_or_default()
    );
    match strake_init::BootConfig::load(strake_init::BootConfig::RUNTIME_PATH) {
        Ok(cfg) => println!("boot config: {cfg:?}"),
        Err(e) => eprintln!("no boot config: {e}"),
    }
    for file in [
        "/run/strake/network.json",
        "/etc/resolv.conf",
        "/proc/self/mountinfo",
        "/sys/fs/cgroup/cgroup.subtree_control",
    ] {
        match std::fs::read_to_string(file) {
            Ok(s) => println!("{file}:\n{s}"),
            Err(e) => eprintln!("{file}: {e}"),
        }
    }
    std::thread::sleep(Duration::from_secs(5));
    eprintln!("demo service exiting with status 1");
    std::process::exit(1);
}
