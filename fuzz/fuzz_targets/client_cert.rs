//! Client certificates as the TLS layer hands them over: any bytes either give an identity
//! (a user and groups, none of them empty) or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rustls_pki_types::CertificateDer;

fuzz_target!(|data: &[u8]| {
    if let Ok(id) = strake_pki::peer_identity(&CertificateDer::from(data)) {
        assert!(!id.user.is_empty(), "an identity without a user");
        assert!(id.groups.iter().all(|g| !g.is_empty()), "an empty group: {id:?}");
    }
});
