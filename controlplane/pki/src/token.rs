//! Bootstrap tokens and the token-signed cluster-info document.
//!
//! A bootstrap token `<id>.<secret>` is given to the node on its kernel command line and to the
//! operator. A client that does not yet trust the cluster fetches `ClusterInfo` (the CA bundle and an
//! HMAC-SHA256 of it keyed by the token), checks the HMAC, and from then on pins that CA. A server
//! that does not hold the token cannot forge the signature, so a man in the middle is detected.

use std::fmt;
use std::str::FromStr;

use hmac::{Hmac, Mac};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::PkiError;

/// A validated bootstrap token.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    id: String,
    secret: String,
}

impl BootstrapToken {
    /// Generates a random token.
    pub fn generate() -> Self {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::thread_rng();
        let mut pick = |n: usize| -> String {
            (0..n)
                .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
                .collect()
        };
        let id = pick(6);
        let secret = pick(16);
        Self { id, secret }
    }

    /// The public half, safe to log.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Constant-time comparison against a presented token string.
    pub fn matches(&self, presented: &str) -> bool {
        let mine = self.to_string();
        let a = mine.as_bytes();
        let b = presented.as_bytes();
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length; this cannot fail.
        <Hmac<Sha256> as Mac>::new_from_slice(self.to_string().as_bytes())
            .expect("hmac takes any key length")
    }

    /// Signs the CA bundle for discovery.
    pub fn sign(&self, ca_pem: &str) -> ClusterInfo {
        let mut mac = self.mac();
        mac.update(ca_pem.as_bytes());
        ClusterInfo {
            token_id: self.id.clone(),
            ca_pem: ca_pem.to_string(),
            signature: hex::encode(mac.finalize().into_bytes()),
        }
    }

    /// Verifies a cluster-info document and returns the CA bundle it carries.
    pub fn verify<'a>(&self, info: &'a ClusterInfo) -> Result<&'a str, PkiError> {
        let sig = hex::decode(&info.signature).map_err(|_| PkiError::BadSignature)?;
        let mut mac = self.mac();
        mac.update(info.ca_pem.as_bytes());
        mac.verify_slice(&sig).map_err(|_| PkiError::BadSignature)?;
        Ok(&info.ca_pem)
    }
}

impl FromStr for BootstrapToken {
    type Err = PkiError;
    fn from_str(s: &str) -> Result<Self, PkiError> {
        let (id, secret) = s.trim().split_once('.').ok_or(PkiError::BadToken)?;
        let ok = |p: &str, n: usize| {
            p.len() == n
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        if !ok(id, 6) || !ok(secret, 16) {
            return Err(PkiError::BadToken);
        }
        Ok(Self {
            id: id.into(),
            secret: secret.into(),
        })
    }
}

impl fmt::Display for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.id, self.secret)
    }
}

impl fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BootstrapToken({}.<redacted>)", self.id)
    }
}

/// The discovery document served unauthenticated at `/strake/v1/cluster-info`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterInfo {
    pub token_id: String,
    pub ca_pem: String,
    pub signature: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        let t: BootstrapToken = "abcdef.0123456789abcdef".parse().unwrap();
        assert_eq!(t.to_string(), "abcdef.0123456789abcdef");
        assert!(!format!("{t:?}").contains("0123456789"));
        for bad in [
            "",
            "abc.def",
            "ABCDEF.0123456789abcdef",
            "abcdef.0123456789abcde",
            "abcdef0123456789abcdef",
        ] {
            assert!(bad.parse::<BootstrapToken>().is_err(), "{bad}");
        }
        let g = BootstrapToken::generate();
        assert_eq!(g.to_string().parse::<BootstrapToken>().unwrap(), g);
    }

    #[test]
    fn signature_binds_ca_to_token() {
        let t = BootstrapToken::generate();
        let info = t.sign("CA PEM");
        assert_eq!(t.verify(&info).unwrap(), "CA PEM");
        let mut forged = info.clone();
        forged.ca_pem = "EVIL".into();
        assert!(t.verify(&forged).is_err());
        assert!(BootstrapToken::generate().verify(&info).is_err());
        assert!(t.matches(&t.to_string()));
        assert!(!t.matches("abcdef.0123456789abcdef"));
    }
}
