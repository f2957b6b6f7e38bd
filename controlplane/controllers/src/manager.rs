//! Starting the scheduler and the controllers: one cache per kind shared by every controller that reads it,
//! and each controller behind its own Lease, so with several control planes exactly one
//! instance of each acts while every instance keeps its caches warm.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod,
    ReplicationController, ResourceQuota, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use strake_apimachinery::Registry;

use crate::api::Client;
use crate::autoscaler::{self, Autoscalers, MetricsApi, MetricsSource};
use crate::cache::Reflector;
use crate::certificates::{self, Certificates};
use crate::cronjob::{self, CronJobs};
use crate::daemonset::{self, DaemonSets};
use crate::deployment::{self, Deployments};
use crate::disruption::{self, Disruption};
use crate::endpoints::{self, EndpointsController};
use crate::gc::{self, Collector};
use crate::job::{self, Jobs};
use crate::leader::{self, Election};
use crate::namespace::{self, Namespaces};
use crate::nodeipam::{self, NodeIpam, PodNetwork};
use crate::nodelifecycle::{self, NodeLifecycle, TaintEviction};
use crate::quota::{self, Quotas};
use crate::replicaset::{self, ReplicaSets};
use crate::scheduling::{self, Scheduler};
use crate::serviceaccount::{self, ServiceAccounts};
use crate::servicelb::{self, ServiceLb};
use crate::statefulset::{self, StatefulSets};
use crate::volumes::{self, Volumes};

/// The index of pods by the node they are bound to.
pub const BY_NODE: &str = "node";

/// How the controllers run.
#[derive(Clone, Debug)]
pub struct Options {
    /// This instance's name in the Leases it holds.
    pub identity: String,
    /// Concurrent reconciles per controller.
    pub workers: usize,
    /// The cluster CA certificate, published in every namespace as `kube-root-ca.crt`.
    pub ca_pem: Option<String>,
    /// How long a node may go without a heartbeat before it is unreachable (upstream's
    /// node-monitor-grace-period).
    pub node_monitor_grace: Duration,
    /// Where the autoscaler reads pod usage; None: the resource metrics API
    /// (`metrics.k8s.io`) through the registry.
    pub metrics: Option<Metrics>,
    /// Where the local-path provisioner puts volumes on nodes; None: no provisioner and no
    /// `local-path` StorageClass.
    pub local_path: Option<String>,
    /// How nodes' pod CIDRs are cut from the cluster CIDR; None: no node IPAM.
    pub pod_network: Option<PodNetwork>,
    /// The CA that signs approved CertificateSigningRequests of the `kubernetes.io` signers;
    /// None: no approver or signer runs.
    pub signer: Option<strake_pki::ClusterCa>,
}

/// A metrics source for the autoscaler.
#[derive(Clone)]
pub struct Metrics(pub Arc<dyn MetricsSource>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics(..)")
    }
}

/// Upstream's node-monitor-grace-period.
pub const NODE_MONITOR_GRACE: Duration = Duration::from_secs(40);

/// Starts the caches and every controller; returns once they are spawned.
pub fn start(reg: Registry, opts: Options) {
    let client = Client::new(reg.clone(), "strake-controller-manager");
    let mut pods = Reflector::<Pod>::new(reg.clone());
    pods.index(BY_NODE, |p: &Pod| {
        crate::pods::node_name(p)
            .map(str::to_string)
            .into_iter()
            .collect()
    });
    let mut sets = Reflector::<ReplicaSet>::new(reg.clone());
    let mut rcs = Reflector::<ReplicationController>::new(reg.clone());
    let mut nodes = Reflector::<Node>::new(reg.clone());
    let mut deployments = Reflector::<Deployment>::new(reg.clone());
    let mut namespaces = Reflector::<Namespace>::new(reg.clone());
    let mut accounts = Reflector::<ServiceAccount>::new(reg.clone());
    let mut configmaps = Reflector::<ConfigMap>::new(reg.clone());
    let mut leases = Reflector::<Lease>::new(reg.clone());
    let mut services = Reflector::<Service>::new(reg.clone());
    let mut slices = Reflector::<EndpointSlice>::new(reg.clone());
    let mut endpoint_objects = Reflector::<Endpoints>::new(reg.clone());
    let mut jobs = Reflector::<Job>::new(reg.clone());
    let mut cronjobs = Reflector::<CronJob>::new(reg.clone());
    let mut daemonsets = Reflector::<DaemonSet>::new(reg.clone());
    let mut revisions = Reflector::<ControllerRevision>::new(reg.clone());
    let mut statefulsets = Reflector::<StatefulSet>::new(reg.clone());
    let mut claims = Reflector::<PersistentVolumeClaim>::new(reg.clone());
    let mut volumes = Reflector::<PersistentVolume>::new(reg.clone());
    let mut classes = Reflector::<StorageClass>::new(reg.clone());
    let mut budgets = Reflector::<PodDisruptionBudget>::new(reg.clone());
    let mut quotas = Reflector::<ResourceQuota>::new(reg.clone());
    let mut hpas = Reflector::<HorizontalPodAutoscaler>::new(reg.clone());
    let mut requests = Reflector::<CertificateSigningRequest>::new(reg.clone());
    let metrics = opts.metrics.clone().map_or_else(
        || Arc::new(MetricsApi::new(reg.clone())) as Arc<dyn MetricsSource>,
        |m| m.0,
    );
    let collector = Collector::new(reg);

    let rs = ReplicaSets::new(&client, &mut sets, &mut pods);
    let rcc = ReplicaSets::new(&client, &mut rcs, &mut pods);
    let dc = Deployments::new(&client, &mut deployments, &mut sets, &mut pods);
    let scheduler = Scheduler::new(
        &client,
        &mut pods,
        &mut nodes,
        &mut namespaces,
        &mut budgets,
        scheduling::Storage {
            claims: &mut claims,
            volumes: &mut volumes,
            classes: &mut classes,
        },
    );
    let lifecycle = NodeLifecycle::new(
        &client,
        &mut nodes,
        &mut leases,
        &mut pods,
        opts.node_monitor_grace,
    );
    let eviction = TaintEviction::new(&client, &mut nodes, &mut pods);
    let ipam = opts
        .pod_network
        .clone()
        .map(|network| NodeIpam::new(&client, &mut nodes, network));
    let jc = Jobs::new(&client, &mut jobs, &mut pods);
    let cjc = CronJobs::new(&client, &mut cronjobs, &mut jobs);
    let dsc = DaemonSets::new(
        &client,
        &mut daemonsets,
        &mut pods,
        &mut nodes,
        &mut revisions,
    );
    let ssc = StatefulSets::new(
        &client,
        &mut statefulsets,
        &mut pods,
        &mut claims,
        &mut revisions,
    );
    let pdbc = Disruption::new(&client, &mut budgets, &mut pods);
    let eps = EndpointsController::new(
        &client,
        &mut services,
        &mut pods,
        &nodes.reader(),
        &mut slices,
        &mut endpoint_objects,
    );
    let sa = ServiceAccounts::new(
        &client,
        &mut namespaces,
        &mut accounts,
        &mut configmaps,
        opts.ca_pem.clone(),
    );
    let pvc = Volumes::new(
        &client,
        &mut claims,
        &mut volumes,
        &mut classes,
        &mut pods,
        &nodes.reader(),
        opts.local_path.clone(),
    );
    let nsc = Namespaces::new(&client, &mut namespaces, &mut pods);
    let slb = ServiceLb::new(&client, &mut services, &mut nodes, &mut slices);
    let hpac = Autoscalers::new(&client, &mut hpas, &mut pods, metrics);
    let csrc = opts
        .signer
        .clone()
        .map(|ca| Certificates::new(&client, &mut requests, &mut nodes, ca));
    let rqc = Quotas::new(
        &client,
        &mut quotas,
        &mut pods,
        &mut services,
        &mut claims,
        &mut configmaps,
    );

    tokio::spawn(pods.run());
    tokio::spawn(sets.run());
    tokio::spawn(rcs.run());
    tokio::spawn(nodes.run());
    tokio::spawn(namespaces.run());
    tokio::spawn(accounts.run());
    tokio::spawn(configmaps.run());
    tokio::spawn(leases.run());
    tokio::spawn(jobs.run());
    tokio::spawn(cronjobs.run());
    tokio::spawn(daemonsets.run());
    tokio::spawn(revisions.run());
    tokio::spawn(statefulsets.run());
    tokio::spawn(claims.run());
    tokio::spawn(volumes.run());
    tokio::spawn(classes.run());
    tokio::spawn(budgets.run());
    tokio::spawn(quotas.run());
    if csrc.is_some() {
        tokio::spawn(requests.run());
    }
    tokio::spawn(hpas.run());
    tokio::spawn(services.run());
    tokio::spawn(slices.run());
    tokio::spawn(endpoint_objects.run());
    tokio::spawn(deployments.run());
    tokio::spawn(collector.clone().feed());

    let workers = opts.workers;
    tokio::spawn(leader::run(
        client.clone(),
        Election::new(replicaset::NAME, &opts.identity),
        move || rs.clone().run(workers),
    ));
    tokio::spawn(leader::run(
        client.clone(),
        Election::new(replicaset::RC_NAME, &opts.identity),
        move || rcc.clone().run(workers),
    ));
    tokio::spawn(leader::run(
        client.clone(),
        Election::new(deployment::NAME, &opts.identity),
        move || dc.clone().run(workers),
    ));
    tokio::spawn(leader::run(
        client.clone(),
        Election::new("kube-scheduler", &opts.identity),
        move || scheduler.clone().run(),
    ));
    tokio::spawn(leader::run(
        client.clone(),
        Election::new(nodelifecycle::NAME, &opts.identity),
        move || lifecycle.clone().run(workers),
    ));
    tokio::spawn(leader::run(
        client.clone(),
        Election::new(nodelifecycle::EVICTION, &opts.identity),
        move || eviction.clone().run(workers),
    ));
    if let Some(ipam) = ipam {
        tokio::spawn(leader::run(
            client.clone(),
            Election::new(nodeipam::NAME, &opts.identity),
            move || ipam.clone().run(workers),
        ));
    }
    tokio::spawn(leader::run(
        client.clone(),
        Election::new(job::NAME, &opts.identity),
        move || jc.clone().run(workers),
    ));
    tokio::spawn(leader::run(
        client.clone(),
        Election::new(disruption::NAME, &opts.identity),
        move || pdbc.clone().run(workers),
    ));
    tokio::spawn(leader::run(
        client.clone(),
        Election::new(statefulset::NAME, &opts.identity),
        move || ssc.clone().run(workers),
    ));
    tokio::spawn(leader::run(
        client.clone(),
        Election::new(daemonset::NAME, &opts.identity),
        move || dsc.clone().run(workers),
    ));
    tokio::spawn(leader::run(
        client.clone(),
        Election::new(volumes::NAME, &opts.identity),
        move || pvc.clone().run(workers),
    ));
    tokio::spawn(leader::run(
        client.clone(),
        Election::new(cronjob::NAME, &opts.identity),
        move || cjc.clone().run(workers),
    ));
    tokio::spawn(leader::run(
        client.clone(),
        Election::new(endpoints::NAME, &opts.identity),
        move || eps.clone().run(workers),
    ));
    tokio::spawn(leader::run(
        client.clone(),
        Election::new(serviceaccount::NAME, &opts.identity),
        move || sa.clone().run(workers),
    ));
    tokio::spawn(leader::run(
        client.clone(),
        Election::new(servicelb::NAME, &opts.identity),
        move || slb.clone().run(workers),
    ));
    tokio::spawn(leader::run(
        client.clone(),
        Election::new(namespace::NAME, &opts.identity),
        move || nsc.clone().run(workers),
    ));
    tokio::spawn(leader::run(
        client.clone(),
        Election::new(quota::NAME, &opts.identity),
        move || rqc.clone().run(workers),
    ));
    if let Some(csrc) = csrc {
        tokio::spawn(leader::run(
            client.clone(),
            Election::new(certificates::NAME, &opts.identity),
            move || csrc.clone().run(workers),
        ));
    }
    tokio::spawn(leader::run(
        client.clone(),
        Election::new(autoscaler::NAME, &opts.identity),
        move || hpac.clone().run(workers),
    ));
    tokio::spawn(leader::run(
        client,
        Election::new(gc::NAME, &opts.identity),
        move || collector.clone().run(workers),
    ));
}
