//! Protocol corners docker-registry does not exercise, against a scripted registry on
//! 127.0.0.1: the anonymous Bearer-token flow, multi-platform indexes with Docker media
//! types, oversized manifests, and error bodies on 401.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use strake_oci::{
    Digest, ImageRef, ImageStore, LayerBuilder, LayerCompression, OciError, RegistryConfig,
};

const TOKEN: &str = "anonymous-pull-token";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

#[derive(Default)]
struct Fake {
    /// Path after `/v2/` → (content type, body).
    objects: HashMap<String, (String, Vec<u8>)>,
    /// Whether requests need the bearer token.
    require_token: bool,
    /// Whether a 401 says where to get one.
    offer_challenge: bool,
    token_requests: AtomicUsize,
    addr: String,
}

async fn serve_v2(
    State(fake): State<Arc<Fake>>,
    UrlPath(rest): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {TOKEN}"));
    if fake.require_token && !authorized {
        let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
        if !fake.offer_challenge {
            return (StatusCode::UNAUTHORIZED, body).into_response();
        }
        let repo = rest.split("/manifests/").next().unwrap_or_default();
        let repo = repo.split("/blobs/").next().unwrap_or_default();
        let challenge = format!(
            r#"Bearer realm="http://{}/token",service="fake-registry",scope="repository:{repo}:pull""#,
            fake.addr
        );
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, challenge)],
            body,
        )
            .into_response();
    }
    match fake.objects.get(&rest) {
        Some((content_type, body)) => {
            ([(header::CONTENT_TYPE, content_type.clone())], body.clone()).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
        )
            .into_response(),
    }
}

async fn serve_token(
    State(fake): State<Arc<Fake>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    fake.token_requests.fetch_add(1, Ordering::SeqCst);
    let expected = (
        query.get("service").map(String::as_str),
        query.get("scope").map(String::as_str),
    );
    if expected != (Some("fake-registry"), Some("repository:team/app:pull")) {
        return (
            StatusCode::BAD_REQUEST,
            format!("bad token request {query:?}"),
        )
            .into_response();
    }
    axum::Json(json!({ "token": TOKEN, "expires_in": 300 })).into_response()
}

/// Starts the fake on a free port; `fill` adds objects once the address is known.
async fn start(
    require_token: bool,
    offer_challenge: bool,
    fill: impl FnOnce(&mut Fake),
) -> Arc<Fake> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut fake = Fake {
        require_token,
        offer_challenge,
        addr: listener.local_addr().unwrap().to_string(),
        ..Fake::default()
    };
    fill(&mut fake);
    let fake = Arc::new(fake);
    let app = Router::new()
        .route("/v2/{*rest}", get(serve_v2))
        .route("/token", get(serve_token))
        .with_state(fake.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    fake
}

fn store(dir: &std::path::Path, addr: &str) -> ImageStore {
    ImageStore::open(
        dir,
        RegistryConfig {
            insecure: vec![addr.to_owned()],
            ..RegistryConfig::default()
        },
    )
    .unwrap()
}

/// Adds a one-layer image (Docker media types) and returns its manifest's digest and body.
fn add_image(fake: &mut Fake, marker: &[u8]) -> (Digest, Vec<u8>) {
    let mut layer = LayerBuilder::new(LayerCompression::Gzip);
    layer.add_file("marker", marker, 0o644).unwrap();
    let layer = layer.finish().unwrap();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Cmd": ["/marker"] },
        "rootfs": { "type": "layers", "diff_ids": [layer.diff_id] },
    }))
    .unwrap();
    let config_digest = Digest::of(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": { "mediaType": "application/vnd.docker.container.image.v1+json",
                    "digest": config_digest, "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                     "digest": layer.digest, "size": layer.bytes.len() }],
    }))
    .unwrap();
    let manifest_digest = Digest::of(&manifest);
    let octets = "application/octet-stream".to_owned();
    fake.objects.insert(
        format!("team/app/blobs/{}", layer.digest),
        (octets.clone(), layer.bytes.to_vec()),
    );
    fake.objects
        .insert(format!("team/app/blobs/{config_digest}"), (octets, config));
    fake.objects.insert(
        format!("team/app/manifests/{manifest_digest}"),
        (DOCKER_MANIFEST.to_owned(), manifest.clone()),
    );
    (manifest_digest, manifest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_flow_and_platform_selection() {
    let fake = start(true, true, |fake| {
        let (arm, arm_body) = add_image(fake, b"arm64");
        let (amd, amd_body) = add_image(fake, b"amd64");
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_LIST,
            "manifests": [
                { "mediaType": DOCKER_MANIFEST, "digest": arm, "size": arm_body.len(),
                  "platform": { "architecture": "arm64", "os": "linux", "variant": "v8" } },
                { "mediaType": DOCKER_MANIFEST, "digest": amd, "size": amd_body.len(),
                  "platform": { "architecture": "amd64", "os": "linux" } },
            ],
        }))
        .unwrap();
        fake.objects.insert(
            "team/app/manifests/multi".into(),
            (DOCKER_LIST.to_owned(), index),
        );
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), &fake.addr);
    let image = ImageRef::parse(&format!("{}/team/app:multi", fake.addr)).unwrap();
    let pulled = store.pull(&image).await.expect("pull through token flow");
    assert_eq!(pulled.layers.len(), 1);
    assert_eq!(
        std::fs::read(pulled.layers[0].join("marker")).unwrap(),
        b"amd64"
    );
    assert_eq!(pulled.config.cmd, ["/marker"]);
    let index_body = &fake.objects["team/app/manifests/multi"].1;
    assert_eq!(
        pulled.manifest_digest,
        Digest::of(index_body),
        "digest names the index"
    );
    assert_eq!(
        fake.token_requests.load(Ordering::SeqCst),
        1,
        "token fetched once and reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_and_oversized_responses() {
    let fake = start(false, false, |fake| {
        fake.objects.insert(
            "team/app/manifests/huge".into(),
            (DOCKER_MANIFEST.to_owned(), vec![b' '; 5 * 1024 * 1024]),
        );
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), &fake.addr);
    let huge = ImageRef::parse(&format!("{}/team/app:huge", fake.addr)).unwrap();
    let err = store.pull(&huge).await.unwrap_err();
    assert!(
        matches!(err, OciError::TooLarge { limit, .. } if limit == 4 * 1024 * 1024),
        "{err}"
    );

    // The token service refuses a scope it does not know.
    let guarded = start(true, true, |_| {}).await;
    let store = store_for(dir.path(), &guarded.addr);
    let image = ImageRef::parse(&format!("{}/other/repo:v1", guarded.addr)).unwrap();
    let err = store.pull(&image).await.unwrap_err();
    assert!(matches!(err, OciError::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains("token service refused"), "{err}");

    // A 401 without a Bearer challenge is final and carries the registry's message.
    let closed = start(true, false, |_| {}).await;
    let store = store_for(dir.path(), &closed.addr);
    let image = ImageRef::parse(&format!("{}/team/app:v1", closed.addr)).unwrap();
    match store.pull(&image).await {
        Err(OciError::Unauthorized { message, .. }) => {
            assert_eq!(message, "UNAUTHORIZED: authentication required")
        }
        other => panic!("expected Unauthorized, got {other:?}"),
    }
}

fn store_for(dir: &std::path::Path, addr: &str) -> ImageStore {
    store(&dir.join(addr.replace(':', "_")), addr)
}
