//! Ownership: which objects a controller controls. A controller claims the objects its
//! selector selects: it adopts orphans (adding its controller reference) and releases objects
//! it owns whose labels no longer match; objects another controller owns are never touched.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use strake_apimachinery::{ApiError, Part};

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
