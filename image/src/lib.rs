//! strake-image owns turning the pinned Debian kernel package and the static `strake` binary into boot
//! artifacts (today `vmlinuz` + a zstd newc initramfs + `manifest.json`), reproducibly and without root.
//! It must not touch the host beyond its cache and output directories: no loop mounts, no installs.

pub mod artifact;
pub mod cpio;
pub mod elf;
pub mod forms;
pub mod initramfs;
pub mod kernel;
pub mod manifest;
pub mod modules;
pub mod state;

#[cfg(test)]
mod build_tests;

use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub use kernel::{KERNEL_PACKAGE, KERNEL_RELEASE, KERNEL_SHA256, KERNEL_VERSION};

use artifact::ArtifactInfo;
use manifest::{InitramfsInfo, KernelInfo, MANIFEST_FILE, MANIFEST_FORMAT, Manifest, ModuleInfo};
use modules::{Builtin, ModuleDep, ModuleRequest};

/// Version written into `/etc/strake/release` and the manifest. The workspace shares one version, so
/// this is the version of the `strake` binary built from the same tree.
pub const STRAKE_VERSION: &str = env!("CARGO_PKG_VERSION");
/// File name of the kernel image in the output directory.
pub const VMLINUZ_FILE: &str = "vmlinuz";
/// File name of the initramfs in the output directory.
pub const INITRAMFS_FILE: &str = "initramfs.zst";
/// The unified kernel image (systemd-boot stub + kernel + initramfs + command line).
pub const UKI_FILE: &str = "strake.efi";
/// The GPT disk image: ESP with systemd-boot and the UKI in slot A, and STATE.
pub const RAW_FILE: &str = "strake.raw";
pub const QCOW2_FILE: &str = "strake.qcow2";
/// The hybrid ISO (BIOS isolinux, UEFI El Torito with the UKI), booting live.
pub const ISO_FILE: &str = "strake.iso";
/// The PXE bundle's iPXE script, loading [`VMLINUZ_FILE`] and [`INITRAMFS_FILE`] from beside
/// it. UEFI PXE may boot [`UKI_FILE`] instead.
pub const IPXE_FILE: &str = "strake.ipxe";

/// Errors from building an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Fetching, verifying or extracting the kernel package failed.
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    /// Module metadata is broken or a requested module does not exist.
    #[error(transparent)]
    Modules(#[from] modules::ModulesError),
    /// Assembling or compressing the initramfs failed.
    #[error(transparent)]
    Initramfs(#[from] initramfs::InitramfsError),
    /// The strake binary cannot be `/init`.
    #[error(transparent)]
    Init(#[from] elf::ElfError),
    /// `SOURCE_DATE_EPOCH` is set but unusable.
    #[error("SOURCE_DATE_EPOCH={value:?} is not usable: {reason}")]
    SourceDateEpoch { value: String, reason: &'static str },
    /// The manifest could not be serialised or parsed.
    #[error("running {tool}: {detail}")]
    Tool { tool: &'static str, detail: String },
    #[error("manifest: {0}")]
    Manifest(serde_json::Error),
    /// Filesystem error on a named path.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl ImageError {
    /// Adapter for `map_err`: an I/O error while doing `action` on `path`.
    pub fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_owned();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }
}

/// What to build from and where to put it.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The static `strake` binary; becomes `/init`.
    pub strake_binary: PathBuf,
    /// Where the kernel package is downloaded and extracted (reused across builds).
    pub cache_dir: PathBuf,
    /// Where the artifacts are written (created if missing; existing artifacts are replaced).
    pub out_dir: PathBuf,
    /// Module names to ship in addition to [`modules::STRAKE_MODULES`]; each must exist in the kernel
    /// as a module or a built-in.
    pub extra_modules: Vec<String>,
}

/// Paths of the built artifacts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifacts {
    /// The kernel image.
    pub vmlinuz: PathBuf,
    /// The zstd-compressed newc initramfs.
    pub initramfs: PathBuf,
    /// The UKI, the raw GPT disk image, its qcow2, and the hybrid ISO.
    pub uki: PathBuf,
    pub raw: PathBuf,
    pub qcow2: PathBuf,
    pub iso: PathBuf,
    pub ipxe: PathBuf,
    /// Kernel release (`uname -r`), i.e. the `/lib/modules/<release>` directory name.
    pub kernel_version: String,
    /// `manifest.json`.
    pub manifest: PathBuf,
}

/// Builds `vmlinuz`, `initramfs.zst` and `manifest.json` into `opts.out_dir`.
///
/// Fetches (or reuses from `opts.cache_dir`) the pinned kernel package, verifies it, selects the
/// modules Strake needs plus `opts.extra_modules` with their dependencies, and writes a deterministic
/// initramfs whose entries carry `SOURCE_DATE_EPOCH` (or 0) as mtime. Same inputs, same bytes.
pub fn build(opts: &BuildOptions) -> Result<Artifacts, ImageError> {
    let mtime = source_date_epoch(std::env::var("SOURCE_DATE_EPOCH").ok().as_deref())?;
    elf::check_static_executable(&opts.strake_binary)?;
    let requests = module_requests(&opts.extra_modules)?;
    std::fs::create_dir_all(&opts.out_dir).map_err(ImageError::io("creating", &opts.out_dir))?;

    let pkg = kernel::PINNED;
    let deb = kernel::ensure_package(&pkg, &opts.cache_dir)?;
    let tree = kernel::ensure_extracted(&pkg, &deb, &opts.cache_dir)?;
    let modules_dir = tree.modules_dir();
    let read = |name: &str| {
        let path = modules_dir.join(name);
        std::fs::read_to_string(&path).map_err(ImageError::io("reading", &path))
    };
    let dep = ModuleDep::parse(&read("modules.dep")?)?;
    let builtin_text = read("modules.builtin")?;
    let selection = modules::select(&dep, &Builtin::parse(&builtin_text), &requests)?;
    let compressions: Vec<String> = selection
        .compressions()
        .into_iter()
        .map(|c| c.label().to_owned())
        .collect();
    tracing::info!(
        modules = selection.modules.len(),
        compression = ?compressions,
        release = %tree.release,
        "selected kernel modules"
    );

    let strake_sha256 = kernel::sha256_file(&opts.strake_binary)?;
    let state_template = state::build_template(&opts.out_dir, mtime)?;
    let layout = initramfs::StrakeLayout {
        strake_binary: &opts.strake_binary,
        release: &tree.release,
        modules_dir: &modules_dir,
        dep: &dep,
        modules: &selection.modules,
        modules_builtin: &builtin_text,
        release_file: release_file(&strake_sha256, &pkg, &tree.release),
        state_template: state_template.clone(),
    };
    let initramfs_tree = initramfs::strake_tree(&layout)?;

    let initramfs_path = opts.out_dir.join(INITRAMFS_FILE);
    let uncompressed_size = artifact::write_atomically(&initramfs_path, |out| {
        let (_, size) = initramfs_tree.write_zstd(out, mtime)?;
        Ok(size)
    })?;
    let vmlinuz_path = opts.out_dir.join(VMLINUZ_FILE);
    artifact::copy_atomically(&tree.vmlinuz(), &vmlinuz_path)?;

    let uki_path = opts.out_dir.join(UKI_FILE);
    let os_release = format!(
        "NAME=Strake\nID=strake\nPRETTY_NAME=\"Strake {STRAKE_VERSION}\"\nVERSION_ID={STRAKE_VERSION}\nIMAGE_VERSION={STRAKE_VERSION}+{}\n",
        &strake_sha256[..12]
    );
    forms::build_uki(
        &vmlinuz_path,
        &initramfs_path,
        &os_release,
        forms::UKI_CMDLINE,
        mtime,
        &uki_path,
    )?;
    let esp_path = opts.out_dir.join(".esp.img");
    forms::build_esp(&uki_path, mtime, &esp_path)?;
    let raw_path = opts.out_dir.join(RAW_FILE);
    forms::build_disk(&esp_path, &state_template, &raw_path)?;
    let qcow2_path = opts.out_dir.join(QCOW2_FILE);
    forms::build_qcow2(&raw_path, &qcow2_path)?;
    let iso_path = opts.out_dir.join(ISO_FILE);
    forms::build_iso(
        &vmlinuz_path,
        &initramfs_path,
        &esp_path,
        forms::UKI_CMDLINE,
        mtime,
        &iso_path,
    )?;
    std::fs::remove_file(&esp_path).map_err(ImageError::io("removing", &esp_path))?;
    let ipxe_path = opts.out_dir.join(IPXE_FILE);
    artifact::write_atomically(&ipxe_path, |out| {
        out.write_all(forms::ipxe_script(forms::UKI_CMDLINE).as_bytes())
            .map_err(ImageError::io("writing", &ipxe_path))
    })?;

    let mut module_infos = Vec::with_capacity(selection.modules.len());
    for m in &selection.modules {
        let path = modules_dir.join(&m.path);
        let size = std::fs::metadata(&path)
            .map_err(ImageError::io("reading metadata of", &path))?
            .len();
        module_infos.push(ModuleInfo {
            name: m.name.to_string(),
            path: m.path.clone(),
            size,
        });
    }
    let info = |path: &Path| ArtifactInfo::of(path).map_err(ImageError::io("hashing", path));
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        strake_version: STRAKE_VERSION.to_owned(),
        strake_sha256,
        kernel: KernelInfo {
            package: pkg.name.to_owned(),
            version: pkg.version.to_owned(),
            release: tree.release.clone(),
            package_sha256: pkg.sha256.to_owned(),
        },
        initramfs: InitramfsInfo {
            zstd_level: initramfs::ZSTD_LEVEL,
            uncompressed_size,
            mtime,
            module_compression: compressions,
        },
        modules: module_infos,
        builtin_modules: selection.builtin.iter().map(ToString::to_string).collect(),
        absent_optional_modules: selection
            .absent_optional
            .iter()
            .map(ToString::to_string)
            .collect(),
        // The raw disk is left out: hashing 2 GiB costs seconds, and the qcow2 holds the same.
        artifacts: [
            ("vmlinuz", info(&vmlinuz_path)?),
            ("initramfs", info(&initramfs_path)?),
            ("uki", info(&uki_path)?),
            ("qcow2", info(&qcow2_path)?),
            ("iso", info(&iso_path)?),
            ("ipxe", info(&ipxe_path)?),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
    };
    let manifest_path = opts.out_dir.join(MANIFEST_FILE);
    let json = manifest.to_json()?;
    artifact::write_atomically(&manifest_path, |out| {
        out.write_all(json.as_bytes())
            .map_err(ImageError::io("writing", &manifest_path))
    })?;
    tracing::info!(out = %opts.out_dir.display(), "image built");

    Ok(Artifacts {
        vmlinuz: vmlinuz_path,
        initramfs: initramfs_path,
        uki: uki_path,
        raw: raw_path,
        qcow2: qcow2_path,
        iso: iso_path,
        ipxe: ipxe_path,
        kernel_version: tree.release,
        manifest: manifest_path,
    })
}

/// The default module set plus `extra` (all required).
fn module_requests(extra: &[String]) -> Result<Vec<ModuleRequest>, ImageError> {
    let defaults = modules::STRAKE_MODULES.iter().map(|&(name, optional)| {
        if optional {
            ModuleRequest::optional(name)
        } else {
            ModuleRequest::required(name)
        }
    });
    let extra = extra.iter().map(|name| ModuleRequest::required(name));
    Ok(defaults.chain(extra).collect::<Result<Vec<_>, _>>()?)
}

/// Parses `SOURCE_DATE_EPOCH`: unset means 0; newc stores mtimes in 32 bits.
fn source_date_epoch(value: Option<&str>) -> Result<u32, ImageError> {
    let Some(value) = value else { return Ok(0) };
    let bad = |reason| ImageError::SourceDateEpoch {
        value: value.to_owned(),
        reason,
    };
    let secs: u64 = value
        .trim()
        .parse()
        .map_err(|_| bad("not a non-negative integer"))?;
    u32::try_from(secs).map_err(|_| bad("newc cpio mtimes are 32-bit"))
}

/// Contents of `/etc/strake/release`: `KEY=value` lines, like os-release.
fn release_file(strake_sha256: &str, pkg: &kernel::KernelPackage, release: &str) -> String {
    format!(
        "STRAKE_VERSION={STRAKE_VERSION}\nSTRAKE_SHA256={strake_sha256}\nKERNEL_RELEASE={release}\n\
         KERNEL_PACKAGE={}\nKERNEL_PACKAGE_VERSION={}\n",
        pkg.name, pkg.version
    )
}
