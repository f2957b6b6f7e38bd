//! End-to-end tests of [`crate::build`] against the real pinned kernel package. The first run downloads
//! it with `apt-get download` into `<repo>/.cache/kernel`; if that fails, these tests fail.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::*;
use crate::cpio::test_reader::{Entry, parse};
use crate::cpio::{S_IFCHR, S_IFDIR, S_IFREG};
use crate::kernel::KernelError;

fn repo_cache() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/kernel")
}

fn fake_strake(dir: &Path) -> PathBuf {
    let path = dir.join("strake");
    let payload: Vec<u8> = (0..50_000u32).flat_map(|i| i.to_le_bytes()).collect();
    fs::write(&path, elf::fake_static_elf(&payload)).expect("write fake strake");
    path
}

fn options(dir: &Path, out: &str, extra: &[&str]) -> BuildOptions {
    BuildOptions {
        strake_binary: fake_strake(dir),
        cache_dir: repo_cache(),
        out_dir: dir.join(out),
        extra_modules: extra.iter().map(|s| (*s).to_owned()).collect(),
    }
}

#[test]
fn two_builds_are_byte_identical_and_bootable_in_shape() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = build(&options(dir.path(), "a", &[])).expect("first build");
    let b = build(&options(dir.path(), "b", &[])).expect("second build");
    for (x, y) in [
        (&a.vmlinuz, &b.vmlinuz),
        (&a.initramfs, &b.initramfs),
        (&a.manifest, &b.manifest),
        (&a.uki, &b.uki),
        (&a.raw, &b.raw),
        (&a.qcow2, &b.qcow2),
        (&a.iso, &b.iso),
        (&a.ipxe, &b.ipxe),
    ] {
        assert_same_bytes(x, y);
    }
    check_disk(&a.raw);
    assert_eq!(a.kernel_version, KERNEL_RELEASE);
    let script = fs::read_to_string(&a.ipxe).expect("the iPXE script");
    assert!(
        script.starts_with("#!ipxe\nkernel vmlinuz initrd=initramfs.zst console="),
        "{script}"
    );

    let cpio = zstd::decode_all(&fs::read(&a.initramfs).expect("read")[..]).expect("zstd");
    let entries = parse(&cpio).expect("valid newc archive");
    let manifest = Manifest::load(&a.manifest).expect("manifest");
    check_archive(&entries, &a.kernel_version, manifest.initramfs.mtime);
    assert_eq!(manifest.kernel.package_sha256, KERNEL_SHA256);
    assert_eq!(manifest.kernel.release, KERNEL_RELEASE);
    assert_eq!(manifest.initramfs.uncompressed_size, cpio.len() as u64);
    assert_eq!(
        manifest.artifacts["initramfs"].sha256,
        kernel::sha256_file(&a.initramfs).expect("hash")
    );
    assert_eq!(
        manifest.artifacts["vmlinuz"].size,
        fs::metadata(&a.vmlinuz).expect("stat").len()
    );
    assert!(manifest.modules.iter().any(|m| m.name == "virtio_net"));
    let shipped = entries.iter().filter(|e| e.name.ends_with(".ko")).count();
    assert_eq!(manifest.modules.len(), shipped);
}

/// Compares two files a block at a time (the raw disk is 2 GiB, mostly holes).
fn assert_same_bytes(x: &Path, y: &Path) {
    use std::io::Read as _;
    let (mut fx, mut fy) = (
        fs::File::open(x).expect("open"),
        fs::File::open(y).expect("open"),
    );
    let (lx, ly) = (
        fx.metadata().expect("stat").len(),
        fy.metadata().expect("stat").len(),
    );
    assert!(lx > 0, "{} is empty", x.display());
    assert_eq!(
        lx,
        ly,
        "{} and {} differ in length",
        x.display(),
        y.display()
    );
    let (mut bx, mut by) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut at = 0u64;
    loop {
        let n = fx.read(&mut bx).expect("read");
        if n == 0 {
            break;
        }
        fy.read_exact(&mut by[..n]).expect("read");
        assert!(
            bx[..n] == by[..n],
            "{} and {} differ in the MiB at {at}",
            x.display(),
            y.display()
        );
        at += n as u64;
    }
}

/// The disk image: a GPT with the ESP and STATE, the ESP a FAT holding systemd-boot, and STATE
/// starting with the ext4 template.
fn check_disk(raw: &Path) {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut f = fs::File::open(raw).expect("open");
    let sectors = f.metadata().expect("stat").len() / 512;
    let mut read = |off: u64, len: usize| {
        let mut b = vec![0u8; len];
        f.seek(SeekFrom::Start(off))?;
        f.read_exact(&mut b)?;
        Ok(b)
    };
    let table = strake_disk::gpt::read(sectors, &mut read)
        .expect("read")
        .expect("a GPT")
        .expect("valid");
    let esp = table.partition("ESP").expect("ESP");
    assert_eq!(esp.type_guid, crate::forms::ESP_TYPE);
    let state = table.partition("STATE").expect("STATE");
    assert_eq!(state.last_lba, sectors - 34);
    let boot = read(esp.first_lba * 512, 512).expect("ESP boot sector");
    assert_eq!(&boot[54..59], b"FAT16");
    let superblock = read(state.first_lba * 512 + 1024, 1024).expect("superblock");
    assert_eq!(&superblock[0x38..0x3a], &[0x53, 0xEF], "ext4 magic");
}

fn check_archive(entries: &[Entry], release: &str, mtime: u32) {
    let by_name: BTreeMap<&str, &Entry> = entries.iter().map(|e| (e.name.as_str(), e)).collect();
    assert_eq!(by_name.len(), entries.len(), "duplicate names");
    for (i, e) in entries.iter().enumerate() {
        assert_eq!((e.uid, e.gid, e.mtime), (0, 0, mtime), "{}", e.name);
        assert!(e.ino as usize <= i + 1, "inode numbers grow in order");
        if let Some((parent, _)) = e.name.rsplit_once('/') {
            let p = by_name
                .get(parent)
                .unwrap_or_else(|| panic!("{} has no parent entry", e.name));
            assert!(p.offset < e.offset, "{parent} comes after {}", e.name);
            assert_eq!(p.mode & 0o170_000, S_IFDIR);
        }
    }
    for dir in [
        "dev", "proc", "sys", "run", "tmp", "etc", "var", "lib", "bin",
    ] {
        assert_eq!(by_name[dir].mode & 0o170_000, S_IFDIR, "{dir}");
    }
    let init = by_name["init"];
    assert_eq!(init.mode, S_IFREG | 0o755);
    assert_eq!(&init.data[..4], b"\x7fELF");
    let bin = by_name["bin/strake"];
    assert_eq!(
        (bin.ino, bin.nlink, init.nlink),
        (init.ino, 2, 2),
        "bin/strake is a hard link"
    );
    let console = by_name["dev/console"];
    assert_eq!(
        (
            console.mode & 0o170_000,
            console.rdev_major,
            console.rdev_minor
        ),
        (S_IFCHR, 5, 1)
    );
    let null = by_name["dev/null"];
    assert_eq!(
        (null.mode & 0o170_000, null.rdev_major, null.rdev_minor),
        (S_IFCHR, 1, 3)
    );

    // The STATE template is an ext4 of the documented size, stored sparse.
    let template = &by_name[crate::state::TEMPLATE_PATH].data;
    let sparse = strake_disk::sparse::decode(template).expect("sparse template");
    assert_eq!(sparse.len, crate::state::TEMPLATE_BYTES);
    let (first, block) = sparse.blocks[0];
    assert_eq!(first, 0);
    assert_eq!(&block[0x438..0x43A], &[0x53, 0xEF], "ext4 superblock magic");
    assert!(
        template.len() < 1 << 20,
        "template is {} bytes",
        template.len()
    );

    let release_file = String::from_utf8(by_name["etc/strake/release"].data.clone()).expect("utf8");
    assert!(
        release_file.contains(&format!("KERNEL_RELEASE={release}\n")),
        "{release_file}"
    );
    assert!(
        release_file.contains(&format!("STRAKE_VERSION={STRAKE_VERSION}\n")),
        "{release_file}"
    );

    // modules.dep in the image lists exactly the shipped modules, and every dependency is shipped.
    let base = format!("lib/modules/{release}/");
    let dep_text = String::from_utf8(by_name[format!("{base}modules.dep").as_str()].data.clone())
        .expect("utf8");
    let dep = ModuleDep::parse(&dep_text).expect("shipped modules.dep parses (no dangling deps)");
    let shipped: Vec<&str> = entries
        .iter()
        .filter_map(|e| e.name.strip_prefix(&base))
        .filter(|p| p.ends_with(".ko"))
        .collect();
    assert_eq!(dep.len(), shipped.len());
    for requested in [
        "virtio_net",
        "virtio_pci",
        "overlay",
        "br_netfilter",
        "dm_verity",
        "vfat",
        "tun",
    ] {
        let name = modules::ModuleName::new(requested).expect("name");
        let entry = dep
            .get(&name)
            .unwrap_or_else(|| panic!("{requested} not shipped"));
        let file = by_name[format!("{base}{}", entry.path).as_str()];
        assert_eq!(file.mode, S_IFREG | 0o644);
        assert!(
            file.data.starts_with(b"\x7fELF"),
            "{} is an uncompressed ELF module",
            entry.path
        );
    }
    assert!(
        !by_name[format!("{base}modules.builtin").as_str()]
            .data
            .is_empty()
    );
}

#[test]
fn corrupted_cached_package_is_a_hard_error() {
    let good = kernel::ensure_package(&kernel::PINNED, &repo_cache()).expect("fetch pinned kernel");
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join(kernel::PINNED.deb_file_name());
    let mut bytes = fs::read(&good).expect("read deb");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    fs::write(&copy, &bytes).expect("write corrupted copy");

    let err = kernel::verify_sha256(&copy, KERNEL_SHA256).expect_err("corruption detected");
    let KernelError::ChecksumMismatch {
        expected, actual, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(expected, KERNEL_SHA256);
    assert_ne!(actual, KERNEL_SHA256);
    let text = err.to_string();
    assert!(
        text.contains(KERNEL_SHA256) && text.contains(actual.as_str()),
        "{text}"
    );

    // The cache path refuses it too, and leaves it in place rather than re-downloading over it.
    let err =
        kernel::ensure_package(&kernel::PINNED, dir.path()).expect_err("cached copy rejected");
    assert!(matches!(err, KernelError::ChecksumMismatch { .. }), "{err}");
    assert_eq!(fs::read(&copy).expect("still there"), bytes);
}

#[test]
fn unknown_extra_module_fails_the_build() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err =
        build(&options(dir.path(), "out", &["ext4", "no_such_module"])).expect_err("bad module");
    // ext4 is built in, so only the unknown name is reported.
    assert_eq!(
        err.to_string(),
        "requested kernel modules not found as modules or built-ins: no_such_module"
    );
    assert!(!dir.path().join("out").join(INITRAMFS_FILE).exists());
}

#[test]
fn dynamic_init_binary_is_refused_before_any_download() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = BuildOptions {
        strake_binary: PathBuf::from("/bin/sh"),
        cache_dir: dir.path().join("cache"),
        out_dir: dir.path().join("out"),
        extra_modules: Vec::new(),
    };
    let err = build(&opts).expect_err("dynamic /bin/sh");
    assert!(matches!(err, ImageError::Init(_)), "{err}");
    assert!(!opts.cache_dir.exists(), "nothing fetched");
}

#[test]
fn source_date_epoch_parsing() {
    assert_eq!(source_date_epoch(None).expect("unset"), 0);
    assert_eq!(
        source_date_epoch(Some("1700000000")).expect("set"),
        1_700_000_000
    );
    for bad in ["-1", "soon", "", "4294967296"] {
        assert!(source_date_epoch(Some(bad)).is_err(), "{bad:?}");
    }
}
