//! Per-namespace defaults: the `default` ServiceAccount, and the `kube-root-ca.crt` ConfigMap
//! holding the cluster CA (what upstream's service-account and root-ca-cert-publisher
//! controllers keep), created in every active namespace and put back when deleted or changed.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use strake_apimachinery::{ApiError, Part};

use crate::api::Client;
use crate::cache::{ObjectRef, Reader, Reflector};
use crate::queue::Queue;
use crate::runtime::{self, Action};

pub const NAME: &str = "serviceaccount-controller";
pub const ROOT_CA: &str = "kube-root-ca.crt";
const DESCRIPTION: &str = "kubernetes.io/description";
const CA_NOTE: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

pub struct ServiceAccounts {
    client: Client,
    namespaces: Reader<Namespace>,
    accounts: Reader<ServiceAccount>,
    configmaps: Reader<ConfigMap>,
    ca_pem: Option<String>,
    queue: Arc<Queue<ObjectRef>>,
}

impl ServiceAccounts {
    pub fn new(
        client: &Client,
        namespaces: &mut Reflector<Namespace>,
        accounts: &mut Reflector<ServiceAccount>,
        configmaps: &mut Reflector<ConfigMap>,
        ca_pem: Option<String>,
    ) -> Arc<Self> {
        let queue = Arc::new(Queue::default());
        namespaces.on_change(runtime::enqueue_self(&queue));
        let q = queue.clone();
        accounts.on_change(move |c| {
            let sa = c.latest();
            if sa.metadata.name.as_deref() == Some("default") && c.new.is_none() {
                q.add(ObjectRef::new(
                    None,
                    sa.metadata.namespace.as_deref().unwrap_or_default(),
                ));
            }
        });
        let q = queue.clone();
        configmaps.on_change(move |c| {
            let cm = c.latest();
            if cm.metadata.name.as_deref() == Some(ROOT_CA) {
                q.add(ObjectRef::new(
                    None,
                    cm.metadata.namespace.as_deref().unwrap_or_default(),
                ));
            }
        });
        Arc::new(Self {
            client: client.named(NAME),
            namespaces: namespaces.reader(),
            accounts: accounts.reader(),
            configmaps: configmaps.reader(),
            ca_pem,
            queue,
        })
    }

    pub async fn run(self: Arc<Self>, workers: usize) {
        self.namespaces.ready().await;
        self.accounts.ready().await;
        self.configmaps.ready().await;
        self.queue.requeue_active();
        runtime::enqueue_all(&self.queue, &self.namespaces);
        let me = self.clone();
        runtime::run(NAME, self.queue.clone(), workers, move |key| {
            let me = me.clone();
            async move { me.reconcile(key).await }
        })
        .await
    }

    async fn reconcile(&self, key: ObjectRef) -> Result<Action, ApiError> {
        let Some(ns) = self.namespaces.get(&key) else {
            return Ok(Action::await_change());
        };
        let active = ns.metadata.deletion_timestamp.is_none()
            && ns.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating");
        if !active {
            return Ok(Action::await_change());
        }
        let name = key.name.as_str();
        if self
            .accounts
            .get(&ObjectRef::new(Some(name), "default"))
            .is_none()
        {
            let sa = ServiceAccount {
                metadata: ObjectMeta {
                    name: Some("default".into()),
                    namespace: Some(name.into()),
                    ..Default::default()
                },
                ..Default::default()
            };
            match self.client.create(Some(name), &sa).await {
                Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
                // The namespace began terminating meanwhile.
                Err(ApiError::Forbidden(_)) => return Ok(Action::await_change()),
                Err(e) => return Err(e),
            }
        }
        let Some(ca) = &self.ca_pem else {
            return Ok(Action::await_change());
        };
        let data = [("ca.crt".to_string(), ca.clone())].into();
        match self.configmaps.get(&ObjectRef::new(Some(name), ROOT_CA)) {
            None => {
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(ROOT_CA.into()),
                        namespace: Some(name.into()),
                        annotations: Some([(DESCRIPTION.to_string(), CA_NOTE.to_string())].into()),
                        ..Default::default()
                    },
                    data: Some(data),
                    ..Default::default()
                };
                match self.client.create(Some(name), &cm).await {
                    Ok(_) | Err(ApiError::AlreadyExists { .. }) | Err(ApiError::Forbidden(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            Some(cm) if cm.data.as_ref() != Some(&data) => {
                self.client
                    .modify::<ConfigMap>(Some(name), ROOT_CA, Part::Main, |cm| {
                        if cm.data.as_ref() == Some(&data) {
                            return false;
                        }
                        cm.data = Some(data.clone());
                        true
                    })
                    .await?;
            }
            Some(_) => {}
        }
        Ok(Action::await_change())
    }
}
