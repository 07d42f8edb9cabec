//! Concurrent writers: compare-and-swap loses no update, and transactions committed
//! together (the embedded adapter's group commit) keep their own outcomes.

use std::collections::BTreeSet;

use crate::error::StoreError;
use crate::types::{Compare, CompareOp, KeyRange, RangeRequest, Revision, Txn, TxnOp};

use super::harness::{current_revision, keys_of, present, revoked_lease};
use super::TestStore;

const WRITERS: usize = 8;
const INCREMENTS_PER_WRITER: usize = 25;
/// A writer that retries this often without success is starved: fail rather than spin.
const MAX_ATTEMPTS_PER_INCREMENT: usize = 1_000;

/// Writers that read a counter and write it back guarded by its mod revision, retrying on
/// conflict, lose no increment.
pub async fn cas_increments_lose_no_update(t: &TestStore) {
    t.store.put(b"counter", b"0", None).await.expect("put counter=0");
    let writers = (0..WRITERS).map(|_| {
        let store = t.store.clone();
        tokio::spawn(async move {
            let mut revisions = Vec::with_capacity(INCREMENTS_PER_WRITER);
            for _ in 0..INCREMENTS_PER_WRITER {
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    assert!(attempts <= MAX_ATTEMPTS_PER_INCREMENT, "an increment kept conflicting");
                    let kv = store.get(b"counter").await.expect("get counter").expect("counter exists");
                    let n: u64 = String::from_utf8_lossy(&kv.value).parse().expect("counter is a number");
                    let txn = Txn::new()
                        .when([Compare::mod_revision("counter", CompareOp::Equal, kv.mod_revision)])
                        .and_then([TxnOp::put("counter", (n + 1).to_string())]);
                    let response = store.txn(txn).await.expect("cas txn");
                    if response.succeeded {
                        revisions.push(response.revision);
                        break;
                    }
                }
            }
            revisions
        })
    });
    let mut revisions: Vec<Revision> = Vec::new();
    for writer in futures::future::join_all(writers).await {
        revisions.extend(writer.expect("a writer task panicked"));
    }
    let total = WRITERS * INCREMENTS_PER_WRITER;
    let counter = present(t, "counter").await;
    assert_eq!(counter.value, total.to_string().as_bytes(), "every one of {total} increments landed");
    assert_eq!(counter.version, total as i64 + 1, "one put per increment plus the initial put");
    let distinct: BTreeSet<Revision> = revisions.iter().copied().collect();
    assert_eq!(distinct.len(), total, "every successful swap has its own revision");
}

/// What one of the concurrent transactions does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Its compare fails and its failure branch is empty: it writes nothing.
    FailsEmpty,
    /// Its compare fails and its failure branch writes `f/{i}`.
    FailsWriting,
    /// Its compare holds and it writes `k/{i}`.
    Commits,
    /// Its compare holds but its put names a revoked lease: it errs.
    Errs,
}

const KINDS: [Kind; 4] = [Kind::FailsEmpty, Kind::FailsWriting, Kind::Commits, Kind::Errs];
const CONCURRENT_TXNS: usize = 48;

/// Many transactions submitted at once each keep their own outcome: a failing compare or
/// an error affects no other, and each writing one commits at its own revision.
pub async fn concurrent_txns_fail_alone(t: &TestStore) {
    t.store.put(b"gate", b"open", None).await.expect("put gate");
    let unknown = revoked_lease(t).await;
    let start = current_revision(t).await;

    let txns = (0..CONCURRENT_TXNS).map(|i| {
        let kind = KINDS[i % KINDS.len()];
        let txn = match kind {
            Kind::FailsEmpty => Txn::new()
                .when([Compare::value("gate", CompareOp::Equal, "closed")])
                .and_then([TxnOp::put(format!("k/{i:02}"), "x")]),
            Kind::FailsWriting => Txn::new()
                .when([Compare::value("gate", CompareOp::Equal, "closed")])
                .and_then([TxnOp::put(format!("k/{i:02}"), "x")])
                .or_else([TxnOp::put(format!("f/{i:02}"), "x")]),
            Kind::Commits => Txn::new()
                .when([Compare::value("gate", CompareOp::Equal, "open")])
                .and_then([TxnOp::put(format!("k/{i:02}"), "x")]),
            Kind::Errs => Txn::new()
                .when([Compare::value("gate", CompareOp::Equal, "open")])
                .and_then([TxnOp::put_with_lease(format!("k/{i:02}"), "x", unknown)]),
        };
        let store = t.store.clone();
        tokio::spawn(async move { (i, kind, store.txn(txn).await) })
    });
    let mut commit_revisions = BTreeSet::new();
    let (mut expected_k, mut expected_f) = (Vec::new(), Vec::new());
    for joined in futures::future::join_all(txns).await {
        let (i, kind, result) = joined.expect("a txn task panicked");
        match (kind, result) {
            (Kind::FailsEmpty, Ok(r)) => {
                assert!(!r.succeeded, "txn {i} compares gate == closed and must fail");
                assert!(r.revision >= start, "txn {i} answers a revision at or after the start");
            }
            (Kind::FailsWriting, Ok(r)) => {
                assert!(!r.succeeded, "txn {i} compares gate == closed and must fail");
                assert!(commit_revisions.insert(r.revision), "txn {i} shares revision {}", r.revision);
                expected_f.push(format!("f/{i:02}"));
            }
            (Kind::Commits, Ok(r)) => {
                assert!(r.succeeded, "txn {i} compares gate == open and must succeed");
                assert!(commit_revisions.insert(r.revision), "txn {i} shares revision {}", r.revision);
                expected_k.push(format!("k/{i:02}"));
            }
            (Kind::Errs, Err(e)) => {
                assert!(
                    matches!(e, StoreError::LeaseNotFound(_)),
                    "txn {i}: expected LeaseNotFound, got {e:?}"
                )
            }
            (kind, result) => panic!("txn {i} ({kind:?}) answered {result:?}"),
        }
    }
    let writers = (expected_k.len() + expected_f.len()) as Revision;
    let expected_revisions: BTreeSet<Revision> = (start + 1..=start + writers).collect();
    assert_eq!(commit_revisions, expected_revisions, "the writing txns took consecutive revisions, one each");
    assert_eq!(current_revision(t).await, start + writers, "only writing txns advanced the revision");

    expected_k.sort();
    expected_f.sort();
    let k = t.store.range(RangeRequest::new(KeyRange::prefix("k/"))).await.expect("range k/");
    assert_eq!(keys_of(&k.kvs), expected_k, "exactly the committed success branches wrote k/");
    let f = t.store.range(RangeRequest::prefix("f/")).await.expect("range f/");
    assert_eq!(keys_of(&f.kvs), expected_f, "exactly the failure branches wrote f/");
}

const RACERS: usize = 16;

/// Of many transactions racing to create one key only if it is absent, exactly one wins:
/// transactions committed together see each other's writes in order.
pub async fn concurrent_create_if_absent_has_one_winner(t: &TestStore) {
    let racers = (0..RACERS).map(|i| {
        let store = t.store.clone();
        let txn = Txn::new()
            .when([Compare::absent("owner")])
            .and_then([TxnOp::put("owner", i.to_string())])
            .or_else([TxnOp::get("owner")]);
        tokio::spawn(async move { (i, store.txn(txn).await.expect("create-if-absent txn")) })
    });
    let mut winners = Vec::new();
    for joined in futures::future::join_all(racers).await {
        let (i, response) = joined.expect("a racer task panicked");
        if response.succeeded {
            winners.push(i);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one racer creates the key, winners were {winners:?}");
    let owner = present(t, "owner").await;
    assert_eq!(owner.value, winners[0].to_string().as_bytes(), "the key holds the winner's value");
    assert_eq!(owner.version, 1, "the key was written once");
}
