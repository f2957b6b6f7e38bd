//! strake-scheduler
