use std::collections::HashSet;
use std::sync::Arc;

use sb_store::{KeyRange, SharedStore};

use super::*;
use crate::clock::OffsetClock;
use crate::snowflake::WORKERS_PREFIX;

async fn store(dir: &tempfile::TempDir) -> SharedStore {
    let options = sb_store_embedded::EmbeddedOptions::new(dir.path().join("store.redb"));
    sb_store_embedded::EmbeddedStore::open(options).await.expect("open")
}

fn options(workers: u16) -> SnowflakeOptions {
    let mut options = SnowflakeOptions::new("test-node");
    options.workers = workers;
    options.worker_ttl_secs = 2;
    options.watermark_ahead_ms = 300;
    options
}

async fn start(store: &SharedStore, workers: u16, clock: &OffsetClock) -> SnowflakeService {
    SnowflakeService::start(store.clone(), options(workers), Arc::new(clock.clone())).await.expect("start")
}

fn insert_all(seen: &mut HashSet<u64>, ids: Vec<u64>) {
    for id in ids {
        assert!(seen.insert(id), "duplicate id {id}");
    }
}

#[tokio::test]
async fn two_nodes_hold_different_workers_and_never_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let clock = OffsetClock::new();
    let a = start(&store, 8, &clock).await;
    let b = start(&store, 8, &clock).await;
    assert_ne!(a.stats().worker, b.stats().worker);
    let mut seen = HashSet::new();
    for _ in 0..20 {
        insert_all(&mut seen, a.next_ids(5_000).await.unwrap());
        insert_all(&mut seen, b.next_ids(5_000).await.unwrap());
    }
    let held = store.range(sb_store::RangeRequest::prefix(WORKERS_PREFIX)).await.unwrap();
    assert_eq!(held.kvs.len(), 2);
    a.stop().await;
    let held = store.range(sb_store::RangeRequest::prefix(WORKERS_PREFIX)).await.unwrap();
    assert_eq!(held.kvs.len(), 1, "stop gives the worker id back");
}

#[tokio::test]
async fn a_takeover_issues_only_above_the_previous_holders_mark() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let clock = OffsetClock::new();
    let first = start(&store, 1, &clock).await;
    let before = first.next_ids(10_000).await.unwrap();
    let max_before = *before.iter().max().unwrap();
    first.stop().await;
    // The only worker id is free, but its mark is ahead of the clock: not yet.
    let second = start(&store, 1, &clock).await;
    let refused = second.next_ids(1).await.unwrap_err();
    assert!(matches!(refused, IdError::Refused(_)), "{refused:?}");
    // Once the clock passes the mark (300 ms ahead), the worker is taken again.
    let mut after = Err(refused);
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = second.next_ids(10_000).await;
        if after.is_ok() {
            break;
        }
    }
    let after = after.unwrap();
    assert!(after.iter().all(|id| *id > max_before));
    let layout = second.layout();
    assert_eq!(layout.decode(after[0]).worker, layout.decode(max_before).worker);
}

#[tokio::test]
async fn a_small_step_back_is_waited_out_on_the_same_worker() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let clock = OffsetClock::new();
    let node = start(&store, 4, &clock).await;
    let mut seen = HashSet::new();
    let before = node.next_ids(100).await.unwrap();
    let worker = node.stats().worker;
    insert_all(&mut seen, before.clone());
    clock.set_offset_ms(-2);
    let after = node.next_ids(100).await.unwrap();
    assert!(after[0] > *before.last().unwrap(), "still increasing");
    insert_all(&mut seen, after);
    assert_eq!(node.stats().worker, worker);
    assert_eq!(node.stats().worker_switches, 0);
}

#[tokio::test]
async fn a_large_step_back_takes_a_fresh_worker_or_refuses_explicitly() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let clock = OffsetClock::new();
    let node = start(&store, 2, &clock).await;
    let mut seen = HashSet::new();
    insert_all(&mut seen, node.next_ids(1_000).await.unwrap());
    let first_worker = node.stats().worker.unwrap();
    clock.set_offset_ms(-10_000);
    insert_all(&mut seen, node.next_ids(1_000).await.unwrap());
    let stats = node.stats();
    assert_eq!(stats.worker_switches, 1);
    assert_ne!(stats.worker, Some(first_worker));
    // Back another 10 s: the first worker's mark is ahead of this clock, none is free.
    clock.set_offset_ms(-20_000);
    let refused = node.next_ids(1).await.unwrap_err();
    assert!(refused.to_string().contains("no Snowflake worker id"), "{refused}");
    assert!(node.stats().refused_no_free_worker >= 1);
    // The clock comes back: issuing resumes, still without a duplicate.
    clock.set_offset_ms(0);
    insert_all(&mut seen, node.next_ids(1_000).await.unwrap());
}

#[tokio::test]
async fn a_lost_worker_lease_stops_issuing_until_a_worker_is_taken_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let clock = OffsetClock::new();
    let node = start(&store, 4, &clock).await;
    let mut seen = HashSet::new();
    insert_all(&mut seen, node.next_ids(100).await.unwrap());
    // Someone deletes the worker keys (as a lease expiry would).
    let lease = node.inner.slow.lock().await.lease.unwrap();
    store.lease_revoke(lease).await.unwrap();
    store.delete(KeyRange::prefix(WORKERS_PREFIX)).await.unwrap();
    // The keeper notices within a round, and takes a worker under a new lease.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    insert_all(&mut seen, node.next_ids(100).await.unwrap());
    assert!(node.inner.slow.lock().await.lease != Some(lease));
}

#[tokio::test]
async fn the_mark_stays_ahead_of_issued_ids() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let clock = OffsetClock::new();
    let node = start(&store, 1, &clock).await;
    for _ in 0..10 {
        let ids = node.next_ids(1_000).await.unwrap();
        let last = node.layout().decode(*ids.last().unwrap()).timestamp_ms;
        let mark = store.get(b"ids/watermarks/0").await.unwrap().unwrap();
        let mark: super::workers::Watermark = sb_store::codec::decode(&mark.value).unwrap();
        assert!(mark.ts_ms > last, "mark {} must be above issued {last}", mark.ts_ms);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(node.stats().watermark_writes > 1, "renewed before it was reached");
}

#[tokio::test]
async fn another_epoch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let clock = OffsetClock::new();
    let _first = start(&store, 4, &clock).await;
    let mut other = options(4);
    other.layout.epoch_ms -= 1;
    let error = SnowflakeService::start(store.clone(), other, Arc::new(clock)).await.err().unwrap();
    assert!(error.to_string().contains("same epoch"), "{error}");
}

#[tokio::test]
async fn issuing_stops_before_an_unconfirmed_lease_could_expire_and_resumes_after() {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::test_store::flaky(&dir).await;
    let shared: SharedStore = store.clone();
    let clock = OffsetClock::new();
    let mut options = options(4);
    options.watermark_ahead_ms = 60_000; // the mark is not what stops it here
    let node = SnowflakeService::start(shared, options, Arc::new(clock)).await.unwrap();
    let mut seen = HashSet::new();
    insert_all(&mut seen, node.next_ids(100).await.unwrap());
    store.down.store(true, std::sync::atomic::Ordering::Release);
    // The lease TTL is 2 s: issuing stops within 1.5 s of the last confirmed keep-alive.
    let mut refused = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        match node.next_ids(100).await {
            Ok(ids) => insert_all(&mut seen, ids),
            Err(error) => {
                refused = Some(error);
                break;
            }
        }
    }
    let refused = refused.expect("issuing stopped while the store was down");
    assert!(refused.to_string().contains("lease has not been confirmed"), "{refused}");
    assert!(node.stats().refused_lease_unconfirmed >= 1);
    store.down.store(false, std::sync::atomic::Ordering::Release);
    // The keeper finds the lease expired (or confirms it) and issuing resumes.
    let mut resumed = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(ids) = node.next_ids(100).await {
            insert_all(&mut seen, ids);
            resumed = true;
            break;
        }
    }
    assert!(resumed, "issuing resumed once the store came back");
}

#[tokio::test]
async fn a_batch_that_meets_a_worker_switch_stays_increasing() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let clock = OffsetClock::new();
    let node = Arc::new(start(&store, 4, &clock).await);
    let mut seen = HashSet::new();
    let stepper = {
        let clock = clock.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            clock.set_offset_ms(-10_000);
        })
    };
    for _ in 0..200 {
        let ids = node.next_ids(10_000).await.unwrap();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "a batch is increasing, even across a worker switch");
        insert_all(&mut seen, ids);
        if node.stats().worker_switches > 0 {
            break;
        }
    }
    stepper.await.unwrap();
    assert_eq!(node.stats().worker_switches, 1);
}
