//! Ownership: which objects a controller controls. A controller claims the objects its
//! selector selects: it adopts orphans (adding its controller reference) and releases objects
//! it owns whose labels no longer match; objects another controller owns are never touched.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use strake_apimachinery::{ApiError, GroupResource, Part};

use crate::api::{Client, Object};
use crate::cache::Reader;
use crate::pods::controller_ref;
use crate::runtime::controller_of;
use strake_scheduler::labels::selects;

/// The pods `owner` controls after adoption and release: those with its controller reference
/// whose labels still match (a mismatching one is released), plus orphans the selector selects
/// (adopted). Pods another controller owns are left alone.
pub async fn claim<O: Object, C: Object>(
    client: &Client,
    owner: &O,
    selector: &LabelSelector,
    children: &Reader<C>,
) -> Result<Vec<Arc<C>>, ApiError> {
    let m = owner.metadata();
    let uid = m.uid.clone().unwrap_or_default();
    let ns = m.namespace.clone().unwrap_or_default();
    let deleting = m.deletion_timestamp.is_some();
    let empty = selector.match_labels.as_ref().is_none_or(|l| l.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty());
    let mut mine = Vec::new();
    let mut rechecked = false;
    for child in children.in_namespace(&ns) {
        let matches = !empty && selects(selector, &child.metadata().labels);
        let controller = child
            .metadata()
            .owner_references
            .iter()
            .flatten()
            .find(|r| r.controller == Some(true));
        match controller {
            Some(r) if r.uid == uid => {
                if matches || deleting {
                    mine.push(child);
                } else if child.metadata().deletion_timestamp.is_none() {
                    release(client, child.as_ref(), &uid).await?;
                }
            }
            Some(_) => {}
            None if matches && !deleting && child.metadata().deletion_timestamp.is_none() => {
                if !rechecked {
                    recheck(client, owner).await?;
                    rechecked = true;
                }
                let r = controller_ref(owner);
                let name = child.metadata().name.clone().unwrap_or_default();
                let res = client
                    .modify::<C>(Some(&ns), &name, Part::Main, |p| {
                        let refs = p.metadata_mut().owner_references.get_or_insert_default();
                        if refs.iter().any(|x| x.controller == Some(true)) {
                            return false;
                        }
                        refs.push(r.clone());
                        true
                    })
                    .await;
                match res {
                    Ok(p) if controller_of(&p, O::KIND).is_some_and(|x| x.uid == uid) => {
                        tracing::info!(kind = C::KIND, object = %format!("{ns}/{name}"), owner = ?m.name, "adopted");
                        mine.push(Arc::new(p));
                    }
                    Ok(_) | Err(ApiError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            None => {}
        }
    }
    Ok(mine)
}

/// Adoption is decided on the owner as the API has it, not the cache (upstream's
/// RecheckDeletionTimestamp): an owner deleted with `propagationPolicy=Orphan` that the cache
/// still shows alive would take back the dependents the garbage collector has just orphaned,
/// and they would then be collected as its dependents. An owner gone or being deleted (or
/// replaced by another of its name) fails the claim, to be tried again on a fresher cache.
async fn recheck<O: Object>(client: &Client, owner: &O) -> Result<(), ApiError> {
    let m = owner.metadata();
    let name = m.name.clone().unwrap_or_default();
    let alive = match client.get::<O>(m.namespace.as_deref(), &name).await {
        Ok(live) => live.metadata().uid == m.uid && live.metadata().deletion_timestamp.is_none(),
        Err(ApiError::NotFound { .. }) => false,
        Err(e) => return Err(e),
    };
    if alive {
        return Ok(());
    }
    Err(ApiError::Conflict {
        resource: GroupResource::new(O::GROUP, O::URL_PATH_SEGMENT),
        name,
        message: "the object is gone or being deleted, so it adopts nothing".into(),
    })
}

async fn release<C: Object>(client: &Client, child: &C, uid: &str) -> Result<(), ApiError> {
    let ns = child.metadata().namespace.as_deref();
    let name = child.metadata().name.as_deref().unwrap_or_default();
    let res = client
        .modify::<C>(ns, name, Part::Main, |c| {
            let refs = &mut c.metadata_mut().owner_references;
            let before = refs.as_ref().map_or(0, Vec::len);
            if let Some(r) = refs {
                r.retain(|r| r.uid != uid);
            }
            before != refs.as_ref().map_or(0, Vec::len)
        })
        .await;
    match res {
        Ok(_) | Err(ApiError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}
