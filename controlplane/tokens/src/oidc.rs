//! OpenID Connect ID tokens from an identity provider the cluster trusts (upstream's `--oidc-*`
//! options): the signature is checked against the provider's published keys (RS256 or ES256
//! JWKs), then the issuer, the client id among the audiences, the times, and a verified email
//! when the email is the username; the username and groups come from the configured claims,
//! with upstream's prefixes. Fetching the keys is the API server's; this is pure.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents, UnparsedPublicKey,
};
use serde_json::{Map, Value};

/// How ID tokens map to users (upstream's `--oidc-issuer-url`, `--oidc-client-id`,
/// `--oidc-username-claim`, `--oidc-username-prefix`, `--oidc-groups-claim`,
/// `--oidc-groups-prefix`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub issuer_url: String,
    pub client_id: String,
    /// `sub` by default.
    pub username_claim: String,
    /// None: upstream's default (`<issuer>#` unless the claim is `email`); `-` for none.
    pub username_prefix: Option<String>,
    pub groups_claim: Option<String>,
    pub groups_prefix: String,
}

impl Settings {
    pub fn new(issuer_url: &str, client_id: &str) -> Self {
        Self {
            issuer_url: issuer_url.into(),
            client_id: client_id.into(),
            username_claim: "sub".into(),
            username_prefix: None,
            groups_claim: None,
            groups_prefix: String::new(),
        }
    }

    /// Problems with the settings, each naming the option.
    pub fn check(&self) -> Result<(), String> {
        if !self.issuer_url.starts_with("https://") {
            return Err(format!(
                "--oidc-issuer-url {:?}: the issuer must be an https URL",
                self.issuer_url
            ));
        }
        if self.client_id.is_empty() {
            return Err("--oidc-client-id is required with --oidc-issuer-url".into());
        }
        if self.username_claim.is_empty() {
            return Err("--oidc-username-claim must not be empty".into());
        }
        Ok(())
    }

    fn prefix(&self) -> String {
        match self.username_prefix.as_deref() {
            Some("-") => String::new(),
            Some(p) => p.to_string(),
            None if self.username_claim == "email" => String::new(),
            None => format!("{}#", self.issuer_url),
        }
    }
}

/// One published key.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Key {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An uncompressed P-256 point.
    Ec(Vec<u8>),
}

/// The provider's keys (its JWKS), by key id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeySet {
    keys: Vec<(String, Key)>,
}

impl KeySet {
    /// Reads a JWKS document; keys of other types or curves are left out.
    pub fn parse(jwks: &Value) -> Result<Self, String> {
        let list = jwks["keys"]
            .as_array()
            .ok_or("the JWKS has no \"keys\" list")?;
        let bytes = |k: &Value, f: &str| -> Option<Vec<u8>> {
            k[f].as_str()
                .and_then(|s| B64.decode(s.trim_end_matches('=')).ok())
        };
        let mut keys = Vec::new();
        for k in list {
            if k["use"].as_str().is_some_and(|u| u != "sig") {
                continue;
            }
            let kid = k["kid"].as_str().unwrap_or_default().to_string();
            let key = match (k["kty"].as_str(), k["crv"].as_str()) {
                (Some("RSA"), _) => match (bytes(k, "n"), bytes(k, "e")) {
                    (Some(n), Some(e)) => Key::Rsa { n, e },
                    _ => continue,
                },
                (Some("EC"), Some("P-256")) => match (bytes(k, "x"), bytes(k, "y")) {
                    (Some(x), Some(y)) if x.len() == 32 && y.len() == 32 => {
                        let mut point = vec![4u8];
                        point.extend(x);
                        point.extend(y);
                        Key::Ec(point)
                    }
                    _ => continue,
                },
                _ => continue,
            };
            keys.push((kid, key));
        }
        Ok(Self { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a key with this id is known.
    pub fn has(&self, kid: &str) -> bool {
        self.keys.iter().any(|(k, _)| k == kid)
    }
}

/// Why an ID token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OidcError {
    #[error("the ID token is malformed: {0}")]
    Malformed(&'static str),
    #[error("the ID token's key {0:?} is not among the issuer's keys")]
    UnknownKey(String),
    #[error("the ID token's signature is invalid")]
    Signature,
    #[error("the ID token's issuer {0:?} is not the configured one")]
    Issuer(String),
    #[error("the ID token is not for client {0:?}")]
    Audience(String),
    #[error("the ID token has expired")]
    Expired,
    #[error("the ID token is not valid yet")]
    NotYetValid,
    #[error("the ID token has no string claim {0:?} for the username")]
    Username(String),
    #[error("the ID token's email is not verified")]
    EmailNotVerified,
    #[error("the ID token's claim {0:?} is neither a string nor a list of strings")]
    Groups(String),
}

/// Who a valid ID token stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub username: String,
    pub groups: Vec<String>,
}

/// The issuer a token claims, read without checking anything (to pick the authenticator).
pub fn issuer_of(token: &str) -> Option<String> {
    let claims = token.split('.').nth(1)?;
    let v: Value = serde_json::from_slice(&B64.decode(claims).ok()?).ok()?;
    v["iss"].as_str().map(str::to_string)
}

/// The key id a token's header names ("" when none).
pub fn key_id(token: &str) -> Result<String, OidcError> {
    let header = token
        .split('.')
        .next()
        .ok_or(OidcError::Malformed("not a JWT"))?;
    let h: Value = B64
        .decode(header)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(OidcError::Malformed("the header is not base64url JSON"))?;
    Ok(h["kid"].as_str().unwrap_or_default().to_string())
}

fn verify_signature(keys: &KeySet, token: &str) -> Result<Map<String, Value>, OidcError> {
    if token.len() > 16 * 1024 {
        return Err(OidcError::Malformed("longer than 16 KiB"));
    }
    let (signed, sig) = token
        .rsplit_once('.')
        .ok_or(OidcError::Malformed("not three dot-separated parts"))?;
    let (header, claims) = signed
        .split_once('.')
        .ok_or(OidcError::Malformed("not three dot-separated parts"))?;
    let h: Value = B64
        .decode(header)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(OidcError::Malformed("the header is not base64url JSON"))?;
    let sig = B64
        .decode(sig)
        .map_err(|_| OidcError::Malformed("the signature is not base64url"))?;
    let alg = h["alg"].as_str().unwrap_or_default();
    let kid = h["kid"].as_str().unwrap_or_default();
    let candidates: Vec<&Key> = keys
        .keys
        .iter()
        .filter(|(k, _)| kid.is_empty() || k == kid)
        .map(|(_, key)| key)
        .collect();
    if candidates.is_empty() {
        return Err(OidcError::UnknownKey(kid.to_string()));
    }
    let ok = candidates.iter().any(|key| match (alg, key) {
        ("RS256", Key::Rsa { n, e }) => RsaPublicKeyComponents { n, e }
            .verify(&RSA_PKCS1_2048_8192_SHA256, signed.as_bytes(), &sig)
            .is_ok(),
        ("ES256", Key::Ec(point)) => UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
            .verify(signed.as_bytes(), &sig)
            .is_ok(),
        _ => false,
    });
    if !ok {
        return match alg {
            "RS256" | "ES256" => Err(OidcError::Signature),
            _ => Err(OidcError::Malformed(
                "the algorithm is neither RS256 nor ES256",
            )),
        };
    }
    B64.decode(claims)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(OidcError::Malformed(
            "the claims are not a base64url JSON object",
        ))
}

/// Checks an ID token at `now` (Unix seconds) and maps it to a user.
pub fn verify(
    settings: &Settings,
    keys: &KeySet,
    token: &str,
    now: i64,
) -> Result<Identity, OidcError> {
    let claims = verify_signature(keys, token)?;
    let iss = claims
        .get("iss")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if iss != settings.issuer_url {
        return Err(OidcError::Issuer(iss.to_string()));
    }
    let for_us = match claims.get("aud") {
        Some(Value::String(a)) => *a == settings.client_id,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(&settings.client_id)),
        _ => false,
    };
    if !for_us {
        return Err(OidcError::Audience(settings.client_id.clone()));
    }
    let time = |f: &str| claims.get(f).and_then(Value::as_f64).map(|t| t as i64);
    // A minute of leeway for clocks, as for the cluster's own tokens.
    match time("exp") {
        Some(exp) if now <= exp + 60 => {}
        Some(_) => return Err(OidcError::Expired),
        None => return Err(OidcError::Malformed("no exp claim")),
    }
    if time("nbf").is_some_and(|nbf| now + 60 < nbf) {
        return Err(OidcError::NotYetValid);
    }
    let name = claims
        .get(&settings.username_claim)
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| OidcError::Username(settings.username_claim.clone()))?;
    if settings.username_claim == "email"
        && let Some(v) = claims.get("email_verified")
        && v != &Value::Bool(true)
    {
        return Err(OidcError::EmailNotVerified);
    }
    let mut groups = Vec::new();
    if let Some(g) = &settings.groups_claim {
        match claims.get(g) {
            None => {}
            Some(Value::String(one)) => groups.push(one.clone()),
            Some(Value::Array(list)) => {
                for v in list {
                    groups.push(
                        v.as_str()
                            .ok_or_else(|| OidcError::Groups(g.clone()))?
                            .to_string(),
                    );
                }
            }
            Some(_) => return Err(OidcError::Groups(g.clone())),
        }
    }
    Ok(Identity {
        username: format!("{}{name}", settings.prefix()),
        groups: groups
            .into_iter()
            .map(|g| format!("{}{g}", settings.groups_prefix))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::Signer;

    const ISS: &str = "https://idp.example";

    fn keys(s: &Signer) -> KeySet {
        KeySet::parse(&json!({"keys": [s.jwk()]})).unwrap()
    }

    fn settings() -> Settings {
        Settings {
            username_claim: "email".into(),
            groups_claim: Some("groups".into()),
            groups_prefix: "oidc:".into(),
            ..Settings::new(ISS, "strake")
        }
    }

    fn token(s: &Signer, extra: Value) -> String {
        let mut c = json!({"iss": ISS, "aud": ["other", "strake"], "sub": "1234", "exp": 2000,
            "iat": 1000, "email": "alice@example.com", "email_verified": true, "groups": ["devs", "ops"]});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        s.sign(&c)
    }

    #[test]
    fn valid_tokens_map_to_users_with_upstreams_prefixes() {
        let s = Signer::generate();
        let id = verify(&settings(), &keys(&s), &token(&s, json!({})), 1500).unwrap();
        assert_eq!(id.username, "alice@example.com");
        assert_eq!(id.groups, ["oidc:devs", "oidc:ops"]);
        // By `sub`, the issuer prefixes the name unless told otherwise.
        let by_sub = Settings::new(ISS, "strake");
        let id = verify(&by_sub, &keys(&s), &token(&s, json!({})), 1500).unwrap();
        assert_eq!(id.username, "https://idp.example#1234");
        assert!(id.groups.is_empty());
        let bare = Settings {
            username_prefix: Some("-".into()),
            ..by_sub
        };
        assert_eq!(
            verify(&bare, &keys(&s), &token(&s, json!({})), 1500)
                .unwrap()
                .username,
            "1234"
        );
    }

    #[test]
    fn bad_tokens_are_refused_naming_why() {
        let s = Signer::generate();
        let other = Signer::generate();
        let k = keys(&s);
        let cfg = settings();
        let err = |t: &str, now| verify(&cfg, &k, t, now).unwrap_err();
        assert_eq!(err(&token(&s, json!({})), 3000), OidcError::Expired);
        assert_eq!(
            err(&token(&s, json!({"nbf": 5000})), 1500),
            OidcError::NotYetValid
        );
        assert_eq!(
            err(&token(&s, json!({"iss": "https://evil"})), 1500),
            OidcError::Issuer("https://evil".into())
        );
        assert_eq!(
            err(&token(&s, json!({"aud": "other"})), 1500),
            OidcError::Audience("strake".into())
        );
        assert_eq!(
            err(&token(&s, json!({"email_verified": false})), 1500),
            OidcError::EmailNotVerified
        );
        assert_eq!(
            err(&token(&s, json!({"groups": [1]})), 1500),
            OidcError::Groups("groups".into())
        );
        assert_eq!(
            err(&token(&other, json!({})), 1500),
            OidcError::UnknownKey(other.key_id().into())
        );
        // Another key under the known key id: the signature does not hold.
        let forged = {
            let t = token(&other, json!({}));
            let (h, rest) = t.split_once('.').unwrap();
            let mut header: Value = serde_json::from_slice(&B64.decode(h).unwrap()).unwrap();
            header["kid"] = s.key_id().into();
            format!("{}.{rest}", B64.encode(header.to_string()))
        };
        assert_eq!(err(&forged, 1500), OidcError::Signature);
        assert!(matches!(err("a.b", 1500), OidcError::Malformed(_)));
        assert_eq!(issuer_of(&token(&s, json!({}))).as_deref(), Some(ISS));
    }

    /// An RS256 token and its key, made with openssl (a 2048-bit key; `groups` a string).
    const RSA_N: &str = "scHEoAhzbxY0gEaF9qe5g2NR1NwVwhEt3zaB5YzaKGle7nog8SrzwyFp0-eHKQ5E-E0rWJiksNyfazkxW4SVaTDvBFrToZI4oqwMdreJIl-KmwfAtoZdiJJX4VCr3rS1xYaWCNfyNcVr7KH8OSDN8ssHUVUl55jE1U9Y81iZV_j9vG1SVebuy9DOnwlIO6ZoWi1wu_6_RQDWJOKcgM8iO54FU23qg2AwNnClHur7eHHJ-T1dHpiRVpx01dHv5zKjZQ3zsKkUIi65y9zbV_Cs3TRSwHN0gALcUZeDf2gVQPAqB01k3HKYLRJuBgY6CRs2W-Jj0R2jJz3Q_4fz_hIdNQ";
    const RSA_TOKEN: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6InJzYS0xIiwidHlwIjoiSldUIn0.eyJpc3MiOiJodHRwczovL2lkcC5leGFtcGxlIiwiYXVkIjoic3RyYWtlIiwic3ViIjoiY2Fyb2wiLCJleHAiOjQxMDI0NDQ4MDAsImlhdCI6MTcwMDAwMDAwMCwiZW1haWwiOiJjYXJvbEBleGFtcGxlLmNvbSIsImVtYWlsX3ZlcmlmaWVkIjp0cnVlLCJncm91cHMiOiJhZG1pbnMifQ.EAd_CaG81yw7spHNBTfxV9renEDCV8jPf5_uBd73rndBc7eh87Km4tsALAeQiJxnJl1K8DjjWWFKVnwlQ_aIa-ArkTYzU6WlLvO9cd4Snl8l3ywgL0KBHGLpOuBCyN41LgMLsJLANDy2UhvbhJq46A6oN6WSVo-YBAwkNtoWB2wLkfh2tpYJ1wcUWt4neluO6flX2D9_7vIySqppHSTJgBLXKcktGczidyOc5c-IEfh99_EK2Krvkl7jEbcgjiO6A1ZTmwlc7e0iBmaQr8MWc_v7L19C1RyIsnkSeNxZMo2bNjMNfipxSCrBZsIEXM-WzeuQiIZc9VvDGTLUi3mTmw";

    #[test]
    fn rs256_tokens_verify_against_rsa_keys() {
        let keys = KeySet::parse(&json!({"keys": [
            {"kty": "RSA", "kid": "rsa-1", "use": "sig", "n": RSA_N, "e": "AQAB"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        ]}))
        .unwrap();
        assert_eq!(keys.len(), 1, "only the RSA key is kept");
        let cfg = Settings {
            username_claim: "email".into(),
            groups_claim: Some("groups".into()),
            ..Settings::new(ISS, "strake")
        };
        let id = verify(&cfg, &keys, RSA_TOKEN, 1_800_000_000).unwrap();
        assert_eq!(id.username, "carol@example.com");
        assert_eq!(id.groups, ["admins"]);
        // A changed claim breaks the signature.
        let mut parts: Vec<String> = RSA_TOKEN.split('.').map(str::to_string).collect();
        let mut claims: Value = serde_json::from_slice(&B64.decode(&parts[1]).unwrap()).unwrap();
        claims["email"] = "mallory@example.com".into();
        parts[1] = B64.encode(claims.to_string());
        assert_eq!(
            verify(&cfg, &keys, &parts.join("."), 1_800_000_000).unwrap_err(),
            OidcError::Signature
        );
    }

    #[test]
    fn settings_are_checked() {
        assert!(Settings::new("http://idp", "x").check().is_err());
        assert!(Settings::new(ISS, "").check().is_err());
        assert!(Settings::new(ISS, "x").check().is_ok());
    }
}
