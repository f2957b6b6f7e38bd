//! `strake agent`: the node agent, configured from flags or the boot configuration.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use anyhow::Context;
use strake_pki::BootstrapToken;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// API server (host:port). Default: this node, for control-plane nodes.
    #[arg(long)]
    api: Option<String>,
    #[arg(long, env = "STRAKE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Node name (default: the hostname).
    #[arg(long)]
    node_name: Option<String>,
    /// Node address (default: the first non-loopback IPv4 address).
    #[arg(long)]
    node_ip: Option<IpAddr>,
    #[arg(long, default_value = "/var/lib/strake/agent")]
    data_dir: PathBuf,
    #[arg(long, default_value = "/run/strake/agent")]
    run_dir: PathBuf,
    #[arg(long, default_value = "/var/log/pods")]
    log_dir: PathBuf,
    /// Where local-path volumes live on this node (the control plane's `--local-path-root`).
    #[arg(long, default_value = strake_controllers::volumes::LOCAL_PATH_ROOT)]
    local_path_root: PathBuf,
    #[arg(long, default_value_t = 10250)]
    port: u16,
    /// The cluster DNS address pods with dnsPolicy ClusterFirst use (upstream's clusterDNS, the
    /// control plane's `kube-dns` Service, the 10th address of the service range); this
    /// node's agent answers it. Repeat for more.
    #[arg(long = "cluster-dns", default_values_t = [IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10))])]
    cluster_dns: Vec<IpAddr>,
    /// The cluster's DNS domain, the root of pods' search lists.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Every pod's range (the control plane's --cluster-cidr); pods' traffic leaving it is
    /// masqueraded.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: strake_net::Ipv4Net,
    /// How other nodes' pods are reached: `host-gw` (routes through their addresses; every
    /// node on one L2), `vxlan` (a tunnel), or `auto` (host-gw to nodes on this node's L2,
    /// VXLAN to the rest). The boot configuration's `strake.podnet=` overrides it.
    #[arg(long, default_value = "auto")]
    pod_network_backend: strake_net::routes::Backend,
    /// Registries that may be reached over plain HTTP (host:port).
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// Register this many hollow nodes instead of running one: each has capacity, a Lease and
    /// heartbeats, and reports the pods bound to it Running (nothing runs).
    #[arg(long)]
    simulate: Option<usize>,
    /// Hollow nodes are named `{prefix}-{index}`.
    #[arg(long, default_value = "hollow")]
    simulate_prefix: String,
    /// A hollow node's cpu and memory.
    #[arg(long, default_value = "4")]
    simulate_cpu: String,
    #[arg(long, default_value = "16Gi")]
    simulate_memory: String,
}

/// `--simulate N`: hollow nodes against the API server, under one node credential.
async fn simulate(
    args: &Args,
    api: &str,
    token: Option<BootstrapToken>,
    count: usize,
) -> anyhow::Result<()> {
    let token = token.context("--simulate needs a bootstrap token (--token)")?;
    let url = format!("https://{api}");
    let body = serde_json::json!({"nodeName": args.simulate_prefix});
    let creds = strake_kubeclient::bootstrap(&url, &token, "/strake/v1/node-credentials", &body)
        .await
        .context("fetching credentials for the hollow nodes")?;
    let client = strake_kubeclient::Client::from_credentials(&creds)?;
    let hollow = strake_hollow::Hollow::new(
        client,
        strake_hollow::Config {
            prefix: args.simulate_prefix.clone(),
            count,
            cpu: args.simulate_cpu.clone(),
            memory: args.simulate_memory.clone(),
            ..Default::default()
        },
    );
    hollow.run().await?;
    Ok(())
}

/// The first non-loopback IPv4 address of this machine (or 127.0.0.1).
pub fn primary_ip() -> IpAddr {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return IpAddr::V4(Ipv4Addr::LOCALHOST);
    };
    addrs
        // Not loopback, nor the pod network's bridge and veths.
        .filter(|a| {
            let n = a.interface_name.as_str();
            !n.starts_with("lo") && n != strake_agent::POD_BRIDGE && !n.starts_with("veth")
        })
        .filter_map(|a| a.address?.as_sockaddr_in().map(|s| IpAddr::V4(s.ip())))
        .next()
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let boot = crate::boot_config();
    let token = args
        .token
        .clone()
        .or_else(|| boot.as_ref().and_then(|b| b.token.clone()));
    let token = token
        .map(|t| t.parse::<BootstrapToken>())
        .transpose()
        .context("bootstrap token")?;
    let node_ip = args.node_ip.unwrap_or_else(primary_ip);
    // A control plane's agent talks to its own API server (its `cluster.endpoint` is where
    // it joined the cluster, which may go away).
    let controlplane = boot
        .as_ref()
        .is_some_and(|b| b.role == strake_init::Role::Controlplane);
    let api = args
        .api
        .clone()
        .or_else(|| {
            boot.as_ref()
                .filter(|_| !controlplane)
                .and_then(|b| b.api_endpoint.clone())
        })
        .unwrap_or_else(|| format!("{node_ip}:6443"));
    if let Some(count) = args.simulate {
        return simulate(&args, &api, token, count).await;
    }
    let node_name = match args.node_name.clone() {
        Some(n) => n,
        None => nix::unistd::gethostname()
            .context("reading the hostname")?
            .to_string_lossy()
            .into_owned(),
    };
    let mut insecure = args.insecure_registries.clone();
    if let Some(b) = &boot {
        insecure.extend(b.insecure_registries.iter().cloned());
    }
    let role_label = boot
        .as_ref()
        .is_none_or(|b| b.role == strake_init::Role::Controlplane);
    let cfg = strake_agent::AgentConfig {
        node_name,
        api_server: api,
        token,
        ca_pin: boot.as_ref().and_then(|b| b.ca_pin.clone()),
        node_ip,
        data_dir: args.data_dir,
        run_dir: args.run_dir,
        log_dir: args.log_dir,
        local_path_root: args.local_path_root,
        port: args.port,
        cluster_dns: args.cluster_dns,
        cluster_domain: args.cluster_domain,
        cluster_cidr: args.cluster_cidr,
        pod_network_backend: match boot.as_ref().and_then(|b| b.pod_network.as_deref()) {
            Some(b) => b
                .parse()
                .map_err(|e: String| anyhow::anyhow!("strake.podnet: {e}"))?,
            None => args.pod_network_backend,
        },
        registry: strake_oci::RegistryConfig {
            insecure,
            ..Default::default()
        },
        shim_exe: std::env::current_exe().context("locating the strake binary for the shim")?,
        labels: if role_label {
            vec![(
                "node-role.kubernetes.io/control-plane".into(),
                String::new(),
            )]
        } else {
            vec![]
        },
    };
    strake_agent::run(cfg).await?;
    Ok(())
}
