//! [`EmbeddedStore`]: the handle callers hold, its lifecycle (open, close), and the port's
//! implementation. Reads at the current revision and read-only transactions are answered
//! here from memory; everything that writes goes to the writer task.

#[cfg(test)]
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use sb_store::{
    KeyRange, LeaseGrant, LeaseId, LeaseInfo, Limits, OpResponse, RangeRequest, RangeResponse, Revision,
    Store, StoreError, StoreResult, Txn, TxnOp, TxnResponse, WatchRequest, WatchStream,
};
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};
use tokio::time::Instant;

use crate::checkpointer::{self, CheckpointRequest};
use crate::cold::{ColdLoader, ColdReader};
use crate::lease::{self, LeaseTable};
use crate::state::{Answer, View};
use crate::writer::{self, WriteRequest};
use crate::{disk, history, Counters, EmbeddedMetrics, EmbeddedOptions, Shared};

/// How many commits the event broadcast holds for watchers before a slow one lags (and
/// then catches up from the log). Tiny in unit tests, so they reach that path.
const EVENTS_CAPACITY: usize = if cfg!(test) { 4 } else { 1024 };

/// How many compaction requests wait for the checkpointer at most; callers then wait.
const CHECKPOINTER_QUEUE: usize = 16;

/// The embedded store. Open it with [`EmbeddedStore::open`]; it implements [`Store`].
pub struct EmbeddedStore {
    pub(crate) shared: Arc<Shared>,
    pub(crate) writer: mpsc::Sender<WriteRequest>,
    checkpointer: mpsc::Sender<CheckpointRequest>,
    shutdown: watch::Sender<bool>,
}

impl EmbeddedStore {
    /// Opens (or creates) the store files, rebuilds the current state in memory, and starts
    /// the writer, the checkpointer, the lease timer and automatic compaction.
    pub async fn open(options: EmbeddedOptions) -> StoreResult<Arc<EmbeddedStore>> {
        let (path, cache_bytes, cold) =
            (options.path.clone(), options.cache_bytes, options.cold_prefixes.clone());
        let loaded = tokio::task::spawn_blocking(move || disk::open(&path, cache_bytes, &cold))
            .await
            .map_err(|e| StoreError::Unavailable(format!("opening the store failed: {e}")))??;
        let now = Instant::now();
        let mut leases = LeaseTable::default();
        for (id, ttl) in &loaded.leases {
            leases.insert(*id, *ttl, now);
        }
        for (key, entry) in &loaded.state.kvs {
            let Some(id) = entry.lease() else { continue };
            match leases.leases.get_mut(&id) {
                Some(entry) => {
                    entry.keys.insert(key.clone());
                }
                None => tracing::warn!(lease = id.0, "key attached to a lease that is not stored"),
            }
        }
        tracing::info!(
            path = %options.path.display(),
            revision = loaded.state.revision,
            keys = loaded.state.kvs.len(),
            leases = leases.len(),
            "embedded store opened"
        );
        let (events, _) = broadcast::channel(EVENTS_CAPACITY);
        let queue = options.max_batch_txns.max(1) * 4;
        let shared = Arc::new(Shared {
            options,
            files: RwLock::new(Some(Arc::new(loaded.files))),
            state: RwLock::new(loaded.state),
            leases: Mutex::new(leases),
            lease_changed: Notify::new(),
            checkpoint_wake: Notify::new(),
            checkpointed: Notify::new(),
            #[cfg(test)]
            checkpoints_paused: AtomicBool::new(false),
            events,
            metrics: Counters::default(),
            closed: Default::default(),
        });
        let (writer_tx, writer_rx) = mpsc::channel(queue);
        let (checkpointer_tx, checkpointer_rx) = mpsc::channel(CHECKPOINTER_QUEUE);
        let (shutdown, shutdown_rx) = watch::channel(false);
        tokio::spawn(checkpointer::run_checkpointer(shared.clone(), checkpointer_rx));
        tokio::spawn(writer::run_writer(
            shared.clone(),
            writer_rx,
            checkpointer_tx.clone(),
            loaded.log_start,
        ));
        tokio::spawn(lease::run_expiry(shared.clone(), writer_tx.clone(), shutdown_rx.clone()));
        tokio::spawn(run_compactor(shared.clone(), checkpointer_tx.clone(), shutdown_rx));
        Ok(Arc::new(EmbeddedStore { shared, writer: writer_tx, checkpointer: checkpointer_tx, shutdown }))
    }

    pub fn metrics(&self) -> EmbeddedMetrics {
        let counters = &self.shared.metrics;
        let (current_revision, checkpointed_revision, compacted_revision, cleaned_revision) = {
            let state = self.shared.state.read();
            (state.revision, state.checkpointed, state.compacted, state.cleaned)
        };
        EmbeddedMetrics {
            commits: counters.commits.load(Ordering::Relaxed),
            txns_committed: counters.txns_committed.load(Ordering::Relaxed),
            batched_txns: counters.batched_txns.load(Ordering::Relaxed),
            checkpoints: counters.checkpoints.load(Ordering::Relaxed),
            backpressure_waits: counters.backpressure_waits.load(Ordering::Relaxed),
            compaction_steps: counters.compaction_steps.load(Ordering::Relaxed),
            last_commit_latency: Duration::from_nanos(
                counters.last_commit_latency_ns.load(Ordering::Relaxed),
            ),
            watchers: counters.watchers.load(Ordering::Relaxed),
            leases: self.shared.leases.lock().len() as u64,
            current_revision,
            checkpointed_revision,
            compacted_revision,
            cleaned_revision,
        }
    }

    /// Stops accepting requests, commits every request already queued, checkpoints, ends
    /// watches and releases the files. Every later call returns [`StoreError::Closed`].
    pub async fn close(&self) {
        if self.shared.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let (reply, done) = oneshot::channel();
        if self.writer.send(WriteRequest::Close { reply }).await.is_ok() {
            let _ = done.await;
        }
        let _ = self.shutdown.send(true);
        // Wait (bounded) for in-flight history reads to drop their handles, so the file is
        // released when close returns and can be opened again at once.
        let mut db = self.shared.files.write().take();
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Some(handle) = db.take() {
            match Arc::try_unwrap(handle) {
                Ok(database) => drop(database),
                Err(_) if Instant::now() >= deadline => {
                    tracing::warn!("store files still in use by a read after close");
                }
                Err(handle) => {
                    db = Some(handle);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        tracing::info!(path = %self.shared.options.path.display(), "embedded store closed");
    }

    /// Holds the checkpointer back (or lets it go), as a slow disk would.
    #[cfg(test)]
    pub(crate) fn pause_checkpoints(&self, paused: bool) {
        self.shared.checkpoints_paused.store(paused, Ordering::SeqCst);
        self.shared.checkpoint_wake.notify_one();
    }

    fn check_open(&self) -> StoreResult<()> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        Ok(())
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<StoreResult<T>>) -> WriteRequest,
    ) -> StoreResult<T> {
        self.check_open()?;
        let (reply, answer) = oneshot::channel();
        self.writer.send(make(reply)).await.map_err(|_| StoreError::Closed)?;
        answer.await.unwrap_or_else(|_| {
            Err(match self.shared.closed.load(Ordering::Acquire) {
                true => StoreError::Closed,
                false => StoreError::Unavailable("the store writer dropped the request".into()),
            })
        })
    }

    /// A transaction that cannot write, answered from memory under one read lock; cold
    /// values are read from the files after the lock is released.
    async fn read_only_txn(&self, txn: Txn) -> StoreResult<TxnResponse> {
        match self.read_only_txn_in_memory(&txn)? {
            ReadTxn::Done(response) => Ok(response),
            ReadTxn::Fill(mut response, answers, mut reader) => {
                run_blocking("reading cold values", move || {
                    for (index, answer) in answers {
                        response.responses[index] = OpResponse::Range(answer.fill(&mut *reader)?);
                    }
                    Ok(response)
                })
                .await
            }
            ReadTxn::ColdCompare => self.read_only_txn_from_files(txn).await,
        }
    }

    fn read_only_txn_in_memory(&self, txn: &Txn) -> StoreResult<ReadTxn> {
        let state = self.shared.state.read();
        let view = View::committed(&state);
        let mut succeeded = true;
        for compare in &txn.compares {
            match view.evaluate(compare, None)? {
                Some(true) => {}
                Some(false) => {
                    succeeded = false;
                    break;
                }
                None => return Ok(ReadTxn::ColdCompare),
            }
        }
        let ops = if succeeded { &txn.success } else { &txn.failure };
        let mut answers = Vec::new();
        let mut responses = Vec::new();
        for op in ops {
            let TxnOp::Range(request) = op else { continue };
            match view.answer(request, state.revision).in_memory() {
                Ok(range) => responses.push(OpResponse::Range(range)),
                Err(answer) => {
                    answers.push((responses.len(), answer));
                    responses.push(OpResponse::Range(RangeResponse::default()));
                }
            }
        }
        let response = TxnResponse { succeeded, revision: state.revision, responses };
        if answers.is_empty() {
            return Ok(ReadTxn::Done(response));
        }
        // The snapshots are taken under the lock, the reads after.
        Ok(ReadTxn::Fill(response, answers, Box::new(self.cold_reader()?)))
    }

    /// A read-only transaction with a compare on a cold value, evaluated on the blocking
    /// pool under the state's read lock (so the compare and the answers see one state).
    async fn read_only_txn_from_files(&self, txn: Txn) -> StoreResult<TxnResponse> {
        let shared = self.shared.clone();
        run_blocking("a transaction on cold values", move || {
            let files = shared.files().ok_or(StoreError::Closed)?;
            let state = shared.state.read();
            let view = View::committed(&state);
            let mut cold = ColdLoader::new(&files);
            let mut succeeded = true;
            for compare in &txn.compares {
                if view.evaluate(compare, Some(&mut cold))? != Some(true) {
                    succeeded = false;
                    break;
                }
            }
            let ops = if succeeded { &txn.success } else { &txn.failure };
            let mut responses = Vec::new();
            for op in ops {
                if let TxnOp::Range(request) = op {
                    responses.push(OpResponse::Range(view.answer(request, state.revision).fill(&mut cold)?));
                }
            }
            Ok(TxnResponse { succeeded, revision: state.revision, responses })
        })
        .await
    }

    /// Snapshots for reading cold values; call it holding the state's read lock (see
    /// `crate::cold`).
    fn cold_reader(&self) -> StoreResult<ColdReader> {
        ColdReader::open(&*self.shared.files().ok_or(StoreError::Closed)?)
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // The background tasks end, their writer handles drop, and the writer ends once it
        // has committed what is queued.
        self.shared.closed.store(true, Ordering::SeqCst);
        let _ = self.shutdown.send(true);
    }
}

/// A read-only transaction as memory answers it.
enum ReadTxn {
    Done(TxnResponse),
    /// Range answers (by index in the responses) still missing cold values.
    Fill(TxnResponse, Vec<(usize, Answer)>, Box<ColdReader>),
    /// A compare needs a cold value: evaluate on the blocking pool.
    ColdCompare,
}

/// Runs blocking store reads on the blocking pool.
async fn run_blocking<T: Send + 'static>(
    what: &str,
    job: impl FnOnce() -> StoreResult<T> + Send + 'static,
) -> StoreResult<T> {
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|e| StoreError::Unavailable(format!("{what} failed: {e}")))?
}

fn reads_history(txn: &Txn) -> bool {
    txn.success
        .iter()
        .chain(&txn.failure)
        .any(|op| matches!(op, TxnOp::Range(r) if r.revision.is_some_and(|r| r > 0)))
}

#[async_trait]
impl Store for EmbeddedStore {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn limits(&self) -> Limits {
        self.shared.options.limits
    }

    async fn range(&self, request: RangeRequest) -> StoreResult<RangeResponse> {
        self.check_open()?;
        if let KeyRange::Key(key) = &request.range {
            sb_store::check_key(key)?;
        }
        let past = {
            let state = self.shared.state.read();
            let current = state.revision;
            match request.revision.filter(|r| *r > 0 && *r != current) {
                None => match View::committed(&state).answer(&request, current).in_memory() {
                    Ok(response) => return Ok(response),
                    // Cold values: the snapshots are taken under the lock, the reads after.
                    Err(answer) => Err((answer, self.cold_reader()?)),
                },
                Some(r) if r > current => {
                    return Err(StoreError::FutureRevision { requested: r, current });
                }
                Some(r) if r < state.compacted => {
                    return Err(StoreError::Compacted { requested: r, compacted: Some(state.compacted) });
                }
                Some(r) => Ok((r, current)),
            }
        };
        let past = match past {
            Ok(past) => past,
            Err((answer, mut reader)) => {
                return run_blocking("reading cold values", move || answer.fill(&mut reader)).await;
            }
        };
        let files = self.shared.files().ok_or(StoreError::Closed)?;
        tokio::task::spawn_blocking(move || history::read_at(&files, &request, past.0, past.1))
            .await
            .map_err(|e| StoreError::Unavailable(format!("past-revision read failed: {e}")))?
    }

    async fn txn(&self, txn: Txn) -> StoreResult<TxnResponse> {
        self.check_open()?;
        self.shared.options.limits.check_txn(&txn)?;
        if !txn.has_writes() && !reads_history(&txn) {
            return self.read_only_txn(txn).await;
        }
        self.request(|reply| WriteRequest::Txn { txn, reply }).await
    }

    async fn lease_grant(&self, ttl_secs: i64) -> StoreResult<LeaseGrant> {
        let ttl_secs = sb_store::granted_ttl(ttl_secs)?;
        self.request(|reply| WriteRequest::LeaseGrant { ttl_secs, reply }).await
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> StoreResult<i64> {
        self.check_open()?;
        self.shared.leases.lock().keep_alive(id, Instant::now())
    }

    async fn lease_revoke(&self, id: LeaseId) -> StoreResult<()> {
        self.request(|reply| WriteRequest::LeaseRevoke { id, reply }).await
    }

    async fn lease_time_to_live(&self, id: LeaseId, with_keys: bool) -> StoreResult<LeaseInfo> {
        self.check_open()?;
        self.shared.leases.lock().info(id, with_keys, Instant::now())
    }

    async fn watch(&self, request: WatchRequest) -> StoreResult<WatchStream> {
        self.check_open()?;
        crate::watch::start(self.shared.clone(), request, self.shutdown.subscribe())
    }

    async fn compact(&self, revision: Revision) -> StoreResult<()> {
        self.check_open()?;
        let (reply, answer) = oneshot::channel();
        let request = CheckpointRequest::Compact { revision, reply: Some(reply) };
        self.checkpointer.send(request).await.map_err(|_| StoreError::Closed)?;
        answer.await.unwrap_or(Err(StoreError::Closed))
    }
}

/// Asks the checkpointer every `compaction_interval` for a bounded compaction step towards
/// `current - retention_revisions`, when that is above the compacted revision (under load,
/// every checkpoint compacts already). Freed pages are reused by redb, so the files stay
/// bounded.
async fn run_compactor(
    shared: Arc<Shared>,
    checkpointer: mpsc::Sender<CheckpointRequest>,
    mut shutdown: watch::Receiver<bool>,
) {
    let interval = shared.options.compaction_interval.max(Duration::from_millis(1));
    let retention = i64::try_from(shared.options.retention_revisions).unwrap_or(i64::MAX);
    let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        let (current, compacted) = {
            let state = shared.state.read();
            (state.revision, state.compacted)
        };
        let target = current.saturating_sub(retention);
        if target > compacted
            && checkpointer.send(CheckpointRequest::Compact { revision: target, reply: None }).await.is_err()
        {
            return;
        }
    }
}
