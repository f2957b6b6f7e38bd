use super::*;

/// A fake kernel: a chain virtio_net → net_failover → failover, shared virtio core, a hyphenated
/// file name, and a compressed module.
const DEP: &str = "\
# generated for a test
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko

kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/md/dm-verity.ko.zst: kernel/drivers/md/dm-mod.ko.zst
kernel/drivers/md/dm-mod.ko.zst:
kernel/fs/overlayfs/overlay.ko:
";

const BUILTIN: &str = "kernel/fs/ext4/ext4.ko\nkernel/drivers/virtio/virtio_mmio.ko\n";

fn name(s: &str) -> ModuleName {
    ModuleName::new(s).expect("valid name")
}

fn paths(entries: &[&ModuleEntry]) -> Vec<String> {
    entries.iter().map(|e| e.path.clone()).collect()
}

#[test]
fn names_are_canonicalised() {
    assert_eq!(name("dm-verity"), name("dm_verity"));
    assert_eq!(
        ModuleName::from_path("kernel/drivers/char/hw_random/virtio-rng.ko"),
        Some(name("virtio_rng"))
    );
    assert_eq!(
        ModuleName::from_path("kernel/drivers/md/dm-mod.ko.zst"),
        Some(name("dm_mod"))
    );
    assert_eq!(ModuleName::from_path("kernel/README"), None);
    for bad in ["", "a b", "a/b", "x.ko"] {
        assert!(ModuleName::new(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn parses_entries_with_deps_in_order() {
    let dep = ModuleDep::parse(DEP).expect("parse");
    assert_eq!(dep.len(), 9);
    let net = dep.get(&name("virtio_net")).expect("virtio_net");
    assert_eq!(net.path, "kernel/drivers/net/virtio_net.ko");
    assert_eq!(net.deps.len(), 4);
    assert_eq!(net.deps[0], "kernel/drivers/net/net_failover.ko");
    assert!(
        dep.get(&name("failover"))
            .expect("failover")
            .deps
            .is_empty()
    );
    assert!(
        dep.get(&name("virtio-rng")).is_some(),
        "lookup by hyphenated name"
    );
}

#[test]
fn closure_is_transitive_deduplicated_and_sorted() {
    let dep = ModuleDep::parse(DEP).expect("parse");
    // net_failover lists failover directly; virtio comes only through virtio_rng's line.
    let got = dep
        .closure(&[name("net_failover"), name("virtio_rng")])
        .expect("closure");
    assert_eq!(
        paths(&got),
        [
            "kernel/drivers/char/hw_random/virtio-rng.ko",
            "kernel/drivers/net/net_failover.ko",
            "kernel/drivers/virtio/virtio.ko",
            "kernel/drivers/virtio/virtio_ring.ko",
            "kernel/net/core/failover.ko",
        ]
    );
    let err = dep
        .closure(&[name("virtio_net"), name("nope"), name("gone")])
        .expect_err("missing");
    assert!(
        matches!(&err, ModulesError::NotFound(n) if n == &[name("nope"), name("gone")]),
        "{err}"
    );
}

#[test]
fn closure_follows_deps_not_listed_on_the_root_line() {
    // A hand-written file where the root lists only its direct dependency.
    let dep = ModuleDep::parse("a.ko: b.ko\nb.ko: c.ko\nc.ko:\nd.ko:\n").expect("parse");
    assert_eq!(
        paths(&dep.closure(&[name("a")]).expect("closure")),
        ["a.ko", "b.ko", "c.ko"]
    );
}

#[test]
fn render_subset_keeps_line_and_dependency_order() {
    let dep = ModuleDep::parse(DEP).expect("parse");
    let sel = dep
        .closure(&[name("virtio_net"), name("dm_verity")])
        .expect("closure");
    let text = dep.render_subset(&sel);
    assert_eq!(
        text,
        "\
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/md/dm-verity.ko.zst: kernel/drivers/md/dm-mod.ko.zst
kernel/drivers/md/dm-mod.ko.zst:
"
    );
    // The rendered subset parses back to the same closure.
    let reparsed = ModuleDep::parse(&text).expect("reparse");
    assert_eq!(reparsed.len(), sel.len());
}

#[test]
fn malformed_files_are_rejected() {
    let cases = [
        ("kernel/a.ko kernel/b.ko\n", "MalformedLine"),
        ("/lib/modules/x/a.ko:\n", "BadPath"),
        ("kernel/../a.ko:\n", "BadPath"),
        ("kernel/a.txt:\n", "BadPath"),
        ("kernel/a.ko: kernel/b.ko\n", "DanglingDependency"),
        ("x/a.ko:\ny/a.ko:\n", "DuplicateModule"),
        ("x/a-b.ko:\ny/a_b.ko:\n", "DuplicateModule"),
    ];
    for (text, want) in cases {
        let err = ModuleDep::parse(text).expect_err(text);
        assert!(
            format!("{err:?}").starts_with(want),
            "{text:?}: got {err:?}"
        );
    }
}

#[test]
fn select_splits_modules_builtins_and_absent_optionals() {
    let dep = ModuleDep::parse(DEP).expect("parse");
    let builtin = Builtin::parse(BUILTIN);
    let requests = [
        ModuleRequest::required("virtio-rng").expect("name"),
        ModuleRequest::required("ext4").expect("name"),
        ModuleRequest::optional("nft_compat").expect("name"),
        ModuleRequest::required("overlay").expect("name"),
        ModuleRequest::optional("overlay").expect("name"),
    ];
    let sel = select(&dep, &builtin, &requests).expect("select");
    assert_eq!(
        paths(&sel.modules),
        [
            "kernel/drivers/char/hw_random/virtio-rng.ko",
            "kernel/drivers/virtio/virtio.ko",
            "kernel/drivers/virtio/virtio_ring.ko",
            "kernel/fs/overlayfs/overlay.ko",
        ]
    );
    assert_eq!(sel.builtin, [name("ext4")]);
    assert_eq!(sel.absent_optional, [name("nft_compat")]);
    assert_eq!(
        sel.compressions().into_iter().collect::<Vec<_>>(),
        [Compression::None]
    );
}

#[test]
fn select_fails_on_required_names_the_kernel_lacks() {
    let dep = ModuleDep::parse(DEP).expect("parse");
    let builtin = Builtin::parse(BUILTIN);
    let requests = [
        ModuleRequest::required("overlay").expect("name"),
        ModuleRequest::required("zfs").expect("name"),
        ModuleRequest::optional("btrfs").expect("name"),
        // Asked for both ways: required wins.
        ModuleRequest::required("wireguard").expect("name"),
        ModuleRequest::optional("wireguard").expect("name"),
    ];
    let err = select(&dep, &builtin, &requests).expect_err("zfs and wireguard are missing");
    assert!(matches!(&err, ModulesError::NotFound(n) if n == &[name("wireguard"), name("zfs")]));
    assert_eq!(
        err.to_string(),
        "requested kernel modules not found as modules or built-ins: wireguard, zfs"
    );
}

#[test]
fn compression_is_read_from_the_extension() {
    assert_eq!(Compression::of_path("a/b.ko"), Some(Compression::None));
    assert_eq!(Compression::of_path("a/b.ko.xz"), Some(Compression::Xz));
    assert_eq!(Compression::of_path("a/b.ko.zst"), Some(Compression::Zstd));
    assert_eq!(Compression::of_path("a/b.ko.gz"), Some(Compression::Gzip));
    assert_eq!(Compression::of_path("a/b.o"), None);
}
