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

/// Reads `c/` (cold) as the port answers it: `(key, value, mod_revision)`.
async fn cold_keys(store: &EmbeddedStore) -> Vec<(String, String, i64)> {
    let response = store.range(RangeRequest::prefix("c/")).await.unwrap();
    response
        .kvs
        .into_iter()
        .map(|kv| (String::from_utf8(kv.key).unwrap(), String::from_utf8(kv.value).unwrap(), kv.mod_revision))
        .collect()
}

/// Whether a read-only and a writing transaction both see `value` in `key` (a compare on
/// a cold value reads the files, on the read path and in the writer).
async fn compares_value(store: &EmbeddedStore, key: &str, value: &str) -> bool {
    let compare = Compare::value(key, CompareOp::Equal, value);
    let read = store.txn(Txn::new().when([compare.clone()]).and_then([TxnOp::get(key)])).await.unwrap();
    let write = Txn::new().when([compare]).and_then([TxnOp::put("h/seen", value), TxnOp::get(key)]);
    let written = store.txn(write).await.unwrap();
    assert_eq!(read.succeeded, written.succeeded, "both paths agree on {key}");
    if read.succeeded {
        for response in [&read.responses[0], &written.responses[1]] {
            let sb_store::OpResponse::Range(range) = response else { panic!("a range answer") };
            assert_eq!(range.kvs[0].value, value.as_bytes());
        }
    }
    read.succeeded
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_values_are_read_from_the_files_across_checkpoint_compaction_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cold_options = || {
        let mut options = options(&dir);
        options.cold_prefixes = vec![b"c/".to_vec()];
        options.checkpoint_interval = Duration::from_secs(3600);
        options
    };
    let store = EmbeddedStore::open(cold_options()).await.unwrap();
    let mut watch = store.watch(WatchRequest::new(KeyRange::prefix("c/"))).await.unwrap();
    let a = store.put(b"c/a", b"a1", None).await.unwrap();
    let b = store.put(b"c/b", b"b1", None).await.unwrap();
    store.put(b"h/x", b"hot", None).await.unwrap();
    // Not checkpointed: read from the log.
    assert_eq!(store.metrics().checkpointed_revision, 1);
    assert_eq!(cold_keys(&store).await, [("c/a".into(), "a1".into(), a), ("c/b".into(), "b1".into(), b)]);
    assert!(compares_value(&store, "c/a", "a1").await);
    assert!(!compares_value(&store, "c/a", "other").await);
    // Keys only and counts need no value.
    let keys = store.range(RangeRequest::prefix("c/").keys_only()).await.unwrap();
    assert_eq!(
        (keys.count, keys.kvs[1].key.as_slice(), keys.kvs[1].value.is_empty()),
        (2, &b"c/b"[..], true)
    );
    // Watches carry the values written.
    for (key, value) in [("c/a", "a1"), ("c/b", "b1")] {
        let batch = watch.next().await.unwrap().unwrap();
        assert_eq!(
            (batch.events[0].kv.key.as_slice(), batch.events[0].kv.value.as_slice()),
            (key.as_bytes(), value.as_bytes())
        );
    }

    // Rewritten many times, then compacted at the current revision: only the live record
    // of each key is left, in the MVCC table.
    let mut last = a;
    for i in 2..=20 {
        last = store.put(b"c/a", format!("a{i}").as_bytes(), None).await.unwrap();
    }
    store.compact(store.current_revision().await.unwrap()).await.unwrap();
    let metrics = store.metrics();
    assert_eq!(metrics.checkpointed_revision, metrics.current_revision);
    assert_eq!(cold_keys(&store).await, [("c/a".into(), "a20".into(), last), ("c/b".into(), "b1".into(), b)]);
    assert!(compares_value(&store, "c/a", "a20").await);
    assert_eq!(store.get(b"c/b").await.unwrap().unwrap().value, b"b1");
    store.delete(KeyRange::key("c/b")).await.unwrap();
    assert!(store.get(b"c/b").await.unwrap().is_none());
    assert!(!compares_value(&store, "c/b", "b1").await, "a deleted key's value compares false");

    // Reopened: the state is rebuilt with metadata only, and reads go to the files.
    store.put(b"c/new", b"n", None).await.unwrap();
    store.close().await;
    let store = EmbeddedStore::open(cold_options()).await.unwrap();
    let values: Vec<_> = cold_keys(&store).await.into_iter().map(|(k, v, _)| (k, v)).collect();
    assert_eq!(values, [("c/a".to_string(), "a20".to_string()), ("c/new".into(), "n".into())]);
    assert_eq!(store.get(b"h/x").await.unwrap().unwrap().value, b"hot");
}

/// Reads of cold values racing overwrites and compaction to the current revision always
/// see a value the key had (never a missing record): the snapshots they read are taken
/// with the state that named the values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_reads_race_overwrites_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = options(&dir);
    options.cold_prefixes = vec![b"c/".to_vec()];
    options.checkpoint_interval = Duration::from_millis(1);
    options.checkpoint_revisions = 4;
    let store = EmbeddedStore::open(options).await.unwrap();
    store.put(b"c/k", b"0", None).await.unwrap();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 1..=300u32 {
                let rev = store.put(b"c/k", i.to_string().as_bytes(), None).await.unwrap();
                if i % 10 == 0 {
                    // Compaction may be refused when a checkpoint is behind; that is fine.
                    let _ = store.compact(rev).await;
                }
            }
        })
    };
    let mut reads = 0;
    while !writer.is_finished() {
        let kv = store.get(b"c/k").await.unwrap().unwrap();
        let value: u32 = String::from_utf8(kv.value).unwrap().parse().unwrap();
        assert!(value <= 300);
        let compare = Compare::value("c/k", CompareOp::Equal, value.to_string());
        store.txn(Txn::new().when([compare]).and_then([TxnOp::get("c/k")])).await.unwrap();
        reads += 1;
    }
    writer.await.unwrap();
    assert!(reads > 0);
    assert_eq!(store.get(b"c/k").await.unwrap().unwrap().value, b"300");
}
