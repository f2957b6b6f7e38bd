//! Limits against abuse, as kube-apiserver keeps them:
//! - at most [`Limits::readonly`] read-only and [`Limits::mutating`] mutating requests in
//!   flight (`--max-requests-inflight`, `--max-mutating-requests-inflight`); a request over the
//!   limit gets 429 with `Retry-After: 1`, which client-go and kubectl honour. Long-running
//!   requests (watches, exec/attach/port-forward, followed logs) are not counted, as upstream;
//! - at most [`Limits::watches_per_user`] open watches per user, so one client cannot hold
//!   every watch the server can feed;
//! - request headers of at most [`Limits::max_header_bytes`], and a client must finish sending
//!   them within [`Limits::header_read_timeout`] (slowloris); the TLS handshake has its own
//!   timeout in the accept loop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use strake_apimachinery::ApiError;
use strake_apimachinery::request::{Target, Verb};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The limits; the defaults are kube-apiserver's where it has one.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub readonly: usize,
    pub mutating: usize,
    pub watches_per_user: usize,
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            readonly: 400,
            mutating: 200,
            watches_per_user: 500,
            max_header_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// The limits' state, shared by every connection.
pub struct Gate {
    pub limits: Limits,
    readonly: Arc<Semaphore>,
    mutating: Arc<Semaphore>,
    watches: Arc<Mutex<HashMap<String, usize>>>,
}

/// What a request holds while it is served.
pub enum Admitted {
    /// A slot among the requests in flight, given back when the response is produced.
    InFlight(#[allow(dead_code)] OwnedSemaphorePermit),
    /// One of the user's watches, given back when the stream ends.
    Watch(WatchSlot),
    /// Long-running, not counted.
    Free,
}

pub struct WatchSlot {
    user: String,
    watches: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut w = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = w.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                w.remove(&self.user);
            }
        }
    }
}

/// A request over a limit, and why.
pub struct Refused(String);

impl Refused {
    /// The 429, with `Retry-After: 1`.
    pub fn response(self) -> Response {
        let mut r = ApiError::TooManyRequests {
            message: self.0,
            causes: Vec::new(),
        }
        .into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        r
    }
}

impl Gate {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            readonly: Arc::new(Semaphore::new(limits.readonly)),
            mutating: Arc::new(Semaphore::new(limits.mutating)),
            watches: Arc::default(),
        }
    }

    /// Admits a request, or says why not (a 429).
    pub fn admit(&self, target: &Target, user: &str, follow: bool) -> Result<Admitted, Refused> {
        let (write, long) = match target {
            Target::Resource(info) => {
                let sub = info.subresource.as_deref().unwrap_or_default();
                let streaming = matches!(sub, "exec" | "attach" | "portforward" | "proxy")
                    || (sub == "log" && follow);
                if info.verb == Verb::Watch {
                    return self.watch(user).map(Admitted::Watch);
                }
                (info.verb.is_write(), streaming)
            }
            _ => (false, false),
        };
        if long {
            return Ok(Admitted::Free);
        }
        let sem = if write {
            &self.mutating
        } else {
            &self.readonly
        };
        match sem.clone().try_acquire_owned() {
            Ok(p) => Ok(Admitted::InFlight(p)),
            Err(_) => Err(Refused("Too many requests, please try again later.".into())),
        }
    }

    fn watch(&self, user: &str) -> Result<WatchSlot, Refused> {
        let mut w = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        let n = w.entry(user.to_string()).or_default();
        if *n >= self.limits.watches_per_user {
            return Err(Refused(format!(
                "Too many watches: {user:?} already has {n} open (at most {} per user); close some and try again later.",
                self.limits.watches_per_user
            )));
        }
        *n += 1;
        Ok(WatchSlot {
            user: user.to_string(),
            watches: self.watches.clone(),
        })
    }
}

/// Keeps `slot` until the response's body has been sent or dropped.
pub fn hold_until_done(resp: Response, slot: WatchSlot) -> Response {
    let (parts, body) = resp.into_parts();
    let stream = body.into_data_stream().map(move |chunk| {
        let _held = &slot;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(stream))
}
