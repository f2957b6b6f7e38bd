//! Typed object storage on top of the raft store: keys, resourceVersions, creation bookkeeping,
//! optimistic concurrency (409 Conflict), graceful deletion. No HTTP in here.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use strake_store::{Compare, CmpOp, KeyValue, Op, OpResult, RangeRequest, Store, StoreError, Txn};

use crate::error::{ApiError, FieldError};
use crate::kinds::{ApiKind, Part};
use crate::selectors::{FieldSelector, LabelSelector};

/// Where an object lives: its namespace (for namespaced kinds) and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectKey {
    pub namespace: Option<String>,
    pub name: String,
}

/// Key prefix of a kind, optionally narrowed to a namespace.
pub fn prefix<K: ApiKind>(namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) if K::NAMESPACED => format!("/registry/{}/{ns}/", K::PLURAL),
        _ => format!("/registry/{}/", K::PLURAL),
    }
}

fn key<K: ApiKind>(namespace: Option<&str>, name: &str) -> Vec<u8> {
    format!("{}{name}", prefix::<K>(namespace)).into_bytes()
}

/// Filters for list and watch.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn matches<K: ApiKind>(&self, obj: &K) -> bool {
        let m = obj.metadata();
        self.labels.matches(m.labels.as_ref())
            && self.fields.matches(|f| match f {
                "metadata.name" => m.name.clone(),
                "metadata.namespace" => m.namespace.clone(),
                other => obj.field(other),
            })
    }
}

/// What a delete did.
pub enum Deleted<K> {
    /// The object is gone; this was its last state.
    Gone(K),
    /// The object is terminating gracefully (deletionTimestamp set).
    Terminating(K),
}

/// Typed access to objects in the store.
#[derive(Clone)]
pub struct Registry {
    store: Store,
}

fn resource<K: ApiKind>() -> String {
    K::PLURAL.to_string()
}

fn decode<K: ApiKind>(kv: &KeyValue) -> Result<K, ApiError> {
    let mut obj: K = serde_json::from_slice(&kv.value).map_err(|e| {
        ApiError::Internal(format!("stored object {} is unreadable: {e}", String::from_utf8_lossy(&kv.key)))
    })?;
    obj.metadata_mut().resource_version = Some(kv.mod_revision.to_string());
    Ok(obj)
}

fn encode<K: ApiKind>(obj: &K) -> Result<Vec<u8>, ApiError> {
    let mut obj = obj.clone();
    obj.metadata_mut().resource_version = None;
    let mut v = serde_json::to_value(&obj).map_err(|e| ApiError::Internal(e.to_string()))?;
    v["apiVersion"] = K::API_VERSION.into();
    v["kind"] = K::KIND.into();
    serde_json::to_vec(&v).map_err(|e| ApiError::Internal(e.to_string()))
}

/// Parses a client-supplied resourceVersion.
pub fn parse_rv(rv: &str) -> Result<u64, ApiError> {
    rv.parse::<u64>().map_err(|_| ApiError::BadRequest(format!("invalid resource version {rv:?}: must be a decimal number")))
}

pub(crate) fn map_store_err(e: StoreError) -> ApiError {
    match e {
        StoreError::Compacted { requested, compacted } => {
            ApiError::Expired(format!("too old resource version: {requested} ({compacted})"))
        }
        StoreError::ValueTooLarge { size, max, .. } => {
            ApiError::BadRequest(format!("object is {size} bytes once stored, more than the limit of {max}"))
        }
        StoreError::FutureRevision { requested, current } => ApiError::Expired(format!(
            "resource version {requested} is newer than the store's current revision {current}"
        )),
        StoreError::NotLeader { .. }
        | StoreError::NoQuorum(_)
        | StoreError::CatchingUp { .. }
        | StoreError::LeaderUnreachable { .. }
        | StoreError::Stopped => {
            ApiError::ServiceUnavailable(format!("storage unavailable: {e}"))
        }
        other => ApiError::Internal(format!("storage: {other}")),
    }
}

impl Registry {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub async fn get<K: ApiKind>(&self, namespace: Option<&str>, name: &str) -> Result<K, ApiError> {
        let (kv, _) = self.store.get(&key::<K>(namespace, name)).await.map_err(map_store_err)?;
        match kv {
            Some(kv) => decode(&kv),
            None => Err(ApiError::NotFound { resource: resource::<K>(), name: name.into() }),
        }
    }

    /// Lists objects, optionally from a continuation token (the last key returned) with a limit.
    /// Returns the objects, the list resourceVersion, and the next continuation token.
    pub async fn list<K: ApiKind>(
        &self,
        namespace: Option<&str>,
        filter: &Filter,
        limit: usize,
        continue_token: Option<&str>,
    ) -> Result<(Vec<K>, u64, Option<String>), ApiError> {
        let mut out = Vec::new();
        let (mut start_after, mut revision) = match continue_token {
            Some(t) => {
                let (key, rev) = decode_continue(t)?;
                (Some(key), rev)
            }
            None => (None, 0),
        };
        loop {
            let page = if limit == 0 { 0 } else { (limit - out.len()).max(1) * 2 };
            let resp = self
                .store
                .range(RangeRequest { prefix: prefix::<K>(namespace).into_bytes(), start_after: start_after.clone(), limit: page, revision })
                .await
                .map_err(map_store_err)?;
            revision = resp.revision;
            for kv in &resp.kvs {
                start_after = Some(kv.key.clone());
                let obj: K = decode(kv)?;
                if filter.matches(&obj) {
                    out.push(obj);
                    if limit != 0 && out.len() == limit {
                        let more = resp.more || kv.key != resp.kvs.last().map(|k| k.key.clone()).unwrap_or_default();
                        let token = more.then(|| encode_continue(revision, &kv.key));
                        return Ok((out, revision, token));
                    }
                }
            }
            if !resp.more {
                return Ok((out, revision, None));
            }
        }
    }

    /// Creates an object. The caller has filled defaults; this sets uid, timestamps and validates.
    pub async fn create<K: ApiKind>(&self, namespace: Option<&str>, mut obj: K) -> Result<K, ApiError> {
        {
            let m = obj.metadata_mut();
            if m.name.as_deref().is_none_or(str::is_empty)
                && let Some(base) = m.generate_name.clone().filter(|g| !g.is_empty()) {
                    m.name = Some(format!("{base}{}", random_suffix()));
                }
            if K::NAMESPACED {
                match (m.namespace.as_deref(), namespace) {
                    (Some(body), Some(url)) if body != url => {
                        return Err(ApiError::BadRequest(format!(
                            "the namespace of the provided object ({body}) does not match the namespace sent on the request ({url})"
                        )));
                    }
                    _ => m.namespace = namespace.map(str::to_string),
                }
            } else {
                m.namespace = None;
            }
            m.uid = Some(uuid::Uuid::new_v4().to_string());
            m.creation_timestamp = Some(Time(Timestamp::now()));
            m.resource_version = None;
            m.deletion_timestamp = None;
            m.deletion_grace_period_seconds = None;
            m.generation = Some(1);
            m.managed_fields = None;
        }
        obj.default_on_create();
        let name = obj.metadata().name.clone().unwrap_or_default();
        let causes = obj.validate();
        if !causes.is_empty() {
            return Err(invalid::<K>(&name, causes));
        }
        if let Some(ns) = namespace.filter(|_| K::NAMESPACED) {
            let nsobj: k8s_openapi::api::core::v1::Namespace = self
                .get(None, ns)
                .await
                .map_err(|_| ApiError::NotFound { resource: "namespaces".into(), name: ns.into() })?;
            if nsobj.metadata.deletion_timestamp.is_some() {
                return Err(ApiError::Forbidden(format!(
                    "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                    K::PLURAL
                )));
            }
        }
        let k = key::<K>(namespace, &name);
        let value = encode(&obj)?;
        let resp = self
            .store
            .txn(Txn {
                compare: vec![Compare::Version { key: k.clone(), op: CmpOp::Equal, value: 0 }],
                success: vec![Op::Put { key: k, value }],
                failure: vec![],
            })
            .await
            .map_err(map_store_err)?;
        if !resp.succeeded {
            return Err(ApiError::AlreadyExists { resource: resource::<K>(), name });
        }
        match resp.results.first() {
            Some(OpResult::Put { kv, .. }) => decode(kv),
            _ => Err(ApiError::Internal("create returned no result".into())),
        }
    }

    /// Replaces an object (or its status). If the body carries a resourceVersion it must match.
    pub async fn update<K: ApiKind>(&self, namespace: Option<&str>, name: &str, mut obj: K, part: Part) -> Result<K, ApiError> {
        if obj.metadata().name.as_deref() != Some(name) {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                obj.metadata().name.as_deref().unwrap_or("")
            )));
        }
        let k = key::<K>(namespace, name);
        let (current, _) = self.store.get(&k).await.map_err(map_store_err)?;
        let Some(current) = current else {
            return Err(ApiError::NotFound { resource: resource::<K>(), name: name.into() });
        };
        let old: K = decode(&current)?;
        let expected = match obj.metadata().resource_version.as_deref() {
            Some(rv) if !rv.is_empty() => parse_rv(rv)?,
            _ => current.mod_revision,
        };
        if expected != current.mod_revision {
            return Err(conflict::<K>(name));
        }
        {
            let (om, m) = (old.metadata(), obj.metadata_mut());
            m.uid = om.uid.clone();
            m.creation_timestamp = om.creation_timestamp.clone();
            m.namespace = om.namespace.clone();
            m.deletion_timestamp = om.deletion_timestamp.clone();
            m.deletion_grace_period_seconds = om.deletion_grace_period_seconds;
            m.generation = om.generation;
            if part == Part::Status {
                m.labels = om.labels.clone();
                m.annotations = om.annotations.clone();
                m.finalizers = om.finalizers.clone();
                m.owner_references = om.owner_references.clone();
            }
        }
        obj.carry_over(&old, if part == Part::Binding { Part::Main } else { part });
        if part == Part::Main && serde_json::to_value(spec_of(&obj)).ok() != serde_json::to_value(spec_of(&old)).ok() {
            obj.metadata_mut().generation = Some(old.metadata().generation.unwrap_or(1) + 1);
        }
        let causes = if part == Part::Binding { obj.validate() } else { obj.validate_update(&old) };
        if !causes.is_empty() {
            return Err(invalid::<K>(name, causes));
        }
        // An object that is terminating with no finalizers left and a zero grace is removed.
        let finished = obj.metadata().deletion_timestamp.is_some()
            && obj.metadata().finalizers.as_ref().is_none_or(Vec::is_empty)
            && obj.metadata().deletion_grace_period_seconds == Some(0);
        let op = if finished { Op::Delete { key: k.clone() } } else { Op::Put { key: k.clone(), value: encode(&obj)? } };
        let resp = self
            .store
            .txn(Txn { compare: vec![Compare::ModRevision { key: k, op: CmpOp::Equal, value: current.mod_revision }], success: vec![op], failure: vec![] })
            .await
            .map_err(map_store_err)?;
        if !resp.succeeded {
            return Err(conflict::<K>(name));
        }
        match resp.results.first() {
            Some(OpResult::Put { kv, .. }) => decode(kv),
            Some(OpResult::Delete { .. }) => {
                obj.metadata_mut().resource_version = Some(resp.revision.to_string());
                Ok(obj)
            }
            _ => Err(ApiError::Internal("update returned no result".into())),
        }
    }

    /// Read-modify-write with retries on conflict.
    pub async fn modify<K: ApiKind>(
        &self,
        namespace: Option<&str>,
        name: &str,
        part: Part,
        mut f: impl FnMut(&mut K) -> Result<(), ApiError>,
    ) -> Result<K, ApiError> {
        for _ in 0..16 {
            let mut obj: K = self.get(namespace, name).await?;
            f(&mut obj)?;
            match self.update(namespace, name, obj, part).await {
                Err(ApiError::Conflict { .. }) => continue,
                other => return other,
            }
        }
        Err(conflict::<K>(name))
    }

    /// Deletes an object: at once, or gracefully by setting deletionTimestamp.
    pub async fn delete<K: ApiKind>(
        &self,
        namespace: Option<&str>,
        name: &str,
        grace: Option<i64>,
        precondition_uid: Option<&str>,
        precondition_rv: Option<&str>,
    ) -> Result<Deleted<K>, ApiError> {
        for _ in 0..16 {
            let k = key::<K>(namespace, name);
            let (current, _) = self.store.get(&k).await.map_err(map_store_err)?;
            let Some(current) = current else {
                return Err(ApiError::NotFound { resource: resource::<K>(), name: name.into() });
            };
            let mut obj: K = decode(&current)?;
            if let Some(uid) = precondition_uid
                && obj.metadata().uid.as_deref() != Some(uid) {
                    return Err(ApiError::Conflict {
                        resource: resource::<K>(),
                        name: name.into(),
                        message: format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {}", obj.metadata().uid.as_deref().unwrap_or("")),
                    });
                }
            if let Some(rv) = precondition_rv
                && parse_rv(rv)? != current.mod_revision {
                    return Err(conflict::<K>(name));
                }
            let has_finalizers = obj.metadata().finalizers.as_ref().is_some_and(|f| !f.is_empty());
            let grace = obj.grace_period(grace);
            let op = match grace {
                None if !has_finalizers => Op::Delete { key: k.clone() },
                _ => {
                    let g = grace.unwrap_or(0);
                    let m = obj.metadata_mut();
                    let deadline = Timestamp::now() + SignedDuration::from_secs(g);
                    match m.deletion_timestamp {
                        // A repeated delete may only shorten the grace period.
                        Some(_) if m.deletion_grace_period_seconds.is_some_and(|old| old <= g) => {
                            return Ok(Deleted::Terminating(obj));
                        }
                        _ => {
                            m.deletion_timestamp = Some(Time(deadline));
                            m.deletion_grace_period_seconds = Some(g);
                        }
                    }
                    Op::Put { key: k.clone(), value: encode(&obj)? }
                }
            };
            let deleting = matches!(op, Op::Delete { .. });
            let resp = self
                .store
                .txn(Txn { compare: vec![Compare::ModRevision { key: k, op: CmpOp::Equal, value: current.mod_revision }], success: vec![op], failure: vec![] })
                .await
                .map_err(map_store_err)?;
            if !resp.succeeded {
                continue;
            }
            if deleting {
                obj.metadata_mut().resource_version = Some(resp.revision.to_string());
                return Ok(Deleted::Gone(obj));
            }
            obj.metadata_mut().resource_version = Some(resp.revision.to_string());
            return Ok(Deleted::Terminating(obj));
        }
        Err(conflict::<K>(name))
    }
}

impl Registry {
    /// Removes an object unconditionally (controllers finishing a deletion).
    pub async fn remove<K: ApiKind>(&self, namespace: Option<&str>, name: &str) -> Result<(), ApiError> {
        let k = key::<K>(namespace, name);
        self.store.delete(k).await.map_err(map_store_err)?;
        Ok(())
    }
}

fn spec_of<K: ApiKind>(obj: &K) -> serde_json::Value {
    serde_json::to_value(obj).ok().and_then(|v| v.get("spec").cloned()).unwrap_or_default()
}

fn conflict<K: ApiKind>(name: &str) -> ApiError {
    ApiError::Conflict {
        resource: resource::<K>(),
        name: name.into(),
        message: "the object has been modified; please apply your changes to the latest version and try again".into(),
    }
}

fn invalid<K: ApiKind>(name: &str, causes: Vec<FieldError>) -> ApiError {
    ApiError::Invalid { kind: K::KIND.into(), resource: resource::<K>(), name: name.into(), causes }
}

fn random_suffix() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::thread_rng();
    (0..5).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
}

fn encode_continue(revision: u64, key: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{revision}\n{}", String::from_utf8_lossy(key)))
}

fn decode_continue(token: &str) -> Result<(Vec<u8>, u64), ApiError> {
    use base64::Engine;
    let bad = || ApiError::BadRequest("invalid continue token".into());
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
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
        assert_eq!(decode_continue(&t).unwrap(), (b"/registry/pods/default/a".to_vec(), 42));
        assert!(decode_continue("!!").is_err());
    }
}
