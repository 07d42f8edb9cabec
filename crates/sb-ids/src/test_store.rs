//! A store for tests: the embedded store, with a switch that makes every call fail as an
//! unreachable store would.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use sb_store::{
    LeaseGrant, LeaseId, LeaseInfo, Limits, RangeRequest, RangeResponse, Revision, SharedStore, Store,
    StoreError, StoreResult, Txn, TxnResponse, WatchRequest, WatchStream,
};

/// The embedded store, with a switch that makes every call fail as an unreachable store.
pub(crate) struct Flaky {
    inner: SharedStore,
    pub down: AtomicBool,
}

impl Flaky {
    fn check(&self) -> StoreResult<()> {
        if self.down.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable("test: store is down".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl Store for Flaky {
    fn kind(&self) -> &'static str {
        "flaky"
    }
    fn limits(&self) -> Limits {
        self.inner.limits()
    }
    async fn range(&self, request: RangeRequest) -> StoreResult<RangeResponse> {
        self.check()?;
        self.inner.range(request).await
    }
    async fn txn(&self, txn: Txn) -> StoreResult<TxnResponse> {
        self.check()?;
        self.inner.txn(txn).await
    }
    async fn lease_grant(&self, ttl_secs: i64) -> StoreResult<LeaseGrant> {
        self.check()?;
        self.inner.lease_grant(ttl_secs).await
    }
    async fn lease_keep_alive(&self, id: LeaseId) -> StoreResult<i64> {
        self.check()?;
        self.inner.lease_keep_alive(id).await
    }
    async fn lease_revoke(&self, id: LeaseId) -> StoreResult<()> {
        self.check()?;
        self.inner.lease_revoke(id).await
    }
    async fn lease_time_to_live(&self, id: LeaseId, with_keys: bool) -> StoreResult<LeaseInfo> {
        self.check()?;
        self.inner.lease_time_to_live(id, with_keys).await
    }
    async fn watch(&self, request: WatchRequest) -> StoreResult<WatchStream> {
        self.check()?;
        self.inner.watch(request).await
    }
    async fn compact(&self, revision: Revision) -> StoreResult<()> {
        self.check()?;
        self.inner.compact(revision).await
    }
}

pub(crate) async fn flaky(dir: &tempfile::TempDir) -> Arc<Flaky> {
    let options = sb_store_embedded::EmbeddedOptions::new(dir.path().join("store.redb"));
    let inner = sb_store_embedded::EmbeddedStore::open(options).await.expect("open");
    Arc::new(Flaky { inner, down: AtomicBool::new(false) })
}
