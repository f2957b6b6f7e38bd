//! The check an upgrade image passes before anything is written: a whole PE file with the
//! sections of a unified kernel image.

/// Refuses anything that is not a complete UKI: a PE/COFF file whose `.linux`, `.initrd` and
/// `.osrel` sections are present, non-empty and inside the file (a truncated download fails
/// here).
pub fn check_uki(bytes: &[u8]) -> Result<(), String> {
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if bytes.get(..2) != Some(b"MZ".as_slice()) {
        return Err(
            "not a PE file (no MZ header): an upgrade is a UKI such as build/image/strake.efi"
                .into(),
        );
    }
    let pe = u32_at(0x3c).ok_or("the PE header is cut short")? as usize;
    if bytes.get(pe..pe + 4) != Some(b"PE\0\0".as_slice()) {
        return Err("not a PE file (no PE signature)".into());
    }
    let sections = usize::from(u16_at(pe + 6).ok_or("the COFF header is cut short")?);
    let optional = usize::from(u16_at(pe + 20).ok_or("the COFF header is cut short")?);
    let table = pe + 24 + optional;
    let mut found = Vec::new();
    for i in 0..sections {
        let h = table + i * 40;
        let name = bytes
            .get(h..h + 8)
            .ok_or("the section table is cut short")?;
        let name = String::from_utf8_lossy(name)
            .trim_end_matches('\0')
            .to_owned();
        let size = u32_at(h + 16).ok_or("the section table is cut short")? as usize;
        let at = u32_at(h + 20).ok_or("the section table is cut short")? as usize;
        if at.checked_add(size).is_none_or(|end| end > bytes.len()) {
            return Err(format!(
                "section {name} runs past the end of the file ({} bytes): the image is truncated",
                bytes.len()
            ));
        }
        found.push((name, size));
    }
    for want in [".linux", ".initrd", ".osrel"] {
        match found.iter().find(|(n, _)| n == want) {
            Some((_, 0)) => return Err(format!("the {want} section is empty")),
            Some(_) => {}
            None => {
                return Err(format!(
                    "no {want} section: this PE file is not a unified kernel image"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal PE with the given sections (name, contents).
    pub(crate) fn pe(sections: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = vec![0u8; 0x200];
        b[..2].copy_from_slice(b"MZ");
        b[0x3c] = 0x80;
        b[0x80..0x84].copy_from_slice(b"PE\0\0");
        b[0x86..0x88].copy_from_slice(&(sections.len() as u16).to_le_bytes());
        b[0x94..0x96].copy_from_slice(&0xf0u16.to_le_bytes());
        let table = 0x80 + 24 + 0xf0;
        let mut data_at = 0x400;
        b.resize(data_at, 0);
        for (i, (name, data)) in sections.iter().enumerate() {
            let h = table + i * 40;
            b[h..h + name.len()].copy_from_slice(name.as_bytes());
            b[h + 16..h + 20].copy_from_slice(&(data.len() as u32).to_le_bytes());
            b[h + 20..h + 24].copy_from_slice(&(data_at as u32).to_le_bytes());
            b.extend_from_slice(data);
            data_at += data.len();
        }
        b
    }

    #[test]
    fn a_whole_uki_passes_and_every_kind_of_broken_one_is_named() {
        let good = pe(&[
            (".osrel", b"ID=strake"),
            (".linux", b"kernel"),
            (".initrd", b"cpio"),
        ]);
        assert_eq!(check_uki(&good), Ok(()));
        let truncated = &good[..good.len() - 2];
        assert!(check_uki(truncated).unwrap_err().contains("truncated"));
        let no_initrd = pe(&[(".osrel", b"x"), (".linux", b"kernel")]);
        assert!(
            check_uki(&no_initrd)
                .unwrap_err()
                .contains("no .initrd section")
        );
        let empty = pe(&[(".osrel", b"x"), (".linux", b""), (".initrd", b"c")]);
        assert!(
            check_uki(&empty)
                .unwrap_err()
                .contains(".linux section is empty")
        );
        assert!(
            check_uki(b"#!/bin/sh\n")
                .unwrap_err()
                .contains("not a PE file")
        );
        assert!(check_uki(&[]).is_err());
        assert!(check_uki(&good[..0x90]).is_err());
    }
}
