//! The URL space: a few fixed non-resource paths, and everything under `/api` and `/apis`
//! handed to the dispatcher, which parses it once into a request-info value.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{any, get, post};
use serde_json::Value;
use strake_apimachinery::{ApiError, ResourceDef};

use crate::render::{error_response, json_response};
use crate::{AppState, auth, bootstrap, discovery, dispatch, openapi, storeadmin};

async fn version() -> Response {
    json_response(StatusCode::OK, &discovery::version())
}

/// A custom resource's schema, as its CRD gives it.
fn crd_schema(d: &ResourceDef) -> Option<Value> {
    d.crd.as_ref()?;
    d.strategy.schema()
}

/// A resource's component schemas: generated once per built-in kind, a CRD's from its schema.
fn definitions(d: &ResourceDef) -> Option<openapi::Definitions> {
    type Cache = Mutex<HashMap<(String, String, String), Arc<openapi::Definitions>>>;
    static BUILTIN: OnceLock<Cache> = OnceLock::new();
    if let Some(schema) = crd_schema(d) {
        let name = openapi::schema_name(d);
        return Some((name.clone(), [(name, schema)].into_iter().collect()));
    }
    let key = (d.group.clone(), d.version.clone(), d.plural.clone());
    let cache = BUILTIN.get_or_init(Default::default);
    if let Some(hit) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Some((**hit).clone());
    }
    let defs = Arc::new(d.strategy.definitions()?);
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, defs.clone());
    Some((*defs).clone())
}

async fn openapi_root(State(app): State<Arc<AppState>>) -> Response {
    let entries = app.registry.table().snapshot();
    json_response(StatusCode::OK, &openapi::root(&entries, &crd_schema))
}

async fn openapi_doc(State(app): State<Arc<AppState>>, Path(rest): Path<String>) -> Response {
    let entries = app.registry.table().snapshot();
    let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    let (group, version) = match parts.as_slice() {
        ["api", v] => ("", *v),
        ["apis", g, v] => (*g, *v),
        _ => return error_response(ApiError::NoRoute),
    };
    match openapi::document(&entries, group, version, &definitions) {
        Some(doc) => json_response(StatusCode::OK, &doc),
        None => error_response(ApiError::NoRoute),
    }
}

async fn not_found() -> Response {
    error_response(ApiError::NoRoute)
}

pub fn router(app: Arc<AppState>) -> Router {
    Router::new()
        .route("/version", get(version))
        .route("/version/", get(version))
        .route("/healthz", get(bootstrap::healthz))
        .route("/livez", get(bootstrap::healthz))
        .route("/readyz", get(bootstrap::readyz))
        .route("/openapi/v3", get(openapi_root))
        .route("/openapi/v3/", get(openapi_root))
        .route("/openapi/v3/{*rest}", get(openapi_doc))
        .route("/strake/v1/cluster-info", get(bootstrap::cluster_info))
        .route("/strake/v1/kubeconfig", post(bootstrap::admin_kubeconfig))
        .route(
            "/strake/v1/node-credentials",
            post(bootstrap::node_credentials),
        )
        .route(
            "/strake/v1/store/members",
            get(storeadmin::members).post(storeadmin::join),
        )
        .route(
            "/strake/v1/store/members/{id}",
            axum::routing::delete(storeadmin::remove),
        )
        .route("/strake/v1/store/snapshot", get(storeadmin::snapshot))
        .route("/api", any(dispatch::handle))
        .route("/api/", any(dispatch::handle))
        .route("/api/{*rest}", any(dispatch::handle))
        .route("/apis", any(dispatch::handle))
        .route("/apis/", any(dispatch::handle))
        .route("/apis/{*rest}", any(dispatch::handle))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            auth::middleware,
        ))
        .with_state(app)
}
