//! Validated image names: [`Digest`] (`sha256:<64 hex>`) and [`ImageRef`]
//! (`registry/repository:tag` or `registry/repository@digest`), parsed once at the boundary.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

use crate::error::OciError;

/// Registry host that short names (`busybox`, `docker.io/...`) resolve to.
pub const DOCKER_HUB_REGISTRY: &str = "registry-1.docker.io";

/// Longest accepted image reference; real ones are far shorter.
const MAX_REFERENCE_LEN: usize = 1024;
/// Docker's limit on the repository part.
const MAX_REPOSITORY_LEN: usize = 255;
/// Docker's limit on tags.
const MAX_TAG_LEN: usize = 128;

/// A content digest. Only sha256 is supported, written `sha256:<64 lowercase hex>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`; anything else is rejected.
    pub fn parse(input: &str) -> Result<Digest, OciError> {
        let invalid = || OciError::InvalidDigest {
            input: input.chars().take(100).collect(),
        };
        let hex = input.strip_prefix("sha256:").ok_or_else(invalid)?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(invalid());
        }
        Ok(Digest(input.to_owned()))
    }

    /// The sha256 digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(bytes))
    }

    /// Finishes a running sha256 computation.
    pub fn from_hasher(hasher: Sha256) -> Digest {
        Digest(format!("sha256:{}", hex::encode(hasher.finalize())))
    }

    /// The 64 hex characters after `sha256:`.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// The full `sha256:<hex>` form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.0)
    }
}

impl FromStr for Digest {
    type Err = OciError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// What an [`ImageRef`] points at inside its repository.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reference {
    /// A mutable tag such as `latest`.
    Tag(String),
    /// An immutable manifest (or index) digest.
    Digest(Digest),
}

impl Reference {
    /// The form used in `/v2/<repo>/manifests/<reference>`.
    pub fn as_str(&self) -> &str {
        match self {
            Reference::Tag(tag) => tag,
            Reference::Digest(digest) => digest.as_str(),
        }
    }
}

/// A fully qualified image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// `host[:port]`, with Docker Hub spelled [`DOCKER_HUB_REGISTRY`].
    pub registry: String,
    /// Slash-separated lowercase path, e.g. `library/busybox`.
    pub repository: String,
    /// Tag or digest.
    pub reference: Reference,
}

impl ImageRef {
    /// Parses a reference the way Docker does: the first path component is a registry only
    /// if it contains `.` or `:` or is `localhost`; otherwise the image lives on Docker Hub
    /// (single-component names gain `library/`). A missing tag means `latest`. When both a
    /// tag and a digest are given, the digest wins and the tag is dropped.
    pub fn parse(input: &str) -> Result<ImageRef, OciError> {
        let invalid = |reason: &str| OciError::InvalidReference {
            input: input.chars().take(200).collect(),
            reason: reason.to_owned(),
        };
        if input.is_empty() {
            return Err(invalid("empty reference"));
        }
        if input.len() > MAX_REFERENCE_LEN {
            return Err(invalid("reference too long"));
        }
        let (name_and_tag, digest) = match input.split_once('@') {
            Some((rest, digest)) => {
                let digest = Digest::parse(digest)
                    .map_err(|_| invalid("digest must be sha256:<64 lowercase hex characters>"))?;
                (rest, Some(digest))
            }
            None => (input, None),
        };
        let last_slash = name_and_tag.rfind('/');
        let (name, tag) = match name_and_tag.rfind(':') {
            Some(colon) if last_slash.is_none_or(|slash| colon > slash) => {
                (&name_and_tag[..colon], Some(&name_and_tag[colon + 1..]))
            }
            _ => (name_and_tag, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains(['.', ':']) || first == "localhost" || first.starts_with('[') =>
            {
                (first.to_owned(), rest.to_owned())
            }
            _ => (DOCKER_HUB_REGISTRY.to_owned(), name.to_owned()),
        };
        let registry = canonical_registry(&registry);
        validate_registry(&registry).map_err(invalid)?;
        let repository = if registry == DOCKER_HUB_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        validate_repository(&repository).map_err(invalid)?;
        let reference = match (digest, tag) {
            (Some(digest), _) => Reference::Digest(digest),
            (None, Some(tag)) => {
                validate_tag(tag).map_err(invalid)?;
                Reference::Tag(tag.to_owned())
            }
            (None, None) => Reference::Tag("latest".to_owned()),
        };
        Ok(ImageRef {
            registry,
            repository,
            reference,
        })
    }

    /// The same repository at another reference (used after resolving a tag).
    pub fn with_reference(&self, reference: Reference) -> ImageRef {
        ImageRef {
            reference,
            ..self.clone()
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        match &self.reference {
            Reference::Tag(tag) => write!(f, ":{tag}"),
            Reference::Digest(digest) => write!(f, "@{digest}"),
        }
    }
}

impl FromStr for ImageRef {
    type Err = OciError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

/// Maps Docker Hub's aliases onto the host that actually serves the registry API.
pub(crate) fn canonical_registry(registry: &str) -> String {
    match registry {
        "docker.io" | "index.docker.io" => DOCKER_HUB_REGISTRY.to_owned(),
        other => other.to_owned(),
    }
}

/// `host[:port]` where host is DNS labels, an IPv4 address, or a bracketed IPv6 address.
fn validate_registry(registry: &str) -> Result<(), &'static str> {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or("unterminated IPv6 registry address")?;
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("invalid IPv6 registry address");
        }
        match after {
            "" => ("", None),
            _ => (
                "",
                Some(
                    after
                        .strip_prefix(':')
                        .ok_or("junk after IPv6 registry address")?,
                ),
            ),
        }
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        }
    };
    if !registry.starts_with('[') {
        if host.is_empty() || host.len() > 253 {
            return Err("invalid registry host");
        }
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        if !host.split('.').all(label_ok) {
            return Err("invalid registry host");
        }
    }
    if let Some(port) = port
        && !(port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok_and(|p| p > 0))
    {
        return Err("invalid registry port");
    }
    Ok(())
}

/// Slash-separated components of `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`.
fn validate_repository(repository: &str) -> Result<(), &'static str> {
    if repository.is_empty() {
        return Err("empty repository name");
    }
    if repository.len() > MAX_REPOSITORY_LEN {
        return Err("repository name longer than 255 characters");
    }
    for component in repository.split('/') {
        if !valid_path_component(component) {
            return Err(
                "repository components must be lowercase letters and digits separated by '.', '_', '__' or '-'",
            );
        }
    }
    Ok(())
}

fn valid_path_component(component: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = component.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    // Every run of non-alphanumerics must be one allowed separator.
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let ok = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn validate_tag(tag: &str) -> Result<(), &'static str> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    match bytes.first() {
        None => Err("empty tag"),
        Some(_) if bytes.len() > MAX_TAG_LEN => Err("tag longer than 128 characters"),
        Some(&first) if !word(first) => Err("tag must start with a letter, digit or '_'"),
        Some(_) if !bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-') => {
            Err("tag may only contain letters, digits, '_', '.' and '-'")
        }
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn digest_accepts_only_lowercase_sha256() {
        let good = format!("sha256:{HEX}");
        let digest = Digest::parse(&good).unwrap();
        assert_eq!(digest.hex(), HEX);
        assert_eq!(digest.to_string(), good);
        for bad in [
            String::new(),
            HEX.to_owned(),
            format!("sha512:{HEX}"),
            format!("sha256:{}", &HEX[1..]),
            format!("sha256:{HEX}0"),
            format!("sha256:{}", HEX.to_uppercase()),
            format!("sha256:{}g", &HEX[1..]),
            format!(" sha256:{HEX}"),
        ] {
            assert!(
                matches!(Digest::parse(&bad), Err(OciError::InvalidDigest { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn digest_of_matches_known_value() {
        assert_eq!(
            Digest::of(b"").as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn digest_serde_validates() {
        let json = format!("\"sha256:{HEX}\"");
        let digest: Digest = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&digest).unwrap(), json);
        assert!(serde_json::from_str::<Digest>("\"sha256:abc\"").is_err());
    }

    fn parsed(input: &str) -> (String, String, Reference) {
        let r = ImageRef::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
        (r.registry, r.repository, r.reference)
    }

    fn tag(t: &str) -> Reference {
        Reference::Tag(t.to_owned())
    }

    #[test]
    fn parses_docker_hub_short_names() {
        let hub = DOCKER_HUB_REGISTRY.to_owned();
        assert_eq!(
            parsed("busybox"),
            (hub.clone(), "library/busybox".into(), tag("latest"))
        );
        assert_eq!(
            parsed("busybox:1.36"),
            (hub.clone(), "library/busybox".into(), tag("1.36"))
        );
        assert_eq!(
            parsed("user/app:v1"),
            (hub.clone(), "user/app".into(), tag("v1"))
        );
        assert_eq!(
            parsed("docker.io/busybox"),
            (hub.clone(), "library/busybox".into(), tag("latest"))
        );
        assert_eq!(
            parsed("index.docker.io/library/busybox"),
            (hub, "library/busybox".into(), tag("latest"))
        );
        assert_eq!(
            ImageRef::parse("busybox").unwrap().to_string(),
            "registry-1.docker.io/library/busybox:latest"
        );
    }

    #[test]
    fn parses_explicit_registries() {
        assert_eq!(
            parsed("10.0.2.2:5000/busybox:latest"),
            ("10.0.2.2:5000".into(), "busybox".into(), tag("latest"))
        );
        assert_eq!(
            parsed("localhost/a/b"),
            ("localhost".into(), "a/b".into(), tag("latest"))
        );
        assert_eq!(
            parsed("localhost:5000/a"),
            ("localhost:5000".into(), "a".into(), tag("latest"))
        );
        assert_eq!(
            parsed("ghcr.io/org/sub/app_x-y.z__w:V1.2-rc_3"),
            (
                "ghcr.io".into(),
                "org/sub/app_x-y.z__w".into(),
                tag("V1.2-rc_3")
            )
        );
        assert_eq!(
            parsed("[::1]:5000/x:y"),
            ("[::1]:5000".into(), "x".into(), tag("y"))
        );
    }

    #[test]
    fn parses_digests_and_round_trips() {
        let digest = Digest::parse(&format!("sha256:{HEX}")).unwrap();
        for input in [
            format!("127.0.0.1:5000/app@sha256:{HEX}"),
            format!("127.0.0.1:5000/app:v1@sha256:{HEX}"),
        ] {
            let r = ImageRef::parse(&input).unwrap();
            assert_eq!(r.reference, Reference::Digest(digest.clone()));
            assert_eq!(r.to_string(), format!("127.0.0.1:5000/app@sha256:{HEX}"));
        }
        for input in [
            "127.0.0.1:5000/app:v1",
            "ghcr.io/a/b:c",
            "registry-1.docker.io/library/x:1",
        ] {
            assert_eq!(ImageRef::parse(input).unwrap().to_string(), input);
        }
    }

    #[test]
    fn rejects_bad_references() {
        let long_tag = format!("app:{}", "a".repeat(129));
        let long_repo = format!("r.io/{}", "a".repeat(256));
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox:-x",
            "busybox:a/b",
            "r.io/",
            "r.io//a",
            "r.io/a//b",
            "r.io/a/",
            "r.io/-a",
            "r.io/a-",
            "r.io/a..b",
            "r.io/a___b",
            "r.io/a b",
            "r.io:0/a",
            "r.io:99999/a",
            "r.io:5x/a",
            "-r.io/a",
            "[zz]:5000/a",
            "busybox@sha256:abc",
            "busybox@md5:0123",
            long_tag.as_str(),
            long_repo.as_str(),
        ] {
            assert!(
                matches!(ImageRef::parse(bad), Err(OciError::InvalidReference { .. })),
                "{bad:?} accepted: {:?}",
                ImageRef::parse(bad)
            );
        }
    }
}
