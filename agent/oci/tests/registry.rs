//! End to end against Debian's `docker-registry` on 127.0.0.1: build a busybox image with
//! the crate's own builder, push it, pull it with `ImageStore`, and check what lands on disk.
//! Requires root (layers keep ownership, whiteouts are device nodes) and docker-registry.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use strake_oci::{
    Digest, ImageConfig, ImageRef, ImageStore, Layer, LayerBuilder, LayerCompression, OciError,
    Reference, RegistryConfig, push_image,
};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
const BUSYBOX: &str = "/bin/busybox";
const APPLETS: [&str; 6] = ["sh", "sleep", "echo", "ls", "cat", "true"];

/// A docker-registry child process on a free loopback port, killed on drop.
struct Registry {
    child: Child,
    addr: String,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

impl Registry {
    async fn start() -> Registry {
        assert!(
            Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} is missing: install Debian's docker-registry package (apt-get install docker-registry)"
        );
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let addr = format!("127.0.0.1:{port}");
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                    data.display()
                ),
            )
            .unwrap();
            let log_path = dir.path().join("registry.log");
            let log = std::fs::File::create(&log_path).unwrap();
            let child = Command::new(REGISTRY_BIN)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("spawn docker-registry");
            let mut child = child;
            if wait_ready(&mut child, &addr).await {
                return Registry {
                    child,
                    addr,
                    data,
                    _dir: dir,
                };
            }
            last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
        }
        panic!("docker-registry did not come up; last log:\n{last_log}");
    }

    fn store(&self, root: &Path) -> ImageStore {
        ImageStore::open(
            root,
            RegistryConfig {
                insecure: vec![self.addr.clone()],
                ..RegistryConfig::default()
            },
        )
        .unwrap()
    }

    fn image(&self, rest: &str) -> ImageRef {
        ImageRef::parse(&format!("{}/{rest}", self.addr)).unwrap()
    }

    /// Where the registry keeps a blob's bytes on disk.
    fn blob_file(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.data
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `/v2/` until it answers 200; false if the process died (e.g. port taken).
async fn wait_ready(child: &mut Child, addr: &str) -> bool {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let url = format!("http://{addr}/v2/");
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if let Ok(response) = client.get(&url).send().await
            && response.status() == 200
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("docker-registry on {addr} not ready within 30 s");
}

fn busybox_layers() -> (Vec<Layer>, ImageConfig) {
    let busybox = std::fs::read(BUSYBOX)
        .unwrap_or_else(|e| panic!("{BUSYBOX} (busybox-static) is required: {e}"));
    let mut base = LayerBuilder::new(LayerCompression::Gzip);
    base.add_dir("bin", 0o755).unwrap();
    base.add_file("bin/busybox", &busybox, 0o755).unwrap();
    for applet in APPLETS {
        base.add_symlink(&format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    base.add_dir("tmp", 0o1777).unwrap();
    base.add_file("etc/hello", b"hello\n", 0o644).unwrap();
    base.add_file("var/cache/old", b"old\n", 0o644).unwrap();
    let mut top = LayerBuilder::new(LayerCompression::Zstd);
    top.add_whiteout("etc/hello").unwrap();
    top.add_opaque_marker("var/cache").unwrap();
    top.set_owner(1000, 1000);
    top.add_file("home/app/motd", b"welcome\n", 0o640).unwrap();
    let config = ImageConfig {
        entrypoint: vec!["/bin/sh".into(), "-c".into()],
        cmd: vec!["echo hello from busybox".into()],
        env: vec!["PATH=/bin".into()],
        working_dir: Some("/home/app".into()),
        user: Some("1000:1000".into()),
    };
    (vec![base.finish().unwrap(), top.finish().unwrap()], config)
}

fn store_leftovers(root: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for dir in ["tmp", "layers", "blobs/sha256"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            names.push(format!(
                "{dir}/{}",
                entry.unwrap().file_name().to_string_lossy()
            ));
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_then_pull_busybox_image() {
    let registry = Registry::start().await;
    let (layers, config) = busybox_layers();
    let base_digest = layers[0].digest.clone();
    let pushed = push_image(
        &registry.addr,
        "strake/busybox",
        "v1",
        layers,
        config.clone(),
    )
    .await
    .expect("push");

    let dir = tempfile::tempdir().unwrap();
    let store = registry.store(&dir.path().join("store"));
    let image = registry.image("strake/busybox:v1");
    assert_eq!(store.lookup(&image).unwrap(), None);

    let pulled = store.pull(&image).await.expect("pull");
    assert_eq!(pulled.manifest_digest, pushed);
    assert_eq!(pulled.config, config);
    assert_eq!(pulled.layers.len(), 2);
    let (base, top) = (&pulled.layers[0], &pulled.layers[1]);
    assert!(base.ends_with(base_digest.hex()));

    // Base layer: the real busybox, runnable, with its applet links.
    assert_eq!(
        std::fs::read(base.join("bin/busybox")).unwrap(),
        std::fs::read(BUSYBOX).unwrap()
    );
    for applet in APPLETS {
        assert_eq!(
            std::fs::read_link(base.join("bin").join(applet)).unwrap(),
            Path::new("busybox")
        );
    }
    let out = Command::new(base.join("bin/busybox"))
        .args(["echo", "ran"])
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"ran\n");
    assert_eq!(
        std::fs::metadata(base.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );

    // Top layer: overlay-form whiteout and opaque dir, owned file.
    let whiteout = std::fs::symlink_metadata(top.join("etc/hello")).unwrap();
    assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0);
    assert_eq!(
        xattr::get(top.join("var/cache"), "trusted.overlay.opaque")
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
    let motd = std::fs::metadata(top.join("home/app/motd")).unwrap();
    assert_eq!(
        (motd.uid(), motd.gid(), motd.mode() & 0o777),
        (1000, 1000, 0o640)
    );

    // Layer blobs are dropped once unpacked; nothing temporary is left.
    assert!(
        !dir.path()
            .join("store/blobs/sha256")
            .join(base_digest.hex())
            .exists()
    );
    assert!(
        store_leftovers(&dir.path().join("store"))
            .iter()
            .all(|n| !n.starts_with("tmp/"))
    );

    // Pulling again reuses the unpacked layers; lookup agrees with pull.
    let inode = std::fs::metadata(base.join("bin/busybox")).unwrap().ino();
    let again = store.pull(&image).await.expect("second pull");
    assert_eq!(again, pulled);
    assert_eq!(
        std::fs::metadata(base.join("bin/busybox")).unwrap().ino(),
        inode
    );
    assert_eq!(store.lookup(&image).unwrap(), Some(pulled.clone()));

    // By digest, from a reopened store: no re-download needed, same layers.
    drop(store);
    let store = registry.store(&dir.path().join("store"));
    let by_digest = image.with_reference(Reference::Digest(pushed.clone()));
    let pinned = store.pull(&by_digest).await.expect("pull by digest");
    assert_eq!(pinned.layers, pulled.layers);
    assert_eq!(
        store.lookup(&by_digest).unwrap().map(|p| p.manifest_digest),
        Some(pushed)
    );

    // Two concurrent pulls into a fresh store both succeed and agree.
    let fresh = registry.store(&dir.path().join("fresh"));
    let (a, b) = tokio::join!(fresh.pull(&image), fresh.pull(&image));
    assert_eq!(
        a.expect("concurrent pull a").layers,
        b.expect("concurrent pull b").layers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_images_report_the_registrys_error() {
    let registry = Registry::start().await;
    let (layers, config) = busybox_layers();
    push_image(&registry.addr, "strake/present", "v1", layers, config)
        .await
        .expect("push");
    let dir = tempfile::tempdir().unwrap();
    let store = registry.store(dir.path());

    let missing_tag = registry.image("strake/present:nope");
    match store.pull(&missing_tag).await {
        Err(OciError::NotFound { image, message }) => {
            assert_eq!(image, missing_tag.to_string());
            assert_eq!(message, "MANIFEST_UNKNOWN: manifest unknown");
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    let missing_repo = registry.image("strake/absent:v1");
    let err = store.pull(&missing_repo).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, OciError::NotFound { .. }), "{text}");
    assert!(
        text.contains("UNKNOWN") && text.contains("strake/absent:v1"),
        "{text}"
    );
    assert_eq!(store.lookup(&missing_tag).unwrap(), None);

    // Nothing reachable there at all: a transport error naming the endpoint.
    let closed = ImageRef::parse("127.0.0.1:1/strake/present:v1").unwrap();
    let store = ImageStore::open(
        &dir.path().join("closed"),
        RegistryConfig {
            insecure: vec!["127.0.0.1:1".into()],
            ..RegistryConfig::default()
        },
    )
    .unwrap();
    let err = store.pull(&closed).await.unwrap_err();
    assert!(matches!(err, OciError::Transport { .. }), "{err}");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_layer_is_rejected_and_nothing_is_kept() {
    let registry = Registry::start().await;
    let mut layer = LayerBuilder::new(LayerCompression::Gzip);
    layer.add_file("data", &vec![42u8; 100_000], 0o644).unwrap();
    let layer = layer.finish().unwrap();
    let digest = layer.digest.clone();
    push_image(
        &registry.addr,
        "strake/corrupt",
        "v1",
        vec![layer],
        ImageConfig::default(),
    )
    .await
    .expect("push");

    // Flip one byte of the stored blob: same size, different content.
    let blob = registry.blob_file(&digest);
    let mut bytes = std::fs::read(&blob).expect("registry blob on disk");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = registry.store(dir.path());
    let err = store
        .pull(&registry.image("strake/corrupt:v1"))
        .await
        .unwrap_err();
    match &err {
        OciError::DigestMismatch { expected, .. } => assert_eq!(*expected, digest),
        other => panic!("expected DigestMismatch, got {other}"),
    }
    assert!(err.to_string().contains(digest.as_str()), "{err}");
    let leftovers = store_leftovers(dir.path());
    assert!(
        leftovers.iter().all(|n| !n.starts_with("tmp/")
            && !n.starts_with("layers/")
            && !n.ends_with(digest.hex())),
        "{leftovers:?}"
    );
    assert_eq!(
        store.lookup(&registry.image("strake/corrupt:v1")).unwrap(),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_are_tried_before_the_registry() {
    let registry = Registry::start().await;
    let (layers, config) = busybox_layers();
    let pushed = push_image(&registry.addr, "strake/mirrored", "v1", layers, config)
        .await
        .expect("push");
    let dir = tempfile::tempdir().unwrap();
    // The image names an unreachable registry; only the mirror has it.
    let upstream = "127.0.0.1:1";
    let store = ImageStore::open(
        dir.path(),
        RegistryConfig {
            insecure: vec![upstream.into(), registry.addr.clone()],
            mirrors: BTreeMap::from([(
                upstream.to_owned(),
                vec!["127.0.0.1:2".to_owned(), registry.addr.clone()],
            )]),
            ca_files: vec![],
        },
    )
    .unwrap();
    let image = ImageRef::parse(&format!("{upstream}/strake/mirrored:v1")).unwrap();
    let pulled = store.pull(&image).await.expect("pull through mirror");
    assert_eq!(pulled.manifest_digest, pushed);
    assert_eq!(pulled.reference, image);
}
