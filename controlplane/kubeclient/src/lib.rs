//! A small typed Kubernetes client for Strake's own components (agent, strakectl, tests), plus
//! the bootstrap-token discovery flow that turns a token into pinned, verified credentials.
//! Speaks JSON over HTTPS with reqwest + rustls; knows nothing about how the server stores data.

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::{ListableResource, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
pub use strake_pki::Credentials;
use strake_pki::{BootstrapToken, CertifiedKey, ClusterInfo};

/// Errors from API calls.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a `Status` failure.
    #[error("{code} {reason}: {message}")]
    Api {
        code: u16,
        reason: String,
        message: String,
    },
    #[error("request to {url} failed: {source}")]
    Transport { url: String, source: reqwest::Error },
    #[error("cannot decode the response from {url}: {detail}")]
    Decode { url: String, detail: String },
    #[error("TLS setup: {0}")]
    Pki(#[from] strake_pki::PkiError),
    #[error("building HTTP client: {0}")]
    Build(reqwest::Error),
    /// The CA the token vouched for is not the one the config pins.
    #[error(
        "the cluster CA at {url} has the pin {found}, not {expected} (cluster.caPin): refusing to join it"
    )]
    PinMismatch {
        url: String,
        expected: String,
        found: String,
    },
}

impl ClientError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Api { code: 404, .. })
    }
    pub fn is_conflict(&self) -> bool {
        matches!(self, ClientError::Api { code: 409, .. })
    }
}

/// Whether the API server at `server_url` answers `/version` within `timeout`. It does not
/// authenticate the server: use it only to learn that the API is up (e.g. while a VM boots).
pub async fn answers_version(server_url: &str, timeout: Duration) -> bool {
    let Ok(tls) = strake_pki::discovery_client_config() else {
        return false;
    };
    let Ok(client) = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(timeout)
        .build()
    else {
        return false;
    };
    matches!(client.get(format!("{server_url}/version")).send().await, Ok(r) if r.status().is_success())
}

/// Fetches and verifies cluster-info with the token, then requests credentials at `path`
/// (`/strake/v1/kubeconfig` or `/strake/v1/node-credentials`) over a connection pinned to the CA.
pub async fn bootstrap(
    server_url: &str,
    token: &BootstrapToken,
    path: &str,
    body: &Value,
) -> Result<Credentials, ClientError> {
    bootstrap_pinned(server_url, token, None, path, body).await
}

/// [`bootstrap`], and with `pin` (`sha256:<hex>`, see [`strake_pki::ca_pin`]) the CA must also
/// have that pin before the token is sent anywhere.
pub async fn bootstrap_pinned(
    server_url: &str,
    token: &BootstrapToken,
    pin: Option<&str>,
    path: &str,
    body: &Value,
) -> Result<Credentials, ClientError> {
    // Short: callers retry, and a node that is still booting behind a forwarded port (QEMU's
    // user networking accepts before the guest listens) would otherwise stall each attempt.
    let discovery = reqwest::Client::builder()
        .use_preconfigured_tls(strake_pki::discovery_client_config()?)
        .timeout(Duration::from_secs(3))
        .build()
        .map_err(ClientError::Build)?;
    let url = format!("{server_url}/strake/v1/cluster-info");
    let resp = discovery
        .get(&url)
        .send()
        .await
        .map_err(|source| ClientError::Transport {
            url: url.clone(),
            source,
        })?;
    let info: ClusterInfo = decode(&url, resp).await?;
    let ca = token.verify(&info)?.to_string();
    if let Some(expected) = pin {
        let found = strake_pki::ca_pin(&ca)?;
        if !found.eq_ignore_ascii_case(expected) {
            return Err(ClientError::PinMismatch {
                url,
                expected: expected.to_owned(),
                found,
            });
        }
    }
    let pinned = reqwest::Client::builder()
        .use_preconfigured_tls(strake_pki::client_config(&ca, None)?)
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(ClientError::Build)?;
    let url = format!("{server_url}{path}");
    let resp = pinned
        .post(&url)
        .bearer_auth(token.to_string())
        .json(body)
        .send()
        .await
        .map_err(|source| ClientError::Transport {
            url: url.clone(),
            source,
        })?;
    let mut creds: Credentials = decode(&url, resp).await?;
    creds.ca_pem = ca; // trust only what the token vouched for
    Ok(creds)
}

async fn decode<T: DeserializeOwned>(url: &str, resp: reqwest::Response) -> Result<T, ClientError> {
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .map_err(|source| ClientError::Transport {
            url: url.into(),
            source,
        })?;
    if !status.is_success() {
        return Err(status_error(status.as_u16(), &bytes));
    }
    serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
        url: url.into(),
        detail: e.to_string(),
    })
}

fn status_error(code: u16, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.get("kind").and_then(Value::as_str) == Some("Status") => ClientError::Api {
            code,
            reason: v["reason"].as_str().unwrap_or("").to_string(),
            message: v["message"].as_str().unwrap_or("").to_string(),
        },
        _ => ClientError::Api {
            code,
            reason: String::new(),
            message: String::from_utf8_lossy(body).trim().to_string(),
        },
    }
}

/// A watch event.
#[derive(Debug, Clone)]
pub enum WatchEvent<K> {
    Added(K),
    Modified(K),
    Deleted(K),
    Bookmark(String),
}

/// A typed API client. It knows one or more API servers (`https://host:port`) and talks to
/// one at a time; a request that cannot reach it (no connection, or no answer in time)
/// fails and moves the client, and every clone of it, to the next one, so the caller's retry
/// goes elsewhere.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    servers: Arc<Servers>,
}

/// The API servers a client knows, and which one it uses.
#[derive(Debug)]
struct Servers {
    urls: std::sync::RwLock<Vec<String>>,
    current: std::sync::atomic::AtomicUsize,
}

impl Servers {
    fn new(url: &str) -> Servers {
        Servers {
            urls: std::sync::RwLock::new(vec![url.trim_end_matches('/').to_string()]),
            current: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn current(&self) -> String {
        let urls = self.urls.read().unwrap_or_else(|p| p.into_inner());
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        urls[i % urls.len()].clone()
    }

    /// `url` could not be reached: use the next server, unless another request moved on
    /// already.
    fn failed(&self, url: &str) {
        let urls = self.urls.read().unwrap_or_else(|p| p.into_inner());
        if urls.len() < 2 {
            return;
        }
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        if url.starts_with(&urls[i % urls.len()]) {
            let next = (i + 1) % urls.len();
            tracing::warn!(from = %urls[i % urls.len()], to = %urls[next], "the API server is unreachable; trying the next one");
            self.current
                .store(next, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Replaces the list, keeping the server in use if it is still in it.
    fn set(&self, list: Vec<String>) {
        if list.is_empty() {
            return;
        }
        let list: Vec<String> = list
            .into_iter()
            .map(|u| u.trim_end_matches('/').to_string())
            .collect();
        let now = self.current();
        let mut urls = self.urls.write().unwrap_or_else(|p| p.into_inner());
        let at = list.iter().position(|u| *u == now).unwrap_or(0);
        *urls = list;
        self.current.store(at, std::sync::atomic::Ordering::Relaxed);
    }
}

fn collection_path<K: Resource>(ns: Option<&str>) -> String {
    let prefix = if K::GROUP.is_empty() {
        format!("/api/{}", K::VERSION)
    } else {
        format!("/apis/{}/{}", K::GROUP, K::VERSION)
    };
    match ns {
        Some(ns) => format!("{prefix}/namespaces/{ns}/{}", K::URL_PATH_SEGMENT),
        None => format!("{prefix}/{}", K::URL_PATH_SEGMENT),
    }
}

impl Client {
    /// A client that trusts `ca_pem` and authenticates with `cert`.
    pub fn new(
        server_url: &str,
        ca_pem: &str,
        cert: Option<&CertifiedKey>,
    ) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(strake_pki::client_config(ca_pem, cert)?)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(ClientError::Build)?;
        Ok(Self {
            http,
            servers: Arc::new(Servers::new(server_url)),
        })
    }

    pub fn from_credentials(c: &Credentials) -> Result<Self, ClientError> {
        let key = CertifiedKey {
            cert_pem: c.cert_pem.clone(),
            key_pem: c.key_pem.clone(),
        };
        Self::new(&format!("https://{}", c.server), &c.ca_pem, Some(&key))
    }

    /// The API server in use.
    pub fn base_url(&self) -> String {
        self.servers.current()
    }

    /// Every API server this client may use, the one in use first or not.
    pub fn servers(&self) -> Vec<String> {
        self.servers
            .urls
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sets the API servers this client (and its clones) may use (`https://host:port` each).
    pub fn set_servers(&self, urls: Vec<String>) {
        self.servers.set(urls);
    }

    /// Notes a transport failure of a request to `url`: moves on if it could not reach it.
    fn transport_error(&self, url: &str, source: reqwest::Error) -> ClientError {
        if source.is_connect() || source.is_timeout() {
            self.servers.failed(url);
        }
        ClientError::Transport {
            url: url.into(),
            source,
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<T, ClientError> {
        let resp = req
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|source| self.transport_error(url, source))?;
        decode(url, resp).await
    }

    /// GET of any path, as JSON.
    pub async fn get_json(&self, path: &str) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.servers.current());
        self.send(self.http.get(&url), &url).await
    }

    /// POST of a JSON body to any path (a subresource such as `serviceaccounts/token`).
    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.servers.current());
        self.send(self.http.post(&url).json(body), &url).await
    }

    /// DELETE of any path, answered with JSON.
    pub async fn delete_path(&self, path: &str) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.servers.current());
        self.send(self.http.delete(&url), &url).await
    }

    /// GET of any path, as raw bytes.
    pub async fn get_raw(&self, path: &str) -> Result<bytes::Bytes, ClientError> {
        self.get_raw_with_headers(path).await.map(|(_, body)| body)
    }

    /// GET of any path, as raw bytes with the response's headers.
    pub async fn get_raw_with_headers(
        &self,
        path: &str,
    ) -> Result<(reqwest::header::HeaderMap, bytes::Bytes), ClientError> {
        let url = format!("{}{path}", self.servers.current());
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|source| self.transport_error(&url, source))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .map_err(|source| ClientError::Transport {
                url: url.clone(),
                source,
            })?;
        if !status.is_success() {
            return Err(status_error(status.as_u16(), &body));
        }
        Ok((headers, body))
    }

    pub async fn get<K: Resource + DeserializeOwned>(
        &self,
        ns: Option<&str>,
        name: &str,
    ) -> Result<K, ClientError> {
        let url = format!(
            "{}{}/{name}",
            self.servers.current(),
            collection_path::<K>(ns)
        );
        self.send(self.http.get(&url), &url).await
    }

    /// Lists objects; returns them and the list's resourceVersion.
    pub async fn list<K: Resource + ListableResource + DeserializeOwned>(
        &self,
        ns: Option<&str>,
        field_selector: Option<&str>,
    ) -> Result<(Vec<K>, String), ClientError> {
        let mut url = format!("{}{}", self.servers.current(), collection_path::<K>(ns));
        if let Some(fs) = field_selector {
            url.push_str(&format!("?fieldSelector={}", enc(fs)));
        }
        let v: Value = self.send(self.http.get(&url), &url).await?;
        let rv = v["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let items =
            serde_json::from_value(v["items"].clone()).map_err(|e| ClientError::Decode {
                url,
                detail: e.to_string(),
            })?;
        Ok((items, rv))
    }

    pub async fn create<K: Resource + Serialize + DeserializeOwned>(
        &self,
        ns: Option<&str>,
        obj: &K,
    ) -> Result<K, ClientError> {
        let url = format!("{}{}", self.servers.current(), collection_path::<K>(ns));
        self.send(self.http.post(&url).json(obj), &url).await
    }

    pub async fn replace<K: Resource + Serialize + DeserializeOwned>(
        &self,
        ns: Option<&str>,
        name: &str,
        obj: &K,
    ) -> Result<K, ClientError> {
        let url = format!(
            "{}{}/{name}",
            self.servers.current(),
            collection_path::<K>(ns)
        );
        self.send(self.http.put(&url).json(obj), &url).await
    }

    pub async fn replace_status<K: Resource + Serialize + DeserializeOwned>(
        &self,
        ns: Option<&str>,
        name: &str,
        obj: &K,
    ) -> Result<K, ClientError> {
        let url = format!(
            "{}{}/{name}/status",
            self.servers.current(),
            collection_path::<K>(ns)
        );
        self.send(self.http.put(&url).json(obj), &url).await
    }

    /// JSON merge patch of the status subresource.
    pub async fn patch_status<K: Resource + DeserializeOwned>(
        &self,
        ns: Option<&str>,
        name: &str,
        patch: &Value,
    ) -> Result<K, ClientError> {
        self.merge_patch(format!("{}/{name}/status", collection_path::<K>(ns)), patch)
            .await
    }

    /// JSON merge patch of an object.
    pub async fn patch<K: Resource + DeserializeOwned>(
        &self,
        ns: Option<&str>,
        name: &str,
        patch: &Value,
    ) -> Result<K, ClientError> {
        self.merge_patch(format!("{}/{name}", collection_path::<K>(ns)), patch)
            .await
    }

    async fn merge_patch<K: DeserializeOwned>(
        &self,
        path: String,
        patch: &Value,
    ) -> Result<K, ClientError> {
        let url = format!("{}{path}", self.servers.current());
        let req = self
            .http
            .patch(&url)
            .header("Content-Type", "application/merge-patch+json")
            .body(serde_json::to_vec(patch).unwrap_or_default());
        self.send(req, &url).await
    }

    /// Deletes; `grace` None uses the object's default, `uid` guards against deleting a successor.
    pub async fn delete<K: Resource>(
        &self,
        ns: Option<&str>,
        name: &str,
        grace: Option<i64>,
        uid: Option<&str>,
    ) -> Result<(), ClientError> {
        let url = format!(
            "{}{}/{name}",
            self.servers.current(),
            collection_path::<K>(ns)
        );
        let mut opts = serde_json::json!({"kind": "DeleteOptions", "apiVersion": "v1"});
        if let Some(g) = grace {
            opts["gracePeriodSeconds"] = g.into();
        }
        if let Some(u) = uid {
            opts["preconditions"] = serde_json::json!({"uid": u});
        }
        let _: Value = self.send(self.http.delete(&url).json(&opts), &url).await?;
        Ok(())
    }

    /// Watches from `resource_version` ("" = current state as ADDED first).
    pub async fn watch<K: Resource + DeserializeOwned + Send + 'static>(
        &self,
        ns: Option<&str>,
        field_selector: Option<&str>,
        resource_version: &str,
        timeout: Duration,
    ) -> Result<impl Stream<Item = Result<WatchEvent<K>, ClientError>> + Send + use<K>, ClientError>
    {
        let mut url = format!(
            "{}{}?watch=true&allowWatchBookmarks=true&timeoutSeconds={}",
            self.servers.current(),
            collection_path::<K>(ns),
            timeout.as_secs()
        );
        if !resource_version.is_empty() {
            url.push_str(&format!("&resourceVersion={resource_version}"));
        }
        if let Some(fs) = field_selector {
            url.push_str(&format!("&fieldSelector={}", enc(fs)));
        }
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|source| self.transport_error(&url, source))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.bytes().await.unwrap_or_default();
            return Err(status_error(status.as_u16(), &body));
        }
        let bytes = resp.bytes_stream();
        let lines = futures::stream::unfold(
            (bytes, Vec::<u8>::new(), url),
            |(mut bytes, mut buf, url)| async move {
                loop {
                    if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=pos).collect();
                        if line.iter().all(u8::is_ascii_whitespace) {
                            continue;
                        }
                        return Some((parse_event::<K>(&line, &url), (bytes, buf, url)));
                    }
                    match bytes.next().await {
                        Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                        Some(Err(source)) => {
                            return Some((
                                Err(ClientError::Transport {
                                    url: url.clone(),
                                    source,
                                }),
                                (bytes, Vec::new(), url),
                            ));
                        }
                        None => return None,
                    }
                }
            },
        );
        Ok(lines)
    }
}

fn parse_event<K: DeserializeOwned>(line: &[u8], url: &str) -> Result<WatchEvent<K>, ClientError> {
    let v: Value = serde_json::from_slice(line).map_err(|e| ClientError::Decode {
        url: url.into(),
        detail: e.to_string(),
    })?;
    let ty = v["type"].as_str().unwrap_or("");
    let obj = v["object"].clone();
    let typed = || {
        serde_json::from_value::<K>(obj.clone()).map_err(|e| ClientError::Decode {
            url: url.into(),
            detail: e.to_string(),
        })
    };
    match ty {
        "ADDED" => Ok(WatchEvent::Added(typed()?)),
        "MODIFIED" => Ok(WatchEvent::Modified(typed()?)),
        "DELETED" => Ok(WatchEvent::Deleted(typed()?)),
        "BOOKMARK" => Ok(WatchEvent::Bookmark(
            obj["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        )),
        "ERROR" => Err(ClientError::Api {
            code: obj["code"].as_u64().unwrap_or(500) as u16,
            reason: obj["reason"].as_str().unwrap_or("").into(),
            message: obj["message"].as_str().unwrap_or("").into(),
        }),
        other => Err(ClientError::Decode {
            url: url.into(),
            detail: format!("unknown watch event type {other:?}"),
        }),
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Node, Pod};

    #[test]
    fn paths() {
        assert_eq!(
            collection_path::<Pod>(Some("default")),
            "/api/v1/namespaces/default/pods"
        );
        assert_eq!(collection_path::<Node>(None), "/api/v1/nodes");
    }

    #[test]
    fn events_and_errors() {
        let e = parse_event::<Pod>(
            br#"{"type":"ADDED","object":{"metadata":{"name":"a"}}}"#,
            "u",
        )
        .unwrap();
        assert!(matches!(e, WatchEvent::Added(p) if p.metadata.name.as_deref() == Some("a")));
        let e = parse_event::<Pod>(br#"{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired","message":"too old"}}"#, "u");
        assert!(matches!(e, Err(ClientError::Api { code: 410, .. })));
        assert!(matches!(
            status_error(
                404,
                br#"{"kind":"Status","reason":"NotFound","message":"x"}"#
            ),
            ClientError::Api { code: 404, .. }
        ));
    }
}

#[cfg(test)]
mod failover_tests {
    use super::*;

    #[test]
    fn an_unreachable_server_moves_every_clone_to_the_next() {
        let s = Servers::new("https://a:6443/");
        s.failed("https://a:6443/api");
        assert_eq!(s.current(), "https://a:6443", "one server: nowhere to go");
        s.set(vec!["https://a:6443".into(), "https://b:6443".into()]);
        assert_eq!(s.current(), "https://a:6443", "the one in use stays");
        s.failed("https://a:6443/api/v1/nodes");
        assert_eq!(s.current(), "https://b:6443");
        // A late failure of the old one does not move it again.
        s.failed("https://a:6443/api/v1/pods");
        assert_eq!(s.current(), "https://b:6443");
        s.failed("https://b:6443/version");
        assert_eq!(s.current(), "https://a:6443", "around again");
        s.set(vec!["https://c:6443".into()]);
        assert_eq!(s.current(), "https://c:6443");
    }

    #[tokio::test]
    async fn a_request_that_cannot_connect_fails_over_for_the_next_one() {
        // Two ports nobody listens on: the first fails with a connection error.
        let dead = |p: u16| format!("https://127.0.0.1:{p}");
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (pa, pb) = (
            a.local_addr().unwrap().port(),
            b.local_addr().unwrap().port(),
        );
        drop((a, b));
        let ca = strake_pki::ClusterCa::generate("t").unwrap();
        let client = Client::new(&dead(pa), &ca.ca.cert_pem, None).unwrap();
        client.set_servers(vec![dead(pa), dead(pb)]);
        let clone = client.clone();
        assert!(client.get_json("/version").await.is_err());
        assert_eq!(clone.base_url(), dead(pb));
    }
}
