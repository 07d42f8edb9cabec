//! Leases: grant, keep-alive, time-to-live and revoke; keys that die with their lease, by
//! revocation or by expiry (real time: these are the suite's slow tests); unknown leases.

use std::time::Duration;

use crate::error::StoreError;
use crate::types::{Compare, KeyRange, Txn, TxnOp, WatchRequest};

use super::harness::{current_revision, delete_event, next_batch, present, revoked_lease, value_of};
use super::TestStore;

/// How long an expired lease may take to delete its keys (etcd checks every 500 ms).
const EXPIRY_DEADLINE: Duration = Duration::from_secs(10);

/// A TTL below the minimum is raised to it (2 s), as etcd does.
pub async fn lease_grant_raises_ttl_to_the_minimum(t: &TestStore) {
    let grant = t.store.lease_grant(1).await.expect("grant a 1 s lease");
    assert_eq!(grant.ttl_secs, 2, "a 1 s lease is granted the 2 s minimum");
    assert!(grant.id.0 > 0, "lease ids are positive, got {}", grant.id);
    let info = t.store.lease_time_to_live(grant.id, false).await.expect("time_to_live");
    assert_eq!(info.granted_ttl_secs, 2, "time_to_live reports the granted 2 s");
    t.store.lease_revoke(grant.id).await.expect("revoke");
}

/// A lease's life: keys attach to it, time-to-live lists them, keep-alive renews it, and
/// revoking it deletes them.
pub async fn lease_grant_keep_alive_time_to_live_and_revoke(t: &TestStore) {
    let grant = t.store.lease_grant(30).await.expect("grant a 30 s lease");
    assert_eq!(grant.ttl_secs, 30, "a 30 s lease is granted 30 s");
    let other = t.store.lease_grant(30).await.expect("grant a second lease");
    assert_ne!(grant.id, other.id, "two grants give two lease ids");

    t.store.put(b"b", b"1", Some(grant.id)).await.expect("put b on the lease");
    t.store.put(b"a", b"1", Some(grant.id)).await.expect("put a on the lease");
    t.store.put(b"c", b"1", None).await.expect("put c without a lease");
    assert_eq!(present(t, "a").await.lease, Some(grant.id), "a carries its lease");
    assert_eq!(present(t, "c").await.lease, None, "c carries no lease");

    let info = t.store.lease_time_to_live(grant.id, true).await.expect("time_to_live with keys");
    assert_eq!(info.id, grant.id, "time_to_live describes the asked lease");
    assert_eq!(info.granted_ttl_secs, 30, "granted ttl is 30 s");
    assert!(
        (25..=30).contains(&info.remaining_ttl_secs),
        "a fresh 30 s lease has nearly all its ttl left, got {}",
        info.remaining_ttl_secs
    );
    assert_eq!(info.keys, vec![b"a".to_vec(), b"b".to_vec()], "the lease's keys, in key order");
    let without = t.store.lease_time_to_live(grant.id, false).await.expect("time_to_live without keys");
    assert!(without.keys.is_empty(), "keys are listed only when asked for");

    assert_eq!(
        t.store.lease_keep_alive(grant.id).await.expect("keep_alive"),
        30,
        "keep-alive renews to 30 s"
    );

    t.store.lease_revoke(grant.id).await.expect("revoke");
    assert_eq!(value_of(t, "a").await, None, "revoking the lease deleted a");
    assert_eq!(value_of(t, "b").await, None, "revoking the lease deleted b");
    assert_eq!(value_of(t, "c").await.as_deref(), Some("1"), "a key without the lease survives");
    let other_info = t.store.lease_time_to_live(other.id, false).await.expect("the other lease lives");
    assert_eq!(other_info.granted_ttl_secs, 30, "revoking one lease leaves the other");
    t.store.lease_revoke(other.id).await.expect("revoke the other lease");
}

/// Revoking a lease deletes all its keys at one revision, seen as one batch of delete
/// events on a watch.
pub async fn lease_revoke_deletes_keys_at_one_revision(t: &TestStore) {
    let lease = t.store.lease_grant(30).await.expect("grant").id;
    let puts = ["l/1", "l/2", "l/3"].map(|k| TxnOp::put_with_lease(k, "v", lease));
    let written = t.store.txn(Txn::new().and_then(puts)).await.expect("put l/1..l/3 on the lease").revision;
    let mut watch = t
        .store
        .watch(WatchRequest::new(KeyRange::prefix("l/")).from_revision(written + 1))
        .await
        .expect("watch l/");

    t.store.lease_revoke(lease).await.expect("revoke");
    assert_eq!(current_revision(t).await, written + 1, "the revocation is one revision");
    let batch = next_batch(&mut watch, "the revocation's delete events").await;
    assert_eq!(batch.revision, written + 1, "the delete events are at the revocation's revision");
    let mut events = batch.events;
    events.sort_by(|a, b| a.kv.key.cmp(&b.kv.key));
    let expected: Vec<_> = ["l/1", "l/2", "l/3"].iter().map(|k| delete_event(k, written + 1)).collect();
    assert_eq!(events, expected, "one delete event per key of the lease, in one batch");
}

/// An expired lease deletes its keys, with delete events, as a revocation does.
pub async fn lease_expiry_deletes_keys_with_events(t: &TestStore) {
    let lease = t.store.lease_grant(2).await.expect("grant a 2 s lease").id;
    let puts = ["e/1", "e/2"].map(|k| TxnOp::put_with_lease(k, "v", lease));
    let written = t.store.txn(Txn::new().and_then(puts)).await.expect("put e/1, e/2 on the lease").revision;
    let mut watch = t
        .store
        .watch(WatchRequest::new(KeyRange::prefix("e/")).from_revision(written + 1))
        .await
        .expect("watch e/");

    let deadline = tokio::time::Instant::now() + EXPIRY_DEADLINE;
    while value_of(t, "e/1").await.is_some() || value_of(t, "e/2").await.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a 2 s lease should have expired and deleted its keys within {EXPIRY_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let batch = next_batch(&mut watch, "the expiry's delete events").await;
    assert_eq!(batch.revision, written + 1, "the expiry deletes both keys at one revision");
    let mut events = batch.events;
    events.sort_by(|a, b| a.kv.key.cmp(&b.kv.key));
    let expected = vec![delete_event("e/1", written + 1), delete_event("e/2", written + 1)];
    assert_eq!(events, expected, "one delete event per key of the expired lease");
    let err = t.store.lease_time_to_live(lease, false).await.expect_err("time_to_live of an expired lease");
    assert!(matches!(err, StoreError::LeaseNotFound(_)), "expected LeaseNotFound, got {err:?}");
}

/// Keep-alives keep a lease and its keys alive past its TTL.
pub async fn lease_keep_alive_postpones_expiry(t: &TestStore) {
    let lease = t.store.lease_grant(2).await.expect("grant a 2 s lease").id;
    t.store.put(b"a", b"1", Some(lease)).await.expect("put a on the lease");
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            t.store.lease_keep_alive(lease).await.expect("keep_alive of a live lease"),
            2,
            "renewed to 2 s"
        );
    }
    assert_eq!(value_of(t, "a").await.as_deref(), Some("1"), "3 s later, the kept-alive lease still holds a");
    t.store.lease_revoke(lease).await.expect("revoke");
}

/// A put on a lease that does not exist is refused, and writes nothing.
pub async fn put_with_an_unknown_lease_is_refused(t: &TestStore) {
    let unknown = revoked_lease(t).await;
    let before = current_revision(t).await;
    let err = t.store.put(b"a", b"1", Some(unknown)).await.expect_err("put on a revoked lease");
    assert!(matches!(err, StoreError::LeaseNotFound(_)), "expected LeaseNotFound, got {err:?}");
    assert_eq!(value_of(t, "a").await, None, "the refused put wrote nothing");
    assert_eq!(current_revision(t).await, before, "the refused put did not advance the revision");
}

/// Only the branch that runs needs its leases to exist: an unknown lease in the other
/// branch is never looked at (etcd checks the ops it applies).
pub async fn unknown_lease_in_the_branch_not_taken_is_ignored(t: &TestStore) {
    let unknown = revoked_lease(t).await;
    let txn = Txn::new()
        .when([Compare::absent("a")])
        .and_then([TxnOp::put("a", "1")])
        .or_else([TxnOp::put_with_lease("z", "1", unknown)]);
    let response = t.store.txn(txn).await.expect("the success branch has no unknown lease");
    assert!(response.succeeded, "a was absent");
    assert_eq!(value_of(t, "a").await.as_deref(), Some("1"), "the success branch ran");
}

/// Keep-alive, revoke and time-to-live of a lease that does not exist are refused.
pub async fn unknown_lease_operations_are_refused(t: &TestStore) {
    let unknown = revoked_lease(t).await;
    let keep_alive = t.store.lease_keep_alive(unknown).await.expect_err("keep_alive of a revoked lease");
    assert!(
        matches!(keep_alive, StoreError::LeaseNotFound(_)),
        "keep_alive: expected LeaseNotFound, got {keep_alive:?}"
    );
    let revoke = t.store.lease_revoke(unknown).await.expect_err("revoke of a revoked lease");
    assert!(matches!(revoke, StoreError::LeaseNotFound(_)), "revoke: expected LeaseNotFound, got {revoke:?}");
    let ttl = t.store.lease_time_to_live(unknown, true).await.expect_err("time_to_live of a revoked lease");
    assert!(matches!(ttl, StoreError::LeaseNotFound(_)), "time_to_live: expected LeaseNotFound, got {ttl:?}");
}

/// A put without a lease detaches the key from its old lease: the key outlives it.
pub async fn overwriting_a_key_without_a_lease_detaches_it(t: &TestStore) {
    let lease = t.store.lease_grant(30).await.expect("grant").id;
    t.store.put(b"a", b"1", Some(lease)).await.expect("put a on the lease");
    t.store.put(b"a", b"2", None).await.expect("put a without a lease");
    assert_eq!(present(t, "a").await.lease, None, "the overwrite carries no lease");
    let info = t.store.lease_time_to_live(lease, true).await.expect("time_to_live");
    assert!(info.keys.is_empty(), "the lease lost the key, still lists {:?}", info.keys);
    t.store.lease_revoke(lease).await.expect("revoke");
    assert_eq!(value_of(t, "a").await.as_deref(), Some("2"), "the detached key outlives its old lease");
}

/// A put with another lease moves the key to it: the old lease no longer owns it.
pub async fn putting_a_key_with_another_lease_moves_it(t: &TestStore) {
    let first = t.store.lease_grant(30).await.expect("grant the first lease").id;
    let second = t.store.lease_grant(30).await.expect("grant the second lease").id;
    t.store.put(b"a", b"1", Some(first)).await.expect("put a on the first lease");
    t.store.put(b"a", b"2", Some(second)).await.expect("put a on the second lease");
    assert_eq!(present(t, "a").await.lease, Some(second), "a carries the second lease");
    let info = t.store.lease_time_to_live(second, true).await.expect("time_to_live of the second");
    assert_eq!(info.keys, vec![b"a".to_vec()], "the second lease owns a");
    t.store.lease_revoke(first).await.expect("revoke the first lease");
    assert_eq!(value_of(t, "a").await.as_deref(), Some("2"), "revoking the old lease leaves a");
    t.store.lease_revoke(second).await.expect("revoke the second lease");
    assert_eq!(value_of(t, "a").await, None, "revoking the new lease deletes a");
}
