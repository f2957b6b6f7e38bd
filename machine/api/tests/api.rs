//! The machine API over real TLS on loopback, against an in-memory machine.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use strake_machineapi::{
    AddressView, ApplyMode, Client, ClientError, DiskView, FieldProblem, Host, HostError,
    KubeconfigView, Power, Role, RouteView, ServerMode, SocketView, Trust, generate_ca,
    issue_client, self_signed, serving_cert, tls_config,
};
use strake_machineconfig::MachineConfig;

#[derive(Default)]
struct Machine {
    current: Option<String>,
    kept: Option<(String, bool)>,
    installed: Option<String>,
    live: Vec<String>,
    power: Vec<Power>,
    /// What check_install reports.
    install_problem: Option<String>,
    staged_image: Option<usize>,
    reset: bool,
    restarted: Vec<String>,
}

#[derive(Default, Clone)]
struct Fake(Arc<Mutex<Machine>>);

impl Fake {
    fn with<T>(&self, f: impl FnOnce(&mut Machine) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }
}

impl Host for Fake {
    fn hostname(&self) -> String {
        "node-1".into()
    }
    fn current(&self) -> Option<String> {
        self.with(|m| m.current.clone())
    }
    fn check_install(&self, _config: &MachineConfig) -> Vec<FieldProblem> {
        self.with(|m| m.install_problem.clone())
            .map(|message| FieldProblem {
                path: "machine.install.disk".into(),
                message,
            })
            .into_iter()
            .collect()
    }
    fn install(&self, yaml: &str) -> Result<String, HostError> {
        self.with(|m| m.installed = Some(yaml.into()));
        Ok("installed on /dev/vda; rebooting".into())
    }
    fn keep(&self, yaml: &str, staged: bool) -> Result<(), HostError> {
        self.with(|m| {
            m.kept = Some((yaml.into(), staged));
            if !staged {
                m.current = Some(yaml.into());
            }
        });
        Ok(())
    }
    fn apply_live(&self, config: &MachineConfig) -> Result<(), HostError> {
        self.with(|m| m.live.extend(config.machine.sysctls.keys().cloned()));
        Ok(())
    }
    fn power(&self, action: Power) -> Result<(), HostError> {
        self.with(|m| m.power.push(action));
        Ok(())
    }
    fn slot(&self) -> Option<(char, bool)> {
        Some(('a', false))
    }
    fn stage_upgrade(&self, uki: &[u8]) -> Result<String, HostError> {
        self.with(|m| m.staged_image = Some(uki.len()));
        Ok("wrote slot b".into())
    }
    fn services(&self) -> Result<Vec<strake_machineapi::ServiceView>, HostError> {
        Ok(vec![strake_machineapi::ServiceView {
            name: "agent".into(),
            state: "running".into(),
            pid: Some(42),
            restarts: 0,
            since: Some(3.5),
            rss_bytes: Some(40 << 20),
        }])
    }
    fn restart_service(&self, name: &str) -> Result<String, HostError> {
        if name == "agent" {
            self.with(|m| m.restarted.push(name.into()));
            Ok("stopped agent".into())
        } else {
            Err(HostError::new(format!("no service {name}")))
        }
    }
    fn reset(&self) -> Result<String, HostError> {
        self.with(|m| m.reset = true);
        Ok("STATE is wiped at the next boot".into())
    }
    fn console_log(&self) -> Result<Vec<String>, HostError> {
        Ok(vec![
            "[    1.000000] boot: service agent".into(),
            "[    2.000000] agent:  INFO node registered".into(),
            "[    3.000000] machined:  INFO listening".into(),
            "[    4.000000] agent:  INFO pod started".into(),
        ])
    }
    fn kernel_log(&self) -> Result<Vec<String>, HostError> {
        Ok(vec!["[    0.100000] Linux version 6.1".into()])
    }
    fn disks(&self) -> Result<Vec<DiskView>, HostError> {
        Ok(vec![DiskView {
            device: "/dev/vda".into(),
            bytes: 8 << 30,
            model: None,
            serial: Some("disk-1".into()),
            wwn: None,
            partitions: Vec::new(),
        }])
    }
    fn addresses(&self) -> Result<Vec<AddressView>, HostError> {
        Ok(vec![AddressView {
            interface: "eth0".into(),
            address: "10.0.2.15/24".into(),
        }])
    }
    fn routes(&self) -> Result<Vec<RouteView>, HostError> {
        Ok(vec![RouteView {
            destination: "0.0.0.0/0".into(),
            gateway: Some("10.0.2.2".into()),
            interface: "eth0".into(),
            metric: 0,
        }])
    }
    fn netstat(&self) -> Result<Vec<SocketView>, HostError> {
        Ok(vec![SocketView {
            protocol: "tcp".into(),
            local: "0.0.0.0:50000".into(),
            remote: "0.0.0.0:0".into(),
            state: "LISTEN".into(),
            process: Some("1/strake".into()),
        }])
    }
    fn kubeconfig(&self) -> Result<KubeconfigView, HostError> {
        Err(HostError::new("this node holds no cluster CA"))
    }
}

fn config(extra: &str) -> String {
    format!(
        "apiVersion: strake.dev/v1alpha1\nkind: MachineConfig\nmachine:\n  role: controlplane\n  hostname: node-1\n{extra}cluster:\n  name: lab\n  token: abcdef.0123456789abcdef\n"
    )
}

async fn start(
    mode: ServerMode,
    fake: &Fake,
) -> (SocketAddr, Option<strake_machineconfig::MachineCa>, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tls, ca, serving_pem) = match mode {
        ServerMode::Maintenance => {
            let cert = self_signed("node-1", &[]).unwrap();
            (tls_config(mode, &cert, None).unwrap(), None, cert.cert_pem)
        }
        ServerMode::Configured => {
            let ca = generate_ca("lab").unwrap();
            let cert = serving_cert(&ca, "node-1", &[]).unwrap();
            (
                tls_config(mode, &cert, Some(&ca.crt)).unwrap(),
                Some(ca),
                cert.cert_pem,
            )
        }
    };
    let host: Arc<dyn Host> = Arc::new(fake.clone());
    tokio::spawn(strake_machineapi::serve(listener, tls, host, mode, "1.2.3"));
    (addr, ca, serving_pem)
}

fn api_error(r: Result<impl std::fmt::Debug, ClientError>) -> (u16, strake_machineapi::ErrorBody) {
    match r {
        Err(ClientError::Api { status, body }) => (status, body),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn maintenance_mode_installs_a_valid_config_and_nothing_else() {
    let fake = Fake::default();
    let (addr, _, cert) = start(ServerMode::Maintenance, &fake).await;
    let pin = strake_machineapi::fingerprint(&cert).unwrap();
    let client = Client::new(
        &addr.to_string(),
        &Trust::Insecure {
            fingerprint: Some(pin),
        },
    )
    .unwrap();
    let v = client.version().await.unwrap();
    assert!(v.maintenance);
    assert_eq!(
        (v.version.as_str(), v.hostname.as_str()),
        ("1.2.3", "node-1")
    );

    // A wrong pin fails the handshake: the client never talks to an impostor.
    let wrong = Client::new(
        &addr.to_string(),
        &Trust::Insecure {
            fingerprint: Some(format!("sha256:{}", "0".repeat(64))),
        },
    )
    .unwrap();
    let err = wrong.version().await.unwrap_err().to_string();
    assert!(err.contains("fingerprint"), "{err}");

    // Every problem, each with its path, and nothing installed.
    let bad = "apiVersion: strake.dev/v1alpha1\nkind: MachineConfig\nmachine:\n  role: worker\n  hostname: Bad_Name\n  agent: {maxPods: 0}\ncluster:\n  name: lab\n";
    let (status, body) = api_error(client.apply_config(bad, ApplyMode::Auto, false).await);
    assert_eq!(status, 400);
    let paths: Vec<&str> = body.errors.iter().map(|e| e.path.as_str()).collect();
    assert!(
        paths.contains(&"machine.hostname") && paths.contains(&"machine.agent.maxPods"),
        "{body}"
    );
    assert!(body.message.contains("nothing was applied"), "{body}");
    let (status, body) = api_error(
        client
            .apply_config("::: nope", ApplyMode::Auto, false)
            .await,
    );
    assert_eq!(status, 400, "{body}");

    // Modes that keep the node running make no sense without a config.
    let (status, body) = api_error(
        client
            .apply_config(&config(""), ApplyMode::NoReboot, false)
            .await,
    );
    assert_eq!(status, 400);
    assert!(body.message.contains("no-reboot is not possible"), "{body}");

    // The machine says the config cannot live here.
    fake.with(|m| m.install_problem = Some("/dev/vdz does not exist".into()));
    let (status, body) = api_error(
        client
            .apply_config(&config(""), ApplyMode::Auto, false)
            .await,
    );
    assert_eq!(status, 400);
    assert_eq!(
        body.errors[0].to_string(),
        "machine.install.disk: /dev/vdz does not exist"
    );
    fake.with(|m| m.install_problem = None);

    let dry = client
        .apply_config(&config(""), ApplyMode::Auto, true)
        .await
        .unwrap();
    assert!(dry.dry_run && dry.mode == ApplyMode::Reboot);
    assert_eq!(
        dry.changes
            .iter()
            .map(|c| c.path.as_str())
            .collect::<Vec<_>>(),
        ["cluster", "machine"]
    );
    assert!(
        fake.with(|m| m.installed.is_none()),
        "a dry run installs nothing"
    );

    let done = client
        .apply_config(&config(""), ApplyMode::Auto, false)
        .await
        .unwrap();
    assert_eq!(done.message, "installed on /dev/vda; rebooting");
    assert_eq!(fake.with(|m| m.installed.clone()), Some(config("")));

    // The disks, to pick the install disk from, and nothing else of the machine.
    let disks = client.disks().await.unwrap();
    assert_eq!(disks[0].serial.as_deref(), Some("disk-1"));
    for r in [
        client.machineconfig().await.map(|_| ()),
        client.reboot().await.map(|_| ()),
        client.addresses().await.map(|_| ()),
        client.kubeconfig().await.map(|_| ()),
    ] {
        let (status, body) = api_error(r);
        assert_eq!(status, 403);
        assert!(body.message.contains("maintenance mode"), "{body}");
    }
}

#[tokio::test]
async fn configured_mode_checks_roles_and_applies_by_mode() {
    let fake = Fake::default();
    fake.with(|m| m.current = Some(config("  sysctls:\n    vm.swappiness: \"1\"\n")));
    let (addr, ca, _) = start(ServerMode::Configured, &fake).await;
    let ca = ca.unwrap();
    let as_role = |role: Role| {
        let cert = issue_client(&ca, &format!("{role}-user"), role, 1).unwrap();
        Client::new(
            &addr.to_string(),
            &Trust::Ca {
                ca_pem: ca.crt.clone(),
                client: cert,
            },
        )
        .unwrap()
    };
    let admin = as_role(Role::Admin);
    let reader = as_role(Role::Reader);
    let operator = as_role(Role::Operator);

    // No client certificate: told what is needed.
    let anonymous = Client::new(&addr.to_string(), &Trust::Insecure { fingerprint: None }).unwrap();
    let (status, body) = api_error(anonymous.version().await);
    assert_eq!(status, 401);
    assert!(body.message.contains("strake:admin"), "{body}");
    // A client certificate from another CA is refused in the handshake.
    let other = generate_ca("other").unwrap();
    let stranger = Client::new(
        &addr.to_string(),
        &Trust::Ca {
            ca_pem: ca.crt.clone(),
            client: issue_client(&other, "mallory", Role::Admin, 1).unwrap(),
        },
    )
    .unwrap();
    assert!(stranger.version().await.is_err());
    // A client that trusts another CA does not trust this node.
    let misled = Client::new(
        &addr.to_string(),
        &Trust::Ca {
            ca_pem: other.crt.clone(),
            client: issue_client(&other, "alice", Role::Admin, 1).unwrap(),
        },
    )
    .unwrap();
    assert!(misled.version().await.is_err());

    assert!(!reader.version().await.unwrap().maintenance);
    let seen = reader.machineconfig().await.unwrap();
    assert!(
        seen.redacted && seen.yaml.contains("REDACTED") && !seen.yaml.contains("0123456789abcdef"),
        "{}",
        seen.yaml
    );
    let full = admin.machineconfig().await.unwrap();
    assert!(!full.redacted && full.yaml.contains("abcdef.0123456789abcdef"));
    let (status, body) = api_error(
        reader
            .apply_config(&config(""), ApplyMode::Auto, false)
            .await,
    );
    assert_eq!(status, 403);
    assert_eq!(
        body.message,
        "reader-user has the reader role; apply-config needs admin"
    );
    let (status, _) = api_error(reader.reboot().await);
    assert_eq!(status, 403);

    // A sysctl change is applied live.
    let live = config("  sysctls:\n    vm.swappiness: \"10\"\n");
    let r = admin
        .apply_config(&live, ApplyMode::Auto, false)
        .await
        .unwrap();
    assert_eq!(r.mode, ApplyMode::NoReboot);
    assert_eq!(r.changes.len(), 1);
    assert_eq!(r.changes[0].path, "machine.sysctls[\"vm.swappiness\"]");
    assert_eq!(fake.with(|m| m.live.clone()), ["vm.swappiness"]);
    assert_eq!(fake.with(|m| m.kept.clone()), Some((live.clone(), false)));

    // A hostname change is read at boot: refused live, listed by path, nothing kept.
    let renamed = live.replace("hostname: node-1", "hostname: node-2");
    let (status, body) = api_error(
        admin
            .apply_config(&renamed, ApplyMode::NoReboot, false)
            .await,
    );
    assert_eq!(status, 409);
    assert_eq!(body.errors[0].path, "machine.hostname");
    assert_eq!(fake.with(|m| m.kept.clone()), Some((live.clone(), false)));

    // A dry run says what would happen and does nothing.
    let dry = admin
        .apply_config(&renamed, ApplyMode::Auto, true)
        .await
        .unwrap();
    assert!(dry.dry_run && dry.mode == ApplyMode::Reboot);
    assert_eq!(fake.with(|m| m.kept.clone()), Some((live.clone(), false)));

    // Staged: kept for the next boot, no reboot.
    let staged = admin
        .apply_config(&renamed, ApplyMode::Staged, false)
        .await
        .unwrap();
    assert_eq!(staged.mode, ApplyMode::Staged);
    assert_eq!(fake.with(|m| m.kept.clone()), Some((renamed.clone(), true)));
    assert!(fake.with(|m| m.power.is_empty()));

    // Auto with a boot-time change: kept, then a reboot.
    let r = admin
        .apply_config(&renamed, ApplyMode::Auto, false)
        .await
        .unwrap();
    assert_eq!(r.mode, ApplyMode::Reboot);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(fake.with(|m| m.power.clone()), [Power::Reboot]);

    let msg = operator.shutdown().await.unwrap();
    assert_eq!(msg.message, "node-1 is shutting down");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(
        fake.with(|m| m.power.clone()),
        [Power::Reboot, Power::Shutdown]
    );

    // Upgrades: only a whole UKI is written, and only by an admin.
    let (status, body) = api_error(operator.upgrade(b"MZ not really".to_vec()).await);
    assert_eq!(status, 403, "{body}");
    let (status, body) = api_error(admin.upgrade(b"#!/bin/sh".to_vec()).await);
    assert_eq!(status, 400);
    assert!(
        body.message
            .starts_with("refused before writing anything: not a PE file"),
        "{body}"
    );
    assert_eq!(fake.with(|m| m.staged_image), None);
    let v = reader.version().await.unwrap();
    assert_eq!((v.slot.as_deref(), v.on_trial), (Some("a"), false));

    // Services: readers list them, operators restart them.
    let list = reader.services().await.unwrap();
    assert_eq!((list[0].name.as_str(), list[0].pid), ("agent", Some(42)));
    let (status, _) = api_error(reader.restart_service("agent").await);
    assert_eq!(status, 403);
    operator.restart_service("agent").await.unwrap();
    let (status, body) = api_error(operator.restart_service("nope").await);
    assert_eq!((status, body.message.as_str()), (409, "no service nope"));
    assert_eq!(fake.with(|m| m.restarted.clone()), ["agent"]);

    // The network as the node sees it; the cluster's credentials for admins only.
    assert_eq!(reader.addresses().await.unwrap()[0].address, "10.0.2.15/24");
    assert_eq!(
        reader.routes().await.unwrap()[0].gateway.as_deref(),
        Some("10.0.2.2")
    );
    assert_eq!(reader.netstat().await.unwrap()[0].state, "LISTEN");
    let (status, _) = api_error(operator.kubeconfig().await);
    assert_eq!(status, 403);
    let (status, body) = api_error(admin.kubeconfig().await);
    assert_eq!(
        (status, body.message.as_str()),
        (409, "this node holds no cluster CA")
    );

    // Reset: an admin's alone, then a reboot.
    let (status, _) = api_error(operator.reset().await);
    assert_eq!(status, 403);
    assert!(!fake.with(|m| m.reset));
    let before = fake.with(|m| m.power.len());
    admin.reset().await.unwrap();
    assert!(fake.with(|m| m.reset));
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(fake.with(|m| m.power.len()), before + 1);

    // Logs: one service's lines, the last N, and only what is new after a timestamp.
    let agent = reader.logs(Some("agent"), None, None).await.unwrap();
    assert_eq!(agent.lines.len(), 2);
    assert_eq!(agent.last, 4.0);
    let newer = reader
        .logs(Some("agent"), None, Some(agent.last))
        .await
        .unwrap();
    assert!(newer.lines.is_empty());
    let last = reader.logs(None, Some(1), None).await.unwrap();
    assert_eq!(last.lines, ["[    4.000000] agent:  INFO pod started"]);
    let kernel = reader.dmesg(None, None).await.unwrap();
    assert_eq!(kernel.lines, ["[    0.100000] Linux version 6.1"]);

    // Bad input: an oversized body, an unknown mode.
    let huge = "#".repeat(strake_machineapi::MAX_BODY + 1);
    let (status, body) = api_error(admin.apply_config(&huge, ApplyMode::Auto, false).await);
    assert_eq!(status, 413, "{body}");
}
