//! History compaction in etcd mode: one node at a time compacts etcd to
//! `current - retention_revisions` every interval, so etcd's storage quota is never
//! reached.
//!
//! The compacting node is elected through a leased key, `compactor/leader` in the
//! namespace, created only if absent. The holder keeps its lease alive; if it dies, the
//! key goes with its lease and another node takes over after the TTL. Compaction is
//! global to the etcd cluster, and harmless to repeat, so a brief overlap of two holders
//! (a paused process) costs nothing.

use std::time::Duration;

use sb_store::{
    Compare, LeaseId, OpResponse, RangeRequest, Revision, SharedStore, StoreError, StoreResult, Txn, TxnOp,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The leader key, inside the store's namespace.
pub const COMPACTOR_LEADER_KEY: &[u8] = b"compactor/leader";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdCompactorOptions {
    /// Written into the leader key, to say who compacts.
    pub node_id: String,
    /// Revisions of history kept behind the current one.
    pub retention_revisions: i64,
    pub interval: Duration,
    /// The leader lease's TTL: how long a dead holder blocks a takeover.
    pub lease_ttl_secs: i64,
}

impl EtcdCompactorOptions {
    pub fn new(node_id: impl Into<String>, retention_revisions: i64) -> Self {
        EtcdCompactorOptions {
            node_id: node_id.into(),
            retention_revisions,
            interval: Duration::from_secs(300),
            lease_ttl_secs: 15,
        }
    }
}

/// The running compactor. Dropping it stops the task; [`EtcdCompactor::stop`] also
/// revokes the lease, so another node takes over at once.
pub struct EtcdCompactor {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    leader: watch::Receiver<bool>,
}

impl EtcdCompactor {
    pub fn spawn(store: SharedStore, options: EtcdCompactorOptions) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let (leader_tx, leader) = watch::channel(false);
        let task = tokio::spawn(run(store, options, stop_rx, leader_tx));
        EtcdCompactor { stop, task: Some(task), leader }
    }

    /// Whether this node holds the compactor key right now.
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Waits until this node is (or is not) the leader.
    pub async fn wait_leader(&mut self, leader: bool) {
        let _ = self.leader.wait_for(|is| *is == leader).await;
    }

    /// Stops compacting and gives up the leadership.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for EtcdCompactor {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

struct Campaign {
    store: SharedStore,
    options: EtcdCompactorOptions,
    lease: Option<LeaseId>,
}

async fn run(
    store: SharedStore,
    options: EtcdCompactorOptions,
    mut stop: watch::Receiver<bool>,
    leader: watch::Sender<bool>,
) {
    let tick = Duration::from_secs((options.lease_ttl_secs / 3).max(1) as u64).min(options.interval);
    let mut campaign = Campaign { store, options, lease: None };
    let mut next_compaction = Instant::now();
    loop {
        let is_leader = match campaign.step().await {
            Ok(is_leader) => is_leader,
            Err(e) => {
                tracing::warn!(error = %e, "compactor election failed, retrying");
                false
            }
        };
        leader.send_replace(is_leader);
        if is_leader && Instant::now() >= next_compaction {
            next_compaction = Instant::now() + campaign.options.interval;
            if let Err(e) = campaign.compact().await {
                tracing::warn!(error = %e, "etcd compaction failed");
            }
        }
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(tick) => {}
        }
    }
    if let Some(lease) = campaign.lease {
        let _ = campaign.store.lease_revoke(lease).await;
    }
    leader.send_replace(false);
}

impl Campaign {
    /// Keeps this node's lease alive and claims the key if it is free. Returns whether
    /// this node holds it.
    async fn step(&mut self) -> StoreResult<bool> {
        let lease = match self.lease {
            Some(lease) => match self.store.lease_keep_alive(lease).await {
                Ok(_) => lease,
                Err(StoreError::LeaseNotFound(_)) => self.grant().await?,
                Err(e) => return Err(e),
            },
            None => self.grant().await?,
        };
        let key = COMPACTOR_LEADER_KEY.to_vec();
        let txn = Txn::new()
            .when([Compare::absent(key.clone())])
            .and_then([TxnOp::put_with_lease(key.clone(), self.options.node_id.clone(), lease)])
            .or_else([TxnOp::Range(RangeRequest::key(key))]);
        let answer = self.store.txn(txn).await?;
        if answer.succeeded {
            tracing::info!(node = %self.options.node_id, "this node now compacts etcd");
            return Ok(true);
        }
        let holder = match answer.responses.first() {
            Some(OpResponse::Range(range)) => range.kvs.first().and_then(|kv| kv.lease),
            _ => None,
        };
        Ok(holder == Some(lease))
    }

    async fn grant(&mut self) -> StoreResult<LeaseId> {
        let lease = self.store.lease_grant(self.options.lease_ttl_secs).await?.id;
        self.lease = Some(lease);
        Ok(lease)
    }

    async fn compact(&self) -> StoreResult<()> {
        let current = self.store.current_revision().await?;
        let target: Revision = current - self.options.retention_revisions;
        if target <= 0 {
            return Ok(());
        }
        match self.store.compact(target).await {
            // Another holder (or an operator) already compacted this far.
            Ok(()) | Err(StoreError::Compacted { .. }) => {
                tracing::debug!(revision = target, "etcd history compacted");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}
