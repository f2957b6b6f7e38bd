//! The store's membership and backups over the API server, under `/strake/v1/store`: how a
//! control plane joins (as a learner, promoted to voter once caught up), how operators list
//! and remove members, and how a backup is taken while the store serves.
//!
//! - `GET /strake/v1/store/members` lists the members as this node sees them.
//! - `POST /strake/v1/store/members` with a [`JoinRequest`] joins the caller's store node. A
//!   store peer (a certificate `strake-store-<id>` in `strake:store-peers`, issued from the
//!   cluster CA) may join only itself; it is answered with the cluster's shared key files
//!   (the service-account signing key and the encryption configuration), which every control
//!   plane must hold alike.
//! - `DELETE /strake/v1/store/members/{id}` removes a member, refused with the reason if it
//!   would leave fewer answering voters than a quorum. A peer may remove only itself (a
//!   graceful leave).
//! - `GET /strake/v1/store/snapshot` streams a backup holding every acknowledged write, with
//!   [`BACKUP_FILES`] attached: a restore from it alone brings the cluster back, keys and CA
//!   included (so the file is as secret as the CA key).
//!
//! Admins (`system:masters`) may do all of it; RBAC gives store peers the members URLs.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use strake_apimachinery::ApiError;
use strake_store::{StoreError, peer_name};

use crate::AppState;
use crate::auth::Principal;
use crate::dispatch::read_body;
use crate::render::json_response;

/// The key files every control plane shares, by their names in the PKI directory.
pub const SHARED_FILES: &[&str] = &[strake_tokens::KEY_FILE, crate::ENCRYPTION_CONFIG];

/// The files every backup carries (from the PKI directory): the shared keys, without which
/// the restored Secrets and service-account tokens are unreadable, and the cluster CA, which
/// every node's and user's credentials chain to.
pub const BACKUP_FILES: &[&str] = &[
    strake_tokens::KEY_FILE,
    crate::ENCRYPTION_CONFIG,
    strake_pki::CA_CERT,
    strake_pki::CA_KEY,
];

/// Reads the files `names` from the PKI directory `dir`, by name.
fn read_pki_files(dir: &Path, names: &[&str]) -> Result<BTreeMap<String, Vec<u8>>, String> {
    names
        .iter()
        .map(|name| {
            let path = dir.join(name);
            std::fs::read(&path)
                .map(|bytes| (name.to_string(), bytes))
                .map_err(|e| format!("reading {}: {e}", path.display()))
        })
        .collect()
}

/// Why a backup was not taken.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("a backup carries the cluster's keys, but {0}")]
    Files(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Takes a backup of `store` to `path` with [`BACKUP_FILES`] from `pki_dir` attached.
pub async fn take_backup(
    store: &strake_store::Store,
    pki_dir: &Path,
    path: &Path,
) -> Result<strake_store::BackupInfo, BackupError> {
    let files = read_pki_files(pki_dir, BACKUP_FILES).map_err(BackupError::Files)?;
    Ok(store.backup_with(path, files).await?)
}

/// Checks that a backup's attachments are exactly [`BACKUP_FILES`], naming what is missing
/// or unexpected.
pub fn check_backup_files(attachments: &BTreeMap<String, Vec<u8>>) -> Result<(), String> {
    let missing: Vec<&str> = BACKUP_FILES
        .iter()
        .copied()
        .filter(|f| !attachments.contains_key(*f))
        .collect();
    let unknown: Vec<&str> = attachments
        .keys()
        .map(String::as_str)
        .filter(|f| !BACKUP_FILES.contains(f))
        .collect();
    match (missing.is_empty(), unknown.is_empty()) {
        (true, true) => Ok(()),
        (false, _) => Err(format!(
            "it lacks the cluster's {} (a store backup made without them, by `strake-store` or an older strake, cannot bring the cluster back: take one with `strakectl store snapshot`)",
            missing.join(", ")
        )),
        (true, false) => Err(format!(
            "it carries files no strake backup has: {}",
            unknown.join(", ")
        )),
    }
}

/// A store node asking to join.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JoinRequest {
    pub id: u64,
    /// `ip:port` the other members reach its peer listener at.
    pub peer_address: String,
}

/// One member as the answering node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub id: u64,
    pub peer_address: String,
    /// Votes (or, while catching up, only receives the log).
    pub voter: bool,
    pub leader: bool,
}

/// The members, and which node answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberList {
    pub answered_by: u64,
    pub leader: Option<u64>,
    /// The answering node's raft term: it grows with every election.
    #[serde(default)]
    pub term: u64,
    pub members: Vec<Member>,
}

/// What a joined node is answered.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinAnswer {
    pub members: MemberList,
    /// [`SHARED_FILES`] by name, as this control plane holds them, base64 (the signing key is
    /// DER).
    pub files: BTreeMap<String, String>,
}

fn member_list(store: &strake_store::Store) -> MemberList {
    let m = store.members();
    let mut members: Vec<Member> = m
        .voters
        .iter()
        .map(|(id, addr)| (id, addr, true))
        .chain(m.learners.iter().map(|(id, addr)| (id, addr, false)))
        .map(|(id, addr, voter)| Member {
            id: *id,
            peer_address: addr.clone(),
            voter,
            leader: m.leader == Some(*id),
        })
        .collect();
    members.sort_by_key(|m| m.id);
    MemberList {
        answered_by: store.node_id(),
        leader: m.leader,
        term: store.raft_metrics().current_term,
        members,
    }
}

/// The store node id a caller's certificate names, if it is a store peer's.
fn peer_id(who: &Principal) -> Option<u64> {
    match who {
        Principal::User(id) if id.groups.iter().any(|g| g == strake_store::PEER_GROUP) => id
            .user
            .strip_prefix("strake-store-")
            .and_then(|n| n.parse().ok()),
        _ => None,
    }
}

/// Admins, or the peer `id` itself.
fn admin_or_self(who: &Principal, id: u64, what: &str) -> Result<(), ApiError> {
    if who.is_admin() || peer_id(who) == Some(id) {
        return Ok(());
    }
    Err(ApiError::Forbidden(format!(
        "only admins and the store node itself ({}) may {what}",
        peer_name(id)
    )))
}

fn store_error(err: StoreError) -> ApiError {
    match err {
        StoreError::Membership { .. } => ApiError::Conflict {
            resource: strake_apimachinery::GroupResource::new("strake.dev", "storemembers"),
            name: String::new(),
            message: err.to_string(),
        },
        StoreError::InvalidPeerAddr { .. } => ApiError::BadRequest(err.to_string()),
        StoreError::LearnerLagging { .. } => ApiError::Timeout(err.to_string()),
        StoreError::NotLeader { .. }
        | StoreError::NoQuorum(_)
        | StoreError::LeaderUnreachable { .. }
        | StoreError::Stopped => ApiError::ServiceUnavailable(err.to_string()),
        other => ApiError::Internal(other.to_string()),
    }
}

fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(IntoResponse::into_response)
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    json_response(status, &serde_json::to_value(value).unwrap_or_default())
}

pub async fn members(
    State(app): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
) -> Response {
    respond(
        async {
            if !(who.is_admin() || peer_id(&who).is_some()) {
                return Err(ApiError::Forbidden(
                    "only admins and store peers may list the store's members".into(),
                ));
            }
            Ok(json(StatusCode::OK, &member_list(&app.store)))
        }
        .await,
    )
}

fn read_shared_files(dir: &Path) -> Result<BTreeMap<String, String>, ApiError> {
    use base64::Engine as _;
    Ok(read_pki_files(dir, SHARED_FILES)
        .map_err(ApiError::Internal)?
        .into_iter()
        .map(|(name, bytes)| {
            (
                name,
                base64::engine::general_purpose::STANDARD.encode(bytes),
            )
        })
        .collect())
}

pub async fn join(
    State(app): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    body: Body,
) -> Response {
    respond(async {
        let bytes = read_body(body).await?;
        let req: JoinRequest = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::BadRequest(format!("invalid store join request: {e}")))?;
        admin_or_self(&who, req.id, "join a store node")?;
        tracing::info!(id = req.id, addr = %req.peer_address, by = %who.name(), "a store node joins");
        app.store
            .join_member(req.id, req.peer_address.clone())
            .await
            .map_err(store_error)?;
        tracing::info!(id = req.id, "the store node is a voter");
        let files = read_shared_files(&app.pki_dir)?;
        Ok(json(
            StatusCode::OK,
            &JoinAnswer {
                members: member_list(&app.store),
                files,
            },
        ))
    }
    .await)
}

pub async fn remove(
    State(app): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    respond(
        async {
            let id: u64 = id
                .parse()
                .map_err(|_| ApiError::BadRequest(format!("{id:?} is not a store node id")))?;
            admin_or_self(&who, id, "remove a store node")?;
            let members = app.store.members();
            if !members.voters.contains_key(&id) && !members.learners.contains_key(&id) {
                return Err(ApiError::NotFound {
                    resource: strake_apimachinery::GroupResource::new("strake.dev", "storemembers"),
                    name: id.to_string(),
                });
            }
            tracing::info!(id, by = %who.name(), "removing a store node");
            app.store.remove(id).await.map_err(store_error)?;
            Ok(json(StatusCode::OK, &member_list(&app.store)))
        }
        .await,
    )
}

/// The header carrying a streamed snapshot's revision.
pub const SNAPSHOT_REVISION: &str = "x-strake-store-revision";

pub async fn snapshot(
    State(app): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
) -> Response {
    respond(async {
        if !who.is_admin() {
            return Err(ApiError::Forbidden(
                "only admins may take a snapshot of the store".into(),
            ));
        }
        let dir = app.pki_dir.with_file_name("backups");
        std::fs::create_dir_all(&dir)
            .map_err(|e| ApiError::Internal(format!("creating {}: {e}", dir.display())))?;
        let path = dir.join(format!(".streaming-{}", uuid::Uuid::new_v4()));
        let info = take_backup(&app.store, &app.pki_dir, &path)
            .await
            .map_err(|e| match e {
                BackupError::Store(e) => store_error(e),
                files => ApiError::Internal(files.to_string()),
            });
        let bytes = info
            .as_ref()
            .ok()
            .map(|_| std::fs::read(&path).map_err(|e| ApiError::Internal(e.to_string())));
        let _ = std::fs::remove_file(&path);
        let info = info?;
        let bytes = bytes.unwrap_or_else(|| Ok(Vec::new()))?;
        tracing::info!(revision = info.revision, keys = info.keys, by = %who.name(), "streamed a store snapshot");
        Ok((
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (
                    header::HeaderName::from_static(SNAPSHOT_REVISION),
                    info.revision.to_string(),
                ),
            ],
            bytes,
        )
            .into_response())
    }
    .await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use strake_pki::Identity;

    fn user(name: &str, groups: &[&str]) -> Principal {
        Principal::User(Identity {
            user: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        })
    }

    #[test]
    fn peers_act_only_for_themselves_and_admins_for_anyone() {
        let peer = user("strake-store-7", &[strake_store::PEER_GROUP]);
        assert_eq!(peer_id(&peer), Some(7));
        assert!(admin_or_self(&peer, 7, "x").is_ok());
        assert!(admin_or_self(&peer, 8, "x").is_err());
        // The name alone is not enough: the group says it is a peer certificate.
        let impostor = user("strake-store-7", &["system:authenticated"]);
        assert_eq!(peer_id(&impostor), None);
        assert!(admin_or_self(&impostor, 7, "x").is_err());
        let admin = user("strake-admin", &["system:masters"]);
        assert!(admin_or_self(&admin, 8, "x").is_ok());
    }
}
