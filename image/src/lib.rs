//! strake-image
