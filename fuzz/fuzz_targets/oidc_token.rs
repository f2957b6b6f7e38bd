//! ID tokens from an identity provider as callers send them: any string is refused with a
//! reason or maps to a user, and a token this fuzzer did not sign never does; the header and
//! issuer readers never panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use strake_tokens::Signer;
use strake_tokens::oidc::{KeySet, Settings, issuer_of, key_id, verify};

fn keys() -> &'static KeySet {
    static K: OnceLock<KeySet> = OnceLock::new();
    K.get_or_init(|| {
        KeySet::parse(&serde_json::json!({"keys": [Signer::generate().jwk()]}))
            .expect("a JWKS of one key")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let _ = issuer_of(token);
    let _ = key_id(token);
    let settings = Settings::new("https://idp.example", "strake");
    assert!(
        verify(&settings, keys(), token, 1_800_000_000).is_err(),
        "a token nobody here signed was taken"
    );
    // The same claims also read as a JWKS document: it parses or is refused.
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = KeySet::parse(&v);
    }
});
