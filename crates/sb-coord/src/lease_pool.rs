//! Leases ready ahead of demand, so an acquire's critical path is one transaction instead
//! of a lease grant and a transaction, and an acquire + release commits nothing but its
//! two transactions.
//!
//! - A lease in the pool has no key. It comes from a background grant, or back from a
//!   release on this node (the release deleted its only key; the lease is still alive).
//!   Handing a released lease to the next acquire saves a revoke and a grant (two commits,
//!   on etcd two Raft proposals) per acquire + release. Its old owner tokens stay dead:
//!   they pin the old key's create revision (and hash another secret).
//! - A pooled lease is taken by one acquire at a time. The pool knows a lower bound of
//!   each lease's expiry (`alive_until`: the time a grant or keep-alive was sent, plus the
//!   TTL); a lease with most of its TTL left is used as is, an older one is renewed
//!   alongside the acquire's transaction, one with less than half left is dropped (with no
//!   key, an expiry writes nothing).
//! - The pool is small and bounded (a few leases per TTL, for a few TTLs); it is refilled
//!   by grants only when a take empties it. Leases beyond the bound are revoked.
//! - The pool also remembers the leases this node issued (bounded), with the same lower
//!   bound of their expiry, so a release can recycle them and `/metrics` can count held
//!   locks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sb_store::{LeaseId, SharedStore};
use tokio::time::Instant;
use tracing::debug;

use crate::names::QueueKind;

/// Leases granted per TTL when a take finds the pool empty.
const REFILL: usize = 2;
/// Leases kept per TTL; a released lease beyond this is revoked.
const MAX_READY: usize = 4;
/// TTLs the pool serves at once; others are granted inline.
const MAX_TTLS: usize = 16;
/// Leases remembered as issued by this node.
const MAX_ISSUED: usize = 4096;

#[derive(Clone, Copy, Debug)]
pub(crate) struct PooledLease {
    pub id: LeaseId,
    /// The TTL the store granted (requests under its minimum are raised).
    pub ttl_secs: i64,
    /// The lease lives at least until then.
    pub alive_until: Instant,
}

impl PooledLease {
    /// Whether the lease has at least 90% of its TTL left: used without a keep-alive.
    pub fn fresh(&self, now: Instant) -> bool {
        self.alive_until.saturating_duration_since(now) >= ttl(self.ttl_secs).mul_f64(0.9)
    }

    fn usable(&self, now: Instant) -> bool {
        self.alive_until.saturating_duration_since(now) > ttl(self.ttl_secs) / 2
    }
}

fn ttl(secs: i64) -> Duration {
    Duration::from_secs(secs.max(1) as u64)
}

#[derive(Default)]
struct Slot {
    ready: Vec<PooledLease>,
    /// Grants in flight for this TTL.
    granting: usize,
}

/// A lease this node handed to an acquire.
#[derive(Clone, Copy, Debug)]
struct Issued {
    /// The pool slot (the TTL asked for).
    slot: i64,
    lease: PooledLease,
    kind: QueueKind,
    /// Whether the acquire was granted (the lease holds); false while it waits.
    holds: bool,
}

#[derive(Default)]
struct Inner {
    slots: HashMap<i64, Slot>,
    issued: HashMap<LeaseId, Issued>,
}

pub(crate) struct LeasePool {
    store: SharedStore,
    inner: Mutex<Inner>,
}

impl LeasePool {
    pub fn new(store: SharedStore) -> Arc<Self> {
        Arc::new(LeasePool { store, inner: Mutex::new(Inner::default()) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A lease for `ttl_secs` with more than half its TTL left, if one is ready; asks for a
    /// refill when that empties the pool.
    pub fn take(self: &Arc<Self>, ttl_secs: i64) -> Option<PooledLease> {
        let now = Instant::now();
        let (taken, missing) = {
            let mut inner = self.lock();
            let slots = &mut inner.slots;
            if !slots.contains_key(&ttl_secs) && slots.len() >= MAX_TTLS {
                // Forget TTLs nobody has a lease for any more before refusing a new one.
                slots.retain(|_, slot| !slot.ready.is_empty() || slot.granting > 0);
                if slots.len() >= MAX_TTLS {
                    return None;
                }
            }
            let slot = slots.entry(ttl_secs).or_default();
            slot.ready.retain(|lease| lease.usable(now));
            let taken = slot.ready.pop();
            let missing = if slot.ready.is_empty() && slot.granting == 0 { REFILL } else { 0 };
            slot.granting += missing;
            (taken, missing)
        };
        for _ in 0..missing {
            let pool = self.clone();
            tokio::spawn(async move { pool.grant(ttl_secs).await });
        }
        taken
    }

    async fn grant(&self, ttl_secs: i64) {
        let sent = Instant::now();
        let granted = self.store.lease_grant(ttl_secs).await;
        let mut inner = self.lock();
        let slot = inner.slots.entry(ttl_secs).or_default();
        slot.granting = slot.granting.saturating_sub(1);
        match granted {
            Ok(grant) => slot.ready.push(PooledLease {
                id: grant.id,
                ttl_secs: grant.ttl_secs,
                alive_until: sent + ttl(grant.ttl_secs),
            }),
            Err(error) => debug!(%error, ttl_secs, "granting a pooled lease failed"),
        }
    }

    /// Remembers a lease handed to an acquire (from the pool or granted inline).
    pub fn issued(&self, slot: i64, lease: PooledLease, kind: QueueKind) {
        let mut inner = self.lock();
        if inner.issued.len() >= MAX_ISSUED {
            let now = Instant::now();
            inner.issued.retain(|_, issued| issued.lease.alive_until > now);
            if inner.issued.len() >= MAX_ISSUED {
                return;
            }
        }
        inner.issued.insert(lease.id, Issued { slot, lease, kind, holds: false });
    }

    /// The acquire on `lease` was granted; the lease was renewed at `renewed_at` or later.
    pub fn granted(&self, lease: LeaseId, renewed_at: Instant) {
        if let Some(issued) = self.lock().issued.get_mut(&lease) {
            issued.holds = true;
            issued.lease.alive_until = issued.lease.alive_until.max(renewed_at + ttl(issued.lease.ttl_secs));
        }
    }

    /// A keep-alive of `lease` sent at `sent` succeeded.
    pub fn renewed(&self, lease: LeaseId, sent: Instant) {
        if let Some(issued) = self.lock().issued.get_mut(&lease) {
            issued.lease.alive_until = issued.lease.alive_until.max(sent + ttl(issued.lease.ttl_secs));
        }
    }

    /// The lease is being revoked, or is gone: it is neither held nor reusable.
    pub fn forget(&self, lease: LeaseId) {
        self.lock().issued.remove(&lease);
    }

    /// The key of `lease` was deleted by its release: keeps the lease for the next acquire
    /// if this node issued it, it has more than half its TTL left and the pool has room.
    /// `false` means the caller should revoke it.
    pub fn recycle(&self, lease: LeaseId) -> bool {
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(issued) = inner.issued.remove(&lease) else { return false };
        if !issued.lease.usable(now) {
            return false;
        }
        match inner.slots.get_mut(&issued.slot) {
            Some(slot) if slot.ready.len() < MAX_READY => {
                slot.ready.push(issued.lease);
                true
            }
            _ => false,
        }
    }

    /// Locks and elections held through this node, by what the node knows (grants it
    /// issued, not released through it, whose lease has not certainly expired: renewals
    /// through other nodes are not seen).
    pub fn held(&self, kind: QueueKind) -> i64 {
        let now = Instant::now();
        let inner = self.lock();
        inner.issued.values().filter(|i| i.holds && i.kind == kind && i.lease.alive_until > now).count()
            as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leases_are_taken_once_refilled_and_recycled() {
        let dir = tempfile::tempdir().unwrap();
        let options = sb_store_embedded::EmbeddedOptions::new(dir.path().join("store.redb"));
        let store: SharedStore = sb_store_embedded::EmbeddedStore::open(options).await.unwrap();
        let pool = LeasePool::new(store.clone());
        assert!(pool.take(30).is_none(), "an empty pool asks for a refill");
        let mut seen = std::collections::HashSet::new();
        let mut taken = Vec::new();
        for _ in 0..5 {
            let lease = loop {
                if let Some(lease) = pool.take(30) {
                    break lease;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            assert!(seen.insert(lease.id), "lease {} handed out twice", lease.id);
            assert!(lease.fresh(Instant::now()));
            assert_eq!(store.lease_time_to_live(lease.id, false).await.unwrap().granted_ttl_secs, 30);
            taken.push(lease);
        }
        {
            let inner = pool.lock();
            assert!(inner.slots[&30].ready.len() + inner.slots[&30].granting <= REFILL);
        }
        // A lease this node issued comes back on release; an unknown one does not.
        let lease = taken[0];
        pool.issued(30, lease, QueueKind::Lock);
        pool.granted(lease.id, Instant::now());
        assert_eq!(pool.held(QueueKind::Lock), 1);
        assert_eq!(pool.held(QueueKind::Election), 0);
        assert!(pool.recycle(lease.id));
        assert_eq!(pool.held(QueueKind::Lock), 0);
        assert!(!pool.recycle(lease.id), "a lease is recycled once");
        assert!(!pool.recycle(taken[1].id), "a lease this node did not issue is revoked");
        let mut back = false;
        for _ in 0..MAX_READY + 1 {
            back |= pool.take(30).is_some_and(|again| again.id == lease.id);
        }
        assert!(back, "the recycled lease is handed out again");
    }
}
