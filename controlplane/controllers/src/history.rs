//! Template history in ControllerRevisions, as DaemonSets and StatefulSets keep it: one
//! revision per template, named `<owner>-<hash>`, labelled with the template's labels and
//! `controller-revision-hash` (so `kubectl rollout history|undo` find them by the owner's
//! selector), holding a strategic merge patch that puts the template back; a template used
//! again becomes the newest revision, and old revisions no pod runs go beyond the limit.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use strake_apimachinery::{ApiError, DeleteOptions, Filter, Part};

use crate::api::{Client, Object};
use crate::cache::Reader;
use crate::pods;
use crate::runtime::controller_of;

pub const REVISION_HASH: &str = "controller-revision-hash";

pub fn hash_of(p: &Pod) -> Option<&str> {
    p.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(REVISION_HASH))
        .map(String::as_str)
}

/// Makes the revision of `template` (named by `hash`) the newest; returns its name and number.
#[allow(clippy::too_many_arguments)]
pub async fn sync<O: Object>(
    client: &Client,
    revisions: &Reader<ControllerRevision>,
    pods: &Reader<Pod>,
    owner: &O,
    template: &PodTemplateSpec,
    hash: &str,
    limit: i32,
) -> Result<(String, i64), ApiError> {
    let uid = owner.metadata().uid.clone().unwrap_or_default();
    let mut mine: Vec<Arc<ControllerRevision>> = revisions
        .owned_by(&uid)
        .into_iter()
        .filter(|r| controller_of(r.as_ref(), O::KIND).is_some_and(|c| c.uid == uid))
        .collect();
    mine.sort_by_key(|r| r.revision);
    let max = mine.iter().map(|r| r.revision).max().unwrap_or(0);
    let ns = owner.metadata().namespace.clone();
    let name = format!(
        "{}-{hash}",
        owner.metadata().name.as_deref().unwrap_or_default()
    );
    let current = mine
        .iter()
        .any(|r| r.metadata.name.as_deref() == Some(name.as_str()) && r.revision == max);
    let number = if current {
        max
    } else {
        // A number is decided on a live read: the cache may not yet hold a revision written
        // moments ago, and two templates must never share a number.
        let (all, _): (Vec<ControllerRevision>, _) =
            client.list(ns.as_deref(), &Filter::default()).await?;
        let live: Vec<ControllerRevision> = all
            .into_iter()
            .filter(|r| controller_of(r, O::KIND).is_some_and(|c| c.uid == uid))
            .collect();
        let max = live.iter().map(|r| r.revision).max().unwrap_or(0);
        match live
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(name.as_str()))
        {
            Some(r) if r.revision == max => max,
            Some(_) => {
                // Rolled back to an older template: it becomes the newest revision.
                client
                    .modify::<ControllerRevision>(ns.as_deref(), &name, Part::Main, |r| {
                        if r.revision == max + 1 {
                            return false;
                        }
                        r.revision = max + 1;
                        true
                    })
                    .await?;
                max + 1
            }
            None => {
                create(client, owner, template, hash, &name, max + 1).await?;
                max + 1
            }
        }
    };
    let limit = limit.max(0) as usize;
    let in_use: Vec<String> = pods
        .owned_by(&uid)
        .iter()
        .filter_map(|p| hash_of(p).map(str::to_string))
        .collect();
    let old: Vec<&Arc<ControllerRevision>> = mine
        .iter()
        .filter(|r| {
            r.metadata.name.as_deref() != Some(name.as_str())
                && !r
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(REVISION_HASH))
                    .is_some_and(|h| in_use.contains(h))
        })
        .collect();
    for r in old.iter().take(old.len().saturating_sub(limit)) {
        let n = r.metadata.name.clone().unwrap_or_default();
        client
            .delete::<ControllerRevision>(ns.as_deref(), &n, &DeleteOptions::default())
            .await?;
    }
    Ok((name, number))
}

/// Writes the revision of `template`; one already there (written meanwhile) is as good.
async fn create<O: Object>(
    client: &Client,
    owner: &O,
    template: &PodTemplateSpec,
    hash: &str,
    name: &str,
    number: i64,
) -> Result<(), ApiError> {
    let ns = owner.metadata().namespace.clone();
    let mut patch = serde_json::to_value(template).unwrap_or_default();
    patch["$patch"] = "replace".into();
    let mut labels: BTreeMap<String, String> = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(REVISION_HASH.into(), hash.into());
    let rev = ControllerRevision {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: ns.clone(),
            labels: Some(labels),
            owner_references: Some(vec![pods::controller_ref(owner)]),
            ..Default::default()
        },
        data: Some(RawExtension(
            serde_json::json!({"spec": {"template": patch}}),
        )),
        revision: number,
    };
    match client.create(ns.as_deref(), &rev).await {
        Ok(_) | Err(ApiError::AlreadyExists { .. }) | Err(ApiError::Forbidden(_)) => {}
        Err(e) => return Err(e),
    }
    Ok(())
}
