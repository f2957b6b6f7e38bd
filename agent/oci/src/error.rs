//! The crate's error type. Messages are written to be shown to users as-is: the agent
//! copies them into a pod's `ErrImagePull` status.

use std::io;
use std::path::PathBuf;

use crate::reference::Digest;
use crate::unpack::UnpackError;

/// Everything that can go wrong while naming, pulling, storing or pushing an image.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The image reference string does not parse.
    #[error("invalid image reference {input:?}: {reason}")]
    InvalidReference { input: String, reason: String },

    /// A digest string is not `sha256:<64 lowercase hex>`.
    #[error("invalid digest {input:?}: expected sha256:<64 lowercase hex characters>")]
    InvalidDigest { input: String },

    /// The registry answered 404; `message` holds its error codes and messages.
    #[error("image {image} not found: {message}")]
    NotFound { image: String, message: String },

    /// The registry answered 401/403, or its token service refused us.
    #[error("not authorized to pull {image}: {message}")]
    Unauthorized { image: String, message: String },

    /// Any other unexpected HTTP status from the registry.
    #[error("registry error for {image}: HTTP {status}: {message}")]
    Registry {
        image: String,
        status: u16,
        message: String,
    },

    /// Content did not hash to the digest it was requested or described by.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },

    /// Content was not the size its descriptor promised.
    #[error("size mismatch for {what}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },

    /// A document exceeds the bound we are willing to read into memory.
    #[error("{what} is larger than the {limit}-byte limit")]
    TooLarge { what: String, limit: u64 },

    /// A manifest, index or config that does not parse or is inconsistent.
    #[error("invalid {what} for {image}: {message}")]
    InvalidManifest {
        image: String,
        what: &'static str,
        message: String,
    },

    /// Valid content this implementation does not handle (schema 1, foreign media types,
    /// no manifest for our platform, ...).
    #[error("unsupported image {image}: {message}")]
    Unsupported { image: String, message: String },

    /// Network-level failure (connect, TLS, timeout, broken stream).
    #[error("cannot reach registry at {url}: {message}")]
    Transport { url: String, message: String },

    /// A layer could not be unpacked; nothing of it was left behind.
    #[error("cannot unpack layer {digest}: {source}")]
    Layer {
        digest: Digest,
        #[source]
        source: UnpackError,
    },

    /// A local file-system operation failed.
    #[error("I/O error at {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A record in the local store is unreadable.
    #[error("corrupt image store record {}: {message}", path.display())]
    CorruptStore { path: PathBuf, message: String },

    /// [`crate::LayerBuilder`] was given an entry tar cannot hold (e.g. a `..` path).
    #[error("cannot add {path:?} to layer: {message}")]
    InvalidLayerEntry { path: String, message: String },

    /// A background task was cancelled (the runtime is shutting down).
    #[error("{what} was cancelled")]
    Cancelled { what: String },
}

impl OciError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> OciError {
        OciError::Io {
            path: path.into(),
            source,
        }
    }

    /// Builds a [`OciError::Transport`] carrying the whole cause chain, which reqwest
    /// otherwise hides behind "error sending request".
    pub(crate) fn transport(url: &str, err: &(dyn std::error::Error + 'static)) -> OciError {
        let mut message = err.to_string();
        let mut source = err.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = cause.source();
        }
        OciError::Transport {
            url: url.to_owned(),
            message,
        }
    }
}
