//! The generic registry: every kind's objects as JSON in an [`ObjectStore`], with the rules all
//! kinds share — names, uid and timestamps, resourceVersion as the store revision (409 on a
//! stale write), generation, status/main separation, graceful deletion, finalizers, propagation
//! policy, dryRun — and the kind's [`Strategy`] and the admission [`Chain`] at the right points.
//! No HTTP in here.

use std::sync::Arc;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use crate::admission::{Attributes, Chain, Operation};
use crate::error::{ApiError, FieldError};
use crate::resource::{NameRule, Part, ResourceDef, ResourceTable};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::storage::{ObjectStore, StorageError, Stored};
use crate::validation::validate_meta;

/// Filters for list and watch.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn matches(&self, obj: &Value) -> bool {
        if !self.labels.is_empty() {
            let labels: Option<std::collections::BTreeMap<String, String>> =
                obj["metadata"]["labels"].as_object().map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                });
            if !self.labels.matches(labels.as_ref()) {
                return false;
            }
        }
        self.fields.is_empty() || self.fields.matches(|f| field_value(obj, f))
    }
}

/// The value of a dotted field path as a field selector compares it ("" when absent).
pub fn field_value(obj: &Value, path: &str) -> Option<String> {
    let mut cur = obj;
    for part in path.split('.') {
        cur = cur.get(part)?;
    }
    Some(match cur {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    })
}

/// Options every write takes.
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    /// `dryRun=All`: run every step, persist nothing.
    pub dry_run: bool,
    /// The manager the write's changed fields are recorded for in managedFields (an `Update`
    /// entry). None leaves managedFields as the caller set them: server-side apply computes
    /// its own, and the server's internal writes are not tracked.
    pub field_manager: Option<String>,
    /// Who asks, for the admission plugins that care (escalation, node restriction). None is
    /// the server's own write, which is trusted.
    pub user: Option<crate::UserInfo>,
    /// Where admission leaves warnings for the response (`Warning` headers); clones share it.
    pub warnings: Warnings,
    /// The subresource admission is told of when it is not the part's (`approval`, written
    /// as the status part).
    pub subresource: Option<&'static str>,
}

/// Warnings for a write's response, added by admission (a pod that a namespace's Pod Security
/// warn level would refuse). Clones share one list.
#[derive(Clone, Debug, Default)]
pub struct Warnings(Arc<std::sync::Mutex<Vec<String>>>);

impl Warnings {
    pub fn push(&self, warning: String) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(warning);
    }

    /// The warnings so far, leaving none.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// How dependents are treated when their owner is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    Orphan,
    Background,
    Foreground,
}

impl Propagation {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        match s {
            "Orphan" => Ok(Self::Orphan),
            "Background" => Ok(Self::Background),
            "Foreground" => Ok(Self::Foreground),
            other => Err(ApiError::BadRequest(format!(
                "propagationPolicy must be one of Orphan, Background or Foreground, not {other:?}"
            ))),
        }
    }
}

/// Options of a delete.
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    pub grace_period: Option<i64>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub propagation: Option<Propagation>,
    pub dry_run: bool,
}

/// The finalizer that keeps an owner until its dependents are orphaned.
pub const ORPHAN_FINALIZER: &str = "orphan";
/// The finalizer that keeps an owner until its blocking dependents are deleted.
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";

/// What a delete did.
#[derive(Debug)]
pub enum Deleted {
    /// The object is gone; this was its last state.
    Gone(Value),
    /// The object is terminating (deletionTimestamp set): grace period or finalizers.
    Terminating(Value),
}

/// Options of a list.
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    pub filter: Filter,
    /// 0: no limit.
    pub limit: usize,
    pub continue_token: Option<String>,
    /// 0: the latest state.
    pub revision: u64,
}

/// A page of a list.
#[derive(Debug)]
pub struct ListResult {
    pub items: Vec<Value>,
    pub revision: u64,
    pub continue_token: Option<String>,
}

/// Generic object storage for every served kind.
#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn ObjectStore>,
    table: ResourceTable,
    admission: Arc<Chain>,
    watch_cache: crate::watch::WatchCache,
}

pub fn parse_rv(rv: &str) -> Result<u64, ApiError> {
    rv.parse::<u64>().map_err(|_| {
        ApiError::BadRequest(format!(
            "invalid resource version {rv:?}: must be a decimal number"
        ))
    })
}

fn decode(def: &ResourceDef, s: &Stored) -> Result<Value, ApiError> {
    let mut v: Value = serde_json::from_slice(&s.value).map_err(|e| {
        ApiError::Internal(format!(
            "stored object {} is unreadable: {e}",
            String::from_utf8_lossy(&s.key)
        ))
    })?;
    set_rv(&mut v, s.revision);
    Ok(def.served(v))
}

fn set_rv(v: &mut Value, rev: u64) {
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), rev.to_string().into());
    }
}

fn encode(def: &ResourceDef, obj: &Value) -> Result<Vec<u8>, ApiError> {
    let mut obj = def.stored(obj.clone());
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    serde_json::to_vec(&obj).map_err(|e| ApiError::Internal(e.to_string()))
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj["metadata"][field].as_str()
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj["metadata"]["finalizers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn now() -> String {
    Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn random_suffix() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::thread_rng();
    (0..5)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Checks what every object's metadata must satisfy, and the kind's own rules.
/// What is wrong with an object (or its status) as its kind validates it.
pub fn validate(
    def: &ResourceDef,
    obj: &Value,
    old: Option<&Value>,
    part: Part,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    match serde_json::from_value::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>(
        obj["metadata"].clone(),
    ) {
        Ok(meta) => validate_meta(&meta, def.namespaced, def.name_rule, &mut errs),
        Err(e) => errs.push(FieldError::invalid(
            "metadata",
            format!("Invalid value: {e}"),
        )),
    }
    errs.extend(match old {
        Some(old) if part != Part::Binding => def.strategy.validate_update(obj, old),
        _ => def.strategy.validate(obj),
    });
    errs
}

fn spec_like(obj: &Value) -> Value {
    // Everything but metadata and status: what generation tracks.
    match obj {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

impl Registry {
    pub fn new(store: Arc<dyn ObjectStore>, table: ResourceTable, admission: Chain) -> Self {
        Self {
            store,
            table,
            admission: Arc::new(admission),
            watch_cache: Default::default(),
        }
    }

    pub fn table(&self) -> &ResourceTable {
        &self.table
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The watch cache every watch of this registry shares.
    pub fn watch_cache(&self) -> &crate::watch::WatchCache {
        &self.watch_cache
    }

    pub fn admission(&self) -> &Chain {
        &self.admission
    }

    fn storage_err(def: &ResourceDef, name: &str, e: StorageError) -> ApiError {
        match e {
            StorageError::NotFound => def.not_found(name),
            StorageError::AlreadyExists => ApiError::AlreadyExists {
                resource: def.group_resource(),
                name: name.into(),
            },
            StorageError::Conflict { .. } => def.conflict(name),
            other => other.into(),
        }
    }

    async fn current(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Stored, ApiError> {
        self.store
            .get(&def.key(ns, name))
            .await
            .map_err(|e| Self::storage_err(def, name, e))?
            .ok_or_else(|| def.not_found(name))
    }

    pub async fn get(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        decode(def, &self.current(def, ns, name).await?)
    }

    /// Lists objects: a page after the continue token (which pins the revision of the first page).
    pub async fn list(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> Result<ListResult, ApiError> {
        let prefix = def.key_prefix(ns).into_bytes();
        let (mut start_after, mut revision) = match &opts.continue_token {
            Some(t) => {
                let (key, rev) = decode_continue(t)?;
                if !key.starts_with(&prefix) {
                    return Err(ApiError::BadRequest(
                        "the continue token is not for this list".into(),
                    ));
                }
                (Some(key), rev)
            }
            None => (None, opts.revision),
        };
        let mut items = Vec::new();
        loop {
            let want = if opts.limit == 0 {
                0
            } else {
                (opts.limit - items.len()).max(1) * 2
            };
            let page = self.store.list(&prefix, start_after.as_deref(), want, revision).await.map_err(|e| match e {
                StorageError::Compacted { .. } if opts.continue_token.is_some() => ApiError::Expired(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.".into(),
                ),
                other => other.into(),
            })?;
            revision = page.revision;
            let last = page.items.last().map(|s| s.key.clone());
            for s in &page.items {
                start_after = Some(s.key.clone());
                let obj = decode(def, s)?;
                if opts.filter.matches(&obj) {
                    items.push(obj);
                    if opts.limit != 0 && items.len() == opts.limit {
                        let more = page.more || last.as_ref() != Some(&s.key);
                        let token = more.then(|| encode_continue(revision, &s.key));
                        return Ok(ListResult {
                            items,
                            revision,
                            continue_token: token,
                        });
                    }
                }
            }
            if !page.more {
                return Ok(ListResult {
                    items,
                    revision,
                    continue_token: None,
                });
            }
        }
    }

    /// Creates an object: metadata bookkeeping, defaults, validation, admission, then (unless
    /// dry-run) an exclusive write.
    pub async fn create(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        mut obj: Value,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::BadRequest(format!(
                "the body of a {} create must be an object",
                def.kind
            )));
        }
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        {
            let m = obj["metadata"]
                .as_object_mut()
                .expect("metadata is an object");
            let name_empty = m
                .get("name")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty);
            if name_empty
                && let Some(base) = m
                    .get("generateName")
                    .and_then(Value::as_str)
                    .filter(|g| !g.is_empty())
            {
                let name = format!("{base}{}", random_suffix());
                m.insert("name".into(), name.into());
            }
            if def.namespaced {
                match (m.get("namespace").and_then(Value::as_str), ns) {
                    (Some(body), Some(url)) if !body.is_empty() && body != url => {
                        return Err(ApiError::BadRequest(format!(
                            "the namespace of the provided object ({body}) does not match the namespace sent on the request ({url})"
                        )));
                    }
                    _ => {}
                }
                match ns {
                    Some(url) => m.insert("namespace".into(), url.into()),
                    None => {
                        return Err(ApiError::BadRequest(format!(
                            "{} is namespaced: create it under /namespaces/{{namespace}}/",
                            def.plural
                        )));
                    }
                };
            } else {
                m.remove("namespace");
            }
            m.insert("uid".into(), uuid::Uuid::new_v4().to_string().into());
            m.insert("creationTimestamp".into(), now().into());
            for f in [
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "selfLink",
            ] {
                m.remove(f);
            }
            if def.generation {
                m.insert("generation".into(), 1.into());
            } else {
                m.remove("generation");
            }
        }
        def.strategy.prepare_create(&mut obj);
        if let Some(manager) = &opts.field_manager {
            crate::managed::track(
                &def.kind,
                &def.api_version(),
                def.has_subresource("status"),
                None,
                &mut obj,
                manager,
                Part::Main,
            );
        }
        let name = meta_str(&obj, "name").unwrap_or_default().to_string();
        let causes = validate(def, &obj, None, Part::Main);
        if !causes.is_empty() {
            return Err(def.invalid(&name, causes));
        }
        let attrs = Attributes {
            operation: Operation::Create,
            def,
            namespace: ns,
            name: &name,
            subresource: None,
            old: None,
            dry_run: opts.dry_run,
            user: opts.user.as_ref(),
            warnings: &opts.warnings,
        };
        let unadmitted = obj;
        let mut attempt = 0;
        loop {
            let mut obj = unadmitted.clone();
            self.admission.admit(self, &attrs, &mut obj).await?;
            if opts.dry_run {
                if self.store.get(&def.key(ns, &name)).await?.is_some() {
                    return Err(ApiError::AlreadyExists {
                        resource: def.group_resource(),
                        name,
                    });
                }
                self.quota_charges(def, ns, &name, &obj, None).await?;
                crate::servicealloc::claims(self, def, &obj, None).await?;
                return Ok(obj);
            }
            let bytes = encode(def, &obj)?;
            match self
                .charged_write(def, ns, &name, &obj, None, bytes, None)
                .await
            {
                // Another API server's write claimed a value admission picked for this one:
                // admission picks again (or refuses the value, if the user chose it).
                Err(ApiError::Invalid { .. })
                    if attempt < 8 && crate::servicealloc::is_services(def) =>
                {
                    attempt += 1;
                }
                written => {
                    set_rv(&mut obj, written?.revision);
                    obj["apiVersion"] = def.api_version().into();
                    obj["kind"] = def.kind.clone().into();
                    return Ok(obj);
                }
            }
        }
    }

    /// Replaces an object (or its status). A body resourceVersion must match the stored one.
    pub async fn update(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        obj: Value,
        part: Part,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let body_rv = meta_str(&obj, "resourceVersion")
            .filter(|rv| !rv.is_empty())
            .map(parse_rv)
            .transpose()?;
        let current = self.current(def, ns, name).await?;
        if body_rv.is_some_and(|rv| rv != current.revision) {
            return Err(def.conflict(name));
        }
        self.write_update(def, ns, name, &current, obj, part, opts)
            .await
    }

    /// Read-modify-write: `f` turns the current object into the new one, retried when another
    /// writer wins the race. The new object keeps the resourceVersion `f` was given (the
    /// current one) or sets another, which is a precondition: a stale one is a 409, and a retry
    /// re-runs `f`, so a precondition that no longer holds is a 409 too.
    pub async fn update_with(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        part: Part,
        opts: &WriteOptions,
        mut f: impl FnMut(Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        for _ in 0..16 {
            let current = self.current(def, ns, name).await?;
            let cur_obj = decode(def, &current)?;
            let new = f(cur_obj)?;
            let pinned = meta_str(&new, "resourceVersion")
                .filter(|rv| !rv.is_empty())
                .map(parse_rv)
                .transpose()?;
            if pinned.is_some_and(|rv| rv != current.revision) {
                return Err(def.conflict(name));
            }
            match self
                .write_update(def, ns, name, &current, new, part, opts)
                .await
            {
                Err(ApiError::Conflict { .. }) => continue,
                other => return other,
            }
        }
        Err(ApiError::Conflict {
            resource: def.group_resource(),
            name: name.into(),
            message: "too many concurrent writers, try again".into(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn write_update(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        current: &Stored,
        mut obj: Value,
        part: Part,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::BadRequest(format!(
                "the body of a {} update must be an object",
                def.kind
            )));
        }
        if meta_str(&obj, "name") != Some(name) {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                meta_str(&obj, "name").unwrap_or("")
            )));
        }
        if def.namespaced
            && let (Some(body), Some(url)) = (meta_str(&obj, "namespace"), ns)
            && !body.is_empty()
            && body != url
        {
            return Err(ApiError::BadRequest(format!(
                "the namespace of the provided object ({body}) does not match the namespace sent on the request ({url})"
            )));
        }
        let old = decode(def, current)?;
        let has_status = def.has_subresource("status");
        {
            let om = old["metadata"].as_object().cloned().unwrap_or_default();
            if !obj["metadata"].is_object() {
                obj["metadata"] = json!({});
            }
            let m = obj["metadata"]
                .as_object_mut()
                .expect("metadata is an object");
            let mut keep: Vec<&str> = vec![
                "uid",
                "creationTimestamp",
                "namespace",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ];
            if part == Part::Status {
                keep.extend(["labels", "annotations", "finalizers", "ownerReferences"]);
            }
            for f in keep {
                match om.get(f) {
                    Some(v) => m.insert(f.into(), v.clone()),
                    None => m.remove(f),
                };
            }
            m.remove("selfLink");
        }
        match part {
            // A binding sets spec.nodeName and the PodScheduled condition in one write.
            Part::Main if has_status => match old.get("status") {
                Some(s) => obj["status"] = s.clone(),
                None => {
                    obj.as_object_mut().map(|m| m.remove("status"));
                }
            },
            Part::Main | Part::Binding => {}
            Part::Status => {
                let status = obj.get("status").cloned();
                let meta = obj["metadata"].clone();
                obj = old.clone();
                obj["metadata"] = meta;
                match status {
                    Some(s) => obj["status"] = s,
                    None => {
                        obj.as_object_mut().map(|m| m.remove("status"));
                    }
                }
            }
        }
        def.strategy.prepare_update(&mut obj, &old);
        if let Some(manager) = &opts.field_manager {
            let part = if part == Part::Status {
                Part::Status
            } else {
                Part::Main
            };
            crate::managed::track(
                &def.kind,
                &def.api_version(),
                def.has_subresource("status"),
                Some(&old),
                &mut obj,
                manager,
                part,
            );
        }
        if part != Part::Status && def.generation && spec_like(&obj) != spec_like(&old) {
            obj["metadata"]["generation"] =
                (old["metadata"]["generation"].as_i64().unwrap_or(1) + 1).into();
        }
        let causes = validate(def, &obj, Some(&old), part);
        if !causes.is_empty() {
            return Err(def.invalid(name, causes));
        }
        let attrs = Attributes {
            operation: Operation::Update,
            def,
            namespace: ns,
            name,
            subresource: opts
                .subresource
                .or((part == Part::Status).then_some("status")),
            old: Some(&old),
            dry_run: opts.dry_run,
            user: opts.user.as_ref(),
            warnings: &opts.warnings,
        };
        self.admission.admit(self, &attrs, &mut obj).await?;
        // A terminating object whose last finalizer is gone and whose grace is over is removed.
        let finished = !obj["metadata"]["deletionTimestamp"].is_null()
            && finalizers(&obj).is_empty()
            && !def.strategy.holds_deletion(&obj)
            && obj["metadata"]["deletionGracePeriodSeconds"]
                .as_i64()
                .unwrap_or(0)
                == 0;
        let bytes = encode(def, &obj)?;
        set_rv(&mut obj, current.revision);
        obj["apiVersion"] = def.api_version().into();
        obj["kind"] = def.kind.clone().into();
        // A write that changes nothing is not written (as upstream: no new resourceVersion).
        if !finished && encode(def, &old)? == bytes {
            return Ok(old);
        }
        if opts.dry_run {
            if !finished {
                self.quota_charges(def, ns, name, &obj, Some(&old)).await?;
            }
            return Ok(obj);
        }
        let key = def.key(ns, name);
        if finished {
            let rev = self
                .store
                .delete(key, Some(current.revision))
                .await
                .map_err(|e| Self::storage_err(def, name, e))?;
            crate::servicealloc::release(self.store.as_ref(), def, &old, None).await;
            set_rv(&mut obj, rev);
            return Ok(obj);
        }
        let stored = self
            .charged_write(
                def,
                ns,
                name,
                &obj,
                Some(&old),
                bytes,
                Some(current.revision),
            )
            .await?;
        crate::servicealloc::release(self.store.as_ref(), def, &old, Some(&obj)).await;
        set_rv(&mut obj, stored.revision);
        Ok(obj)
    }

    /// Creates (`expected` None) or updates an object together with the quota charges it
    /// makes and the values it claims (a Service's cluster IPs and node ports), in one
    /// transaction; when a quota or a claim moved under it (another write charged or took
    /// it), they are worked out again from the store as it is now.
    #[allow(clippy::too_many_arguments)]
    async fn charged_write(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        obj: &Value,
        old: Option<&Value>,
        bytes: Vec<u8>,
        expected: Option<u64>,
    ) -> Result<Stored, ApiError> {
        let key = def.key(ns, name);
        for _ in 0..32 {
            let mut guards = self.quota_charges(def, ns, name, obj, old).await?;
            guards.extend(crate::servicealloc::claims(self, def, obj, old).await?);
            let written = match (guards.is_empty(), expected) {
                (true, None) => self.store.create(key.clone(), bytes.clone()).await,
                (true, Some(rev)) => self.store.update(key.clone(), bytes.clone(), rev).await,
                (false, _) => {
                    self.store
                        .write_with(key.clone(), bytes.clone(), expected, guards)
                        .await
                }
            };
            match written {
                // A quota charged or a value claimed under this write: work it out again.
                Err(StorageError::GuardFailed { .. }) => continue,
                other => return other.map_err(|e| Self::storage_err(def, name, e)),
            }
        }
        Err(ApiError::Conflict {
            resource: def.group_resource(),
            name: name.into(),
            message: "the namespace's resource quotas kept changing under this write; try again"
                .into(),
        })
    }

    /// Deletes an object: at once, or by marking it terminating (grace period, finalizers).
    pub async fn delete(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Deleted, ApiError> {
        for _ in 0..16 {
            let current = self.current(def, ns, name).await?;
            let mut obj = decode(def, &current)?;
            if let Some(uid) = &opts.precondition_uid
                && meta_str(&obj, "uid") != Some(uid.as_str())
            {
                return Err(ApiError::Conflict {
                    resource: def.group_resource(),
                    name: name.into(),
                    message: format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta_str(&obj, "uid").unwrap_or("")
                    ),
                });
            }
            if let Some(rv) = &opts.precondition_rv
                && parse_rv(rv)? != current.revision
            {
                return Err(ApiError::Conflict {
                    resource: def.group_resource(),
                    name: name.into(),
                    message: format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                        current.revision
                    ),
                });
            }
            let attrs = Attributes {
                operation: Operation::Delete,
                def,
                namespace: ns,
                name,
                subresource: None,
                old: Some(&obj.clone()),
                dry_run: opts.dry_run,
                user: None,
                warnings: &Warnings::default(),
            };
            let mut scratch = obj.clone();
            self.admission.admit(self, &attrs, &mut scratch).await?;
            let mut fins = finalizers(&obj);
            let before = fins.clone();
            match opts.propagation {
                Some(Propagation::Orphan) => {
                    fins.retain(|f| f != FOREGROUND_FINALIZER);
                    if !fins.iter().any(|f| f == ORPHAN_FINALIZER) {
                        fins.push(ORPHAN_FINALIZER.into());
                    }
                }
                Some(Propagation::Foreground) => {
                    fins.retain(|f| f != ORPHAN_FINALIZER);
                    if !fins.iter().any(|f| f == FOREGROUND_FINALIZER) {
                        fins.push(FOREGROUND_FINALIZER.into());
                    }
                }
                Some(Propagation::Background) => {
                    fins.retain(|f| f != ORPHAN_FINALIZER && f != FOREGROUND_FINALIZER)
                }
                None => {}
            }
            let grace = def.strategy.grace_period(&obj, opts.grace_period);
            let key = def.key(ns, name);
            if grace.is_none() && fins.is_empty() {
                if opts.dry_run {
                    return Ok(Deleted::Gone(obj));
                }
                match self.store.delete(key, Some(current.revision)).await {
                    Ok(rev) => {
                        crate::servicealloc::release(self.store.as_ref(), def, &obj, None).await;
                        set_rv(&mut obj, rev);
                        return Ok(Deleted::Gone(obj));
                    }
                    Err(StorageError::Conflict { .. }) => continue,
                    Err(e) => return Err(Self::storage_err(def, name, e)),
                }
            }
            let g = grace.unwrap_or(0);
            let m = obj["metadata"]
                .as_object_mut()
                .ok_or_else(|| ApiError::Internal("stored object has no metadata".into()))?;
            let already = m.get("deletionTimestamp").is_some_and(|t| !t.is_null());
            let old_grace = m.get("deletionGracePeriodSeconds").and_then(Value::as_i64);
            if already && old_grace.is_some_and(|o| o <= g) && fins == before {
                // A repeated delete may only shorten the grace period.
                return Ok(Deleted::Terminating(obj));
            }
            if !already || old_grace.is_none_or(|o| g < o) {
                let deadline = Timestamp::now() + SignedDuration::from_secs(g);
                m.insert(
                    "deletionTimestamp".into(),
                    deadline.strftime("%Y-%m-%dT%H:%M:%SZ").to_string().into(),
                );
                m.insert("deletionGracePeriodSeconds".into(), g.into());
            }
            if fins.is_empty() {
                m.remove("finalizers");
            } else {
                m.insert("finalizers".into(), json!(fins));
            }
            if opts.dry_run {
                return Ok(Deleted::Terminating(obj));
            }
            match self
                .store
                .update(key, encode(def, &obj)?, current.revision)
                .await
            {
                Ok(stored) => {
                    set_rv(&mut obj, stored.revision);
                    return Ok(Deleted::Terminating(obj));
                }
                Err(StorageError::Conflict { .. }) => continue,
                Err(e) => return Err(Self::storage_err(def, name, e)),
            }
        }
        Err(def.conflict(name))
    }

    /// Deletes every object a list with `filter` returns; returns what was deleted or marked.
    pub async fn delete_collection(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        filter: &Filter,
        opts: &DeleteOptions,
    ) -> Result<Vec<Value>, ApiError> {
        let list = self
            .list(
                def,
                ns,
                &ListOptions {
                    filter: filter.clone(),
                    ..Default::default()
                },
            )
            .await?;
        let mut out = Vec::new();
        for obj in list.items {
            let name = meta_str(&obj, "name").unwrap_or_default().to_string();
            let ns = meta_str(&obj, "namespace").map(str::to_string);
            match self.delete(def, ns.as_deref(), &name, opts).await {
                Ok(Deleted::Gone(o) | Deleted::Terminating(o)) => out.push(o),
                Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Removes an object unconditionally (controllers finishing a deletion).
    pub async fn remove(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
    ) -> Result<(), ApiError> {
        match self.store.delete(def.key(ns, name), None).await {
            Ok(_) | Err(StorageError::NotFound) => Ok(()),
            Err(e) => Err(Self::storage_err(def, name, e)),
        }
    }
}

/// Name rules per kind, checked by [`validate_meta`].
pub fn name_rule_text(rule: NameRule) -> &'static str {
    match rule {
        NameRule::Label => {
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
        }
        NameRule::Subdomain => {
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        }
        NameRule::PathSegment => "may not be '.' or '..' and may not contain '/' or '%'",
    }
}

fn encode_continue(revision: u64, key: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("{revision}\n{}", String::from_utf8_lossy(key)))
}

fn decode_continue(token: &str) -> Result<(Vec<u8>, u64), ApiError> {
    use base64::Engine;
    let bad = || ApiError::BadRequest("invalid continue token".into());
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let (rev, key) = raw.split_once('\n').ok_or_else(bad)?;
    Ok((key.as_bytes().to_vec(), rev.parse().map_err(|_| bad())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip() {
        let t = encode_continue(42, b"/registry/pods/default/a");
        assert_eq!(
            decode_continue(&t).unwrap(),
            (b"/registry/pods/default/a".to_vec(), 42)
        );
        assert!(decode_continue("!!").is_err());
    }

    #[test]
    fn field_values() {
        let o = json!({"spec": {"nodeName": "n1", "unschedulable": true}, "status": {}});
        assert_eq!(field_value(&o, "spec.nodeName").as_deref(), Some("n1"));
        assert_eq!(
            field_value(&o, "spec.unschedulable").as_deref(),
            Some("true")
        );
        assert_eq!(field_value(&o, "status.phase"), None);
    }
}
