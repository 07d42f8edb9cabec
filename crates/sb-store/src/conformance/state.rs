//! What nodes build on the port, held to the same suite: watch-fed views, membership and
//! backup/restore. They use only the port, so passing here on both adapters is what
//! "tested on both adapters" means.

use std::time::Duration;

use crate::backup::{backup_to_file, restore_from_file};
use crate::error::StoreError;
use crate::membership::{Membership, NodeRecord};
use crate::paging::range_all;
use crate::types::{KeyRange, Txn, TxnOp};
use crate::view::{RawMap, View, ViewChange};

use super::TestStore;

const WAIT: Duration = Duration::from_secs(10);

fn raw_keys(view: &View<RawMap>) -> Vec<String> {
    view.snapshot().entries.keys().map(|k| String::from_utf8_lossy(k).into_owned()).collect()
}

/// A view loads what exists, then follows puts and deletes in its range only, and
/// `wait_for` gives read-your-writes.
pub async fn view_loads_then_follows_its_range(t: &TestStore) {
    t.store.put(b"svc/a", b"1", None).await.expect("put svc/a");
    t.store.put(b"other/x", b"1", None).await.expect("put other/x");
    let view =
        View::<RawMap>::start(t.store.clone(), KeyRange::prefix("svc/"), "test").await.expect("view starts");
    assert_eq!(raw_keys(&view), ["svc/a"], "the initial load holds only the view's range");

    let mut changes = view.subscribe();
    let rev = t.store.put(b"svc/b", b"2", None).await.expect("put svc/b");
    view.wait_for(rev, WAIT).await.expect("the view applies its own range's write");
    assert_eq!(raw_keys(&view), ["svc/a", "svc/b"]);
    let applied = view.snapshot().entries.get(b"svc/b".as_slice()).cloned().expect("svc/b in view");
    assert_eq!((applied.value.as_slice(), applied.mod_revision), (b"2".as_slice(), rev));
    match tokio::time::timeout(WAIT, changes.recv()).await {
        Ok(Ok(ViewChange::Applied { revision, events })) => {
            assert_eq!(revision, rev);
            assert_eq!(events.len(), 1, "one event for one put");
        }
        other => panic!("expected an Applied change at {rev}, got {other:?}"),
    }

    let deleted = t.store.delete(KeyRange::key("svc/a")).await.expect("delete svc/a");
    view.wait_for(deleted.revision, WAIT).await.expect("the view applies the delete");
    assert_eq!(raw_keys(&view), ["svc/b"]);
}

/// `wait_for` returns for a revision that touched no key of the view (a progress
/// notification confirms it), so a writer never hangs on an unrelated commit.
pub async fn view_wait_for_a_revision_outside_its_range(t: &TestStore) {
    let view =
        View::<RawMap>::start(t.store.clone(), KeyRange::prefix("svc/"), "test").await.expect("view starts");
    let rev = t.store.put(b"elsewhere", b"1", None).await.expect("put outside the view");
    view.wait_for(rev, WAIT).await.expect("wait_for completes through a progress notification");
    assert!(view.revision() >= rev, "the view's revision reaches {rev}");
    assert!(raw_keys(&view).is_empty(), "nothing outside the range is applied");
}

/// `wait_for` a revision that does not exist yet times out with a typed error.
pub async fn view_wait_for_times_out_with_an_error(t: &TestStore) {
    let view =
        View::<RawMap>::start(t.store.clone(), KeyRange::prefix("svc/"), "test").await.expect("view starts");
    let future = t.store.current_revision().await.expect("current revision") + 1000;
    let err = view.wait_for(future, Duration::from_millis(300)).await.expect_err("no such revision yet");
    assert!(err.to_string().contains(&future.to_string()), "the error names the awaited revision: {err}");
}

/// A view stays correct across a compaction of the history it already applied.
pub async fn view_survives_compaction(t: &TestStore) {
    let view =
        View::<RawMap>::start(t.store.clone(), KeyRange::prefix("svc/"), "test").await.expect("view starts");
    let mut last = 0;
    for i in 0..5 {
        last = t.store.put(format!("svc/{i}").as_bytes(), b"v", None).await.expect("put");
    }
    view.wait_for(last, WAIT).await.expect("applied");
    t.store.compact(last).await.expect("compact at the last write");
    let rev = t.store.put(b"svc/after", b"v", None).await.expect("put after compaction");
    view.wait_for(rev, WAIT).await.expect("the view follows after compaction");
    assert_eq!(raw_keys(&view).len(), 6);
}

/// A node that stops without leaving disappears from every member's view after its lease
/// TTL; one that leaves disappears at once.
pub async fn membership_lists_live_nodes_and_drops_stopped_ones(t: &TestStore) {
    let record = |id: &str| NodeRecord {
        id: id.into(),
        addr: format!("127.0.0.1:{}", 8000 + id.len()),
        roles: vec!["api".into()],
        started_at_ms: 1,
        release: "test".into(),
    };
    let a = Membership::join(t.store.clone(), record("node-a"), 2).await.expect("node-a joins");
    let b = Membership::join(t.store.clone(), record("node-b"), 2).await.expect("node-b joins");
    let c = Membership::join(t.store.clone(), record("node-c"), 2).await.expect("node-c joins");
    let ids = |m: &Membership| m.live_nodes().into_iter().map(|n| n.id).collect::<Vec<_>>();
    wait_until(|| ids(&a).len() == 3, "node-a sees all three nodes").await;
    assert_eq!(a.live_nodes()[1], record("node-b"), "a member's record is what it registered");

    // Kept alive well past its TTL.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(ids(&a), ["node-a", "node-b", "node-c"], "keep-alive holds every node past one TTL");

    c.leave().await.expect("node-c leaves");
    wait_until(|| ids(&a) == ["node-a", "node-b"], "a node that leaves disappears at once").await;

    drop(b); // a crash: no revoke, the lease runs out
    wait_until(|| ids(&a) == ["node-a"], "a stopped node disappears after its lease TTL").await;
    a.leave().await.expect("node-a leaves");
}

async fn wait_until(mut condition: impl FnMut() -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Backup takes every unleased key at one revision; restore into an empty store of the
/// same adapter gives back the same keys and values with renumbered revisions.
pub async fn backup_restore_roundtrip(t: &TestStore) {
    let lease = t.store.lease_grant(30).await.expect("lease grant");
    let mut ops = Vec::new();
    for i in 0..150 {
        ops.push(TxnOp::put(format!("cfg/{i:03}"), vec![i as u8; 100 + i]));
        if ops.len() == 50 {
            t.store.txn(Txn::new().and_then(std::mem::take(&mut ops))).await.expect("txn of 50 puts");
        }
    }
    t.store.put(b"bin", &[0, 159, 146, 150, 255], None).await.expect("binary value");
    t.store.put(b"nodes/ephemeral", b"x", Some(lease.id)).await.expect("leased put");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("backup.sb");
    let summary = backup_to_file(t.store.as_ref(), &file).await.expect("backup");
    assert_eq!((summary.keys, summary.skipped_leased), (151, 1), "leased keys are left out");

    let (before, _) =
        range_all(t.store.as_ref(), KeyRange::prefix(Vec::new()), None).await.expect("read all");
    let err = restore_from_file(t.store.as_ref(), &file).await.expect_err("restore into a non-empty store");
    assert!(matches!(err, StoreError::NotEmpty(_)), "restore refuses a store with keys: {err}");

    t.store.delete(KeyRange::prefix(Vec::new())).await.expect("empty the store");
    let restored = restore_from_file(t.store.as_ref(), &file).await.expect("restore");
    assert_eq!(restored.keys, 151);
    let (after, _) = range_all(t.store.as_ref(), KeyRange::prefix(Vec::new()), None).await.expect("read all");
    let unleased = |kvs: &[crate::types::KeyValue]| {
        kvs.iter()
            .filter(|kv| kv.lease.is_none())
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(unleased(&after), unleased(&before), "same keys and values after the round trip");
    assert!(after.iter().all(|kv| kv.version == 1), "the target numbers versions afresh");
    // Revoked now, so its expiry never lands in a later test on a shared etcd.
    let _ = t.store.lease_revoke(lease.id).await;
}

/// A damaged backup restores nothing.
pub async fn restore_refuses_a_damaged_file_and_writes_nothing(t: &TestStore) {
    t.store.put(b"k1", b"v1", None).await.expect("put");
    t.store.put(b"k2", b"v2", None).await.expect("put");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("backup.sb");
    backup_to_file(t.store.as_ref(), &file).await.expect("backup");
    t.store.delete(KeyRange::prefix(Vec::new())).await.expect("empty the store");
    let bytes = std::fs::read(&file).expect("read backup");

    let truncated = dir.path().join("truncated.sb");
    std::fs::write(&truncated, &bytes[..bytes.len() - 10]).expect("write");
    let err = restore_from_file(t.store.as_ref(), &truncated).await.expect_err("truncated file");
    assert!(matches!(&err, StoreError::Corrupt(m) if m.contains("truncated")), "{err}");

    let mut flipped = bytes.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x01;
    let corrupted = dir.path().join("corrupted.sb");
    std::fs::write(&corrupted, &flipped).expect("write");
    let err = restore_from_file(t.store.as_ref(), &corrupted).await.expect_err("corrupted file");
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");

    let (kvs, _) = range_all(t.store.as_ref(), KeyRange::prefix(Vec::new()), None).await.expect("read all");
    assert!(kvs.is_empty(), "a refused restore writes nothing");
}
