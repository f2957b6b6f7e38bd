//! A guard on the `/init` binary: it must be a static x86-64 ELF executable. A dynamically linked
//! binary would boot to "Failed to execute /init (error -2)" because the initramfs has no loader.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const EM_X86_64: u16 = 62;
const PT_INTERP: u32 = 3;
const EHDR_LEN: usize = 64;
const MAX_PHNUM: u16 = 512;

/// Why a file cannot serve as `/init`.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// The file is not the kind of ELF the kernel will run as init on x86-64.
    #[error("{path} is not a usable /init: {reason}")]
    NotStaticExecutable { path: PathBuf, reason: String },
    /// Reading the file failed.
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(bytes)
}

/// Checks that `path` is a little-endian 64-bit x86-64 executable (`ET_EXEC` or static-pie `ET_DYN`)
/// without a `PT_INTERP` program header.
pub fn check_static_executable(path: &Path) -> Result<(), ElfError> {
    let io_err = |source| ElfError::Io {
        path: path.to_owned(),
        source,
    };
    let reject = |reason: String| ElfError::NotStaticExecutable {
        path: path.to_owned(),
        reason,
    };
    let mut file = fs::File::open(path).map_err(io_err)?;
    let mut ehdr = [0u8; EHDR_LEN];
    let mut filled = 0;
    while filled < EHDR_LEN {
        let n = file.read(&mut ehdr[filled..]).map_err(io_err)?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    if filled < EHDR_LEN || &ehdr[..4] != ELF_MAGIC {
        return Err(reject("no ELF header".to_owned()));
    }
    if ehdr[4] != ELFCLASS64 || ehdr[5] != ELFDATA2LSB {
        return Err(reject("not a little-endian 64-bit ELF".to_owned()));
    }
    let e_type = u16_at(&ehdr, 16);
    if e_type != ET_EXEC && e_type != ET_DYN {
        return Err(reject(format!("ELF type {e_type} is not an executable")));
    }
    let machine = u16_at(&ehdr, 18);
    if machine != EM_X86_64 {
        return Err(reject(format!("machine {machine} is not x86-64")));
    }
    let phoff = u64_at(&ehdr, 32);
    let phentsize = usize::from(u16_at(&ehdr, 54));
    let phnum = u16_at(&ehdr, 56);
    if phnum > MAX_PHNUM || (phnum > 0 && phentsize < 56) {
        return Err(reject(format!(
            "implausible program headers ({phnum} of {phentsize} bytes)"
        )));
    }
    let mut phdrs = vec![0u8; usize::from(phnum) * phentsize];
    file.seek(SeekFrom::Start(phoff)).map_err(io_err)?;
    file.read_exact(&mut phdrs)
        .map_err(|_| reject("truncated program headers".to_owned()))?;
    for ph in phdrs.chunks_exact(phentsize) {
        if u32_at(ph, 0) == PT_INTERP {
            let (offset, size) = (u64_at(ph, 8), u64_at(ph, 32).min(4096));
            let mut interp = vec![0u8; usize::try_from(size).unwrap_or(0)];
            let read = file
                .seek(SeekFrom::Start(offset))
                .and_then(|_| file.read_exact(&mut interp));
            let interp = match read {
                Ok(()) => String::from_utf8_lossy(&interp)
                    .trim_end_matches('\0')
                    .to_owned(),
                Err(_) => "<unreadable>".to_owned(),
            };
            return Err(reject(format!(
                "dynamically linked (interpreter {interp}); build with -C target-feature=+crt-static"
            )));
        }
    }
    Ok(())
}

/// Bytes of a minimal static x86-64 ELF header with no program headers, followed by `payload`.
/// Used by tests that need a file `check_static_executable` accepts.
#[cfg(test)]
pub(crate) fn fake_static_elf(payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; EHDR_LEN];
    b[..4].copy_from_slice(ELF_MAGIC);
    b[4] = ELFCLASS64;
    b[5] = ELFDATA2LSB;
    b[6] = 1; // EI_VERSION
    b[16..18].copy_from_slice(&ET_DYN.to_le_bytes());
    b[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
    b[32..40].copy_from_slice(&(EHDR_LEN as u64).to_le_bytes()); // e_phoff
    b[52..54].copy_from_slice(&(EHDR_LEN as u16).to_le_bytes()); // e_ehsize
    b[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    b.extend_from_slice(payload);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, bytes).expect("write");
        path
    }

    #[test]
    fn accepts_a_static_header() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(dir.path(), "ok", &fake_static_elf(b"payload"));
        check_static_executable(&path).expect("static ELF accepted");
    }

    #[test]
    fn rejects_non_elf_and_wrong_machine() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = write(dir.path(), "script", b"#!/bin/sh\necho hi\n");
        assert!(
            check_static_executable(&script)
                .expect_err("script")
                .to_string()
                .contains("no ELF")
        );
        let mut arm = fake_static_elf(b"");
        arm[18..20].copy_from_slice(&183u16.to_le_bytes());
        let arm = write(dir.path(), "arm", &arm);
        assert!(
            check_static_executable(&arm)
                .expect_err("arm64")
                .to_string()
                .contains("machine")
        );
    }

    #[test]
    fn rejects_an_interpreter() {
        let mut elf = fake_static_elf(b"");
        elf[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum = 1
        let interp = b"/lib64/ld-linux-x86-64.so.2\0";
        let interp_off = (EHDR_LEN + 56) as u64;
        let mut ph = vec![0u8; 56];
        ph[..4].copy_from_slice(&PT_INTERP.to_le_bytes());
        ph[8..16].copy_from_slice(&interp_off.to_le_bytes());
        ph[32..40].copy_from_slice(&(interp.len() as u64).to_le_bytes());
        elf.extend_from_slice(&ph);
        elf.extend_from_slice(interp);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(dir.path(), "dyn", &elf);
        let err = check_static_executable(&path)
            .expect_err("dynamic")
            .to_string();
        assert!(
            err.contains("dynamically linked (interpreter /lib64/ld-linux-x86-64.so.2)"),
            "{err}"
        );
    }
}
