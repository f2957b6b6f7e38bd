//! The controller runtime and the controllers built on it, in the kube-rs model: one
//! [`cache::Reflector`] per kind keeps a single-writer cache with indexes; changes become keys
//! in a coalescing, rate-limited [`queue::Queue`]; workers call `reconcile(key) -> Action`
//! over cache snapshots; each component acts only while it holds its own Lease
//! ([`leader`]). Everything a controller writes goes through the registry ([`api::Client`]),
//! with the API server's own validation and admission.

pub mod api;
pub mod autoscaler;
pub mod cache;
pub mod certificates;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod gc;
pub mod history;
pub mod job;
pub mod leader;
pub mod manager;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod ownership;
pub mod pods;
pub mod queue;
pub mod quota;
pub mod replicaset;
pub mod runtime;
pub mod scheduling;
pub mod serviceaccount;
pub mod servicelb;
pub mod statefulset;
pub mod volumes;

pub use api::{Client, Object};
pub use cache::{ObjectRef, Reader, Reflector};
pub use runtime::Action;
