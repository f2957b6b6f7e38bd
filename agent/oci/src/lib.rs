//! strake-oci
