//! Service-account tokens at the API: bearer-token authentication (signature, times and
//! audience by `strake-tokens`, then the live objects: the account and whatever the token is
//! bound to must still exist with the uids the token names, so a deleted pod's token stops
//! working at once), the TokenRequest subresource (`serviceaccounts/<name>/token`), and
//! TokenReview's answer.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::response::Response;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use strake_apimachinery::user::{self, UserInfo};
use strake_apimachinery::{ApiError, ResourceDef};
use strake_tokens::{Binding, Claims, ISSUER, ObjectRef};

use crate::AppState;
use crate::render::json_response;

/// Tokens asked for with exactly this lifetime are the ones the ServiceAccount admission
/// plugin projects into pods (upstream's 3607 s); like upstream's
/// `--service-account-extend-token-expiration`, they are issued for a year, with a
/// `warnafter` at the hour, so a node that has not refreshed one yet does not cut its pod off.
const PROJECTED: i64 = 3607;
const EXTENDED: i64 = 365 * 24 * 3600;
const DEFAULT_SECONDS: i64 = 3600;
const MIN_SECONDS: i64 = 600;
const MAX_SECONDS: i64 = 2 * EXTENDED;

fn def(app: &AppState, plural: &str) -> Result<std::sync::Arc<ResourceDef>, ApiError> {
    app.registry
        .table()
        .snapshot()
        .lookup("", "v1", plural)
        .cloned()
        .ok_or(ApiError::NoRoute)
}

/// The object's uid, and whether it is being deleted; None when it does not exist.
async fn live(
    app: &AppState,
    plural: &str,
    ns: Option<&str>,
    name: &str,
) -> Result<Option<(String, bool)>, ApiError> {
    let def = def(app, plural)?;
    match app.registry.get(&def, ns, name).await {
        Ok(v) => Ok(Some((
            v["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            !v["metadata"]["deletionTimestamp"].is_null(),
        ))),
        Err(ApiError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether the objects a token names still exist as it names them.
async fn still_bound(app: &AppState, k: &Binding) -> Result<(), String> {
    let ns = Some(k.namespace.as_str());
    let check = |what: &str, got: Option<(String, bool)>, want: &ObjectRef| match got {
        None => Err(format!("{what} {:?} does not exist any more", want.name)),
        Some((uid, _)) if uid != want.uid => Err(format!(
            "{what} {:?} was replaced (uid {uid}, not {})",
            want.name, want.uid
        )),
        Some((_, true)) if what == "pod" => Err(format!("pod {:?} is being deleted", want.name)),
        Some(_) => Ok(()),
    };
    let err = |e: ApiError| e.to_string();
    let sa = &k.serviceaccount;
    check(
        "service account",
        live(app, "serviceaccounts", ns, &sa.name)
            .await
            .map_err(err)?,
        sa,
    )?;
    if let Some(p) = &k.pod {
        check("pod", live(app, "pods", ns, &p.name).await.map_err(err)?, p)?;
    }
    if let Some(s) = &k.secret {
        check(
            "secret",
            live(app, "secrets", ns, &s.name).await.map_err(err)?,
            s,
        )?;
    }
    if let Some(n) = &k.node {
        check(
            "node",
            live(app, "nodes", None, &n.name).await.map_err(err)?,
            n,
        )?;
    }
    Ok(())
}

fn now() -> i64 {
    Timestamp::now().as_second()
}

/// The user a valid token stands for.
fn user_of(c: &Claims) -> UserInfo {
    let k = &c.kubernetes;
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    extra.insert(
        "authentication.kubernetes.io/credential-id".into(),
        vec![format!("JTI={}", c.jti)],
    );
    if let Some(p) = &k.pod {
        extra.insert(
            "authentication.kubernetes.io/pod-name".into(),
            vec![p.name.clone()],
        );
        extra.insert(
            "authentication.kubernetes.io/pod-uid".into(),
            vec![p.uid.clone()],
        );
    }
    if let Some(n) = &k.node {
        extra.insert(
            "authentication.kubernetes.io/node-name".into(),
            vec![n.name.clone()],
        );
        extra.insert(
            "authentication.kubernetes.io/node-uid".into(),
            vec![n.uid.clone()],
        );
    }
    UserInfo {
        name: user::service_account_user(&k.namespace, &k.serviceaccount.name),
        uid: k.serviceaccount.uid.clone(),
        groups: user::service_account_groups(&k.namespace),
        extra,
    }
}

/// Authenticates a bearer token as a service account, for `audiences`.
pub async fn authenticate(
    app: &AppState,
    token: &str,
    audiences: &[&str],
) -> Result<(UserInfo, Vec<String>), String> {
    if !strake_tokens::looks_like_jwt(token) {
        return Err("the token is not a service-account token".into());
    }
    let claims = app
        .tokens
        .verify(token, now(), audiences)
        .map_err(|e| e.to_string())?;
    if user::service_account_user(
        &claims.kubernetes.namespace,
        &claims.kubernetes.serviceaccount.name,
    ) != claims.sub
    {
        return Err("the token's subject is not its service account".into());
    }
    still_bound(app, &claims.kubernetes).await?;
    let aud = claims.aud.clone();
    Ok((user_of(&claims), aud))
}

/// TokenReview: whether `spec.token` is valid for `spec.audiences` (the API's by default).
pub async fn review(app: &AppState, spec: &Value) -> Value {
    let token = spec["token"].as_str().unwrap_or_default();
    let wanted: Vec<String> = spec["audiences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(String::from))
        .collect();
    let wanted: Vec<&str> = if wanted.is_empty() {
        vec![ISSUER]
    } else {
        wanted.iter().map(String::as_str).collect()
    };
    if let Some(p) = crate::auth::Principal::from_token(app, token) {
        let u = p.user_info();
        return json!({"authenticated": true, "user": {"username": u.name, "groups": u.groups},
            "audiences": wanted});
    }
    if let Some(o) = &app.oidc
        && o.claims_issuer(token)
    {
        return match o.authenticate(token).await {
            Ok(u) => json!({"authenticated": true, "audiences": wanted,
                "user": {"username": u.name, "groups": u.groups}}),
            Err(e) => json!({"authenticated": false, "error": e}),
        };
    }
    match authenticate(app, token, &wanted).await {
        Ok((u, aud)) => {
            let audiences: Vec<&str> = wanted
                .iter()
                .copied()
                .filter(|w| aud.iter().any(|a| a == w))
                .collect();
            json!({"authenticated": true, "audiences": audiences,
                "user": {"username": u.name, "uid": u.uid, "groups": u.groups, "extra": u.extra}})
        }
        Err(e) => json!({"authenticated": false, "error": e}),
    }
}

/// `POST serviceaccounts/<name>/token`: signs a token for the account, bound to the object
/// `spec.boundObjectRef` names (a Pod, Secret or Node, which must exist).
pub async fn request(
    app: &AppState,
    ns: &str,
    name: &str,
    body: &[u8],
    dry_run: bool,
) -> Result<Response, ApiError> {
    let (req, _) = strake_apimachinery::decode::parse_json(body)?;
    if !req["kind"].is_null() && req["kind"] != "TokenRequest" {
        return Err(ApiError::BadRequest(format!(
            "the body must be a TokenRequest, not {}",
            req["kind"]
        )));
    }
    let spec = &req["spec"];
    let seconds = match &spec["expirationSeconds"] {
        Value::Null => DEFAULT_SECONDS,
        v => v.as_i64().ok_or_else(|| {
            ApiError::BadRequest("spec.expirationSeconds must be an integer".into())
        })?,
    };
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&seconds) {
        return Err(ApiError::Invalid {
            kind: "TokenRequest.authentication.k8s.io".into(),
            group: "authentication.k8s.io".into(),
            name: name.into(),
            causes: vec![strake_apimachinery::FieldError::invalid(
                "spec.expirationSeconds",
                format!(
                    "may not specify a duration less than {MIN_SECONDS} seconds or more than {MAX_SECONDS} seconds"
                ),
            )],
        });
    }
    let audiences: Vec<String> = match spec["audiences"].as_array() {
        Some(a) if !a.is_empty() => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(String::from)
                    .ok_or_else(|| ApiError::BadRequest("spec.audiences must be strings".into()))
            })
            .collect::<Result<_, _>>()?,
        _ => vec![ISSUER.to_string()],
    };
    let sa = live(app, "serviceaccounts", Some(ns), name)
        .await?
        .ok_or_else(|| {
            def(app, "serviceaccounts").map_or(ApiError::NoRoute, |d| d.not_found(name))
        })?;
    let mut binding = Binding {
        namespace: ns.into(),
        serviceaccount: ObjectRef {
            name: name.into(),
            uid: sa.0,
        },
        ..Default::default()
    };
    let bound = &spec["boundObjectRef"];
    let mut extended = false;
    if bound.is_object() {
        let kind = bound["kind"].as_str().unwrap_or_default();
        let obj_name = bound["name"].as_str().unwrap_or_default();
        let (plural, obj_ns) = match kind {
            "Pod" => ("pods", Some(ns)),
            "Secret" => ("secrets", Some(ns)),
            "Node" => ("nodes", None),
            other => {
                return Err(ApiError::BadRequest(format!(
                    "spec.boundObjectRef.kind {other:?} is not supported: a token may be bound to a Pod, a Secret or a Node"
                )));
            }
        };
        let (uid, deleting) = live(app, plural, obj_ns, obj_name)
            .await?
            .ok_or_else(|| def(app, plural).map_or(ApiError::NoRoute, |d| d.not_found(obj_name)))?;
        if let Some(want) = bound["uid"].as_str().filter(|u| !u.is_empty())
            && want != uid
        {
            return Err(ApiError::Conflict {
                resource: strake_apimachinery::GroupResource::new("", plural),
                name: obj_name.into(),
                message: format!("the {kind} {obj_name:?} has uid {uid}, not {want}"),
            });
        }
        if deleting && kind == "Pod" {
            return Err(ApiError::Forbidden(format!(
                "cannot bind a token to pod {obj_name:?}: it is being deleted"
            )));
        }
        let r = Some(ObjectRef {
            name: obj_name.into(),
            uid,
        });
        match kind {
            "Pod" => {
                binding.pod = r;
                extended = seconds == PROJECTED;
            }
            "Secret" => binding.secret = r,
            _ => binding.node = r,
        }
    }
    let now = now();
    let lifetime = if extended {
        binding.warnafter = Some(now + PROJECTED);
        EXTENDED
    } else {
        seconds
    };
    let claims = Claims {
        iss: ISSUER.into(),
        sub: user::service_account_user(ns, name),
        aud: audiences.clone(),
        exp: now + lifetime,
        iat: now,
        nbf: now,
        jti: uuid::Uuid::new_v4().to_string(),
        kubernetes: binding,
    };
    let token = if dry_run {
        String::new()
    } else {
        app.tokens.issue(&claims)
    };
    let expires = Timestamp::from_second(claims.exp)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    let mut out = req.clone();
    out["apiVersion"] = "authentication.k8s.io/v1".into();
    out["kind"] = "TokenRequest".into();
    out["metadata"]["name"] = name.into();
    out["metadata"]["namespace"] = ns.into();
    out["metadata"]["creationTimestamp"] = Value::Null;
    out["spec"]["audiences"] = json!(audiences);
    out["spec"]["expirationSeconds"] = json!(seconds);
    out["status"] = json!({"token": token, "expirationTimestamp": expires});
    Ok(json_response(StatusCode::CREATED, &out))
}
