//! Revisions: one per committed writing transaction, reads at past revisions, and
//! compaction.
//!
//! On etcd every test gets a fresh namespace of a shared cluster, so absolute revisions
//! are unknown: these tests assert only revisions relative to one another, which hold
//! because the etcd suite runs serially.

use crate::error::StoreError;
use crate::types::{Compare, CompareOp, KeyRange, RangeRequest, Txn, TxnOp};

use super::harness::{current_revision, entries_at, pairs, present, value_of};
use super::TestStore;

/// Each committed writing transaction is one revision, however many keys it writes; a
/// transaction that writes nothing does not advance the revision.
pub async fn one_revision_per_writing_txn(t: &TestStore) {
    let r0 = current_revision(t).await;
    assert!(r0 >= 1, "revisions start at 1, current revision is {r0}");

    let r1 = t.store.put(b"a", b"1", None).await.expect("put a");
    assert_eq!(r1, r0 + 1, "a put is the next revision");
    assert_eq!(current_revision(t).await, r1, "the current revision is the last write's");

    let three = Txn::new().and_then([TxnOp::put("x", "1"), TxnOp::put("y", "1"), TxnOp::put("z", "1")]);
    let r2 = t.store.txn(three).await.expect("txn of three puts").revision;
    assert_eq!(r2, r1 + 1, "a txn of three puts is one revision");
    for key in ["x", "y", "z"] {
        let kv = present(t, key).await;
        assert_eq!(
            (kv.create_revision, kv.mod_revision),
            (r2, r2),
            "{key} was written at the txn's revision"
        );
    }

    let read_only = t.store.txn(Txn::new().and_then([TxnOp::get("a")])).await.expect("read-only txn");
    assert_eq!(
        read_only.revision, r2,
        "a read-only txn answers the current revision and does not advance it"
    );

    let failed =
        Txn::new().when([Compare::value("a", CompareOp::Equal, "no")]).and_then([TxnOp::put("a", "2")]);
    let failed = t.store.txn(failed).await.expect("txn with a failing compare");
    assert!(!failed.succeeded, "the compare a == \"no\" fails");
    assert_eq!(failed.revision, r2, "a failed txn with an empty failure branch writes nothing");

    assert_eq!(t.store.put(b"a", b"3", None).await.expect("put a"), r2 + 1, "the next write is current + 1");
}

/// Deleting a key that does not exist changes nothing, so it does not advance the revision.
pub async fn deleting_an_absent_key_does_not_advance_the_revision(t: &TestStore) {
    let r1 = t.store.put(b"a", b"1", None).await.expect("put a");
    let missing = t.store.delete(KeyRange::key("nope")).await.expect("delete an absent key");
    assert_eq!(missing.deleted, 0, "deleting an absent key deletes nothing");
    assert_eq!(missing.revision, r1, "deleting an absent key answers the current revision");
    let empty = t.store.delete(KeyRange::prefix("nothing/")).await.expect("delete an empty prefix");
    assert_eq!((empty.deleted, empty.revision), (0, r1), "deleting an empty range changes nothing");
    assert_eq!(current_revision(t).await, r1, "the current revision has not moved");
    assert_eq!(t.store.put(b"b", b"1", None).await.expect("put b"), r1 + 1, "the next write is current + 1");
}

/// A read at a past revision sees the store as it was then: old values, old metadata,
/// and keys that did not exist yet as absent.
pub async fn reads_at_past_revisions_see_old_values(t: &TestStore) {
    let r1 = t.store.put(b"a", b"1", None).await.expect("put a=1");
    let r2 = t.store.put(b"a", b"2", None).await.expect("put a=2");
    let r3 = t.store.put(b"b", b"1", None).await.expect("put b=1");
    let r4 = t.store.delete(KeyRange::key("a")).await.expect("delete a").revision;

    let everything = || RangeRequest::prefix(Vec::new());
    assert_eq!(entries_at(t, everything().at_revision(r1)).await, pairs(&[("a", "1")]), "at r1");
    assert_eq!(entries_at(t, everything().at_revision(r2)).await, pairs(&[("a", "2")]), "at r2");
    assert_eq!(entries_at(t, everything().at_revision(r3)).await, pairs(&[("a", "2"), ("b", "1")]), "at r3");
    assert_eq!(entries_at(t, everything().at_revision(r4)).await, pairs(&[("b", "1")]), "at r4");

    let at_r1 = t.store.range(RangeRequest::key("a").at_revision(r1)).await.expect("read a at r1");
    let kv = at_r1.kvs.first().expect("a exists at r1");
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (r1, r1, 1), "a's metadata at r1");
    assert_eq!(at_r1.revision, r4, "a past read answers the current revision in its header");
    let at_r2 = t.store.range(RangeRequest::key("a").at_revision(r2)).await.expect("read a at r2");
    let kv = at_r2.kvs.first().expect("a exists at r2");
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (r1, r2, 2), "a's metadata at r2");

    let b_at_r2 = t.store.range(RangeRequest::key("b").at_revision(r2)).await.expect("read b at r2");
    assert!(b_at_r2.kvs.is_empty(), "b did not exist yet at r2, got {:?}", b_at_r2.kvs);
    assert_eq!(b_at_r2.count, 0, "an absent key counts 0");
}

/// A read above the current revision is refused as a future revision.
pub async fn reads_above_the_current_revision_are_refused(t: &TestStore) {
    let rev = t.store.put(b"a", b"1", None).await.expect("put a");
    let err = t.store.range(RangeRequest::key("a").at_revision(rev + 1)).await.expect_err("read at rev + 1");
    assert!(matches!(err, StoreError::FutureRevision { .. }), "expected FutureRevision, got {err:?}");
    let ok = t.store.range(RangeRequest::key("a").at_revision(rev)).await.expect("read at the current rev");
    assert_eq!(ok.kvs.len(), 1, "a read at exactly the current revision works");
}

/// After compaction at R, reads at R and later work (including keys last written before
/// R), and reads below R fail with `Compacted`.
pub async fn compaction_keeps_the_compacted_revision_readable(t: &TestStore) {
    let rb = t.store.put(b"b", b"1", None).await.expect("put b");
    let r1 = t.store.put(b"a", b"1", None).await.expect("put a=1");
    let r2 = t.store.put(b"a", b"2", None).await.expect("put a=2");
    let r3 = t.store.put(b"a", b"3", None).await.expect("put a=3");
    t.store.compact(r2).await.expect("compact at r2");

    let read = |rev| RangeRequest::prefix(Vec::new()).at_revision(rev);
    assert_eq!(entries_at(t, read(r2)).await, pairs(&[("a", "2"), ("b", "1")]), "reads at the compacted rev");
    assert_eq!(entries_at(t, read(r3)).await, pairs(&[("a", "3"), ("b", "1")]), "reads after it");
    assert_eq!(value_of(t, "b").await.as_deref(), Some("1"), "a key written before compaction survives");
    assert_eq!(present(t, "b").await.mod_revision, rb, "and keeps its metadata");

    let err = t.store.range(read(r1)).await.expect_err("read below the compacted revision");
    assert!(matches!(err, StoreError::Compacted { .. }), "expected Compacted at r1 < r2, got {err:?}");
}

/// Compacting at or below the compacted revision fails with `Compacted`; above the current
/// revision with `FutureRevision`; at the current revision it works.
pub async fn compacting_again_or_ahead_is_refused(t: &TestStore) {
    let r1 = t.store.put(b"a", b"1", None).await.expect("put a=1");
    let r2 = t.store.put(b"a", b"2", None).await.expect("put a=2");
    let r3 = t.store.put(b"a", b"3", None).await.expect("put a=3");
    t.store.compact(r2).await.expect("compact at r2");

    let again = t.store.compact(r2).await.expect_err("compact at the compacted revision");
    assert!(
        matches!(again, StoreError::Compacted { .. }),
        "expected Compacted for compact(r2) twice, got {again:?}"
    );
    let below = t.store.compact(r1).await.expect_err("compact below the compacted revision");
    assert!(
        matches!(below, StoreError::Compacted { .. }),
        "expected Compacted for compact(r1), got {below:?}"
    );
    let ahead = t.store.compact(r3 + 1).await.expect_err("compact above the current revision");
    assert!(matches!(ahead, StoreError::FutureRevision { .. }), "expected FutureRevision, got {ahead:?}");

    t.store.compact(r3).await.expect("compact at the current revision");
    assert_eq!(value_of(t, "a").await.as_deref(), Some("3"), "compaction keeps the current state");
}
