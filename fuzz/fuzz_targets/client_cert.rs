//! Client certificates as the TLS layer hands them over: any bytes either give an identity
//! (user and groups) or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rustls_pki_types::CertificateDer;

fuzz_target!(|data: &[u8]| {
    if let Ok(id) = strake_pki::peer_identity(&CertificateDer::from(data)) {
        assert!(id.groups.iter().all(|g| !g.is_empty()) || id.groups.is_empty());
    }
});
