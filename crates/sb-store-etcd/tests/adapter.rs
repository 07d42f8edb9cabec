//! What only the etcd adapter has to get right: etcd's 4 MiB message limit on watches and
//! ranges, the namespace, keep-alives, connection errors and the compactor election.

mod common;

use std::sync::Arc;
use std::time::Duration;

use sb_store::{
    EventKind, KeyRange, RangeRequest, SharedStore, Store, StoreError, Txn, TxnOp, WatchBatch, WatchRequest,
    WatchStream,
};
use sb_store_etcd::{EtcdCompactor, EtcdCompactorOptions, EtcdOptions, EtcdStore};

const WAIT: Duration = Duration::from_secs(30);

async fn next_batch(stream: &mut WatchStream, what: &str) -> WatchBatch {
    match tokio::time::timeout(WAIT, stream.next()).await {
        Ok(Some(Ok(batch))) => batch,
        Ok(other) => panic!("{what}: expected a batch, got {other:?}"),
        Err(_) => panic!("{what}: no batch within {WAIT:?}"),
    }
}

/// Writes `count` keys `{prefix}{i:06}{padding}` with `value`, up to 100 and 1 MiB per
/// transaction.
async fn fill(store: &EtcdStore, prefix: &str, count: usize, key_bytes: usize, value: &[u8]) -> Vec<Vec<u8>> {
    let keys: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            let mut key = format!("{prefix}{i:06}").into_bytes();
            key.resize(key_bytes.max(key.len()), b'k');
            key
        })
        .collect();
    let per_txn = (1024 * 1024 / (key_bytes + value.len())).clamp(1, 100);
    for chunk in keys.chunks(per_txn) {
        let puts = chunk.iter().map(|k| TxnOp::put(k.clone(), value.to_vec()));
        store.txn(Txn::new().and_then(puts)).await.expect("fill a chunk");
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_over_4_mib_arrives_as_one_batch() {
    let store = common::connect_fresh().await;
    // 5,000 deletes of 1 KiB keys: about 5 MiB of events in one revision, which etcd
    // must fragment to send under the client's 4 MiB decode limit.
    let keys = fill(&store, "big/", 5_000, 1024, b"v").await;
    let before = store.current_revision().await.expect("revision");
    let mut watch = store
        .watch(WatchRequest::new(KeyRange::prefix("big/")).from_revision(before + 1))
        .await
        .expect("watch");
    let deleted = store.delete(KeyRange::prefix("big/")).await.expect("delete big/");
    assert_eq!(deleted.deleted, 5_000);

    let batch = next_batch(&mut watch, "the big delete").await;
    assert_eq!(batch.revision, deleted.revision);
    assert_eq!(batch.events.len(), 5_000, "every delete of the revision in one batch");
    assert!(batch
        .events
        .iter()
        .all(|e| e.kind == EventKind::Delete && e.kv.mod_revision == deleted.revision));
    let mut seen: Vec<Vec<u8>> = batch.events.into_iter().map(|e| e.kv.key).collect();
    seen.sort();
    assert_eq!(seen, keys, "keys come back without the namespace");

    let marker = store.put(b"big/marker", b"m", None).await.expect("marker");
    assert_eq!(next_batch(&mut watch, "the marker").await.revision, marker, "nothing between the two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_over_4_mib_is_read_whole_through_pages() {
    let store = common::connect_fresh().await;
    // 6,000 values of 1 KiB: about 6 MiB, more than one answer can carry.
    let keys = fill(&store, "r/", 6_000, 16, &[7u8; 1024]).await;
    let revision = store.current_revision().await.expect("revision");
    let all = store.range(RangeRequest::prefix("r/")).await.expect("range r/");
    assert_eq!(all.count, 6_000);
    assert!(!all.more);
    assert_eq!(all.revision, revision);
    assert_eq!(all.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(), keys, "every key, in order");
    assert!(all.kvs.iter().all(|kv| kv.value.len() == 1024));

    // A big limit pages too, and says there is more.
    let limited = store.range(RangeRequest::prefix("r/").with_limit(5_000)).await.expect("limited");
    assert_eq!((limited.kvs.len(), limited.count, limited.more), (5_000, 6_000, true));
    assert_eq!(limited.kvs.last().map(|kv| kv.key.clone()), Some(keys[4_999].clone()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_over_the_decode_limit_is_halved() {
    let store = common::connect_fresh().await;
    // The first page asks for 256 keys; at 40 KiB each that is 10 MiB, over the limit.
    fill(&store, "h/", 300, 16, &[1u8; 40 * 1024]).await;
    let all = store.range(RangeRequest::prefix("h/")).await.expect("range h/");
    assert_eq!((all.kvs.len(), all.count, all.more), (300, 300, false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_read_at_the_first_pages_revision() {
    let store = common::connect_fresh().await;
    fill(&store, "p/", 3_000, 16, &[3u8; 1024]).await;
    let at = store.current_revision().await.expect("revision");
    fill(&store, "p/", 3_000, 16, &[4u8; 1024]).await;
    let old =
        store.range(RangeRequest::prefix("p/").at_revision(at)).await.expect("range at a past revision");
    assert_eq!(old.kvs.len(), 3_000);
    assert!(old.kvs.iter().all(|kv| kv.value[0] == 3 && kv.mod_revision <= at), "one revision for all pages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_do_not_see_each_other() {
    let a = common::connect_fresh().await;
    let b = common::connect_fresh().await;
    a.put(b"k", b"a", None).await.expect("put in a");
    b.put(b"k", b"b", None).await.expect("put in b");
    b.put(b"only-b", b"b", None).await.expect("put in b");
    assert_eq!(a.get(b"k").await.expect("get").map(|kv| kv.value), Some(b"a".to_vec()));
    assert_eq!(b.get(b"k").await.expect("get").map(|kv| kv.value), Some(b"b".to_vec()));

    let whole_a = a.range(RangeRequest::prefix("")).await.expect("all of a");
    assert_eq!(whole_a.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(), vec![b"k".to_vec()]);
    let from_a = a.range(RangeRequest::new(KeyRange::From(Vec::new()))).await.expect("from of a");
    assert_eq!(from_a.count, 1, "an open-ended range stops at the namespace's end");

    let mut watch_a = a.watch(WatchRequest::new(KeyRange::prefix(""))).await.expect("watch a");
    b.put(b"k", b"b2", None).await.expect("write in b");
    let deleted = b.delete(KeyRange::prefix("")).await.expect("delete all of b");
    assert_eq!(deleted.deleted, 2);
    let mine = a.put(b"k", b"a2", None).await.expect("write in a");
    let batch = next_batch(&mut watch_a, "a's own write").await;
    assert_eq!(batch.revision, mine, "a's watch saw none of b's writes");
    assert_eq!(batch.events[0].kv.key, b"k".to_vec());
    assert_eq!(a.get(b"k").await.expect("get").map(|kv| kv.value), Some(b"a2".to_vec()));

    let lease = a.lease_grant(30).await.expect("lease");
    a.put(b"leased", b"v", Some(lease.id)).await.expect("leased put");
    let info = a.lease_time_to_live(lease.id, true).await.expect("ttl");
    assert_eq!(info.keys, vec![b"leased".to_vec()], "lease keys without the namespace");
    a.lease_revoke(lease.id).await.expect("revoke");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_renews_over_one_stream_and_knows_unknown_leases() {
    let store = common::connect_fresh().await;
    let lease = store.lease_grant(5).await.expect("lease");
    for _ in 0..3 {
        assert_eq!(store.lease_keep_alive(lease.id).await.expect("keep alive"), 5);
    }
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.lease_keep_alive(lease.id).await })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.expect("join").expect("concurrent keep alive"), 5);
    }
    store.lease_revoke(lease.id).await.expect("revoke");
    assert_eq!(store.lease_keep_alive(lease.id).await, Err(StoreError::LeaseNotFound(lease.id)));
    let other = store.lease_grant(5).await.expect("another lease");
    assert_eq!(store.lease_keep_alive(other.id).await.expect("the stream still works"), 5);
    store.lease_revoke(other.id).await.expect("revoke");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_no_etcd_fails_as_unavailable() {
    let mut options = EtcdOptions::new(vec!["http://127.0.0.1:1".into()]);
    options.connect_timeout = Duration::from_millis(500);
    match EtcdStore::connect(options).await {
        Err(StoreError::Unavailable(message)) => assert!(message.contains("127.0.0.1:1"), "{message}"),
        Err(other) => panic!("expected unavailable, got {other}"),
        Ok(_) => panic!("connected to nothing"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_compactor_at_a_time_and_a_takeover_after_the_ttl() {
    let namespace = common::fresh_namespace();
    let store: SharedStore = common::connect(namespace.clone()).await;
    let other: SharedStore = common::connect(namespace).await;
    let options = |node: &str| {
        let mut options = EtcdCompactorOptions::new(node, 5);
        options.interval = Duration::from_millis(200);
        options.lease_ttl_secs = 2;
        options
    };
    let old = store.put(b"history", b"0", None).await.expect("put");
    for i in 1..10 {
        store.put(b"history", i.to_string().as_bytes(), None).await.expect("put");
    }

    let mut first = EtcdCompactor::spawn(Arc::clone(&store), options("first"));
    tokio::time::timeout(WAIT, first.wait_leader(true)).await.expect("first leads");
    let mut second = EtcdCompactor::spawn(Arc::clone(&other), options("second"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!second.is_leader(), "one compactor at a time");
    let holder = store.get(b"compactor/leader").await.expect("get").expect("leader key");
    assert_eq!(holder.value, b"first".to_vec());

    // The leader compacted history: the old revision is gone.
    let compacted = tokio::time::timeout(WAIT, async {
        loop {
            match store.range(RangeRequest::key("history").at_revision(old)).await {
                Err(StoreError::Compacted { .. }) => return,
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await;
    assert!(compacted.is_ok(), "the leader compacts");

    // The leader dies without a word: its lease runs out and the other node takes over.
    drop(first);
    tokio::time::timeout(WAIT, second.wait_leader(true)).await.expect("second takes over after the ttl");
    let holder = store.get(b"compactor/leader").await.expect("get").expect("leader key");
    assert_eq!(holder.value, b"second".to_vec());
    second.stop().await;
    assert_eq!(store.get(b"compactor/leader").await.expect("get"), None, "stop gives the key up");
}
