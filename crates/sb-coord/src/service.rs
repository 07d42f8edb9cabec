//! [`Coord`]: the locks and elections service a node runs, with its input limits, and
//! [`LeaderStream`], an election's leader changes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use sb_store::{
    EventKind, KeyRange, KeyValue, LeaseId, RangeRequest, Revision, SharedStore, StoreError, WatchRequest,
    WatchStream,
};
use tokio::sync::mpsc;
use tracing::debug;

use crate::error::{CoordError, CoordResult};
use crate::lease_pool::LeasePool;
use crate::metrics::CoordMetrics;
use crate::names::{QueueKind, QueueName};
use crate::queue::{self, Ctx, Grant, Holder, QueueStatus, Released};

/// The longest lock or election TTL: one day.
pub const MAX_TTL_SECS: i64 = 86_400;
/// The longest an acquire or campaign waits in one call (a long-poll): five minutes.
pub const MAX_WAIT_MS: i64 = 300_000;
/// The largest proclaimed election value.
pub const MAX_VALUE_BYTES: usize = 16 * 1024;
/// Leases waiting to be revoked in the background; past this, they expire by themselves.
const CLEANUP_QUEUE: usize = 4096;

/// The input limits, for documentation and the API's messages.
#[derive(Clone, Copy, Debug)]
pub struct CoordLimits;

impl CoordLimits {
    pub fn ttl_secs(ttl_secs: i64) -> CoordResult<i64> {
        if !(1..=MAX_TTL_SECS).contains(&ttl_secs) {
            return Err(CoordError::invalid(
                "ttl_secs",
                format!("ttl_secs is {ttl_secs}, expected 1 to {MAX_TTL_SECS} (one day)"),
            ));
        }
        Ok(ttl_secs)
    }

    pub fn wait(wait_ms: i64) -> CoordResult<Duration> {
        if !(0..=MAX_WAIT_MS).contains(&wait_ms) {
            return Err(CoordError::invalid(
                "wait_ms",
                format!("wait_ms is {wait_ms}, expected 0 (try once) to {MAX_WAIT_MS}"),
            ));
        }
        Ok(Duration::from_millis(wait_ms as u64))
    }

    pub fn value(value: &str) -> CoordResult<()> {
        if value.len() > MAX_VALUE_BYTES {
            return Err(CoordError::invalid(
                "value",
                format!("value is {} bytes, limit is {MAX_VALUE_BYTES} bytes", value.len()),
            ));
        }
        Ok(())
    }
}

/// Locks and elections over one store. Cheap to share; holds a background task that
/// revokes released and abandoned leases.
pub struct Coord {
    ctx: Ctx,
    metrics: CoordMetrics,
}

/// Counts an acquire whose future is dropped before it ends (the caller went away).
struct Abandoned<'a> {
    metrics: &'a CoordMetrics,
    kind: QueueKind,
    armed: bool,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.metrics.abandoned(self.kind);
        }
    }
}

impl Coord {
    /// Must be called inside a tokio runtime (it spawns the lease cleanup task).
    pub fn new(store: SharedStore) -> Arc<Self> {
        let (cleanup, mut pending) = mpsc::channel::<LeaseId>(CLEANUP_QUEUE);
        let revoker = store.clone();
        let leases = LeasePool::new(store.clone());
        let pool = Arc::downgrade(&leases);
        tokio::spawn(async move {
            while let Some(lease) = pending.recv().await {
                if let Some(pool) = pool.upgrade() {
                    pool.forget(lease);
                }
                match revoker.lease_revoke(lease).await {
                    Ok(()) | Err(StoreError::LeaseNotFound(_)) => {}
                    Err(error) => debug!(%error, lease = %lease, "revoking a lock lease failed; it expires"),
                }
            }
        });
        Arc::new(Coord { ctx: Ctx { store, cleanup, leases }, metrics: CoordMetrics::default() })
    }

    /// Adds the lock and election metrics to the registry `/metrics` serves.
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.metrics.register(registry, &self.ctx.leases);
    }

    /// Waits (at most `timeout`) until the leases queued for revocation have been taken
    /// up, so a stopping node leaves no waiter key behind for a TTL.
    pub async fn drain(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.ctx.cleanup.capacity() < self.ctx.cleanup.max_capacity() {
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Acquires a lock or campaigns in an election: queues, waits at most `wait_ms`, and
    /// answers with the fencing and owner tokens. `value` is an election's proclamation.
    pub async fn acquire(
        &self,
        name: &QueueName,
        subject: &str,
        ttl_secs: i64,
        wait_ms: i64,
        value: String,
    ) -> CoordResult<Grant> {
        let start = tokio::time::Instant::now();
        let mut abandoned = Abandoned { metrics: &self.metrics, kind: name.kind, armed: true };
        let result = self.try_acquire(name, subject, ttl_secs, wait_ms, value).await;
        abandoned.armed = false;
        let waited = result.as_ref().is_ok_and(|grant| grant.waited);
        self.metrics.acquired(name.kind, result.as_ref().map(|_| ()), waited, start.elapsed().as_secs_f64());
        result
    }

    async fn try_acquire(
        &self,
        name: &QueueName,
        subject: &str,
        ttl_secs: i64,
        wait_ms: i64,
        value: String,
    ) -> CoordResult<Grant> {
        let ttl_secs = CoordLimits::ttl_secs(ttl_secs)?;
        let wait = CoordLimits::wait(wait_ms)?;
        CoordLimits::value(&value)?;
        if name.kind == QueueKind::Lock && !value.is_empty() {
            return Err(CoordError::invalid("value", "a lock carries no value; elections do"));
        }
        queue::acquire(&self.ctx, name, subject, ttl_secs, wait, value).await
    }

    /// Releases a lock or resigns an election, only with the holder's owner token.
    pub async fn release(&self, name: &QueueName, subject: &str, owner: &str) -> CoordResult<Released> {
        let result = queue::release(&self.ctx, name, subject, owner).await;
        if let Err(CoordError::WrongOwner { .. }) = result {
            self.metrics.rejected(name.kind);
        }
        result
    }

    /// Renews the holder's lease to its full TTL; answers the TTL.
    pub async fn renew(&self, name: &QueueName, subject: &str, owner: &str) -> CoordResult<i64> {
        let result = queue::renew(&self.ctx, name, subject, owner).await;
        if let Err(CoordError::NotHeld { .. }) = result {
            // The key was there a moment ago: its lease ended.
            self.metrics.lease_lost(name.kind);
        }
        result
    }

    /// The holder and the queue length, read from the store (never a view).
    pub async fn status(&self, name: &QueueName) -> CoordResult<QueueStatus> {
        queue::status(&self.ctx, name).await
    }

    /// Changes the leader's value; only the leader's owner token can.
    pub async fn proclaim(
        &self,
        name: &QueueName,
        subject: &str,
        owner: &str,
        value: &str,
        audit: &sb_audit::Audit,
    ) -> CoordResult<Revision> {
        CoordLimits::value(value)?;
        queue::proclaim(&self.ctx, name, subject, owner, value, audit).await
    }

    /// Puts `store_key` (which must lie under `kv/`) only if `owner` still holds the lock,
    /// in one transaction. Answers the fencing token and the write's revision.
    pub async fn guarded_put(
        &self,
        name: &QueueName,
        subject: &str,
        owner: &str,
        store_key: &[u8],
        value: &[u8],
        audit: &sb_audit::Audit,
    ) -> CoordResult<(Revision, Revision)> {
        if !store_key.starts_with(b"kv/") || store_key.len() == 3 {
            return Err(CoordError::invalid("key", "a guarded write puts a key of the KV API (under kv/)"));
        }
        queue::guarded_put(&self.ctx, name, subject, owner, store_key, value, audit).await
    }

    /// The leader (or lock holder) now and after every change.
    pub fn observe(&self, name: &QueueName) -> LeaderStream {
        LeaderStream {
            store: self.ctx.store.clone(),
            name: name.clone(),
            members: BTreeMap::new(),
            watch: None,
            last: None,
        }
    }
}

/// An election's leader, now and after each change; reloads on compaction or a broken
/// watch, and reports only real changes (a new leader, or a proclaimed value).
pub struct LeaderStream {
    store: SharedStore,
    name: QueueName,
    members: BTreeMap<Vec<u8>, KeyValue>,
    watch: Option<WatchStream>,
    /// The last leader reported, by (create revision, value bytes).
    last: Option<Option<(Revision, Vec<u8>)>>,
}

impl LeaderStream {
    /// The current leader on the first call, then waits for the next change.
    pub async fn next(&mut self) -> CoordResult<Option<Holder>> {
        loop {
            if self.watch.is_none() {
                let range = self.store.range(RangeRequest::prefix(self.name.prefix())).await?;
                self.members = range.kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
                let request =
                    WatchRequest::new(KeyRange::prefix(self.name.prefix())).from_revision(range.revision + 1);
                self.watch = Some(self.store.watch(request).await?);
            }
            let leader = self.members.values().min_by_key(|kv| kv.create_revision);
            let identity = leader.map(|kv| (kv.create_revision, kv.value.clone()));
            if self.last.as_ref() != Some(&identity) {
                let holder = leader.map(queue::holder_of).transpose()?;
                self.last = Some(identity);
                return Ok(holder);
            }
            let Some(watch) = self.watch.as_mut() else { continue };
            match watch.next().await {
                Some(Ok(batch)) => {
                    for event in batch.events {
                        match event.kind {
                            EventKind::Put => {
                                self.members.insert(event.kv.key.clone(), event.kv);
                            }
                            EventKind::Delete => {
                                self.members.remove(&event.kv.key);
                            }
                        }
                    }
                }
                Some(Err(StoreError::Compacted { .. })) | None => self.watch = None,
                Some(Err(error)) => {
                    self.watch = None;
                    debug!(%error, "an election watch failed; reloading");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}
