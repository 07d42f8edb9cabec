//! Group-commit tests that need the writer's queue: requests are queued without yielding,
//! so on a current-thread runtime they are certain to land in one batch.

use std::sync::Arc;

use sb_store::{
    Compare, CompareOp, EventKind, KeyRange, LeaseId, OpResponse, Store, StoreError, StoreResult, Txn, TxnOp,
    TxnResponse, WatchRequest,
};
use tokio::sync::oneshot;

use crate::writer::WriteRequest;
use crate::{EmbeddedOptions, EmbeddedStore};

async fn open() -> (Arc<EmbeddedStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(EmbeddedOptions::new(dir.path().join("store.redb"))).await.unwrap();
    (store, dir)
}

/// Queues transactions without yielding, so the writer sees them all at once.
fn queue(store: &EmbeddedStore, txns: Vec<Txn>) -> Vec<oneshot::Receiver<StoreResult<TxnResponse>>> {
    txns.into_iter()
        .map(|txn| {
            let (reply, answer) = oneshot::channel();
            store.writer.try_send(WriteRequest::Txn { txn, reply }).map_err(|_| "queue full").unwrap();
            answer
        })
        .collect()
}

async fn answers(
    receivers: Vec<oneshot::Receiver<StoreResult<TxnResponse>>>,
) -> Vec<StoreResult<TxnResponse>> {
    let mut out = Vec::new();
    for receiver in receivers {
        out.push(receiver.await.unwrap());
    }
    out
}

#[tokio::test]
async fn one_batch_commits_once_and_each_txn_keeps_its_outcome() {
    let (store, _dir) = open().await;
    store.put(b"counter", b"0", None).await.unwrap();
    let before = store.metrics();
    let receivers = queue(
        &store,
        vec![
            Txn::new().and_then([TxnOp::put("a", "1")]),
            // Fails its compare and writes nothing: no revision of its own.
            Txn::new()
                .when([Compare::value("counter", CompareOp::Equal, "9")])
                .and_then([TxnOp::put("x", "1")]),
            // Names an unknown lease: refused, and nothing of it is applied.
            Txn::new().and_then([TxnOp::put("b", "1"), TxnOp::put_with_lease("c", "1", LeaseId(77))]),
            // Sees the first txn's write, pending in the same batch.
            Txn::new()
                .when([Compare::version("a", CompareOp::Equal, 1)])
                .and_then([TxnOp::put("a", "2"), TxnOp::get("a")]),
            Txn::new().and_then([TxnOp::delete("absent")]),
        ],
    );
    let results = answers(receivers).await;
    let after = store.metrics();
    assert_eq!(after.commits - before.commits, 1, "one redb commit for the whole batch");
    assert_eq!(after.batched_txns - before.batched_txns, 5);
    assert_eq!(after.txns_committed - before.txns_committed, 2);

    let first = results[0].as_ref().unwrap();
    assert_eq!(first.revision, before.current_revision + 1);
    let failed = results[1].as_ref().unwrap();
    assert!(!failed.succeeded);
    assert_eq!(failed.revision, before.current_revision + 1, "a txn that writes nothing keeps the revision");
    assert_eq!(results[2], Err(StoreError::LeaseNotFound(LeaseId(77))));
    let fourth = results[3].as_ref().unwrap();
    assert!(fourth.succeeded);
    assert_eq!(fourth.revision, before.current_revision + 2);
    let OpResponse::Range(read) = &fourth.responses[1] else { panic!("expected a range answer") };
    assert_eq!(read.kvs[0].value, b"2");
    assert_eq!(read.kvs[0].version, 2);
    assert_eq!(results[4].as_ref().unwrap().revision, before.current_revision + 2);

    assert_eq!(store.current_revision().await.unwrap(), before.current_revision + 2);
    assert!(store.get(b"b").await.unwrap().is_none());
    assert!(store.get(b"x").await.unwrap().is_none());
}

#[tokio::test]
async fn a_batch_that_writes_nothing_does_not_commit() {
    let (store, _dir) = open().await;
    let before = store.metrics();
    let receivers = queue(
        &store,
        vec![
            Txn::new().and_then([TxnOp::delete("absent")]),
            Txn::new().when([Compare::absent("k")]).or_else([TxnOp::put("k", "v")]),
        ],
    );
    for result in answers(receivers).await {
        assert_eq!(result.unwrap().revision, 1);
    }
    assert_eq!(store.metrics().commits, before.commits);
}

#[tokio::test]
async fn requests_after_close_are_refused() {
    let (store, _dir) = open().await;
    store.put(b"k", b"v", None).await.unwrap();
    store.close().await;
    assert_eq!(store.put(b"k", b"v", None).await, Err(StoreError::Closed));
    assert_eq!(store.get(b"k").await, Err(StoreError::Closed));
    assert_eq!(store.lease_grant(5).await.map(|g| g.ttl_secs), Err(StoreError::Closed));
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_lags_the_broadcast_catches_up_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = EmbeddedOptions::new(dir.path().join("store.redb"));
    options.watch_buffer = 1;
    let store = EmbeddedStore::open(options).await.unwrap();
    let mut watch = store.watch(WatchRequest::new(KeyRange::prefix("k/"))).await.unwrap();
    // Far more commits than the broadcast holds, while nobody reads the watch.
    for i in 0..60 {
        store.put(format!("k/{}", i % 3).as_bytes(), b"v", None).await.unwrap();
        store.put(b"other", b"v", None).await.unwrap();
    }
    store.delete(KeyRange::prefix("k/")).await.unwrap();
    for i in 0..60 {
        let batch = watch.next().await.unwrap().unwrap();
        assert_eq!(batch.revision, 2 + 2 * i);
        assert_eq!(batch.events.len(), 1);
        assert_eq!(batch.events[0].kv.key, format!("k/{}", i % 3).into_bytes());
    }
    let deletes = watch.next().await.unwrap().unwrap();
    assert_eq!(deletes.revision, 122);
    assert_eq!(deletes.events.len(), 3);
    assert!(deletes.events.iter().all(|e| e.kind == EventKind::Delete && e.kv.mod_revision == 122));
    watch.request_progress();
    assert_eq!(watch.next().await.unwrap().unwrap(), sb_store::WatchBatch { revision: 122, events: vec![] });
}

/// Options under which the checkpointer runs only when the writer is held back.
fn lagging(dir: &tempfile::TempDir, max_log_lag: u64) -> EmbeddedOptions {
    let mut options = EmbeddedOptions::new(dir.path().join("store.redb"));
    options.checkpoint_interval = std::time::Duration::from_secs(3600);
    options.checkpoint_revisions = u64::MAX;
    options.max_log_lag = max_log_lag;
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_waits_for_a_checkpointer_that_falls_too_far_behind() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(lagging(&dir, 8)).await.unwrap();
    store.pause_checkpoints(true);
    // Sequential writes against a stalled checkpointer: the writer commits until the lag
    // passes the limit (by at most the one batch), then holds the next request back.
    let writes = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..20 {
                store.put(format!("k/{}", i % 5).as_bytes(), format!("v{i}").as_bytes(), None).await.unwrap();
            }
        })
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.metrics().backpressure_waits == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the writer never waited: {:?}", store.metrics());
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let metrics = store.metrics();
    assert_eq!(
        (metrics.current_revision, metrics.checkpointed_revision),
        (10, 1),
        "held at 8 + 1: {metrics:?}"
    );
    assert!(!writes.is_finished());
    store.pause_checkpoints(false);
    writes.await.unwrap();
    let metrics = store.metrics();
    assert!(metrics.checkpoints > 0 && metrics.current_revision == 21, "{metrics:?}");
    // Concurrent writers: batches, and the lag stays within the limit plus one batch.
    let max_batch = EmbeddedOptions::new("unused").max_batch_txns as i64;
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                for j in 0..5 {
                    store.put(format!("c/{i}").as_bytes(), format!("{j}").as_bytes(), None).await.unwrap();
                    let metrics = store.metrics();
                    let lag = metrics.current_revision - metrics.checkpointed_revision;
                    assert!(lag <= 8 + max_batch, "{metrics:?}");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(store.range(sb_store::RangeRequest::prefix("c/")).await.unwrap().count, 64);
    assert_eq!(store.get(b"c/7").await.unwrap().unwrap().value, b"4");
    store.close().await;
}

/// With the checkpointer far behind, past reads are served from the log laid over the
/// MVCC table, while the writer goes on committing; after close they read the same from
/// the MVCC table alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_reads_overlay_the_log_while_the_checkpointer_lags() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(lagging(&dir, 1_000)).await.unwrap();
    let mut revisions = Vec::new();
    for i in 0..30 {
        revisions.push(
            store.put(format!("k/{}", i % 4).as_bytes(), format!("v{i}").as_bytes(), None).await.unwrap(),
        );
        if i == 9 {
            // A checkpoint in the middle: reads straddle it from then on.
            store.compact(2).await.unwrap();
        }
    }
    let metrics = store.metrics();
    assert_eq!((metrics.checkpointed_revision, metrics.current_revision), (revisions[9], revisions[29]));
    let expect = |rev: sb_store::Revision| -> Vec<(String, String)> {
        let mut state = std::collections::BTreeMap::new();
        for (i, r) in revisions.iter().enumerate() {
            if *r <= rev {
                state.insert(format!("k/{}", i % 4), format!("v{i}"));
            }
        }
        state.into_iter().collect()
    };
    let read = |store: Arc<EmbeddedStore>, rev| async move {
        let response = store.range(sb_store::RangeRequest::prefix("k/").at_revision(rev)).await.unwrap();
        response
            .kvs
            .into_iter()
            .map(|kv| (String::from_utf8(kv.key).unwrap(), String::from_utf8(kv.value).unwrap()))
            .collect::<Vec<_>>()
    };
    // Readers race a writer that keeps committing elsewhere.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..50 {
                store.put(b"other", format!("{i}").as_bytes(), None).await.unwrap();
            }
        })
    };
    for rev in revisions.iter().copied() {
        assert_eq!(read(store.clone(), rev).await, expect(rev), "at {rev}");
    }
    writer.await.unwrap();
    store.close().await;
    let store = EmbeddedStore::open(lagging(&dir, 1_000)).await.unwrap();
    assert_eq!(store.metrics().checkpointed_revision, store.metrics().current_revision, "close checkpoints");
    for rev in revisions.iter().copied().filter(|r| *r >= 2) {
        assert_eq!(read(store.clone(), rev).await, expect(rev), "from the MVCC table at {rev}");
    }
    store.close().await;
}

#[tokio::test]
async fn cold_keys_keep_no_value_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = EmbeddedOptions::new(dir.path().join("store.redb"));
    options.cold_prefixes = vec![b"c/".to_vec()];
    let store = EmbeddedStore::open(options).await.unwrap();
    store.put(b"c/a", b"cold value", None).await.unwrap();
    store.put(b"h/a", b"hot value", None).await.unwrap();
    {
        let state = store.shared.state.read();
        assert!(matches!(state.kvs[&b"c/a".to_vec()], crate::state::Entry::Cold(_)));
        assert!(
            matches!(&state.kvs[&b"h/a".to_vec()], crate::state::Entry::Hot(kv) if kv.value == b"hot value")
        );
    }
    assert_eq!(store.get(b"c/a").await.unwrap().unwrap().value, b"cold value");
}
