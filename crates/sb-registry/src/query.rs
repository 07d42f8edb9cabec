//! Instance selection with Nacos 1.x's protection threshold, the one rule both protocols
//! use.
//!
//! Among the instances of the asked clusters (disabled ones included), if
//! healthy / total ≤ the service's threshold, the threshold is reached: every instance is
//! served as if healthy, so a fleet that is mostly failing health checks is not squeezed
//! onto its few survivors. At the default threshold of 0 this happens only when no
//! instance is healthy.

use std::sync::Arc;

use sb_store::Revision;

use crate::state::{InstanceEntry, ServiceEntry};

#[derive(Clone, Debug, Default)]
pub struct InstanceQuery {
    /// Only these clusters; empty means every cluster.
    pub clusters: Vec<String>,
    /// Leave out instances not served as healthy.
    pub healthy_only: bool,
    /// Leave out disabled instances (Nacos's lists never show them).
    pub enabled_only: bool,
}

#[derive(Clone, Debug)]
pub struct SelectedInstance {
    pub entry: Arc<InstanceEntry>,
    /// Healthy as served: true for every instance once the threshold is reached.
    pub served_healthy: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub instances: Vec<SelectedInstance>,
    pub reach_protection_threshold: bool,
    pub protect_threshold: f64,
    /// The revision of the service's last change (0 when it does not exist).
    pub changed_revision: Revision,
}

pub fn select(service: Option<&ServiceEntry>, query: &InstanceQuery) -> Selection {
    let Some(service) = service else { return Selection::default() };
    let in_clusters: Vec<&Arc<InstanceEntry>> = service
        .instances
        .values()
        .filter(|i| query.clusters.is_empty() || query.clusters.iter().any(|c| *c == i.addr.cluster))
        .collect();
    let threshold = service.protect_threshold();
    let total = in_clusters.len();
    let healthy = in_clusters.iter().filter(|i| i.record.healthy).count();
    let reached = total > 0 && (healthy as f64 / total as f64) <= threshold;
    let instances = in_clusters
        .into_iter()
        .filter(|i| !query.enabled_only || i.record.enabled)
        .map(|i| SelectedInstance { entry: i.clone(), served_healthy: reached || i.record.healthy })
        .filter(|s| !query.healthy_only || s.served_healthy)
        .collect();
    Selection {
        instances,
        reach_protection_threshold: reached,
        protect_threshold: threshold,
        changed_revision: service.changed_revision,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{InstanceRecord, ServiceRecord};
    use crate::names::InstanceAddr;
    use crate::state::ServiceRecordEntry;

    fn service(threshold: f64, health: &[bool]) -> ServiceEntry {
        let mut entry = ServiceEntry {
            record: Some(Arc::new(ServiceRecordEntry {
                record: ServiceRecord { protect_threshold: threshold, ..Default::default() },
                mod_revision: 1,
            })),
            ..Default::default()
        };
        for (n, healthy) in health.iter().enumerate() {
            let addr = Arc::new(InstanceAddr::parse("", "10.0.0.1", 1000 + n as i64).unwrap());
            let record = InstanceRecord::for_test(true, *healthy);
            entry
                .instances
                .insert(addr.clone(), Arc::new(InstanceEntry { addr, record, mod_revision: 1, lease: None }));
        }
        entry
    }

    #[test]
    fn default_threshold_protects_only_when_none_is_healthy() {
        let q = InstanceQuery { healthy_only: true, ..Default::default() };
        let some = select(Some(&service(0.0, &[true, false])), &q);
        assert!(!some.reach_protection_threshold);
        assert_eq!(some.instances.len(), 1);
        let none = select(Some(&service(0.0, &[false, false])), &q);
        assert!(none.reach_protection_threshold);
        assert_eq!(none.instances.len(), 2);
        assert!(none.instances.iter().all(|i| i.served_healthy && !i.entry.record.healthy));
    }

    #[test]
    fn threshold_compares_the_healthy_ratio() {
        let q = InstanceQuery::default();
        assert!(select(Some(&service(0.5, &[true, false, false])), &q).reach_protection_threshold);
        assert!(!select(Some(&service(0.5, &[true, true, false])), &q).reach_protection_threshold);
        assert!(!select(None, &q).reach_protection_threshold);
    }
}
