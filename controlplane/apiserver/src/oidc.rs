//! Users of an OpenID Connect identity provider (`--oidc-issuer-url` and friends): ID tokens
//! are checked by `strake_tokens::oidc` against the provider's keys, fetched from its
//! discovery document (`<issuer>/.well-known/openid-configuration`, then `jwks_uri`) over
//! HTTPS, trusting `--oidc-ca-file` or the system's bundle. The keys are fetched at the first
//! token and again when a token names a key not seen yet (at most every 2 s), so the
//! provider can rotate its keys.

use std::time::{Duration, Instant};

use strake_apimachinery::UserInfo;
use strake_apimachinery::user;
use strake_tokens::oidc::{self, KeySet, Settings};
use tokio::sync::Mutex;

/// The system's trust bundle on Debian-like systems, for providers with public certificates.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Unknown key ids fetch the keys again at most this often.
const REFETCH: Duration = Duration::from_secs(2);

pub struct Oidc {
    settings: Settings,
    client: reqwest::Client,
    keys: Mutex<(KeySet, Option<Instant>)>,
}

impl Oidc {
    /// The authenticator, trusting `ca_pem` (else the system's bundle) for the provider.
    pub fn new(settings: Settings, ca_pem: Option<String>) -> Result<Self, String> {
        settings.check()?;
        let ca = match ca_pem {
            Some(p) => p,
            None => std::fs::read_to_string(SYSTEM_BUNDLE).map_err(|e| {
                format!("no --oidc-ca-file, and the system's trust bundle {SYSTEM_BUNDLE}: {e}")
            })?,
        };
        let tls = strake_pki::client_config(&ca, None)
            .map_err(|e| format!("the OIDC CA certificates: {e}"))?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            settings,
            client,
            keys: Mutex::new((KeySet::default(), None)),
        })
    }

    /// Whether a token says it comes from this provider.
    pub fn claims_issuer(&self, token: &str) -> bool {
        oidc::issuer_of(token).is_some_and(|i| i == self.settings.issuer_url)
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let discovery = format!(
            "{}/.well-known/openid-configuration",
            self.settings.issuer_url.trim_end_matches('/')
        );
        let get = |url: String| async move {
            let r = self
                .client
                .get(&url)
                .send()
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            if !r.status().is_success() {
                return Err(format!("GET {url}: {}", r.status()));
            }
            r.json::<serde_json::Value>()
                .await
                .map_err(|e| format!("GET {url}: {e}"))
        };
        let doc = get(discovery.clone()).await?;
        if doc["issuer"].as_str() != Some(self.settings.issuer_url.as_str()) {
            return Err(format!(
                "{discovery} names the issuer {}, not {:?}",
                doc["issuer"], self.settings.issuer_url
            ));
        }
        let jwks = doc["jwks_uri"]
            .as_str()
            .ok_or_else(|| format!("{discovery} has no jwks_uri"))?;
        KeySet::parse(&get(jwks.to_string()).await?)
    }

    /// The user an ID token stands for, or why not.
    pub async fn authenticate(&self, token: &str) -> Result<UserInfo, String> {
        let kid = oidc::key_id(token).map_err(|e| e.to_string())?;
        let keys = {
            let mut held = self.keys.lock().await;
            let unknown = held.0.is_empty() || (!kid.is_empty() && !held.0.has(&kid));
            if unknown && held.1.is_none_or(|at| at.elapsed() >= REFETCH) {
                held.1 = Some(Instant::now());
                match self.fetch().await {
                    Ok(k) => held.0 = k,
                    Err(e) => tracing::warn!(error = %e, "cannot fetch the OIDC provider's keys"),
                }
            }
            held.0.clone()
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        let id = oidc::verify(&self.settings, &keys, token, now).map_err(|e| e.to_string())?;
        let mut groups = id.groups;
        groups.push(user::AUTHENTICATED.into());
        Ok(UserInfo {
            name: id.username,
            groups,
            ..Default::default()
        })
    }
}
