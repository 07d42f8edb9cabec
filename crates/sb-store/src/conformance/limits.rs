//! Request limits as etcd 3.4 applies them with its defaults: 128 operations per list of a
//! transaction, 1.5 MiB per request, no key written twice in one branch.

use crate::error::StoreError;
use crate::limits::{ETCD_MAX_REQUEST_BYTES, ETCD_MAX_TXN_OPS};
use crate::types::{Compare, CompareOp, KeyRange, RangeRequest, Txn, TxnOp};

use super::harness::{current_revision, present, value_of};
use super::TestStore;

fn puts(prefix: &str, n: usize) -> Vec<TxnOp> {
    (0..n).map(|i| TxnOp::put(format!("{prefix}{i:03}"), "v")).collect()
}

fn assert_too_many_ops(result: Result<crate::types::TxnResponse, StoreError>, what: &str) {
    match result {
        Err(StoreError::TooManyOps { .. }) => {}
        other => panic!("{what}: expected TooManyOps, got {other:?}"),
    }
}

/// Each list of a transaction (compares, success ops, failure ops) holds at most 128
/// entries, counted on its own.
pub async fn txn_op_limit_applies_to_each_list(t: &TestStore) {
    assert_eq!(t.store.limits().max_txn_ops, ETCD_MAX_TXN_OPS, "the store applies etcd's default");
    let over = ETCD_MAX_TXN_OPS + 1;
    let before = current_revision(t).await;

    assert_too_many_ops(t.store.txn(Txn::new().and_then(puts("s/", over))).await, "129 success puts");
    assert_too_many_ops(t.store.txn(Txn::new().or_else(puts("f/", over))).await, "129 failure puts");
    let compares = (0..over).map(|i| Compare::version(format!("c/{i:03}"), CompareOp::Equal, 0));
    assert_too_many_ops(t.store.txn(Txn::new().when(compares)).await, "129 compares");
    assert_eq!(current_revision(t).await, before, "refused txns write nothing");

    let full =
        t.store.txn(Txn::new().and_then(puts("s/", ETCD_MAX_TXN_OPS))).await.expect("128 puts are fine");
    assert_eq!(full.revision, before + 1, "128 puts are one revision");
    let count = t.store.range(RangeRequest::prefix("s/").count_only()).await.expect("count s/").count;
    assert_eq!(count, ETCD_MAX_TXN_OPS as u64, "all 128 puts were applied");

    let compares = (0..ETCD_MAX_TXN_OPS).map(|i| Compare::version(format!("s/{i:03}"), CompareOp::Equal, 1));
    let both = Txn::new()
        .when(compares)
        .and_then(puts("s/", ETCD_MAX_TXN_OPS))
        .or_else(puts("f/", ETCD_MAX_TXN_OPS));
    let response = t.store.txn(both).await.expect("128 compares + 128 success + 128 failure ops are fine");
    assert!(response.succeeded, "every s/ key has version 1");
    assert_eq!(present(t, "s/127").await.version, 2, "the success branch rewrote s/");
}

/// A 1 MiB value fits; a request over 1.5 MiB is refused, alone or as a transaction of
/// values that each fit.
pub async fn request_size_limit_is_etcds(t: &TestStore) {
    assert_eq!(
        t.store.limits().max_request_bytes,
        ETCD_MAX_REQUEST_BYTES,
        "the store applies etcd's default"
    );
    let mib = vec![b'x'; 1024 * 1024];
    t.store.put(b"big", &mib, None).await.expect("a 1 MiB value is fine");
    assert_eq!(present(t, "big").await.value.len(), mib.len(), "the 1 MiB value reads back whole");

    let before = current_revision(t).await;
    let too_big = vec![b'y'; ETCD_MAX_REQUEST_BYTES + 1024];
    let err = t.store.put(b"huge", &too_big, None).await.expect_err("a 1.5 MiB + 1 KiB value");
    assert!(matches!(err, StoreError::RequestTooLarge { .. }), "expected RequestTooLarge, got {err:?}");

    let half = vec![b'z'; 800 * 1024];
    let txn = Txn::new().and_then([TxnOp::put("h/1", half.clone()), TxnOp::put("h/2", half)]);
    let err = t.store.txn(txn).await.expect_err("a txn of two 800 KiB values");
    assert!(
        matches!(err, StoreError::RequestTooLarge { .. }),
        "expected RequestTooLarge for the txn, got {err:?}"
    );

    let guarded = Txn::new().when([Compare::absent("g")]).and_then([TxnOp::put("g", too_big)]);
    let err = t.store.txn(guarded).await.expect_err("a txn with a 1.5 MiB + 1 KiB value");
    assert!(
        matches!(err, StoreError::RequestTooLarge { .. }),
        "expected RequestTooLarge in a txn, got {err:?}"
    );

    assert_eq!(current_revision(t).await, before, "refused requests write nothing");
    assert_eq!(value_of(t, "huge").await, None, "the refused value was not written");
}

/// One branch may not write a key twice: two puts of it, or a put inside a range the
/// branch deletes. Deletes may overlap, and the two branches are checked apart.
pub async fn duplicate_keys_in_one_branch_are_refused(t: &TestStore) {
    let refused = [
        ("two puts of one key", vec![TxnOp::put("a", "1"), TxnOp::put("a", "2")]),
        ("a put and a delete of one key", vec![TxnOp::put("a", "1"), TxnOp::delete("a")]),
        (
            "a put inside a deleted prefix",
            vec![TxnOp::Delete(KeyRange::prefix("d/")), TxnOp::put("d/x", "1")],
        ),
        (
            "a deleted prefix after a put inside it",
            vec![TxnOp::put("d/x", "1"), TxnOp::Delete(KeyRange::prefix("d/"))],
        ),
    ];
    let before = current_revision(t).await;
    for (what, ops) in refused {
        let err = t.store.txn(Txn::new().and_then(ops.clone())).await.expect_err(what);
        assert!(matches!(err, StoreError::DuplicateKey { .. }), "{what}: expected DuplicateKey, got {err:?}");
        let err = t.store.txn(Txn::new().or_else(ops)).await.expect_err(what);
        assert!(
            matches!(err, StoreError::DuplicateKey { .. }),
            "{what} (failure): expected DuplicateKey, got {err:?}"
        );
    }
    assert_eq!(current_revision(t).await, before, "refused txns write nothing");

    let overlapping_deletes = Txn::new().and_then([
        TxnOp::Delete(KeyRange::prefix("d/")),
        TxnOp::delete("d/x"),
        TxnOp::get("a"),
        TxnOp::put("a", "1"),
        TxnOp::get("a"),
    ]);
    t.store.txn(overlapping_deletes).await.expect("overlapping deletes and ranges are fine");
    let both_branches = Txn::new()
        .when([Compare::absent("a")])
        .and_then([TxnOp::put("a", "2")])
        .or_else([TxnOp::put("a", "3")]);
    let response = t.store.txn(both_branches).await.expect("one key in both branches is fine");
    assert!(!response.succeeded, "a exists");
    assert_eq!(value_of(t, "a").await.as_deref(), Some("3"), "the failure branch wrote a");
}

/// An empty key is refused, as etcd refuses it.
pub async fn empty_key_is_refused(t: &TestStore) {
    let err = t.store.put(b"", b"1", None).await.expect_err("put of an empty key");
    assert!(matches!(err, StoreError::InvalidArgument(_)), "expected InvalidArgument, got {err:?}");
}
