//! The filter and score plugins, one module per concern, each a pure function of the pod
//! being placed and a node of the snapshot.

pub mod fit;
pub mod images;
pub mod interpod;
pub mod node;
pub mod spread;
pub mod volumes;

#[cfg(test)]
pub(crate) mod testing;
