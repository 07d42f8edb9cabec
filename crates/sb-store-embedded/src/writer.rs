//! The writer: the one task that mutates the store, with group commit.
//!
//! Requests arrive through a bounded channel. The writer drains what is pending (up to
//! `max_batch_txns`), evaluates each request in order against the committed state plus
//! the batch's pending overlay ([`crate::batch`]), writes the batch in one durable redb
//! transaction, and only after the commit returns applies it to memory, answers every
//! request and publishes the events. Checkpoints (the log copied into the MVCC table) and
//! compaction run on the checkpointer's task ([`crate::checkpointer`]), in the other file;
//! the writer only waits for it when it falls `max_log_lag` revisions behind, and trims
//! the log below the cleaned revision inside its group commits.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sb_store::{LeaseGrant, LeaseId, Revision, StoreError, StoreResult, Txn, TxnResponse};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::batch::{BatchEval, Outcome};
use crate::checkpointer::CheckpointRequest;
use crate::state::{Entry, View};
use crate::{disk, Shared};

/// How long an expiry that failed to commit waits before it is tried again.
const EXPIRY_RETRY: Duration = Duration::from_secs(1);

/// How many log entries one group commit trims at most (below the cleaned revision), so
/// trimming adds a bounded, small cost to a commit.
const TRIM_REVISIONS: Revision = 1024;

/// How long a writer held back by backpressure waits before it looks again, even without
/// news from the checkpointer.
const BACKPRESSURE_RECHECK: Duration = Duration::from_millis(100);

pub(crate) enum WriteRequest {
    Txn {
        txn: Txn,
        reply: oneshot::Sender<StoreResult<TxnResponse>>,
    },
    LeaseGrant {
        ttl_secs: i64,
        reply: oneshot::Sender<StoreResult<LeaseGrant>>,
    },
    LeaseRevoke {
        id: LeaseId,
        reply: oneshot::Sender<StoreResult<()>>,
    },
    /// From the expiry timer: the lease's deadline passed.
    LeaseExpire {
        id: LeaseId,
    },
    /// Commit what came before, answer, then refuse everything after.
    Close {
        reply: oneshot::Sender<()>,
    },
}

impl WriteRequest {
    fn is_control(&self) -> bool {
        matches!(self, WriteRequest::Close { .. })
    }

    /// Answers the request with an error without running it.
    pub(crate) fn refuse(self, error: StoreError) {
        match self {
            WriteRequest::Txn { reply, .. } => drop(reply.send(Err(error))),
            WriteRequest::LeaseGrant { reply, .. } => drop(reply.send(Err(error))),
            WriteRequest::LeaseRevoke { reply, .. } => drop(reply.send(Err(error))),
            WriteRequest::LeaseExpire { .. } => {}
            WriteRequest::Close { reply } => drop(reply.send(())),
        }
    }
}

pub(crate) async fn run_writer(
    shared: Arc<Shared>,
    mut requests: mpsc::Receiver<WriteRequest>,
    checkpointer: mpsc::Sender<CheckpointRequest>,
    mut log_start: Revision,
) {
    let max_batch = shared.options.max_batch_txns.max(1);
    loop {
        // Every sender is gone: the store was dropped without close.
        let Some(first) = requests.recv().await else { break };
        let mut batch = Vec::new();
        let mut control = None;
        if first.is_control() {
            control = Some(first);
        } else {
            batch.push(first);
            while batch.len() < max_batch {
                match requests.try_recv() {
                    Ok(request) if request.is_control() => {
                        control = Some(request);
                        break;
                    }
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
        }
        if !batch.is_empty() {
            wait_for_checkpointer(&shared).await;
            let shared = shared.clone();
            // A panic while processing drops the batch's reply senders (the callers see
            // `Unavailable`); the writer itself carries on.
            match tokio::task::spawn_blocking(move || process_batch(&shared, batch, log_start)).await {
                Ok(start) => log_start = start,
                Err(error) => tracing::error!(%error, "store batch failed"),
            }
        }
        if let Some(WriteRequest::Close { reply }) = control {
            close_checkpointer(&checkpointer).await;
            requests.close();
            while let Some(request) = requests.recv().await {
                request.refuse(StoreError::Closed);
            }
            let _ = reply.send(());
            return;
        }
    }
    close_checkpointer(&checkpointer).await;
}

/// Has the checkpointer checkpoint everything and stop, so the next open has nothing to
/// replay.
async fn close_checkpointer(checkpointer: &mpsc::Sender<CheckpointRequest>) {
    let (reply, done) = oneshot::channel();
    if checkpointer.send(CheckpointRequest::Close { reply }).await.is_ok() {
        let _ = done.await;
    }
}

/// Revisions committed but not checkpointed yet.
fn log_lag(shared: &Shared) -> u64 {
    let state = shared.state.read();
    u64::try_from(state.revision - state.checkpointed).unwrap_or(0)
}

/// Backpressure: waits while the checkpointer is more than `max_log_lag` revisions behind,
/// so the log (and with it the time to reopen and the cost of past reads) stays bounded.
/// Requests queue meanwhile in the bounded request channel, and their callers wait.
async fn wait_for_checkpointer(shared: &Shared) {
    let max = shared.options.max_log_lag.max(1);
    if log_lag(shared) <= max {
        return;
    }
    shared.metrics.backpressure_waits.fetch_add(1, Ordering::Relaxed);
    loop {
        let checkpointed = shared.checkpointed.notified();
        tokio::pin!(checkpointed);
        checkpointed.as_mut().enable();
        let lag = log_lag(shared);
        if lag <= max {
            return;
        }
        tracing::debug!(lag, max, "group commit waits for the checkpointer");
        shared.checkpoint_wake.notify_one();
        let _ = tokio::time::timeout(BACKPRESSURE_RECHECK, checkpointed).await;
    }
}

/// Evaluates, commits, applies and answers one batch. Returns the first revision left in
/// the log (it trims below the cleaned revision, a bounded step per commit).
fn process_batch(shared: &Shared, requests: Vec<WriteRequest>, log_start: Revision) -> Revision {
    let Some(files) = shared.files() else {
        for request in requests {
            request.refuse(StoreError::Closed);
        }
        return log_start;
    };
    let started = Instant::now();
    let (outcomes, eval, cleaned) = {
        let state = shared.state.read();
        let mut eval = BatchEval::new(shared, &files, View::committed(&state), state.revision);
        let outcomes: Vec<Outcome> = requests.into_iter().map(|r| eval.run(r)).collect();
        (outcomes, eval.finish(), state.durably_cleaned)
    };
    // The MVCC file recorded `cleaned` durably before the checkpointer published it, so
    // nothing below it is needed any more, even after a kill -9 (see `disk`).
    let trim = (cleaned > log_start).then(|| log_start..cleaned.min(log_start + TRIM_REVISIONS));
    let mut log_start = log_start;
    let batched_txns = outcomes.iter().filter(|o| o.is_txn()).count() as u64;
    shared.metrics.batched_txns.fetch_add(batched_txns, Ordering::Relaxed);

    if !eval.disk.is_empty() {
        if let Err(error) = disk::commit(&files.log, &eval.disk, trim.clone()) {
            tracing::error!(%error, requests = outcomes.len(), "store commit failed");
            let mut leases = shared.leases.lock();
            for id in &eval.expired {
                leases.retry_expiry(*id, Instant::now() + EXPIRY_RETRY);
            }
            drop(leases);
            shared.lease_changed.notify_one();
            for outcome in outcomes {
                outcome.fail(error.clone());
            }
            return log_start;
        }
        if let Some(trim) = trim {
            log_start = trim.end;
        }
        let latency = started.elapsed();
        shared.metrics.commits.fetch_add(1, Ordering::Relaxed);
        shared.metrics.last_commit_latency_ns.store(latency.as_nanos() as u64, Ordering::Relaxed);
        shared.metrics.txns_committed.fetch_add(eval.writing_txns, Ordering::Relaxed);
        apply(shared, &eval);
        shared.checkpoint_wake.notify_one();
    }
    for outcome in outcomes {
        outcome.answer();
    }
    if !eval.events.is_empty() {
        // No receiver (no watch) is not an error.
        let _ = shared.events.send(Arc::new(eval.events));
    }
    log_start
}

/// Applies a committed batch to the in-memory state and the lease table.
fn apply(shared: &Shared, eval: &crate::batch::Evaluated) {
    let now = Instant::now();
    let mut state = shared.state.write();
    let mut leases = shared.leases.lock();
    for (id, ttl) in &eval.disk.granted {
        leases.insert(*id, *ttl, now);
    }
    for (key, new) in &eval.overlay {
        // One lookup per key: the entry it replaces tells its old lease.
        let old = match new {
            Some(kv) => state.kvs.insert(key.clone(), Entry::new(kv, shared.is_cold(key))),
            None => state.kvs.remove(key),
        };
        let old_lease = old.as_ref().and_then(Entry::lease);
        let new_lease = new.as_ref().and_then(|kv| kv.lease);
        if old_lease == new_lease && new_lease.is_none() {
            continue;
        }
        if old_lease != new_lease {
            if let Some(entry) = old_lease.and_then(|id| leases.leases.get_mut(&id)) {
                entry.keys.remove(key);
            }
        }
        if let Some(entry) = new_lease.and_then(|id| leases.leases.get_mut(&id)) {
            entry.keys.insert(key.clone());
        }
    }
    for id in &eval.disk.removed_leases {
        leases.remove(*id);
    }
    debug_assert!(eval.disk.revision >= state.revision, "revisions only grow");
    state.revision = eval.disk.revision;
    drop(leases);
    drop(state);
    if !eval.disk.granted.is_empty() {
        shared.lease_changed.notify_one();
    }
}
