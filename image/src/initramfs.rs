//! The initramfs as data: a sorted tree of entries, written through [`crate::cpio::CpioWriter`] and
//! compressed with zstd. [`strake_tree`] lays out the tree Strake boots from.
//!
//! Entries are emitted in byte order of their paths (a parent always sorts before its children), so
//! the archive depends only on the tree, never on the order entries were added.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::cpio::{self, CpioError, CpioWriter};
use crate::modules::{ModuleDep, ModuleEntry};

/// zstd level for the initramfs: high ratio, still fast to decompress at boot.
pub const ZSTD_LEVEL: i32 = 19;
/// Largest zstd window the kernel's initramfs decompressor is given (it refuses larger frames).
const ZSTD_WINDOW_LOG: u32 = 23;

/// Errors from assembling or writing an initramfs.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// Two different entries for one path.
    #[error("initramfs path {path:?} is already a {existing}")]
    Conflict {
        path: String,
        existing: &'static str,
    },
    /// A path's parent exists but is not a directory.
    #[error("parent {parent:?} of initramfs path {path:?} is not a directory")]
    ParentNotDirectory { path: String, parent: String },
    /// A hard link names a path that is not a regular file.
    #[error("cannot hard-link {link:?} to {target:?}: target is not a regular file in the tree")]
    LinkTargetNotFile { link: String, target: String },
    /// Invalid path or a failure inside the archive writer.
    #[error(transparent)]
    Cpio(#[from] CpioError),
    /// Reading an input file or writing the output failed.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// The zstd encoder failed.
    #[error("zstd compression: {0}")]
    Zstd(io::Error),
}

/// Where a file's bytes come from.
#[derive(Debug, Clone)]
pub enum FileSource {
    /// Bytes held in memory.
    Bytes(Vec<u8>),
    /// A file read when the archive is written.
    Path(PathBuf),
}

#[derive(Debug, Clone)]
enum Node {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        source: FileSource,
        links: Vec<String>,
    },
    HardLink {
        target: String,
    },
    Symlink {
        target: String,
    },
    CharDevice {
        mode: u32,
        major: u32,
        minor: u32,
    },
}

impl Node {
    fn kind(&self) -> &'static str {
        match self {
            Self::Dir { .. } => "directory",
            Self::File { .. } | Self::HardLink { .. } => "file",
            Self::Symlink { .. } => "symlink",
            Self::CharDevice { .. } => "character device",
        }
    }
}

/// A filesystem tree to be written as a newc archive. Missing parent directories are created with
/// mode 0755.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Paths in the tree, in archive order.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.nodes.keys().map(String::as_str)
    }

    /// Adds a directory; adding an existing directory again updates its mode.
    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<(), InitramfsError> {
        let path = self.prepare(path)?;
        match self.nodes.get_mut(&path) {
            Some(Node::Dir { mode: m }) => *m = mode,
            Some(other) => {
                return Err(InitramfsError::Conflict {
                    path,
                    existing: other.kind(),
                });
            }
            None => {
                self.nodes.insert(path, Node::Dir { mode });
            }
        }
        Ok(())
    }

    /// Adds a regular file.
    pub fn add_file(
        &mut self,
        path: &str,
        mode: u32,
        source: FileSource,
    ) -> Result<(), InitramfsError> {
        self.insert(
            path,
            Node::File {
                mode,
                source,
                links: Vec::new(),
            },
        )
    }

    /// Adds `link` as a hard link to the regular file already at `target`.
    pub fn add_hard_link(&mut self, link: &str, target: &str) -> Result<(), InitramfsError> {
        let target = cpio::normalize_name(target)?.to_owned();
        let link_name = cpio::normalize_name(link)?.to_owned();
        if !matches!(self.nodes.get(&target), Some(Node::File { .. })) {
            return Err(InitramfsError::LinkTargetNotFile {
                link: link_name,
                target,
            });
        }
        self.insert(
            link,
            Node::HardLink {
                target: target.clone(),
            },
        )?;
        if let Some(Node::File { links, .. }) = self.nodes.get_mut(&target) {
            links.push(link_name);
        }
        Ok(())
    }

    /// Adds a symbolic link.
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), InitramfsError> {
        self.insert(
            path,
            Node::Symlink {
                target: target.to_owned(),
            },
        )
    }

    /// Adds a character device node.
    pub fn add_char_device(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), InitramfsError> {
        self.insert(path, Node::CharDevice { mode, major, minor })
    }

    fn insert(&mut self, path: &str, node: Node) -> Result<(), InitramfsError> {
        let path = self.prepare(path)?;
        if let Some(existing) = self.nodes.get(&path) {
            return Err(InitramfsError::Conflict {
                path,
                existing: existing.kind(),
            });
        }
        self.nodes.insert(path, node);
        Ok(())
    }

    /// Validates `path` and creates its missing parents; returns the normalised path.
    fn prepare(&mut self, path: &str) -> Result<String, InitramfsError> {
        let path = cpio::normalize_name(path)?.to_owned();
        let mut end = 0;
        while let Some(slash) = path[end..].find('/') {
            end += slash;
            let parent = &path[..end];
            match self.nodes.get(parent) {
                Some(Node::Dir { .. }) => {}
                Some(_) => {
                    return Err(InitramfsError::ParentNotDirectory {
                        path: path.clone(),
                        parent: parent.to_owned(),
                    });
                }
                None => {
                    self.nodes
                        .insert(parent.to_owned(), Node::Dir { mode: 0o755 });
                }
            }
            end += 1;
        }
        Ok(path)
    }

    /// Writes the tree as an uncompressed newc archive with every mtime set to `mtime`.
    pub fn write_cpio<W: Write>(&self, out: W, mtime: u32) -> Result<W, InitramfsError> {
        let mut w = CpioWriter::new(out, mtime);
        for (path, node) in &self.nodes {
            match node {
                Node::Dir { mode } => w.add_dir(path, *mode)?,
                Node::File { .. } => self.write_link_group(&mut w, path, path)?,
                Node::HardLink { target } => self.write_link_group(&mut w, path, target)?,
                Node::Symlink { target } => w.add_symlink(path, target)?,
                Node::CharDevice { mode, major, minor } => {
                    w.add_char_device(path, *mode, *major, *minor)?;
                }
            }
        }
        Ok(w.finish()?)
    }

    /// Emits the file at `primary` with all its hard links, once: when `here` is the group's
    /// smallest name. Within the group, names are in path order and the data goes with the last.
    fn write_link_group<W: Write>(
        &self,
        w: &mut CpioWriter<W>,
        here: &str,
        primary: &str,
    ) -> Result<(), InitramfsError> {
        let Some(Node::File {
            mode,
            source,
            links,
        }) = self.nodes.get(primary)
        else {
            unreachable!("hard link {here} to {primary} was checked when added");
        };
        let mut names: Vec<&str> = links.iter().map(String::as_str).collect();
        names.push(primary);
        names.sort_unstable();
        if names[0] != here {
            return Ok(());
        }
        match source {
            FileSource::Bytes(bytes) => w.add_hard_linked_file(&names, *mode, bytes)?,
            FileSource::Path(file) => {
                let io_err = |action| {
                    move |source| InitramfsError::Io {
                        action,
                        path: file.clone(),
                        source,
                    }
                };
                let mut f = fs::File::open(file).map_err(io_err("opening"))?;
                let len = f.metadata().map_err(io_err("reading metadata of"))?.len();
                w.add_hard_linked_file_from(&names, *mode, len, &mut f)?;
            }
        }
        Ok(())
    }

    /// Writes the archive zstd-compressed (level [`ZSTD_LEVEL`], single-threaded, with a content
    /// checksum) and returns the writer and the uncompressed size.
    pub fn write_zstd<W: Write>(&self, out: W, mtime: u32) -> Result<(W, u64), InitramfsError> {
        let mut encoder =
            zstd::stream::write::Encoder::new(out, ZSTD_LEVEL).map_err(InitramfsError::Zstd)?;
        encoder
            .include_checksum(true)
            .map_err(InitramfsError::Zstd)?;
        encoder
            .window_log(ZSTD_WINDOW_LOG)
            .map_err(InitramfsError::Zstd)?;
        let mut counting = CountingWriter {
            inner: encoder,
            count: 0,
        };
        counting = self.write_cpio(counting, mtime)?;
        let out = counting.inner.finish().map_err(InitramfsError::Zstd)?;
        Ok((out, counting.count))
    }
}

struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Inputs of the initramfs Strake boots from.
#[derive(Debug, Clone)]
pub struct StrakeLayout<'a> {
    /// The static `strake` binary.
    pub strake_binary: &'a Path,
    /// Kernel release (`/lib/modules/<release>`).
    pub release: &'a str,
    /// The kernel tree's `/lib/modules/<release>` holding the `.ko` files.
    pub modules_dir: &'a Path,
    /// Full `modules.dep` of the kernel.
    pub dep: &'a ModuleDep,
    /// Modules to ship (closed under dependencies).
    pub modules: &'a [&'a ModuleEntry],
    /// Text of the kernel's `modules.builtin`.
    pub modules_builtin: &'a str,
    /// Contents of `/etc/strake/release`.
    pub release_file: String,
    /// The sparse STATE filesystem template (`state::TEMPLATE_PATH`).
    pub state_template: Vec<u8>,
}

/// Top-level directories init expects to exist before it mounts anything.
pub const BASE_DIRS: &[(&str, u32)] = &[
    ("bin", 0o755),
    ("dev", 0o755),
    ("etc", 0o755),
    ("lib", 0o755),
    ("proc", 0o555),
    ("run", 0o755),
    ("sys", 0o555),
    ("tmp", 0o1777),
    ("var", 0o755),
];

/// The Strake initramfs: base directories, `/init` (the strake binary) with `/bin/strake` as a hard
/// link to it, `/dev/console` and `/dev/null` so the kernel can open a console before devtmpfs is
/// mounted, the modules under `/lib/modules/<release>/` with a matching `modules.dep` and the kernel's
/// `modules.builtin`, `/etc/strake/release`, and the STATE filesystem template.
pub fn strake_tree(layout: &StrakeLayout<'_>) -> Result<Tree, InitramfsError> {
    let mut tree = Tree::new();
    for (dir, mode) in BASE_DIRS {
        tree.add_dir(dir, *mode)?;
    }
    tree.add_file(
        "init",
        0o755,
        FileSource::Path(layout.strake_binary.to_owned()),
    )?;
    tree.add_hard_link("bin/strake", "init")?;
    tree.add_char_device("dev/console", 0o600, 5, 1)?;
    tree.add_char_device("dev/null", 0o666, 1, 3)?;
    tree.add_file(
        "etc/strake/release",
        0o644,
        FileSource::Bytes(layout.release_file.clone().into_bytes()),
    )?;

    tree.add_file(
        crate::state::TEMPLATE_PATH,
        0o644,
        FileSource::Bytes(layout.state_template.clone()),
    )?;

    let base = format!("lib/modules/{}", layout.release);
    for module in layout.modules {
        let source = layout.modules_dir.join(&module.path);
        tree.add_file(
            &format!("{base}/{}", module.path),
            0o644,
            FileSource::Path(source),
        )?;
    }
    let dep = layout.dep.render_subset(layout.modules);
    tree.add_file(
        &format!("{base}/modules.dep"),
        0o644,
        FileSource::Bytes(dep.into_bytes()),
    )?;
    tree.add_file(
        &format!("{base}/modules.builtin"),
        0o644,
        FileSource::Bytes(layout.modules_builtin.as_bytes().to_vec()),
    )?;
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::test_reader::parse;
    use crate::cpio::{S_IFDIR, S_IFREG};

    #[test]
    fn order_of_insertion_does_not_matter() {
        let mut a = Tree::new();
        a.add_file("z/file", 0o644, FileSource::Bytes(b"z".to_vec()))
            .expect("add");
        a.add_char_device("dev/null", 0o666, 1, 3).expect("add");
        a.add_dir("a", 0o700).expect("add");
        let mut b = Tree::new();
        b.add_dir("a", 0o700).expect("add");
        b.add_char_device("dev/null", 0o666, 1, 3).expect("add");
        b.add_file("z/file", 0o644, FileSource::Bytes(b"z".to_vec()))
            .expect("add");
        let (ca, cb) = (
            a.write_cpio(Vec::new(), 0).expect("a"),
            b.write_cpio(Vec::new(), 0).expect("b"),
        );
        assert_eq!(ca, cb);
        let names: Vec<_> = parse(&ca)
            .expect("parse")
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["a", "dev", "dev/null", "z", "z/file"]);
    }

    #[test]
    fn parents_are_created_and_conflicts_refused() {
        let mut t = Tree::new();
        t.add_file("etc/strake/release", 0o644, FileSource::Bytes(Vec::new()))
            .expect("add");
        assert_eq!(
            t.paths().collect::<Vec<_>>(),
            ["etc", "etc/strake", "etc/strake/release"]
        );
        let err = t
            .add_dir("etc/strake/release", 0o755)
            .expect_err("file exists");
        assert!(
            matches!(
                err,
                InitramfsError::Conflict {
                    existing: "file",
                    ..
                }
            ),
            "{err}"
        );
        let err = t.add_file("etc/strake/release/x", 0o644, FileSource::Bytes(Vec::new()));
        assert!(
            matches!(err, Err(InitramfsError::ParentNotDirectory { .. })),
            "{err:?}"
        );
        let err = t
            .add_hard_link("bin/x", "etc/strake")
            .expect_err("dir target");
        assert!(
            matches!(err, InitramfsError::LinkTargetNotFile { .. }),
            "{err}"
        );
        t.add_dir("/etc", 0o700)
            .expect("re-adding a directory updates its mode");
        let out = t.write_cpio(Vec::new(), 0).expect("write");
        assert_eq!(parse(&out).expect("parse")[0].mode, S_IFDIR | 0o700);
    }

    #[test]
    fn hard_link_group_is_written_once_at_its_first_name() {
        let mut t = Tree::new();
        t.add_file("init", 0o755, FileSource::Bytes(b"ELF".to_vec()))
            .expect("add");
        t.add_hard_link("bin/strake", "init").expect("link");
        t.add_file("etc/x", 0o644, FileSource::Bytes(b"x".to_vec()))
            .expect("add");
        let entries = parse(&t.write_cpio(Vec::new(), 7).expect("write")).expect("parse");
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["bin", "bin/strake", "init", "etc", "etc/x"]);
        assert_eq!(entries[1].ino, entries[2].ino);
        assert_eq!((entries[1].nlink, entries[1].data.len()), (2, 0));
        assert_eq!(
            (entries[2].mode, entries[2].data.as_slice()),
            (S_IFREG | 0o755, &b"ELF"[..])
        );
    }

    #[test]
    fn zstd_output_decompresses_to_the_cpio_and_is_stable() {
        let mut t = Tree::new();
        t.add_file("data", 0o644, FileSource::Bytes(vec![7u8; 100_000]))
            .expect("add");
        let plain = t.write_cpio(Vec::new(), 0).expect("cpio");
        let (z1, size) = t.write_zstd(Vec::new(), 0).expect("zstd");
        let (z2, _) = t.write_zstd(Vec::new(), 0).expect("zstd");
        assert_eq!(z1, z2);
        assert_eq!(size, plain.len() as u64);
        assert!(z1.len() < plain.len() / 10);
        assert_eq!(zstd::decode_all(&z1[..]).expect("decode"), plain);
        // Frame header: magic, then a descriptor with the checksum flag (bit 2) set.
        assert_eq!(&z1[..4], &[0x28, 0xB5, 0x2F, 0xFD]);
        assert_ne!(z1[4] & 0b100, 0, "content checksum flag");
    }
}
