//! Node IPAM (upstream's range allocator): every node gets a slice of the cluster CIDR as its
//! `spec.podCIDR`/`podCIDRs`, from which its agent hands out pod addresses. A slice is taken
//! once and never changed; a deleted node's slice is free again. When the cluster CIDR is used
//! up the node gets a `CIDRNotAvailable` Event and waits for a slice to free.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use strake_apimachinery::events::EventType;
use strake_apimachinery::{ApiError, Part};

use crate::api::Client;
use crate::cache::{ObjectRef, Reader, Reflector};
use crate::queue::Queue;
use crate::runtime::{self, Action};

pub const NAME: &str = "node-ipam-controller";

/// How pod CIDRs are cut: upstream's `--cluster-cidr` and `--node-cidr-mask-size`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNetwork {
    pub cluster_cidr: IpNet,
    /// Prefix length of each node's slice.
    pub node_mask: u8,
    /// Never handed out (the service range, when it overlaps the cluster CIDR).
    pub reserved: Vec<IpNet>,
}

impl PodNetwork {
    /// Checks that the node mask fits the cluster CIDR, as the controller manager does at start.
    pub fn new(cluster_cidr: IpNet, node_mask: u8, reserved: Vec<IpNet>) -> Result<Self, String> {
        if node_mask < cluster_cidr.prefix_len() || node_mask > cluster_cidr.max_prefix_len() {
            return Err(format!(
                "node CIDR mask size /{node_mask} does not fit the cluster CIDR {cluster_cidr}: it must be between /{} and /{}",
                cluster_cidr.prefix_len(),
                cluster_cidr.max_prefix_len()
            ));
        }
        if cluster_cidr.trunc() != cluster_cidr {
            return Err(format!(
                "cluster CIDR {cluster_cidr} has host bits set (did you mean {}?)",
                cluster_cidr.trunc()
            ));
        }
        Ok(Self {
            cluster_cidr,
            node_mask,
            reserved,
        })
    }

    /// The first slice that is neither used nor reserved.
    pub fn first_free(&self, used: &HashSet<IpNet>) -> Option<IpNet> {
        self.cluster_cidr.subnets(self.node_mask).ok()?.find(|s| {
            !used.contains(s) && !self.reserved.iter().any(|r| r.contains(s) || s.contains(r))
        })
    }
}

pub struct NodeIpam {
    client: Client,
    nodes: Reader<Node>,
    network: PodNetwork,
    /// Slices written but maybe not yet in the cache, by node name.
    assumed: Mutex<HashMap<String, IpNet>>,
    queue: Arc<Queue<ObjectRef>>,
}

fn pod_cidrs(node: &Node) -> Vec<IpNet> {
    let spec = node.spec.as_ref();
    spec.and_then(|s| s.pod_cidrs.clone())
        .filter(|c| !c.is_empty())
        .or_else(|| spec.and_then(|s| s.pod_cidr.clone()).map(|c| vec![c]))
        .unwrap_or_default()
        .iter()
        .filter_map(|c| c.parse().ok())
        .collect()
}

impl NodeIpam {
    pub fn new(client: &Client, nodes: &mut Reflector<Node>, network: PodNetwork) -> Arc<Self> {
        let queue = Arc::new(Queue::default());
        let q = queue.clone();
        nodes.on_change(move |c| {
            let node = c.latest();
            if c.new.is_none() {
                // A freed slice may be what a waiting node needs.
                q.add(ObjectRef::new(None, ""));
            } else if pod_cidrs(node).is_empty() {
                q.add(ObjectRef::of(node.as_ref()));
            }
        });
        Arc::new(Self {
            client: client.named(NAME),
            nodes: nodes.reader(),
            network,
            assumed: Mutex::default(),
            queue,
        })
    }

    pub async fn run(self: Arc<Self>, _workers: usize) {
        self.nodes.ready().await;
        self.queue.requeue_active();
        runtime::enqueue_all(&self.queue, &self.nodes);
        let me = self.clone();
        // One worker: allocations must not race each other.
        runtime::run(NAME, self.queue.clone(), 1, move |key| {
            let me = me.clone();
            async move { me.reconcile(key).await }
        })
        .await
    }

    async fn reconcile(&self, key: ObjectRef) -> Result<Action, ApiError> {
        if key.name.is_empty() {
            // A node went away: retry every node still waiting.
            for n in self.nodes.list() {
                if pod_cidrs(&n).is_empty() {
                    self.queue.add(ObjectRef::of(n.as_ref()));
                }
            }
            return Ok(Action::await_change());
        }
        let Some(node) = self.nodes.get(&key) else {
            return Ok(Action::await_change());
        };
        if !pod_cidrs(&node).is_empty() || node.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let cidr = {
            let mut assumed = self.assumed.lock().unwrap_or_else(|e| e.into_inner());
            let nodes = self.nodes.list();
            // Forget assumptions the cache has caught up with, or whose node is gone.
            assumed.retain(|name, _| {
                nodes
                    .iter()
                    .any(|n| n.metadata.name.as_ref() == Some(name) && pod_cidrs(n).is_empty())
            });
            if let Some(c) = assumed.get(&key.name) {
                Some(*c)
            } else {
                let used: HashSet<IpNet> = nodes
                    .iter()
                    .flat_map(|n| pod_cidrs(n))
                    .chain(assumed.values().copied())
                    .collect();
                let free = self.network.first_free(&used);
                if let Some(c) = free {
                    assumed.insert(key.name.clone(), c);
                }
                free
            }
        };
        let Some(cidr) = cidr else {
            let message = format!(
                "Node {} status is now: CIDRNotAvailable (no free /{} left in {})",
                key.name, self.network.node_mask, self.network.cluster_cidr
            );
            self.client
                .event(
                    node.as_ref(),
                    EventType::Normal,
                    "CIDRNotAvailable",
                    &message,
                )
                .await;
            return Ok(Action::requeue(Duration::from_secs(30)));
        };
        let text = cidr.to_string();
        let written = self
            .client
            .modify::<Node>(None, &key.name, Part::Main, |n| {
                if !pod_cidrs(n).is_empty() {
                    return false;
                }
                let spec = n.spec.get_or_insert_default();
                spec.pod_cidr = Some(text.clone());
                spec.pod_cidrs = Some(vec![text.clone()]);
                true
            })
            .await;
        match written {
            Ok(_) => {
                tracing::info!(node = %key.name, cidr = %text, "allocated the node's pod CIDR");
                Ok(Action::await_change())
            }
            Err(e) => {
                self.assumed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&key.name);
                match e {
                    ApiError::NotFound { .. } => Ok(Action::await_change()),
                    e => Err(e),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn slices_skip_used_and_reserved_ranges() {
        let pn = PodNetwork::new(net("10.0.0.0/22"), 24, vec![net("10.0.1.0/25")]).unwrap();
        let mut used = HashSet::new();
        assert_eq!(pn.first_free(&used), Some(net("10.0.0.0/24")));
        used.insert(net("10.0.0.0/24"));
        assert_eq!(
            pn.first_free(&used),
            Some(net("10.0.2.0/24")),
            "10.0.1/24 overlaps the reserved range"
        );
        used.insert(net("10.0.2.0/24"));
        used.insert(net("10.0.3.0/24"));
        assert_eq!(pn.first_free(&used), None);
    }

    #[test]
    fn bad_settings_are_refused_with_the_reason() {
        let e = PodNetwork::new(net("10.244.0.0/16"), 8, vec![]).unwrap_err();
        assert!(e.contains("between /16 and /32"), "{e}");
        let e = PodNetwork::new(net("10.244.3.0/16"), 24, vec![]).unwrap_err();
        assert!(e.contains("did you mean 10.244.0.0/16"), "{e}");
    }
}
