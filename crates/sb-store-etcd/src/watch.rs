//! Watches: one etcd watch stream per port watch, driven by one task.
//!
//! The task reassembles etcd's fragments (a revision too large for one response arrives
//! in pieces, flagged `fragment`), splits each response into one batch per revision, and
//! hands batches to a bounded channel, so a slow consumer back-pressures etcd instead of
//! growing memory. A broken stream is reopened, with backoff, from the revision after the
//! last one delivered; a partly received revision is dropped and received again whole.

use std::time::Duration;

use etcd_client::proto::{PbEvent, PbWatchResponse};
use etcd_client::{WatchClient, WatchOptions};
use sb_store::{Event, EventKind, Revision, StoreError, StoreResult, WatchBatch, WatchRequest, WatchStream};
use tokio::sync::mpsc;

use crate::convert;
use crate::failure::{timed, Failure};
use crate::namespace::{Namespace, RawRange};
use crate::EtcdStore;

const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// etcd before 3.4.25 and 3.5.8 answers a progress request at once with its current
/// revision, out of band: the answer can overtake events still queued for the watcher,
/// or not yet replayed by a watcher that is catching up (etcd-io/etcd#15220). A progress
/// answer is therefore held this long, while events keep flowing, before it is passed on.
const PROGRESS_SETTLE: Duration = Duration::from_millis(150);
/// A watch that starts in the past replays history in etcd's sync loop (every 100 ms):
/// progress is not passed on before this long after the watch was (re)created.
const CATCH_UP_GRACE: Duration = Duration::from_millis(300);

pub(crate) async fn watch(store: &EtcdStore, request: WatchRequest) -> StoreResult<WatchStream> {
    let ns = store.namespace().clone();
    let range = ns.range(&request.range);
    let client = store.client().watch_client();
    let timeout = store.request_timeout();
    let (stream, created) = open(client.clone(), &range, request.start_revision, timeout)
        .await
        .map_err(Failure::into_store_error)?;
    // With no start revision, etcd starts after its current revision: the created
    // response's header says which one that was.
    let header_revision = created.header.as_ref().map_or(0, |h| h.revision);
    let next_revision = request.start_revision.unwrap_or(header_revision + 1);
    let (batches, rx) = mpsc::channel(store.options.watch_buffer.max(1));
    let (progress_tx, progress) = mpsc::channel(1);
    let task = WatchTask {
        client,
        ns,
        range,
        timeout,
        next_revision,
        fragments: Vec::new(),
        batches,
        progress,
        pending_progress: None,
        opened_at: tokio::time::Instant::now(),
    };
    tokio::spawn(task.run(stream, created));
    Ok(WatchStream::new(rx, progress_tx).with_start_revision(next_revision))
}

/// Opens an etcd watch and waits for its first response (normally `created`).
async fn open(
    mut client: WatchClient,
    range: &RawRange,
    start_revision: Option<Revision>,
    timeout: Duration,
) -> Result<(etcd_client::WatchStream, PbWatchResponse), Failure> {
    let mut options = WatchOptions::new().with_range(range.end.clone()).with_fragment();
    if let Some(revision) = start_revision {
        options = options.with_start_revision(revision);
    }
    let mut stream = timed(timeout, client.watch(range.start.clone(), Some(options))).await?;
    match timed(timeout, stream.message()).await? {
        Some(first) => Ok((stream, first.0)),
        None => Err(Failure::Unavailable("etcd closed the watch stream before creating the watch".into())),
    }
}

struct WatchTask {
    client: WatchClient,
    ns: Namespace,
    range: RawRange,
    timeout: Duration,
    /// The revision to resume from: one past the last revision delivered.
    next_revision: Revision,
    /// Events of a revision whose last fragment has not arrived yet.
    fragments: Vec<PbEvent>,
    batches: mpsc::Sender<StoreResult<WatchBatch>>,
    progress: mpsc::Receiver<()>,
    /// A progress answer from etcd being held (see [`PROGRESS_SETTLE`]): its revision and
    /// when it may be passed on.
    pending_progress: Option<(Revision, tokio::time::Instant)>,
    opened_at: tokio::time::Instant,
}

/// Whether the watch goes on after a response.
enum Flow {
    Continue,
    Stop,
}

impl WatchTask {
    async fn run(mut self, stream: etcd_client::WatchStream, first: PbWatchResponse) {
        let mut stream = stream;
        if let Flow::Stop = self.handle(first).await {
            return;
        }
        loop {
            let settle_at = self.pending_progress.map(|(_, at)| at);
            let broken = tokio::select! {
                // The consumer dropped its WatchStream: dropping etcd's stream cancels it.
                _ = self.batches.closed() => return,
                _ = sleep_until_opt(settle_at), if settle_at.is_some() => {
                    if let Some((revision, _)) = self.pending_progress.take() {
                        let revision = revision.max(self.next_revision - 1);
                        self.next_revision = revision + 1;
                        if let Flow::Stop = self.deliver(WatchBatch { revision, events: Vec::new() }).await {
                            return;
                        }
                    }
                    None
                }
                Some(()) = self.progress.recv() => {
                    stream.request_progress().await.err().map(|e| e.to_string())
                }
                message = stream.message() => match message {
                    Ok(Some(response)) => match self.handle(response.0).await {
                        Flow::Continue => None,
                        Flow::Stop => return,
                    },
                    Ok(None) => Some("etcd ended the watch stream".to_string()),
                    Err(e) => Some(e.to_string()),
                },
            };
            if let Some(reason) = broken {
                tracing::debug!(%reason, next_revision = self.next_revision, "watch broke, resuming");
                match self.reopen().await {
                    Some(reopened) => stream = reopened,
                    None => return,
                }
            }
        }
    }

    /// Reopens the watch from the next revision, with backoff, until it works, the
    /// consumer goes away, or etcd refuses it for good.
    async fn reopen(&mut self) -> Option<etcd_client::WatchStream> {
        self.fragments.clear();
        // A held progress answer came from the broken stream; the new one answers anew.
        self.pending_progress = None;
        let mut backoff = BACKOFF_FIRST;
        loop {
            tokio::select! {
                _ = self.batches.closed() => return None,
                _ = tokio::time::sleep(backoff) => {}
            }
            match open(self.client.clone(), &self.range, Some(self.next_revision), self.timeout).await {
                Ok((stream, first)) => {
                    self.opened_at = tokio::time::Instant::now();
                    return match self.handle(first).await {
                        Flow::Continue => Some(stream),
                        Flow::Stop => None,
                    };
                }
                Err(failure) if failure.is_retryable() => {
                    tracing::debug!(?failure, "watch reconnect failed, retrying");
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Err(failure) => {
                    let _ = self.batches.send(Err(failure.into_store_error())).await;
                    return None;
                }
            }
        }
    }

    async fn handle(&mut self, response: PbWatchResponse) -> Flow {
        if response.compact_revision != 0 {
            let error = StoreError::Compacted {
                requested: self.next_revision,
                compacted: Some(response.compact_revision),
            };
            let _ = self.batches.send(Err(error)).await;
            return Flow::Stop;
        }
        if response.canceled {
            let reason = if response.cancel_reason.is_empty() {
                "etcd cancelled the watch".to_string()
            } else {
                response.cancel_reason
            };
            let _ = self.batches.send(Err(StoreError::WatchCancelled(reason))).await;
            return Flow::Stop;
        }
        if response.created && response.events.is_empty() {
            return Flow::Continue;
        }
        if response.events.is_empty() && self.fragments.is_empty() {
            // A progress notification: every event up to the header revision was sent,
            // once the events it may have overtaken have arrived.
            let revision = response.header.map_or(0, |h| h.revision);
            let now = tokio::time::Instant::now();
            let at = (now + PROGRESS_SETTLE).max(self.opened_at + CATCH_UP_GRACE);
            self.pending_progress = match self.pending_progress {
                Some((held, held_at)) => Some((held.max(revision), held_at)),
                None => Some((revision, at)),
            };
            return Flow::Continue;
        }
        self.fragments.extend(response.events);
        if response.fragment {
            return Flow::Continue;
        }
        let events = std::mem::take(&mut self.fragments);
        let mut batch: Option<WatchBatch> = None;
        for event in events {
            let Some(kv) = event.kv else {
                continue;
            };
            let revision = kv.mod_revision;
            if revision < self.next_revision {
                continue; // already delivered before a reconnect
            }
            let kind = if event.r#type == 1 { EventKind::Delete } else { EventKind::Put };
            let event = Event { kind, kv: convert::key_value(&self.ns, kv) };
            match &mut batch {
                Some(open) if open.revision == revision => open.events.push(event),
                _ => {
                    if let Some(full) = batch.replace(WatchBatch { revision, events: vec![event] }) {
                        if let Flow::Stop = self.deliver_events(full).await {
                            return Flow::Stop;
                        }
                    }
                }
            }
        }
        match batch {
            Some(full) => self.deliver_events(full).await,
            None => Flow::Continue,
        }
    }

    async fn deliver_events(&mut self, batch: WatchBatch) -> Flow {
        debug_assert!(batch.revision >= self.next_revision, "watch batches go forward");
        self.next_revision = batch.revision + 1;
        self.deliver(batch).await
    }

    async fn deliver(&mut self, batch: WatchBatch) -> Flow {
        match self.batches.send(Ok(batch)).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop,
        }
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
