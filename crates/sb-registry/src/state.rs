//! The registry view's state: services with their instances, indexed for the queries
//! (one service's instances, services of a namespace in order), rebuilt from watch events.
//! Persistent maps keep each snapshot cheap to clone.

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
    pub addr: InstanceAddr,
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
    pub instances: imbl::OrdMap<InstanceAddr, Arc<InstanceEntry>>,
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
    pub services: imbl::OrdMap<ServiceId, ServiceEntry>,
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
        let id = match &key {
            RegistryKey::Service(id) | RegistryKey::Instance(id, _) => id.clone(),
        };
        let mut entry = self.services.get(&id).cloned().unwrap_or_default();
        entry.changed_revision = entry.changed_revision.max(revision);
        match (key, event.kind) {
            (RegistryKey::Service(_), EventKind::Put) => match decode::<ServiceRecord>(&event.kv.value) {
                Ok(record) => {
                    entry.record = Some(Arc::new(ServiceRecordEntry { record, mod_revision: revision }))
                }
                Err(error) => {
                    entry.record = None;
                    self.undecodable(event, error);
                }
            },
            (RegistryKey::Service(_), EventKind::Delete) => entry.record = None,
            (RegistryKey::Instance(_, addr), EventKind::Put) => {
                let before = entry.instances.len();
                let replaced = match decode::<InstanceRecord>(&event.kv.value) {
                    Ok(record) => {
                        entry.persistent += usize::from(!record.ephemeral);
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
            (RegistryKey::Instance(_, addr), EventKind::Delete) => {
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
