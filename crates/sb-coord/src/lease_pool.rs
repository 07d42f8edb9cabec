//! Leases granted ahead of demand, so an acquire's critical path is one transaction (plus
//! a keep-alive, which commits nothing) instead of a lease grant and a transaction.
//!
//! Each acquisition still gets a lease of its own, never reused: a pooled lease is taken
//! once. The pool is small and bounded (a few leases per TTL, for a few TTLs), refilled in
//! the background only after a take, and never kept alive while it waits: a lease with
//! less than half its TTL left is not handed out and simply expires (with no keys, an
//! expiry writes nothing).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sb_store::{LeaseId, SharedStore};
use tokio::time::Instant;
use tracing::debug;

/// Leases kept ready per TTL.
const PER_TTL: usize = 2;
/// TTLs the pool serves at once; others are granted inline.
const MAX_TTLS: usize = 16;

#[derive(Clone, Copy, Debug)]
pub(crate) struct PooledLease {
    pub id: LeaseId,
    /// The TTL the store granted (requests under its minimum are raised).
    pub ttl_secs: i64,
    granted_at: Instant,
}

#[derive(Default)]
struct Slot {
    ready: Vec<PooledLease>,
    /// Grants in flight for this TTL.
    granting: usize,
}

pub(crate) struct LeasePool {
    store: SharedStore,
    slots: Mutex<HashMap<i64, Slot>>,
}

impl LeasePool {
    pub fn new(store: SharedStore) -> Arc<Self> {
        Arc::new(LeasePool { store, slots: Mutex::new(HashMap::new()) })
    }

    /// A fresh lease for `ttl_secs` (at least half its TTL left), if one is ready; asks
    /// for a refill either way.
    pub fn take(self: &Arc<Self>, ttl_secs: i64) -> Option<PooledLease> {
        let now = Instant::now();
        let taken = {
            let mut slots = self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if !slots.contains_key(&ttl_secs) && slots.len() >= MAX_TTLS {
                // Forget TTLs nobody has lease for any more before refusing a new one.
                slots.retain(|_, slot| !slot.ready.is_empty() || slot.granting > 0);
                if slots.len() >= MAX_TTLS {
                    return None;
                }
            }
            let slot = slots.entry(ttl_secs).or_default();
            let half = Duration::from_millis(ttl_secs.max(1) as u64 * 500);
            slot.ready.retain(|lease| lease.granted_at + half > now);
            let taken = slot.ready.pop();
            let missing = PER_TTL.saturating_sub(slot.ready.len() + slot.granting);
            slot.granting += missing;
            (taken, missing)
        };
        let (taken, missing) = taken;
        for _ in 0..missing {
            let pool = self.clone();
            tokio::spawn(async move { pool.grant(ttl_secs).await });
        }
        taken
    }

    async fn grant(&self, ttl_secs: i64) {
        let granted_at = Instant::now();
        let granted = self.store.lease_grant(ttl_secs).await;
        let mut slots = self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let slot = slots.entry(ttl_secs).or_default();
        slot.granting = slot.granting.saturating_sub(1);
        match granted {
            Ok(grant) => slot.ready.push(PooledLease { id: grant.id, ttl_secs: grant.ttl_secs, granted_at }),
            Err(error) => debug!(%error, ttl_secs, "granting a pooled lease failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leases_are_taken_once_and_refilled_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let options = sb_store_embedded::EmbeddedOptions::new(dir.path().join("store.redb"));
        let store: SharedStore = sb_store_embedded::EmbeddedStore::open(options).await.unwrap();
        let pool = LeasePool::new(store.clone());
        assert!(pool.take(30).is_none(), "an empty pool asks for a refill");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..5 {
            let lease = loop {
                if let Some(lease) = pool.take(30) {
                    break lease;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            assert!(seen.insert(lease.id), "lease {} handed out twice", lease.id);
            assert_eq!(store.lease_time_to_live(lease.id, false).await.unwrap().granted_ttl_secs, 30);
        }
        let slots = pool.slots.lock().unwrap();
        assert!(slots[&30].ready.len() + slots[&30].granting <= PER_TTL);
    }
}
