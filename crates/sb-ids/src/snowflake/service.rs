//! The Snowflake service: the hot path (`generator`) plus the slow path that moves its
//! bounds, and a keeper task that keeps the worker lease alive and the mark ahead.
//!
//! Invariants, in the order they protect uniqueness:
//! 1. Every issued timestamp is below the worker's *persisted* mark (the limit is raised
//!    only after the higher mark committed).
//! 2. Taking a worker reads its mark in the same transaction, and issues only at or above
//!    it: a restart, a takeover or another node cannot repeat an ID.
//! 3. A clock behind the last issued timestamp by up to [`MAX_CLOCK_WAIT_MS`] is waited out;
//!    further behind, the node takes a fresh worker whose mark is at or below its clock, or
//!    refuses with an explicit error (and counts it). It never issues a duplicate.
//! 4. Issuing stops once the worker lease has gone unconfirmed for most of its TTL, before
//!    it could have expired unnoticed (a partition).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use sb_store::{LeaseId, SharedStore, StoreError};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::generator::{Generator, Stop};
use super::layout::{Layout, MAX_WORKERS};
use super::workers::{self, WorkerRecord};
use crate::clock::WallClock;
use crate::error::{bounded, IdError, IdResult, STORE_CALL_TIMEOUT};
use crate::names::MAX_COUNT;

/// A clock step backwards up to this is waited out; a larger one takes a fresh worker.
pub const MAX_CLOCK_WAIT_MS: u64 = 5;
/// Attempts of one request through the slow path before it gives up (explicitly).
const MAX_ATTEMPTS: usize = 16;
/// After a failed search for a free worker, requests refuse at once for this long instead
/// of reading the pool again.
const FAILED_TAKE_BACKOFF_MS: u64 = 200;

#[derive(Clone, Debug)]
pub struct SnowflakeOptions {
    /// Recorded in the worker key, for operators.
    pub node_id: String,
    pub layout: Layout,
    /// Worker ids `0..workers` are used (at most 1,024).
    pub workers: u16,
    pub worker_ttl_secs: i64,
    /// How far ahead of the clock the high-water mark is persisted.
    pub watermark_ahead_ms: u64,
}

impl SnowflakeOptions {
    pub fn new(node_id: impl Into<String>) -> Self {
        SnowflakeOptions {
            node_id: node_id.into(),
            layout: Layout::default(),
            workers: MAX_WORKERS,
            worker_ttl_secs: 10,
            watermark_ahead_ms: 3_000,
        }
    }
}

/// Counters for metrics, read at each scrape.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnowflakeStats {
    pub issued: u64,
    pub clock_waits: u64,
    pub worker_switches: u64,
    pub refused_no_free_worker: u64,
    pub refused_lease_unconfirmed: u64,
    pub refused_other: u64,
    pub watermark_writes: u64,
    /// The worker id held now.
    pub worker: Option<u16>,
}

#[derive(Default)]
struct Counters {
    issued: AtomicU64,
    clock_waits: AtomicU64,
    worker_switches: AtomicU64,
    refused_no_free_worker: AtomicU64,
    refused_lease_unconfirmed: AtomicU64,
    refused_other: AtomicU64,
    watermark_writes: AtomicU64,
}

/// The slow path's state; one holder at a time.
struct Slow {
    lease: Option<LeaseId>,
    worker: Option<u16>,
    /// The persisted mark of `worker`, Unix ms.
    mark_ms: u64,
    /// Monotonic ms of the last search for a free worker that found none.
    last_failed_take_ms: Option<u64>,
    /// Set by `stop`: no worker is taken again.
    stopped: bool,
}

struct Inner {
    store: SharedStore,
    options: SnowflakeOptions,
    generator: Generator,
    slow: Mutex<Slow>,
    counters: Counters,
}

pub struct SnowflakeService {
    inner: Arc<Inner>,
    keeper: JoinHandle<()>,
}

impl Drop for SnowflakeService {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

impl SnowflakeService {
    /// Checks the epoch, takes a worker (or keeps trying in the background) and starts
    /// the keeper.
    pub async fn start(
        store: SharedStore,
        mut options: SnowflakeOptions,
        clock: Arc<dyn WallClock>,
    ) -> IdResult<SnowflakeService> {
        if options.workers == 0 || options.workers > MAX_WORKERS {
            return Err(IdError::invalid(
                "workers",
                format!("the worker pool is {}, must be 1 to {MAX_WORKERS}", options.workers),
            ));
        }
        options.worker_ttl_secs = sb_store::granted_ttl(options.worker_ttl_secs)?;
        options.watermark_ahead_ms = options.watermark_ahead_ms.max(100);
        workers::check_epoch(&store, options.layout.epoch_ms).await?;
        let generator = Generator::new(options.layout, clock);
        if let Err(now_ms) = generator.now_elapsed() {
            return Err(IdError::invalid(
                "epoch",
                format!(
                    "the clock ({now_ms} ms) is outside the 41 bits after the epoch {} ms",
                    options.layout.epoch_ms
                ),
            ));
        }
        let inner = Arc::new(Inner {
            store,
            options,
            generator,
            slow: Mutex::new(Slow {
                lease: None,
                worker: None,
                mark_ms: 0,
                last_failed_take_ms: None,
                stopped: false,
            }),
            counters: Counters::default(),
        });
        {
            let mut slow = inner.slow.lock().await;
            match inner.take_worker(&mut slow, None).await {
                Ok(true) => {}
                Ok(false) => warn!("no Snowflake worker id is free yet; retrying in the background"),
                Err(error) => {
                    warn!(%error, "taking a Snowflake worker id failed; retrying in the background")
                }
            }
        }
        let keeper = tokio::spawn(keep(Arc::downgrade(&inner)));
        Ok(SnowflakeService { inner, keeper })
    }

    pub fn layout(&self) -> Layout {
        self.inner.options.layout
    }

    /// `count` new IDs (1 to 10,000), increasing. An error is explicit: no ID is ever
    /// issued that could repeat one.
    pub async fn next_ids(&self, count: usize) -> IdResult<Vec<u64>> {
        let mut out = Vec::with_capacity(count);
        self.fill(&mut out, count).await?;
        Ok(out)
    }

    /// Appends `count` increasing IDs to `out` (the bench's allocation-free form of
    /// [`Self::next_ids`]); on an error, `out` is left as it was.
    pub async fn fill(&self, out: &mut Vec<u64>, count: usize) -> IdResult<()> {
        if count == 0 || count as u64 > MAX_COUNT {
            return Err(IdError::invalid(
                "count",
                format!("count is {count}, must be from 1 to {MAX_COUNT}"),
            ));
        }
        let start = out.len();
        let result = self.fill_from(out, start, count).await;
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    async fn fill_from(&self, out: &mut Vec<u64>, start: usize, count: usize) -> IdResult<()> {
        let inner = &self.inner;
        let want = start + count;
        for _ in 0..MAX_ATTEMPTS {
            let stop = match inner.generator.fill(out, want) {
                Ok(()) => {
                    inner.counters.issued.fetch_add(count as u64, Ordering::Relaxed);
                    return Ok(());
                }
                Err(stop) => stop,
            };
            match stop {
                Stop::Behind { by_ms } if by_ms <= MAX_CLOCK_WAIT_MS => {
                    inner.counters.clock_waits.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(by_ms)).await;
                }
                Stop::LimitReached => slow_path(inner.renew(true)).await?,
                // The worker may change: start the batch again, so it stays increasing
                // (the IDs dropped are a gap, never a duplicate).
                Stop::Behind { by_ms } => {
                    out.truncate(start);
                    slow_path(inner.clock_stepped_back(by_ms)).await?
                }
                Stop::NoWorker => {
                    out.truncate(start);
                    slow_path(inner.ensure_worker()).await?
                }
                Stop::LeaseUnconfirmed { .. } if inner.generator.held().is_none() => {
                    out.truncate(start);
                    slow_path(inner.ensure_worker()).await?
                }
                Stop::LeaseUnconfirmed { since_confirmed_ms } => {
                    inner.counters.refused_lease_unconfirmed.fetch_add(1, Ordering::Relaxed);
                    return Err(IdError::Refused(format!(
                        "the Snowflake worker lease has not been confirmed by the store for {} ms past the safe part of its {} s TTL; \
                         IDs stop before the lease could expire unnoticed (is the store reachable?)",
                        since_confirmed_ms, inner.options.worker_ttl_secs
                    )));
                }
                Stop::OutOfRange { now_ms } => {
                    inner.counters.refused_other.fetch_add(1, Ordering::Relaxed);
                    return Err(IdError::Refused(format!(
                        "the clock ({now_ms} ms) is outside the 41 bits of milliseconds after the epoch {} ms",
                        inner.options.layout.epoch_ms
                    )));
                }
            }
        }
        inner.counters.refused_other.fetch_add(1, Ordering::Relaxed);
        Err(IdError::Refused(format!(
            "no Snowflake ID could be issued after {MAX_ATTEMPTS} attempts (the clock or the worker changed under the request); retry"
        )))
    }

    pub fn stats(&self) -> SnowflakeStats {
        let c = &self.inner.counters;
        SnowflakeStats {
            issued: c.issued.load(Ordering::Relaxed),
            clock_waits: c.clock_waits.load(Ordering::Relaxed),
            worker_switches: c.worker_switches.load(Ordering::Relaxed),
            refused_no_free_worker: c.refused_no_free_worker.load(Ordering::Relaxed),
            refused_lease_unconfirmed: c.refused_lease_unconfirmed.load(Ordering::Relaxed),
            refused_other: c.refused_other.load(Ordering::Relaxed),
            watermark_writes: c.watermark_writes.load(Ordering::Relaxed),
            worker: self.inner.generator.held().map(|(worker, _)| worker),
        }
    }

    /// Stops issuing and gives the worker id back at once (its mark stays). Requests
    /// after this are refused explicitly.
    pub async fn stop(&self) {
        self.keeper.abort();
        let mut slow = self.inner.slow.lock().await;
        slow.stopped = true;
        self.inner.generator.revoke();
        if let Some(lease) = slow.lease.take() {
            if let Err(error) = bounded("the lease revoke", self.inner.store.lease_revoke(lease)).await {
                warn!(%error, "the Snowflake worker lease could not be revoked; it expires by itself");
            }
        }
        slow.worker = None;
    }
}

impl Inner {
    fn ttl_ms(&self) -> u64 {
        self.options.worker_ttl_secs as u64 * 1000
    }

    /// Issuing stops this long after a keep-alive was *sent*: the lease cannot expire
    /// before its TTL counted from then.
    fn confirmed_window_ms(&self) -> u64 {
        let ttl = self.ttl_ms();
        ttl - (ttl / 4).max(500).min(ttl / 2)
    }

    fn refuse_no_worker(&self, why: &str) -> IdError {
        self.counters.refused_no_free_worker.fetch_add(1, Ordering::Relaxed);
        IdError::Refused(format!(
            "{why}, and no Snowflake worker id of the {} is free with a high-water mark at or below this node's clock; \
             refusing rather than risking a duplicate (retry later, or raise --ids-workers)",
            self.options.workers
        ))
    }

    async fn ensure_lease(&self, slow: &mut Slow) -> IdResult<LeaseId> {
        if let Some(lease) = slow.lease {
            return Ok(lease);
        }
        let sent = self.generator.monotonic_ms();
        let grant = bounded("the lease grant", self.store.lease_grant(self.options.worker_ttl_secs)).await?;
        self.generator.reset_lease_deadline();
        self.generator.confirm_lease_until(sent + self.confirmed_window_ms());
        slow.lease = Some(grant.id);
        Ok(grant.id)
    }

    /// Takes a free worker whose mark is at or below the clock (other than `exclude`) and
    /// installs it. `Ok(false)` when none is free.
    async fn take_worker(&self, slow: &mut Slow, exclude: Option<u16>) -> IdResult<bool> {
        if slow.stopped {
            return Err(IdError::Refused("the Snowflake service is stopping".into()));
        }
        let monotonic = self.generator.monotonic_ms();
        if slow.last_failed_take_ms.is_some_and(|at| monotonic < at + FAILED_TAKE_BACKOFF_MS) {
            return Ok(false);
        }
        let lease = self.ensure_lease(slow).await?;
        let epoch = self.options.layout.epoch_ms;
        for _round in 0..3 {
            let pool = workers::read_pool(&self.store).await?;
            // A take whose answer was lost (a timeout) may have succeeded: give back any
            // worker id on this node's lease that it does not use.
            for (n, holder) in &pool.held_by {
                if *holder == lease && Some(*n) != slow.worker {
                    warn!(worker = *n, "releasing a worker id this node took without knowing");
                    workers::release(&self.store, *n, lease).await?;
                }
            }
            let now = self.generator.now_ms();
            let free: Vec<u16> = (0..self.options.workers)
                .filter(|n| !pool.taken.contains(n) && Some(*n) != exclude && pool.mark_of(*n).0 <= now)
                .collect();
            if free.is_empty() {
                slow.last_failed_take_ms = Some(monotonic);
                return Ok(false);
            }
            // Start at a random free id, so nodes starting together rarely collide.
            let start = rand::rng().random_range(0..free.len());
            for n in free.iter().cycle().skip(start).take(free.len().min(8)) {
                let (seen_mark, seen_revision) = pool.mark_of(*n);
                let mark = now + self.options.watermark_ahead_ms;
                let record = WorkerRecord { node: self.options.node_id.clone(), taken_ms: now };
                if !workers::try_take(&self.store, *n, seen_revision, lease, &record, mark).await? {
                    continue;
                }
                let old = slow.worker.replace(*n);
                slow.mark_ms = mark;
                slow.last_failed_take_ms = None;
                // The floor is the previous holder's mark: it issued only below it.
                let floor = seen_mark.saturating_sub(epoch);
                self.generator.install(*n, floor, mark.saturating_sub(epoch));
                self.counters.watermark_writes.fetch_add(1, Ordering::Relaxed);
                info!(
                    worker = *n,
                    previous_mark_ms = seen_mark,
                    mark_ms = mark,
                    "took a Snowflake worker id"
                );
                if let Some(old) = old {
                    if let Err(error) = workers::release(&self.store, old, lease).await {
                        warn!(%error, worker = old, "releasing the previous worker id failed; it goes with the lease");
                    }
                }
                return Ok(true);
            }
        }
        slow.last_failed_take_ms = Some(monotonic);
        Ok(false)
    }

    async fn ensure_worker(&self) -> IdResult<()> {
        let mut slow = self.slow.lock().await;
        if self.generator.held().is_some() {
            return Ok(());
        }
        slow.worker = None;
        if self.take_worker(&mut slow, None).await? {
            Ok(())
        } else {
            Err(self.refuse_no_worker("this node holds no worker id"))
        }
    }

    async fn clock_stepped_back(&self, by_ms: u64) -> IdResult<()> {
        let mut slow = self.slow.lock().await;
        // Another request may have switched already.
        let cursor = self.generator.cursor();
        let now = self.generator.now_elapsed().unwrap_or(0);
        if self.generator.held().is_some() && now + MAX_CLOCK_WAIT_MS >= cursor.elapsed_ms {
            return Ok(());
        }
        let current = slow.worker;
        if self.take_worker(&mut slow, current).await? {
            self.counters.worker_switches.fetch_add(1, Ordering::Relaxed);
            warn!(by_ms, from = ?current, to = ?slow.worker, "the clock stepped back; took a fresh worker id");
            Ok(())
        } else {
            Err(self.refuse_no_worker(&format!(
                "the clock is {by_ms} ms behind the last issued ID (more than the {MAX_CLOCK_WAIT_MS} ms waited out)"
            )))
        }
    }

    /// Writes a mark further ahead when the clock comes within half the lead of it (or
    /// at once, `force`: the hot path reached it).
    async fn renew(&self, force: bool) -> IdResult<()> {
        let mut slow = self.slow.lock().await;
        let (Some(worker), Some(lease)) = (slow.worker, slow.lease) else { return Ok(()) };
        if self.generator.held().is_none() {
            return Ok(());
        }
        let now = self.generator.now_ms();
        let ahead = self.options.watermark_ahead_ms;
        if !force && slow.mark_ms > now + ahead / 2 {
            return Ok(());
        }
        let mark = slow.mark_ms.max(now + ahead);
        if mark == slow.mark_ms {
            return Ok(());
        }
        if workers::renew_mark(&self.store, worker, lease, mark).await? {
            slow.mark_ms = mark;
            self.counters.watermark_writes.fetch_add(1, Ordering::Relaxed);
            self.generator.raise_limit(worker, mark.saturating_sub(self.options.layout.epoch_ms));
        } else {
            warn!(worker, "the Snowflake worker id was lost (its lease expired); taking another");
            self.generator.revoke();
            slow.worker = None;
        }
        Ok(())
    }

    /// One keeper round: keep the lease alive, the mark ahead, and a worker held.
    async fn keep_round(&self) {
        {
            let mut slow = self.slow.lock().await;
            if let Some(lease) = slow.lease {
                let sent = self.generator.monotonic_ms();
                match bounded("the lease keep-alive", self.store.lease_keep_alive(lease)).await {
                    Ok(_) => self.generator.confirm_lease_until(sent + self.confirmed_window_ms()),
                    Err(IdError::Store(StoreError::LeaseNotFound(_))) => {
                        warn!(lease = lease.0, worker = ?slow.worker, "the Snowflake worker lease expired; issuing stopped");
                        self.generator.revoke();
                        slow.lease = None;
                        slow.worker = None;
                    }
                    Err(error) => warn!(%error, "Snowflake worker lease keep-alive failed"),
                }
            }
            if slow.worker.is_none() {
                if let Err(error) = self.take_worker(&mut slow, None).await {
                    warn!(%error, "taking a Snowflake worker id failed");
                }
                return;
            }
        }
        if let Err(error) = self.renew(false).await {
            warn!(%error, "renewing the Snowflake high-water mark failed");
        }
    }
}

/// A request waits this long for the slow path (which may queue behind the keeper).
const SLOW_PATH_TIMEOUT: Duration = Duration::from_millis(2 * STORE_CALL_TIMEOUT.as_millis() as u64 + 500);

async fn slow_path(step: impl std::future::Future<Output = IdResult<()>>) -> IdResult<()> {
    tokio::time::timeout(SLOW_PATH_TIMEOUT, step).await.unwrap_or_else(|_| {
        Err(IdError::Refused(format!(
            "the Snowflake slow path (taking a worker id or persisting a high-water mark) did not finish within {} ms; is the store reachable?",
            SLOW_PATH_TIMEOUT.as_millis()
        )))
    })
}

async fn keep(inner: std::sync::Weak<Inner>) {
    let period = {
        let Some(inner) = inner.upgrade() else { return };
        let ms = (inner.ttl_ms() / 4).min(inner.options.watermark_ahead_ms / 4).max(50);
        Duration::from_millis(ms)
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = inner.upgrade() else { return };
        inner.keep_round().await;
    }
}

#[cfg(test)]
mod tests;
