//! strake-runtime
