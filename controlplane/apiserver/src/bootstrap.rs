//! Credential endpoints under `/strake/v1/`: token-signed cluster-info for discovery, an admin
//! kubeconfig for bootstrap-token holders, and node credentials for agents joining with the token.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use strake_pki::Credentials;

use crate::AppState;
use crate::auth::Principal;
use crate::dispatch::read_body;
use crate::render::json_response;
use strake_apimachinery::ApiError;
use strake_apimachinery::validation::is_dns1123_subdomain;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeCredentialRequest {
    pub node_name: String,
    #[serde(default)]
    pub addresses: Vec<std::net::IpAddr>,
}

pub async fn cluster_info(State(app): State<Arc<AppState>>) -> Response {
    match &app.token {
        Some(t) => json_response(
            StatusCode::OK,
            &serde_json::to_value(t.sign(&app.ca.ca.cert_pem)).unwrap_or_default(),
        ),
        None => ApiError::NotFound {
            resource: strake_apimachinery::GroupResource::new("", "cluster-info"),
            name: "strake".into(),
        }
        .into_response(),
    }
}

pub async fn admin_kubeconfig(
    State(app): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
) -> Response {
    if !(matches!(who, Principal::Bootstrap { .. }) || who.is_admin()) {
        return ApiError::Forbidden(
            "only bootstrap token holders and admins may mint admin credentials".into(),
        )
        .into_response();
    }
    let res = app.ca.issue_client(
        "strake-admin",
        &["system:masters"],
        time::Duration::days(365),
    );
    match res {
        Ok(c) => {
            tracing::info!(by = %who.name(), "issued admin credentials");
            let creds = Credentials {
                server: app.client_endpoint.clone(),
                ca_pem: app.ca.ca.cert_pem.clone(),
                cert_pem: c.cert_pem,
                key_pem: c.key_pem,
                serving_cert_pem: None,
                serving_key_pem: None,
            };
            json_response(
                StatusCode::OK,
                &serde_json::to_value(creds).unwrap_or_default(),
            )
        }
        Err(e) => ApiError::Internal(format!("issuing admin certificate: {e}")).into_response(),
    }
}

pub async fn node_credentials(
    State(app): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    body: Body,
) -> Response {
    let res = async {
        if !(matches!(who, Principal::Bootstrap { .. }) || who.is_admin()) {
            return Err(ApiError::Forbidden(
                "node credentials need the bootstrap token".into(),
            ));
        }
        let bytes = read_body(body).await?;
        let req: NodeCredentialRequest = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::BadRequest(format!("invalid node credential request: {e}")))?;
        if !is_dns1123_subdomain(&req.node_name) {
            return Err(ApiError::BadRequest(format!(
                "invalid node name {:?}: must be an RFC 1123 subdomain",
                req.node_name
            )));
        }
        let user = format!("system:node:{}", req.node_name);
        let client = app
            .ca
            .issue_client(&user, &["system:nodes"], time::Duration::days(365))
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let mut sans: Vec<String> = req.addresses.iter().map(ToString::to_string).collect();
        sans.push(req.node_name.clone());
        let serving = app
            .ca
            .issue_server(&req.node_name, &sans)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        tracing::info!(node = %req.node_name, by = %who.name(), "issued node credentials");
        Ok(Credentials {
            server: app.client_endpoint.clone(),
            ca_pem: app.ca.ca.cert_pem.clone(),
            cert_pem: client.cert_pem,
            key_pem: client.key_pem,
            serving_cert_pem: Some(serving.cert_pem),
            serving_key_pem: Some(serving.key_pem),
        })
    }
    .await;
    match res {
        Ok(c) => json_response(StatusCode::OK, &serde_json::to_value(c).unwrap_or_default()),
        Err(e) => e.into_response(),
    }
}

pub async fn healthz() -> Response {
    (StatusCode::OK, "ok").into_response()
}

pub async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    match app.registry.store().get(b"/registry/health").await {
        Ok(_) => (StatusCode::OK, "ok").into_response(),
        Err(e) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "store not ready", "error": e.to_string()}),
        ),
    }
}
