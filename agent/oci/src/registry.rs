//! The HTTP side of the OCI distribution protocol: endpoints (mirrors, plain HTTP for
//! insecure registries), the anonymous Bearer-token flow, bounded reads, registry error
//! bodies, and streaming blobs to disk while verifying their digest and size.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::error::OciError;
use crate::manifest::{Descriptor, MANIFEST_ACCEPT};
use crate::reference::{Digest, ImageRef, canonical_registry};

/// Largest manifest or index we accept.
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;
/// Largest token response we accept.
const MAX_TOKEN_BYTES: u64 = 1024 * 1024;
/// How much of an error body we read to find the registry's message.
const MAX_ERROR_BODY_BYTES: u64 = 64 * 1024;
/// The Debian / Ubuntu CA bundle; loaded when present.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How to reach registries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Registries (`host:port`, as written in image references) spoken to over plain HTTP.
    pub insecure: Vec<String>,
    /// Per registry, endpoints tried in order before the registry itself, e.g.
    /// `"docker.io" => ["10.0.2.2:5000"]`. An entry is `host:port` (plain HTTP if listed
    /// in `insecure`, else HTTPS) or a full `http://` / `https://` base URL.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Extra PEM files with CA certificates to trust besides the system bundle.
    pub ca_files: Vec<PathBuf>,
}

/// One base URL to try for a registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// `scheme://host[:port]`, no trailing slash.
    pub base: String,
    /// Whether this is a mirror (failures fall through to the next endpoint).
    pub mirror: bool,
}

/// An HTTP client for registries, with a per-(endpoint, repository) token cache.
pub(crate) struct RegistryClient {
    http: reqwest::Client,
    config: RegistryConfig,
    tokens: Mutex<HashMap<String, String>>,
}

impl RegistryClient {
    pub fn new(config: RegistryConfig) -> Result<RegistryClient, OciError> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .user_agent(concat!("strake-oci/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(60))
            .no_proxy();
        let system = Path::new(SYSTEM_CA_BUNDLE);
        let mut bundles: Vec<&Path> = Vec::new();
        if system.exists() {
            bundles.push(system);
        }
        bundles.extend(config.ca_files.iter().map(PathBuf::as_path));
        for path in bundles {
            let pem = std::fs::read(path).map_err(|e| OciError::io(path, e))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                OciError::io(
                    path,
                    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
                )
            })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| OciError::transport("(client setup)", &e))?;
        let mirrors = config
            .mirrors
            .iter()
            .map(|(k, v)| (canonical_registry(k), v.clone()))
            .collect();
        Ok(RegistryClient {
            http,
            config: RegistryConfig { mirrors, ..config },
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// Mirrors first, then the registry itself.
    pub fn endpoints(&self, registry: &str) -> Vec<Endpoint> {
        let mut endpoints: Vec<Endpoint> = self
            .config
            .mirrors
            .get(registry)
            .into_iter()
            .flatten()
            .map(|m| Endpoint {
                base: self.base_url(m),
                mirror: true,
            })
            .collect();
        endpoints.push(Endpoint {
            base: self.base_url(registry),
            mirror: false,
        });
        endpoints
    }

    fn base_url(&self, host_or_url: &str) -> String {
        if host_or_url.contains("://") {
            return host_or_url.trim_end_matches('/').to_owned();
        }
        let scheme = if self.config.insecure.iter().any(|i| i == host_or_url) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{host_or_url}")
    }

    /// GETs `/v2/<repo>/<suffix>`, doing the Bearer-token dance on 401. Non-2xx answers
    /// become errors carrying the registry's own message.
    pub async fn get(
        &self,
        endpoint: &Endpoint,
        image: &ImageRef,
        suffix: &str,
        accept: Option<&str>,
    ) -> Result<Response, OciError> {
        let url = format!("{}/v2/{}/{}", endpoint.base, image.repository, suffix);
        let key = format!("{} {}", endpoint.base, image.repository);
        let cached = self.cached_token(&key);
        let mut response = self.send(&url, accept, cached.as_deref()).await?;
        if response.status() == StatusCode::UNAUTHORIZED
            && let Some(challenge) = bearer_challenge(&response)
        {
            let token = self.fetch_token(&challenge, image).await?;
            self.tokens
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(key, token.clone());
            response = self.send(&url, accept, Some(&token)).await?;
        }
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(error_from_response(&image.to_string(), response).await)
        }
    }

    fn cached_token(&self, key: &str) -> Option<String> {
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    async fn send(
        &self,
        url: &str,
        accept: Option<&str>,
        token: Option<&str>,
    ) -> Result<Response, OciError> {
        let mut request = self.http.get(url);
        if let Some(accept) = accept {
            request = request.header(ACCEPT, accept);
        }
        if let Some(token) = token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        request
            .send()
            .await
            .map_err(|e| OciError::transport(url, &e))
    }

    /// Asks the challenge's realm for an anonymous pull token.
    async fn fetch_token(
        &self,
        challenge: &BearerChallenge,
        image: &ImageRef,
    ) -> Result<String, OciError> {
        let unauthorized = |message: String| OciError::Unauthorized {
            image: image.to_string(),
            message,
        };
        let mut url = reqwest::Url::parse(&challenge.realm)
            .map_err(|e| unauthorized(format!("bad token realm {:?}: {e}", challenge.realm)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(unauthorized(format!(
                "bad token realm {:?}",
                challenge.realm
            )));
        }
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = &challenge.service {
                query.append_pair("service", service);
            }
            let scope = challenge
                .scope
                .clone()
                .unwrap_or_else(|| format!("repository:{}:pull", image.repository));
            query.append_pair("scope", &scope);
        }
        let response = self
            .http
            .get(url.clone())
            .send()
            .await
            .map_err(|e| OciError::transport(url.as_str(), &e))?;
        if !response.status().is_success() {
            let status = response.status();
            let body = read_limited(response, MAX_ERROR_BODY_BYTES, "token error", url.as_str())
                .await
                .unwrap_or_default();
            let detail = registry_message(&body).unwrap_or_else(|| status_text(status));
            return Err(unauthorized(format!("token service refused: {detail}")));
        }
        let body = read_limited(response, MAX_TOKEN_BYTES, "token response", url.as_str()).await?;
        #[derive(Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| unauthorized(format!("unreadable token response: {e}")))?;
        parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthorized("token service returned no token".to_owned()))
    }

    /// Fetches a manifest (or index) into memory: body, Content-Type, Docker-Content-Digest.
    pub async fn fetch_manifest(
        &self,
        endpoint: &Endpoint,
        image: &ImageRef,
        reference: &str,
    ) -> Result<(Vec<u8>, Option<String>, Option<Digest>), OciError> {
        let response = self
            .get(
                endpoint,
                image,
                &format!("manifests/{reference}"),
                Some(MANIFEST_ACCEPT),
            )
            .await?;
        let content_type = header_str(&response, CONTENT_TYPE.as_str());
        let header_digest =
            header_str(&response, "docker-content-digest").and_then(|d| Digest::parse(&d).ok());
        let url = response.url().to_string();
        let body = read_limited(
            response,
            MAX_MANIFEST_BYTES,
            &format!("manifest {image}"),
            &url,
        )
        .await?;
        Ok((body, content_type, header_digest))
    }

    /// Streams the blob `desc` into `dest` (via `tmp`), verifying size and digest.
    pub async fn download_blob(
        &self,
        endpoint: &Endpoint,
        image: &ImageRef,
        desc: &Descriptor,
        tmp: &Path,
        dest: &Path,
    ) -> Result<(), OciError> {
        let what = format!("blob {} of {image}", desc.digest);
        let response = self
            .get(endpoint, image, &format!("blobs/{}", desc.digest), None)
            .await?;
        if let Some(length) = response.content_length()
            && length != desc.size
        {
            return Err(OciError::SizeMismatch {
                what,
                expected: desc.size,
                actual: length,
            });
        }
        let url = response.url().to_string();
        write_verified(
            response.bytes_stream(),
            &url,
            tmp,
            dest,
            &desc.digest,
            desc.size,
            &what,
        )
        .await
    }
}

fn header_str(response: &Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Reads a response body into memory, failing once it passes `limit` bytes.
pub(crate) async fn read_limited(
    mut response: Response,
    limit: u64,
    what: &str,
    url: &str,
) -> Result<Vec<u8>, OciError> {
    let too_large = || OciError::TooLarge {
        what: what.to_owned(),
        limit,
    };
    if response.content_length().is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| OciError::transport(url, &e))?
    {
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Turns a non-success response into the matching error, with the registry's message.
pub(crate) async fn error_from_response(image: &str, response: Response) -> OciError {
    let status = response.status();
    let url = response.url().to_string();
    let body = read_limited(response, MAX_ERROR_BODY_BYTES, "error body", &url)
        .await
        .unwrap_or_default();
    let message = registry_message(&body).unwrap_or_else(|| {
        let text = String::from_utf8_lossy(&body);
        let text = text.trim();
        if text.is_empty() || text.len() > 200 || text.contains('<') {
            status_text(status)
        } else {
            format!("{}: {text}", status_text(status))
        }
    });
    let image = image.to_owned();
    match status {
        StatusCode::NOT_FOUND => OciError::NotFound { image, message },
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            OciError::Unauthorized { image, message }
        }
        _ => OciError::Registry {
            image,
            status: status.as_u16(),
            message,
        },
    }
}

fn status_text(status: StatusCode) -> String {
    format!("HTTP {status}")
}

/// Extracts `CODE: message` pairs from a distribution-spec error body
/// (`{"errors":[{"code":..,"message":..}]}`), joined by `; `.
pub(crate) fn registry_message(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Body {
        errors: Vec<Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let body: Body = serde_json::from_slice(body).ok()?;
    let parts: Vec<String> = body
        .errors
        .into_iter()
        .filter(|e| !e.code.is_empty() || !e.message.is_empty())
        .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
            (false, false) => format!("{}: {}", e.code, e.message),
            (true, _) => e.message,
            (_, true) => e.code,
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// The parameters of a `WWW-Authenticate: Bearer ...` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BearerChallenge {
    pub realm: String,
    pub service: Option<String>,
    pub scope: Option<String>,
}

fn bearer_challenge(response: &Response) -> Option<BearerChallenge> {
    response
        .headers()
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(parse_bearer_challenge)
}

/// Parses `Bearer realm="...",service="...",scope="..."` (quoted or bare values).
pub(crate) fn parse_bearer_challenge(header: &str) -> Option<BearerChallenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params: HashMap<String, String> = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace() || *c == ',').is_some() {}
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if key.trim().is_empty() {
            break;
        }
        if chars.next_if_eq(&'=').is_none() {
            continue;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => value.extend(chars.next()),
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect();
            value = value.trim().to_owned();
        }
        params.insert(key.trim().to_ascii_lowercase(), value);
    }
    Some(BearerChallenge {
        realm: params.remove("realm").filter(|r| !r.is_empty())?,
        service: params.remove("service"),
        scope: params.remove("scope"),
    })
}

/// Writes a byte stream to `tmp`, checking it is exactly `size` bytes hashing to
/// `expected`, then fsyncs and renames it to `dest`. On any failure `tmp` is removed and
/// `dest` is untouched.
pub(crate) async fn write_verified<S, E>(
    stream: S,
    source: &str,
    tmp: &Path,
    dest: &Path,
    expected: &Digest,
    size: u64,
    what: &str,
) -> Result<(), OciError>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::error::Error + 'static,
{
    let result = write_verified_inner(stream, source, tmp, expected, size, what).await;
    let result = match result {
        Ok(()) => tokio::fs::rename(tmp, dest)
            .await
            .map_err(|e| OciError::io(dest, e)),
        Err(e) => Err(e),
    };
    if result.is_err() {
        let _ = tokio::fs::remove_file(tmp).await;
    }
    result
}

async fn write_verified_inner<S, E>(
    stream: S,
    source: &str,
    tmp: &Path,
    expected: &Digest,
    size: u64,
    what: &str,
) -> Result<(), OciError>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::error::Error + 'static,
{
    let mut stream = std::pin::pin!(stream);
    let mut file = tokio::fs::File::create(tmp)
        .await
        .map_err(|e| OciError::io(tmp, e))?;
    let mut hasher = Sha256::new();
    let mut written: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| OciError::transport(source, &e))?;
        written += chunk.len() as u64;
        if written > size {
            return Err(OciError::SizeMismatch {
                what: what.to_owned(),
                expected: size,
                actual: written,
            });
        }
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(|e| OciError::io(tmp, e))?;
    }
    if written != size {
        return Err(OciError::SizeMismatch {
            what: what.to_owned(),
            expected: size,
            actual: written,
        });
    }
    let actual = Digest::from_hasher(hasher);
    if actual != *expected {
        return Err(OciError::DigestMismatch {
            what: what.to_owned(),
            expected: expected.clone(),
            actual,
        });
    }
    file.sync_all().await.map_err(|e| OciError::io(tmp, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        let c = parse_bearer_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:library/busybox:pull""#,
        )
        .unwrap();
        assert_eq!(c.realm, "https://auth.example/token");
        assert_eq!(c.service.as_deref(), Some("registry.example"));
        assert_eq!(c.scope.as_deref(), Some("repository:library/busybox:pull"));

        let c = parse_bearer_challenge(r#"bearer  realm = "http://h/t\"x" , service=svc"#).unwrap();
        assert_eq!(c.realm, "http://h/t\"x");
        assert_eq!(c.service.as_deref(), Some("svc"));
        assert_eq!(c.scope, None);

        assert_eq!(parse_bearer_challenge(r#"Basic realm="x""#), None);
        assert_eq!(parse_bearer_challenge(r#"Bearer service="x""#), None);
        assert_eq!(parse_bearer_challenge("Bearer"), None);
    }

    #[test]
    fn extracts_registry_messages() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"x"}},{"code":"DENIED","message":""}]}"#;
        assert_eq!(
            registry_message(body).as_deref(),
            Some("MANIFEST_UNKNOWN: manifest unknown; DENIED")
        );
        assert_eq!(registry_message(br#"{"errors":[]}"#), None);
        assert_eq!(registry_message(b"404 page not found"), None);
    }

    #[test]
    fn endpoints_put_mirrors_first_and_pick_schemes() {
        let client = RegistryClient::new(RegistryConfig {
            insecure: vec!["10.0.2.2:5000".into()],
            mirrors: BTreeMap::from([(
                "docker.io".to_owned(),
                vec![
                    "10.0.2.2:5000".to_owned(),
                    "https://mirror.example/".to_owned(),
                ],
            )]),
            ca_files: vec![],
        })
        .unwrap();
        let bases: Vec<(String, bool)> = client
            .endpoints("registry-1.docker.io")
            .into_iter()
            .map(|e| (e.base, e.mirror))
            .collect();
        assert_eq!(
            bases,
            [
                ("http://10.0.2.2:5000".to_owned(), true),
                ("https://mirror.example".to_owned(), true),
                ("https://registry-1.docker.io".to_owned(), false),
            ]
        );
        assert_eq!(
            client.endpoints("10.0.2.2:5000")[0].base,
            "http://10.0.2.2:5000"
        );
    }

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
        futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn write_verified_checks_digest_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        let dest = dir.path().join("dest");
        let good = Digest::of(b"hello world");

        write_verified(
            chunks(&[b"hello ", b"world"]),
            "test",
            &tmp,
            &dest,
            &good,
            11,
            "blob",
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello world");
        std::fs::remove_file(&dest).unwrap();

        let err = write_verified(
            chunks(&[b"hello ", b"WORLD"]),
            "test",
            &tmp,
            &dest,
            &good,
            11,
            "blob",
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, OciError::DigestMismatch { expected, .. } if *expected == good),
            "{err}"
        );

        let err = write_verified(
            chunks(&[b"hello ", b"world!"]),
            "test",
            &tmp,
            &dest,
            &good,
            11,
            "blob",
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, OciError::SizeMismatch { actual: 12, .. }),
            "{err}"
        );

        let err = write_verified(chunks(&[b"hello"]), "test", &tmp, &dest, &good, 11, "blob")
            .await
            .unwrap_err();
        assert!(
            matches!(err, OciError::SizeMismatch { actual: 5, .. }),
            "{err}"
        );

        let broken = futures::stream::iter(vec![
            Ok(Bytes::from_static(b"hello")),
            Err(std::io::Error::other("connection reset")),
        ]);
        let err = write_verified(broken, "http://r/x", &tmp, &dest, &good, 11, "blob")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("connection reset"), "{err}");

        assert!(!tmp.exists() && !dest.exists());
    }
}
