//! The checkpointer: the one task that writes the MVCC file. It copies the log into the
//! MVCC table in bounded steps, runs automatic compaction with them, and serves explicit
//! compaction. It holds the MVCC file's write lock and reads the log file through read
//! transactions, so the writer's group commits (in the log file) never wait for it: they
//! only wait when it falls `max_log_lag` revisions behind (backpressure, in the writer).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use sb_store::{Revision, StoreError, StoreResult};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::state::MemState;
use crate::{disk, Shared};

/// How many records one checkpoint moves at most (whole revisions, so it may go over).
/// Group commits no longer wait for a checkpoint, so this only bounds one step's memory
/// and how long a compaction request or close waits for the step in flight; larger steps
/// pay the MVCC commit (its fsync and page writes) for more records.
const CHECKPOINT_RECORDS: usize = 4096;

/// How many log records one automatic compaction step reads at most (whole revisions, so
/// it may go over); it runs in the same transaction as a checkpoint. As large as the
/// checkpoint's budget, so compaction keeps pace with the revisions the checkpoint moves.
const COMPACT_RECORDS: usize = CHECKPOINT_RECORDS;

/// How long the checkpointer pauses after a due step that found nothing to do.
const IDLE_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

pub(crate) enum CheckpointRequest {
    /// From the compaction timer (`reply: None`: one bounded step towards the retention
    /// target) or from `Store::compact`.
    Compact { revision: Revision, reply: Option<oneshot::Sender<StoreResult<()>>> },
    /// From the writer, once it has committed its last batch: checkpoint everything,
    /// answer, then refuse everything after.
    Close { reply: oneshot::Sender<()> },
}

impl CheckpointRequest {
    fn refuse(self, error: StoreError) {
        match self {
            CheckpointRequest::Compact { reply: Some(reply), .. } => drop(reply.send(Err(error))),
            CheckpointRequest::Compact { reply: None, .. } => {}
            CheckpointRequest::Close { reply } => drop(reply.send(())),
        }
    }
}

pub(crate) async fn run_checkpointer(shared: Arc<Shared>, mut requests: mpsc::Receiver<CheckpointRequest>) {
    let mut clock = MaintenanceClock::default();
    loop {
        let request = if clock.is_due(&shared) {
            // Work is due: take a request only if one is waiting, so that compaction
            // requests and close are served between steps even under sustained load.
            match requests.try_recv() {
                Ok(request) => Some(request),
                Err(mpsc::error::TryRecvError::Empty) => None,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            }
        } else {
            let wake = shared.checkpoint_wake.notified();
            match clock.deadline(&shared, Instant::now()) {
                Some(deadline) => tokio::select! {
                    request = requests.recv() => match request {
                        Some(request) => Some(request),
                        None => break,
                    },
                    _ = wake => None,
                    _ = tokio::time::sleep_until(deadline) => None,
                },
                None => tokio::select! {
                    request = requests.recv() => match request {
                        Some(request) => Some(request),
                        None => break,
                    },
                    _ = wake => None,
                },
            }
        };
        match request {
            Some(CheckpointRequest::Compact { reply: None, .. }) => {
                run_maintenance(&shared, &mut clock, true, false).await;
            }
            Some(CheckpointRequest::Compact { revision, reply: Some(reply) }) => {
                let job = shared.clone();
                let result = tokio::task::spawn_blocking(move || compact(&job, revision))
                    .await
                    .unwrap_or_else(|e| Err(StoreError::Unavailable(format!("compaction failed: {e}"))));
                if result.is_ok() {
                    // Its commit is durable, and so are the ones before it.
                    clock.durable(Instant::now());
                }
                clock.caught_up();
                shared.checkpointed.notify_waiters();
                if let Err(error) = &result {
                    tracing::debug!(revision, %error, "compaction refused or failed");
                }
                let _ = reply.send(result);
            }
            Some(CheckpointRequest::Close { reply }) => {
                checkpoint_everything(&shared, &mut clock).await;
                requests.close();
                while let Some(request) = requests.recv().await {
                    request.refuse(StoreError::Closed);
                }
                let _ = reply.send(());
                return;
            }
            None => {}
        }
        if clock.is_due(&shared) && !run_maintenance(&shared, &mut clock, true, false).await {
            // Nothing moved although a step was due: wait for news rather than spin.
            clock.idle(&shared);
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

/// When the checkpointer runs a maintenance step (a bounded checkpoint, and a bounded
/// compaction step when one is due): once the oldest revision not yet checkpointed has
/// waited `checkpoint_interval`, as soon as `checkpoint_revisions` (or `max_log_lag`, for
/// a writer held back) are pending, or as soon as a compaction step is due; then step
/// after step until nothing is pending.
#[derive(Default)]
struct MaintenanceClock {
    /// When the oldest pending revision was committed, as far as the checkpointer knows.
    pending_since: Option<Instant>,
    /// After a failed step: nothing runs before this.
    retry_at: Option<Instant>,
    /// When the MVCC file last committed durably (`None`: not since the start).
    durable_at: Option<Instant>,
    /// Whether a step committed without an fsync since then.
    non_durable: bool,
}

impl MaintenanceClock {
    fn pending(shared: &Shared) -> u64 {
        let state = shared.state.read();
        u64::try_from(state.revision - state.checkpointed).unwrap_or(0)
    }

    /// When the next step is due; `None` when nothing is pending.
    fn deadline(&mut self, shared: &Shared, now: Instant) -> Option<Instant> {
        let checkpoint = if Self::pending(shared) == 0 {
            self.pending_since = None;
            None
        } else {
            let since = *self.pending_since.get_or_insert(now);
            Some(since + shared.options.checkpoint_interval)
        };
        let compaction = compaction_due(shared).then_some(now);
        let deadline = match (checkpoint, compaction) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // Non-durable commits pending: a durable step is due after `checkpoint_sync_interval`, even
        // when nothing else is.
        let durable = self.non_durable.then(|| self.durable_deadline(shared, now));
        let deadline = match (deadline, durable) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        deadline.map(|deadline| self.retry_at.map_or(deadline, |retry| deadline.max(retry)))
    }

    fn is_due(&mut self, shared: &Shared) -> bool {
        #[cfg(test)]
        if shared.checkpoints_paused.load(std::sync::atomic::Ordering::SeqCst) {
            return false;
        }
        let now = Instant::now();
        if self.retry_at.is_some_and(|retry| retry > now) {
            return false;
        }
        let threshold = shared.options.checkpoint_revisions.min(shared.options.max_log_lag).max(1);
        Self::pending(shared) >= threshold
            || self.deadline(shared, now).is_some_and(|deadline| deadline <= now)
    }

    /// When the next step must commit durably: `checkpoint_sync_interval` after the last
    /// durable commit.
    fn durable_deadline(&self, shared: &Shared, now: Instant) -> Instant {
        self.durable_at.map_or(now, |at| at + shared.options.checkpoint_sync_interval)
    }

    /// Whether the next step commits durably.
    fn durable_due(&self, shared: &Shared, now: Instant) -> bool {
        self.durable_deadline(shared, now) <= now
    }

    /// The MVCC file committed durably at `now`.
    fn durable(&mut self, now: Instant) {
        self.durable_at = Some(now);
        self.non_durable = false;
    }

    /// A due step did nothing: look again a little later rather than spin.
    fn idle(&mut self, shared: &Shared) {
        let pause = shared.options.checkpoint_interval.min(IDLE_PAUSE);
        self.retry_at = Some(Instant::now() + pause);
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
/// due, a bounded compaction step, in one transaction of the MVCC file, durable once
/// `checkpoint_sync_interval` passed since the last durable one, or with `durable`. Returns
/// whether it moved anything (false on an error too).
async fn run_maintenance(
    shared: &Arc<Shared>,
    clock: &mut MaintenanceClock,
    compaction: bool,
    durable: bool,
) -> bool {
    let Some(files) = shared.files() else { return false };
    let step = compaction.then(|| compaction_policy(shared));
    let durable = durable || clock.durable_due(shared, Instant::now());
    let result =
        tokio::task::spawn_blocking(move || disk::maintain(&files, CHECKPOINT_RECORDS, step, durable))
            .await
            .unwrap_or_else(|e| Err(StoreError::Unavailable(format!("checkpoint failed: {e}"))));
    match result {
        Ok(done) => {
            record_checkpoint(shared, done.checkpoint);
            let mut state = shared.state.write();
            let compacted = done.compacted > state.compacted || done.cleaned > state.cleaned;
            if compacted {
                shared.metrics.compaction_steps.fetch_add(1, Ordering::Relaxed);
                state.compacted = state.compacted.max(done.compacted);
                state.cleaned = state.cleaned.max(done.cleaned);
            }
            if done.durable {
                // The log may go below what this commit cleaned, and no further.
                state.durably_cleaned = state.durably_cleaned.max(done.cleaned);
            }
            drop(state);
            if done.durable {
                clock.durable(Instant::now());
            } else if done.checkpoint.moved || compacted {
                clock.non_durable = true;
            }
            shared.checkpointed.notify_waiters();
            if !done.checkpoint.more {
                clock.caught_up();
            }
            clock.succeeded();
            done.checkpoint.moved || compacted
        }
        Err(error) => {
            // Nothing is lost: the log holds every acknowledged revision, and reads merge it.
            tracing::warn!(%error, "store checkpoint failed, will retry");
            clock.failed(shared);
            false
        }
    }
}

/// Before the store closes, so the next open has nothing to replay: the last step is
/// durable, and with it every step before.
async fn checkpoint_everything(shared: &Arc<Shared>, clock: &mut MaintenanceClock) {
    while MaintenanceClock::pending(shared) > 0 && run_maintenance(shared, clock, false, false).await {}
    run_maintenance(shared, clock, false, true).await;
}

fn record_checkpoint(shared: &Shared, checkpoint: disk::Checkpoint) {
    if checkpoint.moved {
        shared.metrics.checkpoints.fetch_add(1, Ordering::Relaxed);
    }
    let mut state = shared.state.write();
    // The checkpoint may include a commit that is in the log but whose in-memory apply has
    // not happened yet (the writer appends, then applies), so `checkpointed` may briefly
    // pass `revision`. That is harmless: every revision up to it is in the MVCC table, reads
    // never ask above `revision`, and the lag saturates at 0.
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
    let files = shared.files().ok_or(StoreError::Closed)?;
    record_checkpoint(shared, disk::compact(&files, revision)?);
    let mut state = shared.state.write();
    state.compacted = state.compacted.max(revision);
    state.cleaned = state.cleaned.max(revision);
    // `disk::compact` commits durably.
    state.durably_cleaned = state.durably_cleaned.max(revision);
    drop(state);
    tracing::info!(revision, "store compacted");
    Ok(())
}
