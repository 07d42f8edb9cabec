//! The registry service: every write and query of services and instances, used by the
//! native API and the Nacos compat layer alike.
//!
//! Writes are store transactions that answer once this node's view has applied them
//! (read-your-writes); queries read the view. Ephemeral instances hang on this node's
//! session lease; their beats go to the [`HeartbeatTable`], and the liveness task
//! (`liveness.rs`) writes only health changes and deletions.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sb_audit::Audit;
use sb_store::codec::encode;
use sb_store::{
    Compare, CompareOp, KeyRange, LeaseId, Revision, SharedStore, StoreError, Txn, TxnOp, TxnResponse, View,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::info;

use crate::error::{RegistryError, RegistryResult};
use crate::heartbeat::HeartbeatTable;
use crate::model::{
    check_metadata, check_threshold, check_weight, BeatTimeouts, InstanceRecord, InstanceSpec, Metadata,
    ServiceRecord,
};
use crate::names::{InstanceAddr, ServiceId, REGISTRY_PREFIX};
use crate::query::{select, InstanceQuery, Selection};
use crate::state::{InstanceEntry, RegistryState};

pub type RegistryView = View<RegistryState>;

/// Told the new session lease whenever it changes (the node records it, to re-adopt it
/// after a restart).
pub type SessionObserver = Arc<dyn Fn(LeaseId) + Send + Sync>;

#[derive(Clone)]
pub struct RegistryOptions {
    /// This node's id, recorded as the owner of what it registers.
    pub node_id: String,
    /// The defaults; instances override them with `preserved.*` metadata.
    pub timeouts: BeatTimeouts,
    /// The session lease's TTL: how long a stopped node's instances outlive it.
    pub session_ttl_secs: i64,
    /// A session lease a previous run of this node held: adopted if it is still alive.
    pub previous_session_opt: Option<LeaseId>,
    pub read_your_writes_timeout: Duration,
    /// How often beats are checked against the timeouts.
    pub check_interval: Duration,
    pub on_session_change_opt: Option<SessionObserver>,
}

impl RegistryOptions {
    pub fn new(node_id: impl Into<String>, unhealthy_after: Duration, delete_after: Duration) -> Self {
        RegistryOptions {
            node_id: node_id.into(),
            timeouts: BeatTimeouts { interval: Duration::from_secs(5), unhealthy_after, delete_after },
            session_ttl_secs: 30,
            previous_session_opt: None,
            read_your_writes_timeout: Duration::from_secs(5),
            check_interval: (unhealthy_after / 4).clamp(Duration::from_millis(100), Duration::from_secs(1)),
            on_session_change_opt: None,
        }
    }
}

/// A change to an instance's settings; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct InstancePatch {
    pub weight: Option<f64>,
    pub enabled: Option<bool>,
    pub metadata: Option<Metadata>,
}

pub(crate) struct Shared {
    pub(crate) store: SharedStore,
    pub(crate) view: RegistryView,
    pub(crate) options: RegistryOptions,
    pub(crate) session: AtomicI64,
    pub(crate) beats: HeartbeatTable,
    /// Transactions the registry committed that put or deleted (its `store_writes`).
    pub(crate) writes: AtomicU64,
}

impl Shared {
    pub(crate) fn session(&self) -> LeaseId {
        LeaseId(self.session.load(Ordering::Acquire))
    }

    /// Every registry transaction goes through here, so that [`Registry::store_writes`] counts
    /// each one whose branch that ran puts or deletes (a beat must never be one).
    pub(crate) async fn txn(&self, txn: Txn) -> sb_store::StoreResult<TxnResponse> {
        let writes = |ops: &[TxnOp]| ops.iter().any(|op| !matches!(op, TxnOp::Range(_)));
        let (on_success, on_failure) = (writes(&txn.success), writes(&txn.failure));
        let response = self.store.txn(txn).await?;
        if (response.succeeded && on_success) || (!response.succeeded && on_failure) {
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
        Ok(response)
    }
}

pub struct Registry {
    shared: Arc<Shared>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Registry {
    fn drop(&mut self) {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
    }
}

impl Registry {
    /// Loads the view, takes (or re-adopts) the session lease and starts the liveness
    /// tasks. Instances already on the session lease are tracked as if they had just beaten.
    pub async fn start(store: SharedStore, options: RegistryOptions) -> RegistryResult<Registry> {
        let view = View::start(store.clone(), KeyRange::prefix(REGISTRY_PREFIX), "registry").await?;
        let session = crate::liveness::open_session(&store, &options).await?;
        let beats = HeartbeatTable::new(options.timeouts);
        let shared = Arc::new(Shared {
            store,
            view,
            options,
            session: AtomicI64::new(session.0),
            beats,
            writes: AtomicU64::new(0),
        });
        let tasks = vec![
            tokio::spawn(crate::liveness::keep_session(shared.clone())),
            tokio::spawn(crate::liveness::check_beats(shared.clone())),
        ];
        Ok(Registry { shared, tasks: Mutex::new(tasks) })
    }

    /// Stops the background tasks. The session lease is *not* revoked: a restarted node
    /// re-adopts it, so a rolling restart drops no instance.
    pub fn stop(&self) {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
    }

    pub fn view(&self) -> &RegistryView {
        &self.shared.view
    }

    pub fn snapshot(&self) -> Arc<RegistryState> {
        self.shared.view.snapshot()
    }

    /// The lease this node's ephemeral instances hang on (a system lease).
    pub fn session_lease(&self) -> LeaseId {
        self.shared.session()
    }

    pub fn node_id(&self) -> &str {
        &self.shared.options.node_id
    }

    pub fn timeouts(&self) -> BeatTimeouts {
        self.shared.options.timeouts
    }

    /// How many instances this node tracks beats for.
    pub fn tracked_beats(&self) -> usize {
        self.shared.beats.len()
    }

    /// Store transactions this registry committed since it started (registrations, updates,
    /// health changes, expiries, deletes): what `switchboard_registry_store_writes` shows.
    /// Beats are never among them.
    pub fn store_writes(&self) -> u64 {
        self.shared.writes.load(Ordering::Relaxed)
    }

    async fn commit(&self, txn: Txn) -> RegistryResult<TxnResponse> {
        let response = self.shared.txn(txn).await?;
        self.shared.view.wait_for(response.revision, self.shared.options.read_your_writes_timeout).await?;
        Ok(response)
    }

    /// Registers (or re-registers) an instance; the service is created implicitly, in the
    /// same transaction.
    pub async fn register(&self, spec: InstanceSpec, audit: &Audit) -> RegistryResult<Revision> {
        spec.check()?;
        let snapshot = self.snapshot();
        let existing = snapshot.instance(&spec.service, &spec.addr);
        let record = InstanceRecord {
            weight: spec.weight,
            enabled: spec.enabled,
            healthy: spec.healthy,
            ephemeral: spec.ephemeral,
            metadata: spec.metadata,
            owner: self.shared.options.node_id.clone(),
            // Like a check of its own, the default check outlives re-registrations.
            default_check: spec.default_check || existing.is_some_and(|e| e.record.default_check),
        };
        let key = spec.service.instance_key(&spec.addr);
        let lease = spec.ephemeral.then(|| self.shared.session());
        let value = encode_value(&record)?;
        let before = existing.map(|e| encode_value(&e.record)).transpose()?;
        drop(snapshot);
        let audited = audit.op("instance.register", key_text(&key), before.as_deref(), Some(&value));
        let put = TxnOp::Put { key: key.clone(), value, lease };
        let service_key = spec.service.service_key();
        let txn = Txn::new()
            .when([Compare::absent(service_key.clone())])
            .and_then([
                TxnOp::put(service_key, encode_value(&ServiceRecord::default())?),
                put.clone(),
                audited.clone(),
            ])
            .or_else([put, audited]);
        let revision = self.commit(txn).await?.revision;
        if spec.ephemeral {
            if let Some((id, entry)) = self.snapshot().instance_with_id(&spec.service, &spec.addr) {
                self.shared.beats.beat(&key, id, entry, Instant::now());
            }
        }
        info!(service = %spec.service, instance = %spec.addr.socket(), revision, "instance registered");
        Ok(revision)
    }

    fn existing(&self, id: &ServiceId, addr: &InstanceAddr) -> RegistryResult<Arc<InstanceEntry>> {
        self.snapshot().instance(id, addr).cloned().ok_or_else(|| {
            RegistryError::NotFound(format!(
                "instance {} of service {id} is not registered",
                instance_name(addr)
            ))
        })
    }

    /// Rewrites an instance if it has not changed since `entry` (same lease, same value
    /// otherwise); a concurrent change is a conflict.
    async fn rewrite(
        &self,
        id: &ServiceId,
        entry: &InstanceEntry,
        record: &InstanceRecord,
        audit: Option<(&Audit, &str)>,
        extra_ops: Vec<TxnOp>,
    ) -> RegistryResult<Revision> {
        let key = id.instance_key(&entry.addr);
        let value = encode_value(record)?;
        let mut ops = extra_ops;
        if let Some((audit, action)) = audit {
            let before = encode_value(&entry.record)?;
            ops.push(audit.op(action, key_text(&key), Some(&before), Some(&value)));
        }
        ops.push(TxnOp::Put { key: key.clone(), value, lease: entry.lease });
        let txn =
            Txn::new().when([Compare::mod_revision(key, CompareOp::Equal, entry.mod_revision)]).and_then(ops);
        let response = self.commit(txn).await?;
        if !response.succeeded {
            return Err(RegistryError::Conflict(format!(
                "instance {} of service {id} changed while it was updated; try again",
                instance_name(&entry.addr)
            )));
        }
        Ok(response.revision)
    }

    /// Sets an instance's health (active health checks); `None` when it already had it.
    pub async fn set_health(
        &self,
        id: &ServiceId,
        addr: &InstanceAddr,
        healthy: bool,
    ) -> RegistryResult<Option<Revision>> {
        // Health set by active checks is the system's observation, not an operator's
        // change: a metric and a log line, not an audit record.
        self.modify(id, addr, None, Vec::new(), |record| {
            std::mem::replace(&mut record.healthy, healthy) != healthy
        })
        .await
    }

    /// Sets an instance's health as an operator's change (audited as `instance.health`);
    /// whether anything may set it by hand is the health checks' rule
    /// (`sb_health::HealthChecks::set_health`). Returns the instance's revision, unchanged
    /// when it already had that health.
    pub async fn mark_health(
        &self,
        id: &ServiceId,
        addr: &InstanceAddr,
        healthy: bool,
        audit: &Audit,
    ) -> RegistryResult<Revision> {
        let audit = Some((audit, "instance.health"));
        let changed =
            |record: &mut InstanceRecord| std::mem::replace(&mut record.healthy, healthy) != healthy;
        match self.modify(id, addr, audit, Vec::new(), changed).await? {
            Some(revision) => Ok(revision),
            None => Ok(self.existing(id, addr)?.mod_revision),
        }
    }

    /// Clears an instance's [`InstanceRecord::default_check`], with `ops` (the caller's
    /// audit record and check delete) in the same transaction; `None` when it was not set.
    pub async fn clear_default_check(
        &self,
        id: &ServiceId,
        addr: &InstanceAddr,
        ops: Vec<TxnOp>,
    ) -> RegistryResult<Option<Revision>> {
        self.modify(id, addr, None, ops, |record| std::mem::take(&mut record.default_check)).await
    }

    /// Rewrites an instance with `change` applied to its record (with `ops` in the same
    /// transaction), unless `change` says it changed nothing: then `None`, and no write.
    async fn modify(
        &self,
        id: &ServiceId,
        addr: &InstanceAddr,
        audit: Option<(&Audit, &str)>,
        ops: Vec<TxnOp>,
        change: impl FnOnce(&mut InstanceRecord) -> bool,
    ) -> RegistryResult<Option<Revision>> {
        let entry = self.existing(id, addr)?;
        let mut record = entry.record.clone();
        if !change(&mut record) {
            return Ok(None);
        }
        self.rewrite(id, &entry, &record, audit, ops).await.map(Some)
    }

    pub async fn update_instance(
        &self,
        id: &ServiceId,
        addr: &InstanceAddr,
        patch: InstancePatch,
        audit: &Audit,
    ) -> RegistryResult<Revision> {
        let entry = self.existing(id, addr)?;
        let mut record = entry.record.clone();
        if let Some(weight) = patch.weight {
            check_weight(weight)?;
            record.weight = weight;
        }
        if let Some(enabled) = patch.enabled {
            record.enabled = enabled;
        }
        if let Some(metadata) = patch.metadata {
            check_metadata(&metadata)?;
            record.metadata = metadata;
        }
        self.rewrite(id, &entry, &record, Some((audit, "instance.update")), Vec::new()).await
    }

    /// Deletes an instance; `None` when it was not registered.
    pub async fn deregister(
        &self,
        id: &ServiceId,
        addr: &InstanceAddr,
        audit: &Audit,
    ) -> RegistryResult<Option<Revision>> {
        let key = id.instance_key(addr);
        let before = self.snapshot().instance(id, addr).map(|e| encode_value(&e.record)).transpose()?;
        // Recorded only when there was something to delete.
        let txn = Txn::new().when([Compare::version(key.clone(), CompareOp::Greater, 0)]).and_then([
            TxnOp::delete(key.clone()),
            audit.op("instance.deregister", key_text(&key), before.as_deref(), None),
        ]);
        let response = self.commit(txn).await?;
        self.shared.beats.remove(&key);
        let deleted = response.succeeded;
        if deleted {
            info!(service = %id, instance = %addr.socket(), "instance deregistered");
        }
        Ok(deleted.then_some(response.revision))
    }

    /// A beat. A known ephemeral instance is marked in the heartbeat table (no store
    /// write), and written only if its health changes or this node adopts it. An unknown
    /// instance is registered from `full_opt` (Nacos's full beat), or refused with
    /// [`RegistryError::UnknownInstance`] so the client registers again.
    pub async fn beat(
        &self,
        id: &ServiceId,
        addr: &InstanceAddr,
        full_opt: Option<InstanceSpec>,
        audit: &Audit,
    ) -> RegistryResult<BeatTimeouts> {
        let defaults = self.shared.options.timeouts;
        let snapshot = self.snapshot();
        let Some((shared_id, entry)) = snapshot.instance_with_id(id, addr) else {
            let Some(spec) = full_opt else {
                // Still beating while gone from the view (a lost session): remembered, so
                // a regained session puts it back.
                self.shared.beats.touch(&id.instance_key(addr), Instant::now());
                return Err(RegistryError::UnknownInstance(format!(
                    "{} of service {id}",
                    instance_name(addr)
                )));
            };
            let timeouts = defaults.for_metadata(&spec.metadata);
            // A full beat that registers is a registration, and audited as one.
            self.register(spec, audit).await?;
            return Ok(timeouts);
        };
        let timeouts = defaults.for_metadata(&entry.record.metadata);
        if !entry.record.ephemeral {
            return Ok(timeouts);
        }
        let key = id.instance_key(addr);
        self.shared.beats.beat(&key, shared_id, entry, Instant::now());
        let session = self.shared.session();
        if entry.lease != Some(session) || !entry.record.healthy {
            // Adopt it onto this node's session, healthy again: one compare-and-put, so an
            // instance another node took meanwhile is left alone.
            let mut record = entry.record.clone();
            record.healthy = true;
            record.owner = self.shared.options.node_id.clone();
            let txn = Txn::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, entry.mod_revision)])
                .and_then([TxnOp::Put { key, value: encode_value(&record)?, lease: Some(session) }]);
            self.commit(txn).await?;
        }
        Ok(timeouts)
    }

    /// Graceful deregistration: disables the instance now (clients stop picking it) and
    /// deletes it after `delay`, unless it changed meanwhile.
    pub async fn drain(
        &self,
        id: &ServiceId,
        addr: &InstanceAddr,
        delay: Duration,
        audit: &Audit,
    ) -> RegistryResult<Revision> {
        let entry = self.existing(id, addr)?;
        let mut record = entry.record.clone();
        record.enabled = false;
        // The delayed delete is part of the drain this record describes.
        let revision = self.rewrite(id, &entry, &record, Some((audit, "instance.drain")), Vec::new()).await?;
        let shared = self.shared.clone();
        let key = id.instance_key(addr);
        let service = id.clone();
        let instance = addr.socket();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let txn = Txn::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, revision)])
                .and_then([TxnOp::delete(key)]);
            match shared.txn(txn).await {
                Ok(r) if r.succeeded => info!(%service, %instance, "drained instance deleted"),
                Ok(_) => info!(%service, %instance, "drained instance changed meanwhile; kept"),
                Err(error) => {
                    tracing::warn!(%service, %instance, %error, "deleting a drained instance failed")
                }
            }
        });
        Ok(revision)
    }

    /// Creates a service; it must not exist yet.
    pub async fn create_service(
        &self,
        id: &ServiceId,
        record: ServiceRecord,
        audit: &Audit,
    ) -> RegistryResult<Revision> {
        check_threshold(record.protect_threshold)?;
        check_metadata(&record.metadata)?;
        let key = id.service_key();
        let value = encode_value(&record)?;
        let audited = audit.op("service.create", key_text(&key), None, Some(&value));
        let txn = Txn::new().when([Compare::absent(key.clone())]).and_then([TxnOp::put(key, value), audited]);
        let response = self.commit(txn).await?;
        if !response.succeeded {
            return Err(RegistryError::Conflict(format!("service {id} already exists")));
        }
        Ok(response.revision)
    }

    /// Creates or replaces a service's settings.
    pub async fn put_service(
        &self,
        id: &ServiceId,
        record: ServiceRecord,
        audit: &Audit,
    ) -> RegistryResult<Revision> {
        check_threshold(record.protect_threshold)?;
        check_metadata(&record.metadata)?;
        let key = id.service_key();
        let value = encode_value(&record)?;
        let before = self
            .snapshot()
            .service(id)
            .and_then(|s| s.record.as_ref().map(|r| encode_value(&r.record)))
            .transpose()?;
        let audited = audit.op("service.put", key_text(&key), before.as_deref(), Some(&value));
        let txn = Txn::new().and_then([TxnOp::put(key, value), audited]);
        Ok(self.commit(txn).await?.revision)
    }

    /// Changes an existing service's settings.
    pub async fn update_service(
        &self,
        id: &ServiceId,
        threshold_opt: Option<f64>,
        metadata_opt: Option<Metadata>,
        audit: &Audit,
    ) -> RegistryResult<Revision> {
        let snapshot = self.snapshot();
        let current = snapshot.service(id).and_then(|s| s.record.clone());
        let Some(current) = current else {
            return Err(RegistryError::NotFound(format!("service {id} does not exist")));
        };
        let mut record = current.record.clone();
        if let Some(threshold) = threshold_opt {
            record.protect_threshold = threshold;
        }
        if let Some(metadata) = metadata_opt {
            record.metadata = metadata;
        }
        check_threshold(record.protect_threshold)?;
        check_metadata(&record.metadata)?;
        let key = id.service_key();
        let value = encode_value(&record)?;
        let before = encode_value(&current.record)?;
        let audited = audit.op("service.update", key_text(&key), Some(&before), Some(&value));
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, current.mod_revision)])
            .and_then([TxnOp::put(key, value), audited]);
        let response = self.commit(txn).await?;
        if !response.succeeded {
            return Err(RegistryError::Conflict(format!(
                "service {id} changed while it was updated; try again"
            )));
        }
        Ok(response.revision)
    }

    /// Deletes a service that has no instances.
    pub async fn delete_service(&self, id: &ServiceId, audit: &Audit) -> RegistryResult<Revision> {
        let snapshot = self.snapshot();
        let Some(service) = snapshot.service(id) else {
            return Err(RegistryError::NotFound(format!("service {id} does not exist")));
        };
        if !service.instances.is_empty() {
            return Err(RegistryError::Conflict(format!(
                "service {id} has {} instance(s); deregister them first",
                service.instances.len()
            )));
        }
        let key = id.service_key();
        let before = service.record.as_ref().map(|r| encode_value(&r.record)).transpose()?;
        let audited = audit.op("service.delete", key_text(&key), before.as_deref(), None);
        Ok(self.commit(Txn::new().and_then([TxnOp::delete(key), audited])).await?.revision)
    }

    /// A service's instances as a query selects them, from the view.
    pub fn instances(&self, id: &ServiceId, query: &InstanceQuery) -> Selection {
        select(self.snapshot().service(id), query)
    }

    /// Waits until the service's last-change revision differs from `since` (or the
    /// timeout passes), and returns it: the long-poll behind subscriptions.
    pub async fn wait_for_change(&self, id: &ServiceId, since: Revision, timeout: Duration) -> Revision {
        let mut changes = self.shared.view.subscribe();
        let deadline = Instant::now() + timeout;
        loop {
            let current = self.snapshot().service(id).map_or(0, |s| s.changed_revision);
            if current != since {
                return current;
            }
            match tokio::time::timeout_at(deadline, changes.recv()).await {
                Err(_) | Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return current,
                Ok(_) => {}
            }
        }
    }
}

pub(crate) fn encode_value<T: sb_store::codec::StoredValue>(value: &T) -> RegistryResult<Vec<u8>> {
    encode(value).map_err(|e| RegistryError::Store(StoreError::InvalidArgument(e.to_string())))
}

/// A store key as the audit log names the resource.
fn key_text(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

fn instance_name(addr: &InstanceAddr) -> String {
    format!("{} (cluster {})", addr.socket(), addr.cluster)
}
