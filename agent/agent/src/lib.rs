//! strake-agent
