//! Behaviour only the embedded adapter has: durability across restarts, leases restored
//! with their full TTL, group commit under concurrency, automatic compaction.

use std::sync::Arc;
use std::time::Duration;

use sb_store::{
    Compare, CompareOp, EventKind, KeyRange, RangeRequest, Store, StoreError, Txn, TxnOp, WatchRequest,
};
use sb_store_embedded::{EmbeddedOptions, EmbeddedStore};

fn options(dir: &tempfile::TempDir) -> EmbeddedOptions {
    EmbeddedOptions::new(dir.path().join("data").join("store.redb"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(options(&dir)).await.unwrap();
    assert_eq!(store.current_revision().await.unwrap(), 1, "an empty store is at revision 1");
    let mut expected = Vec::new();
    for i in 0..50u32 {
        let key = format!("k/{i:02}");
        let rev = store.put(key.as_bytes(), format!("v{i}").as_bytes(), None).await.unwrap();
        expected.push((key, rev));
    }
    store.put(b"k/00", b"again", None).await.unwrap();
    let deleted = store.delete(KeyRange::key("k/49")).await.unwrap();
    assert_eq!(deleted.deleted, 1);
    let last = store.current_revision().await.unwrap();
    assert_eq!(last, 53);
    store.close().await;

    let store = EmbeddedStore::open(options(&dir)).await.unwrap();
    assert_eq!(store.current_revision().await.unwrap(), last);
    let all = store.range(RangeRequest::prefix("k/")).await.unwrap();
    assert_eq!(all.count, 49);
    for kv in &all.kvs {
        let (_, rev) = expected.iter().find(|(k, _)| k.as_bytes() == kv.key.as_slice()).unwrap();
        if kv.key == b"k/00" {
            assert_eq!((kv.value.as_slice(), kv.version, kv.create_revision), (&b"again"[..], 2, *rev));
        } else {
            assert_eq!((kv.mod_revision, kv.version), (*rev, 1));
        }
    }
    // History survives too: a past read and a watch from the start.
    let old = store.range(RangeRequest::key("k/49").at_revision(last - 1)).await.unwrap();
    assert_eq!(old.kvs.len(), 1);
    let mut watch = store.watch(WatchRequest::new(KeyRange::key("k/49")).from_revision(2)).await.unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap().events[0].kind, EventKind::Put);
    assert_eq!(watch.next().await.unwrap().unwrap().events[0].kind, EventKind::Delete);
    // Revisions continue where they stopped.
    assert_eq!(store.put(b"k/new", b"v", None).await.unwrap(), last + 1);
    store.close().await;
}

#[tokio::test(start_paused = true)]
async fn leases_get_their_full_ttl_again_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(options(&dir)).await.unwrap();
    let lease = store.lease_grant(10).await.unwrap();
    store.put(b"session/a", b"1", Some(lease.id)).await.unwrap();
    tokio::time::advance(Duration::from_secs(8)).await;
    assert_eq!(store.lease_time_to_live(lease.id, false).await.unwrap().remaining_ttl_secs, 2);
    store.close().await;

    let store = EmbeddedStore::open(options(&dir)).await.unwrap();
    let info = store.lease_time_to_live(lease.id, true).await.unwrap();
    assert_eq!((info.granted_ttl_secs, info.remaining_ttl_secs), (10, 10));
    assert_eq!(info.keys, vec![b"session/a".to_vec()]);
    assert_eq!(store.get(b"session/a").await.unwrap().unwrap().lease, Some(lease.id));

    // And it still expires, deleting its key.
    let mut watch = store.watch(WatchRequest::new(KeyRange::prefix("session/"))).await.unwrap();
    tokio::time::sleep(Duration::from_secs(11)).await;
    let batch = watch.next().await.unwrap().unwrap();
    assert_eq!(batch.events[0].kind, EventKind::Delete);
    assert!(store.get(b"session/a").await.unwrap().is_none());
    assert_eq!(store.lease_keep_alive(lease.id).await, Err(StoreError::LeaseNotFound(lease.id)));
    store.close().await;
    // A revoked or expired lease is not restored.
    let store = EmbeddedStore::open(options(&dir)).await.unwrap();
    assert_eq!(store.metrics().leases, 0);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_writers_get_distinct_gap_free_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(options(&dir)).await.unwrap();
    let start = store.current_revision().await.unwrap();
    let writers: Vec<_> = (0..64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.put(format!("w/{i}").as_bytes(), b"v", None).await })
        })
        .collect();
    let mut revisions = Vec::new();
    for writer in writers {
        revisions.push(writer.await.unwrap().unwrap());
    }
    revisions.sort_unstable();
    assert_eq!(revisions, ((start + 1)..=(start + 64)).collect::<Vec<_>>());
    let metrics = store.metrics();
    assert_eq!(metrics.txns_committed, 64);
    assert!(metrics.commits <= 64);
    assert_eq!(store.range(RangeRequest::prefix("w/")).await.unwrap().count, 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cas_and_plain_writers_keep_their_own_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(options(&dir)).await.unwrap();
    store.put(b"cas", b"0", None).await.unwrap();
    let start = store.current_revision().await.unwrap();
    // 16 writers race one compare-and-set on "cas"; exactly one wins. 16 plain writers
    // run alongside and all succeed.
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let txn = if i % 2 == 0 {
                    Txn::new()
                        .when([Compare::value("cas", CompareOp::Equal, "0")])
                        .and_then([TxnOp::put("cas", format!("won by {i}"))])
                } else {
                    Txn::new().and_then([TxnOp::put(format!("plain/{i}"), "v")])
                };
                (i, store.txn(txn).await.unwrap())
            })
        })
        .collect();
    let mut winners = 0;
    let mut revisions = Vec::new();
    for task in tasks {
        let (i, response) = task.await.unwrap();
        if i % 2 == 1 {
            assert!(response.succeeded);
        }
        if response.succeeded {
            revisions.push(response.revision);
            winners += usize::from(i % 2 == 0);
        }
    }
    assert_eq!(winners, 1);
    revisions.sort_unstable();
    assert_eq!(revisions, ((start + 1)..=(start + 17)).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_compacted_automatically_by_retention() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = options(&dir);
    options.retention_revisions = 5;
    options.compaction_interval = Duration::from_millis(20);
    let store = EmbeddedStore::open(options).await.unwrap();
    for i in 0..20 {
        store.put(b"k", format!("{i}").as_bytes(), None).await.unwrap();
    }
    let current = store.current_revision().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.metrics().compacted_revision < current - 5 {
        assert!(tokio::time::Instant::now() < deadline, "automatic compaction did not run");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let compacted = current - 5;
    let err = store.range(RangeRequest::key("k").at_revision(compacted - 1)).await.unwrap_err();
    assert!(matches!(err, StoreError::Compacted { .. }), "{err:?}");
    let at = store.range(RangeRequest::key("k").at_revision(compacted)).await.unwrap();
    assert_eq!(at.kvs[0].mod_revision, compacted);
    let mut watch = store.watch(WatchRequest::new(KeyRange::key("k")).from_revision(2)).await.unwrap();
    assert!(matches!(watch.next().await, Some(Err(StoreError::Compacted { .. }))));
    drop(watch);
    // The compacted revision survives a restart.
    store.close().await;
    let store: Arc<EmbeddedStore> =
        EmbeddedStore::open(EmbeddedOptions::new(dir.path().join("data/store.redb"))).await.unwrap();
    assert_eq!(store.metrics().compacted_revision, compacted);
    assert_eq!(store.get(b"k").await.unwrap().unwrap().value, b"19");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_gets_every_revision_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = options(&dir);
    options.watch_buffer = 1;
    let store = EmbeddedStore::open(options).await.unwrap();
    let mut watch = store.watch(WatchRequest::new(KeyRange::prefix("s/"))).await.unwrap();
    let writers: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.put(format!("s/{}", i % 7).as_bytes(), b"v", None).await })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap().unwrap();
    }
    let mut next = 2;
    while next <= 201 {
        let batch = watch.next().await.unwrap().unwrap();
        assert_eq!(batch.revision, next);
        assert_eq!(batch.events.len(), 1);
        next += 1;
    }
    assert_eq!(store.metrics().watchers, 1);
}
