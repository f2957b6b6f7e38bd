//! Typed access to the registry for in-process components (the scheduler loop): k8s-openapi
//! structs in and out, through the same machinery as every API request.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde::de::DeserializeOwned;
use strake_apimachinery::{
    ApiError, Filter, ListOptions, Part, Registry, ResourceDef, WriteOptions,
};

fn def_of<K: k8s_openapi::Resource>(
    reg: &Registry,
) -> Result<std::sync::Arc<ResourceDef>, ApiError> {
    reg.table()
        .snapshot()
        .lookup(K::GROUP, K::VERSION, K::URL_PATH_SEGMENT)
        .cloned()
        .ok_or(ApiError::NoRoute)
}

pub async fn list<K: k8s_openapi::Resource + DeserializeOwned>(
    reg: &Registry,
    ns: Option<&str>,
    filter: &Filter,
) -> Result<Vec<K>, ApiError> {
    let def = def_of::<K>(reg)?;
    let page = reg
        .list(
            &def,
            ns,
            &ListOptions {
                filter: filter.clone(),
                ..Default::default()
            },
        )
        .await?;
    page.items
        .into_iter()
        .map(|v| strake_apimachinery::decode::typed(&def.kind, v))
        .collect()
}

pub async fn get<K: k8s_openapi::Resource + DeserializeOwned>(
    reg: &Registry,
    ns: Option<&str>,
    name: &str,
) -> Result<K, ApiError> {
    let def = def_of::<K>(reg)?;
    strake_apimachinery::decode::typed(&def.kind, reg.get(&def, ns, name).await?)
}

/// Read-modify-write of one part of an object, retried on conflict.
pub async fn modify<K>(
    reg: &Registry,
    ns: Option<&str>,
    name: &str,
    part: Part,
    mut f: impl FnMut(&mut K) -> Result<(), ApiError>,
) -> Result<K, ApiError>
where
    K: k8s_openapi::Resource
        + k8s_openapi::Metadata<Ty = ObjectMeta>
        + DeserializeOwned
        + Serialize,
{
    let def = def_of::<K>(reg)?;
    let out = reg
        .update_with(&def, ns, name, part, &WriteOptions::default(), |v| {
            let mut obj: K = strake_apimachinery::decode::typed(&def.kind, v)?;
            f(&mut obj)?;
            obj.metadata_mut().resource_version = None;
            let mut v =
                serde_json::to_value(&obj).map_err(|e| ApiError::Internal(e.to_string()))?;
            v["apiVersion"] = def.api_version().into();
            v["kind"] = def.kind.clone().into();
            Ok(v)
        })
        .await?;
    strake_apimachinery::decode::typed(&def.kind, out)
}
