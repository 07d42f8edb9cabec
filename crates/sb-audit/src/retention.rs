//! Retention: records older than the age limit, then the oldest records over the count
//! limit, are deleted in bounded batches (one range delete per batch, each well inside
//! etcd's request limits), so the log never grows toward etcd's storage quota.
//!
//! One node at a time sweeps: the caller passes a predicate (the composition root uses
//! "I am the lowest live member"), checked before every sweep.

use std::sync::Arc;
use std::time::Duration;

use sb_store::{KeyRange, RangeRequest, SharedStore, Store, Txn, TxnOp};
use tracing::{info, warn};

use crate::{key_at, now_ms, AuditError, AUDIT_PREFIX};

/// Records deleted per transaction.
pub const RETENTION_BATCH: u64 = 500;
/// Batches per sweep; the next sweep continues where this one stopped.
const MAX_BATCHES_PER_SWEEP: usize = 200;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditRetention {
    /// Records older than this are deleted (`--audit-retention-days`).
    pub max_age: Option<Duration>,
    /// Beyond this many records the oldest are deleted (`--audit-max-records`).
    pub max_records: Option<u64>,
}

impl Default for AuditRetention {
    fn default() -> Self {
        AuditRetention { max_age: Some(Duration::from_secs(90 * 24 * 3600)), max_records: Some(100_000) }
    }
}

/// Deletes the oldest records of `range` (at most `limit`); returns how many.
async fn delete_oldest(store: &dyn Store, range: KeyRange, limit: u64) -> Result<u64, AuditError> {
    let request = RangeRequest::new(range).keys_only().with_limit(limit.min(RETENTION_BATCH));
    let response = store.range(request).await?;
    let (Some(first), Some(last)) = (response.kvs.first(), response.kvs.last()) else {
        return Ok(0);
    };
    let mut end = last.key.clone();
    end.push(0);
    let doomed = KeyRange::Between { start: first.key.clone(), end };
    store.txn(Txn::new().and_then([TxnOp::Delete(doomed)])).await?;
    Ok(response.kvs.len() as u64)
}

/// Applies `retention` once; returns the number of records deleted.
pub async fn sweep(store: &dyn Store, retention: &AuditRetention) -> Result<u64, AuditError> {
    let mut deleted = 0;
    let mut batches = 0;
    if let Some(max_age) = retention.max_age {
        let cutoff = now_ms().saturating_sub(max_age.as_millis() as u64);
        let expired =
            KeyRange::Between { start: AUDIT_PREFIX.as_bytes().to_vec(), end: key_at(cutoff).into_bytes() };
        while batches < MAX_BATCHES_PER_SWEEP {
            batches += 1;
            let n = delete_oldest(store, expired.clone(), RETENTION_BATCH).await?;
            deleted += n;
            if n < RETENTION_BATCH {
                break;
            }
        }
    }
    if let Some(max_records) = retention.max_records {
        let count = store.range(RangeRequest::prefix(AUDIT_PREFIX).count_only()).await?.count;
        let mut excess = count.saturating_sub(max_records);
        while excess > 0 && batches < MAX_BATCHES_PER_SWEEP {
            batches += 1;
            let n = delete_oldest(store, KeyRange::prefix(AUDIT_PREFIX), excess).await?;
            if n == 0 {
                break;
            }
            deleted += n;
            excess = excess.saturating_sub(n);
        }
    }
    Ok(deleted)
}

/// Sweeps every `interval` while `is_sweeper()` says this node is the one that sweeps,
/// until the store is dropped everywhere else.
pub fn spawn_retention(
    store: SharedStore,
    retention: AuditRetention,
    interval: Duration,
    is_sweeper: Arc<dyn Fn() -> bool + Send + Sync>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if !is_sweeper() {
                continue;
            }
            match sweep(store.as_ref(), &retention).await {
                Ok(0) => {}
                Ok(deleted) => info!(deleted, "audit retention deleted old records"),
                Err(error) => warn!(%error, "audit retention sweep failed; the next sweep retries"),
            }
        }
    })
}
