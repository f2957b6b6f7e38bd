//! Admission: an ordered list of plugins every write passes after validation and before it is
//! persisted (dry-run writes too). Plugins see the parsed request and may mutate the object or
//! refuse it with an error that names why.

use futures::future::BoxFuture;
use serde_json::Value;

use crate::error::ApiError;

pub mod limitrange;
pub mod podsecurity;
use crate::registry::Registry;
use crate::resource::ResourceDef;

/// The operation being admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
}

/// What a plugin is told about a write.
pub struct Attributes<'a> {
    pub operation: Operation,
    pub def: &'a ResourceDef,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    pub subresource: Option<&'a str>,
    /// The stored object, for updates and deletes.
    pub old: Option<&'a Value>,
    pub dry_run: bool,
    /// Who asks; None for the server's own writes.
    pub user: Option<&'a crate::UserInfo>,
    /// Warnings for the response.
    pub warnings: &'a crate::registry::Warnings,
}

/// One admission plugin.
pub trait AdmissionPlugin: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Admits (and may mutate) `obj`, or refuses the write.
    fn admit<'a>(
        &'a self,
        reg: &'a Registry,
        attrs: &'a Attributes<'a>,
        obj: &'a mut Value,
    ) -> BoxFuture<'a, Result<(), ApiError>>;
}

/// The plugins, in order.
#[derive(Default)]
pub struct Chain {
    plugins: Vec<Box<dyn AdmissionPlugin>>,
}

impl Chain {
    pub fn new(plugins: Vec<Box<dyn AdmissionPlugin>>) -> Self {
        Self { plugins }
    }

    /// Adds a plugin (the API server's own, which need its state) after the others but
    /// before the last, which hands out values (Service addresses) and so must come last.
    pub fn with(mut self, plugin: impl AdmissionPlugin) -> Self {
        let at = self.plugins.len().saturating_sub(1);
        self.plugins.insert(at, Box::new(plugin));
        self
    }

    /// Adds a plugin just before the one named `before` (at the end when there is none).
    pub fn with_before(mut self, before: &str, plugin: impl AdmissionPlugin) -> Self {
        let at = self
            .plugins
            .iter()
            .position(|p| p.name() == before)
            .unwrap_or(self.plugins.len());
        self.plugins.insert(at, Box::new(plugin));
        self
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.plugins.iter().map(|p| p.name()).collect()
    }

    pub async fn admit(
        &self,
        reg: &Registry,
        attrs: &Attributes<'_>,
        obj: &mut Value,
    ) -> Result<(), ApiError> {
        for p in &self.plugins {
            p.admit(reg, attrs, obj).await?;
        }
        Ok(())
    }
}

/// Namespaces every cluster keeps: they may not be deleted.
pub const IMMORTAL_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

/// Upstream's NamespaceLifecycle: nothing is created in a namespace that does not exist or is
/// terminating, and the system namespaces cannot be deleted.
pub struct NamespaceLifecycle;

impl AdmissionPlugin for NamespaceLifecycle {
    fn name(&self) -> &'static str {
        "NamespaceLifecycle"
    }

    fn admit<'a>(
        &'a self,
        reg: &'a Registry,
        attrs: &'a Attributes<'a>,
        _obj: &'a mut Value,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            if attrs.def.group.is_empty()
                && attrs.def.plural == "namespaces"
                && attrs.operation == Operation::Delete
                && attrs.subresource.is_none()
            {
                if IMMORTAL_NAMESPACES.contains(&attrs.name) {
                    return Err(ApiError::Forbidden(format!(
                        "namespaces \"{}\" is forbidden: this namespace may not be deleted",
                        attrs.name
                    )));
                }
                return Ok(());
            }
            let (Some(ns), Operation::Create) = (attrs.namespace, attrs.operation) else {
                return Ok(());
            };
            if !attrs.def.namespaced {
                return Ok(());
            }
            let table = reg.table().snapshot();
            let Some(nsdef) = table.lookup("", "v1", "namespaces") else {
                return Ok(());
            };
            let nsobj = match reg.get(nsdef, None, ns).await {
                Ok(o) => o,
                Err(ApiError::NotFound { .. }) => {
                    return Err(ApiError::NotFound {
                        resource: nsdef.group_resource(),
                        name: ns.into(),
                    });
                }
                Err(e) => return Err(e),
            };
            if !nsobj["metadata"]["deletionTimestamp"].is_null() {
                return Err(ApiError::Forbidden(format!(
                    "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                    attrs.def.group_resource(),
                    attrs.name
                )));
            }
            Ok(())
        })
    }
}

/// The taint a node gets when it reports NotReady.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// The taint a node gets when its heartbeats stop.
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// How long pods tolerate a lost node by default. Upstream's 300 s would leave a lost node's
/// pods unreplaced for over five minutes; 20 s after the 40 s grace period replaces them
/// within a minute.
pub const DEFAULT_TOLERATION_SECONDS: i64 = 20;

/// Upstream's DefaultTolerationSeconds: a new pod that tolerates neither the not-ready nor the
/// unreachable NoExecute taint gets a toleration for it lasting `seconds`, so the taint
/// eviction controller deletes it that long after its node is lost.
pub struct DefaultTolerationSeconds {
    pub seconds: i64,
}

impl AdmissionPlugin for DefaultTolerationSeconds {
    fn name(&self) -> &'static str {
        "DefaultTolerationSeconds"
    }

    fn admit<'a>(
        &'a self,
        _reg: &'a Registry,
        attrs: &'a Attributes<'a>,
        obj: &'a mut Value,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            if attrs.operation != Operation::Create
                || attrs.subresource.is_some()
                || !attrs.def.group.is_empty()
                || attrs.def.plural != "pods"
                || !obj["spec"].is_object()
            {
                return Ok(());
            }
            if !obj["spec"]["tolerations"].is_array() {
                obj["spec"]["tolerations"] = Value::Array(Vec::new());
            }
            let Some(list) = obj["spec"]["tolerations"].as_array_mut() else {
                return Ok(());
            };
            for key in [TAINT_NOT_READY, TAINT_UNREACHABLE] {
                let tolerated = list.iter().any(|t| {
                    let k = t["key"].as_str().unwrap_or_default();
                    let key_ok = k == key || (k.is_empty() && t["operator"] == "Exists");
                    let effect = t["effect"].as_str().unwrap_or_default();
                    key_ok && (effect.is_empty() || effect == "NoExecute")
                });
                if !tolerated {
                    list.push(serde_json::json!({
                        "key": key,
                        "operator": "Exists",
                        "effect": "NoExecute",
                        "tolerationSeconds": self.seconds,
                    }));
                }
            }
            Ok(())
        })
    }
}

/// Where a pod's service-account token, CA bundle and namespace are mounted.
pub const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The lifetime the projected token is asked for (upstream's; the API server extends it).
pub const PROJECTED_TOKEN_SECONDS: i64 = 3607;

/// Upstream's ServiceAccount plugin: a new pod runs as `default` unless it names an account,
/// and (unless the pod or its account opts out with `automountServiceAccountToken: false`)
/// gets the `kube-api-access-*` projected volume (a token bound to the pod, the cluster CA
/// from `kube-root-ca.crt`, the namespace) mounted read-only in every container at
/// [`SERVICE_ACCOUNT_MOUNT`], which is where in-cluster clients look.
pub struct ServiceAccount;

impl AdmissionPlugin for ServiceAccount {
    fn name(&self) -> &'static str {
        "ServiceAccount"
    }

    fn admit<'a>(
        &'a self,
        reg: &'a Registry,
        attrs: &'a Attributes<'a>,
        obj: &'a mut Value,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            if attrs.operation != Operation::Create
                || attrs.subresource.is_some()
                || !is_core(attrs, "pods")
                || !obj["spec"].is_object()
                || !obj["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_null()
            {
                return Ok(());
            }
            let spec = &mut obj["spec"];
            let account = match spec["serviceAccountName"]
                .as_str()
                .filter(|s| !s.is_empty())
            {
                Some(a) => a.to_string(),
                None => spec["serviceAccount"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .unwrap_or("default")
                    .to_string(),
            };
            spec["serviceAccountName"] = account.clone().into();
            let mount = match spec["automountServiceAccountToken"].as_bool() {
                Some(m) => m,
                None => {
                    // The account may opt its pods out (a missing account does not: its
                    // token is asked for when the pod starts, by which time it exists).
                    let def = reg
                        .table()
                        .snapshot()
                        .lookup("", "v1", "serviceaccounts")
                        .cloned();
                    match def {
                        Some(def) => match reg.get(&def, attrs.namespace, &account).await {
                            Ok(sa) => sa["automountServiceAccountToken"].as_bool() != Some(false),
                            Err(ApiError::NotFound { .. }) => true,
                            Err(e) => return Err(e),
                        },
                        None => true,
                    }
                }
            };
            if !mount {
                return Ok(());
            }
            let volumes = spec["volumes"].as_array().cloned().unwrap_or_default();
            let existing = volumes.iter().find_map(|v| {
                v["name"]
                    .as_str()
                    .filter(|n| n.starts_with("kube-api-access-"))
                    .map(String::from)
            });
            let volume = match existing {
                Some(v) => v,
                None => {
                    let suffix: String = uuid::Uuid::new_v4().simple().to_string()[..5].into();
                    let name = format!("kube-api-access-{suffix}");
                    let v = serde_json::json!({"name": name, "projected": {"defaultMode": 420, "sources": [
                        {"serviceAccountToken": {"expirationSeconds": PROJECTED_TOKEN_SECONDS, "path": "token"}},
                        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                        {"downwardAPI": {"items": [{"path": "namespace",
                            "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}});
                    if !spec["volumes"].is_array() {
                        spec["volumes"] = Value::Array(Vec::new());
                    }
                    if let Some(vs) = spec["volumes"].as_array_mut() {
                        vs.push(v);
                    }
                    name
                }
            };
            for list in ["initContainers", "containers"] {
                for c in spec[list].as_array_mut().into_iter().flatten() {
                    let mounted = c["volumeMounts"].as_array().is_some_and(|ms| {
                        ms.iter().any(|m| m["mountPath"] == SERVICE_ACCOUNT_MOUNT)
                    });
                    if mounted {
                        continue;
                    }
                    if !c["volumeMounts"].is_array() {
                        c["volumeMounts"] = Value::Array(Vec::new());
                    }
                    if let Some(ms) = c["volumeMounts"].as_array_mut() {
                        ms.push(serde_json::json!({"name": volume, "readOnly": true,
                            "mountPath": SERVICE_ACCOUNT_MOUNT}));
                    }
                }
            }
            Ok(())
        })
    }
}

/// Upstream's Priority plugin: a new pod's `priorityClassName` (or the cluster's globalDefault
/// class when it names none) sets its `priority` and `preemptionPolicy`; a class that does not
/// exist refuses the pod.
pub struct Priority;

impl AdmissionPlugin for Priority {
    fn name(&self) -> &'static str {
        "Priority"
    }

    fn admit<'a>(
        &'a self,
        reg: &'a Registry,
        attrs: &'a Attributes<'a>,
        obj: &'a mut Value,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            if attrs.operation != Operation::Create
                || attrs.subresource.is_some()
                || !attrs.def.group.is_empty()
                || attrs.def.plural != "pods"
                || !obj["spec"].is_object()
            {
                return Ok(());
            }
            let table = reg.table().snapshot();
            let Some(def) = table.lookup("scheduling.k8s.io", "v1", "priorityclasses") else {
                return Ok(());
            };
            let named = obj["spec"]["priorityClassName"]
                .as_str()
                .filter(|n| !n.is_empty())
                .map(str::to_string);
            let class = match &named {
                Some(name) => match reg.get(def, None, name).await {
                    Ok(c) => Some(c),
                    Err(ApiError::NotFound { .. }) => {
                        return Err(ApiError::Forbidden(format!(
                            "pods \"{}\" is forbidden: no PriorityClass with name {name} was found",
                            attrs.name
                        )));
                    }
                    Err(e) => return Err(e),
                },
                None => {
                    let all = reg
                        .list(def, None, &crate::registry::ListOptions::default())
                        .await?;
                    all.items
                        .into_iter()
                        .filter(|c| c["globalDefault"] == true)
                        .min_by_key(|c| c["value"].as_i64().unwrap_or(0))
                }
            };
            let Some(class) = class else {
                obj["spec"]["priority"] = 0.into();
                return Ok(());
            };
            if named.is_none() {
                obj["spec"]["priorityClassName"] = class["metadata"]["name"].clone();
            }
            obj["spec"]["priority"] = class["value"].as_i64().unwrap_or(0).into();
            if let Some(p) = class["preemptionPolicy"].as_str() {
                obj["spec"]["preemptionPolicy"] = p.into();
            }
            Ok(())
        })
    }
}

/// The annotation that marks a cluster's default StorageClass.
pub const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";

/// Upstream's DefaultStorageClass: a new claim that names no class gets the default one (the
/// newest, when several are marked); with no default it stays classless, and the volume
/// binder gives it a default that appears later.
pub struct DefaultStorageClass;

/// The cluster's default StorageClass (the newest of those marked), if any.
pub async fn default_storage_class(reg: &Registry) -> Result<Option<String>, ApiError> {
    let table = reg.table().snapshot();
    let Some(def) = table.lookup("storage.k8s.io", "v1", "storageclasses") else {
        return Ok(None);
    };
    let all = reg
        .list(def, None, &crate::registry::ListOptions::default())
        .await?;
    Ok(all
        .items
        .into_iter()
        .filter(|c| c["metadata"]["annotations"][DEFAULT_CLASS] == "true")
        .max_by(|a, b| {
            let created = |c: &Value| {
                c["metadata"]["creationTimestamp"]
                    .as_str()
                    .map(str::to_string)
            };
            created(a).cmp(&created(b)).then_with(|| {
                b["metadata"]["name"]
                    .as_str()
                    .cmp(&a["metadata"]["name"].as_str())
            })
        })
        .and_then(|c| c["metadata"]["name"].as_str().map(str::to_string)))
}

fn is_core(attrs: &Attributes<'_>, plural: &str) -> bool {
    attrs.def.group.is_empty() && attrs.def.plural == plural && attrs.subresource.is_none()
}

impl AdmissionPlugin for DefaultStorageClass {
    fn name(&self) -> &'static str {
        "DefaultStorageClass"
    }

    fn admit<'a>(
        &'a self,
        reg: &'a Registry,
        attrs: &'a Attributes<'a>,
        obj: &'a mut Value,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            if attrs.operation != Operation::Create
                || !is_core(attrs, "persistentvolumeclaims")
                || !obj["spec"].is_object()
                || !obj["spec"]["storageClassName"].is_null()
            {
                return Ok(());
            }
            if let Some(class) = default_storage_class(reg).await? {
                obj["spec"]["storageClassName"] = class.into();
            }
            Ok(())
        })
    }
}

/// The finalizer that keeps a claim while a pod uses it.
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
/// The finalizer that keeps a volume while a claim is bound to it.
pub const PV_PROTECTION: &str = "kubernetes.io/pv-protection";

/// Upstream's StorageObjectInUseProtection: new claims and volumes carry the protection
/// finalizer, which the volume protection controller lifts once nothing uses them.
pub struct StorageObjectInUseProtection;

impl AdmissionPlugin for StorageObjectInUseProtection {
    fn name(&self) -> &'static str {
        "StorageObjectInUseProtection"
    }

    fn admit<'a>(
        &'a self,
        _reg: &'a Registry,
        attrs: &'a Attributes<'a>,
        obj: &'a mut Value,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            if attrs.operation != Operation::Create {
                return Ok(());
            }
            let finalizer = if is_core(attrs, "persistentvolumeclaims") {
                PVC_PROTECTION
            } else if is_core(attrs, "persistentvolumes") {
                PV_PROTECTION
            } else {
                return Ok(());
            };
            let meta = &mut obj["metadata"];
            if !meta["finalizers"].is_array() {
                meta["finalizers"] = Value::Array(Vec::new());
            }
            if let Some(list) = meta["finalizers"].as_array_mut()
                && !list.iter().any(|f| f == finalizer)
            {
                list.push(finalizer.into());
            }
            Ok(())
        })
    }
}

/// The plugins a Strake API server runs, in upstream's order; `toleration_seconds` is what
/// DefaultTolerationSeconds gives pods.
pub fn standard(toleration_seconds: i64) -> Chain {
    with_services(
        toleration_seconds,
        crate::servicealloc::ServiceAllocation::new(
            DEFAULT_SERVICE_CIDR,
            crate::servicealloc::NODE_PORTS,
        ),
    )
}

/// Upstream's default service range.
pub const DEFAULT_SERVICE_CIDR: ipnet::Ipv4Net =
    ipnet::Ipv4Net::new_assert(std::net::Ipv4Addr::new(10, 96, 0, 0), 12);

/// The standard chain with the given Service allocator.
pub fn with_services(
    toleration_seconds: i64,
    services: crate::servicealloc::ServiceAllocation,
) -> Chain {
    Chain::new(vec![
        Box::new(NamespaceLifecycle),
        Box::new(limitrange::LimitRanger),
        Box::new(ServiceAccount),
        Box::new(DefaultStorageClass),
        Box::new(DefaultTolerationSeconds {
            seconds: toleration_seconds,
        }),
        Box::new(StorageObjectInUseProtection),
        Box::new(podsecurity::PodSecurity::default()),
        Box::new(Priority),
        // Last: nothing after it refuses the write once values are handed out.
        Box::new(services),
    ])
}
