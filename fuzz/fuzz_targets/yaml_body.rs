//! YAML request bodies: any bytes either parse or get an error (no panic, no unbounded
//! recursion or allocation), and what parses is a JSON value that survives JSON's round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strake_apimachinery::decode::{parse_json, parse_yaml};

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = parse_yaml(data) {
        let json = serde_json::to_vec(&v).expect("a parsed value serializes");
        let (back, _) = parse_json(&json).expect("its JSON parses");
        assert_eq!(back, v);
    }
});
