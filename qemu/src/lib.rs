//! strake-qemu
