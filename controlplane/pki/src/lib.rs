//! strake-pki
