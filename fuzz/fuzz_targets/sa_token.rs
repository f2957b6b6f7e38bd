//! Service-account tokens as callers send them: any string either parses or gets an error, a
//! token this fuzzer did not sign never verifies, and claims that parse, once signed, verify
//! to themselves.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use strake_tokens::{ISSUER, Signer, parse};

fn signer() -> &'static Signer {
    static S: OnceLock<Signer> = OnceLock::new();
    S.get_or_init(Signer::generate)
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let s = signer();
    if let Ok((_, _, mut claims)) = parse(token) {
        assert!(s.verify(token, claims.iat, &[ISSUER]).is_err(), "a forged token verified");
        claims.iss = ISSUER.into();
        claims.aud = vec![ISSUER.into()];
        let (now, exp) = (1_800_000_000, 1_800_003_600);
        (claims.iat, claims.nbf, claims.exp) = (now, now, exp);
        let signed = s.issue(&claims);
        assert_eq!(s.verify(&signed, now, &[ISSUER]).expect("our own token verifies"), claims);
    }
});
