//! Watches: history replayed from a past revision then live changes, one batch per
//! revision, filtering, gap-free resume, compaction, progress, and revisions too large
//! for one etcd message.

use std::time::Duration;

use crate::error::StoreError;
use crate::types::{Event, EventKind, KeyRange, Revision, Txn, TxnOp, WatchBatch, WatchRequest};

use super::harness::{current_revision, delete_event, next_batch, present, put_event, watch_failure};
use super::TestStore;

fn watch_prefix(prefix: &str, from: Revision) -> WatchRequest {
    WatchRequest::new(KeyRange::prefix(prefix)).from_revision(from)
}

/// `(kind, key)` of each event, for compact assertions.
fn shape(batch: &WatchBatch) -> Vec<(EventKind, String)> {
    batch.events.iter().map(|e| (e.kind, String::from_utf8_lossy(&e.kv.key).into_owned())).collect()
}

/// A watch from a past revision replays the history in order, one batch per revision with
/// all of that revision's matching events (in the order the revision wrote them), then
/// delivers live changes.
pub async fn watch_replays_history_then_live_changes(t: &TestStore) {
    let start = current_revision(t).await + 1;
    let r1 = t.store.put(b"w/a", b"1", None).await.expect("put w/a");
    let a1 = present(t, "w/a").await;
    let three = Txn::new().and_then([
        TxnOp::put("w/c", "1"),
        TxnOp::put("w/a", "2"),
        TxnOp::put("outside", "1"),
        TxnOp::put("w/b", "1"),
    ]);
    let r2 = t.store.txn(three).await.expect("txn writing w/c, w/a, outside, w/b").revision;
    let (a2, b2, c2) = (present(t, "w/a").await, present(t, "w/b").await, present(t, "w/c").await);
    t.store.put(b"other", b"1", None).await.expect("put a key outside w/");
    let r4 = t.store.delete(KeyRange::key("w/b")).await.expect("delete w/b").revision;

    let mut watch = t.store.watch(watch_prefix("w/", start)).await.expect("watch w/ from the past");
    let batch = next_batch(&mut watch, "the first put").await;
    assert_eq!(batch, WatchBatch { revision: r1, events: vec![put_event(a1)] }, "the first revision");
    let batch = next_batch(&mut watch, "the txn's three puts").await;
    assert_eq!(
        batch,
        WatchBatch { revision: r2, events: vec![put_event(c2), put_event(a2), put_event(b2)] },
        "a txn touching three keys under w/ is one batch of those three events, in op order"
    );
    let batch = next_batch(&mut watch, "the delete").await;
    assert_eq!(
        batch,
        WatchBatch { revision: r4, events: vec![delete_event("w/b", r4)] },
        "a delete event holds the key and the deleting revision; the write outside w/ is filtered"
    );

    let r5 = t.store.put(b"w/d", b"1", None).await.expect("put w/d");
    let d = present(t, "w/d").await;
    let batch = next_batch(&mut watch, "a live put").await;
    assert_eq!(batch, WatchBatch { revision: r5, events: vec![put_event(d)] }, "then live changes");

    let mixed =
        Txn::new().and_then([TxnOp::delete("w/a"), TxnOp::put("outside", "2"), TxnOp::put("w/e", "1")]);
    let r6 = t.store.txn(mixed).await.expect("txn deleting w/a and writing w/e").revision;
    let e = present(t, "w/e").await;
    let batch = next_batch(&mut watch, "a live txn").await;
    assert_eq!(
        batch,
        WatchBatch { revision: r6, events: vec![delete_event("w/a", r6), put_event(e)] },
        "a live txn is one batch of its matching events, in op order"
    );
}

/// Watches of `[start, end)` and of everything from a key see exactly their keys.
pub async fn watch_of_a_range_sees_only_its_keys(t: &TestStore) {
    let start = current_revision(t).await + 1;
    let between = KeyRange::Between { start: b"b".to_vec(), end: b"d".to_vec() };
    let mut between =
        t.store.watch(WatchRequest::new(between).from_revision(start)).await.expect("watch [b, d)");
    let from = WatchRequest::new(KeyRange::From(b"d".to_vec())).from_revision(start);
    let mut from = t.store.watch(from).await.expect("watch d..");
    for key in ["a", "b", "c", "d", "e"] {
        t.store.put(key.as_bytes(), b"1", None).await.expect("put");
    }
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.extend(shape(&next_batch(&mut between, "a put in [b, d)").await));
    }
    let put = |k: &str| (EventKind::Put, k.to_string());
    assert_eq!(seen, [put("b"), put("c")], "the [b, d) watch sees b and c");
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.extend(shape(&next_batch(&mut from, "a put at or after d").await));
    }
    assert_eq!(seen, [put("d"), put("e")], "the d.. watch sees d and e");
    let marker = t.store.put(b"bb", b"1", None).await.expect("put bb");
    let batch = next_batch(&mut between, "the marker").await;
    assert_eq!((batch.revision, shape(&batch)), (marker, vec![put("bb")]), "nothing else reached [b, d)");
}

/// A watch of one key sees only that key, not keys it is a prefix of.
pub async fn watch_of_one_key_sees_only_that_key(t: &TestStore) {
    let start = current_revision(t).await + 1;
    let mut watch =
        t.store.watch(WatchRequest::new(KeyRange::key("k")).from_revision(start)).await.expect("watch k");
    t.store.put(b"k1", b"1", None).await.expect("put k1");
    t.store.put(b"j", b"1", None).await.expect("put j");
    let rk = t.store.put(b"k", b"1", None).await.expect("put k");
    t.store.put(b"kk", b"1", None).await.expect("put kk");
    let rd = t.store.delete(KeyRange::key("k")).await.expect("delete k").revision;

    let batch = next_batch(&mut watch, "the put of k").await;
    assert_eq!((batch.revision, shape(&batch)), (rk, vec![(EventKind::Put, "k".into())]), "only k's put");
    let batch = next_batch(&mut watch, "the delete of k").await;
    assert_eq!(
        (batch.revision, shape(&batch)),
        (rd, vec![(EventKind::Delete, "k".into())]),
        "then k's delete"
    );
}

/// A watch without a start revision delivers only changes made after it was created.
pub async fn watch_without_a_start_revision_sees_only_new_changes(t: &TestStore) {
    let old = t.store.put(b"n/old", b"1", None).await.expect("put n/old");
    let mut watch = t.store.watch(WatchRequest::new(KeyRange::prefix("n/"))).await.expect("watch n/");
    // The stream says where it starts: past every write made before it was established
    // (here, on a store nobody else writes to, right after n/old).
    assert_eq!(watch.start_revision(), Some(old + 1), "the start of a watch with no start revision");
    let rev = t.store.put(b"n/new", b"1", None).await.expect("put n/new");
    let batch = next_batch(&mut watch, "the put made after the watch").await;
    assert_eq!((batch.revision, shape(&batch)), (rev, vec![(EventKind::Put, "n/new".into())]), "only n/new");
}

/// Dropping a watch and starting another from the last delivered revision + 1 delivers
/// exactly the rest of the history, including writes made while no watch ran.
pub async fn watch_resumes_without_gaps(t: &TestStore) {
    let start = current_revision(t).await + 1;
    let mut written = Vec::new();
    for i in 0..6 {
        written.push(t.store.put(format!("g/{i}").as_bytes(), b"v", None).await.expect("put"));
    }
    let mut first = t.store.watch(watch_prefix("g/", start)).await.expect("first watch");
    assert_eq!(first.start_revision(), Some(start), "a watch from a past revision starts there");
    let mut delivered = Vec::new();
    for _ in 0..3 {
        delivered.push(next_batch(&mut first, "a batch of the first watch").await.revision);
    }
    drop(first);
    for i in 6..9 {
        written.push(t.store.put(format!("g/{i}").as_bytes(), b"v", None).await.expect("put"));
    }
    let last = *delivered.last().expect("three batches were delivered");
    let mut second = t.store.watch(watch_prefix("g/", last + 1)).await.expect("resumed watch");
    for _ in 3..9 {
        delivered.push(next_batch(&mut second, "a batch of the resumed watch").await.revision);
    }
    assert_eq!(delivered, written, "the two watches together deliver every revision once, in order");
}

/// A watch from below the compacted revision fails with `Compacted`; from the compacted
/// revision itself it replays from there.
pub async fn watch_from_below_the_compacted_revision_fails(t: &TestStore) {
    let r1 = t.store.put(b"c/a", b"1", None).await.expect("put");
    let r2 = t.store.put(b"c/a", b"2", None).await.expect("put");
    let r3 = t.store.put(b"c/a", b"3", None).await.expect("put");
    t.store.compact(r2).await.expect("compact at r2");

    let err = watch_failure(t, watch_prefix("c/", r1)).await;
    assert!(
        matches!(err, StoreError::Compacted { .. }),
        "expected Compacted for a watch from r1, got {err:?}"
    );

    let mut watch = t.store.watch(watch_prefix("c/", r2)).await.expect("watch from the compacted revision");
    assert_eq!(
        next_batch(&mut watch, "r2").await.revision,
        r2,
        "a watch from the compacted revision starts there"
    );
    assert_eq!(next_batch(&mut watch, "r3").await.revision, r3, "and continues in order");
}

/// A progress request is answered with an empty batch whose revision covers every write
/// so far. etcd answers only a synced watcher, so the request is retried.
pub async fn watch_progress_request_yields_a_progress_batch(t: &TestStore) {
    t.store.put(b"p/a", b"1", None).await.expect("put p/a");
    let last = t.store.put(b"elsewhere", b"1", None).await.expect("put elsewhere");
    let mut watch = t.store.watch(watch_prefix("p/", last + 1)).await.expect("watch p/");
    for _ in 0..5 {
        watch.request_progress();
        let reply = tokio::time::timeout(Duration::from_secs(1), watch.next()).await;
        match reply {
            Err(_) => continue,
            Ok(Some(Ok(batch))) => {
                assert!(batch.is_progress(), "nothing was written under p/ since, got {batch:?}");
                assert!(
                    batch.revision >= last,
                    "progress at {} covers the last write {last}",
                    batch.revision
                );
                return;
            }
            Ok(other) => panic!("expected a progress batch, got {other:?}"),
        }
    }
    panic!("five progress requests within 5 s brought no progress batch");
}

const FRAGMENT_KEYS: usize = 2_000;
/// Long keys make the revision's delete events (about 2 MB) exceed etcd's 1.5 MiB
/// message limit, so etcd must fragment them and the adapter reassemble them.
const FRAGMENT_KEY_BYTES: usize = 1_000;
const PUTS_PER_TXN: usize = 100;

/// A revision that deletes thousands of keys is one batch with all its events, live and
/// replayed, even when etcd fragments it.
pub async fn watch_delivers_a_large_revision_as_one_batch(t: &TestStore) {
    let keys: Vec<String> =
        (0..FRAGMENT_KEYS).map(|i| format!("f/{i:04}/{}", "x".repeat(FRAGMENT_KEY_BYTES - 7))).collect();
    for chunk in keys.chunks(PUTS_PER_TXN) {
        let puts = chunk.iter().map(|k| TxnOp::put(k.as_str(), "v"));
        t.store.txn(Txn::new().and_then(puts)).await.expect("put a chunk of f/ keys");
    }
    let before = current_revision(t).await;
    let mut live = t.store.watch(watch_prefix("f/", before + 1)).await.expect("watch f/");
    let deleted = t.store.delete(KeyRange::prefix("f/")).await.expect("delete f/");
    assert_eq!(
        (deleted.deleted, deleted.revision),
        (FRAGMENT_KEYS as u64, before + 1),
        "one revision deletes all"
    );

    let expected: Vec<Event> = keys.iter().map(|k| delete_event(k, deleted.revision)).collect();
    let check = |mut batch: WatchBatch, how: &str| {
        assert_eq!(batch.revision, deleted.revision, "{how}: the batch is the delete's revision");
        assert_eq!(batch.events.len(), FRAGMENT_KEYS, "{how}: one batch holds all {FRAGMENT_KEYS} events");
        batch.events.sort_by(|a, b| a.kv.key.cmp(&b.kv.key));
        assert!(batch.events == expected, "{how}: every event is the delete of one of the keys");
    };
    check(next_batch(&mut live, "the live prefix delete").await, "live");

    let mut replay = t.store.watch(watch_prefix("f/", before + 1)).await.expect("replaying watch f/");
    check(next_batch(&mut replay, "the replayed prefix delete").await, "replayed");
    let marker = t.store.put(b"f/marker", b"v", None).await.expect("put f/marker");
    let batch = next_batch(&mut replay, "the marker after the replay").await;
    assert_eq!(batch.revision, marker, "nothing else came between the big revision and the next write");
}
