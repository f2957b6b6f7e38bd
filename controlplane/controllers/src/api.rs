//! Typed access to the API for controllers. Every call goes through the registry, so a
//! controller's writes get the same defaulting, validation, admission and managedFields as a
//! request from kubectl, and each write is recorded under the controller's field manager.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use strake_apimachinery::events::EventType;
use strake_apimachinery::{
    ApiError, DeleteOptions, Deleted, Filter, ListOptions, Part, Registry, ResourceDef,
    WriteOptions,
};

/// A k8s-openapi object kind a controller can read, cache and write.
pub trait Object:
    k8s_openapi::Resource
    + k8s_openapi::Metadata<Ty = ObjectMeta>
    + DeserializeOwned
    + Serialize
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> Object for T where
    T: k8s_openapi::Resource
        + k8s_openapi::Metadata<Ty = ObjectMeta>
        + DeserializeOwned
        + Serialize
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// The API as one component sees it: the registry plus the name its writes and events carry.
#[derive(Clone)]
pub struct Client {
    reg: Registry,
    manager: Arc<str>,
}

impl Client {
    pub fn new(reg: Registry, manager: &str) -> Self {
        Self {
            reg,
            manager: manager.into(),
        }
    }

    /// The same API under another component's name.
    pub fn named(&self, manager: &str) -> Self {
        Self::new(self.reg.clone(), manager)
    }

    pub fn registry(&self) -> &Registry {
        &self.reg
    }

    pub fn manager(&self) -> &str {
        &self.manager
    }

    /// The table entry serving `K`.
    pub fn def<K: Object>(&self) -> Result<Arc<ResourceDef>, ApiError> {
        self.reg
            .table()
            .snapshot()
            .lookup(K::GROUP, K::VERSION, K::URL_PATH_SEGMENT)
            .cloned()
            .ok_or(ApiError::NoRoute)
    }

    fn writes(&self) -> WriteOptions {
        WriteOptions {
            dry_run: false,
            field_manager: Some(self.manager.to_string()),
            user: None,
            warnings: Default::default(),
            subresource: None,
        }
    }

    pub async fn get<K: Object>(&self, ns: Option<&str>, name: &str) -> Result<K, ApiError> {
        let def = self.def::<K>()?;
        from_json(&def, self.reg.get(&def, ns, name).await?)
    }

    /// Every object of `K` (in `ns`, or everywhere) matching `filter`, and the list's revision.
    pub async fn list<K: Object>(
        &self,
        ns: Option<&str>,
        filter: &Filter,
    ) -> Result<(Vec<K>, u64), ApiError> {
        let def = self.def::<K>()?;
        let page = self
            .reg
            .list(
                &def,
                ns,
                &ListOptions {
                    filter: filter.clone(),
                    ..Default::default()
                },
            )
            .await?;
        let items = page
            .items
            .into_iter()
            .map(|v| from_json(&def, v))
            .collect::<Result<_, _>>()?;
        Ok((items, page.revision))
    }

    pub async fn create<K: Object>(&self, ns: Option<&str>, obj: &K) -> Result<K, ApiError> {
        let def = self.def::<K>()?;
        let out = self
            .reg
            .create(&def, ns, to_json(&def, obj)?, &self.writes())
            .await?;
        from_json(&def, out)
    }

    /// Writes `obj` (its main part or its status) as it is; its resourceVersion, when set, is a
    /// precondition, so a write based on a stale read is a 409.
    pub async fn replace<K: Object>(&self, obj: &K, part: Part) -> Result<K, ApiError> {
        let def = self.def::<K>()?;
        let meta = obj.metadata();
        let name = meta.name.clone().unwrap_or_default();
        let out = self
            .reg
            .update(
                &def,
                meta.namespace.as_deref(),
                &name,
                to_json(&def, obj)?,
                part,
                &self.writes(),
            )
            .await?;
        from_json(&def, out)
    }

    /// Read-modify-write of one part of an object, retried when another writer wins the race.
    /// `f` returning false leaves the object alone (no write).
    pub async fn modify<K: Object>(
        &self,
        ns: Option<&str>,
        name: &str,
        part: Part,
        mut f: impl FnMut(&mut K) -> bool,
    ) -> Result<K, ApiError> {
        let def = self.def::<K>()?;
        let mut unchanged = None;
        let out = self
            .reg
            .update_with(&def, ns, name, part, &self.writes(), |v| {
                let mut obj: K = from_json(&def, v.clone())?;
                if !f(&mut obj) {
                    unchanged = Some(obj);
                    return Err(ApiError::Internal(UNCHANGED.into()));
                }
                unchanged = None;
                to_json(&def, &obj)
            })
            .await;
        match out {
            Ok(v) => from_json(&def, v),
            Err(ApiError::Internal(m)) if m == UNCHANGED => {
                unchanged.ok_or_else(|| ApiError::Internal("modify lost its object".into()))
            }
            Err(e) => Err(e),
        }
    }

    /// Deletes an object; one already gone counts as deleted.
    pub async fn delete<K: Object>(
        &self,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Option<Deleted>, ApiError> {
        let def = self.def::<K>()?;
        match self.reg.delete(&def, ns, name, opts).await {
            Ok(d) => Ok(Some(d)),
            Err(ApiError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Records an Event about `obj` from this component; failing to record is only logged.
    pub async fn event<K: Object>(&self, obj: &K, ty: EventType, reason: &str, message: &str) {
        let Ok(def) = self.def::<K>() else { return };
        let Ok(v) = to_json(&def, obj) else { return };
        if let Err(e) =
            strake_apimachinery::events::record(&self.reg, &v, ty, reason, message, &self.manager)
                .await
        {
            tracing::debug!(error = %e, reason, "recording an event failed");
        }
    }
}

const UNCHANGED: &str = "strake-controllers: unchanged";

pub(crate) fn to_json<K: Object>(def: &ResourceDef, obj: &K) -> Result<Value, ApiError> {
    let mut v = serde_json::to_value(obj).map_err(|e| ApiError::Internal(e.to_string()))?;
    v["apiVersion"] = def.api_version().into();
    v["kind"] = def.kind.clone().into();
    Ok(v)
}

pub(crate) fn from_json<K: Object>(def: &ResourceDef, v: Value) -> Result<K, ApiError> {
    strake_apimachinery::decode::typed(&def.kind, v)
}
