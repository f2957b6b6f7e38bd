//! Patch engines: a target object and a patch, split at the first NUL byte; the first byte picks
//! the patch type and the kind whose merge keys apply. Patching never panics, a patched object
//! is still JSON that serializes, and a merge patch applied twice is applied once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strake_apimachinery::patch::{PatchType, apply};

const KINDS: &[&str] = &[
    "Pod",
    "Deployment",
    "Service",
    "ConfigMap",
    "Node",
    "Widget",
];

fuzz_target!(|data: &[u8]| {
    let [sel, rest @ ..] = data else { return };
    let ty = match sel % 3 {
        0 => PatchType::Json,
        1 => PatchType::Merge,
        _ => PatchType::Strategic,
    };
    let kind = KINDS[usize::from(sel / 3) % KINDS.len()];
    let (target, patch) = match rest.iter().position(|b| *b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&b"{}"[..], rest),
    };
    let Ok(mut target) = serde_json::from_slice::<serde_json::Value>(target) else {
        return;
    };
    if apply(&mut target, kind, ty, patch).is_ok() {
        serde_json::to_vec(&target).expect("a patched object serializes");
        // A merge patch (RFC 7386) is idempotent: applied again, it changes nothing.
        if ty == PatchType::Merge {
            let once = target.clone();
            apply(&mut target, kind, ty, patch).expect("it applied once");
            assert_eq!(target, once);
        }
    }
});
