//! Watches: one task per watch, feeding the watch's bounded channel.
//!
//! The task subscribes to the writer's broadcast first, then catches up from the log
//! up to the current revision, then follows the broadcast, skipping revisions it already
//! delivered. A task that lags the broadcast catches up from the log again, so the
//! writer never waits for a slow consumer and memory stays bounded: a slow consumer only
//! blocks its own task. History below the compacted revision ends the watch with
//! `Compacted`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use sb_store::{Event, KeyRange, Revision, StoreError, StoreResult, WatchBatch, WatchRequest, WatchStream};
use tokio::sync::{broadcast, mpsc, watch};

use crate::{history, Shared};

/// Events of one commit, per revision, as the writer publishes them.
pub(crate) type Committed = Vec<(Revision, Vec<Event>)>;

/// How many events one catch-up read returns at most (it never splits a revision).
const CATCH_UP_EVENTS: usize = 1024;

pub(crate) fn start(
    shared: Arc<Shared>,
    request: WatchRequest,
    shutdown: watch::Receiver<bool>,
) -> StoreResult<WatchStream> {
    if let KeyRange::Key(key) = &request.range {
        sb_store::check_key(key)?;
    }
    // Subscribe before reading the current revision: every later commit then reaches the
    // task through the broadcast, and every earlier one is in the log.
    let events = shared.events.subscribe();
    let current = shared.state.read().revision;
    let next = request.start_revision.filter(|r| *r > 0).unwrap_or(current + 1);
    let (batches_tx, batches_rx) = mpsc::channel(shared.options.watch_buffer.max(1));
    let (progress_tx, progress_rx) = mpsc::channel(1);
    let task = WatchTask {
        shared,
        range: request.range,
        next,
        batches: batches_tx,
        progress: progress_rx,
        events,
        shutdown,
    };
    tokio::spawn(task.run());
    Ok(WatchStream::new(batches_rx, progress_tx).with_start_revision(next))
}

struct WatchTask {
    shared: Arc<Shared>,
    range: KeyRange,
    /// The next revision to deliver: every matching event below it has been sent.
    next: Revision,
    batches: mpsc::Sender<StoreResult<WatchBatch>>,
    progress: mpsc::Receiver<()>,
    events: broadcast::Receiver<Arc<Committed>>,
    shutdown: watch::Receiver<bool>,
}

/// Why a watch task stops following the broadcast.
enum Stop {
    /// Fell behind or found a gap: catch up from the log.
    CatchUp,
    /// The consumer dropped the stream, or the store closed.
    End,
}

impl WatchTask {
    async fn run(mut self) {
        self.shared.metrics.watchers.fetch_add(1, Ordering::Relaxed);
        loop {
            match self.catch_up().await {
                Ok(true) => {}
                Ok(false) => break,
                Err(error) => {
                    let _ = self.batches.try_send(Err(error));
                    break;
                }
            }
            match self.follow().await {
                Stop::CatchUp => continue,
                Stop::End => break,
            }
        }
        self.shared.metrics.watchers.fetch_sub(1, Ordering::Relaxed);
    }

    /// Sends one item; false once the consumer is gone or the store closed.
    async fn send(&mut self, item: StoreResult<WatchBatch>) -> bool {
        tokio::select! {
            sent = self.batches.send(item) => sent.is_ok(),
            _ = self.shutdown.changed() => {
                let _ = self.batches.try_send(Err(StoreError::Closed));
                false
            }
        }
    }

    /// Delivers history up to the current revision; false when the watch must end.
    async fn catch_up(&mut self) -> StoreResult<bool> {
        loop {
            let (current, compacted) = {
                let state = self.shared.state.read();
                (state.revision, state.compacted)
            };
            if self.next > current {
                return Ok(true);
            }
            if self.next < compacted {
                return Err(StoreError::Compacted { requested: self.next, compacted: Some(compacted) });
            }
            let files = self.shared.files().ok_or(StoreError::Closed)?;
            let (range, from) = (self.range.clone(), self.next);
            let history = tokio::task::spawn_blocking(move || {
                history::read_history(&files, &range, from, current, CATCH_UP_EVENTS)
            })
            .await
            .map_err(|e| StoreError::Unavailable(format!("watch catch-up failed: {e}")))??;
            for (revision, events) in history.batches {
                if !self.send(Ok(WatchBatch { revision, events })).await {
                    return Ok(false);
                }
            }
            self.next = history.read_to + 1;
        }
    }

    async fn follow(&mut self) -> Stop {
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => {
                    let _ = self.batches.try_send(Err(StoreError::Closed));
                    return Stop::End;
                }
                _ = self.batches.closed() => return Stop::End,
                received = self.events.recv() => match received {
                    Ok(committed) => {
                        if let Some(stop) = self.deliver(&committed).await {
                            return stop;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "watch lagged the commit broadcast, catching up from the log");
                        return Stop::CatchUp;
                    }
                    Err(broadcast::error::RecvError::Closed) => return Stop::End,
                },
                Some(()) = self.progress.recv() => {
                    // Everything below `next` is delivered; a watch from a future revision
                    // reports the current revision, as etcd does.
                    let current = self.shared.state.read().revision;
                    let revision = (self.next - 1).min(current);
                    if !self.send(Ok(WatchBatch { revision, events: Vec::new() })).await {
                        return Stop::End;
                    }
                }
            }
        }
    }

    async fn deliver(&mut self, committed: &Committed) -> Option<Stop> {
        for (revision, events) in committed.iter() {
            if *revision < self.next {
                continue;
            }
            if *revision > self.next {
                return Some(Stop::CatchUp);
            }
            let matching: Vec<Event> =
                events.iter().filter(|e| self.range.contains(&e.kv.key)).cloned().collect();
            if !matching.is_empty()
                && !self.send(Ok(WatchBatch { revision: *revision, events: matching })).await
            {
                return Some(Stop::End);
            }
            self.next = revision + 1;
        }
        None
    }
}
