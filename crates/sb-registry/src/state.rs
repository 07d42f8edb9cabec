//! The registry view's state: services with their instances, indexed for the queries
//! (one service's instances, services of a namespace in order), rebuilt from watch events.
//! Persistent maps keep each snapshot cheap to clone.
//!
//! Their keys are `Arc`s: a change copies the path of B-tree nodes it touches when a
//! snapshot still shares them, and each node holds 16 keys, so shared keys make that copy
//! a few reference counts instead of a string allocation per key, and an instance's address
//! is held once (map key and entry share it).

use std::sync::Arc;

use sb_store::codec::decode;
use sb_store::view::ViewState;
use sb_store::{Event, EventKind, LeaseId, Revision};
use tracing::warn;

use crate::model::{InstanceRecord, ServiceRecord};
use crate::names::{parse_key, InstanceAddr, RegistryKey, ServiceId};

/// One instance as the view holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceEntry {
    /// The same `Arc` as the instance's key in [`ServiceEntry::instances`].
    pub addr: Arc<InstanceAddr>,
    pub record: InstanceRecord,
    pub mod_revision: Revision,
    pub lease: Option<LeaseId>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServiceRecordEntry {
    pub record: ServiceRecord,
    pub mod_revision: Revision,
}

/// A service: its settings (absent for a service known only by its instances) and its
/// instances by address.
#[derive(Clone, Debug, Default)]
pub struct ServiceEntry {
    pub record: Option<Arc<ServiceRecordEntry>>,
    pub instances: imbl::OrdMap<Arc<InstanceAddr>, Arc<InstanceEntry>>,
    /// The revision of the last change to the service or any of its instances.
    pub changed_revision: Revision,
    /// How many of its instances are persistent (those health checks may probe).
    pub persistent: usize,
}

impl ServiceEntry {
    pub fn protect_threshold(&self) -> f64 {
        self.record.as_ref().map_or(0.0, |r| r.record.protect_threshold)
    }
}

#[derive(Clone, Debug)]
pub struct RegistryState {
    pub services: imbl::OrdMap<Arc<ServiceId>, ServiceEntry>,
    pub instance_count: usize,
    pub undecodable: u64,
    /// Distinct for every state built from scratch (each load or reload of the view):
    /// after a reload a service's last-change revision may repeat with other content, so
    /// whatever is cached by revision is cached by (generation, revision).
    pub generation: u64,
}

static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Default for RegistryState {
    fn default() -> Self {
        RegistryState {
            services: imbl::OrdMap::new(),
            instance_count: 0,
            undecodable: 0,
            generation: GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }
}

impl RegistryState {
    pub fn service(&self, id: &ServiceId) -> Option<&ServiceEntry> {
        self.services.get(id)
    }

    pub fn instance(&self, id: &ServiceId, addr: &InstanceAddr) -> Option<&Arc<InstanceEntry>> {
        self.services.get(id).and_then(|s| s.instances.get(addr))
    }

    /// An instance with its service's id as this state holds it (to share, not copy).
    pub fn instance_with_id(
        &self,
        id: &ServiceId,
        addr: &InstanceAddr,
    ) -> Option<(&Arc<ServiceId>, &Arc<InstanceEntry>)> {
        let (id, service) = self.services.get_key_value(id)?;
        Some((id, service.instances.get(addr)?))
    }

    /// The services of a namespace (and group, if given), in name order.
    pub fn services_in<'a>(
        &'a self,
        namespace: &'a str,
        group_opt: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a ServiceId, &'a ServiceEntry)> + 'a {
        let start = ServiceId { namespace: namespace.into(), group: String::new(), service: String::new() };
        self.services
            .range(start..)
            .take_while(move |(id, _)| id.namespace == namespace)
            .filter(move |(id, _)| group_opt.is_none_or(|g| id.group == g))
            .map(|(id, service)| (&**id, service))
    }

    fn undecodable(&mut self, event: &Event, error: impl std::fmt::Display) {
        self.undecodable += 1;
        warn!(key = %String::from_utf8_lossy(&event.kv.key), %error, "skipping undecodable registry value");
    }
}

impl ViewState for RegistryState {
    fn apply(&mut self, event: &Event) {
        let Some(key) = parse_key(&event.kv.key) else { return };
        let revision = event.kv.mod_revision;
        let (id, addr_opt) = match key {
            RegistryKey::Service(id) => (id, None),
            RegistryKey::Instance(id, addr) => (id, Some(addr)),
        };
        // The service's key as the map holds it, shared, or a new one.
        let (id, mut entry) = match self.services.get_key_value(&id) {
            Some((id, entry)) => (id.clone(), entry.clone()),
            None => (Arc::new(id), ServiceEntry::default()),
        };
        entry.changed_revision = entry.changed_revision.max(revision);
        match (addr_opt, event.kind) {
            (None, EventKind::Put) => match decode::<ServiceRecord>(&event.kv.value) {
                Ok(record) => {
                    entry.record = Some(Arc::new(ServiceRecordEntry { record, mod_revision: revision }))
                }
                Err(error) => {
                    entry.record = None;
                    self.undecodable(event, error);
                }
            },
            (None, EventKind::Delete) => entry.record = None,
            (Some(addr), EventKind::Put) => {
                let before = entry.instances.len();
                let replaced = match decode::<InstanceRecord>(&event.kv.value) {
                    Ok(record) => {
                        entry.persistent += usize::from(!record.ephemeral);
                        let addr = match entry.instances.get_key_value(&addr) {
                            Some((shared, _)) => shared.clone(),
                            None => Arc::new(addr),
                        };
                        let instance = InstanceEntry {
                            addr: addr.clone(),
                            record,
                            mod_revision: revision,
                            lease: event.kv.lease,
                        };
                        entry.instances.insert(addr, Arc::new(instance))
                    }
                    Err(error) => {
                        self.undecodable(event, error);
                        entry.instances.remove(&addr)
                    }
                };
                if let Some(replaced) = replaced {
                    entry.persistent -= usize::from(!replaced.record.ephemeral);
                }
                self.instance_count = self.instance_count + entry.instances.len() - before;
            }
            (Some(addr), EventKind::Delete) => {
                if let Some(removed) = entry.instances.remove(&addr) {
                    entry.persistent -= usize::from(!removed.record.ephemeral);
                    self.instance_count -= 1;
                }
            }
        }
        if entry.record.is_none() && entry.instances.is_empty() {
            self.services.remove(&id);
        } else {
            self.services.insert(id, entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sb_store::codec::encode;
    use sb_store::KeyValue;

    fn event(kind: EventKind, key: Vec<u8>, value: Vec<u8>, revision: Revision) -> Event {
        let kv = KeyValue {
            key,
            value,
            create_revision: revision,
            mod_revision: revision,
            version: 1,
            lease: None,
        };
        Event { kind, kv }
    }

    fn record(ephemeral: bool) -> Vec<u8> {
        let record =
            InstanceRecord { default_check: !ephemeral, ..InstanceRecord::for_test(ephemeral, true) };
        encode(&record).unwrap()
    }

    #[test]
    fn persistent_instances_are_counted_and_addresses_shared() {
        let id = ServiceId::new("public", "g", "s").unwrap();
        let (a, b) = (
            InstanceAddr::parse("", "10.0.0.1", 80).unwrap(),
            InstanceAddr::parse("", "10.0.0.2", 80).unwrap(),
        );
        let mut state = RegistryState::default();
        let persistent = |state: &RegistryState| state.service(&id).map_or(0, |s| s.persistent);
        state.apply(&event(EventKind::Put, id.instance_key(&a), record(false), 2));
        state.apply(&event(EventKind::Put, id.instance_key(&b), record(true), 3));
        assert_eq!((persistent(&state), state.instance_count), (1, 2));
        // Re-put as ephemeral, then persistent again: replaced, not added.
        state.apply(&event(EventKind::Put, id.instance_key(&a), record(true), 4));
        assert_eq!(persistent(&state), 0);
        state.apply(&event(EventKind::Put, id.instance_key(&b), record(false), 5));
        state.apply(&event(EventKind::Put, id.instance_key(&b), record(false), 6));
        assert_eq!((persistent(&state), state.instance_count), (1, 2));
        // The map's key and the entry hold one address.
        let service = state.service(&id).unwrap();
        let (key, entry) = service.instances.get_key_value(&b).unwrap();
        assert!(Arc::ptr_eq(key, &entry.addr));
        assert!(entry.record.default_check);
        // An undecodable put removes the instance; a delete too.
        state.apply(&event(EventKind::Put, id.instance_key(&b), b"{".to_vec(), 7));
        assert_eq!((persistent(&state), state.instance_count, state.undecodable), (0, 1, 1));
        state.apply(&event(EventKind::Delete, id.instance_key(&a), Vec::new(), 8));
        assert!(state.service(&id).is_none(), "a service with no record and no instance is gone");
        assert_eq!(state.instance_count, 0);
    }
}
