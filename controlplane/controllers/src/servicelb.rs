//! ServiceLB: LoadBalancer Services without a cloud, as k3s's ServiceLB serves them. A
//! LoadBalancer Service gets the InternalIPs of the cluster's Ready nodes (all nodes when none
//! is Ready) as `status.loadBalancer.ingress` (ipMode VIP), and every node's agent forwards
//! those addresses' service ports to the Service's endpoints. The nodes' addresses are shared,
//! so a port one LoadBalancer Service holds is not given to another: the later one (by
//! creation, then name) stays pending, with a `PortInUse` Event, until the port is free.
//! Services naming a `loadBalancerClass` belong to another implementation and are left alone.
//! With `externalTrafficPolicy: Local` a node forwards only to its own endpoints (and drops
//! the rest), so such a Service gets only the addresses of the Ready nodes that run one of its
//! ready endpoints (from its EndpointSlices), following them as they move; none while it has
//! none.

use std::sync::Arc;

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use strake_apimachinery::events::EventType;
use strake_apimachinery::{ApiError, Part};

use crate::api::Client;
use crate::cache::{ObjectRef, Reader, Reflector};
use crate::queue::Queue;
use crate::runtime::{self, Action};

pub const NAME: &str = "service-lb-controller";

pub struct ServiceLb {
    client: Client,
    services: Reader<Service>,
    nodes: Reader<Node>,
    slices: Reader<EndpointSlice>,
    queue: Arc<Queue<ObjectRef>>,
}

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

fn local_policy(s: &Service) -> bool {
    s.spec
        .as_ref()
        .and_then(|s| s.external_traffic_policy.as_deref())
        == Some("Local")
}

/// The nodes running a ready endpoint of the Service `ns/name`, by its EndpointSlices.
pub fn endpoint_nodes(slices: &[Arc<EndpointSlice>], ns: &str, name: &str) -> BTreeSet<String> {
    slices
        .iter()
        .filter(|s| {
            s.metadata.namespace.as_deref() == Some(ns)
                && s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL))
                    .map(String::as_str)
                    == Some(name)
        })
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .filter_map(|e| e.node_name.clone())
        .collect()
}

fn is_ours(s: &Service) -> bool {
    let spec = s.spec.as_ref();
    spec.and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
        && spec.and_then(|s| s.load_balancer_class.as_ref()).is_none()
        && s.metadata.deletion_timestamp.is_none()
}

fn ports(s: &Service) -> Vec<(i32, String)> {
    s.spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.port, p.protocol.unwrap_or_else(|| "TCP".into())))
        .collect()
}

/// Who goes first for a port: the older Service, then the name.
fn rank(s: &Service) -> (Option<k8s_openapi::jiff::Timestamp>, String, String) {
    (
        s.metadata.creation_timestamp.as_ref().map(|t| t.0),
        s.metadata.namespace.clone().unwrap_or_default(),
        s.metadata.name.clone().unwrap_or_default(),
    )
}

/// The addresses a LoadBalancer Service gets: the Ready nodes' InternalIPs, sorted; with
/// `only`, only those of the nodes named there.
pub fn node_addresses(nodes: &[Arc<Node>], only: Option<&BTreeSet<String>>) -> Vec<String> {
    let ready = |n: &Node| {
        n.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    let any_ready = nodes.iter().any(|n| ready(n));
    let chosen = |n: &Node| {
        only.is_none_or(|names| n.metadata.name.as_ref().is_some_and(|m| names.contains(m)))
    };
    let mut out: Vec<String> = nodes
        .iter()
        .filter(|n| (!any_ready || ready(n)) && chosen(n))
        .flat_map(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.addresses.clone())
                .unwrap_or_default()
                .into_iter()
                .filter(|a| a.type_ == "InternalIP")
                .map(|a| a.address)
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

impl ServiceLb {
    pub fn new(
        client: &Client,
        services: &mut Reflector<Service>,
        nodes: &mut Reflector<Node>,
        slices: &mut Reflector<EndpointSlice>,
    ) -> Arc<Self> {
        let queue: Arc<Queue<ObjectRef>> = Arc::new(Queue::default());
        // Any Service change may free or take a port: every LoadBalancer Service looks again.
        let (q, reader) = (queue.clone(), services.reader());
        services.on_change(move |c| {
            q.add(ObjectRef::of(c.latest().as_ref()));
            for s in reader.list().iter().filter(|s| is_ours(s)) {
                q.add(ObjectRef::of(s.as_ref()));
            }
        });
        let (q, reader) = (queue.clone(), services.reader());
        nodes.on_change(move |_| {
            for s in reader.list().iter().filter(|s| is_ours(s)) {
                q.add(ObjectRef::of(s.as_ref()));
            }
        });
        // Endpoints moving between nodes change a Local Service's addresses.
        let q = queue.clone();
        slices.on_change(move |c| {
            let slice = c.latest();
            if let (Some(ns), Some(svc)) = (
                slice.metadata.namespace.as_deref(),
                slice
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL)),
            ) {
                q.add(ObjectRef::new(Some(ns), svc));
            }
        });
        Arc::new(Self {
            client: client.named(NAME),
            services: services.reader(),
            nodes: nodes.reader(),
            slices: slices.reader(),
            queue,
        })
    }

    pub async fn run(self: Arc<Self>, workers: usize) {
        self.services.ready().await;
        self.nodes.ready().await;
        self.slices.ready().await;
        self.queue.requeue_active();
        runtime::enqueue_all(&self.queue, &self.services);
        let me = self.clone();
        runtime::run(NAME, self.queue.clone(), workers, move |key| {
            let me = me.clone();
            async move { me.reconcile(key).await }
        })
        .await
    }

    async fn reconcile(&self, key: ObjectRef) -> Result<Action, ApiError> {
        let Some(svc) = self.services.get(&key) else {
            return Ok(Action::await_change());
        };
        let current = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.clone())
            .unwrap_or_default();
        let want: Vec<String> = if is_ours(&svc) {
            let mine = ports(&svc);
            let holder = self.services.list().into_iter().find(|other| {
                is_ours(other)
                    && rank(other) < rank(&svc)
                    && ports(other).iter().any(|p| mine.contains(p))
            });
            match holder {
                Some(other) => {
                    let (port, proto) = ports(&other)
                        .into_iter()
                        .find(|p| mine.contains(p))
                        .unwrap_or_default();
                    // Repeats only raise the Event's count.
                    self.client
                        .event(
                            svc.as_ref(),
                            EventType::Warning,
                            "PortInUse",
                            &format!(
                                "port {port}/{proto} is already held on the nodes by LoadBalancer Service {}/{}",
                                other.metadata.namespace.as_deref().unwrap_or_default(),
                                other.metadata.name.as_deref().unwrap_or_default()
                            ),
                        )
                        .await;
                    Vec::new()
                }
                None if local_policy(&svc) => {
                    let hosts = endpoint_nodes(
                        &self.slices.list(),
                        key.ns().unwrap_or_default(),
                        &key.name,
                    );
                    node_addresses(&self.nodes.list(), Some(&hosts))
                }
                None => node_addresses(&self.nodes.list(), None),
            }
        } else if svc
            .spec
            .as_ref()
            .and_then(|s| s.load_balancer_class.as_ref())
            .is_some()
        {
            // Another implementation's: never touched.
            return Ok(Action::await_change());
        } else {
            Vec::new()
        };
        let have: Vec<String> = current.iter().filter_map(|i| i.ip.clone()).collect();
        if have == want {
            return Ok(Action::await_change());
        }
        let ingress: Vec<LoadBalancerIngress> = want
            .iter()
            .map(|ip| LoadBalancerIngress {
                ip: Some(ip.clone()),
                ip_mode: Some("VIP".into()),
                ..Default::default()
            })
            .collect();
        let result = self
            .client
            .modify::<Service>(key.ns(), &key.name, Part::Status, |s| {
                let status = s.status.get_or_insert_default();
                let lb = LoadBalancerStatus {
                    ingress: (!ingress.is_empty()).then(|| ingress.clone()),
                };
                if status.load_balancer.as_ref() == Some(&lb) {
                    return false;
                }
                status.load_balancer = Some(lb);
                true
            })
            .await;
        match result {
            Ok(_) | Err(ApiError::NotFound { .. }) => Ok(Action::await_change()),
            Err(e) => Err(e),
        }
    }
}
