//! The in-memory heartbeat table: when each ephemeral instance owned by this node last
//! beat. Beats land here and never in the store; only health *changes* are written.
//! Sharded, so concurrent beats rarely share a lock.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::model::BeatTimeouts;
use crate::names::ServiceId;
use crate::state::InstanceEntry;

const SHARDS: usize = 64;

/// The last beat of one instance, and the instance as last seen (to put it again if the
/// session lease is lost while it still beats).
#[derive(Clone, Debug)]
pub struct BeatEntry {
    pub last_beat: Instant,
    /// The registry view's own key for the service, shared.
    pub service: Arc<ServiceId>,
    pub instance: Arc<InstanceEntry>,
    /// How long it may stay quiet before the checker must look at it: the first of its
    /// timeouts (from `instance`'s metadata), so the checker's pass over the table judges
    /// only the instances that are due.
    pub due_after: Duration,
}

impl BeatEntry {
    fn new(
        last_beat: Instant,
        service: &Arc<ServiceId>,
        instance: &Arc<InstanceEntry>,
        defaults: &BeatTimeouts,
    ) -> Self {
        BeatEntry {
            last_beat,
            service: service.clone(),
            instance: instance.clone(),
            due_after: due_after(defaults, instance),
        }
    }
}

fn due_after(defaults: &BeatTimeouts, instance: &InstanceEntry) -> Duration {
    let timeouts = defaults.for_metadata(&instance.record.metadata);
    timeouts.unhealthy_after.min(timeouts.delete_after)
}

type Shard = Mutex<HashMap<Vec<u8>, BeatEntry>>;

pub struct HeartbeatTable {
    hasher: RandomState,
    shards: Box<[Shard]>,
    /// The node's timeouts, which instances' metadata may override.
    defaults: BeatTimeouts,
}

impl HeartbeatTable {
    pub fn new(defaults: BeatTimeouts) -> Self {
        HeartbeatTable {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            defaults,
        }
    }

    fn shard(&self, key: &[u8]) -> &Shard {
        let index = self.hasher.hash_one(key) as usize % SHARDS;
        &self.shards[index]
    }

    /// Records a beat at `now`.
    pub fn beat(&self, key: &[u8], service: &Arc<ServiceId>, instance: &Arc<InstanceEntry>, now: Instant) {
        let mut shard = self.shard(key).lock();
        match shard.get_mut(key) {
            Some(entry) => {
                entry.last_beat = now;
                if !Arc::ptr_eq(&entry.instance, instance) {
                    entry.instance = instance.clone();
                    entry.due_after = due_after(&self.defaults, instance);
                }
            }
            None => {
                shard.insert(key.to_vec(), BeatEntry::new(now, service, instance, &self.defaults));
            }
        }
    }

    /// The last beat; an instance never seen (after a restart, the table is rebuilt from
    /// the view this way) counts as having beaten `now`.
    pub fn last_or_insert(
        &self,
        key: &[u8],
        service: &Arc<ServiceId>,
        instance: &Arc<InstanceEntry>,
        now: Instant,
    ) -> Instant {
        let mut shard = self.shard(key).lock();
        if let Some(entry) = shard.get_mut(key) {
            if !Arc::ptr_eq(&entry.instance, instance) {
                // The view's instance changed (its metadata may carry other timeouts).
                entry.instance = instance.clone();
                entry.due_after = due_after(&self.defaults, instance);
            }
            return entry.last_beat;
        }
        shard.insert(key.to_vec(), BeatEntry::new(now, service, instance, &self.defaults));
        now
    }

    /// Records a beat for an entry already in the table; false when there is none.
    pub fn touch(&self, key: &[u8], now: Instant) -> bool {
        match self.shard(key).lock().get_mut(key) {
            Some(entry) => {
                entry.last_beat = now;
                true
            }
            None => false,
        }
    }

    pub fn remove(&self, key: &[u8]) {
        self.shard(key).lock().remove(key);
    }

    /// Keeps the entries `keep` says yes to.
    pub fn retain(&self, mut keep: impl FnMut(&[u8], &BeatEntry) -> bool) {
        for shard in self.shards.iter() {
            shard.lock().retain(|key, entry| keep(key, entry));
        }
    }

    /// Every entry that beat at or after `since`.
    pub fn beating_since(&self, since: Instant) -> Vec<(Vec<u8>, BeatEntry)> {
        self.entries_where(|e| e.last_beat >= since)
    }

    /// Every entry quiet at `now` for at least its `due_after`: one pass over the table,
    /// a comparison per entry, copies only of what is due.
    pub fn quiet(&self, now: Instant) -> Vec<(Vec<u8>, BeatEntry)> {
        self.entries_where(|e| now.saturating_duration_since(e.last_beat) >= e.due_after)
    }

    /// Copies of the entries `wanted` says yes to, shard by shard.
    fn entries_where(&self, wanted: impl Fn(&BeatEntry) -> bool) -> Vec<(Vec<u8>, BeatEntry)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            out.extend(shard.lock().iter().filter(|(_, e)| wanted(e)).map(|(k, e)| (k.clone(), e.clone())));
        }
        out
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{InstanceRecord, META_BEAT_TIMEOUT};
    use crate::names::InstanceAddr;

    fn instance(port: i64, beat_timeout_ms: Option<&str>) -> Arc<InstanceEntry> {
        let mut record = InstanceRecord::for_test(true, true);
        if let Some(ms) = beat_timeout_ms {
            record.metadata.insert(META_BEAT_TIMEOUT.into(), ms.into());
        }
        let addr = Arc::new(InstanceAddr::parse("", "10.0.0.1", port).unwrap());
        Arc::new(InstanceEntry { addr, record, mod_revision: 1, lease: None })
    }

    #[test]
    fn quiet_lists_only_what_is_due_by_each_instances_own_timeouts() {
        let defaults = BeatTimeouts {
            interval: Duration::from_secs(5),
            unhealthy_after: Duration::from_secs(15),
            delete_after: Duration::from_secs(30),
        };
        let table = HeartbeatTable::new(defaults);
        let service = Arc::new(ServiceId::new("", "", "svc").unwrap());
        let t0 = Instant::now();
        table.beat(b"a", &service, &instance(1, None), t0);
        table.beat(b"b", &service, &instance(2, Some("2000")), t0);
        let due = |secs| {
            let mut keys: Vec<Vec<u8>> =
                table.quiet(t0 + Duration::from_secs(secs)).into_iter().map(|(key, _)| key).collect();
            keys.sort();
            keys
        };
        assert!(due(1).is_empty());
        assert_eq!(due(2), [b"b".to_vec()]);
        assert_eq!(due(15), [b"a".to_vec(), b"b".to_vec()]);
        // A beat makes it quiet no more; a new instance value brings its own timeouts.
        table.beat(b"b", &service, &instance(2, None), t0 + Duration::from_secs(10));
        assert_eq!(due(15), [b"a".to_vec()]);
        assert_eq!(due(25), [b"a".to_vec(), b"b".to_vec()]);
    }
}
