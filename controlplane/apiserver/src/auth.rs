//! Authentication, impersonation and authorization of every request, in upstream's order:
//! the credentials (a client certificate that verified against the cluster CA, the bootstrap
//! token, or none) give a user; `Impersonate-*` headers may swap it for another, each part
//! authorized with the `impersonate` verb; then the request, parsed once into its
//! [`Target`], is put to the authorizer chain (system:masters, the node authorizer, RBAC).
//! A refusal is a 403 worded as upstream's. The target and the user travel on in the
//! request's extensions, and the user also in a task-local ([`caller`]) for the writes'
//! admission plugins.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use strake_apimachinery::request::{self, Target};
use strake_apimachinery::user::{self, UserInfo};
use strake_pki::Identity;
use strake_rbac::{Attributes, Resource};

use crate::AppState;
use strake_apimachinery::ApiError;

/// Facts about the TLS connection a request arrived on.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The identity in a client certificate that verified against the cluster CA.
    pub cert_identity: Option<Identity>,
}

/// Who the credentials say is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    Anonymous,
    /// A holder of the cluster's bootstrap token.
    Bootstrap {
        token_id: String,
    },
    User(Identity),
    /// A service account, by a token this server signed.
    ServiceAccount(UserInfo),
    /// A user of the trusted OpenID Connect provider, by its ID token.
    Oidc(UserInfo),
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        matches!(self, Principal::User(id) if id.groups.iter().any(|g| g == user::MASTERS))
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

    /// The user, with the groups every authenticated (or anonymous) caller is in.
    pub fn user_info(&self) -> UserInfo {
        match self {
            Principal::Anonymous => UserInfo::anonymous(),
            Principal::Bootstrap { token_id } => UserInfo::new(
                format!("system:bootstrap:{token_id}"),
                &[strake_rbac::bootstrap::BOOTSTRAPPERS, user::AUTHENTICATED],
            ),
            Principal::ServiceAccount(u) | Principal::Oidc(u) => u.clone(),
            Principal::User(id) => {
                let mut groups = id.groups.clone();
                if !groups.iter().any(|g| g == user::AUTHENTICATED) {
                    groups.push(user::AUTHENTICATED.into());
                }
                UserInfo {
                    name: id.user.clone(),
                    groups,
                    ..Default::default()
                }
            }
        }
    }

    pub fn name(&self) -> String {
        self.user_info().name
    }
}

tokio::task_local! {
    static CALLER: Arc<UserInfo>;
}

/// The user the request being served acts as (None outside a request: the server's own work).
pub fn caller() -> Option<UserInfo> {
    CALLER.try_with(|u| (**u).clone()).ok()
}

/// The attributes the authorizer is asked about a request.
fn attributes<'a>(
    u: &'a UserInfo,
    target: &'a Target,
    method: &'a str,
    path: &'a str,
) -> Attributes<'a> {
    match target {
        Target::Resource(info) => {
            // A namespace is its own namespace: a RoleBinding there may grant reading it.
            let namespace = match (&info.namespace, info.group.as_str(), info.resource.as_str()) {
                (Some(ns), _, _) => ns.as_str(),
                (None, "", "namespaces") => info.name.as_deref().unwrap_or_default(),
                (None, _, _) => "",
            };
            Attributes::resource(
                u,
                info.verb.as_str(),
                Resource {
                    group: &info.group,
                    resource: &info.resource,
                    subresource: info.subresource.as_deref().unwrap_or_default(),
                    namespace,
                    name: info.name.as_deref().unwrap_or_default(),
                },
            )
        }
        Target::Discovery { .. } | Target::NonResource(_) => {
            Attributes::non_resource(u, method, path)
        }
    }
}

/// Upstream's 403 for a refused resource request: `pods "x" is forbidden: User ...`.
pub fn forbidden(a: &Attributes<'_>, reason: &str) -> ApiError {
    let why = strake_rbac::forbidden_message(a, reason);
    ApiError::Forbidden(match &a.resource {
        Some(r) if !r.name.is_empty() => format!("{} {:?} is forbidden: {why}", r.resource, r.name),
        Some(r) => format!("{} is forbidden: {why}", r.resource),
        None => format!("forbidden: {why}"),
    })
}

/// Authorizes `a`, or says why not.
pub fn check(app: &AppState, a: &Attributes<'_>) -> Result<(), ApiError> {
    let d = app.authz.authorize(a);
    if d.allowed() {
        Ok(())
    } else {
        Err(forbidden(a, d.reason()))
    }
}

/// The user the `Impersonate-*` headers ask for, once `actor` may impersonate each part of
/// it; None without such headers.
fn impersonate(
    app: &AppState,
    actor: &UserInfo,
    headers: &HeaderMap,
) -> Result<Option<UserInfo>, ApiError> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect()
    };
    let name = values("impersonate-user").into_iter().next();
    let groups = values("impersonate-group");
    let uid = values("impersonate-uid").into_iter().next();
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in headers {
        if let Some(key) = k.as_str().strip_prefix("impersonate-extra-")
            && let Ok(v) = v.to_str()
        {
            let key = percent_decode(key);
            extra.entry(key).or_default().push(v.to_string());
        }
    }
    let Some(name) = name else {
        if groups.is_empty() && uid.is_none() && extra.is_empty() {
            return Ok(None);
        }
        return Err(ApiError::BadRequest(
            "impersonating groups, a uid or extra fields needs Impersonate-User too".into(),
        ));
    };
    let may = |resource: &str, group: &str, namespace: &str, name: &str| {
        let (plural, sub) = resource.split_once('/').unwrap_or((resource, ""));
        let a = Attributes::resource(
            actor,
            "impersonate",
            Resource {
                group,
                resource: plural,
                subresource: sub,
                namespace,
                name,
            },
        );
        check(app, &a)
    };
    let mut target = UserInfo {
        name: name.clone(),
        uid: uid.clone().unwrap_or_default(),
        groups: groups.clone(),
        extra: extra.clone(),
    };
    match target
        .service_account()
        .map(|(ns, n)| (ns.to_string(), n.to_string()))
    {
        Some((ns, sa)) => {
            may("serviceaccounts", "", &ns, &sa)?;
            if groups.is_empty() {
                target.groups = user::service_account_groups(&ns);
            }
        }
        None => may("users", "", "", &name)?,
    }
    for g in &groups {
        may("groups", "", "", g)?;
    }
    if let Some(uid) = &uid {
        may("uids", "authentication.k8s.io", "", uid)?;
    }
    for (key, vals) in &extra {
        for v in vals {
            may(&format!("userextras/{key}"), "authentication.k8s.io", "", v)?;
        }
    }
    let everyone = if name == user::ANONYMOUS {
        user::UNAUTHENTICATED
    } else {
        user::AUTHENTICATED
    };
    if !target.in_group(everyone) {
        target.groups.push(everyone.into());
    }
    Ok(Some(target))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            s.get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok()),
        ) {
            (b'%', Some(x)) => {
                out.push(x);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the query asks for a watch (`watch=true` or `watch=1`).
fn wants_watch(query: Option<&str>) -> bool {
    query.is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"))
}

/// Who a bearer token stands for: the bootstrap token, an ID token of the trusted OpenID
/// Connect provider, or a service-account token this server signed.
pub async fn authenticate_token(app: &AppState, token: &str) -> Result<Principal, String> {
    if let Some(p) = Principal::from_token(app, token) {
        return Ok(p);
    }
    if let Some(o) = &app.oidc
        && o.claims_issuer(token)
    {
        return o.authenticate(token).await.map(Principal::Oidc);
    }
    crate::tokens::authenticate(app, token, &[strake_tokens::ISSUER])
        .await
        .map(|(u, _)| Principal::ServiceAccount(u))
}

/// Middleware: authenticates, applies impersonation, parses and authorizes the request, and
/// hands the principal, the user and the target on.
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
        (None, Some(token)) => match authenticate_token(&app, &token).await {
            Ok(p) => p,
            Err(why) => {
                tracing::debug!(?peer, %why, "a bearer token was refused");
                return ApiError::Unauthorized.into_response();
            }
        },
        (None, None) => Principal::Anonymous,
    };
    let actor = who.user_info();
    let user = match impersonate(&app, &actor, req.headers()) {
        Ok(Some(u)) => {
            tracing::debug!(by = %actor.name, to = %u.name, "impersonating");
            u
        }
        Ok(None) => actor.clone(),
        Err(e) => return e.into_response(),
    };
    let watch = wants_watch(req.uri().query());
    let target = match request::parse(req.method(), req.uri().path(), watch) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let method = req.method().as_str().to_ascii_lowercase();
    let path = req.uri().path().to_string();
    let attrs = attributes(&user, &target, &method, &path);
    let mut entry = app.audit.as_ref().and_then(|log| {
        let r = crate::audit::Request {
            user: &user,
            verb: attrs.verb,
            target: &target,
            path: &path,
        };
        let ua = req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok());
        let uri = req.uri().to_string();
        crate::audit::Entry::begin(
            log.policy.level(&r),
            &r,
            &actor,
            &uri,
            peer.map(|p| p.ip()),
            ua,
        )
    });
    let mut decision = app.authz.authorize(&attrs);
    if !decision.allowed()
        && let (Some(node), Some(r)) = (user.node_name(), &attrs.resource)
        && r.group.is_empty()
        && matches!(
            (r.resource, r.subresource),
            ("secrets" | "configmaps" | "persistentvolumeclaims", "")
                | ("serviceaccounts", "token")
        )
    {
        // The graph may lag the node's own view of its pods: decide again on the store's.
        match crate::authz::refresh_node(&app.registry, &app.authz, node).await {
            Ok(()) => decision = app.authz.authorize(&attrs),
            Err(e) => tracing::warn!(node, error = %e, "cannot refresh the node graph"),
        }
    }
    if let Some(e) = &mut entry {
        e.decision(decision.allowed(), decision.reason());
    }
    if !decision.allowed() {
        tracing::debug!(user = %user.name, ?peer, %path, "denied");
        let resp = forbidden(&attrs, decision.reason()).into_response();
        return audited(&app, entry, resp, false).await;
    }
    let follow = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "follow=true" || p == "follow=1"));
    let admitted = match app.gate.admit(&target, &user.name, follow) {
        Ok(a) => a,
        Err(refused) => {
            tracing::debug!(user = %user.name, %path, "over the limits");
            return audited(&app, entry, refused.response(), false).await;
        }
    };
    // The request's object, for the Request and RequestResponse audit levels.
    let streaming = !matches!(admitted, crate::limits::Admitted::InFlight(_));
    if let Some(e) = &mut entry
        && e.level >= crate::audit::Level::Request
        && !streaming
        && req.method() != axum::http::Method::GET
    {
        let (parts, body) = req.into_parts();
        let bytes = match crate::dispatch::read_body(body).await {
            Ok(b) => b,
            Err(err) => return audited(&app, entry, err.into_response(), false).await,
        };
        e.request_object(&bytes);
        req = Request::from_parts(parts, axum::body::Body::from(bytes));
    }
    req.extensions_mut().insert(who);
    req.extensions_mut().insert(target);
    let user = Arc::new(user);
    req.extensions_mut().insert(user.clone());
    let resp = CALLER.scope(user, next.run(req)).await;
    let resp = audited(&app, entry, resp, !streaming).await;
    match admitted {
        crate::limits::Admitted::Watch(slot) => crate::limits::hold_until_done(resp, slot),
        _ => resp,
    }
}

/// Writes the request's audit event (if it has one) with the response's status, and its
/// object at RequestResponse when `whole` (not a stream) and JSON.
async fn audited(
    app: &AppState,
    entry: Option<crate::audit::Entry>,
    resp: Response,
    whole: bool,
) -> Response {
    let (Some(entry), Some(log)) = (entry, app.audit.as_ref()) else {
        return resp;
    };
    let code = resp.status().as_u16();
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if entry.level < crate::audit::Level::RequestResponse || !whole || !json {
        entry.finish(log, code, None);
        return resp;
    }
    let (parts, body) = resp.into_parts();
    match http_body_util::BodyExt::collect(body).await {
        Ok(c) => {
            let bytes = c.to_bytes();
            entry.finish(log, code, Some(&bytes));
            Response::from_parts(parts, axum::body::Body::from(bytes))
        }
        Err(e) => {
            entry.finish(log, code, None);
            ApiError::Internal(format!("reading the response: {e}")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_credentials_give_the_user_and_its_groups() {
        assert_eq!(Principal::Anonymous.user_info(), UserInfo::anonymous());
        let boot = Principal::Bootstrap {
            token_id: "abcdef".into(),
        }
        .user_info();
        assert_eq!(boot.name, "system:bootstrap:abcdef");
        assert!(boot.in_group("system:bootstrappers") && boot.in_group(user::AUTHENTICATED));
        let node = Principal::User(Identity {
            user: "system:node:w1".into(),
            groups: vec!["system:nodes".into()],
        })
        .user_info();
        assert_eq!(node.node_name(), Some("w1"));
        assert!(node.in_group(user::AUTHENTICATED));
    }

    #[test]
    fn watch_queries_are_recognized() {
        assert!(wants_watch(Some("watch=true&resourceVersion=1")));
        assert!(wants_watch(Some("labelSelector=a&watch=1")));
        assert!(!wants_watch(Some("watch=false")));
        assert!(!wants_watch(None));
        assert_eq!(percent_decode("scopes%2Fa"), "scopes/a");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
