//! The apiserver integration tests, one binary: each module is one area, and they share the harness in `common`.

mod admission;
mod api;
mod audit;
mod clients;
mod common;
mod kinds;
mod kubectl;
mod limits;
mod oidc;
mod policies;
mod rbac;
mod rotation;
mod webhooks;
