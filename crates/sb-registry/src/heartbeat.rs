//! The in-memory heartbeat table: when each ephemeral instance owned by this node last
//! beat. Beats land here and never in the store; only health *changes* are written.
//! Sharded, so concurrent beats rarely share a lock.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::time::Instant;

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
}

type Shard = Mutex<HashMap<Vec<u8>, BeatEntry>>;

pub struct HeartbeatTable {
    hasher: RandomState,
    shards: Box<[Shard]>,
}

impl Default for HeartbeatTable {
    fn default() -> Self {
        HeartbeatTable {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl HeartbeatTable {
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
                }
            }
            None => {
                let entry =
                    BeatEntry { last_beat: now, service: service.clone(), instance: instance.clone() };
                shard.insert(key.to_vec(), entry);
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
        if let Some(entry) = shard.get(key) {
            return entry.last_beat;
        }
        let entry = BeatEntry { last_beat: now, service: service.clone(), instance: instance.clone() };
        shard.insert(key.to_vec(), entry);
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
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            out.extend(
                shard
                    .lock()
                    .iter()
                    .filter(|(_, e)| e.last_beat >= since)
                    .map(|(k, e)| (k.clone(), e.clone())),
            );
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
