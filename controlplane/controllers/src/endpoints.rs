//! Endpoints of Services with a selector, as upstream's endpointslice and endpoints
//! controllers publish them: EndpointSlices (labelled `kubernetes.io/service-name`, owned by
//! the Service, at most 100 endpoints each, one group of slices per address family and port
//! mapping) whose endpoints carry the ready, serving and terminating conditions, the node,
//! zone, hostname and a reference to the pod; and the legacy Endpoints object (ready and
//! not-ready addresses). A pod is an endpoint once it has an IP; `publishNotReadyAddresses`
//! counts every such pod ready. These are what service routing and DNS read.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort as CorePort, EndpointSubset, Endpoints, Node, ObjectReference,
    Pod, Service, ServicePort,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use strake_apimachinery::{ApiError, DeleteOptions, Part};

use crate::api::Client;
use crate::cache::{ObjectRef, Reader, Reflector};
use crate::pods;
use crate::queue::Queue;
use crate::runtime::{self, Action};
use strake_scheduler::labels::Selector;

pub const NAME: &str = "endpointslice-controller";
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Endpoints per slice (upstream's max-endpoints-per-slice default).
pub const MAX_PER_SLICE: usize = 100;
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// The label upstream's endpoints controller puts on the Endpoints it writes.
pub const ENDPOINTS_MANAGED_BY_LABEL: &str = "endpoints.kubernetes.io/managed-by";

pub struct EndpointsController {
    client: Client,
    services: Reader<Service>,
    pods: Reader<Pod>,
    nodes: Reader<Node>,
    slices: Reader<EndpointSlice>,
    endpoints: Reader<Endpoints>,
    queue: Arc<Queue<ObjectRef>>,
}

/// The port of `pod` a service port targets; None when a named port is not on the pod.
fn target_port(pod: &Pod, sp: &ServicePort) -> Option<i32> {
    match &sp.target_port {
        None => Some(sp.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            let protocol = sp.protocol.as_deref().unwrap_or("TCP");
            pod.spec.as_ref()?.containers.iter().find_map(|c| {
                c.ports.iter().flatten().find_map(|p| {
                    (p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol)
                        .then_some(p.container_port)
                })
            })
        }
    }
}

/// A pod's resolved ports for a service: (name, port, protocol) per service port it has.
type Ports = Vec<(Option<String>, i32, String)>;

fn resolved_ports(pod: &Pod, service_ports: &[ServicePort]) -> Ports {
    service_ports
        .iter()
        .filter_map(|sp| {
            Some((
                sp.name.clone(),
                target_port(pod, sp)?,
                sp.protocol.clone().unwrap_or_else(|| "TCP".into()),
            ))
        })
        .collect()
}

fn address_type(ip: &str) -> &'static str {
    if ip.contains(':') { "IPv6" } else { "IPv4" }
}

/// One pod as an endpoint.
struct Member {
    ip: String,
    pod: Arc<Pod>,
    ready: bool,
    serving: bool,
    terminating: bool,
}

impl EndpointsController {
    pub fn new(
        client: &Client,
        services: &mut Reflector<Service>,
        pods: &mut Reflector<Pod>,
        nodes: &Reader<Node>,
        slices: &mut Reflector<EndpointSlice>,
        endpoints: &mut Reflector<Endpoints>,
    ) -> Arc<Self> {
        let queue: Arc<Queue<ObjectRef>> = Arc::new(Queue::default());
        services.on_change(runtime::enqueue_self(&queue));
        // A pod change concerns every service in its namespace that selects it, before or after.
        let (q, svc_reader) = (queue.clone(), services.reader());
        pods.on_change(move |c| {
            let ns = c.latest().metadata.namespace.clone().unwrap_or_default();
            for svc in svc_reader.in_namespace(&ns) {
                let Some(sel) = svc.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
                    continue;
                };
                let hit = |p: &Option<Arc<Pod>>| {
                    p.as_ref().is_some_and(|p| {
                        sel.iter().all(|(k, v)| {
                            p.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v)
                        })
                    })
                };
                if hit(&c.old) || hit(&c.new) {
                    q.add(ObjectRef::of(svc.as_ref()));
                }
            }
        });
        // Slices and Endpoints changed by someone else are put back.
        let q = queue.clone();
        slices.on_change(move |c| {
            let s = c.latest();
            let labels = s.metadata.labels.as_ref();
            if labels
                .and_then(|l| l.get(MANAGED_BY_LABEL))
                .map(String::as_str)
                == Some(MANAGED_BY)
                && let Some(svc) = labels.and_then(|l| l.get(SERVICE_NAME_LABEL))
            {
                q.add(ObjectRef::new(s.metadata.namespace.as_deref(), svc));
            }
        });
        endpoints.on_change(runtime::enqueue_self(&queue));
        Arc::new(Self {
            client: client.named(NAME),
            services: services.reader(),
            pods: pods.reader(),
            nodes: nodes.clone(),
            slices: slices.reader(),
            endpoints: endpoints.reader(),
            queue,
        })
    }

    pub async fn run(self: Arc<Self>, workers: usize) {
        self.services.ready().await;
        self.pods.ready().await;
        self.nodes.ready().await;
        self.slices.ready().await;
        self.endpoints.ready().await;
        self.queue.requeue_active();
        runtime::enqueue_all(&self.queue, &self.services);
        let me = self.clone();
        runtime::run(NAME, self.queue.clone(), workers, move |key| {
            let me = me.clone();
            async move { me.reconcile(key).await }
        })
        .await
    }

    fn members(&self, svc: &Service) -> Vec<Member> {
        let spec = svc.spec.clone().unwrap_or_default();
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let selector = k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
            match_labels: spec.selector.clone(),
            match_expressions: None,
        };
        let Ok(sel) = Selector::new(&selector) else {
            return Vec::new();
        };
        let publish = spec.publish_not_ready_addresses == Some(true);
        let mut out: Vec<Member> = self
            .pods
            .in_namespace(&ns)
            .into_iter()
            .filter(|p| sel.matches(&p.metadata.labels))
            .filter(|p| !matches!(pods::phase(p), "Succeeded" | "Failed"))
            .filter_map(|p| {
                let ip = p
                    .status
                    .as_ref()?
                    .pod_ip
                    .clone()
                    .filter(|i| !i.is_empty())?;
                let terminating = p.metadata.deletion_timestamp.is_some();
                let ready = pods::is_ready(&p);
                Some(Member {
                    ip,
                    ready: publish || (ready && !terminating),
                    serving: publish || ready,
                    terminating,
                    pod: p,
                })
            })
            .collect();
        out.sort_by(|a, b| a.pod.metadata.name.cmp(&b.pod.metadata.name));
        out
    }

    fn endpoint(&self, svc_name: &str, m: &Member) -> Endpoint {
        let spec = m.pod.spec.as_ref();
        let node = pods::node_name(&m.pod).map(str::to_string);
        let zone = node.as_ref().and_then(|n| {
            self.nodes
                .get(&ObjectRef::new(None, n))?
                .metadata
                .labels
                .as_ref()?
                .get(ZONE_LABEL)
                .cloned()
        });
        // A pod with a hostname in the service's subdomain is reachable by that name.
        let hostname = spec.and_then(|s| {
            (s.subdomain.as_deref() == Some(svc_name))
                .then(|| s.hostname.clone())
                .flatten()
        });
        Endpoint {
            addresses: vec![m.ip.clone()],
            conditions: Some(EndpointConditions {
                ready: Some(m.ready),
                serving: Some(m.serving),
                terminating: Some(m.terminating),
            }),
            hostname,
            node_name: node,
            zone,
            target_ref: Some(pod_reference(&m.pod)),
            deprecated_topology: None,
            hints: None::<EndpointHints>,
        }
    }

    async fn reconcile(&self, key: ObjectRef) -> Result<Action, ApiError> {
        let svc = self.services.get(&key);
        let selector = svc
            .as_ref()
            .and_then(|s| s.spec.as_ref()?.selector.clone())
            .filter(|s| !s.is_empty());
        let (Some(svc), Some(_)) = (svc, selector) else {
            // Gone, or without a selector (its endpoints are the user's): ours go.
            self.delete_slices(&key, &[]).await?;
            if self.endpoints.get(&key).is_some_and(|e| {
                e.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(ENDPOINTS_MANAGED_BY_LABEL))
                    .is_some()
            }) {
                self.client
                    .delete::<Endpoints>(key.ns(), &key.name, &DeleteOptions::default())
                    .await?;
            }
            return Ok(Action::await_change());
        };
        let members = self.members(&svc);
        let service_ports = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .unwrap_or_default();
        // Group endpoints by address family and the ports they resolve to.
        let mut groups: BTreeMap<(String, Ports), Vec<&Member>> = BTreeMap::new();
        for m in &members {
            let ports = resolved_ports(&m.pod, &service_ports);
            groups
                .entry((address_type(&m.ip).to_string(), ports))
                .or_default()
                .push(m);
        }
        let mut desired: Vec<EndpointSlice> = Vec::new();
        for ((family, ports), ms) in &groups {
            for chunk in ms.chunks(MAX_PER_SLICE) {
                desired.push(self.slice(&svc, family, ports, chunk));
            }
        }
        if desired.is_empty() {
            // An empty slice says the service has no endpoints, as upstream keeps one.
            let family = svc
                .spec
                .as_ref()
                .and_then(|s| s.ip_families.as_ref()?.first().cloned())
                .unwrap_or_else(|| "IPv4".into());
            let ports: Ports = Vec::new();
            desired.push(self.slice(&svc, &family, &ports, &[]));
        }
        self.apply_slices(&key, desired).await?;
        self.apply_endpoints(&svc, &service_ports, &members).await?;
        Ok(Action::await_change())
    }

    fn slice(
        &self,
        svc: &Service,
        family: &str,
        ports: &[(Option<String>, i32, String)],
        members: &[&Member],
    ) -> EndpointSlice {
        let name = svc.metadata.name.clone().unwrap_or_default();
        EndpointSlice {
            metadata: ObjectMeta {
                generate_name: Some(format!("{name}-")),
                namespace: svc.metadata.namespace.clone(),
                labels: Some(
                    [
                        (SERVICE_NAME_LABEL.to_string(), name.clone()),
                        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
                    ]
                    .into(),
                ),
                owner_references: Some(vec![pods::controller_ref(svc)]),
                ..Default::default()
            },
            address_type: family.to_string(),
            endpoints: members.iter().map(|m| self.endpoint(&name, m)).collect(),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p, proto)| EndpointPort {
                        name: Some(n.clone().unwrap_or_default()),
                        port: Some(*p),
                        protocol: Some(proto.clone()),
                        app_protocol: None,
                    })
                    .collect(),
            ),
        }
    }

    fn owned_slices(&self, key: &ObjectRef) -> Vec<Arc<EndpointSlice>> {
        let mut out: Vec<Arc<EndpointSlice>> = self
            .slices
            .in_namespace(key.ns().unwrap_or_default())
            .into_iter()
            .filter(|s| {
                let l = s.metadata.labels.as_ref();
                l.and_then(|l| l.get(SERVICE_NAME_LABEL)) == Some(&key.name)
                    && l.and_then(|l| l.get(MANAGED_BY_LABEL)).map(String::as_str)
                        == Some(MANAGED_BY)
            })
            .collect();
        out.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        out
    }

    async fn delete_slices(&self, key: &ObjectRef, keep: &[String]) -> Result<(), ApiError> {
        for s in self.owned_slices(key) {
            let name = s.metadata.name.clone().unwrap_or_default();
            if !keep.contains(&name) {
                self.client
                    .delete::<EndpointSlice>(key.ns(), &name, &DeleteOptions::default())
                    .await?;
            }
        }
        Ok(())
    }

    /// Writes the desired slices into the existing ones (same family first), creating and
    /// deleting only what the count calls for.
    async fn apply_slices(
        &self,
        key: &ObjectRef,
        desired: Vec<EndpointSlice>,
    ) -> Result<(), ApiError> {
        let mut existing: HashMap<String, Vec<Arc<EndpointSlice>>> = HashMap::new();
        for s in self.owned_slices(key) {
            existing.entry(s.address_type.clone()).or_default().push(s);
        }
        let mut kept = Vec::new();
        for want in desired {
            let reuse = existing
                .get_mut(&want.address_type)
                .and_then(|v| (!v.is_empty()).then(|| v.remove(0)));
            match reuse {
                Some(cur) => {
                    let name = cur.metadata.name.clone().unwrap_or_default();
                    kept.push(name.clone());
                    if cur.endpoints == want.endpoints
                        && cur.ports == want.ports
                        && cur.metadata.labels == want.metadata.labels
                    {
                        continue;
                    }
                    let res = self
                        .client
                        .modify::<EndpointSlice>(key.ns(), &name, Part::Main, |s| {
                            s.endpoints = want.endpoints.clone();
                            s.ports = want.ports.clone();
                            s.metadata.labels = want.metadata.labels.clone();
                            true
                        })
                        .await;
                    match res {
                        Ok(_) | Err(ApiError::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                None => {
                    let created = match self.client.create(key.ns(), &want).await {
                        Ok(s) => s,
                        // The namespace is going away.
                        Err(ApiError::Forbidden(_)) => return Ok(()),
                        Err(e) => return Err(e),
                    };
                    kept.push(created.metadata.name.unwrap_or_default());
                }
            }
        }
        self.delete_slices(key, &kept).await
    }

    async fn apply_endpoints(
        &self,
        svc: &Service,
        service_ports: &[ServicePort],
        members: &[Member],
    ) -> Result<(), ApiError> {
        let name = svc.metadata.name.clone().unwrap_or_default();
        let ns = svc.metadata.namespace.clone();
        // One subset per distinct port set, as upstream's repacking yields.
        let mut subsets: BTreeMap<Ports, EndpointSubset> = BTreeMap::new();
        for m in members {
            let ports = resolved_ports(&m.pod, service_ports);
            let subset = subsets
                .entry(ports.clone())
                .or_insert_with(|| EndpointSubset {
                    ports: Some(
                        ports
                            .iter()
                            .map(|(n, p, proto)| CorePort {
                                name: n.clone(),
                                port: *p,
                                protocol: Some(proto.clone()),
                                app_protocol: None,
                            })
                            .collect(),
                    ),
                    ..Default::default()
                });
            let addr = EndpointAddress {
                ip: m.ip.clone(),
                hostname: self.endpoint(&name, m).hostname,
                node_name: pods::node_name(&m.pod).map(str::to_string),
                target_ref: Some(pod_reference(&m.pod)),
            };
            if m.terminating && !m.ready {
                continue;
            }
            if m.ready {
                subset.addresses.get_or_insert_default().push(addr);
            } else {
                subset
                    .not_ready_addresses
                    .get_or_insert_default()
                    .push(addr);
            }
        }
        let subsets: Vec<EndpointSubset> = subsets
            .into_values()
            .filter(|s| s.addresses.is_some() || s.not_ready_addresses.is_some())
            .collect();
        let subsets = (!subsets.is_empty()).then_some(subsets);
        let labels: BTreeMap<String, String> = [(
            ENDPOINTS_MANAGED_BY_LABEL.to_string(),
            "endpoint-controller".to_string(),
        )]
        .into();
        match self.endpoints.get(&ObjectRef::new(ns.as_deref(), &name)) {
            Some(cur) if cur.subsets == subsets => Ok(()),
            Some(_) => {
                let res = self
                    .client
                    .modify::<Endpoints>(ns.as_deref(), &name, Part::Main, |e| {
                        e.subsets = subsets.clone();
                        e.metadata
                            .labels
                            .get_or_insert_default()
                            .extend(labels.clone());
                        true
                    })
                    .await;
                match res {
                    Ok(_) | Err(ApiError::NotFound { .. }) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            None => {
                let e = Endpoints {
                    metadata: ObjectMeta {
                        name: Some(name),
                        namespace: ns.clone(),
                        labels: Some(labels),
                        ..Default::default()
                    },
                    subsets,
                };
                match self.client.create(ns.as_deref(), &e).await {
                    Ok(_) | Err(ApiError::AlreadyExists { .. }) | Err(ApiError::Forbidden(_)) => {
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }
}

fn pod_reference(p: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: p.metadata.namespace.clone(),
        name: p.metadata.name.clone(),
        uid: p.metadata.uid.clone(),
        ..Default::default()
    }
}
