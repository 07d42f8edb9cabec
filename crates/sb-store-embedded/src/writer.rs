//! The writer: the one task that mutates the store, with group commit.
//!
//! Requests arrive through a bounded channel. The writer drains what is pending (up to
//! `max_batch_txns`), evaluates each request in order against the committed state plus
//! the batch's pending overlay ([`crate::batch`]), writes the batch in one durable redb
//! transaction, and only after the commit returns applies it to memory, answers every
//! request and publishes the events. Checkpoints (the log copied into the MVCC table),
//! compaction and close run between batches.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sb_store::{LeaseGrant, LeaseId, Revision, StoreError, StoreResult, Txn, TxnResponse};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::batch::{BatchEval, Outcome};
use crate::state::{MemState, View};
use crate::{disk, Shared};

/// How long an expiry that failed to commit waits before it is tried again.
const EXPIRY_RETRY: Duration = Duration::from_secs(1);

/// How many records one checkpoint moves at most (whole revisions, so it may go over).
/// Requests wait while a checkpoint runs, so this bounds that wait (a few ms); a checkpoint
/// that has more to move runs again after the next batch.
const CHECKPOINT_RECORDS: usize = 1024;

/// How many log records one automatic compaction step reads at most (whole revisions, so
/// it may go over); it runs in the same transaction as a checkpoint, so this bounds that
/// transaction's extra work. As large as the checkpoint's budget, so compaction keeps pace
/// with the revisions the checkpoint moves.
const COMPACT_RECORDS: usize = 1024;

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
    Compact {
        revision: Revision,
        reply: Option<oneshot::Sender<StoreResult<()>>>,
    },
    /// Commit what came before, answer, then refuse everything after.
    Close {
        reply: oneshot::Sender<()>,
    },
}

impl WriteRequest {
    fn is_control(&self) -> bool {
        matches!(self, WriteRequest::Compact { .. } | WriteRequest::Close { .. })
    }

    /// Answers the request with an error without running it.
    pub(crate) fn refuse(self, error: StoreError) {
        match self {
            WriteRequest::Txn { reply, .. } => drop(reply.send(Err(error))),
            WriteRequest::LeaseGrant { reply, .. } => drop(reply.send(Err(error))),
            WriteRequest::LeaseRevoke { reply, .. } => drop(reply.send(Err(error))),
            WriteRequest::Compact { reply: Some(reply), .. } => drop(reply.send(Err(error))),
            WriteRequest::Compact { reply: None, .. } | WriteRequest::LeaseExpire { .. } => {}
            WriteRequest::Close { reply } => drop(reply.send(())),
        }
    }
}

pub(crate) async fn run_writer(shared: Arc<Shared>, mut requests: mpsc::Receiver<WriteRequest>) {
    let max_batch = shared.options.max_batch_txns.max(1);
    let mut clock = MaintenanceClock::default();
    loop {
        let first = match clock.deadline(&shared) {
            // Something waits for a checkpoint or a compaction step: take requests until
            // it is due.
            Some(deadline) => tokio::select! {
                request = requests.recv() => request,
                _ = tokio::time::sleep_until(deadline) => {
                    run_maintenance(&shared, &mut clock, true).await;
                    continue;
                }
            },
            None => requests.recv().await,
        };
        // Every sender is gone: the store was dropped without close.
        let Some(first) = first else { break };
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
            let shared = shared.clone();
            // A panic while processing drops the batch's reply senders (the callers see
            // `Unavailable`); the writer itself carries on.
            if let Err(error) = tokio::task::spawn_blocking(move || process_batch(&shared, batch)).await {
                tracing::error!(%error, "store batch failed");
            }
        }
        if clock.is_due(&shared) {
            run_maintenance(&shared, &mut clock, true).await;
        }
        match control {
            // The timer: one bounded step, which moves the compacted revision to its target
            // even when nothing waits for a checkpoint.
            Some(WriteRequest::Compact { reply: None, .. }) => {
                run_maintenance(&shared, &mut clock, true).await;
            }
            Some(WriteRequest::Compact { revision, reply: Some(reply) }) => {
                let shared = shared.clone();
                let result = tokio::task::spawn_blocking(move || compact(&shared, revision))
                    .await
                    .unwrap_or_else(|e| Err(StoreError::Unavailable(format!("compaction failed: {e}"))));
                clock.caught_up();
                if let Err(error) = &result {
                    tracing::debug!(revision, %error, "compaction refused or failed");
                }
                let _ = reply.send(result);
            }
            Some(WriteRequest::Close { reply }) => {
                checkpoint_everything(&shared, &mut clock).await;
                requests.close();
                while let Some(request) = requests.recv().await {
                    request.refuse(StoreError::Closed);
                }
                let _ = reply.send(());
                return;
            }
            _ => {}
        }
    }
    checkpoint_everything(&shared, &mut clock).await;
}

/// Automatic compaction as the next maintenance step applies it: the compacted revision
/// follows `current - retention_revisions` at every checkpoint, so history stays bounded
/// by the retention however fast revisions come (the timer alone would let a busy store
/// grow for a whole `compaction_interval`), and the cleanup walk trails it by another
/// retention.
fn compaction(state: &MemState, retention: u64) -> disk::Compaction {
    disk::Compaction {
        target: state.revision.saturating_sub(i64::try_from(retention).unwrap_or(i64::MAX)),
        walk_lag: retention,
        walk_min: walk_min(retention),
        walk_records: COMPACT_RECORDS,
    }
}

/// How far the compacted revision or the cleanup walk must trail before a step runs just
/// for them (without anything to checkpoint).
fn walk_min(retention: u64) -> u64 {
    (retention / 16).clamp(1, COMPACT_RECORDS as u64)
}

/// Whether a maintenance step is due for compaction alone.
fn compaction_due(shared: &Shared) -> bool {
    let retention = shared.options.retention_revisions;
    let state = shared.state.read();
    let step = compaction(&state, retention);
    let trails = |behind: Revision| u64::try_from(behind).is_ok_and(|behind| behind >= step.walk_min);
    let walk_to = state.compacted.saturating_sub(i64::try_from(step.walk_lag).unwrap_or(i64::MAX));
    (trails(step.target - state.compacted) && state.compacted < state.checkpointed)
        || trails(walk_to - state.cleaned)
}

/// When the writer runs a maintenance step (a bounded checkpoint, and a bounded compaction
/// step when one is due): once the oldest revision not yet checkpointed has waited
/// `checkpoint_interval`, as soon as `checkpoint_revisions` are pending, or as soon as a
/// compaction step is due; then after every batch until nothing is pending.
#[derive(Default)]
struct MaintenanceClock {
    /// When the oldest pending revision was committed, as far as the writer knows.
    pending_since: Option<Instant>,
    /// After a failed step: nothing runs before this.
    retry_at: Option<Instant>,
}

impl MaintenanceClock {
    fn pending(shared: &Shared) -> u64 {
        let state = shared.state.read();
        u64::try_from(state.revision - state.checkpointed).unwrap_or(0)
    }

    /// When the next step is due; `None` when nothing is pending.
    fn deadline(&mut self, shared: &Shared) -> Option<Instant> {
        let checkpoint = if Self::pending(shared) == 0 {
            self.pending_since = None;
            None
        } else {
            let since = *self.pending_since.get_or_insert_with(Instant::now);
            Some(since + shared.options.checkpoint_interval)
        };
        let compaction = compaction_due(shared).then(Instant::now);
        let deadline = match (checkpoint, compaction) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        deadline.map(|deadline| self.retry_at.map_or(deadline, |retry| deadline.max(retry)))
    }

    fn is_due(&mut self, shared: &Shared) -> bool {
        let now = Instant::now();
        if self.retry_at.is_some_and(|retry| retry > now) {
            return false;
        }
        Self::pending(shared) >= shared.options.checkpoint_revisions.max(1)
            || self.deadline(shared).is_some_and(|deadline| deadline <= now)
    }

    /// Everything pending was checkpointed.
    fn caught_up(&mut self) {
        self.pending_since = None;
    }

    fn succeeded(&mut self) {
        self.retry_at = None;
    }

    /// A step failed: try again one interval later.
    fn failed(&mut self, shared: &Shared) {
        self.retry_at = Some(Instant::now() + shared.options.checkpoint_interval);
    }
}

fn compaction_policy(shared: &Shared) -> disk::Compaction {
    compaction(&shared.state.read(), shared.options.retention_revisions)
}

/// Runs one maintenance step: a bounded checkpoint and, with `compaction` and when one is
/// due, a bounded compaction step, in one durable transaction. Returns whether more is
/// pending for the checkpoint (false on an error too).
async fn run_maintenance(shared: &Arc<Shared>, clock: &mut MaintenanceClock, compaction: bool) -> bool {
    let Some(db) = shared.db() else { return false };
    let step = compaction.then(|| compaction_policy(shared));
    let result = tokio::task::spawn_blocking(move || disk::maintain(&db, CHECKPOINT_RECORDS, step))
        .await
        .unwrap_or_else(|e| Err(StoreError::Unavailable(format!("checkpoint failed: {e}"))));
    match result {
        Ok(done) => {
            record_checkpoint(shared, done.checkpoint);
            let mut state = shared.state.write();
            if done.compacted > state.compacted || done.cleaned > state.cleaned {
                shared.metrics.compaction_steps.fetch_add(1, Ordering::Relaxed);
                state.compacted = state.compacted.max(done.compacted);
                state.cleaned = state.cleaned.max(done.cleaned);
            }
            drop(state);
            if !done.checkpoint.more {
                clock.caught_up();
            }
            clock.succeeded();
            done.checkpoint.more
        }
        Err(error) => {
            // Nothing is lost: the log holds every acknowledged revision, and reads merge it.
            tracing::warn!(%error, "store checkpoint failed, will retry");
            clock.failed(shared);
            false
        }
    }
}

/// Before the store closes, so the next open has nothing to replay.
async fn checkpoint_everything(shared: &Arc<Shared>, clock: &mut MaintenanceClock) {
    while run_maintenance(shared, clock, false).await {}
}

fn record_checkpoint(shared: &Shared, checkpoint: disk::Checkpoint) {
    if checkpoint.moved {
        shared.metrics.checkpoints.fetch_add(1, Ordering::Relaxed);
    }
    let mut state = shared.state.write();
    debug_assert!(checkpoint.checkpointed <= state.revision, "the checkpoint never passes the revision");
    state.checkpointed = state.checkpointed.max(checkpoint.checkpointed);
}

fn compact(shared: &Shared, revision: Revision) -> StoreResult<()> {
    let (current, compacted) = {
        let state = shared.state.read();
        (state.revision, state.compacted)
    };
    if revision > current {
        return Err(StoreError::FutureRevision { requested: revision, current });
    }
    if revision <= compacted {
        return Err(StoreError::Compacted { requested: revision, compacted: Some(compacted) });
    }
    let db = shared.db().ok_or(StoreError::Closed)?;
    record_checkpoint(shared, disk::compact(&db, revision)?);
    let mut state = shared.state.write();
    state.compacted = state.compacted.max(revision);
    state.cleaned = state.cleaned.max(revision);
    drop(state);
    tracing::info!(revision, "store compacted");
    Ok(())
}

fn process_batch(shared: &Shared, requests: Vec<WriteRequest>) {
    let Some(db) = shared.db() else {
        for request in requests {
            request.refuse(StoreError::Closed);
        }
        return;
    };
    let started = Instant::now();
    let (outcomes, eval) = {
        let state = shared.state.read();
        let mut eval = BatchEval::new(shared, View::committed(&state), state.revision);
        let outcomes: Vec<Outcome> = requests.into_iter().map(|r| eval.run(r)).collect();
        (outcomes, eval.finish())
    };
    let batched_txns = outcomes.iter().filter(|o| o.is_txn()).count() as u64;
    shared.metrics.batched_txns.fetch_add(batched_txns, Ordering::Relaxed);

    if !eval.disk.is_empty() {
        if let Err(error) = disk::commit(&db, &eval.disk) {
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
            return;
        }
        let latency = started.elapsed();
        shared.metrics.commits.fetch_add(1, Ordering::Relaxed);
        shared.metrics.last_commit_latency_ns.store(latency.as_nanos() as u64, Ordering::Relaxed);
        shared.metrics.txns_committed.fetch_add(eval.writing_txns, Ordering::Relaxed);
        apply(shared, &eval);
    }
    for outcome in outcomes {
        outcome.answer();
    }
    if !eval.events.is_empty() {
        // No receiver (no watch) is not an error.
        let _ = shared.events.send(Arc::new(eval.events));
    }
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
        let old_lease = state.kvs.get(key).and_then(|kv| kv.lease);
        let new_lease = new.as_ref().and_then(|kv| kv.lease);
        if old_lease != new_lease {
            if let Some(entry) = old_lease.and_then(|id| leases.leases.get_mut(&id)) {
                entry.keys.remove(key);
            }
        }
        if let Some(entry) = new_lease.and_then(|id| leases.leases.get_mut(&id)) {
            entry.keys.insert(key.clone());
        }
        match new {
            Some(kv) => state.kvs.insert(key.clone(), kv.clone()),
            None => state.kvs.remove(key),
        };
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
