//! Active health checks of persistent instances: HTTP (method, path, expected status range),
//! TCP connect and gRPC `grpc.health.v1`, with per-check interval, timeout and healthy/unhealthy thresholds,
//! jittered schedules and bounded concurrency. Checks are sharded across the live nodes by
//! rendezvous hashing over the membership view, so each instance is probed by one node; when
//! a node leaves the view its share moves on the next reconcile. Only status changes are
//! written (through `Registry::set_health`, compared on the instance's mod revision).
//!
//! Checks set on an instance live at `health/checks/{ns}/{group}/{service}/{cluster}/{ip}:{port}`;
//! a cluster's Nacos health-checker settings at `health/clusters/{ns}/{group}/{service}/{cluster}`.
//! Nacos's default check is not stored: an instance registered through Nacos as persistent
//! carries a `default_check` flag, and [`own_check`] derives the check from it. Which check
//! probes an instance is decided by [`effective_check`], and nowhere else.
//!
//! Architecture invariant: this crate sees only the store port, the registry and the
//! membership view; it knows nothing of redb, etcd, HTTP servers or Nacos's wire format
//! beyond the `healthChecker` JSON it maps (its HTTP probe is a minimal HTTP/1.1 request
//! over a TCP stream; its gRPC probe is tonic's generated health client).
#![forbid(unsafe_code)]

mod probe;
mod spec;

pub use probe::probe;
pub use spec::{
    effective_check, own_check, CheckKind, CheckOrigin, CheckSpec, ClusterCheck, InvalidCheck,
    MAX_INTERVAL_MS, MAX_THRESHOLD, MIN_INTERVAL_MS,
};

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sb_registry::{InstanceAddr, Registry, RegistryError, RegistryResult, ServiceId};
use sb_store::codec::encode;
use sb_store::view::DecodedMap;
use sb_store::{KeyRange, Membership, SharedStore, StoreResult, Txn, TxnOp, View};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

pub const CHECKS_PREFIX: &str = "health/checks/";
pub const CLUSTERS_PREFIX: &str = "health/clusters/";
const INSTANCES_PREFIX: &str = "registry/instances/";
/// How many probes run at once on one node; a slow target holds one permit at most for
/// its timeout.
pub const MAX_CONCURRENT_PROBES: usize = 512;

pub fn check_key(id: &ServiceId, addr: &InstanceAddr) -> Vec<u8> {
    let mut out = checks_prefix(id);
    addr.push_key_suffix(&mut out);
    out
}

/// `health/checks/{ns}/{group}/{service}/`: a service's check keys are this plus the
/// instance's `{cluster}/{ip}:{port}`.
fn checks_prefix(id: &ServiceId) -> Vec<u8> {
    let prefix = id.instances_prefix();
    let mut out = CHECKS_PREFIX.as_bytes().to_vec();
    out.extend_from_slice(&prefix[INSTANCES_PREFIX.len()..]);
    out
}

#[cfg(test)]
fn parse_check_key(key: &[u8]) -> Option<(ServiceId, InstanceAddr)> {
    use sb_registry::names::{parse_key, RegistryKey};
    let rest = key.strip_prefix(CHECKS_PREFIX.as_bytes())?;
    let mut full = INSTANCES_PREFIX.as_bytes().to_vec();
    full.extend_from_slice(rest);
    match parse_key(&full)? {
        RegistryKey::Instance(id, addr) => Some((id, addr)),
        RegistryKey::Service(_) => None,
    }
}

/// Rendezvous hashing: the live node with the highest hash of (node, key) probes it.
pub fn owner<'a>(nodes: impl IntoIterator<Item = &'a str>, key: &[u8]) -> Option<&'a str> {
    nodes.into_iter().max_by_key(|node| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        node.hash(&mut hasher);
        key.hash(&mut hasher);
        (hasher.finish(), *node)
    })
}

fn cluster_key(id: &ServiceId, cluster: &str) -> Vec<u8> {
    let prefix = id.instances_prefix();
    let mut out = CLUSTERS_PREFIX.as_bytes().to_vec();
    out.extend_from_slice(&prefix[INSTANCES_PREFIX.len()..]);
    out.extend_from_slice(cluster.as_bytes());
    out
}

fn parse_cluster_key(key: &[u8]) -> Option<(ServiceId, String)> {
    let rest = std::str::from_utf8(key.strip_prefix(CLUSTERS_PREFIX.as_bytes())?).ok()?;
    let mut parts = rest.split('/');
    let (ns, group, service, cluster) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let id = ServiceId { namespace: ns.into(), group: group.into(), service: service.into() };
    Some((id, cluster.to_owned()))
}

type CheckView = View<DecodedMap<CheckSpec>>;
type ClusterView = View<DecodedMap<ClusterCheck>>;

/// How a node runs its share of the checks.
#[derive(Clone, Debug)]
pub struct HealthSettings {
    /// How often the node re-reads the checks and the membership view.
    pub reconcile: Duration,
    /// The interval of checks set through Nacos (its default TCP check and cluster
    /// health checkers), which has no setting for it.
    pub nacos_interval_ms: u64,
    /// How long a write waits for this node's view to show it.
    pub read_your_writes_timeout: Duration,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            reconcile: Duration::from_secs(1),
            nacos_interval_ms: 5000,
            read_your_writes_timeout: Duration::from_secs(5),
        }
    }
}

/// The checks' service: definitions (writes) and this node's share of the probing.
pub struct HealthChecks {
    store: SharedStore,
    registry: Arc<Registry>,
    view: Arc<CheckView>,
    clusters: Arc<ClusterView>,
    settings: HealthSettings,
    stats: Arc<ProbeStats>,
    reconciler: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        if let Some(task) = self.reconciler.lock().take() {
            task.abort();
        }
    }
}

/// Counters of this node's probing, for metrics and the bench tool.
#[derive(Debug, Default)]
pub struct ProbeStats {
    /// Checks this node runs now.
    pub running: std::sync::atomic::AtomicU64,
    pub probes: std::sync::atomic::AtomicU64,
    pub failures: std::sync::atomic::AtomicU64,
    /// Probes that started more than one interval after they were due.
    pub overdue: std::sync::atomic::AtomicU64,
}

/// What one running check probes.
#[derive(Clone, Debug, PartialEq)]
struct Probe {
    spec: CheckSpec,
    target: std::net::SocketAddr,
}

struct Running {
    probe: Probe,
    task: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HealthChecks {
    /// Loads the checks' views and starts probing this node's share.
    pub async fn start(
        store: SharedStore,
        registry: Arc<Registry>,
        membership: Arc<Membership>,
        node_id: String,
        settings: HealthSettings,
    ) -> StoreResult<HealthChecks> {
        let view =
            Arc::new(View::start(store.clone(), KeyRange::prefix(CHECKS_PREFIX), "health checks").await?);
        let clusters = Arc::new(
            View::start(store.clone(), KeyRange::prefix(CLUSTERS_PREFIX), "health cluster checks").await?,
        );
        let stats = Arc::new(ProbeStats::default());
        let reconciler = Reconciler {
            view: view.clone(),
            clusters: clusters.clone(),
            registry: registry.clone(),
            membership,
            node_id,
            stats: stats.clone(),
            nacos_interval_ms: settings.nacos_interval_ms,
        };
        let task = tokio::spawn(reconciler.run(settings.reconcile));
        Ok(HealthChecks {
            store,
            registry,
            view,
            clusters,
            settings,
            stats,
            reconciler: Mutex::new(Some(task)),
        })
    }

    pub fn stats(&self) -> &Arc<ProbeStats> {
        &self.stats
    }

    /// The check set on a registered instance: its own ([`own_check`]: stored, or Nacos's
    /// default if it takes it).
    pub fn get(&self, id: &ServiceId, addr: &InstanceAddr) -> Option<CheckSpec> {
        let stored = self.stored(id, addr);
        match self.registry.snapshot().instance(id, addr) {
            Some(instance) => own_check(&instance.record, stored.as_ref(), self.settings.nacos_interval_ms),
            None => stored,
        }
    }

    /// The check stored for an instance, if any.
    fn stored(&self, id: &ServiceId, addr: &InstanceAddr) -> Option<CheckSpec> {
        self.view.snapshot().entries.get(&check_key(id, addr)).map(|e| e.value.clone())
    }

    /// The interval of checks set through Nacos.
    pub fn nacos_interval_ms(&self) -> u64 {
        self.settings.nacos_interval_ms
    }

    /// Sets the check of a registered persistent instance; an ephemeral instance's beats
    /// tell its health, so it takes no check.
    pub async fn put(
        &self,
        id: &ServiceId,
        addr: &InstanceAddr,
        spec: &CheckSpec,
        audit: &sb_audit::Audit,
    ) -> RegistryResult<sb_store::Revision> {
        self.persistent(id, addr, "instance", "checks are for persistent instances")?;
        let value = encode(spec)
            .map_err(|e| sb_store::StoreError::InvalidArgument(format!("encoding a check: {e}")))?;
        let key = check_key(id, addr);
        let before = self.get(id, addr).and_then(|spec| encode(&spec).ok());
        let audited =
            audit.op("health.check.put", String::from_utf8_lossy(&key), before.as_deref(), Some(&value));
        let response = self.store.txn(Txn::new().and_then([TxnOp::put(key, value), audited])).await?;
        self.view.wait_for(response.revision, self.settings.read_your_writes_timeout).await?;
        Ok(response.revision)
    }

    /// Deletes an instance's own check, the stored one and Nacos's default alike; `true`
    /// when there was a check to delete.
    pub async fn delete(
        &self,
        id: &ServiceId,
        addr: &InstanceAddr,
        audit: &sb_audit::Audit,
    ) -> RegistryResult<bool> {
        let key = check_key(id, addr);
        let before = self.get(id, addr).and_then(|spec| encode(&spec).ok());
        let audited =
            || audit.op("health.check.delete", String::from_utf8_lossy(&key), before.as_deref(), None);
        // The default check is cleared on the instance, with the stored check (if any) in
        // the same transaction; a concurrent write to the instance (a probe's health
        // change) is retried a few times rather than answered as a conflict.
        for attempt in 1..=3 {
            let ops = vec![TxnOp::delete(key.clone()), audited()];
            match self.registry.clear_default_check(id, addr, ops).await {
                Ok(Some(revision)) => {
                    self.view.wait_for(revision, self.settings.read_your_writes_timeout).await?;
                    return Ok(true);
                }
                Err(RegistryError::Conflict(_)) if attempt < 3 => {}
                Ok(None) | Err(RegistryError::NotFound(_)) => break,
                Err(error) => return Err(error),
            }
        }
        // Recorded only when there was a check to delete.
        let txn = Txn::new()
            .when([sb_store::Compare::version(key.clone(), sb_store::CompareOp::Greater, 0)])
            .and_then([TxnOp::delete(key.clone()), audited()]);
        let response = self.store.txn(txn).await?;
        self.view.wait_for(response.revision, self.settings.read_your_writes_timeout).await?;
        Ok(response.succeeded)
    }

    /// A registered persistent instance. An ephemeral one's health is its heartbeats', so a
    /// request about it is refused, naming `field` and saying `why`.
    fn persistent(
        &self,
        id: &ServiceId,
        addr: &InstanceAddr,
        field: &'static str,
        why: &str,
    ) -> RegistryResult<Arc<sb_registry::InstanceEntry>> {
        let Some(instance) = self.registry.snapshot().instance(id, addr).cloned() else {
            return Err(RegistryError::NotFound(format!(
                "instance {} of service {id} is not registered",
                addr.socket()
            )));
        };
        if instance.record.ephemeral {
            return Err(RegistryError::invalid(
                field,
                format!("instance {} is ephemeral: its heartbeats tell its health; {why}", addr.socket()),
            ));
        }
        Ok(instance)
    }

    /// Sets a persistent instance's health by hand (Nacos `PUT /nacos/v1/ns/health/instance`,
    /// and the native API), as Nacos allows it: only while nothing probes the instance
    /// ([`effective_check`] gives it no check, for example because its cluster's checker is
    /// `NONE`). A probed instance's health is its probe's, and an ephemeral instance's is its
    /// heartbeats'. Returns the instance's revision (unchanged when it already had that
    /// health).
    pub async fn set_health(
        &self,
        id: &ServiceId,
        addr: &InstanceAddr,
        healthy: bool,
        audit: &sb_audit::Audit,
    ) -> RegistryResult<sb_store::Revision> {
        let instance = self.persistent(id, addr, "healthy", "it is not set by hand")?;
        let stored = self.stored(id, addr);
        let cluster = self.cluster(id, &addr.cluster);
        let probed = effective_check(
            &instance.record,
            stored.as_ref(),
            cluster.as_ref(),
            addr.port,
            self.settings.nacos_interval_ms,
        );
        if let Some((check, port)) = probed {
            return Err(RegistryError::invalid(
                "healthy",
                format!(
                    "health check is still working: instance {} of service {id} is probed by a {} check on \
                     port {port}, which sets its health (set its cluster's healthChecker to NONE, or delete \
                     its check, first)",
                    addr.socket(),
                    check.kind.name()
                ),
            ));
        }
        self.registry.mark_health(id, addr, healthy, audit).await
    }

    /// A cluster's Nacos health-checker settings, if set.
    pub fn cluster(&self, id: &ServiceId, cluster: &str) -> Option<ClusterCheck> {
        self.clusters.snapshot().entries.get(&cluster_key(id, cluster)).map(|e| e.value.clone())
    }

    /// The clusters of a service that have health-checker settings.
    pub fn clusters_of(&self, id: &ServiceId) -> Vec<String> {
        let prefix = cluster_key(id, "");
        let snapshot = self.clusters.snapshot();
        snapshot
            .entries
            .range(prefix.clone()..)
            .take_while(|(key, _)| key.starts_with(&prefix))
            .filter_map(|(key, _)| parse_cluster_key(key).map(|(_, cluster)| cluster))
            .collect()
    }

    /// Sets a cluster's health-checker settings (Nacos `PUT /nacos/v1/ns/cluster`); the
    /// service must exist, as in Nacos.
    pub async fn put_cluster(
        &self,
        id: &ServiceId,
        cluster: &str,
        check: &ClusterCheck,
        audit: &sb_audit::Audit,
    ) -> RegistryResult<sb_store::Revision> {
        sb_registry::names::check_name("clusterName", cluster)?;
        if self.registry.snapshot().service(id).is_none() {
            return Err(RegistryError::NotFound(format!("service {} is not found", id.grouped_name())));
        }
        let value = encode(check)
            .map_err(|e| sb_store::StoreError::InvalidArgument(format!("encoding a cluster check: {e}")))?;
        let key = cluster_key(id, cluster);
        let audited = audit.op("health.cluster.put", String::from_utf8_lossy(&key), None, Some(&value));
        let response = self.store.txn(Txn::new().and_then([TxnOp::put(key, value), audited])).await?;
        self.clusters.wait_for(response.revision, self.settings.read_your_writes_timeout).await?;
        Ok(response.revision)
    }
}

struct Seen {
    checks: Arc<DecodedMap<CheckSpec>>,
    clusters: Arc<DecodedMap<ClusterCheck>>,
    registry: Arc<sb_registry::RegistryState>,
    nodes: Vec<String>,
}

/// This node's share of the probing, re-read every reconcile tick.
struct Reconciler {
    view: Arc<CheckView>,
    clusters: Arc<ClusterView>,
    registry: Arc<Registry>,
    membership: Arc<Membership>,
    node_id: String,
    stats: Arc<ProbeStats>,
    /// The interval of Nacos's default check.
    nacos_interval_ms: u64,
}

impl Reconciler {
    async fn run(self, every: Duration) {
        let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_PROBES));
        let mut running: HashMap<Vec<u8>, Running> = HashMap::new();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // What the last pass saw; held (not just their addresses) so a freed snapshot's
        // address reused by a new one cannot pass for "unchanged".
        let mut seen: Option<Seen> = None;
        loop {
            tick.tick().await;
            let checks = self.view.snapshot();
            let clusters = self.clusters.snapshot();
            let registry_state = self.registry.snapshot();
            let mut nodes: Vec<String> = self.membership.live_nodes().into_iter().map(|n| n.id).collect();
            nodes.sort();
            // Nothing changed since the last pass, and no check ended: nothing to do.
            let unchanged = seen.as_ref().is_some_and(|seen| {
                Arc::ptr_eq(&seen.checks, &checks)
                    && Arc::ptr_eq(&seen.clusters, &clusters)
                    && Arc::ptr_eq(&seen.registry, &registry_state)
                    && seen.nodes == nodes
            });
            if unchanged && running.values().all(|r| !r.task.is_finished()) {
                continue;
            }
            let wanted = self.wanted(&checks, &clusters, &registry_state, &nodes);
            seen = Some(Seen { checks, clusters, registry: registry_state, nodes });
            running.retain(|key, run| {
                let keep = wanted.get(key).is_some_and(|w| w.2 == run.probe) && !run.task.is_finished();
                if !keep {
                    run.task.abort();
                }
                keep
            });
            for (key, (id, addr, probe)) in wanted {
                if running.contains_key(&key) {
                    continue;
                }
                debug!(service = %id, instance = %addr.socket(), target = %probe.target, "probing");
                let task = tokio::spawn(run_check(
                    self.registry.clone(),
                    permits.clone(),
                    self.stats.clone(),
                    id,
                    addr,
                    probe.clone(),
                    self.node_id.clone(),
                ));
                running.insert(key, Running { probe, task });
            }
            self.stats.running.store(running.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The checks this node owns: every persistent instance [`effective_check`] gives one
    /// (its own check, its cluster's settings or Nacos's default).
    ///
    /// It runs on every registry change, so it builds nothing per instance that does not
    /// end up probed: a candidate map of every instance (100k entries, ~28 MiB) built
    /// again at each change was the largest allocation of a node filling up, and what it
    /// left behind fragmented the heap. Services without persistent instances are skipped
    /// whole.
    fn wanted(
        &self,
        checks: &DecodedMap<CheckSpec>,
        clusters: &DecodedMap<ClusterCheck>,
        registry_state: &sb_registry::RegistryState,
        nodes: &[String],
    ) -> HashMap<Vec<u8>, (Arc<ServiceId>, Arc<InstanceAddr>, Probe)> {
        let mut wanted = HashMap::new();
        for (id, service) in registry_state.services.iter().filter(|(_, s)| s.persistent > 0) {
            // The service's clusters with settings: `{cluster}` after this prefix.
            let prefix = cluster_key(id, "");
            let settings: Vec<(&[u8], &ClusterCheck)> = clusters
                .entries
                .range(prefix.clone()..)
                .take_while(|(key, _)| key.starts_with(&prefix))
                .map(|(key, entry)| (&key[prefix.len()..], &entry.value))
                .collect();
            let mut key = checks_prefix(id);
            let base = key.len();
            for (addr, instance) in service.instances.iter().filter(|(_, i)| !i.record.ephemeral) {
                key.truncate(base);
                addr.push_key_suffix(&mut key);
                if owner(nodes.iter().map(String::as_str), &key) != Some(self.node_id.as_str()) {
                    continue;
                }
                let stored = checks.entries.get(&key).map(|e| &e.value);
                let cluster =
                    settings.iter().find(|(name, _)| *name == addr.cluster.as_bytes()).map(|(_, c)| *c);
                let Some((spec, port)) =
                    effective_check(&instance.record, stored, cluster, addr.port, self.nacos_interval_ms)
                else {
                    continue;
                };
                let target = std::net::SocketAddr::new(addr.ip, port);
                wanted.insert(key.clone(), (id.clone(), addr.clone(), Probe { spec, target }));
            }
        }
        wanted
    }
}

async fn run_check(
    registry: Arc<Registry>,
    permits: Arc<Semaphore>,
    stats: Arc<ProbeStats>,
    id: Arc<ServiceId>,
    addr: Arc<InstanceAddr>,
    probe_of: Probe,
    node_id: String,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let Probe { spec, target } = probe_of;
    let interval = Duration::from_millis(spec.interval_ms);
    // A random start within one interval spreads the probes of many checks.
    tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % spec.interval_ms)).await;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut passes, mut failures) = (0u32, 0u32);
    loop {
        let due = tick.tick().await;
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        if due.elapsed() > interval {
            stats.overdue.fetch_add(1, Relaxed);
        }
        let result = probe(target, &spec, &node_id).await;
        drop(permit);
        stats.probes.fetch_add(1, Relaxed);
        match &result {
            Ok(()) => {
                passes = passes.saturating_add(1);
                failures = 0;
            }
            Err(_) => {
                stats.failures.fetch_add(1, Relaxed);
                failures = failures.saturating_add(1);
                passes = 0;
            }
        }
        let Some(current) = registry.snapshot().instance(&id, &addr).map(|i| i.record.healthy) else {
            return;
        };
        let verdict = if !current && passes >= spec.healthy_threshold {
            Some(true)
        } else if current && failures >= spec.unhealthy_threshold {
            Some(false)
        } else {
            None
        };
        if let Some(healthy) = verdict {
            match registry.set_health(&id, &addr, healthy).await {
                Ok(Some(_)) => {
                    info!(service = %id, instance = %addr.socket(), healthy, reason = ?result.err(), "health check changed the instance's health")
                }
                Ok(None) => {}
                Err(error) => {
                    warn!(service = %id, instance = %addr.socket(), %error, "writing a health change failed; the next probe retries")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_owners_split() {
        let id = ServiceId::new("public", "g", "s").unwrap();
        let addr = InstanceAddr::parse("c", "10.0.0.1", 80).unwrap();
        assert_eq!(parse_check_key(&check_key(&id, &addr)), Some((id.clone(), addr)));
        assert_eq!(parse_cluster_key(&cluster_key(&id, "c")), Some((id, "c".to_owned())));
        let nodes = ["a", "b", "c"];
        let mut counts = HashMap::new();
        for n in 0..300 {
            *counts.entry(owner(nodes, format!("k{n}").as_bytes()).unwrap()).or_insert(0) += 1;
        }
        assert!(counts.values().all(|c| *c > 50), "{counts:?}");
        // Removing a node moves only its keys.
        for n in 0..300 {
            let key = format!("k{n}");
            let before = owner(nodes, key.as_bytes()).unwrap();
            if before != "c" {
                assert_eq!(owner(["a", "b"], key.as_bytes()), Some(before));
            }
        }
    }
}
