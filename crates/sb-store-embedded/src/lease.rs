//! Leases in memory: their deadlines, the keys attached to them, and the expiry timer.
//!
//! Keep-alives only move a deadline here; they never touch the disk (only grant and revoke
//! write the lease table). Expiry runs on tokio time: the timer task asks the writer to
//! expire a lease, and the writer deletes its keys at one revision. After a restart every
//! persisted lease starts again with its full TTL, as etcd does after a leader change.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use sb_store::{LeaseId, LeaseInfo, StoreError, StoreResult};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::writer::WriteRequest;
use crate::Shared;

#[derive(Debug)]
pub(crate) struct LeaseEntry {
    pub(crate) ttl_secs: i64,
    pub(crate) deadline: Instant,
    /// Keys attached to the lease, as committed.
    pub(crate) keys: BTreeSet<Vec<u8>>,
    /// The deadline passed and the writer has been asked to expire the lease: keep-alives
    /// and new puts are refused.
    pub(crate) expiring: bool,
}

#[derive(Debug, Default)]
pub(crate) struct LeaseTable {
    pub(crate) leases: HashMap<LeaseId, LeaseEntry>,
    /// Deadlines of leases that are not expiring yet, earliest first.
    deadlines: BTreeSet<(Instant, LeaseId)>,
}

/// The deadline of a lease renewed at `now`. TTLs go up to etcd's 9e9 s (285 years).
fn deadline(now: Instant, ttl_secs: i64) -> Instant {
    let ttl = Duration::from_secs(ttl_secs.max(0) as u64);
    now.checked_add(ttl).unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

impl LeaseTable {
    pub(crate) fn insert(&mut self, id: LeaseId, ttl_secs: i64, now: Instant) {
        let deadline = deadline(now, ttl_secs);
        self.deadlines.insert((deadline, id));
        let entry = LeaseEntry { ttl_secs, deadline, keys: BTreeSet::new(), expiring: false };
        if let Some(old) = self.leases.insert(id, entry) {
            self.deadlines.remove(&(old.deadline, id));
        }
    }

    pub(crate) fn remove(&mut self, id: LeaseId) -> Option<LeaseEntry> {
        let entry = self.leases.remove(&id)?;
        self.deadlines.remove(&(entry.deadline, id));
        Some(entry)
    }

    /// Whether a put may attach a key to the lease.
    pub(crate) fn is_live(&self, id: LeaseId) -> bool {
        self.leases.get(&id).is_some_and(|l| !l.expiring)
    }

    pub(crate) fn keep_alive(&mut self, id: LeaseId, now: Instant) -> StoreResult<i64> {
        let entry = self.leases.get_mut(&id).filter(|l| !l.expiring && l.deadline > now);
        let Some(entry) = entry else { return Err(StoreError::LeaseNotFound(id)) };
        self.deadlines.remove(&(entry.deadline, id));
        entry.deadline = deadline(now, entry.ttl_secs);
        self.deadlines.insert((entry.deadline, id));
        Ok(entry.ttl_secs)
    }

    pub(crate) fn info(&self, id: LeaseId, with_keys: bool, now: Instant) -> StoreResult<LeaseInfo> {
        let entry = self.leases.get(&id).filter(|l| !l.expiring && l.deadline > now);
        let Some(entry) = entry else { return Err(StoreError::LeaseNotFound(id)) };
        let left = entry.deadline.saturating_duration_since(now);
        // etcd rounds the remaining TTL up to whole seconds.
        let remaining = left.as_secs() as i64 + i64::from(left.subsec_nanos() > 0);
        Ok(LeaseInfo {
            id,
            granted_ttl_secs: entry.ttl_secs,
            remaining_ttl_secs: remaining,
            keys: if with_keys { entry.keys.iter().cloned().collect() } else { Vec::new() },
        })
    }

    /// Marks every lease whose deadline has passed as expiring and returns them.
    fn take_expired(&mut self, now: Instant) -> Vec<LeaseId> {
        let mut expired = Vec::new();
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some(entry) = self.leases.get_mut(&id) {
                entry.expiring = true;
                expired.push(id);
            }
        }
        expired
    }

    /// Gives an expiring lease a new deadline (its expiry could not be committed).
    pub(crate) fn retry_expiry(&mut self, id: LeaseId, deadline: Instant) {
        if let Some(entry) = self.leases.get_mut(&id) {
            entry.expiring = false;
            entry.deadline = deadline;
            self.deadlines.insert((deadline, id));
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(deadline, _)| *deadline)
    }

    pub(crate) fn len(&self) -> usize {
        self.leases.len()
    }
}

/// Sleeps until the earliest lease deadline, then asks the writer to expire every lease
/// whose deadline has passed. Ends on shutdown.
pub(crate) async fn run_expiry(
    shared: Arc<Shared>,
    writer: mpsc::Sender<WriteRequest>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let changed = shared.lease_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let next = shared.leases.lock().next_deadline();
        let sleep = async {
            match next {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {}
            _ = &mut changed => continue,
            _ = shutdown.changed() => return,
        }
        let expired = shared.leases.lock().take_expired(Instant::now());
        for id in expired {
            tracing::debug!(lease = id.0, "lease expired");
            if writer.send(WriteRequest::LeaseExpire { id }).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn keep_alive_moves_the_deadline() {
        let mut table = LeaseTable::default();
        let id = LeaseId(7);
        table.insert(id, 10, Instant::now());
        tokio::time::advance(Duration::from_millis(9_500)).await;
        assert_eq!(table.info(id, false, Instant::now()).unwrap().remaining_ttl_secs, 1);
        assert_eq!(table.keep_alive(id, Instant::now()), Ok(10));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(table.take_expired(Instant::now()).is_empty());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(table.take_expired(Instant::now()), vec![id]);
        assert_eq!(table.keep_alive(id, Instant::now()), Err(StoreError::LeaseNotFound(id)));
        assert!(!table.is_live(id));
    }
}
