//! Node membership: every node holds a leased `nodes/{id}` key with its address and
//! roles; the set of live nodes is a view over `nodes/`.
//!
//! Consumers (heartbeat ownership, check sharding, rate-limit shares, Snowflake workers)
//! read [`Membership::live_nodes`]. A node that stops without leaving disappears when its
//! lease expires (one TTL); one that leaves revokes the lease and disappears at once.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::codec::{encode, StoredValue};
use crate::error::{StoreError, StoreResult};
use crate::store::SharedStore;
use crate::types::{KeyRange, LeaseId, Txn, TxnOp};
use crate::view::{DecodedMap, View};

/// Where membership keys live.
pub const NODES_PREFIX: &[u8] = b"nodes/";
/// The default membership lease TTL.
pub const DEFAULT_MEMBERSHIP_TTL_SECS: i64 = 10;

/// What a node says about itself under `nodes/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    /// The address other nodes and clients reach it at.
    pub addr: String,
    /// The roles it runs (for example `api`, `dns`).
    pub roles: Vec<String>,
    pub started_at_ms: u64,
    /// The Switchboard release it runs.
    pub release: String,
}

impl StoredValue for NodeRecord {
    const KIND: &'static str = "node";
    const FORMAT_VERSION: u32 = 1;
}

pub type MembershipView = View<DecodedMap<NodeRecord>>;

/// This node's membership, kept alive in the background, and the view of every node.
pub struct Membership {
    store: SharedStore,
    lease: Arc<AtomicI64>,
    view: MembershipView,
    keeper: JoinHandle<()>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        // Without `leave`, the lease runs out on its own: that is what a crash looks like.
        self.keeper.abort();
    }
}

impl Membership {
    /// Registers this node under a fresh lease and keeps it alive. If the lease is ever
    /// lost (a long pause, a partition), the node re-registers under a new one.
    pub async fn join(store: SharedStore, record: NodeRecord, ttl_secs: i64) -> StoreResult<Membership> {
        let value = encode(&record).map_err(|e| StoreError::InvalidArgument(e.to_string()))?;
        let key = node_key(&record.id);
        let lease = register(&store, &key, &value, ttl_secs).await?;
        info!(node = %record.id, lease = lease.0, "node joined");
        let lease = Arc::new(AtomicI64::new(lease.0));
        let view = View::start(store.clone(), KeyRange::prefix(NODES_PREFIX), "membership").await?;
        let keeper = tokio::spawn(keep_alive(store.clone(), key, value, ttl_secs, lease.clone()));
        Ok(Membership { store, lease, view, keeper })
    }

    /// The membership lease (a system lease: no user API may revoke it).
    pub fn lease(&self) -> LeaseId {
        LeaseId(self.lease.load(Ordering::Acquire))
    }

    pub fn view(&self) -> &MembershipView {
        &self.view
    }

    /// Every live node, in id order.
    pub fn live_nodes(&self) -> Vec<NodeRecord> {
        self.view.snapshot().entries.values().map(|entry| entry.value.clone()).collect()
    }

    /// Leaves at once: stops the keep-alive and revokes the membership lease.
    pub async fn leave(self) -> StoreResult<()> {
        self.keeper.abort();
        match self.store.lease_revoke(self.lease()).await {
            Ok(()) | Err(StoreError::LeaseNotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn node_key(id: &str) -> Vec<u8> {
    let mut key = NODES_PREFIX.to_vec();
    key.extend_from_slice(id.as_bytes());
    key
}

async fn register(store: &SharedStore, key: &[u8], value: &[u8], ttl_secs: i64) -> StoreResult<LeaseId> {
    let lease = store.lease_grant(ttl_secs).await?;
    let put = TxnOp::Put { key: key.to_vec(), value: value.to_vec(), lease: Some(lease.id) };
    store.txn(Txn::new().and_then([put])).await?;
    Ok(lease.id)
}

async fn keep_alive(store: SharedStore, key: Vec<u8>, value: Vec<u8>, ttl_secs: i64, lease: Arc<AtomicI64>) {
    let period = Duration::from_millis((ttl_secs.max(1) as u64 * 1000) / 3).max(Duration::from_millis(300));
    loop {
        tokio::time::sleep(period).await;
        let current = LeaseId(lease.load(Ordering::Acquire));
        match store.lease_keep_alive(current).await {
            Ok(_) => {}
            Err(StoreError::LeaseNotFound(_)) => match register(&store, &key, &value, ttl_secs).await {
                Ok(new_lease) => {
                    warn!(
                        old_lease = current.0,
                        new_lease = new_lease.0,
                        "membership lease was lost, re-registered"
                    );
                    lease.store(new_lease.0, Ordering::Release);
                }
                Err(error) => warn!(%error, "membership re-registration failed, retrying"),
            },
            Err(error) => warn!(%error, "membership keep-alive failed, retrying"),
        }
    }
}
