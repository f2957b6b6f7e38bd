//! strake-oci: the node agent's image service — parse image references, pull images over the
//! OCI distribution protocol into a verified local content store, and unpack layers for overlayfs.
//! It owns only its store directory; it must not mount anything, run containers, or touch pod state.

mod builder;
mod error;
mod manifest;
mod push;
mod reference;
mod registry;
mod store;
mod unpack;

pub use builder::{Layer, LayerBuilder, LayerCompression};
pub use error::OciError;
pub use manifest::ImageConfig;
pub use push::push_image;
pub use reference::{DOCKER_HUB_REGISTRY, Digest, ImageRef, Reference};
pub use registry::RegistryConfig;
pub use store::{ImageStore, PulledImage};
pub use unpack::{UnpackError, unpack_layer};
