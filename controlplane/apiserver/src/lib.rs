//! strake-apiserver
