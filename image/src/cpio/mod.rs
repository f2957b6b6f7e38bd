//! A streaming writer for the "new ASCII" (`newc`, magic `070701`) cpio format, the only archive format
//! the Linux kernel unpacks as an initramfs.
//!
//! Every entry gets uid/gid 0, the writer's fixed mtime, and the next inode number, so the archive is
//! a pure function of the calls made on the writer. Callers that want a canonical archive add entries in
//! a canonical order (see `crate::initramfs`, which sorts by path).
//!
//! Layout of one entry: a 110-byte ASCII header, the NUL-terminated name, zero padding to a 4-byte
//! boundary, the data, zero padding to a 4-byte boundary. The archive ends with an entry named
//! `TRAILER!!!`.

#[cfg(test)]
pub(crate) mod test_reader;
#[cfg(test)]
mod tests;

use std::io::{self, Read, Write};

/// Magic string that opens every newc header (no CRC variant).
pub const NEWC_MAGIC: &[u8; 6] = b"070701";
/// Length of a newc header: magic plus thirteen 8-digit hex fields.
pub const HEADER_LEN: usize = 110;
/// Name of the entry that ends an archive.
pub const TRAILER_NAME: &str = "TRAILER!!!";

/// File type bits (`S_IFMT` family) as stored in the `c_mode` field.
pub const S_IFDIR: u32 = 0o040_000;
/// Regular file type bits.
pub const S_IFREG: u32 = 0o100_000;
/// Symbolic link type bits.
pub const S_IFLNK: u32 = 0o120_000;
/// Character device type bits.
pub const S_IFCHR: u32 = 0o020_000;
/// Permission bits a caller may pass (including setuid, setgid and sticky).
pub const PERMISSION_MASK: u32 = 0o7777;

/// Errors from writing a cpio archive.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// The entry name is empty, absolute after normalisation, or contains a NUL, `.` or `..` component.
    #[error("invalid cpio entry name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// Mode carried bits outside the permission mask.
    #[error(
        "mode {mode:#o} for {name:?} has bits outside the permission mask {PERMISSION_MASK:#o}"
    )]
    InvalidMode { name: String, mode: u32 },
    /// newc stores sizes in 32 bits.
    #[error(
        "{name:?} is {size} bytes; newc entries are limited to {} bytes",
        u32::MAX
    )]
    TooLarge { name: String, size: u64 },
    /// A reader supplied fewer bytes than announced.
    #[error("{name:?}: announced {expected} bytes but the reader ended after {actual}")]
    ShortRead {
        name: String,
        expected: u64,
        actual: u64,
    },
    /// A hard-link group needs at least one name.
    #[error("a hard-linked file needs at least one name")]
    EmptyLinkGroup,
    /// The underlying writer failed.
    #[error("writing cpio archive: {0}")]
    Io(#[from] io::Error),
}

/// Header fields of one entry, before encoding.
struct Header<'a> {
    name: &'a str,
    ino: u32,
    mode: u32,
    nlink: u32,
    filesize: u32,
    rdev_major: u32,
    rdev_minor: u32,
}

/// Streaming newc writer. Inode numbers start at 1 and increase by one per inode.
pub struct CpioWriter<W: Write> {
    out: W,
    mtime: u32,
    next_ino: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    /// A writer whose entries all carry `mtime` (seconds since the epoch).
    pub fn new(out: W, mtime: u32) -> Self {
        Self {
            out,
            mtime,
            next_ino: 1,
            written: 0,
        }
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Adds a directory. `mode` holds permission bits only.
    pub fn add_dir(&mut self, name: &str, mode: u32) -> Result<(), CpioError> {
        let name = normalize_name(name)?;
        check_mode(name, mode)?;
        let ino = self.take_ino();
        self.write_header(&Header {
            name,
            ino,
            mode: S_IFDIR | mode,
            nlink: 2,
            filesize: 0,
            rdev_major: 0,
            rdev_minor: 0,
        })
    }

    /// Adds a regular file whose contents are `data`.
    pub fn add_file(&mut self, name: &str, mode: u32, data: &[u8]) -> Result<(), CpioError> {
        self.add_file_from(name, mode, data.len() as u64, &mut &data[..])
    }

    /// Adds a regular file of exactly `len` bytes read from `data`.
    pub fn add_file_from(
        &mut self,
        name: &str,
        mode: u32,
        len: u64,
        data: &mut dyn Read,
    ) -> Result<(), CpioError> {
        self.add_hard_linked_file_from(&[name], mode, len, data)
    }

    /// Adds one regular file under several names that share an inode (hard links).
    ///
    /// All names get the same inode number and `nlink = names.len()`. Following GNU cpio, the data is
    /// stored once, with the last name; the earlier names carry size 0. The kernel's initramfs unpacker
    /// creates the file at the first name and links the later ones to it.
    pub fn add_hard_linked_file(
        &mut self,
        names: &[&str],
        mode: u32,
        data: &[u8],
    ) -> Result<(), CpioError> {
        self.add_hard_linked_file_from(names, mode, data.len() as u64, &mut &data[..])
    }

    /// Streaming form of [`Self::add_hard_linked_file`].
    pub fn add_hard_linked_file_from(
        &mut self,
        names: &[&str],
        mode: u32,
        len: u64,
        data: &mut dyn Read,
    ) -> Result<(), CpioError> {
        let Some((last, earlier)) = names.split_last() else {
            return Err(CpioError::EmptyLinkGroup);
        };
        let last = normalize_name(last)?;
        check_mode(last, mode)?;
        let filesize = u32::try_from(len).map_err(|_| CpioError::TooLarge {
            name: last.to_owned(),
            size: len,
        })?;
        let nlink = u32::try_from(names.len()).map_err(|_| CpioError::InvalidName {
            name: last.to_owned(),
            reason: "too many hard links",
        })?;
        let earlier = earlier
            .iter()
            .map(|n| normalize_name(n))
            .collect::<Result<Vec<_>, _>>()?;
        let ino = self.take_ino();
        for name in earlier {
            self.write_header(&Header {
                name,
                ino,
                mode: S_IFREG | mode,
                nlink,
                filesize: 0,
                rdev_major: 0,
                rdev_minor: 0,
            })?;
        }
        self.write_header(&Header {
            name: last,
            ino,
            mode: S_IFREG | mode,
            nlink,
            filesize,
            rdev_major: 0,
            rdev_minor: 0,
        })?;
        let copied = io::copy(&mut data.take(len), &mut self.out)?;
        if copied != len {
            return Err(CpioError::ShortRead {
                name: last.to_owned(),
                expected: len,
                actual: copied,
            });
        }
        self.written += copied;
        self.pad()
    }

    /// Adds a symbolic link at `name` pointing to `target` (stored as the entry's data).
    pub fn add_symlink(&mut self, name: &str, target: &str) -> Result<(), CpioError> {
        let name = normalize_name(name)?;
        if target.is_empty() || target.contains('\0') {
            return Err(CpioError::InvalidName {
                name: target.to_owned(),
                reason: "symlink target is empty or contains NUL",
            });
        }
        let filesize = u32::try_from(target.len()).map_err(|_| CpioError::TooLarge {
            name: name.to_owned(),
            size: target.len() as u64,
        })?;
        let ino = self.take_ino();
        self.write_header(&Header {
            name,
            ino,
            mode: S_IFLNK | 0o777,
            nlink: 1,
            filesize,
            rdev_major: 0,
            rdev_minor: 0,
        })?;
        self.write_raw(target.as_bytes())?;
        self.pad()
    }

    /// Adds a character device node `major:minor`. `mode` holds permission bits only.
    pub fn add_char_device(
        &mut self,
        name: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        let name = normalize_name(name)?;
        check_mode(name, mode)?;
        let ino = self.take_ino();
        self.write_header(&Header {
            name,
            ino,
            mode: S_IFCHR | mode,
            nlink: 1,
            filesize: 0,
            rdev_major: major,
            rdev_minor: minor,
        })
    }

    /// Writes the trailer entry and returns the underlying writer (flushed).
    pub fn finish(mut self) -> Result<W, CpioError> {
        self.write_header(&Header {
            name: TRAILER_NAME,
            ino: 0,
            mode: 0,
            nlink: 1,
            filesize: 0,
            rdev_major: 0,
            rdev_minor: 0,
        })?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn take_ino(&mut self) -> u32 {
        let ino = self.next_ino;
        self.next_ino += 1;
        ino
    }

    fn write_header(&mut self, h: &Header<'_>) -> Result<(), CpioError> {
        let namesize = h.name.len() + 1;
        let namesize = u32::try_from(namesize).map_err(|_| CpioError::InvalidName {
            name: h.name.to_owned(),
            reason: "name too long",
        })?;
        let mut header = Vec::with_capacity(HEADER_LEN + h.name.len() + 4);
        header.extend_from_slice(NEWC_MAGIC);
        // c_ino, c_mode, c_uid, c_gid, c_nlink, c_mtime, c_filesize, c_devmajor, c_devminor,
        // c_rdevmajor, c_rdevminor, c_namesize, c_check
        let fields = [
            h.ino,
            h.mode,
            0,
            0,
            h.nlink,
            self.mtime,
            h.filesize,
            0,
            0,
            h.rdev_major,
            h.rdev_minor,
            namesize,
            0,
        ];
        for field in fields {
            header.extend_from_slice(format!("{field:08X}").as_bytes());
        }
        debug_assert_eq!(header.len(), HEADER_LEN);
        header.extend_from_slice(h.name.as_bytes());
        header.push(0);
        self.write_raw(&header)?;
        self.pad()
    }

    fn write_raw(&mut self, bytes: &[u8]) -> Result<(), CpioError> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Pads the archive with zeros to the next 4-byte boundary.
    fn pad(&mut self) -> Result<(), CpioError> {
        let rem = (self.written % 4) as usize;
        if rem != 0 {
            self.write_raw(&[0u8; 3][..4 - rem])?;
        }
        Ok(())
    }
}

/// Strips one leading `/` and rejects names the kernel would misplace or refuse.
pub(crate) fn normalize_name(name: &str) -> Result<&str, CpioError> {
    let invalid = |reason| CpioError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    let stripped = name.strip_prefix('/').unwrap_or(name);
    if stripped.is_empty() {
        return Err(invalid("empty name"));
    }
    if stripped.contains('\0') {
        return Err(invalid("contains NUL"));
    }
    if stripped == TRAILER_NAME {
        return Err(invalid("reserved for the archive trailer"));
    }
    for component in stripped.split('/') {
        match component {
            "" => return Err(invalid("empty path component")),
            "." | ".." => return Err(invalid("`.` or `..` component")),
            _ => {}
        }
    }
    Ok(stripped)
}

fn check_mode(name: &str, mode: u32) -> Result<(), CpioError> {
    if mode & !PERMISSION_MASK != 0 {
        return Err(CpioError::InvalidMode {
            name: name.to_owned(),
            mode,
        });
    }
    Ok(())
}
