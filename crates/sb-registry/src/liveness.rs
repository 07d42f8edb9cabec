//! The session lease and the beat checker: what keeps ephemeral instances honest.
//!
//! - One session lease per node; every ephemeral instance registered through the node
//!   hangs on it. A node that dies loses them all when the lease expires.
//! - The checker compares each owned instance's last beat (memory only) with its
//!   timeouts and writes only *changes*: healthy → unhealthy, then the delete. Every such
//!   write compares on the instance's mod revision and on this node's lease, so it never
//!   touches an instance another node has adopted or a client re-registered.
//! - When the session is lost (a pause, a partition) and a new one is granted, the
//!   instances still beating are put again under it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sb_store::{Compare, CompareOp, LeaseId, SharedStore, StoreError, Txn, TxnOp};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::error::RegistryResult;
use crate::registry::{encode_value, RegistryOptions, Shared};
use crate::state::InstanceEntry;

/// Adopts the previous run's session lease if it is still alive, else grants a new one.
pub(crate) async fn open_session(store: &SharedStore, options: &RegistryOptions) -> RegistryResult<LeaseId> {
    if let Some(previous) = options.previous_session_opt {
        match store.lease_keep_alive(previous).await {
            Ok(_) => {
                info!(lease = previous.0, "re-adopted the previous session lease");
                return Ok(previous);
            }
            Err(StoreError::LeaseNotFound(_)) => {
                info!(lease = previous.0, "the previous session lease has expired; granting a new one")
            }
            Err(error) => return Err(error.into()),
        }
    }
    Ok(store.lease_grant(options.session_ttl_secs).await?.id)
}

pub(crate) async fn keep_session(shared: Arc<Shared>) {
    let ttl_ms = shared.options.session_ttl_secs.max(1) as u64 * 1000;
    let period = Duration::from_millis(ttl_ms / 3).max(Duration::from_millis(300));
    loop {
        tokio::time::sleep(period).await;
        let current = shared.session();
        match shared.store.lease_keep_alive(current).await {
            Ok(_) => {}
            Err(StoreError::LeaseNotFound(_)) => {
                if let Err(error) = regain_session(&shared, current).await {
                    warn!(%error, "regaining the session lease failed, retrying");
                }
            }
            Err(error) => warn!(%error, "session keep-alive failed, retrying"),
        }
    }
}

/// A new lease, then every instance that still beats is put again under it (unless
/// someone registered it meanwhile).
async fn regain_session(shared: &Shared, lost: LeaseId) -> RegistryResult<()> {
    let lease = shared.store.lease_grant(shared.options.session_ttl_secs).await?.id;
    shared.session.store(lease.0, Ordering::Release);
    if let Some(observer) = &shared.options.on_session_change_opt {
        observer(lease);
    }
    let since =
        Instant::now().checked_sub(shared.options.timeouts.unhealthy_after).unwrap_or_else(Instant::now);
    let beating = shared.beats.beating_since(since);
    let mut restored = 0;
    for (key, entry) in &beating {
        let mut record = entry.instance.record.clone();
        record.owner = shared.options.node_id.clone();
        let txn = Txn::new().when([Compare::absent(key.clone())]).and_then([TxnOp::Put {
            key: key.clone(),
            value: encode_value(&record)?,
            lease: Some(lease),
        }]);
        if shared.txn(txn).await?.succeeded {
            restored += 1;
        }
    }
    warn!(
        lost_lease = lost.0,
        new_lease = lease.0,
        restored,
        "session lease was lost; instances still beating were put again"
    );
    Ok(())
}

enum Change {
    Unhealthy(Vec<u8>, sb_store::Revision, crate::model::InstanceRecord),
    Delete(Vec<u8>, sb_store::Revision),
}

/// How many checks apart the checker walks the whole view (and forgets stale beats):
/// the walk finds owned instances the table lacks (after a restart) and picks up
/// timeouts changed in metadata without a beat. The checks between walk only the table.
const WALK_EVERY: u64 = 16;

pub(crate) async fn check_beats(shared: Arc<Shared>) {
    let mut tick: u64 = 0;
    loop {
        tokio::time::sleep(shared.options.check_interval).await;
        // The first check walks the view: it rebuilds the table after a restart.
        let changes =
            if tick.is_multiple_of(WALK_EVERY) { walk_view(&shared) } else { due_in_table(&shared) };
        tick += 1;
        for change in changes {
            if let Err(error) = apply(&shared, change).await {
                warn!(%error, "writing an instance health change failed; retrying next check");
            }
        }
        if tick.is_multiple_of(WALK_EVERY) {
            sweep(&shared);
        }
    }
}

/// The health changes and deletions due now, among the instances on this node's session,
/// from a walk over the whole view: an owned instance the table lacks counts as having
/// beaten now.
fn walk_view(shared: &Shared) -> Vec<Change> {
    let session = Some(shared.session());
    let now = Instant::now();
    let snapshot = shared.view.snapshot();
    let mut changes = Vec::new();
    // One key buffer for the whole walk: every owned instance is looked at.
    let mut key = Vec::new();
    for (id, service) in snapshot.services.iter() {
        let mut prefix_len = None;
        for instance in service.instances.values() {
            if !instance.record.ephemeral || instance.lease != session {
                continue;
            }
            let len = *prefix_len.get_or_insert_with(|| {
                key.clear();
                key.extend_from_slice(&id.instances_prefix());
                key.len()
            });
            key.truncate(len);
            instance.addr.push_key_suffix(&mut key);
            let last = shared.beats.last_or_insert(&key, id, instance, now);
            changes.extend(judge(shared, &key, instance, now.saturating_duration_since(last)));
        }
    }
    changes
}

/// The same, from one pass over the heartbeat table: only the entries quiet for their
/// first timeout are looked up in the view (the common case is none).
fn due_in_table(shared: &Shared) -> Vec<Change> {
    let session = Some(shared.session());
    let now = Instant::now();
    let quiet = shared.beats.quiet(now);
    if quiet.is_empty() {
        return Vec::new();
    }
    let snapshot = shared.view.snapshot();
    quiet
        .into_iter()
        .filter_map(|(key, entry)| {
            let instance = snapshot.instance(&entry.service, &entry.instance.addr)?;
            if !instance.record.ephemeral || instance.lease != session {
                return None;
            }
            judge(shared, &key, instance, now.saturating_duration_since(entry.last_beat))
        })
        .collect()
}

/// What is due for one owned ephemeral instance, quiet for `quiet`.
fn judge(shared: &Shared, key: &[u8], instance: &InstanceEntry, quiet: Duration) -> Option<Change> {
    let timeouts = shared.options.timeouts.for_metadata(&instance.record.metadata);
    if quiet >= timeouts.delete_after {
        Some(Change::Delete(key.to_vec(), instance.mod_revision))
    } else if quiet >= timeouts.unhealthy_after && instance.record.healthy {
        let mut record = instance.record.clone();
        record.healthy = false;
        Some(Change::Unhealthy(key.to_vec(), instance.mod_revision, record))
    } else {
        None
    }
}

async fn apply(shared: &Shared, change: Change) -> RegistryResult<()> {
    let session = shared.session();
    let (key, revision, op) = match change {
        Change::Unhealthy(key, revision, record) => {
            let op = TxnOp::Put { key: key.clone(), value: encode_value(&record)?, lease: Some(session) };
            (key, revision, op)
        }
        Change::Delete(key, revision) => (key.clone(), revision, TxnOp::delete(key)),
    };
    let deleting = matches!(op, TxnOp::Delete(_));
    let txn = Txn::new()
        .when([
            Compare::mod_revision(key.clone(), CompareOp::Equal, revision),
            Compare::lease(key.clone(), CompareOp::Equal, Some(session)),
        ])
        .and_then([op]);
    let response = shared.txn(txn).await?;
    if response.succeeded {
        let name = String::from_utf8_lossy(&key).into_owned();
        if deleting {
            shared.beats.remove(&key);
            info!(instance = %name, "instance deleted: no beat within its delete timeout");
        } else {
            info!(instance = %name, "instance unhealthy: no beat within its heartbeat timeout");
        }
    }
    Ok(())
}

/// Forgets beats of instances gone from the view for longer than any delete timeout
/// would keep them (a client still beating for one gets "unknown instance" and registers
/// again).
fn sweep(shared: &Shared) {
    let snapshot = shared.view.snapshot();
    let now = Instant::now();
    let keep_for = shared.options.timeouts.delete_after;
    shared.beats.retain(|_, entry| {
        snapshot.instance(&entry.service, &entry.instance.addr).is_some()
            || now.saturating_duration_since(entry.last_beat) < keep_for
    });
}
