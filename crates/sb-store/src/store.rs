//! The store port: what every capability of Switchboard is built on.
//!
//! It has exactly etcd v3's semantics (see `types`). It knows nothing about redb, etcd or
//! HTTP; adapters implement it, and one conformance suite holds both to it.

use std::sync::Arc;

use async_trait::async_trait;

use crate::error::{StoreError, StoreResult};
use crate::limits::Limits;
use crate::types::*;
use crate::watch::WatchStream;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A short name for logs and metrics: `embedded` or `etcd`.
    fn kind(&self) -> &'static str;

    /// The request limits the store enforces (etcd's by default on both adapters).
    fn limits(&self) -> Limits;

    /// Reads a key or range at the current or a past revision.
    async fn range(&self, request: RangeRequest) -> StoreResult<RangeResponse>;

    /// Runs a transaction, all or nothing, at one revision.
    async fn txn(&self, txn: Txn) -> StoreResult<TxnResponse>;

    /// Grants a lease. A TTL under the minimum (2 s) is raised to it.
    async fn lease_grant(&self, ttl_secs: i64) -> StoreResult<LeaseGrant>;

    /// Renews a lease to its full TTL and returns that TTL.
    async fn lease_keep_alive(&self, id: LeaseId) -> StoreResult<i64>;

    /// Revokes a lease, deleting its keys at one revision.
    async fn lease_revoke(&self, id: LeaseId) -> StoreResult<()>;

    /// Describes a live lease, optionally with its keys.
    async fn lease_time_to_live(&self, id: LeaseId, with_keys: bool) -> StoreResult<LeaseInfo>;

    /// Watches a key or range from a revision: ordered, gap-free, one batch per revision.
    async fn watch(&self, request: WatchRequest) -> StoreResult<WatchStream>;

    /// Discards history below `revision`. Reads and watches below it fail with
    /// [`StoreError::Compacted`].
    async fn compact(&self, revision: Revision) -> StoreResult<()>;

    /// Puts one key; returns the revision of the write.
    async fn put(&self, key: &[u8], value: &[u8], lease: Option<LeaseId>) -> StoreResult<Revision> {
        let txn = Txn::new().and_then([TxnOp::Put { key: key.to_vec(), value: value.to_vec(), lease }]);
        Ok(self.txn(txn).await?.revision)
    }

    /// Reads one key at the current revision.
    async fn get(&self, key: &[u8]) -> StoreResult<Option<KeyValue>> {
        Ok(self.range(RangeRequest::key(key)).await?.kvs.into_iter().next())
    }

    /// Deletes a key or range.
    async fn delete(&self, range: KeyRange) -> StoreResult<DeleteResponse> {
        let response = self.txn(Txn::new().and_then([TxnOp::Delete(range)])).await?;
        let deleted = match response.responses.first() {
            Some(OpResponse::Delete { deleted }) => *deleted,
            other => {
                return Err(StoreError::Corrupt(format!("delete answered with {other:?}")));
            }
        };
        Ok(DeleteResponse { revision: response.revision, deleted })
    }

    /// The current revision.
    async fn current_revision(&self) -> StoreResult<Revision> {
        Ok(self.range(RangeRequest::key(vec![0]).count_only()).await?.revision)
    }
}

/// The store as every consumer holds it.
pub type SharedStore = Arc<dyn Store>;
