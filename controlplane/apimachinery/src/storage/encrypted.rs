//! Encryption at rest, as a layer over any [`ObjectStore`]: values under the configured
//! resources' key prefixes are sealed with AES-256-GCM before they reach the store, and opened
//! when read or watched, so nothing above this layer (the registry, the watch cache) sees
//! ciphertext and nothing below it sees plaintext.
//!
//! The configuration is upstream's `EncryptionConfiguration` (apiserver.config.k8s.io/v1):
//! per list of resources, providers in order; the first encrypts new writes, every one may
//! open what it sealed. `aesgcm` (32-byte keys, named) and `identity` (plaintext) are
//! supported. A sealed value is `k8s:enc:aesgcm:v1:<key name>:` followed by a random 96-bit
//! nonce and the ciphertext with its tag; the object's store key is the associated data, so a
//! sealed value copied to another key does not open. A value sealed with a key that is no
//! longer configured is an error naming the key, never served as data.
//!
//! Rotation without downtime, as upstream's: add the new key second (every server can then
//! read it), move it first (new writes use it), [`Encrypted::rewrite`] every value (done at
//! start), then drop the old key.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::Value;

use super::{Change, Guard, ObjectStore, Page, StorageError, StorageResult, Stored};

const PREFIX: &[u8] = b"k8s:enc:";
const AESGCM: &str = "k8s:enc:aesgcm:v1:";

/// One provider of a resource list.
#[derive(Clone)]
enum Provider {
    Identity,
    AesGcm(Vec<(String, Arc<LessSafeKey>)>),
}

/// The providers of one set of key prefixes.
#[derive(Clone)]
struct Rule {
    prefixes: Vec<Vec<u8>>,
    providers: Vec<Provider>,
}

/// A parsed EncryptionConfiguration.
#[derive(Clone, Default)]
pub struct EncryptionConfig {
    rules: Vec<Rule>,
}

/// The store key prefix of a resource name as the configuration writes it (`secrets`,
/// `configmaps`, `widgets.example.com`).
fn prefix_of(resource: &str) -> Result<Vec<u8>, String> {
    if resource == "*.*" || resource.starts_with("*.") {
        return Err(format!(
            "resource {resource:?}: wildcards are not supported; name each resource"
        ));
    }
    Ok(match resource.split_once('.') {
        None => format!("/registry/{resource}/"),
        Some((plural, group)) => format!("/registry/{group}/{plural}/"),
    }
    .into_bytes())
}

impl EncryptionConfig {
    /// Parses an EncryptionConfiguration (YAML or JSON), naming what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let v: Value = crate::decode::parse_yaml(text.as_bytes()).map_err(|e| e.to_string())?;
        if v["kind"] != "EncryptionConfiguration" {
            return Err("kind must be EncryptionConfiguration".into());
        }
        let mut rules = Vec::new();
        for (i, r) in v["resources"].as_array().into_iter().flatten().enumerate() {
            let at = format!("resources[{i}]");
            let prefixes = r["resources"]
                .as_array()
                .filter(|a| !a.is_empty())
                .ok_or(format!("{at}.resources: a list of resources is required"))?
                .iter()
                .map(|x| {
                    x.as_str()
                        .ok_or(format!("{at}.resources: names must be strings"))
                        .and_then(prefix_of)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut providers = Vec::new();
            for (j, p) in r["providers"].as_array().into_iter().flatten().enumerate() {
                let at = format!("{at}.providers[{j}]");
                if p.get("identity").is_some() {
                    providers.push(Provider::Identity);
                } else if let Some(g) = p.get("aesgcm") {
                    let mut keys = Vec::new();
                    for (k, key) in g["keys"].as_array().into_iter().flatten().enumerate() {
                        let name = key["name"]
                            .as_str()
                            .filter(|n| !n.is_empty() && !n.contains(':'))
                            .ok_or(format!(
                                "{at}.aesgcm.keys[{k}].name: a name without ':' is required"
                            ))?;
                        let secret = key["secret"]
                            .as_str()
                            .and_then(|s| B64.decode(s).ok())
                            .filter(|s| s.len() == 32)
                            .ok_or(format!(
                                "{at}.aesgcm.keys[{k}].secret: must be 32 bytes, base64-encoded"
                            ))?;
                        let unbound = UnboundKey::new(&AES_256_GCM, &secret)
                            .map_err(|_| format!("{at}.aesgcm.keys[{k}]: not an AES-256 key"))?;
                        keys.push((name.to_string(), Arc::new(LessSafeKey::new(unbound))));
                    }
                    if keys.is_empty() {
                        return Err(format!("{at}.aesgcm.keys: at least one key is required"));
                    }
                    providers.push(Provider::AesGcm(keys));
                } else {
                    let name = p
                        .as_object()
                        .and_then(|o| o.keys().next().cloned())
                        .unwrap_or_default();
                    return Err(format!(
                        "{at}: provider {name:?} is not supported (aesgcm and identity are)"
                    ));
                }
            }
            if providers.is_empty() {
                return Err(format!("{at}.providers: at least one provider is required"));
            }
            rules.push(Rule {
                prefixes,
                providers,
            });
        }
        Ok(Self { rules })
    }

    /// A configuration sealing Secrets with one new random key (what a cluster starts with).
    pub fn generate() -> (Self, String) {
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .expect("the system's randomness fills a key");
        let text = format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aesgcm:\n      keys:\n      - name: key1\n        secret: {}\n  - identity: {{}}\n",
            B64.encode(key)
        );
        let cfg = Self::parse(&text).expect("the generated configuration parses");
        (cfg, text)
    }

    /// Loads the configuration at `path`, or writes a new one there (readable by its owner
    /// only) if there is none. A file that does not parse is an error naming it.
    pub fn load_or_generate(path: &Path) -> Result<Self, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text)
                .map_err(|e| format!("the encryption configuration {}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (cfg, text) = Self::generate();
                write_private(path, &text).map_err(|e| {
                    format!(
                        "writing the encryption configuration {}: {e}",
                        path.display()
                    )
                })?;
                Ok(cfg)
            }
            Err(e) => Err(format!(
                "reading the encryption configuration {}: {e}",
                path.display()
            )),
        }
    }

    fn rule(&self, key: &[u8]) -> Option<&Rule> {
        self.rules
            .iter()
            .find(|r| r.prefixes.iter().any(|p| key.starts_with(p)))
    }

    /// The key prefixes this configuration covers.
    pub fn prefixes(&self) -> Vec<Vec<u8>> {
        self.rules.iter().flat_map(|r| r.prefixes.clone()).collect()
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp: PathBuf = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The name of the key a value is sealed with (None: plaintext).
fn sealed_with(value: &[u8]) -> Option<&str> {
    let rest = value.strip_prefix(AESGCM.as_bytes())?;
    let end = rest.iter().position(|b| *b == b':')?;
    std::str::from_utf8(&rest[..end]).ok()
}

fn open(config: &EncryptionConfig, key: &[u8], value: Vec<u8>) -> StorageResult<Vec<u8>> {
    if !value.starts_with(PREFIX) {
        return Ok(value);
    }
    let what = String::from_utf8_lossy(key).into_owned();
    let Some(name) = sealed_with(&value) else {
        return Err(StorageError::Internal(format!(
            "{what} is sealed by a provider this server does not have (aesgcm is supported)"
        )));
    };
    let k = config
            .rule(key)
            .into_iter()
            .flat_map(|r| r.providers.iter())
            .find_map(|p| match p {
                Provider::AesGcm(keys) => keys.iter().find(|(n, _)| n == name).map(|(_, k)| k),
                Provider::Identity => None,
            })
            .ok_or_else(|| {
                StorageError::Internal(format!(
                    "{what} is sealed with key {name:?}, which the encryption configuration does not have"
                ))
            })?;
    let body = &value[AESGCM.len() + name.len() + 1..];
    if body.len() < NONCE_LEN {
        return Err(StorageError::Internal(format!(
            "{what}: the sealed value is truncated"
        )));
    }
    let nonce = Nonce::try_assume_unique_for_key(&body[..NONCE_LEN])
        .map_err(|_| StorageError::Internal(format!("{what}: bad nonce")))?;
    let mut data = body[NONCE_LEN..].to_vec();
    let plain = k
        .open_in_place(nonce, Aad::from(key), &mut data)
        .map_err(|_| {
            StorageError::Internal(format!(
                "{what} does not open with key {name:?}: corrupt, or sealed for another key"
            ))
        })?;
    Ok(plain.to_vec())
}

/// An [`ObjectStore`] that seals and opens values as its configuration says.
pub struct Encrypted<S> {
    inner: S,
    config: EncryptionConfig,
    rng: SystemRandom,
}

impl<S: ObjectStore> Encrypted<S> {
    pub fn new(inner: S, config: EncryptionConfig) -> Self {
        Self {
            inner,
            config,
            rng: SystemRandom::new(),
        }
    }

    fn seal(&self, key: &[u8], value: Vec<u8>) -> StorageResult<Vec<u8>> {
        let Some(rule) = self.config.rule(key) else {
            return Ok(value);
        };
        match &rule.providers[0] {
            Provider::Identity => Ok(value),
            Provider::AesGcm(keys) => {
                let (name, k) = &keys[0];
                let mut nonce = [0u8; NONCE_LEN];
                self.rng
                    .fill(&mut nonce)
                    .map_err(|_| StorageError::Internal("no randomness for a nonce".into()))?;
                let mut sealed = value;
                k.seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(key),
                    &mut sealed,
                )
                .map_err(|_| StorageError::Internal("sealing a value failed".into()))?;
                let mut out =
                    Vec::with_capacity(AESGCM.len() + name.len() + 1 + NONCE_LEN + sealed.len());
                out.extend_from_slice(AESGCM.as_bytes());
                out.extend_from_slice(name.as_bytes());
                out.push(b':');
                out.extend_from_slice(&nonce);
                out.extend_from_slice(&sealed);
                Ok(out)
            }
        }
    }

    fn open(&self, key: &[u8], value: Vec<u8>) -> StorageResult<Vec<u8>> {
        open(&self.config, key, value)
    }

    fn open_stored(&self, mut s: Stored) -> StorageResult<Stored> {
        s.value = self.open(&s.key, std::mem::take(&mut s.value))?;
        Ok(s)
    }

    /// Re-seals every value under the configured prefixes that is not sealed with the current
    /// write key (after a key was added first, or encryption turned on); returns how many.
    pub async fn rewrite(&self) -> StorageResult<usize> {
        let mut n = 0;
        for prefix in self.config.prefixes() {
            let current = match self.config.rule(&prefix).map(|r| &r.providers[0]) {
                Some(Provider::AesGcm(keys)) => Some(keys[0].0.clone()),
                _ => None,
            };
            let mut after: Option<Vec<u8>> = None;
            loop {
                let page = self.inner.list(&prefix, after.as_deref(), 500, 0).await?;
                for s in &page.items {
                    if sealed_with(&s.value).map(str::to_string) == current
                        && (current.is_some() || !s.value.starts_with(PREFIX))
                    {
                        continue;
                    }
                    let plain = self.open(&s.key, s.value.clone())?;
                    let sealed = self.seal(&s.key, plain)?;
                    match self.inner.update(s.key.clone(), sealed, s.revision).await {
                        // Written meanwhile, so already with the current key.
                        Ok(_)
                        | Err(StorageError::Conflict { .. })
                        | Err(StorageError::NotFound) => {}
                        Err(e) => return Err(e),
                    }
                    n += 1;
                }
                after = page.items.last().map(|s| s.key.clone());
                if !page.more {
                    break;
                }
            }
        }
        Ok(n)
    }
}

impl<S: ObjectStore> ObjectStore for Encrypted<S> {
    fn get<'a>(&'a self, key: &'a [u8]) -> BoxFuture<'a, StorageResult<Option<Stored>>> {
        Box::pin(async move {
            match self.inner.get(key).await? {
                Some(s) => Ok(Some(self.open_stored(s)?)),
                None => Ok(None),
            }
        })
    }

    fn list<'a>(
        &'a self,
        prefix: &'a [u8],
        start_after: Option<&'a [u8]>,
        limit: usize,
        revision: u64,
    ) -> BoxFuture<'a, StorageResult<Page>> {
        Box::pin(async move {
            let mut page = self
                .inner
                .list(prefix, start_after, limit, revision)
                .await?;
            page.items = page
                .items
                .into_iter()
                .map(|s| self.open_stored(s))
                .collect::<StorageResult<_>>()?;
            Ok(page)
        })
    }

    fn create(&self, key: Vec<u8>, value: Vec<u8>) -> BoxFuture<'_, StorageResult<Stored>> {
        Box::pin(async move {
            let sealed = self.seal(&key, value.clone())?;
            let mut s = self.inner.create(key, sealed).await?;
            s.value = value;
            Ok(s)
        })
    }

    fn update(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
        expected: u64,
    ) -> BoxFuture<'_, StorageResult<Stored>> {
        Box::pin(async move {
            let sealed = self.seal(&key, value.clone())?;
            let mut s = self.inner.update(key, sealed, expected).await?;
            s.value = value;
            Ok(s)
        })
    }

    fn write_with(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
        expected: Option<u64>,
        guards: Vec<Guard>,
    ) -> BoxFuture<'_, StorageResult<Stored>> {
        Box::pin(async move {
            let sealed = self.seal(&key, value.clone())?;
            let guards = guards
                .into_iter()
                .map(|g| {
                    Ok(Guard {
                        value: self.seal(&g.key, g.value)?,
                        ..g
                    })
                })
                .collect::<StorageResult<Vec<_>>>()?;
            let mut s = self.inner.write_with(key, sealed, expected, guards).await?;
            s.value = value;
            Ok(s)
        })
    }

    fn delete(&self, key: Vec<u8>, expected: Option<u64>) -> BoxFuture<'_, StorageResult<u64>> {
        self.inner.delete(key, expected)
    }

    fn watch(
        &self,
        prefix: Vec<u8>,
        from: u64,
    ) -> StorageResult<BoxStream<'static, StorageResult<Change>>> {
        let stream = self.inner.watch(prefix, from)?;
        let this = Opener {
            config: self.config.clone(),
        };
        Ok(Box::pin(stream.map(move |c| {
            let mut c = c?;
            if let Some(v) = c.value.take() {
                c.value = Some(this.open(&c.key, v)?);
            }
            if let Some(p) = c.prev.take() {
                let v = this.open(&p.key, p.value.clone())?;
                c.prev = Some(Stored { value: v, ..p });
            }
            Ok(c)
        })))
    }

    fn revision(&self) -> BoxFuture<'_, StorageResult<u64>> {
        self.inner.revision()
    }

    fn compact(&self, revision: u64) -> BoxFuture<'_, StorageResult<()>> {
        self.inner.compact(revision)
    }
}

/// What a watch stream needs to open values (it outlives the borrow of the store).
struct Opener {
    config: EncryptionConfig,
}

impl Opener {
    fn open(&self, key: &[u8], value: Vec<u8>) -> StorageResult<Vec<u8>> {
        open(&self.config, key, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStore;

    fn config(keys: &[(&str, u8)], identity_first: bool) -> EncryptionConfig {
        let keys: String = keys
            .iter()
            .map(|(n, b)| {
                format!(
                    "      - name: {n}\n        secret: {}\n",
                    B64.encode([*b; 32])
                )
            })
            .collect();
        let aes = format!("  - aesgcm:\n      keys:\n{keys}");
        let providers = if identity_first {
            format!("  - identity: {{}}\n{aes}")
        } else {
            format!("{aes}  - identity: {{}}\n")
        };
        EncryptionConfig::parse(&format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n{providers}"
        ))
        .unwrap()
    }

    /// The conformance suite's keys live under `/conformance/`.
    fn covering_conformance(mut c: EncryptionConfig) -> EncryptionConfig {
        c.rules[0].prefixes.push(b"/conformance/".to_vec());
        c
    }

    #[tokio::test]
    async fn the_layer_keeps_every_store_invariant() {
        let s = Encrypted::new(
            MemoryStore::new(),
            covering_conformance(config(&[("key1", 1)], false)),
        );
        crate::storage::conformance::run(&s).await;
    }

    #[tokio::test]
    async fn values_are_sealed_below_and_keys_rotate_without_downtime() {
        let key = b"/registry/secrets/team/db".to_vec();
        let other = b"/registry/configmaps/team/db".to_vec();
        let plain = br#"{"data":{"password":"aHVudGVyMg=="},"stringData":"hunter2"}"#.to_vec();
        let inner = MemoryStore::new();
        let s = Encrypted::new(inner.clone(), config(&[("key1", 1)], false));
        s.create(key.clone(), plain.clone()).await.unwrap();
        s.create(other.clone(), plain.clone()).await.unwrap();
        let raw = inner.get(&key).await.unwrap().unwrap().value;
        assert!(raw.starts_with(b"k8s:enc:aesgcm:v1:key1:"));
        assert!(
            !raw.windows(7).any(|w| w == b"hunter2"),
            "plaintext below the layer"
        );
        assert!(!raw.windows(8).any(|w| w == b"password"));
        // Other resources are not touched.
        assert_eq!(inner.get(&other).await.unwrap().unwrap().value, plain);
        assert_eq!(s.get(&key).await.unwrap().unwrap().value, plain);
        // Watches and lists see plaintext.
        let page = s.list(b"/registry/secrets/", None, 0, 0).await.unwrap();
        assert_eq!(page.items[0].value, plain);

        // Rotation: key2 added second (readable), then first (written), values rewritten,
        // key1 dropped.
        let both = Encrypted::new(inner.clone(), config(&[("key2", 2), ("key1", 1)], false));
        assert_eq!(both.get(&key).await.unwrap().unwrap().value, plain);
        assert_eq!(both.rewrite().await.unwrap(), 1);
        assert_eq!(
            both.rewrite().await.unwrap(),
            0,
            "a second pass has nothing to do"
        );
        let raw = inner.get(&key).await.unwrap().unwrap().value;
        assert!(raw.starts_with(b"k8s:enc:aesgcm:v1:key2:"));
        let only2 = Encrypted::new(inner.clone(), config(&[("key2", 2)], false));
        assert_eq!(only2.get(&key).await.unwrap().unwrap().value, plain);
        // A key no longer configured is named, never served as data.
        let only1 = Encrypted::new(inner.clone(), config(&[("key1", 1)], false));
        let err = only1.get(&key).await.unwrap_err().to_string();
        assert!(err.contains("sealed with key \"key2\""), "{err}");
        // A sealed value moved to another object's key does not open there.
        let moved = b"/registry/secrets/team/other".to_vec();
        inner.create(moved.clone(), raw.clone()).await.unwrap();
        let err = only2.get(&moved).await.unwrap_err().to_string();
        assert!(err.contains("does not open"), "{err}");
        // Identity first decrypts old values and writes plaintext (turning encryption off).
        let off = Encrypted::new(inner.clone(), config(&[("key2", 2)], true));
        inner.delete(moved, None).await.unwrap();
        assert_eq!(off.rewrite().await.unwrap(), 1);
        assert_eq!(inner.get(&key).await.unwrap().unwrap().value, plain);
    }

    #[test]
    fn bad_configurations_are_named() {
        for (text, says) in [
            ("kind: Nope", "kind must be EncryptionConfiguration"),
            (
                "kind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aesgcm:\n      keys:\n      - name: k\n        secret: c2hvcnQ=\n",
                "must be 32 bytes",
            ),
            (
                "kind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - kms: {}\n",
                "provider \"kms\" is not supported",
            ),
            (
                "kind: EncryptionConfiguration\nresources:\n- resources: [\"*.*\"]\n  providers:\n  - identity: {}\n",
                "wildcards are not supported",
            ),
        ] {
            let err = EncryptionConfig::parse(text).err().unwrap();
            assert!(err.contains(says), "{text}: {err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("encryption.yaml");
        assert!(EncryptionConfig::load_or_generate(&path).is_ok());
        assert!(
            EncryptionConfig::load_or_generate(&path).is_ok(),
            "reads back"
        );
        std::fs::write(&path, "garbage: [").unwrap();
        let err = EncryptionConfig::load_or_generate(&path).err().unwrap();
        assert!(err.contains("encryption.yaml"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "garbage: [",
            "left as it was"
        );
    }
}
