//! strake-e2e
