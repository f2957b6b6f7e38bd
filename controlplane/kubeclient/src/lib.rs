//! strake-kubeclient
