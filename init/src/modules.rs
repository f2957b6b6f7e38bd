//! Kernel modules: parse `modules.dep` and `modules.builtin`, resolve a list of module names into
//! a load order (every dependency before its dependents), and load each file with finit_module.
//!
//! Compressed files (`.ko.xz`, `.ko.zst`, `.ko.gz`) are passed with `MODULE_INIT_COMPRESSED_FILE`;
//! when the kernel cannot decompress (no CONFIG_MODULE_DECOMPRESS, as in Debian's 6.1 cloud
//! kernel), `.ko.zst` files are decompressed here and loaded with init_module, and the others fail
//! with an error that says so.

use std::collections::{HashMap, HashSet};
use std::ffi::CStr;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::kmod::ModuleInitFlags;

use crate::sys::{LoadOutcome, ModuleLoader};

/// Modules init loads on every boot, before `strake.modules=` extras.
pub const DEFAULT_MODULES: &[&str] = &[
    "virtio_net",
    "virtio_pci",
    "virtio_blk",
    // CD-ROMs (the ISO an install copies from, ISO 9660 config drives) on virtio-scsi: the
    // cloud kernel has no AHCI.
    "virtio_scsi",
    "sr_mod",
    "overlay",
    "bridge",
    "veth",
    "br_netfilter",
    "nf_tables",
    // Service routing and masquerade (no modprobe here to load them on demand).
    "nf_conntrack",
    "nf_nat",
    "nft_chain_nat",
    "nft_nat",
    "nft_masq",
    "nft_numgen",
    "nft_reject_ipv4",
    // NetworkPolicy judges connections by their conntrack tuples.
    "nft_ct",
    // Deleting stale UDP flows when a Service's endpoints change.
    "nf_conntrack_netlink",
    // Pod traffic to nodes off this node's L2.
    "vxlan",
    // For the ACPI power button (QEMU's `system_powerdown`): the button driver and its evdev node.
    "button",
    "evdev",
    // QEMU's fw_cfg in sysfs: a machine config may come through it.
    "qemu_fw_cfg",
];

/// `MODULE_INIT_COMPRESSED_FILE` from `<linux/module.h>` (not in libc yet).
const MODULE_INIT_COMPRESSED_FILE: u32 = 4;
/// Largest module we decompress in memory.
const MAX_MODULE_BYTES: u64 = 64 * 1024 * 1024;

/// Errors loading one module file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("opening module {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("kernel refused module {path}: {errno}")]
    Kernel { path: String, errno: Errno },
    #[error(
        "module {path} is {compression}-compressed and the kernel cannot decompress it ({errno}: \
         CONFIG_MODULE_DECOMPRESS missing?); ship it uncompressed or as .ko.zst"
    )]
    CannotDecompress {
        path: String,
        compression: &'static str,
        errno: Errno,
    },
    #[error("decompressing module {path}: {source}")]
    Decompress {
        path: String,
        source: std::io::Error,
    },
}

/// Errors reading the module index.
#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    #[error("reading {path}: {source}")]
    ReadIndex {
        path: String,
        source: std::io::Error,
    },
}

/// A module to load: its canonical name and its file relative to `/lib/modules/<release>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedModule {
    pub name: String,
    pub path: PathBuf,
}

/// Something in the requested list that will not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveWarning {
    /// Neither in `modules.dep` nor built in.
    Missing {
        name: String,
        wanted_by: Option<String>,
    },
    /// A dependency cycle (a broken `modules.dep`).
    Cycle { name: String },
}

impl std::fmt::Display for ResolveWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing {
                name,
                wanted_by: None,
            } => write!(f, "module {name} not found"),
            Self::Missing {
                name,
                wanted_by: Some(by),
            } => {
                write!(f, "module {name} (needed by {by}) not found")
            }
            Self::Cycle { name } => write!(f, "dependency cycle through module {name}"),
        }
    }
}

/// The parsed `modules.dep` (+ `modules.builtin`).
#[derive(Debug, Default, Clone)]
pub struct ModuleIndex {
    /// name → (file, names of direct and indirect dependencies as listed).
    modules: HashMap<String, (PathBuf, Vec<String>)>,
    builtin: HashSet<String>,
}

/// `kernel/net/bridge/br_netfilter.ko.zst` → `br_netfilter`; `-` and `_` are the same in module
/// names, so names are normalized to `_`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = [".ko.xz", ".ko.zst", ".ko.gz", ".ko"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))
        .unwrap_or(file);
    normalize(stem)
}

fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

impl ModuleIndex {
    /// Parses `modules.dep` (`path: dep dep ...` lines) and `modules.builtin` (one path a line).
    /// Malformed lines are skipped.
    pub fn parse(modules_dep: &str, modules_builtin: &str) -> ModuleIndex {
        let mut modules = HashMap::new();
        for line in modules_dep.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let path = path.trim();
            if path.is_empty() {
                continue;
            }
            let deps = deps.split_whitespace().map(module_name).collect();
            modules.insert(module_name(path), (PathBuf::from(path), deps));
        }
        let builtin = modules_builtin
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(module_name)
            .collect();
        ModuleIndex { modules, builtin }
    }

    /// Reads the index for `release` under `root` (`<root>/lib/modules/<release>/`).
    /// `modules.builtin` is optional.
    pub fn read(root: &Path, release: &str) -> Result<ModuleIndex, ModulesError> {
        let dir = root.join("lib/modules").join(release);
        let dep_path = dir.join("modules.dep");
        let dep = std::fs::read_to_string(&dep_path).map_err(|source| ModulesError::ReadIndex {
            path: dep_path.display().to_string(),
            source,
        })?;
        let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
        Ok(ModuleIndex::parse(&dep, &builtin))
    }

    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalize(name))
    }

    /// The load order for `names`: each module after all its dependencies, each module once,
    /// built-ins skipped. Missing modules are warnings.
    pub fn resolve(&self, names: &[String]) -> (Vec<PlannedModule>, Vec<ResolveWarning>) {
        let mut plan = Vec::new();
        let mut warnings = Vec::new();
        let mut done = HashSet::new();
        let mut visiting = HashSet::new();
        for name in names {
            self.visit(
                &normalize(name),
                None,
                &mut plan,
                &mut warnings,
                &mut done,
                &mut visiting,
            );
        }
        (plan, warnings)
    }

    fn visit(
        &self,
        name: &str,
        wanted_by: Option<&str>,
        plan: &mut Vec<PlannedModule>,
        warnings: &mut Vec<ResolveWarning>,
        done: &mut HashSet<String>,
        visiting: &mut HashSet<String>,
    ) {
        if done.contains(name) || self.builtin.contains(name) {
            return;
        }
        let Some((path, deps)) = self.modules.get(name) else {
            done.insert(name.to_owned());
            warnings.push(ResolveWarning::Missing {
                name: name.into(),
                wanted_by: wanted_by.map(Into::into),
            });
            return;
        };
        if !visiting.insert(name.to_owned()) {
            warnings.push(ResolveWarning::Cycle { name: name.into() });
            return;
        }
        // modules.dep lists the whole closure, but not in a guaranteed order: recurse so each
        // dependency's own dependencies come first.
        for dep in deps {
            self.visit(dep, Some(name), plan, warnings, done, visiting);
        }
        visiting.remove(name);
        if done.insert(name.to_owned()) {
            plan.push(PlannedModule {
                name: name.to_owned(),
                path: path.clone(),
            });
        }
    }
}

/// What a modules run did, for the log and the tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadReport {
    pub loaded: Vec<String>,
    pub already_loaded: Vec<String>,
    pub failed: Vec<String>,
    pub warnings: Vec<String>,
}

/// Loads `names` (with dependencies) from `<root>/lib/modules/<release>/`. Never fails the boot:
/// missing or refused modules are warnings in the report.
pub fn load_modules(
    loader: &mut dyn ModuleLoader,
    index: &ModuleIndex,
    root: &Path,
    release: &str,
    names: &[String],
) -> LoadReport {
    let (plan, resolve_warnings) = index.resolve(names);
    let mut report = LoadReport {
        warnings: resolve_warnings.iter().map(ToString::to_string).collect(),
        ..LoadReport::default()
    };
    let base = root.join("lib/modules").join(release);
    let mut failed: HashSet<String> = HashSet::new();
    for m in plan {
        if let Some((_, deps)) = index.modules.get(&m.name)
            && let Some(bad) = deps.iter().find(|d| failed.contains(*d))
        {
            report.warnings.push(format!(
                "module {} skipped: its dependency {bad} failed",
                m.name
            ));
            failed.insert(m.name.clone());
            report.failed.push(m.name);
            continue;
        }
        match loader.load(&base.join(&m.path)) {
            Ok(LoadOutcome::Loaded) => report.loaded.push(m.name),
            Ok(LoadOutcome::AlreadyLoaded) => report.already_loaded.push(m.name),
            Err(e) => {
                report.warnings.push(e.to_string());
                failed.insert(m.name.clone());
                report.failed.push(m.name);
            }
        }
    }
    report
}

fn compression_of(path: &Path) -> Option<&'static str> {
    let name = path.file_name()?.to_str()?;
    if name.ends_with(".ko.zst") {
        Some("zstd")
    } else if name.ends_with(".ko.xz") {
        Some("xz")
    } else if name.ends_with(".ko.gz") {
        Some("gzip")
    } else {
        None
    }
}

/// The real loader: finit_module, with in-kernel decompression for compressed files and a
/// userspace zstd fallback.
pub fn load_module_file(path: &Path) -> Result<LoadOutcome, LoadError> {
    let shown = || path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| LoadError::Open {
        path: shown(),
        source,
    })?;
    let compression = compression_of(path);
    let flags = if compression.is_some() {
        ModuleInitFlags::from_bits_retain(MODULE_INIT_COMPRESSED_FILE)
    } else {
        ModuleInitFlags::empty()
    };
    match nix::kmod::finit_module(&file, c"", flags) {
        Ok(()) => Ok(LoadOutcome::Loaded),
        Err(Errno::EEXIST) => Ok(LoadOutcome::AlreadyLoaded),
        Err(errno @ (Errno::EINVAL | Errno::ENOEXEC | Errno::EOPNOTSUPP))
            if compression.is_some() =>
        {
            if compression == Some("zstd") {
                load_zstd_in_userspace(file, path)
            } else {
                Err(LoadError::CannotDecompress {
                    path: shown(),
                    compression: compression.unwrap_or("?"),
                    errno,
                })
            }
        }
        Err(errno) => Err(LoadError::Kernel {
            path: shown(),
            errno,
        }),
    }
}

fn load_zstd_in_userspace(file: std::fs::File, path: &Path) -> Result<LoadOutcome, LoadError> {
    let shown = || path.display().to_string();
    let decoder =
        zstd::stream::read::Decoder::new(file).map_err(|source| LoadError::Decompress {
            path: shown(),
            source,
        })?;
    let mut image = Vec::new();
    decoder
        .take(MAX_MODULE_BYTES)
        .read_to_end(&mut image)
        .map_err(|source| LoadError::Decompress {
            path: shown(),
            source,
        })?;
    let params: &CStr = c"";
    match nix::kmod::init_module(&image, params) {
        Ok(()) => Ok(LoadOutcome::Loaded),
        Err(Errno::EEXIST) => Ok(LoadOutcome::AlreadyLoaded),
        Err(errno) => Err(LoadError::Kernel {
            path: shown(),
            errno,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeKernel;

    const DEP: &str = "\
kernel/drivers/net/virtio_net.ko.zst: kernel/drivers/net/net_failover.ko.zst kernel/net/core/failover.ko.zst kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko.zst: kernel/net/core/failover.ko.zst
kernel/net/core/failover.ko.zst:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/net/bridge/br_netfilter.ko: kernel/net/bridge/bridge.ko kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/net/802/stp.ko: kernel/net/llc/llc.ko
kernel/net/llc/llc.ko:
kernel/drivers/md/dm-verity.ko:
garbage line without colon
";
    const BUILTIN: &str = "kernel/fs/ext4/ext4.ko\nkernel/drivers/block/virtio_blk.ko\n";

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn position(plan: &[PlannedModule], name: &str) -> usize {
        plan.iter()
            .position(|p| p.name == name)
            .unwrap_or_else(|| panic!("{name} not planned"))
    }

    #[test]
    fn names_from_paths() {
        assert_eq!(
            module_name("kernel/drivers/md/dm-verity.ko.xz"),
            "dm_verity"
        );
        assert_eq!(module_name("a/b/virtio_net.ko.zst"), "virtio_net");
        assert_eq!(module_name("llc.ko"), "llc");
    }

    #[test]
    fn dependencies_come_first_each_once_builtins_skipped() {
        let index = ModuleIndex::parse(DEP, BUILTIN);
        let (plan, warnings) = index.resolve(&names(&[
            "virtio_net",
            "br_netfilter",
            "virtio_blk",
            "bridge",
            "dm-verity",
        ]));
        assert!(warnings.is_empty(), "{warnings:?}");
        let order: Vec<&str> = plan.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(order.len(), 10, "{order:?}");
        let unique: HashSet<&&str> = order.iter().collect();
        assert_eq!(unique.len(), order.len());
        for (before, after) in [
            ("virtio_ring", "virtio"),
            ("virtio", "virtio_net"),
            ("failover", "net_failover"),
            ("net_failover", "virtio_net"),
            ("llc", "stp"),
            ("stp", "bridge"),
            ("bridge", "br_netfilter"),
        ] {
            assert!(
                position(&plan, before) < position(&plan, after),
                "{before} before {after}: {order:?}"
            );
        }
        assert!(!order.contains(&"virtio_blk"));
        assert_eq!(
            plan[position(&plan, "dm_verity")].path,
            PathBuf::from("kernel/drivers/md/dm-verity.ko")
        );
    }

    #[test]
    fn missing_modules_and_cycles_are_warnings() {
        let index = ModuleIndex::parse("a.ko: b.ko\nb.ko: a.ko\nc.ko: nothere.ko\n", "");
        let (plan, warnings) = index.resolve(&names(&["a", "c", "ghost"]));
        assert!(
            warnings.contains(&ResolveWarning::Cycle { name: "a".into() }),
            "{warnings:?}"
        );
        assert!(warnings.contains(&ResolveWarning::Missing {
            name: "nothere".into(),
            wanted_by: Some("c".into())
        }));
        assert!(warnings.contains(&ResolveWarning::Missing {
            name: "ghost".into(),
            wanted_by: None
        }));
        assert!(plan.iter().any(|p| p.name == "c"));
    }

    #[test]
    fn load_reports_loaded_existing_and_failed() {
        let index = ModuleIndex::parse(DEP, BUILTIN);
        let fake = FakeKernel::default();
        fake.state().already_loaded.insert("virtio_ring".into());
        fake.state().refuse_modules.insert("stp".into());
        let mut loader = fake.clone();
        let report = load_modules(
            &mut loader,
            &index,
            Path::new("/"),
            "6.1.0-test",
            &names(&["virtio_net", "br_netfilter", "ghost"]),
        );
        assert_eq!(report.already_loaded, ["virtio_ring"]);
        assert_eq!(
            report.loaded,
            ["failover", "net_failover", "virtio", "virtio_net", "llc"]
        );
        // stp was refused, so bridge and br_netfilter are skipped without calling the kernel.
        assert_eq!(report.failed, ["stp", "bridge", "br_netfilter"]);
        assert_eq!(report.warnings.len(), 4, "{:?}", report.warnings);
        let calls = fake.state().module_calls.clone();
        assert!(
            calls
                .iter()
                .all(|p| p.starts_with("/lib/modules/6.1.0-test/kernel/")),
            "{calls:?}"
        );
        assert!(!calls.iter().any(|p| p.ends_with("bridge.ko")));
    }

    #[test]
    fn compression_detected_by_extension() {
        assert_eq!(compression_of(Path::new("/x/a.ko.zst")), Some("zstd"));
        assert_eq!(compression_of(Path::new("/x/a.ko.xz")), Some("xz"));
        assert_eq!(compression_of(Path::new("/x/a.ko")), None);
    }

    #[test]
    fn real_loader_reports_a_missing_file() {
        let err =
            load_module_file(Path::new("/nonexistent/strake-test.ko")).expect_err("must fail");
        assert!(matches!(err, LoadError::Open { .. }), "{err}");
    }
}
