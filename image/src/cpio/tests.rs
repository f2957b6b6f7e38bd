use super::test_reader::{Entry, parse};
use super::*;

fn archive(build: impl FnOnce(&mut CpioWriter<Vec<u8>>) -> Result<(), CpioError>) -> Vec<u8> {
    let mut w = CpioWriter::new(Vec::new(), 1_700_000_000);
    build(&mut w).expect("building archive");
    w.finish().expect("finishing archive")
}

fn find<'a>(entries: &'a [Entry], name: &str) -> &'a Entry {
    entries
        .iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("no entry {name}"))
}

#[test]
fn empty_archive_is_just_the_trailer() {
    let bytes = archive(|_| Ok(()));
    assert!(parse(&bytes).expect("parse").is_empty());
    assert_eq!(&bytes[..6], NEWC_MAGIC);
    // 110-byte header + "TRAILER!!!\0" (11) = 121, padded to 124.
    assert_eq!(bytes.len(), 124);
    assert_eq!(&bytes[HEADER_LEN..HEADER_LEN + 11], b"TRAILER!!!\0");
    // Trailer fields: ino 0, mode 0, nlink 1, namesize 11.
    let header = std::str::from_utf8(&bytes[..HEADER_LEN]).expect("ascii");
    assert_eq!(&header[6..14], "00000000", "trailer ino");
    assert_eq!(&header[38..46], "00000001", "trailer nlink");
    assert_eq!(&header[94..102], "0000000B", "trailer namesize");
}

#[test]
fn header_fields_round_trip() {
    let bytes = archive(|w| {
        w.add_dir("/etc", 0o755)?;
        w.add_file("etc/hostname", 0o644, b"strake\n")?;
        w.add_symlink("etc/link", "hostname")?;
        w.add_char_device("/dev/console", 0o600, 5, 1)
    });
    let entries = parse(&bytes).expect("parse");
    let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["etc", "etc/hostname", "etc/link", "dev/console"]);

    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.ino as usize, i + 1, "inodes are assigned in order");
        assert_eq!((e.uid, e.gid), (0, 0));
        assert_eq!(e.mtime, 1_700_000_000);
        assert_eq!((e.dev_major, e.dev_minor, e.check), (0, 0, 0));
        assert_eq!(e.offset % 4, 0);
    }
    let dir = find(&entries, "etc");
    assert_eq!(
        (dir.mode, dir.nlink, dir.data.len()),
        (S_IFDIR | 0o755, 2, 0)
    );
    let file = find(&entries, "etc/hostname");
    assert_eq!((file.mode, file.nlink), (S_IFREG | 0o644, 1));
    assert_eq!(file.data, b"strake\n");
    let link = find(&entries, "etc/link");
    assert_eq!(link.mode, S_IFLNK | 0o777);
    assert_eq!(link.data, b"hostname");
    let console = find(&entries, "dev/console");
    assert_eq!(console.mode, S_IFCHR | 0o600);
    assert_eq!((console.rdev_major, console.rdev_minor), (5, 1));
    assert!(console.data.is_empty());
}

#[test]
fn names_and_data_of_every_length_stay_aligned() {
    // Exercise every residue of name length and data length modulo 4.
    let bytes = archive(|w| {
        for name_len in 1..=8 {
            for data_len in 0..=8 {
                let name = format!("{}{}", "n".repeat(name_len), data_len);
                w.add_file(&name, 0o600, &vec![0xAB; data_len])?;
            }
        }
        Ok(())
    });
    assert_eq!(bytes.len() % 4, 0);
    let entries = parse(&bytes).expect("parse checks alignment and zero padding");
    assert_eq!(entries.len(), 8 * 9);
    for e in &entries {
        let data_len: usize = e.name[e.name.len() - 1..].parse().expect("digit");
        assert_eq!(e.data, vec![0xAB; data_len]);
    }
}

#[test]
fn hard_links_share_an_inode_and_store_data_once() {
    let bytes = archive(|w| {
        w.add_dir("bin", 0o755)?;
        w.add_hard_linked_file(&["bin/strake", "init"], 0o755, b"\x7fELF binary")?;
        w.add_file("after", 0o644, b"x")
    });
    let entries = parse(&bytes).expect("parse");
    let first = find(&entries, "bin/strake");
    let last = find(&entries, "init");
    assert_eq!(first.ino, last.ino);
    assert_eq!((first.nlink, last.nlink), (2, 2));
    assert!(first.data.is_empty(), "earlier names carry no data");
    assert_eq!(last.data, b"\x7fELF binary");
    assert_eq!(last.mode, S_IFREG | 0o755);
    assert_eq!(
        find(&entries, "after").ino,
        first.ino + 1,
        "one inode for the whole group"
    );
}

#[test]
fn streaming_add_checks_the_announced_length() {
    let mut w = CpioWriter::new(Vec::new(), 0);
    let err = w
        .add_file_from("f", 0o644, 10, &mut &b"short"[..])
        .expect_err("short read");
    assert!(
        matches!(
            err,
            CpioError::ShortRead {
                expected: 10,
                actual: 5,
                ..
            }
        ),
        "{err}"
    );

    let mut w = CpioWriter::new(Vec::new(), 0);
    // A longer reader is cut at the announced length.
    w.add_file_from("f", 0o644, 3, &mut &b"abcdef"[..])
        .expect("add");
    let entries = parse(&w.finish().expect("finish")).expect("parse");
    assert_eq!(entries[0].data, b"abc");
}

#[test]
fn bad_names_and_modes_are_refused() {
    let mut w = CpioWriter::new(Vec::new(), 0);
    for bad in ["", "/", "a//b", "a/../b", "./a", "a/", "a\0b", "TRAILER!!!"] {
        let err = w.add_file(bad, 0o644, b"").expect_err(bad);
        assert!(
            matches!(err, CpioError::InvalidName { .. }),
            "{bad:?}: {err}"
        );
    }
    let err = w.add_dir("d", 0o040_755).expect_err("type bits in mode");
    assert!(matches!(err, CpioError::InvalidMode { .. }), "{err}");
    let err = w
        .add_hard_linked_file(&[], 0o644, b"")
        .expect_err("empty group");
    assert!(matches!(err, CpioError::EmptyLinkGroup), "{err}");
    // Nothing was written by the refused calls.
    assert_eq!(w.bytes_written(), 0);
}

#[test]
fn same_calls_give_identical_bytes() {
    let make = || {
        archive(|w| {
            w.add_dir("a", 0o755)?;
            w.add_file("a/b", 0o644, b"hello")?;
            w.add_char_device("null", 0o666, 1, 3)
        })
    };
    assert_eq!(make(), make());
}
