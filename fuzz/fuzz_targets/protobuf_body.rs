//! Protobuf bodies: the first two bytes pick a message of the table; the rest is decoded as it.
//! Decoding never panics, and what decodes encodes and decodes again to the same JSON.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use strake_protobuf::{Codec, MESSAGES};

fn codec() -> &'static Codec {
    static C: OnceLock<Codec> = OnceLock::new();
    C.get_or_init(|| Codec::new(&serde_json::Map::new()))
}

fuzz_target!(|data: &[u8]| {
    let c = codec();
    // The envelope path, with every message known by its (apiVersion, kind) as the server
    // names it.
    let _ = c.decode_envelope(data, &|_, kind| {
        MESSAGES
            .iter()
            .find(|(name, _)| name.rsplit('.').next() == Some(kind))
            .map(|(name, _)| name.to_string())
    });
    let [a, b, rest @ ..] = data else { return };
    let (name, _) = MESSAGES[usize::from(u16::from_le_bytes([*a, *b])) % MESSAGES.len()];
    let Ok(v) = c.decode_message(name, rest, 0) else {
        return;
    };
    let bytes = c
        .encode_message(name, &v)
        .unwrap_or_else(|e| panic!("decoded JSON of {name} does not encode: {e}\n{v}"));
    let back = c
        .decode_message(name, &bytes, 0)
        .unwrap_or_else(|e| panic!("our encoding of {name} does not decode: {e}"));
    assert_eq!(back, v, "{name}");
});
