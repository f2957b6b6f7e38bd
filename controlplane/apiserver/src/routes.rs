//! The URL space. Every path maps to a generic handler instantiated for its kind.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};

use crate::AppState;
use crate::discovery;
use crate::error::ApiError;
use crate::handlers::{self as h, json_response};
use crate::kinds::ApiKind;
use crate::{auth, bootstrap, openapi, pods};

fn collection<K: ApiKind>(r: Router<Arc<AppState>>, path: &str) -> Router<Arc<AppState>> {
    r.route(path, get(h::list::<K>).post(h::create::<K>))
}

fn item<K: ApiKind>(r: Router<Arc<AppState>>, path: &str) -> Router<Arc<AppState>> {
    r.route(path, get(h::get::<K>).put(h::replace_main::<K>).patch(h::patch_main::<K>).delete(h::delete::<K>))
        .route(&format!("{path}/status"), get(h::get::<K>).put(h::replace_status::<K>).patch(h::patch_status::<K>))
}

async fn version() -> Response {
    json_response(StatusCode::OK, &discovery::version())
}

async fn api(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    if discovery::wants_aggregated(accept) {
        let body = serde_json::to_vec(&discovery::aggregated(true)).unwrap_or_default();
        return (StatusCode::OK, [(header::CONTENT_TYPE, discovery::AGGREGATED_CT)], body).into_response();
    }
    json_response(StatusCode::OK, &discovery::api_versions(&app.advertise))
}

async fn apis(headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    if discovery::wants_aggregated(accept) {
        let body = serde_json::to_vec(&discovery::aggregated(false)).unwrap_or_default();
        return (StatusCode::OK, [(header::CONTENT_TYPE, discovery::AGGREGATED_CT)], body).into_response();
    }
    json_response(StatusCode::OK, &discovery::api_group_list())
}

async fn core_v1() -> Response {
    json_response(StatusCode::OK, &discovery::core_v1_resource_list())
}

async fn openapi_v3_root() -> Response {
    json_response(StatusCode::OK, &openapi::root())
}

async fn openapi_v3_core() -> Response {
    json_response(StatusCode::OK, &openapi::core_v1())
}

async fn not_found() -> Response {
    ApiError::NoRoute.into_response()
}

pub fn router(app: Arc<AppState>) -> Router {
    let mut r: Router<Arc<AppState>> = Router::new()
        .route("/version", get(version))
        .route("/version/", get(version))
        .route("/healthz", get(bootstrap::healthz))
        .route("/livez", get(bootstrap::healthz))
        .route("/readyz", get(bootstrap::readyz))
        .route("/api", get(api))
        .route("/api/", get(api))
        .route("/apis", get(apis))
        .route("/apis/", get(apis))
        .route("/api/v1", get(core_v1))
        .route("/api/v1/", get(core_v1))
        .route("/openapi/v3", get(openapi_v3_root))
        .route("/openapi/v3/", get(openapi_v3_root))
        .route("/openapi/v3/api/v1", get(openapi_v3_core))
        .route("/strake/v1/cluster-info", get(bootstrap::cluster_info))
        .route("/strake/v1/kubeconfig", post(bootstrap::admin_kubeconfig))
        .route("/strake/v1/node-credentials", post(bootstrap::node_credentials));
    r = collection::<Namespace>(r, "/api/v1/namespaces");
    r = item::<Namespace>(r, "/api/v1/namespaces/{ns}");
    r = collection::<Node>(r, "/api/v1/nodes");
    r = item::<Node>(r, "/api/v1/nodes/{name}");
    r = r.route("/api/v1/pods", get(h::list::<Pod>));
    r = collection::<Pod>(r, "/api/v1/namespaces/{ns}/pods");
    r = item::<Pod>(r, "/api/v1/namespaces/{ns}/pods/{name}");
    r = r
        .route("/api/v1/namespaces/{ns}/pods/{name}/log", get(pods::log))
        .route("/api/v1/namespaces/{ns}/pods/{name}/binding", post(pods::binding));
    r.fallback(not_found)
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed.into_response() })
        .layer(axum::middleware::from_fn_with_state(app.clone(), auth::middleware))
        .with_state(app)
}
