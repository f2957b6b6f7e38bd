//! Watches: every change under a prefix, in revision order, without gaps or duplicates.
//!
//! A watch replays history from its start revision page by page, then follows the live channel.
//! Before reading a page it subscribes to the channel, so a page that reaches the current
//! revision hands over to that subscription: revisions at or below the page's revision are
//! dropped from the channel, later ones are delivered. A watcher too slow for the channel falls
//! back to replaying from history (as etcd moves slow watchers to its "unsynced" group); only
//! if that history was compacted meanwhile does it end with [`StoreError::Compacted`].

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use tokio::sync::broadcast::{self, error::RecvError};

use crate::error::StoreError;
use crate::keyspace::read_history;
use crate::state_machine::{Shared, WatchMessage};
use crate::types::{WatchEvent, WatchRequest};

/// Revisions of history read per page while replaying.
const REPLAY_PAGE: usize = 256;

/// The events of a watch. Ends after yielding its first error.
pub struct WatchStream {
    inner: Pin<Box<dyn Stream<Item = Result<WatchEvent, StoreError>> + Send>>,
}

impl std::fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchStream").finish_non_exhaustive()
    }
}

impl WatchStream {
    pub(crate) fn start(shared: Arc<Shared>, req: WatchRequest) -> Self {
        let phase = if req.start_revision == 0 {
            let rx = shared.events.subscribe();
            let last = shared.revision.load(Ordering::Acquire);
            Phase::Live { rx, last }
        } else {
            Phase::Replay {
                next: req.start_revision,
            }
        };
        let state = WatchState {
            shared,
            prefix: req.prefix,
            phase,
            pending: VecDeque::new(),
            done: false,
        };
        let inner = futures::stream::unfold(state, |mut state| async move {
            let item = state.step().await?;
            Some((item, state))
        });
        Self {
            inner: Box::pin(inner),
        }
    }

    /// The next event; `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<Result<WatchEvent, StoreError>> {
        self.inner.next().await
    }
}

impl Stream for WatchStream {
    type Item = Result<WatchEvent, StoreError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

enum Phase {
    /// Reading history from `next` on.
    Replay {
        next: u64,
    },
    /// Following the live channel; everything up to `last` has been delivered.
    Live {
        rx: broadcast::Receiver<WatchMessage>,
        last: u64,
    },
    Ended,
}

struct WatchState {
    shared: Arc<Shared>,
    prefix: Vec<u8>,
    phase: Phase,
    pending: VecDeque<WatchEvent>,
    done: bool,
}

impl WatchState {
    fn fail(&mut self, err: StoreError) -> Option<Result<WatchEvent, StoreError>> {
        self.done = true;
        self.phase = Phase::Ended;
        self.pending.clear();
        Some(Err(err))
    }

    fn queue(&mut self, events: &[WatchEvent]) {
        let prefix = &self.prefix;
        self.pending.extend(
            events
                .iter()
                .filter(|e| e.kv.key.starts_with(prefix))
                .cloned(),
        );
    }

    async fn step(&mut self) -> Option<Result<WatchEvent, StoreError>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            match &mut self.phase {
                Phase::Ended => return None,
                Phase::Replay { next } => {
                    let next = *next;
                    // Subscribe before reading: if this page reaches the current revision, the
                    // subscription holds every later revision.
                    let rx = self.shared.events.subscribe();
                    let page = match self
                        .shared
                        .visible()
                        .and_then(|db| read_history(db, next, REPLAY_PAGE))
                    {
                        Ok(page) => page,
                        Err(err) => return self.fail(err),
                    };
                    let last_read = page.batches.last().map_or(next - 1, |(rev, _)| *rev);
                    for (_, events) in &page.batches {
                        self.queue(events);
                    }
                    self.phase = if page.complete {
                        Phase::Live {
                            rx,
                            last: page.revision.max(next - 1),
                        }
                    } else {
                        Phase::Replay {
                            next: last_read + 1,
                        }
                    };
                }
                Phase::Live { rx, last } => match rx.recv().await {
                    Ok(WatchMessage::Revision(batch)) => {
                        if batch.revision <= *last {
                            continue;
                        }
                        *last = batch.revision;
                        self.queue(&batch.events);
                    }
                    Ok(WatchMessage::Reset { compacted }) => {
                        let requested = *last + 1;
                        return self.fail(StoreError::Compacted {
                            requested,
                            compacted,
                        });
                    }
                    Ok(WatchMessage::Closed) | Err(RecvError::Closed) => {
                        return self.fail(StoreError::Stopped);
                    }
                    Err(RecvError::Lagged(missed)) => {
                        tracing::debug!(
                            missed,
                            last = *last,
                            "watcher lagged behind the live channel; replaying from history"
                        );
                        self.phase = Phase::Replay { next: *last + 1 };
                    }
                },
            }
        }
    }
}
