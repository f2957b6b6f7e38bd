//! Kernel module selection: parse `modules.dep` and `modules.builtin`, resolve requested module names
//! to the set of `.ko` files to ship (requests plus their transitive dependencies), and render the
//! `modules.dep` restricted to that set.
//!
//! Pure functions over text; reading the files is the caller's job.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;

/// Errors from parsing module metadata or resolving requests.
#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    /// A `modules.dep` line is not `path: dep dep ...`.
    #[error("modules.dep line {line}: expected `path: deps...`, got {text:?}")]
    MalformedLine { line: usize, text: String },
    /// A path is absolute, contains `..`, or does not name a `.ko` file.
    #[error("modules.dep line {line}: unusable module path {path:?}: {reason}")]
    BadPath {
        line: usize,
        path: String,
        reason: &'static str,
    },
    /// Two lines define the same module name.
    #[error("modules.dep line {line}: module {name} is listed twice ({first} and {second})")]
    DuplicateModule {
        line: usize,
        name: ModuleName,
        first: String,
        second: String,
    },
    /// A dependency path has no line of its own.
    #[error("modules.dep: {module} depends on {dep}, which has no entry of its own")]
    DanglingDependency { module: String, dep: String },
    /// A module name is empty or has characters module names never have.
    #[error("invalid module name {0:?}")]
    InvalidName(String),
    /// Requested modules that are neither loadable modules nor built into the kernel.
    #[error("requested kernel modules not found as modules or built-ins: {}", join(.0))]
    NotFound(Vec<ModuleName>),
}

fn join(names: &[ModuleName]) -> String {
    names
        .iter()
        .map(ModuleName::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A kernel module name in canonical form: `-` replaced by `_`, as the kernel itself does.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModuleName(String);

impl ModuleName {
    /// Parses a user-supplied name such as `dm-verity` or `virtio_net`.
    pub fn new(name: &str) -> Result<Self, ModulesError> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(ModulesError::InvalidName(name.to_owned()));
        }
        Ok(Self(name.replace('-', "_")))
    }

    /// The module name a `.ko` path defines (`kernel/drivers/char/hw_random/virtio-rng.ko` →
    /// `virtio_rng`), or `None` if the file name is not a kernel module.
    pub fn from_path(path: &str) -> Option<Self> {
        let file = path.rsplit('/').next()?;
        let (stem, _) = split_ko(file)?;
        Self::new(stem).ok()
    }

    /// The canonical name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ModuleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a module file is compressed, judged by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Compression {
    /// Plain `.ko`.
    None,
    /// `.ko.xz`.
    Xz,
    /// `.ko.zst`.
    Zstd,
    /// `.ko.gz`.
    Gzip,
}

impl Compression {
    /// The compression of a module path, or `None` if it is not a module file.
    pub fn of_path(path: &str) -> Option<Self> {
        split_ko(path).map(|(_, c)| c)
    }

    /// Lowercase label used in the manifest (`none`, `xz`, `zstd`, `gzip`).
    pub fn label(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Xz => "xz",
            Self::Zstd => "zstd",
            Self::Gzip => "gzip",
        }
    }
}

fn split_ko(file: &str) -> Option<(&str, Compression)> {
    [
        (".ko", Compression::None),
        (".ko.xz", Compression::Xz),
        (".ko.zst", Compression::Zstd),
        (".ko.gz", Compression::Gzip),
    ]
    .into_iter()
    .find_map(|(ext, c)| file.strip_suffix(ext).map(|stem| (stem, c)))
}

/// One line of `modules.dep`: a module and the modules it needs, in depmod's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleEntry {
    /// Canonical module name.
    pub name: ModuleName,
    /// Path relative to `/lib/modules/<release>/`.
    pub path: String,
    /// Paths of the modules this one needs, as depmod listed them.
    pub deps: Vec<String>,
}

/// Parsed `modules.dep`.
#[derive(Debug, Clone, Default)]
pub struct ModuleDep {
    entries: Vec<ModuleEntry>,
    by_name: HashMap<ModuleName, usize>,
    by_path: HashMap<String, usize>,
}

impl ModuleDep {
    /// Parses the text of `modules.dep`. Blank lines and `#` comments are ignored.
    pub fn parse(text: &str) -> Result<Self, ModulesError> {
        let mut dep = Self::default();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let Some((path, deps)) = trimmed.split_once(':') else {
                return Err(ModulesError::MalformedLine {
                    line,
                    text: raw.to_owned(),
                });
            };
            let path = path.trim();
            let name = check_path(line, path)?;
            let deps = deps
                .split_whitespace()
                .map(|d| check_path(line, d).map(|_| d.to_owned()))
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(&first) = dep.by_name.get(&name) {
                return Err(ModulesError::DuplicateModule {
                    line,
                    name,
                    first: dep.entries[first].path.clone(),
                    second: path.to_owned(),
                });
            }
            let at = dep.entries.len();
            dep.by_name.insert(name.clone(), at);
            dep.by_path.insert(path.to_owned(), at);
            dep.entries.push(ModuleEntry {
                name,
                path: path.to_owned(),
                deps,
            });
        }
        for entry in &dep.entries {
            if let Some(missing) = entry.deps.iter().find(|d| !dep.by_path.contains_key(*d)) {
                return Err(ModulesError::DanglingDependency {
                    module: entry.path.clone(),
                    dep: missing.clone(),
                });
            }
        }
        Ok(dep)
    }

    /// The entry for a module name.
    pub fn get(&self, name: &ModuleName) -> Option<&ModuleEntry> {
        self.by_name.get(name).map(|&i| &self.entries[i])
    }

    /// Number of modules listed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no modules are listed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The given modules and everything they depend on, transitively, sorted by path.
    /// Fails with [`ModulesError::NotFound`] listing every root that has no entry.
    pub fn closure(&self, roots: &[ModuleName]) -> Result<Vec<&ModuleEntry>, ModulesError> {
        let missing: Vec<_> = roots
            .iter()
            .filter(|r| self.get(r).is_none())
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(ModulesError::NotFound(missing));
        }
        let mut seen = BTreeSet::new();
        let mut queue: VecDeque<usize> = roots.iter().map(|r| self.by_name[r]).collect();
        while let Some(i) = queue.pop_front() {
            if seen.insert(i) {
                queue.extend(self.entries[i].deps.iter().map(|d| self.by_path[d]));
            }
        }
        let mut out: Vec<_> = seen.into_iter().map(|i| &self.entries[i]).collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// `modules.dep` text restricted to `selected`, keeping depmod's line order and each line's
    /// dependency order. `selected` must be closed under dependencies (as [`Self::closure`] returns).
    pub fn render_subset(&self, selected: &[&ModuleEntry]) -> String {
        let keep: BTreeSet<&str> = selected.iter().map(|e| e.path.as_str()).collect();
        let mut out = String::new();
        for entry in self
            .entries
            .iter()
            .filter(|e| keep.contains(e.path.as_str()))
        {
            out.push_str(&entry.path);
            out.push(':');
            for dep in &entry.deps {
                debug_assert!(keep.contains(dep.as_str()), "selection not closed: {dep}");
                out.push(' ');
                out.push_str(dep);
            }
            out.push('\n');
        }
        out
    }
}

/// Rejects paths that could escape `/lib/modules/<release>/` when copied, and returns the module name.
fn check_path(line: usize, path: &str) -> Result<ModuleName, ModulesError> {
    let bad = |reason| ModulesError::BadPath {
        line,
        path: path.to_owned(),
        reason,
    };
    if path.starts_with('/') {
        return Err(bad("absolute path"));
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad("empty, `.` or `..` component"));
    }
    ModuleName::from_path(path).ok_or_else(|| bad("not a .ko file with a valid module name"))
}

/// Names of the modules compiled into the kernel, from `modules.builtin`.
#[derive(Debug, Clone, Default)]
pub struct Builtin {
    names: BTreeSet<ModuleName>,
}

impl Builtin {
    /// Parses `modules.builtin` (one `.ko` path per line). Lines that name no module are skipped.
    pub fn parse(text: &str) -> Self {
        let names = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(ModuleName::from_path)
            .collect();
        Self { names }
    }

    /// Whether `name` is built into the kernel.
    pub fn contains(&self, name: &ModuleName) -> bool {
        self.names.contains(name)
    }
}

/// A module the image asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleRequest {
    /// Canonical name.
    pub name: ModuleName,
    /// An optional request that is neither a module nor built in is dropped instead of failing.
    pub optional: bool,
}

impl ModuleRequest {
    /// A request that must be satisfied (as a module or a built-in).
    pub fn required(name: &str) -> Result<Self, ModulesError> {
        Ok(Self {
            name: ModuleName::new(name)?,
            optional: false,
        })
    }

    /// A request that is dropped if the kernel lacks it entirely.
    pub fn optional(name: &str) -> Result<Self, ModulesError> {
        Ok(Self {
            name: ModuleName::new(name)?,
            optional: true,
        })
    }
}

/// Modules every Strake image requests: `(name, optional)`.
///
/// Beyond the drivers and subsystems init and the agent use directly, the `nls_*` tables are here
/// because mounting a FAT ESP with this kernel's defaults (codepage 437, iocharset ascii) needs them
/// and there is no modprobe in the initramfs to load them on demand.
pub const STRAKE_MODULES: &[(&str, bool)] = &[
    ("virtio_net", false),
    ("virtio_pci", false),
    ("virtio_blk", false),
    ("virtio_scsi", false),
    ("sr_mod", false),
    ("virtio_console", false),
    ("virtio_rng", false),
    // A machine config handed over by QEMU (`-fw_cfg name=opt/strake/config,...`).
    ("qemu_fw_cfg", true),
    ("button", false),
    ("evdev", false),
    ("overlay", false),
    ("bridge", false),
    ("br_netfilter", false),
    ("veth", false),
    ("macvlan", false),
    ("vxlan", false),
    ("nf_tables", false),
    ("nft_chain_nat", false),
    ("nft_nat", false),
    ("nft_masq", false),
    ("nft_numgen", false),
    ("nft_reject", false),
    ("nft_reject_ipv4", false),
    ("nft_ct", false),
    ("nf_conntrack_netlink", false),
    ("nft_compat", true),
    ("nf_nat", false),
    ("nf_conntrack", false),
    ("vfat", false),
    // Config drives (STRAKECFG) may be ISO 9660, as cloud-init's cidata volumes often are.
    ("isofs", true),
    ("nls_cp437", false),
    ("nls_ascii", false),
    ("efivarfs", false),
    ("dm_verity", false),
    ("dm_mod", false),
    ("tun", false),
    ("ipvlan", false),
];

/// The outcome of resolving requests against a kernel.
#[derive(Debug, Clone)]
pub struct Selection<'a> {
    /// Module files to ship: the requested modules and their dependencies, sorted by path.
    pub modules: Vec<&'a ModuleEntry>,
    /// Requested names that are built into the kernel (nothing to ship).
    pub builtin: Vec<ModuleName>,
    /// Optional requested names this kernel has neither as module nor built-in.
    pub absent_optional: Vec<ModuleName>,
}

impl Selection<'_> {
    /// The distinct compressions of the shipped module files.
    pub fn compressions(&self) -> BTreeSet<Compression> {
        self.modules
            .iter()
            .filter_map(|m| Compression::of_path(&m.path))
            .collect()
    }
}

/// Resolves `requests` against a kernel's module metadata. A name that is a loadable module wins over
/// a built-in of the same name; a required name that is neither is an error listing every such name.
pub fn select<'a>(
    dep: &'a ModuleDep,
    builtin: &Builtin,
    requests: &[ModuleRequest],
) -> Result<Selection<'a>, ModulesError> {
    // Deduplicate; a name requested both ways counts as required.
    let mut wanted: BTreeMap<&ModuleName, bool> = BTreeMap::new();
    for r in requests {
        let optional = wanted.entry(&r.name).or_insert(r.optional);
        *optional &= r.optional;
    }
    let mut roots = Vec::new();
    let mut builtins = Vec::new();
    let mut absent_optional = Vec::new();
    let mut missing = Vec::new();
    for (name, optional) in wanted {
        if dep.get(name).is_some() {
            roots.push(name.clone());
        } else if builtin.contains(name) {
            tracing::debug!(module = %name, "requested module is built into the kernel; skipping");
            builtins.push(name.clone());
        } else if optional {
            tracing::debug!(module = %name, "optional module absent from this kernel; skipping");
            absent_optional.push(name.clone());
        } else {
            missing.push(name.clone());
        }
    }
    if !missing.is_empty() {
        return Err(ModulesError::NotFound(missing));
    }
    Ok(Selection {
        modules: dep.closure(&roots)?,
        builtin: builtins,
        absent_optional,
    })
}

#[cfg(test)]
#[path = "modules_tests.rs"]
mod tests;
