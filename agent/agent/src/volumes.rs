//! Pod volumes on the node. Before its containers start, each of the pod's volumes becomes a
//! host path that containers bind-mount at their volumeMounts:
//!
//! - `emptyDir`: a directory in the pod's directory (mode 0777, as upstream makes it), or a
//!   tmpfs for `medium: Memory`, sized by `sizeLimit`;
//! - `hostPath`: the path, checked or created by its `type`;
//! - `persistentVolumeClaim`: the bound volume's hostPath or local path (a claim not bound
//!   yet keeps the pod in ContainerCreating until it is);
//! - `configMap`, `secret`, `downwardAPI` and `projected` (their configMap, secret,
//!   downwardAPI and serviceAccountToken sources, the token bound to the pod by a
//!   TokenRequest): files written in upstream's atomic layout (a `..<stamp>` directory,
//!   `..data` pointing at it, each key a link through `..data`), with `items`, `defaultMode`,
//!   per-item modes and `optional`.
//!
//! Anything else is refused by name rather than silently dropped.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod,
    Secret, Volume, VolumeMount,
};
use strake_runtime::BindMount;

use crate::Shared;

/// Why a volume could not be set up (the pod stays ContainerCreating and it is retried).
#[derive(Debug, thiserror::Error)]
#[error("MountVolume.SetUp failed for volume \"{volume}\" : {detail}")]
pub struct VolumeError {
    pub volume: String,
    pub detail: String,
}

fn err(volume: &str, detail: impl Into<String>) -> VolumeError {
    VolumeError {
        volume: volume.into(),
        detail: detail.into(),
    }
}

/// A volume ready to mount.
#[derive(Clone, Debug)]
pub struct Ready {
    pub path: PathBuf,
    pub readonly: bool,
}

/// The pod's volumes by name.
pub type Prepared = HashMap<String, Ready>;

/// Where the pod's own volume directories go.
fn volume_dir(pod_dir: &Path, kind: &str, name: &str) -> PathBuf {
    pod_dir.join("volumes").join(kind).join(name)
}

/// Sets every volume of the pod up under `pod_dir`.
pub async fn prepare(shared: &Shared, pod: &Pod, pod_dir: &Path) -> Result<Prepared, VolumeError> {
    let mut out = Prepared::new();
    for v in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
    {
        let ready = prepare_one(shared, pod, pod_dir, v).await?;
        out.insert(v.name.clone(), ready);
    }
    Ok(out)
}

async fn prepare_one(
    shared: &Shared,
    pod: &Pod,
    pod_dir: &Path,
    v: &Volume,
) -> Result<Ready, VolumeError> {
    let name = v.name.as_str();
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let rw = |path: PathBuf| Ready {
        path,
        readonly: false,
    };
    if let Some(e) = &v.empty_dir {
        let dir = volume_dir(pod_dir, "empty-dir", name);
        make_dir(&dir, 0o777).map_err(|e| err(name, e))?;
        if e.medium.as_deref() == Some("Memory") {
            let size = e
                .size_limit
                .as_ref()
                .map(|q| strake_scheduler::parse_bytes(&q.0))
                .transpose()
                .map_err(|e| err(name, format!("sizeLimit: {e}")))?;
            strake_runtime::mount_tmpfs(&dir, size).map_err(|e| err(name, e.to_string()))?;
        }
        return Ok(rw(dir));
    }
    if let Some(h) = &v.host_path {
        let path = PathBuf::from(&h.path);
        host_path(&path, h.type_.as_deref().unwrap_or("")).map_err(|e| err(name, e))?;
        return Ok(rw(path));
    }
    if let Some(c) = &v.persistent_volume_claim {
        let claim: PersistentVolumeClaim = shared
            .client
            .get(Some(ns), &c.claim_name)
            .await
            .map_err(|e| {
                err(
                    name,
                    format!("persistentvolumeclaim \"{}\": {e}", c.claim_name),
                )
            })?;
        let bound = claim
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .filter(|n| !n.is_empty())
            .filter(|_| claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
            .ok_or_else(|| {
                err(
                    name,
                    format!(
                        "persistentvolumeclaim \"{}\" is not bound yet",
                        c.claim_name
                    ),
                )
            })?;
        let pv: PersistentVolume = shared
            .client
            .get(None, &bound)
            .await
            .map_err(|e| err(name, format!("persistentvolume \"{bound}\": {e}")))?;
        let spec = pv.spec.unwrap_or_default();
        let path = if let Some(h) = &spec.host_path {
            let p = PathBuf::from(&h.path);
            host_path(&p, h.type_.as_deref().unwrap_or("")).map_err(|e| err(name, e))?;
            // A provisioned directory is shared by whatever user the pod runs as.
            if h.type_.as_deref() == Some("DirectoryOrCreate") {
                let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777));
            }
            p
        } else if let Some(l) = &spec.local {
            let p = PathBuf::from(&l.path);
            if !p.exists() {
                return Err(err(
                    name,
                    format!("local volume path {} does not exist", l.path),
                ));
            }
            p
        } else {
            return Err(err(
                name,
                format!(
                    "persistentvolume \"{bound}\" is of a type this node cannot mount (hostPath and local are supported)"
                ),
            ));
        };
        return Ok(Ready {
            path,
            readonly: c.read_only.unwrap_or(false),
        });
    }
    let files = if let Some(cm) = &v.config_map {
        let data = config_map_data(shared, ns, &cm.name, cm.optional.unwrap_or(false))
            .await
            .map_err(|e| err(name, e))?;
        project(&data, cm.items.as_deref(), cm.default_mode).map_err(|e| err(name, e))?
    } else if let Some(s) = &v.secret {
        let sname = s.secret_name.clone().unwrap_or_default();
        let data = secret_data(shared, ns, &sname, s.optional.unwrap_or(false))
            .await
            .map_err(|e| err(name, e))?;
        project(&data, s.items.as_deref(), s.default_mode).map_err(|e| err(name, e))?
    } else if let Some(d) = &v.downward_api {
        downward(pod, d.items.as_deref().unwrap_or_default(), d.default_mode)
            .map_err(|e| err(name, e))?
    } else if let Some(p) = &v.projected {
        let mut files = Files::new();
        for src in p.sources.iter().flatten() {
            let more = if let Some(cm) = &src.config_map {
                let data = config_map_data(shared, ns, &cm.name, cm.optional.unwrap_or(false))
                    .await
                    .map_err(|e| err(name, e))?;
                project(&data, cm.items.as_deref(), p.default_mode)
            } else if let Some(s) = &src.secret {
                let data = secret_data(shared, ns, &s.name, s.optional.unwrap_or(false))
                    .await
                    .map_err(|e| err(name, e))?;
                project(&data, s.items.as_deref(), p.default_mode)
            } else if let Some(d) = &src.downward_api {
                downward(pod, d.items.as_deref().unwrap_or_default(), p.default_mode)
            } else if let Some(t) = &src.service_account_token {
                let token = service_account_token(shared, pod, t)
                    .await
                    .map_err(|e| err(name, e))?;
                let mode = mode_of(p.default_mode).map_err(|e| err(name, e))?;
                Ok(Files::from([(t.path.clone(), (token.into_bytes(), mode))]))
            } else {
                Err("projected sources other than configMap, secret, downwardAPI and serviceAccountToken (clusterTrustBundle) are not supported by this node yet".to_string())
            }
            .map_err(|e| err(name, e))?;
            files.extend(more);
        }
        files
    } else {
        return Err(err(
            name,
            "this volume type is not supported by this node (emptyDir, hostPath, persistentVolumeClaim, configMap, secret, downwardAPI and projected are)",
        ));
    };
    let kind = if v.secret.is_some() {
        "secret"
    } else {
        "files"
    };
    let dir = volume_dir(pod_dir, kind, name);
    write_atomic(&dir, &files).map_err(|e| err(name, e))?;
    Ok(Ready {
        path: dir,
        readonly: true,
    })
}

/// The bind mounts of one container's volumeMounts.
pub fn mounts(volumes: &Prepared, list: &[VolumeMount]) -> Result<Vec<BindMount>, String> {
    let mut out = Vec::new();
    for m in list {
        let v = volumes.get(&m.name).ok_or_else(|| {
            format!(
                "volumeMount {:?}: the pod has no volume of that name",
                m.name
            )
        })?;
        if m.sub_path_expr.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(format!(
                "volumeMount {:?}: subPathExpr is not supported by this node yet",
                m.name
            ));
        }
        let mut source = v.path.clone();
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            let rel = Path::new(sub);
            if rel.is_absolute() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
                return Err(format!(
                    "volumeMount {:?}: subPath {sub:?} must be a relative path without '..'",
                    m.name
                ));
            }
            source = source.join(rel);
            if !source.exists() {
                make_dir(&source, 0o777)
                    .map_err(|e| format!("volumeMount {:?}: subPath: {e}", m.name))?;
            }
        }
        out.push(BindMount {
            source,
            destination: m.mount_path.clone(),
            readonly: v.readonly || m.read_only.unwrap_or(false),
        });
    }
    Ok(out)
}

/// Undoes what `prepare` mounted on the host (memory-backed emptyDirs) under `pod_dir`.
pub fn release(pod_dir: &Path) {
    let dir = pod_dir.join("volumes").join("empty-dir");
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        if let Err(e) = strake_runtime::unmount(&e.path()) {
            tracing::warn!(error = %e, "unmounting an emptyDir failed");
        }
    }
}

fn make_dir(dir: &Path, mode: u32) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", dir.display()))
}

/// Upstream's hostPath types: "" checks nothing; the *OrCreate types make what is missing.
fn host_path(path: &Path, ty: &str) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    if !path.is_absolute() {
        return Err(format!("hostPath {} is not absolute", path.display()));
    }
    let meta = std::fs::metadata(path);
    let is = |want: &str, ok: fn(&std::fs::Metadata) -> bool| match &meta {
        Ok(m) if ok(m) => Ok(()),
        Ok(_) => Err(format!(
            "hostPath type check failed: {} is not a {want}",
            path.display()
        )),
        Err(_) => Err(format!(
            "hostPath type check failed: {} does not exist",
            path.display()
        )),
    };
    match ty {
        "" => Ok(()),
        "DirectoryOrCreate" if meta.is_err() => make_dir(path, 0o755),
        "DirectoryOrCreate" | "Directory" => is("directory", |m| m.is_dir()),
        "FileOrCreate" if meta.is_err() => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(|_| ())
            .map_err(|e| format!("creating {}: {e}", path.display())),
        "FileOrCreate" | "File" => is("file", |m| m.is_file()),
        "Socket" => is("socket", |m| m.file_type().is_socket()),
        "CharDevice" => is("character device", |m| m.file_type().is_char_device()),
        "BlockDevice" => is("block device", |m| m.file_type().is_block_device()),
        other => Err(format!("hostPath type {other:?} is not one of upstream's")),
    }
}

/// A token for the pod's service account, bound to the pod, from the TokenRequest
/// subresource (the node may ask only for the accounts of pods bound to it).
async fn service_account_token(
    shared: &Shared,
    pod: &Pod,
    t: &k8s_openapi::api::core::v1::ServiceAccountTokenProjection,
) -> Result<String, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .filter(|s| !s.is_empty())
        .unwrap_or("default");
    let mut spec = serde_json::json!({
        "expirationSeconds": t.expiration_seconds.unwrap_or(3600),
        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
            "name": pod.metadata.name, "uid": pod.metadata.uid},
    });
    if let Some(aud) = t.audience.as_deref().filter(|a| !a.is_empty()) {
        spec["audiences"] = serde_json::json!([aud]);
    }
    let body = serde_json::json!({"apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest", "spec": spec});
    let path = format!("/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token");
    let resp = shared
        .client
        .post_json(&path, &body)
        .await
        .map_err(|e| format!("a token for service account \"{sa}\": {e}"))?;
    resp["status"]["token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .map(String::from)
        .ok_or_else(|| format!("the token request for service account \"{sa}\" returned no token"))
}

/// Files of a projected volume: relative path -> (content, mode).
type Files = BTreeMap<String, (Vec<u8>, u32)>;

const DEFAULT_MODE: i32 = 0o644;

async fn config_map_data(
    shared: &Shared,
    ns: &str,
    name: &str,
    optional: bool,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    match shared.client.get::<ConfigMap>(Some(ns), name).await {
        Ok(cm) => {
            let mut data: BTreeMap<String, Vec<u8>> = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            data.extend(
                cm.binary_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0)),
            );
            Ok(data)
        }
        Err(e) if e.is_not_found() && optional => Ok(BTreeMap::new()),
        Err(e) if e.is_not_found() => Err(format!("configmap \"{name}\" not found")),
        Err(e) => Err(format!("configmap \"{name}\": {e}")),
    }
}

async fn secret_data(
    shared: &Shared,
    ns: &str,
    name: &str,
    optional: bool,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    match shared.client.get::<Secret>(Some(ns), name).await {
        Ok(s) => {
            let mut data: BTreeMap<String, Vec<u8>> = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            data.extend(
                s.string_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes())),
            );
            Ok(data)
        }
        Err(e) if e.is_not_found() && optional => Ok(BTreeMap::new()),
        Err(e) if e.is_not_found() => Err(format!("secret \"{name}\" not found")),
        Err(e) => Err(format!("secret \"{name}\": {e}")),
    }
}

fn mode_of(m: Option<i32>) -> Result<u32, String> {
    let m = m.unwrap_or(DEFAULT_MODE);
    u32::try_from(m)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("mode {m} is not between 0 and 0777"))
}

/// The keys to write: every key, or the `items` asked for (each must exist).
fn project(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
) -> Result<Files, String> {
    let mode = mode_of(default_mode)?;
    let mut out = Files::new();
    match items {
        None => {
            for (k, v) in data {
                out.insert(k.clone(), (v.clone(), mode));
            }
        }
        Some(items) => {
            for i in items {
                let v = data
                    .get(&i.key)
                    .ok_or_else(|| format!("configuration key {:?} not found", i.key))?;
                let m = match i.mode {
                    Some(m) => mode_of(Some(m))?,
                    None => mode,
                };
                out.insert(i.path.clone(), (v.clone(), m));
            }
        }
    }
    Ok(out)
}

/// downwardAPI files: metadata fields and labels/annotations in upstream's `k="v"` lines,
/// and container resources.
fn downward(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: Option<i32>,
) -> Result<Files, String> {
    let mode = mode_of(default_mode)?;
    let meta = &pod.metadata;
    let pairs = |m: &Option<BTreeMap<String, String>>| {
        m.iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v:?}\n"))
            .collect::<String>()
    };
    // Volumes may not name addresses (upstream's validation): they change after the write.
    let no_ips = crate::env::Ips {
        host: Vec::new(),
        pod: Vec::new(),
    };
    let mut out = Files::new();
    for i in items {
        let value = if let Some(f) = &i.field_ref {
            match f.field_path.as_str() {
                "metadata.labels" => pairs(&meta.labels),
                "metadata.annotations" => pairs(&meta.annotations),
                p @ ("metadata.name" | "metadata.namespace" | "metadata.uid")
                | p @ ("spec.nodeName" | "spec.serviceAccountName") => {
                    crate::env::pod_field(pod, p, &no_ips)?
                }
                p if p.starts_with("metadata.labels['")
                    || p.starts_with("metadata.annotations['") =>
                {
                    crate::env::pod_field(pod, p, &no_ips)?
                }
                p => {
                    return Err(format!(
                        "downwardAPI fieldRef {p:?} is not supported in volumes"
                    ));
                }
            }
        } else if let Some(r) = &i.resource_field_ref {
            crate::env::resource_field(pod, r)?
        } else {
            return Err(format!(
                "downwardAPI item {:?} has neither fieldRef nor resourceFieldRef",
                i.path
            ));
        };
        let m = match i.mode {
            Some(m) => mode_of(Some(m))?,
            None => mode,
        };
        out.insert(i.path.clone(), (value.into_bytes(), m));
    }
    Ok(out)
}

/// Writes `files` into `dir` as upstream's atomic writer lays them out, replacing what an
/// earlier write left: a fresh `..<stamp>` directory, `..data` swapped to it by rename, and
/// each top-level entry a link through `..data`.
fn write_atomic(dir: &Path, files: &Files) -> Result<(), String> {
    let io = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
    std::fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
    let stamp = format!(
        "..{}",
        jiff::Timestamp::now().strftime("%Y_%m_%d_%H_%M_%S.%f")
    );
    let fresh = dir.join(&stamp);
    std::fs::create_dir_all(&fresh).map_err(|e| io("creating", &fresh, e))?;
    let mut tops = std::collections::BTreeSet::new();
    for (rel, (content, mode)) in files {
        let relp = Path::new(rel);
        if relp.is_absolute()
            || relp
                .components()
                .any(|c| !matches!(c, Component::Normal(_)))
            || rel.starts_with("..")
        {
            return Err(format!("path {rel:?} must be relative, without '..'"));
        }
        let target = fresh.join(relp);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io("creating", parent, e))?;
        }
        std::fs::write(&target, content).map_err(|e| io("writing", &target, e))?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(*mode))
            .map_err(|e| io("chmod", &target, e))?;
        if let Some(Component::Normal(top)) = relp.components().next() {
            tops.insert(top.to_string_lossy().to_string());
        }
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp).map_err(|e| io("linking", &tmp, e))?;
    let data = dir.join("..data");
    let old = std::fs::read_link(&data).ok();
    std::fs::rename(&tmp, &data).map_err(|e| io("renaming", &data, e))?;
    for top in &tops {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(top), &link)
                .map_err(|e| io("linking", &link, e))?;
        }
    }
    // Drop links to keys that went, and the previous generation.
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().to_string();
        if !n.starts_with("..") && !tops.contains(&n) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    if let Some(old) = old.filter(|o| o != Path::new(&stamp)) {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn atomic_writes_replace_the_previous_generation() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("cfg");
        let mut files = Files::new();
        files.insert("a".into(), (b"1".to_vec(), 0o644));
        files.insert("sub/b".into(), (b"2".to_vec(), 0o600));
        write_atomic(&dir, &files).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(dir.join("sub/b")).unwrap(), "2");
        let mode = std::fs::metadata(dir.join("sub/b"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let mut next = Files::new();
        next.insert("a".into(), (b"changed".to_vec(), 0o644));
        write_atomic(&dir, &next).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "changed");
        assert!(
            std::fs::symlink_metadata(dir.join("sub")).is_err(),
            "a key gone is unlinked"
        );
        let generations = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().to_string();
                n.starts_with("..") && n != "..data"
            })
            .count();
        assert_eq!(generations, 1);
        let mut bad = Files::new();
        bad.insert("../escape".into(), (vec![], 0o644));
        assert!(write_atomic(&dir, &bad).is_err());
    }

    #[test]
    fn items_pick_keys_and_modes_and_missing_keys_are_named() {
        let data: BTreeMap<String, Vec<u8>> = [
            ("k1".to_string(), b"v1".to_vec()),
            ("k2".into(), b"v2".to_vec()),
        ]
        .into();
        let all = project(&data, None, Some(0o400)).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all["k1"].1, 0o400);
        let items: Vec<KeyToPath> =
            serde_json::from_value(json!([{"key": "k2", "path": "dir/two", "mode": 0o600}]))
                .unwrap();
        let some = project(&data, Some(&items), None).unwrap();
        assert_eq!(some["dir/two"], (b"v2".to_vec(), 0o600));
        let missing: Vec<KeyToPath> =
            serde_json::from_value(json!([{"key": "nope", "path": "x"}])).unwrap();
        assert!(
            project(&data, Some(&missing), None)
                .unwrap_err()
                .contains("\"nope\"")
        );
        assert!(project(&data, None, Some(0o1777)).is_err());
    }

    #[test]
    fn downward_api_files_are_upstreams() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "web", "tier": "a"}},
            "spec": {"containers": [{"name": "c", "resources": {"limits": {"memory": "64Mi"}}}]},
        }))
        .unwrap();
        let items: Vec<DownwardAPIVolumeFile> = serde_json::from_value(json!([
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
            {"path": "app", "fieldRef": {"fieldPath": "metadata.labels['app']"}},
            {"path": "mem", "resourceFieldRef": {"containerName": "c", "resource": "limits.memory"}},
        ]))
        .unwrap();
        let f = downward(&pod, &items, None).unwrap();
        assert_eq!(f["labels"].0, b"app=\"web\"\ntier=\"a\"\n");
        assert_eq!(f["name"].0, b"p");
        assert_eq!(f["app"].0, b"web");
        assert_eq!(f["mem"].0, b"67108864");
    }

    #[test]
    fn host_path_types_and_sub_paths_are_checked() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("made");
        host_path(&d, "DirectoryOrCreate").unwrap();
        assert!(d.is_dir());
        assert!(host_path(&d, "File").unwrap_err().contains("is not a file"));
        let f = t.path().join("f");
        host_path(&f, "FileOrCreate").unwrap();
        assert!(f.is_file());
        assert!(
            host_path(&t.path().join("none"), "Directory")
                .unwrap_err()
                .contains("does not exist")
        );
        assert!(host_path(Path::new("rel"), "").is_err());

        let vols: Prepared = [(
            "v".to_string(),
            Ready {
                path: d.clone(),
                readonly: false,
            },
        )]
        .into();
        let m = |sub: &str, ro: bool| -> Vec<VolumeMount> {
            serde_json::from_value(
                json!([{"name": "v", "mountPath": "/data", "subPath": sub, "readOnly": ro}]),
            )
            .unwrap()
        };
        let got = mounts(&vols, &m("x/y", true)).unwrap();
        assert_eq!(got[0].source, d.join("x/y"));
        assert!(got[0].readonly && d.join("x/y").is_dir());
        assert!(mounts(&vols, &m("../etc", false)).is_err());
        assert!(mounts(&vols, &m("/etc", false)).is_err());
        let other: Vec<VolumeMount> =
            serde_json::from_value(json!([{"name": "nope", "mountPath": "/x"}])).unwrap();
        assert!(mounts(&vols, &other).unwrap_err().contains("no volume"));
    }
}
