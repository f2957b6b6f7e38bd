//! strake-store
