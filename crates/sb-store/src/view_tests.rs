//! The view's reload path, driven by a scripted store: the port's adapters cannot be made
//! to break a watch on demand, so this store answers ranges from a script and ends its
//! first watch with `Compacted`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::*;
use crate::error::StoreResult;
use crate::limits::Limits;
use crate::store::Store;
use crate::types::*;
use crate::watch::WatchStream;

struct ScriptedStore {
    /// What each successive range answers: (keys, revision).
    ranges: Mutex<Vec<(Vec<&'static str>, Revision)>>,
    watches: AtomicUsize,
    /// Senders of the live watches, so the test can feed them.
    feeds: Mutex<Vec<mpsc::Sender<StoreResult<WatchBatch>>>>,
}

fn kv(key: &str, revision: Revision) -> KeyValue {
    KeyValue {
        key: key.as_bytes().to_vec(),
        value: b"v".to_vec(),
        create_revision: revision,
        mod_revision: revision,
        version: 1,
        lease: None,
    }
}

#[async_trait]
impl Store for ScriptedStore {
    fn kind(&self) -> &'static str {
        "scripted"
    }
    fn limits(&self) -> Limits {
        Limits::default()
    }
    async fn range(&self, _request: RangeRequest) -> StoreResult<RangeResponse> {
        let mut ranges = self.ranges.lock();
        let (keys, revision) = if ranges.len() > 1 { ranges.remove(0) } else { ranges[0].clone() };
        let kvs: Vec<_> = keys.iter().map(|k| kv(k, revision)).collect();
        Ok(RangeResponse { revision, count: kvs.len() as u64, kvs, more: false })
    }
    async fn txn(&self, _txn: Txn) -> StoreResult<TxnResponse> {
        Err(StoreError::Unavailable("scripted store is read-only".into()))
    }
    async fn lease_grant(&self, _ttl_secs: i64) -> StoreResult<LeaseGrant> {
        Err(StoreError::Unavailable("no leases".into()))
    }
    async fn lease_keep_alive(&self, id: LeaseId) -> StoreResult<i64> {
        Err(StoreError::LeaseNotFound(id))
    }
    async fn lease_revoke(&self, id: LeaseId) -> StoreResult<()> {
        Err(StoreError::LeaseNotFound(id))
    }
    async fn lease_time_to_live(&self, id: LeaseId, _with_keys: bool) -> StoreResult<LeaseInfo> {
        Err(StoreError::LeaseNotFound(id))
    }
    async fn watch(&self, _request: WatchRequest) -> StoreResult<WatchStream> {
        let (tx, rx) = mpsc::channel(8);
        let (progress, _) = mpsc::channel(1);
        self.watches.fetch_add(1, Ordering::SeqCst);
        self.feeds.lock().push(tx);
        Ok(WatchStream::new(rx, progress))
    }
    async fn compact(&self, _revision: Revision) -> StoreResult<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_compacted_watch_reloads_the_view_and_announces_a_reset() {
    let store = Arc::new(ScriptedStore {
        ranges: Mutex::new(vec![(vec!["svc/a"], 10), (vec!["svc/b", "svc/c"], 20)]),
        watches: AtomicUsize::new(0),
        feeds: Mutex::new(Vec::new()),
    });
    let view = View::<RawMap>::start(store.clone(), KeyRange::prefix("svc/"), "test").await.unwrap();
    let mut changes = view.subscribe();
    wait_for_watches(&store, 1).await;
    let first = store.feeds.lock()[0].clone();
    first.send(Err(StoreError::Compacted { requested: 11, compacted: Some(15) })).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(5), changes.recv()).await {
        Ok(Ok(ViewChange::Reset { revision })) => assert_eq!(revision, 20),
        other => panic!("expected a Reset after a compacted watch, got {other:?}"),
    }
    view.wait_for(20, Duration::from_secs(5)).await.unwrap();
    let keys: Vec<_> = view.snapshot().entries.keys().cloned().collect();
    assert_eq!(keys, [b"svc/b".to_vec(), b"svc/c".to_vec()], "the view holds the reloaded state");
    wait_for_watches(&store, 2).await;

    // The new watch keeps being applied.
    let feed = store.feeds.lock().last().cloned().unwrap();
    let event = Event {
        kind: EventKind::Delete,
        kv: KeyValue { key: b"svc/b".to_vec(), mod_revision: 21, ..KeyValue::default() },
    };
    feed.send(Ok(WatchBatch { revision: 21, events: vec![event] })).await.unwrap();
    view.wait_for(21, Duration::from_secs(5)).await.unwrap();
    let keys: Vec<_> = view.snapshot().entries.keys().cloned().collect();
    assert_eq!(keys, [b"svc/c".to_vec()]);
}

async fn wait_for_watches(store: &ScriptedStore, n: usize) {
    for _ in 0..500 {
        if store.watches.load(Ordering::SeqCst) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the view never opened watch number {n}");
}

#[tokio::test]
async fn decoded_map_skips_values_that_do_not_decode() {
    use crate::membership::NodeRecord;
    let mut map = DecodedMap::<NodeRecord>::default();
    let good = crate::codec::encode(&NodeRecord {
        id: "n1".into(),
        addr: "a".into(),
        roles: vec![],
        started_at_ms: 0,
        release: "t".into(),
    })
    .unwrap();
    map.apply(&Event {
        kind: EventKind::Put,
        kv: KeyValue { key: b"nodes/n1".to_vec(), value: good, ..kv("x", 1) },
    });
    map.apply(&Event {
        kind: EventKind::Put,
        kv: KeyValue { key: b"nodes/n2".to_vec(), value: b"{".to_vec(), ..kv("x", 2) },
    });
    assert_eq!(map.entries.len(), 1);
    assert_eq!(map.undecodable, 1);
}

#[tokio::test]
async fn the_observer_hears_each_change_with_the_new_snapshot_before_writers_wake() {
    let store = Arc::new(ScriptedStore {
        ranges: Mutex::new(vec![(vec!["svc/a"], 10), (vec!["svc/a"], 30)]),
        watches: AtomicUsize::new(0),
        feeds: Mutex::new(Vec::new()),
    });
    // What the observer saw: each change's revision and how many keys the view held then.
    let heard: Arc<Mutex<Vec<(Revision, usize)>>> = Arc::default();
    let view: Arc<Mutex<Option<Arc<View<RawMap>>>>> = Arc::default();
    let observer: ChangeObserver = {
        let (heard, view) = (heard.clone(), view.clone());
        Arc::new(move |change: &ViewChange| {
            let revision = match change {
                ViewChange::Applied { revision, .. } | ViewChange::Reset { revision } => *revision,
            };
            let keys = view.lock().as_ref().map_or(0, |v| v.snapshot().entries.len());
            heard.lock().push((revision, keys));
        })
    };
    let started =
        View::<RawMap>::start_observed(store.clone(), KeyRange::prefix("svc/"), "test", Some(observer))
            .await
            .unwrap();
    let started = Arc::new(started);
    *view.lock() = Some(started.clone());
    wait_for_watches(&store, 1).await;
    let feed = store.feeds.lock()[0].clone();
    let put = Event { kind: EventKind::Put, kv: kv("svc/b", 11) };
    feed.send(Ok(WatchBatch { revision: 11, events: vec![put] })).await.unwrap();
    started.wait_for(11, Duration::from_secs(5)).await.unwrap();
    // By the time the writer of revision 11 is woken, the observer has heard it, with the
    // snapshot already holding the new key.
    assert_eq!(heard.lock().as_slice(), [(11, 2)]);
    // A reload is a Reset, heard as well.
    feed.send(Err(StoreError::Compacted { requested: 12, compacted: Some(20) })).await.unwrap();
    started.wait_for(30, Duration::from_secs(5)).await.unwrap();
    assert_eq!(heard.lock().as_slice(), [(11, 2), (30, 1)]);
    *view.lock() = None;
}
