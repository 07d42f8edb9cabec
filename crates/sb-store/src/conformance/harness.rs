//! How the suite talks to a store under test: short reads that name what they expect, and
//! watch reads that fail after a deadline instead of hanging on an adapter bug.
//!
//! Nothing here asserts a semantic of its own; the tests do.

use std::time::Duration;

use crate::error::StoreError;
use crate::types::{Event, EventKind, KeyRange, KeyValue, LeaseId, RangeRequest, Revision, WatchBatch};
use crate::watch::WatchStream;

use super::TestStore;

/// How long any single wait on a watch may take before the test fails.
pub(super) const WATCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The store's current revision.
pub(super) async fn current_revision(t: &TestStore) -> Revision {
    t.store.current_revision().await.expect("current_revision should succeed")
}

/// The keys and values in `range` at the current revision, in key order.
pub(super) async fn entries(t: &TestStore, range: KeyRange) -> Vec<(String, String)> {
    entries_at(t, RangeRequest::new(range)).await
}

/// The keys and values a range request answers, in key order.
pub(super) async fn entries_at(t: &TestStore, request: RangeRequest) -> Vec<(String, String)> {
    let what = format!("{request:?}");
    let response = t.store.range(request).await.unwrap_or_else(|e| panic!("range {what} failed: {e}"));
    response.kvs.iter().map(|kv| (text(&kv.key), text(&kv.value))).collect()
}

/// The value of one key at the current revision, `None` when absent.
pub(super) async fn value_of(t: &TestStore, key: &str) -> Option<String> {
    let kv = t.store.get(key.as_bytes()).await.unwrap_or_else(|e| panic!("get {key:?} failed: {e}"));
    kv.map(|kv| text(&kv.value))
}

/// One key with its metadata; fails the test when it is absent.
pub(super) async fn present(t: &TestStore, key: &str) -> KeyValue {
    t.store
        .get(key.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("get {key:?} failed: {e}"))
        .unwrap_or_else(|| panic!("expected key {key:?} to be present"))
}

/// Keys as text, for readable assertions.
pub(super) fn keys_of(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter().map(|kv| text(&kv.key)).collect()
}

pub(super) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `(key, value)` pairs from string literals, to compare with [`entries`].
pub(super) fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A lease id the store does not know: granted, then revoked.
pub(super) async fn revoked_lease(t: &TestStore) -> LeaseId {
    let grant = t.store.lease_grant(10).await.expect("lease_grant(10) should succeed");
    t.store.lease_revoke(grant.id).await.expect("revoking a live lease should succeed");
    grant.id
}

/// A delete event exactly as etcd sends it: the key and the deleting revision, all else zero.
pub(super) fn delete_event(key: &str, revision: Revision) -> Event {
    Event {
        kind: EventKind::Delete,
        kv: KeyValue { key: key.as_bytes().to_vec(), mod_revision: revision, ..KeyValue::default() },
    }
}

/// A put event carrying the key's full state after the put.
pub(super) fn put_event(kv: KeyValue) -> Event {
    Event { kind: EventKind::Put, kv }
}

/// The next item of a watch, progress notifications included; fails after [`WATCH_TIMEOUT`].
pub(super) async fn next_item(
    watch: &mut WatchStream,
    waiting_for: &str,
) -> Option<Result<WatchBatch, StoreError>> {
    tokio::time::timeout(WATCH_TIMEOUT, watch.next())
        .await
        .unwrap_or_else(|_| panic!("timed out after {WATCH_TIMEOUT:?} waiting for {waiting_for}"))
}

/// The next batch with events, skipping progress notifications; fails on an error, on the
/// end of the watch, or after [`WATCH_TIMEOUT`].
pub(super) async fn next_batch(watch: &mut WatchStream, waiting_for: &str) -> WatchBatch {
    let deadline = tokio::time::Instant::now() + WATCH_TIMEOUT;
    loop {
        let item = tokio::time::timeout_at(deadline, watch.next())
            .await
            .unwrap_or_else(|_| panic!("timed out after {WATCH_TIMEOUT:?} waiting for {waiting_for}"));
        match item {
            Some(Ok(batch)) if batch.is_progress() => continue,
            Some(Ok(batch)) => return batch,
            Some(Err(e)) => panic!("watch failed with {e:?} while waiting for {waiting_for}"),
            None => panic!("watch ended while waiting for {waiting_for}"),
        }
    }
}

/// The error a watch fails with, whether `watch` itself refuses or the stream reports it;
/// fails the test if the watch delivers events instead.
pub(super) async fn watch_failure(t: &TestStore, request: crate::types::WatchRequest) -> StoreError {
    let mut watch = match t.store.watch(request).await {
        Err(e) => return e,
        Ok(watch) => watch,
    };
    loop {
        match next_item(&mut watch, "the watch to fail").await {
            Some(Ok(batch)) if batch.is_progress() => continue,
            Some(Ok(batch)) => panic!("expected the watch to fail, got a batch {batch:?}"),
            Some(Err(e)) => return e,
            None => panic!("expected the watch to fail with an error, it ended without one"),
        }
    }
}
