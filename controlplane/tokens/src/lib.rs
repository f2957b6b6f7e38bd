//! Service-account tokens as upstream issues them: JWTs signed with ES256 (ECDSA P-256,
//! SHA-256) by a key only the API server holds, carrying the issuer, the subject
//! (`system:serviceaccount:<ns>:<name>`), audiences, issue, not-before and expiry times, an id,
//! and the `kubernetes.io` claim naming the account and the object the token is bound to (a
//! pod, a secret or a node). This crate signs and checks signatures, times and audiences;
//! that the account and the bound object still exist is checked by the API server against
//! the live objects.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use serde::{Deserialize, Serialize};

pub mod oidc;

/// The issuer and default audience, as upstream's default `--service-account-issuer`.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The longest token a reader will consider (a header and claims of a few KiB at most).
const MAX_TOKEN: usize = 16 * 1024;
pub const KEY_FILE: &str = "sa.key";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
    #[error("the token's signature is invalid")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's issuer {0:?} is not this cluster's")]
    Issuer(String),
    #[error("the token's audiences {got:?} include none of {wanted:?}")]
    Audience {
        got: Vec<String>,
        wanted: Vec<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the service-account signing key {path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("the service-account signing key {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// An object a token is bound to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    pub name: String,
    pub uid: String,
}

/// The `kubernetes.io` claim.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub namespace: String,
    pub serviceaccount: ObjectRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<ObjectRef>,
    /// After this time a client should have fetched a fresh token (extended tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warnafter: Option<i64>,
}

/// The claims of a service-account token.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: Binding,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: String,
}

/// The key that signs and checks tokens.
pub struct Signer {
    key: EcdsaKeyPair,
    kid: String,
    rng: SystemRandom,
}

impl Signer {
    /// A signer over a PKCS#8 P-256 key.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, String> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|e| format!("not a PKCS#8 P-256 key ({e})"))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, key.public_key().as_ref());
        Ok(Self {
            kid: B64.encode(&digest.as_ref()[..16]),
            key,
            rng,
        })
    }

    /// A signer with a fresh key kept in memory only (tests, fuzzing).
    pub fn generate() -> Self {
        let rng = SystemRandom::new();
        let der = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("the system's randomness makes a P-256 key");
        Self::from_pkcs8(der.as_ref()).expect("a key just made parses")
    }

    /// Loads the key in `dir`, or makes one (readable by its owner only) when there is none.
    /// A key file that does not hold a key is an error naming the file, never replaced.
    pub fn load_or_generate(dir: &Path) -> Result<Self, KeyError> {
        let path = dir.join(KEY_FILE);
        let io = |source| KeyError::Io {
            path: path.clone(),
            source,
        };
        match std::fs::read(&path) {
            Ok(der) => Self::from_pkcs8(&der).map_err(|detail| KeyError::Corrupt {
                path: path.clone(),
                detail,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let rng = SystemRandom::new();
                let der = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|_| io(std::io::Error::other("generating a P-256 key failed")))?;
                std::fs::create_dir_all(dir).map_err(io)?;
                let tmp = path.with_extension("tmp");
                {
                    use std::io::Write;
                    use std::os::unix::fs::OpenOptionsExt;
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(&tmp)
                        .map_err(io)?;
                    f.write_all(der.as_ref()).map_err(io)?;
                    f.sync_all().map_err(io)?;
                }
                std::fs::rename(&tmp, &path).map_err(io)?;
                Self::from_pkcs8(der.as_ref()).map_err(|detail| KeyError::Corrupt {
                    path: path.clone(),
                    detail,
                })
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The key id tokens carry (`kid`), from the public key.
    pub fn key_id(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK (what `/openid/v1/jwks` serves).
    pub fn jwk(&self) -> serde_json::Value {
        let point = self.key.public_key().as_ref();
        // An uncompressed point: 0x04, then x and y of 32 bytes each.
        serde_json::json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
            "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65]),
        })
    }

    /// Signs `claims` into a compact JWT.
    pub fn issue(&self, claims: &Claims) -> String {
        self.sign(claims)
    }

    /// Signs any claims into a compact JWT (an identity provider's ID tokens, in tests).
    pub fn sign(&self, claims: &impl Serialize) -> String {
        let header = Header {
            alg: "ES256".into(),
            kid: self.kid.clone(),
        };
        let mut out = B64.encode(serde_json::to_vec(&header).unwrap_or_default());
        out.push('.');
        out.push_str(&B64.encode(serde_json::to_vec(claims).unwrap_or_default()));
        // Signing with a valid key only fails if the system's randomness does.
        let sig = self
            .key
            .sign(&self.rng, out.as_bytes())
            .map(|s| B64.encode(s.as_ref()))
            .unwrap_or_default();
        out.push('.');
        out.push_str(&sig);
        out
    }

    /// Checks the signature, the issuer, the times (at `now`, Unix seconds) and that one of
    /// `audiences` is among the token's; returns the claims.
    pub fn verify(&self, token: &str, now: i64, audiences: &[&str]) -> Result<Claims, TokenError> {
        let (signed, sig, claims) = parse(token)?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.key.public_key().as_ref())
            .verify(signed.as_bytes(), &sig)
            .map_err(|_| TokenError::Signature)?;
        if claims.iss != ISSUER {
            return Err(TokenError::Issuer(claims.iss));
        }
        // A minute of leeway for clocks, as upstream allows.
        if now > claims.exp + 60 {
            return Err(TokenError::Expired);
        }
        if now + 60 < claims.nbf {
            return Err(TokenError::NotYetValid);
        }
        if !claims.aud.iter().any(|a| audiences.contains(&a.as_str())) {
            return Err(TokenError::Audience {
                got: claims.aud,
                wanted: audiences.iter().map(|a| a.to_string()).collect(),
            });
        }
        Ok(claims)
    }
}

/// Whether a bearer token has a JWT's shape (three base64url parts).
pub fn looks_like_jwt(token: &str) -> bool {
    token.len() <= MAX_TOKEN
        && token.split('.').count() == 3
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Splits and decodes a token without checking it: the signed part, the signature and the
/// claims. Everything a caller sends passes through here first (and the fuzzer with it).
pub fn parse(token: &str) -> Result<(&str, Vec<u8>, Claims), TokenError> {
    if token.len() > MAX_TOKEN {
        return Err(TokenError::Malformed("longer than 16 KiB"));
    }
    let (signed, sig) = token
        .rsplit_once('.')
        .ok_or(TokenError::Malformed("not three dot-separated parts"))?;
    let (header, claims) = signed
        .split_once('.')
        .ok_or(TokenError::Malformed("not three dot-separated parts"))?;
    if claims.contains('.') {
        return Err(TokenError::Malformed("more than three parts"));
    }
    let header: Header = B64
        .decode(header)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(TokenError::Malformed("the header is not base64url JSON"))?;
    if header.alg != "ES256" {
        return Err(TokenError::Malformed("the algorithm is not ES256"));
    }
    let claims: Claims = B64
        .decode(claims)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(TokenError::Malformed("the claims are not base64url JSON"))?;
    let sig = B64
        .decode(sig)
        .map_err(|_| TokenError::Malformed("the signature is not base64url"))?;
    if sig.len() != 64 {
        return Err(TokenError::Malformed("the signature is not 64 bytes"));
    }
    Ok((signed, sig, claims))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(now: i64) -> Claims {
        Claims {
            iss: ISSUER.into(),
            sub: "system:serviceaccount:team:robot".into(),
            aud: vec![ISSUER.into()],
            exp: now + 3600,
            iat: now,
            nbf: now,
            jti: "id-1".into(),
            kubernetes: Binding {
                namespace: "team".into(),
                serviceaccount: ObjectRef {
                    name: "robot".into(),
                    uid: "u-1".into(),
                },
                pod: Some(ObjectRef {
                    name: "p".into(),
                    uid: "u-2".into(),
                }),
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_token_round_trips_and_every_tamper_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let s = Signer::load_or_generate(dir.path()).unwrap();
        let now = 1_800_000_000;
        let t = s.issue(&claims(now));
        assert!(looks_like_jwt(&t));
        assert_eq!(s.verify(&t, now, &[ISSUER]).unwrap(), claims(now));
        // The same key comes back from the file.
        let again = Signer::load_or_generate(dir.path()).unwrap();
        assert_eq!(again.key_id(), s.key_id());
        assert!(again.verify(&t, now, &[ISSUER]).is_ok());

        assert!(matches!(
            s.verify(&t, now + 3700, &[ISSUER]),
            Err(TokenError::Expired)
        ));
        assert!(matches!(
            s.verify(&t, now - 120, &[ISSUER]),
            Err(TokenError::NotYetValid)
        ));
        assert!(matches!(
            s.verify(&t, now, &["vault"]),
            Err(TokenError::Audience { .. })
        ));
        // Claims changed after signing.
        let (head, rest) = t.split_once('.').unwrap();
        let sig = rest.rsplit_once('.').unwrap().1;
        let mut forged = claims(now);
        forged.kubernetes.namespace = "kube-system".into();
        let body = B64.encode(serde_json::to_vec(&forged).unwrap());
        assert!(matches!(
            s.verify(&format!("{head}.{body}.{sig}"), now, &[ISSUER]),
            Err(TokenError::Signature)
        ));
        // Another cluster's key.
        let other = Signer::load_or_generate(tempfile::tempdir().unwrap().path()).unwrap();
        assert!(matches!(
            other.verify(&t, now, &[ISSUER]),
            Err(TokenError::Signature)
        ));
        // alg=none and garbage.
        let none = B64.encode(br#"{"alg":"none"}"#);
        let claims_part = t.split('.').nth(1).unwrap();
        assert!(matches!(
            s.verify(&format!("{none}.{claims_part}."), now, &[ISSUER]),
            Err(TokenError::Malformed(_))
        ));
        for bad in ["", "a.b", "a.b.c.d", "!!.??.**", &"x".repeat(20_000)] {
            assert!(
                matches!(s.verify(bad, now, &[ISSUER]), Err(TokenError::Malformed(_))),
                "{bad}"
            );
        }
        assert_eq!(s.jwk()["kid"], s.key_id());
    }

    #[test]
    fn a_corrupt_key_file_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEY_FILE), b"not a key").unwrap();
        let err = Signer::load_or_generate(dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("sa.key is corrupt"), "{err}");
        // And left as it was.
        assert_eq!(
            std::fs::read(dir.path().join(KEY_FILE)).unwrap(),
            b"not a key"
        );
    }
}
