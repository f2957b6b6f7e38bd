//! Authentication (client certificates, bootstrap tokens) and authorization for every request.
//! Full RBAC is a later step; today: system:masters and system:nodes may use the API, bootstrap
//! token holders may only fetch credentials, anonymous callers only see public endpoints.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use strake_pki::Identity;

use crate::AppState;
use strake_apimachinery::ApiError;

/// Facts about the TLS connection a request arrived on.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The identity in a client certificate that verified against the cluster CA.
    pub cert_identity: Option<Identity>,
}

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    Anonymous,
    /// A holder of the cluster's bootstrap token.
    Bootstrap {
        token_id: String,
    },
    User(Identity),
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        matches!(self, Principal::User(id) if id.groups.iter().any(|g| g == "system:masters"))
    }
    pub fn is_node(&self) -> bool {
        matches!(self, Principal::User(id) if id.groups.iter().any(|g| g == "system:nodes"))
    }
    pub fn groups(&self) -> Vec<String> {
        match self {
            Principal::Anonymous => vec!["system:unauthenticated".into()],
            Principal::Bootstrap { .. } => {
                vec!["system:bootstrappers".into(), "system:authenticated".into()]
            }
            Principal::User(id) => id
                .groups
                .iter()
                .cloned()
                .chain(["system:authenticated".to_string()])
                .collect(),
        }
    }
    /// The principal a bearer token stands for, if it is valid.
    pub fn from_token(app: &AppState, token: &str) -> Option<Principal> {
        match &app.token {
            Some(t) if t.matches(token) => Some(Principal::Bootstrap {
                token_id: t.id().to_string(),
            }),
            _ => None,
        }
    }
    pub fn name(&self) -> String {
        match self {
            Principal::Anonymous => "system:anonymous".into(),
            Principal::Bootstrap { token_id } => format!("system:bootstrap:{token_id}"),
            Principal::User(id) => id.user.clone(),
        }
    }
}

const PUBLIC: &[&str] = &[
    "/version",
    "/version/",
    "/healthz",
    "/livez",
    "/readyz",
    "/strake/v1/cluster-info",
];

/// Decides whether `who` may call `path`.
pub fn authorize(who: &Principal, path: &str) -> Result<(), ApiError> {
    if PUBLIC.contains(&path) {
        return Ok(());
    }
    let credential_path = path.starts_with("/strake/v1/");
    match who {
        Principal::Anonymous => Err(ApiError::Unauthorized),
        Principal::Bootstrap { .. } if credential_path => Ok(()),
        Principal::Bootstrap { .. } => Err(ApiError::Forbidden(format!(
            "{} is only allowed to request credentials, not {path}",
            who.name()
        ))),
        p if p.is_admin() || p.is_node() => Ok(()),
        p => Err(ApiError::Forbidden(format!(
            "User \"{}\" cannot access {path}: no role grants it",
            p.name()
        ))),
    }
}

/// Middleware: works out the principal, authorizes, and stores the principal in the request.
pub async fn middleware(
    State(app): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let conn = req.extensions().get::<ConnInfo>().cloned();
    let peer = conn.as_ref().map(|c| c.peer);
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .map(str::to_string);
    let who = match (conn.and_then(|c| c.cert_identity), bearer) {
        (Some(id), _) => Principal::User(id),
        (None, Some(token)) => match &app.token {
            Some(t) if t.matches(&token) => Principal::Bootstrap {
                token_id: t.id().to_string(),
            },
            _ => return ApiError::Unauthorized.into_response(),
        },
        (None, None) => Principal::Anonymous,
    };
    if let Err(e) = authorize(&who, req.uri().path()) {
        tracing::debug!(who = %who.name(), ?peer, path = %req.uri().path(), "denied");
        return e.into_response();
    }
    req.extensions_mut().insert(who);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(groups: &[&str]) -> Principal {
        Principal::User(Identity {
            user: "u".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        })
    }

    #[test]
    fn rules() {
        assert!(authorize(&Principal::Anonymous, "/version").is_ok());
        assert!(matches!(
            authorize(&Principal::Anonymous, "/api/v1/pods"),
            Err(ApiError::Unauthorized)
        ));
        let boot = Principal::Bootstrap {
            token_id: "abcdef".into(),
        };
        assert!(authorize(&boot, "/strake/v1/kubeconfig").is_ok());
        assert!(matches!(
            authorize(&boot, "/api/v1/pods"),
            Err(ApiError::Forbidden(_))
        ));
        assert!(authorize(&user(&["system:masters"]), "/api/v1/pods").is_ok());
        assert!(authorize(&user(&["system:nodes"]), "/api/v1/nodes").is_ok());
        assert!(matches!(
            authorize(&user(&["devs"]), "/api/v1/pods"),
            Err(ApiError::Forbidden(_))
        ));
    }
}
