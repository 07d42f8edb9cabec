use std::sync::Arc;
use std::time::Duration;

use sb_store::{Compare, SharedStore, Txn, TxnOp};
use sb_store_embedded::{EmbeddedOptions, EmbeddedStore};

use super::*;

async fn store() -> (tempfile::TempDir, SharedStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(EmbeddedOptions::new(dir.path().join("store.redb"))).await.unwrap();
    (dir, store)
}

fn alice() -> Audit {
    Audit::new("alice", "10.1.2.3", "curl/8", "req-1")
}

fn all(limit: usize) -> AuditQuery {
    AuditQuery { limit, ..AuditQuery::default() }
}

#[tokio::test]
async fn a_record_commits_with_its_change_and_reports_the_change_revision() {
    let (_dir, store) = store().await;
    let txn = Txn::new().and_then([
        TxnOp::put("kv/a", "secret-plaintext"),
        alice().op("kv.put", "kv/a", None, Some(b"secret-plaintext")),
    ]);
    let revision = store.txn(txn).await.unwrap().revision;
    // A failed compare writes neither the change nor its record.
    let failed = Txn::new()
        .when([Compare::absent("kv/a")])
        .and_then([TxnOp::put("kv/a", "x"), alice().op("kv.put", "kv/a", None, Some(b"x"))]);
    assert!(!store.txn(failed).await.unwrap().succeeded);

    let page = query(store.as_ref(), &all(10)).await.unwrap();
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.next, None);
    let entry = &page.records[0];
    assert_eq!(entry.revision, revision);
    assert_eq!(entry.record.actor, "alice");
    assert_eq!(entry.record.source_ip, "10.1.2.3");
    assert_eq!(entry.record.user_agent, "curl/8");
    assert_eq!(entry.record.request_id, "req-1");
    assert_eq!(entry.record.before, None);
    assert_eq!(entry.record.after.as_deref(), Some(digest(b"secret-plaintext").as_str()));
    let raw = store.range(sb_store::RangeRequest::prefix(AUDIT_PREFIX)).await.unwrap();
    let stored = String::from_utf8(raw.kvs[0].value.clone()).unwrap();
    assert!(!stored.contains("secret-plaintext"), "{stored}");
    assert!(stored.contains("\"v\":1"), "{stored}");
}

#[tokio::test]
async fn queries_filter_and_page_in_time_order() {
    let (_dir, store) = store().await;
    let bob = Audit::new("bob", "", "", "");
    for i in 0..7 {
        let who = if i % 2 == 0 { alice() } else { bob.clone() };
        let action = if i < 4 { "config.publish" } else { "kv.delete" };
        let resource = format!("{}/{i}", if i < 4 { "config/public" } else { "kv" });
        store.txn(Txn::new().and_then([who.op(action, resource, Some(b"b"), None)])).await.unwrap();
    }
    let first = query(store.as_ref(), &all(3)).await.unwrap();
    let resources: Vec<_> = first.records.iter().map(|e| e.record.resource.as_str()).collect();
    assert_eq!(resources, ["config/public/0", "config/public/1", "config/public/2"]);
    let revisions: Vec<_> = first.records.iter().map(|e| e.revision).collect();
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{revisions:?}");
    let second = query(store.as_ref(), &AuditQuery { after: first.next.clone(), ..all(3) }).await.unwrap();
    let resources: Vec<_> = second.records.iter().map(|e| e.record.resource.as_str()).collect();
    assert_eq!(resources, ["config/public/3", "kv/4", "kv/5"]);
    let third = query(store.as_ref(), &AuditQuery { after: second.next.clone(), ..all(3) }).await.unwrap();
    assert_eq!(third.records.len(), 1);
    assert_eq!(third.next, None);

    let by_alice = AuditQuery { actor: Some("alice".into()), ..all(100) };
    assert_eq!(query(store.as_ref(), &by_alice).await.unwrap().records.len(), 4);
    let deletes = AuditQuery { action: Some("kv.delete".into()), ..all(100) };
    assert_eq!(query(store.as_ref(), &deletes).await.unwrap().records.len(), 3);
    let configs =
        AuditQuery { resource_prefix: Some("config/".into()), actor: Some("bob".into()), ..all(100) };
    assert_eq!(query(store.as_ref(), &configs).await.unwrap().records.len(), 2);

    let now = now_ms();
    let future = AuditQuery { from_ms: Some(now + 60_000), ..all(100) };
    assert!(query(store.as_ref(), &future).await.unwrap().records.is_empty());
    let past = AuditQuery { from_ms: Some(now - 60_000), to_ms: Some(now + 1), ..all(100) };
    assert_eq!(query(store.as_ref(), &past).await.unwrap().records.len(), 7);
}

#[tokio::test]
async fn a_bad_query_is_refused_naming_the_field() {
    let (_dir, store) = store().await;
    let inverted = AuditQuery { from_ms: Some(10), to_ms: Some(5), ..all(10) };
    match query(store.as_ref(), &inverted).await {
        Err(AuditError::InvalidArgument { field: "from", message }) => {
            assert!(message.contains("after"), "{message}")
        }
        other => panic!("expected a range error, got {other:?}"),
    }
    assert!(matches!(
        query(store.as_ref(), &all(0)).await,
        Err(AuditError::InvalidArgument { field: "limit", .. })
    ));
    let token = AuditQuery { after: Some("../x".into()), ..all(5) };
    assert!(matches!(
        query(store.as_ref(), &token).await,
        Err(AuditError::InvalidArgument { field: "after", .. })
    ));
}

#[tokio::test]
async fn retention_deletes_by_age_then_by_count_in_batches() {
    let (_dir, store) = store().await;
    let day_ms = 24 * 3600 * 1000;
    let old = AuditRecord { at_ms: now_ms() - 10 * day_ms, ..alice().record("kv.put", "kv/old", None, None) };
    let ops: Vec<TxnOp> = (0..5).map(|_| record_op(&old)).collect();
    store.txn(Txn::new().and_then(ops)).await.unwrap();
    for i in 0..(RETENTION_BATCH + 20) as usize / 100 {
        let ops: Vec<TxnOp> =
            (0..100).map(|j| alice().op("kv.put", format!("kv/{i}-{j}"), None, None)).collect();
        store.txn(Txn::new().and_then(ops)).await.unwrap();
    }
    let count = || async {
        store.range(sb_store::RangeRequest::prefix(AUDIT_PREFIX).count_only()).await.unwrap().count
    };
    assert_eq!(count().await, 505);
    let by_age = AuditRetention { max_age: Some(Duration::from_secs(7 * 24 * 3600)), max_records: None };
    assert_eq!(sweep(store.as_ref(), &by_age).await.unwrap(), 5);
    assert_eq!(count().await, 500);
    let by_count = AuditRetention { max_age: None, max_records: Some(10) };
    assert_eq!(sweep(store.as_ref(), &by_count).await.unwrap(), 490);
    assert_eq!(count().await, 10);
    // The newest survive.
    let left = query(store.as_ref(), &all(100)).await.unwrap();
    assert_eq!(left.records.last().unwrap().record.resource, "kv/4-99");
    assert_eq!(sweep(store.as_ref(), &by_count).await.unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_background_sweep_runs_only_on_the_sweeper() {
    let (_dir, store) = store().await;
    let ops: Vec<TxnOp> = (0..20).map(|i| alice().op("kv.put", format!("kv/{i}"), None, None)).collect();
    store.txn(Txn::new().and_then(ops)).await.unwrap();
    let retention = AuditRetention { max_age: None, max_records: Some(5) };
    let sweeper = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = sweeper.clone();
    let task = spawn_retention(
        store.clone(),
        retention,
        Duration::from_secs(60),
        Arc::new(move || flag.load(std::sync::atomic::Ordering::Relaxed)),
    );
    let count = || async {
        store.range(sb_store::RangeRequest::prefix(AUDIT_PREFIX).count_only()).await.unwrap().count
    };
    tokio::time::sleep(Duration::from_secs(130)).await;
    assert_eq!(count().await, 20, "a node that is not the sweeper deletes nothing");
    sweeper.store(true, std::sync::atomic::Ordering::Relaxed);
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_secs(61)).await;
        if count().await == 5 {
            break;
        }
    }
    assert_eq!(count().await, 5);
    task.abort();
}

#[test]
fn keys_are_time_ordered_and_unique() {
    let a = next_key(1_700_000_000_000);
    let b = next_key(1_700_000_000_000);
    let c = next_key(1_700_000_000_001);
    assert!(a < b && b < c, "{a} {b} {c}");
    assert!(a.starts_with("audit/1700000000000-"), "{a}");
    assert_eq!(digest(b"x").len(), "sha256:".len() + 16);
}
