//! strake-init
