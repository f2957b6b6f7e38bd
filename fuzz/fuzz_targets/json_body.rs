//! JSON request bodies: any bytes either parse or get an error, and what parses, with its
//! duplicate fields reported, serializes and parses back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strake_apimachinery::decode::parse_json;

fuzz_target!(|data: &[u8]| {
    if let Ok((v, dups)) = parse_json(data) {
        let again = serde_json::to_vec(&v).expect("a parsed value serializes");
        let (back, dups_again) = parse_json(&again).expect("our own output parses");
        assert_eq!(back, v);
        assert!(dups_again.is_empty(), "a map has no duplicate keys");
        // Every duplicate is named by a path.
        assert!(dups.iter().all(|d| d.starts_with("duplicate field \"")));
    }
});
