//! Log first, checkpoint later, seen from the port: acknowledged writes that were never
//! checkpointed survive a kill -9, and reads, watches and compaction agree on either side
//! of the checkpoint.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use sb_store::{EventKind, KeyRange, RangeRequest, Revision, Store, StoreError, Txn, TxnOp, WatchRequest};
use sb_store_embedded::{EmbeddedOptions, EmbeddedStore};

/// Each key's `(value, mod_revision)` under `h/`, as of one revision.
type Snapshot = BTreeMap<String, (String, Revision)>;

/// Options under which the checkpointer checkpoints only when `revisions` are pending.
fn options(path: PathBuf, revisions: u64) -> EmbeddedOptions {
    let mut options = EmbeddedOptions::new(path);
    options.checkpoint_interval = Duration::from_secs(3600);
    options.checkpoint_revisions = revisions;
    options
}

/// Writes `count` revisions over three keys, one request each (so one batch each), puts
/// and deletes mixed; returns the state after each revision, starting with the first.
async fn write_history(store: &EmbeddedStore, count: usize) -> Vec<(Revision, Snapshot)> {
    let mut snapshots = Vec::new();
    write_more(store, &mut snapshots, count).await;
    snapshots
}

/// Writes `count` more revisions as [`write_history`] does, after `snapshots`.
async fn write_more(store: &EmbeddedStore, snapshots: &mut Vec<(Revision, Snapshot)>, count: usize) {
    let mut model = snapshots.last().map(|(_, s)| s.clone()).unwrap_or_default();
    let first = snapshots.len();
    for i in first..first + count {
        let key = format!("h/{}", ["a", "b", "c"][i % 3]);
        let rev = if i % 5 == 4 && model.contains_key(&key) {
            let deleted = store.delete(KeyRange::key(key.as_str())).await.unwrap();
            assert_eq!(deleted.deleted, 1);
            model.remove(&key);
            deleted.revision
        } else {
            let value = format!("{key}#{i}");
            let rev = store.put(key.as_bytes(), value.as_bytes(), None).await.unwrap();
            model.insert(key, (value, rev));
            rev
        };
        snapshots.push((rev, model.clone()));
    }
}

async fn snapshot_at(store: &EmbeddedStore, rev: Revision) -> Result<Snapshot, StoreError> {
    let response = store.range(RangeRequest::prefix("h/").at_revision(rev)).await?;
    Ok(response
        .kvs
        .into_iter()
        .map(|kv| {
            let key = String::from_utf8(kv.key).unwrap();
            (key, (String::from_utf8(kv.value).unwrap(), kv.mod_revision))
        })
        .collect())
}

async fn assert_history(store: &EmbeddedStore, snapshots: &[(Revision, Snapshot)], context: &str) {
    for (rev, expected) in snapshots {
        assert_eq!(&snapshot_at(store, *rev).await.unwrap(), expected, "{context}: state at {rev}");
    }
}

/// Every event under `h/` from `from` on, as the model says they happened.
fn expected_events(snapshots: &[(Revision, Snapshot)], from: Revision) -> Vec<(Revision, EventKind, String)> {
    let mut previous = Snapshot::new();
    let mut events = Vec::new();
    for (rev, snapshot) in snapshots {
        for key in previous.keys().chain(snapshot.keys()) {
            let event = match (previous.get(key), snapshot.get(key)) {
                (_, Some((value, mod_rev))) if mod_rev == rev => Some((EventKind::Put, value.clone())),
                (Some(_), None) => Some((EventKind::Delete, key.clone())),
                _ => None,
            };
            if let Some((kind, detail)) = event.filter(|_| *rev >= from) {
                if !events.contains(&(*rev, kind, detail.clone())) {
                    events.push((*rev, kind, detail));
                }
            }
        }
        previous = snapshot.clone();
    }
    events
}

async fn watched_events(
    store: &EmbeddedStore,
    from: Revision,
    count: usize,
) -> Vec<(Revision, EventKind, String)> {
    let mut watch = store.watch(WatchRequest::new(KeyRange::prefix("h/")).from_revision(from)).await.unwrap();
    let mut events = Vec::new();
    while events.len() < count {
        let batch = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("the watch delivers its catch-up")
            .unwrap()
            .unwrap();
        for event in batch.events {
            let detail = match event.kind {
                EventKind::Put => event.kv.value,
                EventKind::Delete => event.kv.key,
            };
            events.push((batch.revision, event.kind, String::from_utf8(detail).unwrap()));
        }
    }
    events
}

/// Set in the child process of the kill -9 test: the directory of its store.
const KILLED_CHILD_DIR: &str = "SB_STORE_EMBEDDED_KILLED_CHILD_DIR";

/// A child process writes with checkpoints off, reports what was acknowledged, and is
/// killed with SIGKILL: no close, no checkpoint. Everything acknowledged is there after
/// reopening, with its history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_that_were_never_checkpointed_survive_kill_9() {
    if let Some(dir) = std::env::var_os(KILLED_CHILD_DIR) {
        let store =
            EmbeddedStore::open(options(PathBuf::from(dir).join("store.redb"), u64::MAX)).await.unwrap();
        let lease = store.lease_grant(30).await.unwrap();
        store.put(b"session", b"leased", Some(lease.id)).await.unwrap();
        let snapshots = write_history(&store, 40).await;
        let metrics = store.metrics();
        assert_eq!((metrics.checkpoints, metrics.checkpointed_revision), (0, 1), "nothing was checkpointed");
        print_acked(&snapshots);
        println!("lease {}", lease.id.0);
        println!("ready");
        std::future::pending::<()>().await;
    }

    let dir = tempfile::tempdir().unwrap();
    let (snapshots, reported) = run_killed_child(
        "acknowledged_writes_that_were_never_checkpointed_survive_kill_9",
        KILLED_CHILD_DIR,
        dir.path(),
        "lease ",
    );
    assert_eq!(snapshots.len(), 40, "the child acknowledged every write before it was killed");
    let lease = sb_store::LeaseId(reported.expect("the child reported its lease").parse().unwrap());

    let path = dir.path().join("store.redb");
    let store = EmbeddedStore::open(options(path.clone(), u64::MAX)).await.unwrap();
    let last = snapshots.last().unwrap().0;
    let metrics = store.metrics();
    assert_eq!((metrics.current_revision, metrics.checkpointed_revision), (last, 1), "replayed from the log");
    assert_eq!(snapshot_at(&store, last).await.unwrap(), snapshots.last().unwrap().1);
    assert_history(&store, &snapshots, "log only, after kill -9").await;
    let events = expected_events(&snapshots, 3);
    assert_eq!(watched_events(&store, 3, events.len()).await, events);
    assert_eq!(store.get(b"session").await.unwrap().unwrap().lease, Some(lease));
    assert_eq!(store.lease_time_to_live(lease, true).await.unwrap().keys, vec![b"session".to_vec()]);
    // Close checkpoints everything; the history reads the same from the MVCC table.
    store.close().await;
    let store = EmbeddedStore::open(options(path, u64::MAX)).await.unwrap();
    assert_eq!(store.metrics().checkpointed_revision, last);
    assert_history(&store, &snapshots, "after close").await;
    assert_eq!(store.put(b"h/next", b"v", None).await.unwrap(), last + 1, "revisions continue");
    store.close().await;
}

/// Set in the child process of the unsynced-checkpoint kill -9 test: its store's directory.
const UNSYNCED_CHILD_DIR: &str = "SB_STORE_EMBEDDED_UNSYNCED_CHILD_DIR";

/// Checkpoints every 4 revisions, compaction and cleaning following a retention of 16, and
/// only the first checkpoint fsynced: everything after it is committed without an fsync.
fn unsynced_options(path: PathBuf) -> EmbeddedOptions {
    let mut options = options(path, 4);
    options.retention_revisions = 16;
    options.compaction_interval = Duration::from_secs(3600);
    options.checkpoint_sync_interval = Duration::from_secs(3600);
    options
}

/// The child's report of what was acknowledged: `acked <rev> <key>=<value>@<mod>,...` lines.
fn print_acked(snapshots: &[(Revision, Snapshot)]) {
    for (rev, snapshot) in snapshots {
        let entries: Vec<String> = snapshot.iter().map(|(k, (v, m))| format!("{k}={v}@{m}")).collect();
        println!("acked {rev} {}", entries.join(","));
    }
}

/// Runs `test` again in a child process with `env` set to `dir`, reads what it reports until
/// its `ready` line (the acknowledged snapshots, and the value of its one line starting with
/// `report`), then kills it with SIGKILL.
fn run_killed_child(
    test: &str,
    env: &str,
    dir: &std::path::Path,
    report: &str,
) -> (Vec<(Revision, Snapshot)>, Option<String>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture"])
        .env(env, dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut snapshots = Vec::new();
    let mut reported = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line == "ready" {
            break;
        }
        if let Some(value) = line.strip_prefix(report) {
            reported = Some(value.to_owned());
        }
        snapshots.extend(parse_acked(&line));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    (snapshots, reported)
}

/// Parses the child's `acked <rev> <key>=<value>@<mod>,...` line.
fn parse_acked(line: &str) -> Option<(Revision, Snapshot)> {
    let acked = line.strip_prefix("acked ")?;
    let (rev, entries) = acked.split_once(' ').unwrap_or((acked, ""));
    let snapshot = entries
        .split(',')
        .filter(|e| !e.is_empty())
        .map(|entry| {
            let (key, rest) = entry.split_once('=').unwrap();
            let (value, mod_rev) = rest.rsplit_once('@').unwrap();
            (key.to_owned(), (value.to_owned(), mod_rev.parse().unwrap()))
        })
        .collect();
    Some((rev.parse().unwrap(), snapshot))
}

/// A child process checkpoints, compacts and cleans with checkpoints that are not fsynced
/// (after the first), and is killed with SIGKILL. The MVCC file goes back to its last
/// durable checkpoint, and the log, never trimmed past that checkpoint's cleaning, still
/// holds everything above it: every acknowledged write is there after reopening, with its
/// history within the retention, and watches, compaction and later writes work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsynced_checkpoints_lost_to_kill_9_are_replayed_from_the_log() {
    if let Some(dir) = std::env::var_os(UNSYNCED_CHILD_DIR) {
        let store =
            EmbeddedStore::open(unsynced_options(PathBuf::from(dir).join("store.redb"))).await.unwrap();
        let snapshots = write_history(&store, 80).await;
        let current = snapshots.last().unwrap().0;
        // Let the checkpointer catch up: checkpoints, compaction and cleaning all moved,
        // in commits without an fsync.
        let metrics = settled(&store, current - 16).await;
        assert!(metrics.checkpoints > 1 && metrics.cleaned_revision > 0, "{metrics:?}");
        print_acked(&snapshots);
        println!("checkpointed {}", metrics.checkpointed_revision);
        println!("ready");
        std::future::pending::<()>().await;
    }

    let dir = tempfile::tempdir().unwrap();
    let (mut snapshots, reported) = run_killed_child(
        "unsynced_checkpoints_lost_to_kill_9_are_replayed_from_the_log",
        UNSYNCED_CHILD_DIR,
        dir.path(),
        "checkpointed ",
    );
    assert_eq!(snapshots.len(), 80, "the child acknowledged every write before it was killed");
    let child_checkpointed: Revision = reported.expect("the child reported its checkpoint").parse().unwrap();

    let path = dir.path().join("store.redb");
    let store = EmbeddedStore::open(unsynced_options(path.clone())).await.unwrap();
    let last = snapshots.last().unwrap().0;
    let metrics = store.metrics();
    assert_eq!(metrics.current_revision, last, "replayed from the log");
    assert!(
        metrics.checkpointed_revision < child_checkpointed,
        "the unsynced checkpoints were lost ({} durable, {child_checkpointed} in the child)",
        metrics.checkpointed_revision
    );
    // The reopened store checkpoints and compacts again from its durable checkpoint on.
    let compacted = settled(&store, last - 16).await.compacted_revision;
    let kept: Vec<_> = snapshots.iter().filter(|(rev, _)| *rev >= compacted).cloned().collect();
    assert_history(&store, &kept, "unsynced checkpoints lost to kill -9").await;
    let events = expected_events(&snapshots, compacted + 1);
    assert_eq!(watched_events(&store, compacted + 1, events.len()).await, events);
    // Checkpointing, compaction and cleaning go on from there, and survive a close.
    write_more(&store, &mut snapshots, 20).await;
    let current = snapshots.last().unwrap().0;
    settled(&store, current - 16).await;
    store.close().await;
    let store = EmbeddedStore::open(unsynced_options(path)).await.unwrap();
    let metrics = store.metrics();
    assert_eq!((metrics.checkpointed_revision, metrics.compacted_revision), (current, current - 16));
    let kept: Vec<_> = snapshots.iter().filter(|(rev, _)| *rev >= current - 16).cloned().collect();
    assert_history(&store, &kept, "closed after the replay").await;
    store.close().await;
}

async fn open_straddling(dir: &tempfile::TempDir) -> (Arc<EmbeddedStore>, Vec<(Revision, Snapshot)>) {
    // One revision per batch: the checkpoint runs after the 10th write (revision 11), and
    // the next four stay in the log. The checkpointer runs on its own task: wait for it
    // before writing on, so that it checkpoints exactly 11.
    let store = EmbeddedStore::open(options(dir.path().join("store.redb"), 10)).await.unwrap();
    let mut snapshots = write_history(&store, 10).await;
    checkpointed(&store, 11).await;
    write_more(&store, &mut snapshots, 4).await;
    let metrics = store.metrics();
    assert_eq!((metrics.checkpointed_revision, metrics.current_revision, metrics.checkpoints), (11, 15, 1));
    (store, snapshots)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_reads_straddling_the_checkpoint_see_every_revision() {
    let dir = tempfile::tempdir().unwrap();
    let (store, snapshots) = open_straddling(&dir).await;
    assert_history(&store, &snapshots, "straddling").await;
    // A past read inside a writing transaction takes the writer's path.
    for rev in [9, 13] {
        let txn = Txn::new()
            .and_then([TxnOp::put("other", "x"), TxnOp::Range(RangeRequest::prefix("h/").at_revision(rev))]);
        let response = store.txn(txn).await.unwrap();
        let sb_store::OpResponse::Range(range) = &response.responses[1] else { panic!("a range answer") };
        let expected = &snapshots.iter().find(|(r, _)| *r == rev).unwrap().1;
        assert_eq!(range.count as usize, expected.len(), "in a txn at {rev}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_catch_up_crosses_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (store, snapshots) = open_straddling(&dir).await;
    for from in [2, 9, 12] {
        let events = expected_events(&snapshots, from);
        assert_eq!(watched_events(&store, from, events.len()).await, events, "from {from}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_after_a_checkpoint_keeps_what_reads_need() {
    let dir = tempfile::tempdir().unwrap();
    let (store, snapshots) = open_straddling(&dir).await;
    // Below the checkpoint, with revisions still only in the log above it.
    store.compact(9).await.unwrap();
    let kept: Vec<_> = snapshots.iter().filter(|(rev, _)| *rev >= 9).cloned().collect();
    assert_history(&store, &kept, "compacted at 9").await;
    assert!(matches!(snapshot_at(&store, 8).await, Err(StoreError::Compacted { .. })));
    // Above the checkpoint: compaction checkpoints first.
    store.compact(13).await.unwrap();
    let metrics = store.metrics();
    assert_eq!((metrics.compacted_revision, metrics.checkpointed_revision), (13, 15));
    let kept: Vec<_> = snapshots.iter().filter(|(rev, _)| *rev >= 13).cloned().collect();
    assert_history(&store, &kept, "compacted at 13").await;
    let events = expected_events(&snapshots, 14);
    assert_eq!(watched_events(&store, 14, events.len()).await, events);
    let mut below = store.watch(WatchRequest::new(KeyRange::prefix("h/")).from_revision(12)).await.unwrap();
    assert!(matches!(below.next().await, Some(Err(StoreError::Compacted { .. }))));
    store.close().await;
    let store = EmbeddedStore::open(options(dir.path().join("store.redb"), 10)).await.unwrap();
    assert_history(&store, &kept, "compacted, reopened").await;
}

/// With a tiny retention and the timer out of the way, the compacted revision follows the
/// revisions as they are checkpointed; reads at or above it stay exact, below it fail,
/// and so does a watch; the old records are cleaned; all of it survives a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_compacted_as_revisions_grow_without_waiting_for_the_timer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let mut opts = options(path.clone(), 4);
    opts.retention_revisions = 10;
    opts.compaction_interval = Duration::from_secs(3600);
    let store = EmbeddedStore::open(opts.clone()).await.unwrap();
    let snapshots = write_history(&store, 90).await;
    let current = snapshots.last().unwrap().0;
    // Every 4th revision triggers a checkpoint, which compacts towards `current - 10` (the
    // checkpointer runs beside the writer, so it may trail), and once idle, the
    // checkpointer takes it to exactly `current - 10`.
    let metrics = settled(&store, current - 10).await;
    let compacted = metrics.compacted_revision;
    assert!(metrics.compaction_steps > 0);
    // The cleanup walk trails by another retention.
    assert!(metrics.cleaned_revision >= compacted - 10 - 1, "cleaned {}", metrics.cleaned_revision);
    let kept: Vec<_> = snapshots.iter().filter(|(rev, _)| *rev >= compacted).cloned().collect();
    assert_history(&store, &kept, "compacted by growth").await;
    let err = snapshot_at(&store, compacted - 1).await.unwrap_err();
    assert!(matches!(err, StoreError::Compacted { .. }), "{err:?}");
    let mut below =
        store.watch(WatchRequest::new(KeyRange::prefix("h/")).from_revision(compacted - 1)).await.unwrap();
    assert!(matches!(below.next().await, Some(Err(StoreError::Compacted { .. }))));
    let events = expected_events(&snapshots, compacted + 1);
    assert_eq!(watched_events(&store, compacted + 1, events.len()).await, events);
    store.close().await;

    let store = EmbeddedStore::open(opts).await.unwrap();
    let metrics = store.metrics();
    assert_eq!(metrics.compacted_revision, compacted, "the compacted revision is durable");
    assert_history(&store, &kept, "compacted by growth, reopened").await;
    // Writing on moves it further, still without the timer.
    let more = write_history(&store, 40).await;
    let compacted = settled(&store, more.last().unwrap().0 - 10).await.compacted_revision;
    let value = store.range(RangeRequest::prefix("h/").at_revision(compacted)).await.unwrap();
    assert_eq!(value.revision, more.last().unwrap().0);
    store.close().await;
}

/// Waits (bounded) until the checkpointer has checkpointed `revision`.
async fn checkpointed(store: &EmbeddedStore, revision: Revision) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.metrics().checkpointed_revision < revision {
        assert!(tokio::time::Instant::now() < deadline, "no checkpoint at {revision}: {:?}", store.metrics());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits (bounded) until the compacted revision reaches `compacted`, and never passes it.
async fn settled(store: &EmbeddedStore, compacted: Revision) -> sb_store_embedded::EmbeddedMetrics {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = store.metrics();
        assert!(metrics.compacted_revision <= compacted, "compacted past the retention");
        if metrics.compacted_revision == compacted {
            return metrics;
        }
        assert!(tokio::time::Instant::now() < deadline, "compaction did not reach {compacted}: {metrics:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
