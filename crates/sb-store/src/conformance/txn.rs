//! Transactions: every compare target with every operator, both branches with their
//! per-op responses, and all-or-nothing application.

use crate::error::StoreError;
use crate::types::{
    Compare, CompareOp, CompareTarget, KeyRange, LeaseId, OpResponse, RangeRequest, Revision, Txn, TxnOp,
};

use super::harness::{current_revision, keys_of, present, revoked_lease, value_of};
use super::TestStore;

use CompareOp::{Equal, Greater, Less, NotEqual};

/// Whether a transaction guarded by `compare` alone takes its success branch.
async fn holds(t: &TestStore, compare: Compare) -> bool {
    let what = format!("{compare:?}");
    let response = t.store.txn(Txn::new().when([compare])).await;
    response.unwrap_or_else(|e| panic!("txn with compare {what} failed: {e}")).succeeded
}

/// Checks each `(op, target, expected)` case on `key`.
async fn check_cases(t: &TestStore, key: &str, cases: &[(CompareOp, CompareTarget, bool)]) {
    for (op, target, expected) in cases {
        let compare = Compare::new(key, *op, target.clone());
        assert_eq!(
            holds(t, compare).await,
            *expected,
            "on key {key:?}: {target:?} {op:?} should be {expected}"
        );
    }
}

/// A value compare orders values as bytes.
pub async fn compare_value(t: &TestStore) {
    t.store.put(b"a", b"m", None).await.expect("put a=m");
    let v = |s: &str| CompareTarget::Value(s.as_bytes().to_vec());
    check_cases(
        t,
        "a",
        &[
            (Equal, v("m"), true),
            (Equal, v("x"), false),
            (NotEqual, v("x"), true),
            (NotEqual, v("m"), false),
            (Greater, v("a"), true),
            (Greater, v("m"), false),
            (Greater, v("z"), false),
            (Less, v("z"), true),
            (Less, v("mm"), true),
            (Less, v("m"), false),
            (Less, v("a"), false),
        ],
    )
    .await;
}

/// Comparing the value of an absent key is false with every operator, as in etcd.
pub async fn compare_value_of_an_absent_key_is_always_false(t: &TestStore) {
    t.store.put(b"other", b"x", None).await.expect("put other");
    for op in [Equal, NotEqual, Greater, Less] {
        for value in ["", "x"] {
            let compare = Compare::value("nope", op, value);
            assert!(!holds(t, compare).await, "value {op:?} {value:?} on an absent key should be false");
        }
    }
}

/// A version compare; an absent key has version 0.
pub async fn compare_version(t: &TestStore) {
    t.store.put(b"a", b"1", None).await.expect("put a");
    t.store.put(b"a", b"2", None).await.expect("put a again");
    let v = CompareTarget::Version;
    check_cases(
        t,
        "a",
        &[
            (Equal, v(2), true),
            (Equal, v(1), false),
            (NotEqual, v(1), true),
            (NotEqual, v(2), false),
            (Greater, v(1), true),
            (Greater, v(2), false),
            (Less, v(3), true),
            (Less, v(2), false),
        ],
    )
    .await;
    check_cases(t, "absent", &[(Equal, v(0), true), (Greater, v(0), false), (Less, v(1), true)]).await;
}

/// A create-revision compare; an absent key has create revision 0 (`Compare::absent`).
pub async fn compare_create_revision(t: &TestStore) {
    let created = t.store.put(b"a", b"1", None).await.expect("put a");
    t.store.put(b"a", b"2", None).await.expect("put a again");
    let c = CompareTarget::CreateRevision;
    check_cases(
        t,
        "a",
        &[
            (Equal, c(created), true),
            (Equal, c(created + 1), false),
            (NotEqual, c(created + 1), true),
            (NotEqual, c(created), false),
            (Greater, c(created - 1), true),
            (Greater, c(created), false),
            (Less, c(created + 1), true),
            (Less, c(created), false),
        ],
    )
    .await;
    check_cases(t, "absent", &[(Equal, c(0), true), (Greater, c(0), false)]).await;
    assert!(holds(t, Compare::absent("absent")).await, "Compare::absent holds for an absent key");
    assert!(!holds(t, Compare::absent("a")).await, "Compare::absent fails for a present key");
}

/// A mod-revision compare; an absent key has mod revision 0.
pub async fn compare_mod_revision(t: &TestStore) {
    let r1 = t.store.put(b"a", b"1", None).await.expect("put a");
    let r2 = t.store.put(b"a", b"2", None).await.expect("put a again");
    let m = CompareTarget::ModRevision;
    check_cases(
        t,
        "a",
        &[
            (Equal, m(r2), true),
            (Equal, m(r1), false),
            (NotEqual, m(r1), true),
            (NotEqual, m(r2), false),
            (Greater, m(r1), true),
            (Greater, m(r2), false),
            (Less, m(r2 + 1), true),
            (Less, m(r2), false),
        ],
    )
    .await;
    check_cases(t, "absent", &[(Equal, m(0), true), (NotEqual, m(0), false)]).await;
}

/// A lease compare: a key's lease id, 0 (`None`) for no lease or an absent key, ordered as
/// integers.
pub async fn compare_lease(t: &TestStore) {
    let lease = t.store.lease_grant(30).await.expect("grant a lease").id;
    t.store.put(b"leased", b"1", Some(lease)).await.expect("put leased");
    t.store.put(b"plain", b"1", None).await.expect("put plain");
    let l = CompareTarget::Lease;
    let other = LeaseId(lease.0 + 1);
    check_cases(
        t,
        "leased",
        &[
            (Equal, l(Some(lease)), true),
            (Equal, l(Some(other)), false),
            (Equal, l(None), false),
            (NotEqual, l(None), true),
            (NotEqual, l(Some(lease)), false),
            (Greater, l(None), true),
            (Greater, l(Some(lease)), false),
            (Less, l(Some(other)), true),
            (Less, l(None), false),
        ],
    )
    .await;
    check_cases(
        t,
        "plain",
        &[(Equal, l(None), true), (Equal, l(Some(lease)), false), (Less, l(Some(lease)), true)],
    )
    .await;
    check_cases(t, "absent", &[(Equal, l(None), true), (NotEqual, l(Some(lease)), true)]).await;
    t.store.lease_revoke(lease).await.expect("revoke the lease");
}

/// When every compare holds the success branch runs, and each op answers in order: a put,
/// a delete with its count, a range with its keys.
pub async fn txn_success_branch_answers_each_op(t: &TestStore) {
    for key in ["a", "b", "d/1", "d/2", "d/3"] {
        t.store.put(key.as_bytes(), b"1", None).await.expect("put");
    }
    let a = present(t, "a").await;
    let txn = Txn::new()
        .when([Compare::value("a", Equal, "1"), Compare::version("b", Equal, 1)])
        .and_then([
            TxnOp::put("c", "3"),
            TxnOp::delete("b"),
            TxnOp::get("a"),
            TxnOp::delete("nope"),
            TxnOp::Delete(KeyRange::prefix("d/")),
        ])
        .or_else([TxnOp::put("f", "1")]);
    let response = t.store.txn(txn).await.expect("txn");
    assert!(response.succeeded, "both compares hold, so the success branch runs");
    assert_eq!(response.responses.len(), 5, "one response per op of the branch that ran");
    assert_eq!(response.responses[0], OpResponse::Put, "a put answers Put");
    assert_eq!(response.responses[1], OpResponse::Delete { deleted: 1 }, "deleting b deletes 1 key");
    match &response.responses[2] {
        OpResponse::Range(range) => {
            assert_eq!(range.kvs, vec![a], "the range answers a with its metadata");
            assert_eq!(range.count, 1, "the range counts 1 key");
        }
        other => panic!("expected a Range response for the get, got {other:?}"),
    }
    assert_eq!(response.responses[3], OpResponse::Delete { deleted: 0 }, "deleting an absent key deletes 0");
    assert_eq!(response.responses[4], OpResponse::Delete { deleted: 3 }, "deleting prefix d/ deletes 3");

    assert_eq!(value_of(t, "c").await.as_deref(), Some("3"), "the success put was applied");
    assert_eq!(present(t, "c").await.mod_revision, response.revision, "at the txn's revision");
    assert_eq!(value_of(t, "b").await, None, "the success delete was applied");
    assert_eq!(value_of(t, "f").await, None, "the failure branch did not run");
    let d = t.store.range(RangeRequest::prefix("d/")).await.expect("range d/");
    assert_eq!(d.count, 0, "the prefix delete removed d/, left {:?}", keys_of(&d.kvs));
}

/// When any compare fails the failure branch runs instead, with its own responses.
pub async fn txn_failure_branch_runs_when_a_compare_fails(t: &TestStore) {
    t.store.put(b"a", b"1", None).await.expect("put a");
    let b = t.store.put(b"b", b"1", None).await.expect("put b");
    let txn = Txn::new()
        .when([Compare::value("a", Equal, "1"), Compare::version("b", Equal, 5)])
        .and_then([TxnOp::put("s", "1")])
        .or_else([TxnOp::delete("a"), TxnOp::get("b"), TxnOp::put("f", "1")]);
    let response = t.store.txn(txn).await.expect("txn");
    assert!(!response.succeeded, "one compare fails, so the failure branch runs");
    assert_eq!(response.responses.len(), 3, "one response per op of the failure branch");
    assert_eq!(response.responses[0], OpResponse::Delete { deleted: 1 }, "deleting a deletes 1 key");
    match &response.responses[1] {
        OpResponse::Range(range) => {
            assert_eq!(keys_of(&range.kvs), ["b"], "the range answers b");
            assert_eq!(range.kvs[0].mod_revision, b, "with its metadata");
        }
        other => panic!("expected a Range response for the get, got {other:?}"),
    }
    assert_eq!(response.responses[2], OpResponse::Put, "a put answers Put");
    assert_eq!(value_of(t, "a").await, None, "the failure delete was applied");
    assert_eq!(value_of(t, "f").await.as_deref(), Some("1"), "the failure put was applied");
    assert_eq!(value_of(t, "s").await, None, "the success branch did not run");
}

/// Ops of one branch run in order: a range sees the puts and deletes before it.
pub async fn txn_range_sees_earlier_ops_of_its_branch(t: &TestStore) {
    let created = t.store.put(b"a", b"old", None).await.expect("put a");
    t.store.put(b"b", b"1", None).await.expect("put b");
    let txn =
        Txn::new().and_then([TxnOp::put("a", "new"), TxnOp::get("a"), TxnOp::delete("b"), TxnOp::get("b")]);
    let response = t.store.txn(txn).await.expect("txn");
    let range = |i: usize| match &response.responses[i] {
        OpResponse::Range(range) => range.clone(),
        other => panic!("expected a Range response at {i}, got {other:?}"),
    };
    let a = range(1).kvs.first().cloned().expect("the range after the put sees a");
    assert_eq!(a.value, b"new", "the range sees the put before it");
    assert_eq!(
        (a.create_revision, a.mod_revision, a.version),
        (created, response.revision, 2),
        "with the metadata of the txn's own write"
    );
    assert!(range(3).kvs.is_empty(), "the range after the delete does not see b");
}

/// A transaction that fails applies nothing: an op that cannot run (a put on an unknown
/// lease) undoes the ops before it, and the revision does not move.
pub async fn txn_is_all_or_nothing(t: &TestStore) {
    let before: Revision = t.store.put(b"a", b"1", None).await.expect("put a");
    let unknown = revoked_lease(t).await;
    let txn = Txn::new().and_then([
        TxnOp::put("a", "2"),
        TxnOp::put("b", "1"),
        TxnOp::delete("a-missing"),
        TxnOp::put_with_lease("z", "1", unknown),
    ]);
    let err = t.store.txn(txn).await.expect_err("a txn with a put on a revoked lease");
    assert!(matches!(err, StoreError::LeaseNotFound(_)), "expected LeaseNotFound, got {err:?}");
    assert_eq!(value_of(t, "a").await.as_deref(), Some("1"), "the earlier put to a was not applied");
    assert_eq!(value_of(t, "b").await, None, "the earlier put of b was not applied");
    assert_eq!(value_of(t, "z").await, None, "the leased put was not applied");
    assert_eq!(current_revision(t).await, before, "a failed txn does not advance the revision");
}

/// The same key may be written in both branches: only one of them runs.
pub async fn txn_may_write_one_key_in_both_branches(t: &TestStore) {
    let txn = Txn::new()
        .when([Compare::absent("a")])
        .and_then([TxnOp::put("a", "created")])
        .or_else([TxnOp::put("a", "updated")]);
    let first = t.store.txn(txn.clone()).await.expect("txn creating a");
    assert!(first.succeeded, "a was absent");
    assert_eq!(value_of(t, "a").await.as_deref(), Some("created"), "the success branch wrote a");
    let second = t.store.txn(txn).await.expect("txn updating a");
    assert!(!second.succeeded, "a is present now");
    assert_eq!(value_of(t, "a").await.as_deref(), Some("updated"), "the failure branch wrote a");
}
