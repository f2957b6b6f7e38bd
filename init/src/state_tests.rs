use std::path::Path;

use nix::mount::MsFlags;

use super::*;
use crate::fake::FakeKernel;

const MIB: u64 = 1 << 20;

fn part(name: &str, number: u32, label: Option<&str>) -> PartDev {
    PartDev {
        name: name.into(),
        number,
        label: label.map(Into::into),
        sectors: 2048 * 256,
    }
}

fn disk(name: &str, partitions: Vec<PartDev>) -> BlockDev {
    BlockDev {
        name: name.into(),
        sectors: 2048 * 512,
        partitions,
    }
}

fn decide(
    disks: &[BlockDev],
    wanted: Option<&str>,
    contents: Contents,
    blank: bool,
) -> Result<Plan, StateError> {
    plan(disks, wanted, &mut |_| Ok(contents), &mut |_| Ok(blank))
}

const EXT4: Contents = Contents::Ext4 {
    blocks: 32768,
    block_size: 4096,
};

#[test]
fn plans_follow_the_rules_for_what_is_ours() {
    // Nothing labelled, nothing named: tmpfs.
    let none = [disk("vda", vec![])];
    assert_eq!(decide(&none, None, EXT4, true).unwrap(), Plan::Ephemeral);
    // A labelled ext4 is used wherever it is.
    let labelled = [
        disk("vda", vec![part("vda1", 1, Some("EFI"))]),
        disk("vdb", vec![part("vdb1", 1, Some("STATE"))]),
    ];
    assert_eq!(
        decide(&labelled, None, EXT4, false).unwrap(),
        Plan::Use {
            partition: "vdb1".into(),
            sectors: 2048 * 256,
            contents: EXT4
        }
    );
    // An empty labelled partition is formatted only on the named disk.
    let err = decide(&labelled, None, Contents::Empty, false).unwrap_err();
    assert!(err.to_string().contains("strake.disk="), "{err}");
    assert!(matches!(
        decide(&labelled, Some("vdb"), Contents::Empty, false).unwrap(),
        Plan::Use {
            contents: Contents::Empty,
            ..
        }
    ));
    // Something else in it is never touched.
    let err = decide(&labelled, Some("vdb"), Contents::Other, false).unwrap_err();
    assert!(err.to_string().contains("not ext4"), "{err}");
    // Two STATE partitions: which one is meant is not guessed.
    let two = [
        disk("vda", vec![part("vda2", 2, Some("STATE"))]),
        disk("vdb", vec![part("vdb1", 1, Some("STATE"))]),
    ];
    let err = decide(&two, None, EXT4, false).unwrap_err();
    assert!(err.to_string().contains("/dev/vda2, /dev/vdb1"), "{err}");
    // ... unless the disk is named.
    assert!(matches!(
        decide(&two, Some("vdb"), EXT4, false).unwrap(),
        Plan::Use { partition, .. } if partition == "vdb1"
    ));
    // A named blank disk is laid out; a named disk with anything on it is refused.
    assert_eq!(
        decide(&none, Some("vda"), EXT4, true).unwrap(),
        Plan::Install {
            disk: "vda".into(),
            sectors: 2048 * 512
        }
    );
    let err = decide(&none, Some("vda"), EXT4, false).unwrap_err();
    assert!(err.to_string().contains("not blank"), "{err}");
    let foreign = [disk("vda", vec![part("vda1", 1, Some("root"))])];
    let err = decide(&foreign, Some("vda"), EXT4, true).unwrap_err();
    assert!(
        err.to_string().contains("vda1") && err.to_string().contains("none is labelled STATE"),
        "{err}"
    );
    // A named disk that is not there.
    assert!(matches!(
        decide(&none, Some("sda"), EXT4, true),
        Err(StateError::NoDisk { .. })
    ));
}

#[test]
fn superblocks_are_read_for_their_size() {
    let mut head = vec![0u8; 4096];
    assert_eq!(contents(&head), Contents::Empty);
    head[0x438] = 0x53;
    head[0x439] = 0xEF;
    head[1024 + 4..1024 + 8].copy_from_slice(&1000u32.to_le_bytes());
    head[1024 + 0x18] = 2; // 4096-byte blocks
    assert_eq!(
        contents(&head),
        Contents::Ext4 {
            blocks: 1000,
            block_size: 4096
        }
    );
    // 64bit: the high half counts.
    head[1024 + 0x60] = 0x80;
    head[1024 + 0x150] = 1;
    assert_eq!(
        contents(&head),
        Contents::Ext4 {
            blocks: (1 << 32) + 1000,
            block_size: 4096
        }
    );
    head[0x438] = 0;
    assert_eq!(contents(&head), Contents::Other);
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// A root with a 512 MiB blank `vda` in sysfs and /dev, and a template: an "ext4" of 32 MiB
/// whose superblock says 8192 blocks.
pub(crate) fn machine() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(&root.join("sys/class/block/vda/size"), b"1048576\n");
    write(&root.join("sys/class/block/vda/uevent"), b"DEVNAME=vda\n");
    write(&root.join("sys/class/block/loop0/size"), b"100\n");
    let f = std::fs::File::create(root.join("dev/vda")).unwrap_or_else(|_| {
        std::fs::create_dir_all(root.join("dev")).unwrap();
        std::fs::File::create(root.join("dev/vda")).unwrap()
    });
    f.set_len(512 * MIB).unwrap();
    let mut image = vec![0u8; (32 * MIB) as usize];
    image[0x438] = 0x53;
    image[0x439] = 0xEF;
    image[1024 + 4..1024 + 8].copy_from_slice(&8192u32.to_le_bytes());
    image[1024 + 0x18] = 2;
    image[5 * 4096] = 7;
    write(
        &root.join(TEMPLATE.trim_start_matches('/')),
        &strake_disk::sparse::encode(&image, 4096),
    );
    dir
}

pub(crate) fn kernel_shows_partition(fake: &FakeKernel, root: &Path, sectors: u64) {
    kernel_shows(fake, root, &[("STATE", sectors)]);
}

/// `prepare` without a boot medium, the fake as mounter and block device.
fn prepare_on(root: &Path, wanted: Option<&str>, fake: &FakeKernel) -> Result<Status, StateError> {
    prepare(root, wanted, None, &mut fake.clone(), &mut fake.clone())
}

/// The kernel adds `vda1`, `vda2`... with these GPT names and sizes when the table is reread.
fn kernel_shows(fake: &FakeKernel, root: &Path, parts: &[(&str, u64)]) {
    let mut files = Vec::new();
    for (i, (label, sectors)) in parts.iter().enumerate() {
        let name = format!("vda{}", i + 1);
        let sys = root.join("sys/class/block/vda").join(&name);
        files.extend([
            (sys.join("partition"), format!("{}\n", i + 1).into_bytes()),
            (sys.join("size"), format!("{sectors}\n").into_bytes()),
            (
                sys.join("uevent"),
                format!("DEVNAME={name}\nPARTNAME={label}\n").into_bytes(),
            ),
            (root.join("dev").join(&name), Vec::new()),
        ]);
    }
    fake.state().reread_creates = files;
}

/// A FAT16 volume of 17 MiB as the ISO carries the ESP: 4 KiB clusters, FATs sized for 240 MiB.
fn iso_esp() -> Vec<u8> {
    let total: u32 = 17 * 2048;
    let mut img = vec![0u8; total as usize * 512];
    img[11..13].copy_from_slice(&512u16.to_le_bytes());
    img[13] = 8;
    img[14..16].copy_from_slice(&1u16.to_le_bytes());
    img[16] = 2;
    img[17..19].copy_from_slice(&512u16.to_le_bytes());
    img[22..24].copy_from_slice(&240u16.to_le_bytes());
    img[32..36].copy_from_slice(&total.to_le_bytes());
    img[510..512].copy_from_slice(&[0x55, 0xAA]);
    img[512..516].copy_from_slice(&[0xF8, 0xFF, 0xFF, 0xFF]);
    img[(total as usize - 1) * 512] = 9;
    img
}

#[test]
fn a_disk_installed_from_the_boot_medium_gets_the_esp_and_state() {
    let dir = machine();
    let root = dir.path();
    let esp_image = iso_esp();
    write(
        &host_path(root, crate::media::MOUNT_AT).join(strake_disk::ISO_ESP),
        &esp_image,
    );
    let esp_sectors = strake_disk::fat::ESP_BYTES / 512;
    let state_sectors = 1048576 - 34 - (2048 + esp_sectors) + 1;
    let fake = FakeKernel::default();
    kernel_shows(
        &fake,
        root,
        &[("ESP", esp_sectors), ("STATE", state_sectors)],
    );
    let status = prepare(
        root,
        Some("vda"),
        Some("sr0"),
        &mut fake.clone(),
        &mut fake.clone(),
    )
    .unwrap();
    assert_eq!(status.esp.as_deref(), Some("/dev/vda1"));
    assert_eq!(status.device.as_deref(), Some("/dev/vda2"));
    assert!(status.partitioned && status.formatted, "{status:?}");
    let vda = std::fs::read(root.join("dev/vda")).unwrap();
    let mut read = |off: u64, len: usize| Ok(vda[off as usize..off as usize + len].to_vec());
    let table = strake_disk::gpt::read(1048576, &mut read)
        .unwrap()
        .unwrap()
        .unwrap();
    let esp = table.partition("ESP").unwrap();
    assert_eq!(esp.type_guid, gpt::EFI_SYSTEM);
    assert_eq!(esp.last_lba - esp.first_lba + 1, esp_sectors);
    assert_eq!(
        table.partition("STATE").unwrap().first_lba,
        esp.last_lba + 1
    );
    // The image went onto the ESP whole, its size now the partition's.
    let vda1 = std::fs::read(root.join("dev/vda1")).unwrap();
    assert_eq!(vda1.len(), esp_image.len());
    assert_eq!(vda1[32..36], (esp_sectors as u32).to_le_bytes());
    assert_eq!(vda1[36..], esp_image[36..]);
    assert_eq!(vda1[..32], esp_image[..32]);
    let st = fake.state();
    let medium = st
        .mounts
        .iter()
        .find(|m| m.source == "/dev/sr0")
        .expect("the medium was mounted");
    assert_eq!(
        (medium.target.as_str(), medium.fstype.as_str()),
        (crate::media::MOUNT_AT, "iso9660")
    );
    assert!(medium.flags.contains(MsFlags::MS_RDONLY));
}

#[test]
fn a_blank_named_disk_is_partitioned_formatted_grown_and_mounted_then_reused() {
    let dir = machine();
    let root = dir.path();
    let fake = FakeKernel::default();
    let sectors = 1048576 - 2048 - 33 - 1;
    kernel_shows_partition(&fake, root, sectors);
    let status = prepare_on(root, Some("vda"), &fake).unwrap();
    assert_eq!(
        status,
        Status {
            device: Some("/dev/vda1".into()),
            bytes: sectors * 512,
            partitioned: true,
            formatted: true,
            grown_from_blocks: Some(8192),
            wiped: false,
            esp: None,
        }
    );
    // The disk now carries a GPT with STATE filling it.
    let vda = std::fs::read(root.join("dev/vda")).unwrap();
    let mut read = |off: u64, len: usize| Ok(vda[off as usize..off as usize + len].to_vec());
    let table = strake_disk::gpt::read(1048576, &mut read)
        .unwrap()
        .unwrap()
        .unwrap();
    let state = table.partition("STATE").unwrap();
    assert_eq!((state.first_lba, state.last_lba), (2048, 1048576 - 34));
    // The template went onto the partition, zeroed first.
    let vda1 = std::fs::read(root.join("dev/vda1")).unwrap();
    assert_eq!(vda1.len() as u64, 32 * MIB);
    assert_eq!((vda1[0x438], vda1[5 * 4096]), (0x53, 7));
    {
        let st = fake.state();
        assert_eq!(st.grows, [sectors * 512 / 4096]);
        let mounts: Vec<(&str, &str, &str, MsFlags)> = st
            .mounts
            .iter()
            .map(|m| {
                (
                    m.source.as_str(),
                    m.target.as_str(),
                    m.fstype.as_str(),
                    m.flags,
                )
            })
            .collect();
        assert_eq!(
            mounts,
            [
                (
                    "/dev/vda1",
                    MOUNT_POINT,
                    "ext4",
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV
                ),
                (LOG_DIR, "/var/log", "none", MsFlags::MS_BIND),
            ]
        );
        assert_eq!(
            st.calls.iter().filter(|c| c.starts_with("zero ")).count(),
            1
        );
    }
    publish(root, &status).unwrap();
    let json = std::fs::read_to_string(root.join("run/strake/state.json")).unwrap();
    assert!(json.contains("\"formatted\": true"), "{json}");

    // The next boot finds it by its label and formats nothing, even when the disk is not named.
    let again = FakeKernel::default();
    let status = prepare_on(root, None, &again).unwrap();
    assert!(!status.formatted && !status.partitioned, "{status:?}");
    assert_eq!(status.device.as_deref(), Some("/dev/vda1"));
    assert!(
        !again.state().calls.iter().any(|c| c.starts_with("zero ")),
        "{:?}",
        again.state().calls
    );

    // A reset: the next boot empties STATE (the fake does not mount: the files sit where the
    // mount would show them) and keeps lost+found.
    let mounted = root.join(MOUNT_POINT.trim_start_matches('/'));
    for dir in ["store/raft", "pki", "lost+found", "config"] {
        std::fs::create_dir_all(mounted.join(dir)).unwrap();
    }
    std::fs::write(mounted.join("config/applied.yaml"), "x").unwrap();
    std::fs::write(root.join(RESET_MARKER.trim_start_matches('/')), "").unwrap();
    let reset = FakeKernel::default();
    let status = prepare_on(root, None, &reset).unwrap();
    assert!(status.wiped && !status.formatted, "{status:?}");
    let left: Vec<String> = std::fs::read_dir(&mounted)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "log")
        .collect();
    assert_eq!(left, ["lost+found"]);
    let status = prepare_on(root, None, &reset).unwrap();
    assert!(!status.wiped, "the marker went with the wipe");
}

#[test]
fn a_disk_with_foreign_data_is_refused_and_left_as_it_was() {
    let dir = machine();
    let root = dir.path();
    let junk = b"some filesystem that is not ours";
    {
        use std::os::unix::fs::FileExt as _;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(root.join("dev/vda"))
            .unwrap();
        f.write_all_at(junk, 300 * MIB).unwrap();
        f.write_all_at(junk, 4096).unwrap();
    }
    let before = std::fs::read(root.join("dev/vda")).unwrap();
    let fake = FakeKernel::default();
    let err = prepare_on(root, Some("vda"), &fake).unwrap_err();
    assert!(
        err.to_string().contains("/dev/vda: it is not blank"),
        "{err}"
    );
    assert_eq!(std::fs::read(root.join("dev/vda")).unwrap(), before);
    assert!(fake.state().mounts.is_empty());

    // Without strake.disk= and without a STATE partition the node runs on tmpfs.
    let status = prepare_on(root, None, &fake).unwrap();
    assert_eq!(status.device, None);
    assert!(fake.state().mounts.is_empty());
}

#[test]
fn a_partition_too_small_for_the_template_is_refused() {
    let dir = machine();
    let root = dir.path();
    write(&root.join("sys/class/block/vda/vda1/partition"), b"1\n");
    write(&root.join("sys/class/block/vda/vda1/size"), b"2048\n");
    write(
        &root.join("sys/class/block/vda/vda1/uevent"),
        b"PARTNAME=STATE\n",
    );
    write(&root.join("dev/vda1"), &[]);
    let fake = FakeKernel::default();
    let err = prepare_on(root, Some("vda"), &fake).unwrap_err();
    assert!(err.to_string().contains("needs at least 32 MiB"), "{err}");
}

#[test]
fn a_selector_picks_the_disk_by_what_sysfs_says_about_it() {
    let dir = machine();
    let root = dir.path();
    write(&root.join("sys/class/block/vdb/size"), b"41943040\n"); // 20 GiB
    write(&root.join("sys/class/block/vdb/serial"), b"strake-state\n");
    write(&root.join("sys/class/block/sda/size"), b"41943040\n");
    write(
        &root.join("sys/class/block/sda/device/model"),
        b"QEMU HARDDISK   \n",
    );
    let by_serial = strake_machineconfig::DiskSelector {
        serial: Some("strake-state".into()),
        ..Default::default()
    };
    assert_eq!(select_disk(root, &by_serial).unwrap(), "vdb");
    let by_model = strake_machineconfig::DiskSelector {
        model: Some("QEMU*".into()),
        size: Some(strake_machineconfig::Parsed::new(">= 10GB")),
        ..Default::default()
    };
    assert_eq!(select_disk(root, &by_model).unwrap(), "sda");
}
