//! The API machinery every kind shares, with no HTTP: the runtime resource table and kind
//! strategies, request parsing into a validated request-info value, body decoding, selectors,
//! the generic JSON registry over a store trait (raft or memory), admission, and watch.
//! Kinds themselves live in `strake-kinds`; routing lives in `strake-apiserver`.

pub mod admission;
pub mod decode;
pub mod error;
pub mod events;
pub mod follow;
pub mod managed;
pub mod patch;
mod quota;
pub mod registry;
pub mod request;
pub mod resource;
pub mod selectors;
pub mod servicealloc;
pub mod storage;
pub mod user;
pub mod validation;
pub mod watch;

pub use error::{ApiError, FieldError, GroupResource};
pub use registry::{DeleteOptions, Deleted, Filter, ListOptions, Registry, WriteOptions};
pub use resource::{
    Column, NameRule, Part, ResourceDef, ResourceTable, StoredAs, Strategy, Subresource,
};
pub use user::UserInfo;
