//! Unpacking tests; they need root (chown, mknod, trusted.* xattrs), as the agent does.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use super::*;
use crate::builder::{LayerBuilder, LayerCompression};

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn blob(&self, bytes: &[u8]) -> PathBuf {
        let path = self.dir.path().join("blob");
        fs::write(&path, bytes).unwrap();
        path
    }

    fn dest(&self) -> PathBuf {
        self.dir.path().join("layers").join("abc")
    }

    /// Only the blob and the (possibly absent) layers dir may remain: no temp dirs.
    fn assert_no_leftovers(&self) {
        let layers = self.dir.path().join("layers");
        let names: Vec<String> = fs::read_dir(&layers)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.is_empty(), "leftovers in layers/: {names:?}");
    }

    fn unpack(&self, bytes: &[u8], diff_id: Option<&Digest>) -> Result<Digest, UnpackError> {
        fs::create_dir_all(self.dir.path().join("layers")).unwrap();
        unpack_layer(&self.blob(bytes), &self.dest(), diff_id)
    }
}

/// A tar entry written byte-for-byte, bypassing the tar crate's path checks.
fn raw_entry(
    tar: &mut tar::Builder<Vec<u8>>,
    name: &str,
    kind: EntryType,
    link: &str,
    data: &[u8],
) {
    let mut header = Header::new_gnu();
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(data.len() as u64);
    header.set_cksum();
    tar.append(&header, data).unwrap();
}

fn raw_tar(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    build(&mut tar);
    tar.into_inner().unwrap()
}

#[test]
fn unpacks_files_links_modes_owners_and_times() {
    let f = Fixture::new();
    let mut b = LayerBuilder::new(LayerCompression::Gzip);
    b.set_mtime(1_700_000_000);
    b.add_dir("./", 0o755).unwrap();
    b.add_dir("bin", 0o711).unwrap();
    b.add_file("bin/tool", b"#!/bin/sh\necho hi\n", 0o4755)
        .unwrap();
    b.add_symlink("bin/sh", "/bin/tool").unwrap();
    b.add_hardlink("bin/tool-again", "bin/tool").unwrap();
    b.set_owner(1000, 2000);
    b.add_file("home/user/notes.txt", b"notes", 0o600).unwrap();
    b.add_file("etc/replaced", b"first", 0o644).unwrap();
    b.add_file("etc/replaced", b"second", 0o640).unwrap();
    let layer = b.finish().unwrap();

    let diff_id = f.unpack(&layer.bytes, Some(&layer.diff_id)).unwrap();
    assert_eq!(diff_id, layer.diff_id);
    let root = f.dest();

    let tool = fs::symlink_metadata(root.join("bin/tool")).unwrap();
    assert_eq!(
        fs::read(root.join("bin/tool")).unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
    assert_eq!(tool.mode() & 0o7777, 0o4755, "setuid bit kept");
    assert_eq!(tool.mtime(), 1_700_000_000);
    assert_eq!((tool.uid(), tool.gid()), (0, 0));

    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("/bin/tool")
    );
    assert_eq!(
        fs::symlink_metadata(root.join("bin/sh")).unwrap().mtime(),
        1_700_000_000
    );
    let again = fs::symlink_metadata(root.join("bin/tool-again")).unwrap();
    assert_eq!(again.ino(), tool.ino(), "hard link shares the inode");

    let bin = fs::metadata(root.join("bin")).unwrap();
    assert_eq!(bin.mode() & 0o7777, 0o711);
    assert_eq!(
        bin.mtime(),
        1_700_000_000,
        "directory mtime survives later children"
    );

    let notes = fs::metadata(root.join("home/user/notes.txt")).unwrap();
    assert_eq!(
        (notes.uid(), notes.gid(), notes.mode() & 0o777),
        (1000, 2000, 0o600)
    );
    let implicit = fs::metadata(root.join("home/user")).unwrap();
    assert_eq!(
        (implicit.uid(), implicit.mode() & 0o777),
        (0, 0o755),
        "implied parents are root 0755"
    );

    assert_eq!(
        fs::read(root.join("etc/replaced")).unwrap(),
        b"second",
        "later entries win"
    );
    assert_eq!(fs::metadata(&root).unwrap().mode() & 0o777, 0o755);
    f.assert_no_leftovers_except_dest();
}

impl Fixture {
    fn assert_no_leftovers_except_dest(&self) {
        let names: Vec<String> = fs::read_dir(self.dir.path().join("layers"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["abc"]);
    }
}

#[test]
fn converts_whiteouts_and_opaque_dirs_to_overlay_form() {
    let f = Fixture::new();
    let mut b = LayerBuilder::new(LayerCompression::Zstd);
    b.add_dir("etc", 0o755).unwrap();
    b.add_whiteout("etc/passwd").unwrap();
    b.add_dir("var/cache", 0o755).unwrap();
    b.add_opaque_marker("var/cache").unwrap();
    b.add_file("var/cache/new", b"n", 0o644).unwrap();
    b.add_opaque_marker("opt/app").unwrap();
    b.add_file("etc/.wh..wh.plnk", b"", 0o644).unwrap();
    let layer = b.finish().unwrap();
    f.unpack(&layer.bytes, Some(&layer.diff_id)).unwrap();
    let root = f.dest();

    let whiteout = fs::symlink_metadata(root.join("etc/passwd")).unwrap();
    assert!(
        whiteout.file_type().is_char_device(),
        "whiteout is a char device"
    );
    assert_eq!(whiteout.rdev(), 0, "whiteout device is 0/0");
    assert!(!root.join("etc/.wh.passwd").exists());
    assert!(
        !root.join("etc/.wh..wh.plnk").exists(),
        "aufs metadata skipped"
    );

    for dir in ["var/cache", "opt/app"] {
        let value = xattr::get(root.join(dir), "trusted.overlay.opaque").unwrap();
        assert_eq!(value.as_deref(), Some(&b"y"[..]), "{dir} is opaque");
        assert!(!root.join(dir).join(".wh..wh..opq").exists());
    }
    assert_eq!(
        xattr::get(root.join("etc"), "trusted.overlay.opaque").unwrap(),
        None
    );
    assert_eq!(fs::read(root.join("var/cache/new")).unwrap(), b"n");
}

#[test]
fn plain_tar_and_absolute_names_are_accepted() {
    let f = Fixture::new();
    let tar = raw_tar(|t| {
        raw_entry(t, "/etc/abs", EntryType::Regular, "", b"abs");
        raw_entry(t, "./rel/./x", EntryType::Regular, "", b"x");
    });
    let diff_id = f.unpack(&tar, None).unwrap();
    assert_eq!(diff_id, Digest::of(&tar));
    assert_eq!(fs::read(f.dest().join("etc/abs")).unwrap(), b"abs");
    assert_eq!(fs::read(f.dest().join("rel/x")).unwrap(), b"x");
}

fn assert_traversal_rejected(tar: Vec<u8>) {
    let f = Fixture::new();
    let outside = f.dir.path().join("evil");
    let err = f.unpack(&tar, None).unwrap_err();
    assert!(matches!(err, UnpackError::PathTraversal { .. }), "{err}");
    assert!(!f.dest().exists(), "no layer dir after failure");
    assert!(!outside.exists(), "nothing written outside");
    f.assert_no_leftovers();
}

#[test]
fn rejects_dot_dot_entries() {
    assert_traversal_rejected(raw_tar(|t| {
        raw_entry(t, "ok", EntryType::Regular, "", b"fine");
        raw_entry(t, "../../evil", EntryType::Regular, "", b"x");
    }));
    assert_traversal_rejected(raw_tar(|t| {
        raw_entry(t, "a/../../../evil", EntryType::Directory, "", b"")
    }));
}

#[test]
fn rejects_writes_through_symlinks() {
    // A symlink to the outside, then an entry "through" it.
    assert_traversal_rejected(raw_tar(|t| {
        raw_entry(t, "escape", EntryType::Symlink, "../..", b"");
        raw_entry(t, "escape/evil", EntryType::Regular, "", b"x");
    }));
    assert_traversal_rejected(raw_tar(|t| {
        raw_entry(t, "escape", EntryType::Symlink, "/", b"");
        raw_entry(t, "escape/tmp/evil", EntryType::Regular, "", b"x");
    }));
}

#[test]
fn rejects_hard_links_leaving_the_layer() {
    assert_traversal_rejected(raw_tar(|t| {
        raw_entry(t, "link", EntryType::Link, "../../../../etc/passwd", b"")
    }));
    // A hard link through an in-layer symlink would also reach outside.
    assert_traversal_rejected(raw_tar(|t| {
        raw_entry(t, "sys", EntryType::Symlink, "/etc", b"");
        raw_entry(t, "link", EntryType::Link, "sys/passwd", b"");
    }));
}

#[test]
fn corrupt_layers_fail_cleanly() {
    let mut b = LayerBuilder::new(LayerCompression::Gzip);
    b.add_file("big", &vec![7u8; 200_000], 0o644).unwrap();
    let layer = b.finish().unwrap();

    // Truncated gzip stream.
    let f = Fixture::new();
    let err = f
        .unpack(&layer.bytes[..layer.bytes.len() / 2], None)
        .unwrap_err();
    assert!(matches!(err, UnpackError::Corrupt(_)), "{err}");
    assert!(!f.dest().exists());
    f.assert_no_leftovers();

    // Garbage that is neither compressed nor tar.
    let f = Fixture::new();
    let err = f.unpack(&[0x55u8; 1024], None).unwrap_err();
    assert!(matches!(err, UnpackError::Corrupt(_)), "{err}");
    f.assert_no_leftovers();

    // A valid layer that is not the one the config describes.
    let f = Fixture::new();
    let wrong = Digest::of(b"something else");
    let err = f.unpack(&layer.bytes, Some(&wrong)).unwrap_err();
    assert!(
        matches!(&err, UnpackError::DiffIdMismatch { expected, actual } if *expected == wrong && *actual == layer.diff_id),
        "{err}"
    );
    assert!(!f.dest().exists());
    f.assert_no_leftovers();
}

#[test]
fn refuses_trusted_xattrs_from_pax_headers() {
    let f = Fixture::new();
    let tar = raw_tar(|t| {
        t.append_pax_extensions([
            ("SCHILY.xattr.trusted.overlay.redirect", &b"/etc"[..]),
            ("SCHILY.xattr.user.note", &b"kept"[..]),
        ])
        .unwrap();
        raw_entry(t, "file", EntryType::Regular, "", b"x");
    });
    f.unpack(&tar, None).unwrap();
    let file = f.dest().join("file");
    assert_eq!(xattr::get(&file, "trusted.overlay.redirect").unwrap(), None);
    assert_eq!(
        xattr::get(&file, "user.note").unwrap().as_deref(),
        Some(&b"kept"[..])
    );
}
