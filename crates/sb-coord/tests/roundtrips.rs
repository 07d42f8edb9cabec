//! The store round trips of the lock recipe, counted through a store that logs every call:
//! an uncontended acquire + release and a handoff to a queued waiter, on the embedded
//! store and on etcd. The recipe's latency on etcd is its round trips, so this pins them:
//! - uncontended, on a warm lease pool: one transaction to acquire (put the key and read
//!   the queue) and one to release (compare owner and create revision, delete), nothing
//!   else on the critical path and no lease grant or revoke behind it (the released lease
//!   goes back to the pool);
//! - handoff: the holder's release transaction, then the waiter's lease re-check (one
//!   keep-alive) as soon as the predecessor's delete event arrives: no read, no poll.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sb_coord::{Coord, QueueKind, QueueName};
use sb_store::{
    LeaseGrant, LeaseId, LeaseInfo, Limits, RangeRequest, RangeResponse, Revision, SharedStore, Store,
    StoreResult, Txn, TxnOp, TxnResponse, WatchRequest, WatchStream,
};

/// A store that logs the name of every call it passes on.
struct Counting {
    inner: SharedStore,
    log: Mutex<Vec<String>>,
}

impl Counting {
    fn record(&self, what: impl Into<String>) {
        self.log.lock().unwrap().push(what.into());
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

fn ops(ops: &[TxnOp]) -> String {
    ops.iter()
        .map(|op| match op {
            TxnOp::Put { .. } => "put",
            TxnOp::Delete(_) => "delete",
            TxnOp::Range(_) => "range",
        })
        .collect::<Vec<_>>()
        .join("+")
}

#[async_trait]
impl Store for Counting {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn limits(&self) -> Limits {
        self.inner.limits()
    }
    async fn range(&self, request: RangeRequest) -> StoreResult<RangeResponse> {
        self.record("range");
        self.inner.range(request).await
    }
    async fn txn(&self, txn: Txn) -> StoreResult<TxnResponse> {
        self.record(format!("txn({})", ops(&txn.success)));
        self.inner.txn(txn).await
    }
    async fn lease_grant(&self, ttl_secs: i64) -> StoreResult<LeaseGrant> {
        self.record("lease_grant");
        self.inner.lease_grant(ttl_secs).await
    }
    async fn lease_keep_alive(&self, id: LeaseId) -> StoreResult<i64> {
        self.record("keep_alive");
        self.inner.lease_keep_alive(id).await
    }
    async fn lease_revoke(&self, id: LeaseId) -> StoreResult<()> {
        self.record("lease_revoke");
        self.inner.lease_revoke(id).await
    }
    async fn lease_time_to_live(&self, id: LeaseId, with_keys: bool) -> StoreResult<LeaseInfo> {
        self.record("lease_time_to_live");
        self.inner.lease_time_to_live(id, with_keys).await
    }
    async fn watch(&self, request: WatchRequest) -> StoreResult<WatchStream> {
        self.record("watch");
        self.inner.watch(request).await
    }
    async fn compact(&self, revision: Revision) -> StoreResult<()> {
        self.record("compact");
        self.inner.compact(revision).await
    }
}

fn lock(name: &str) -> QueueName {
    QueueName::new(QueueKind::Lock, None, name).unwrap()
}

/// Lets background work (pool refills, lease cleanup) finish, then takes the log.
async fn settle(store: &Counting) -> Vec<String> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    store.take()
}

async fn count_round_trips(inner: SharedStore) {
    let counting = Arc::new(Counting { inner, log: Mutex::new(Vec::new()) });
    let store: SharedStore = counting.clone();
    let coord = Coord::new(store);
    let name = lock("roundtrips");

    // Warm up: the first acquire of a TTL grants inline and fills the pool.
    for _ in 0..2 {
        let grant = coord.acquire(&name, "alice", 30, 0, String::new()).await.unwrap();
        coord.release(&name, "alice", &grant.owner).await.unwrap();
        settle(&counting).await;
    }

    // Uncontended acquire + release.
    let grant = coord.acquire(&name, "alice", 30, 0, String::new()).await.unwrap();
    let acquire = counting.take();
    coord.release(&name, "alice", &grant.owner).await.unwrap();
    let release = counting.take();
    let background = settle(&counting).await;
    println!(
        "uncontended acquire: {acquire:?}\nuncontended release: {release:?}\nbackground: {background:?}"
    );
    assert_eq!(acquire, ["txn(put+range)"], "an uncontended acquire on a warm pool is one transaction");
    assert_eq!(release, ["txn(delete)"], "a release is one transaction");
    assert!(background.is_empty(), "no lease grant or revoke behind an uncontended acquire + release");

    // Handoff: a waiter queues behind the holder; the holder releases.
    let holder = coord.acquire(&name, "alice", 30, 0, String::new()).await.unwrap();
    let waiter = {
        let (coord, name) = (coord.clone(), name.clone());
        tokio::spawn(async move { coord.acquire(&name, "bob", 30, 10_000, String::new()).await })
    };
    // Queued and watching: its enqueue and its watch are the waiter's set-up, not the handoff.
    loop {
        let log = counting.log.lock().unwrap().clone();
        if log.iter().any(|call| call == "watch") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let setup = counting.take();
    coord.release(&name, "alice", &holder.owner).await.unwrap();
    let granted = waiter.await.unwrap().unwrap();
    assert!(granted.waited);
    assert!(granted.fencing_token > holder.fencing_token);
    let handoff = counting.take();
    coord.release(&name, "bob", &granted.owner).await.unwrap();
    let background = settle(&counting).await;
    println!("waiter set-up: {setup:?}\nhandoff: {handoff:?}\nafter: {background:?}");
    assert_eq!(
        handoff,
        ["txn(delete)", "keep_alive"],
        "a handoff is the release's transaction and the waiter's lease re-check"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let options = sb_store_embedded::EmbeddedOptions::new(dir.path().join("store.redb"));
    let store: SharedStore = sb_store_embedded::EmbeddedStore::open(options).await.unwrap();
    count_round_trips(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_on_etcd() {
    let endpoints: Vec<String> = std::env::var("SB_TEST_ETCD_ENDPOINTS")
        .expect("SB_TEST_ETCD_ENDPOINTS is not set: run scripts/test, which starts etcd and sets it")
        .split(',')
        .map(str::to_owned)
        .collect();
    let namespace = format!("/t-lock-roundtrips-etcd-{:016x}/", rand::random::<u64>());
    let options = sb_store_etcd::EtcdOptions::new(endpoints).with_namespace(namespace.clone());
    let store: SharedStore = sb_store_etcd::EtcdStore::connect(options).await.unwrap();
    count_round_trips(store.clone()).await;
    store.delete(sb_store::KeyRange::prefix("")).await.unwrap();
}
