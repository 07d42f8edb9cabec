//! History on disk: the log, the checkpoint, compaction and reopening, below the writer.

use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTableMetadata};
use sb_store::{EventKind, KeyRange, KeyValue, RangeRequest, Revision, StoreError, StoreResult};

use super::{read_at, read_history};
use crate::cold::ColdReader;
use crate::disk::{self, checkpoint, commit, compact, open, Checkpoint, DiskBatch, Files, Loaded, LOG, MVCC};
use crate::state::{ColdValues, Entry, Meta};

type Change = (Vec<u8>, Revision, Option<Arc<KeyValue>>);

const CACHE: usize = 1 << 20;

fn put(key: &str, rev: Revision, create: Revision, version: i64) -> Change {
    let kv = KeyValue {
        key: key.into(),
        value: format!("{key}@{rev}").into_bytes(),
        create_revision: create,
        mod_revision: rev,
        version,
        lease: None,
    };
    (key.into(), rev, Some(Arc::new(kv)))
}

fn delete(key: &str, rev: Revision) -> Change {
    (key.into(), rev, None)
}

/// Commits one batch (log only, as the writer does), grouping the changes by revision.
fn write(db: &Files, changes: Vec<Change>) {
    let revision = changes.iter().map(|c| c.1).max().unwrap();
    let mut batch = DiskBatch { revision, ..DiskBatch::default() };
    for (key, rev, kv) in changes {
        match batch.revisions.last_mut() {
            Some((last, entries)) if *last == rev => entries.push((key, kv, 0)),
            _ => batch.revisions.push((rev, vec![(key, kv, 0)])),
        }
    }
    commit(&db.log, &batch, None).unwrap();
}

fn values_at(db: &Files, rev: Revision) -> StoreResult<Vec<String>> {
    let response = read_at(db, &RangeRequest::prefix(""), rev, 9)?;
    Ok(response.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.value).into_owned()).collect())
}

fn table_len(db: &Files, mvcc: bool) -> u64 {
    match mvcc {
        true => db.mvcc.begin_read().unwrap().open_table(MVCC).unwrap().len().unwrap(),
        false => db.log.begin_read().unwrap().open_table(LOG).unwrap().len().unwrap(),
    }
}

/// a: put 2, put 3, deleted 4, put 6; b: put 5, put 7.
fn seven_revisions(db: &Files) {
    write(db, vec![put("a", 2, 2, 1)]);
    write(db, vec![put("a", 3, 2, 2)]);
    write(db, vec![delete("a", 4)]);
    write(db, vec![put("b", 5, 5, 1)]);
    write(db, vec![put("a", 6, 6, 1)]);
    write(db, vec![put("b", 7, 5, 2)]);
}

#[test]
fn commits_write_only_the_log_and_the_checkpoint_moves_it() {
    let dir = tempfile::tempdir().unwrap();
    let Loaded { files: db, .. } = open(&dir.path().join("s.redb"), CACHE, &[]).unwrap();
    seven_revisions(&db);
    assert_eq!((table_len(&db, true), table_len(&db, false)), (0, 6));
    let expected: [&[&str]; 6] = [&["a@2"], &["a@3"], &[], &["b@5"], &["a@6", "b@5"], &["a@6", "b@7"]];
    for (rev, want) in (2..=7).zip(expected) {
        assert_eq!(values_at(&db, rev).unwrap(), want, "from the log alone, at {rev}");
    }
    assert_eq!(checkpoint(&db, 100).unwrap(), Checkpoint { checkpointed: 7, moved: true, more: false });
    let idle = checkpoint(&db, 100).unwrap();
    assert_eq!(idle, Checkpoint { checkpointed: 7, moved: false, more: false }, "nothing left to move");
    assert_eq!(table_len(&db, true), 6);
    for (rev, want) in (2..=7).zip(expected) {
        assert_eq!(values_at(&db, rev).unwrap(), want, "from the MVCC table alone, at {rev}");
    }
}

#[test]
fn a_bounded_checkpoint_moves_whole_revisions_and_reads_stay_exact_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let Loaded { files: db, .. } = open(&dir.path().join("s.redb"), CACHE, &[]).unwrap();
    write(&db, vec![put("a", 2, 2, 1), put("b", 2, 2, 1), put("c", 2, 2, 1)]);
    three_more_revisions(&db);
    let expected: [&[&str]; 4] =
        [&["a@2", "b@2", "c@2"], &["a@3", "b@2", "c@2"], &["b@2", "c@2"], &["b@5", "c@2"]];
    // Revision 2 alone holds 3 records: a budget of 2 still moves it whole.
    let steps: Vec<Checkpoint> = (0..5).map(|_| checkpoint(&db, 2).unwrap()).collect();
    assert_eq!(steps[0], Checkpoint { checkpointed: 2, moved: true, more: true });
    assert_eq!(steps[1], Checkpoint { checkpointed: 4, moved: true, more: true });
    assert_eq!(steps[2], Checkpoint { checkpointed: 5, moved: true, more: false });
    assert!(!steps[3].moved && !steps[4].more);
    for (rev, want) in (2..=5).zip(expected) {
        assert_eq!(values_at(&db, rev).unwrap(), want, "at {rev}");
    }
}

/// a: put 3, deleted 4; b: put 5.
fn three_more_revisions(db: &Files) {
    write(db, vec![put("a", 3, 2, 2)]);
    write(db, vec![delete("a", 4)]);
    write(db, vec![put("b", 5, 2, 2)]);
}

#[test]
fn past_reads_straddling_the_checkpoint_merge_mvcc_and_log() {
    let dir = tempfile::tempdir().unwrap();
    let Loaded { files: db, .. } = open(&dir.path().join("s.redb"), CACHE, &[]).unwrap();
    write(&db, vec![put("a", 2, 2, 1), put("c", 2, 2, 1)]);
    write(&db, vec![put("b", 3, 3, 1), put("d", 3, 3, 1)]);
    checkpoint(&db, 100).unwrap();
    // Above the checkpoint: a changes, b is deleted, e is new, c and d stay in MVCC only.
    write(&db, vec![put("a", 4, 2, 2), delete("b", 4)]);
    write(&db, vec![put("e", 5, 5, 1)]);
    assert_eq!(values_at(&db, 3).unwrap(), ["a@2", "b@3", "c@2", "d@3"]);
    assert_eq!(values_at(&db, 4).unwrap(), ["a@4", "c@2", "d@3"]);
    assert_eq!(values_at(&db, 5).unwrap(), ["a@4", "c@2", "d@3", "e@5"]);
    let page = read_at(&db, &RangeRequest::prefix("").with_limit(2), 5, 9).unwrap();
    assert_eq!((page.kvs.len(), page.count, page.more), (2, 4, true));
    let b_to_d = RangeRequest::new(KeyRange::Between { start: b"b".to_vec(), end: b"d".to_vec() });
    let one = read_at(&db, &b_to_d, 4, 9).unwrap();
    assert_eq!(one.kvs.iter().map(|kv| kv.key.as_slice()).collect::<Vec<_>>(), [b"c"]);
    let a = read_at(&db, &RangeRequest::key("a"), 5, 9).unwrap().kvs.remove(0);
    assert_eq!((a.create_revision, a.mod_revision, a.version), (2, 4, 2));
}

#[test]
fn catch_up_reads_values_from_the_log_across_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let Loaded { files: db, .. } = open(&dir.path().join("s.redb"), CACHE, &[]).unwrap();
    write(&db, vec![put("a", 2, 2, 1)]);
    write(&db, vec![delete("a", 3)]);
    checkpoint(&db, 100).unwrap();
    write(&db, vec![put("a", 4, 4, 1), put("b", 4, 4, 1)]);
    let history = read_history(&db, &KeyRange::key("a"), 2, 4, 100).unwrap();
    let seen: Vec<_> = history
        .batches
        .iter()
        .map(|(rev, events)| (*rev, events[0].kind, events[0].kv.value.clone()))
        .collect();
    assert_eq!(
        seen,
        [
            (2, EventKind::Put, b"a@2".to_vec()),
            (3, EventKind::Delete, vec![]),
            (4, EventKind::Put, b"a@4".to_vec())
        ]
    );
    assert_eq!(history.read_to, 4);
    let limited = read_history(&db, &KeyRange::prefix(""), 2, 4, 1).unwrap();
    assert_eq!((limited.batches.len(), limited.read_to), (1, 2));
}

#[test]
fn compaction_checkpoints_then_keeps_exactly_what_reads_at_or_above_it_need() {
    let dir = tempfile::tempdir().unwrap();
    let Loaded { files: db, .. } = open(&dir.path().join("s.redb"), CACHE, &[]).unwrap();
    seven_revisions(&db);
    assert_eq!(values_at(&db, 3).unwrap(), ["a@3"]);

    let checkpoint = compact(&db, 5).unwrap();
    assert_eq!(checkpoint, Checkpoint { checkpointed: 7, moved: true, more: false }, "it checkpoints first");
    // a: 2, 3 and the tombstone at 4 are gone; b keeps 5 (latest at or below 5).
    assert_eq!(table_len(&db, true), 3);
    assert_eq!(table_len(&db, false), 6, "the log stays until the writer trims it");
    assert!(matches!(values_at(&db, 4), Err(StoreError::Compacted { requested: 4, compacted: Some(5) })));
    assert_eq!(values_at(&db, 5).unwrap(), ["b@5"]);
    assert_eq!(values_at(&db, 6).unwrap(), ["a@6", "b@5"]);
    assert_eq!(values_at(&db, 7).unwrap(), ["a@6", "b@7"]);
    let history = read_history(&db, &KeyRange::prefix(""), 5, 7, 100).unwrap();
    assert_eq!(history.batches.iter().map(|b| b.0).collect::<Vec<_>>(), [5, 6, 7]);
    assert!(read_history(&db, &KeyRange::prefix(""), 4, 7, 100).is_err());

    // After compaction, new revisions go to the log again and reads merge them; the writer
    // trims the log below the cleaned revision in the same commit.
    let batch =
        DiskBatch { revisions: vec![(8, vec![(b"b".to_vec(), None, 5)])], revision: 8, ..Default::default() };
    commit(&db.log, &batch, Some(2..5)).unwrap();
    assert_eq!(table_len(&db, false), 4, "log entries 5 to 8 remain");
    assert_eq!(values_at(&db, 8).unwrap(), ["a@6"]);
    assert_eq!(compact(&db, 8).unwrap().checkpointed, 8);
    // The tombstone at the compacted revision goes, and so does its event.
    assert_eq!(table_len(&db, true), 1);
    assert_eq!(values_at(&db, 8).unwrap(), ["a@6"]);
    assert!(read_history(&db, &KeyRange::prefix(""), 8, 8, 100).unwrap().batches.is_empty());
}

/// a: put 2, put 3, deleted 4, created again 5; b: created 6, put 7.
fn lives(db: &Files) {
    write(db, vec![put("a", 2, 2, 1)]);
    write(db, vec![put("a", 3, 2, 2)]);
    write(db, vec![delete("a", 4)]);
    write(db, vec![put("a", 5, 5, 1)]);
    write(db, vec![put("b", 6, 6, 1)]);
    write(db, vec![put("b", 7, 6, 2)]);
}

/// Checkpoint-time cleaning looks up only keys that may hold records of their current
/// life at or below the compacted revision (not creations, not lives created above it),
/// and the walk only keys with a change other than a creation: all the same, exactly
/// what reads at or above the compacted revision need stays, and nothing else.
#[test]
fn cleaning_skips_creations_and_young_lives_yet_leaves_nothing_unreachable() {
    let step = |target| disk::Compaction { target, walk_lag: 0, walk_min: 1, walk_records: 100 };
    for (target, kept, reads) in [
        // a's first life (2, 3 and the tombstone at 4) is gone; a@5 and b@7 stay.
        (7, 2, vec![(7, vec!["a@5", "b@7"])]),
        // b's life began at 6, above 5: both its records stay, as reads at 6 need b@6.
        (5, 3, vec![(5, vec!["a@5"]), (6, vec!["a@5", "b@6"]), (7, vec!["a@5", "b@7"])]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let Loaded { files: db, .. } = open(&dir.path().join("s.redb"), CACHE, &[]).unwrap();
        lives(&db);
        let done = disk::maintain(&db, 100, Some(step(target)), true).unwrap();
        assert_eq!((done.compacted, done.cleaned), (target, target));
        assert_eq!(table_len(&db, true), kept, "records left after compacting at {target}");
        for (rev, values) in reads {
            assert_eq!(values_at(&db, rev).unwrap(), values, "at {rev}, compacted at {target}");
        }
        assert!(matches!(values_at(&db, target - 1), Err(StoreError::Compacted { .. })));
    }
}

/// A tombstone records the create revision of the life it ends: cleaning at a revision
/// below it leaves that life alone (reads there need it), at or above it removes the whole
/// life, tombstone included.
#[test]
fn a_tombstone_says_when_the_life_it_ends_began() {
    let dir = tempfile::tempdir().unwrap();
    let Loaded { files: db, .. } = open(&dir.path().join("s.redb"), CACHE, &[]).unwrap();
    lives(&db);
    write(&db, vec![put("c", 8, 8, 1)]);
    let batch =
        DiskBatch { revisions: vec![(9, vec![(b"c".to_vec(), None, 8)])], revision: 9, ..Default::default() };
    commit(&db.log, &batch, None).unwrap();
    let step = |target| disk::Compaction { target, walk_lag: 0, walk_min: 1, walk_records: 100 };
    disk::maintain(&db, 100, Some(step(7)), true).unwrap();
    // a@5, b@7, and all of c's life (8 and its tombstone at 9).
    assert_eq!(table_len(&db, true), 4);
    assert_eq!(values_at(&db, 8).unwrap(), ["a@5", "b@7", "c@8"]);
    let done = disk::maintain(&db, 100, Some(step(9)), true).unwrap();
    assert_eq!((done.compacted, done.cleaned), (9, 9));
    assert_eq!(table_len(&db, true), 2);
    assert_eq!(values_at(&db, 9).unwrap(), ["a@5", "b@7"]);
}

#[test]
fn reopening_replays_the_log_above_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let Loaded { files: db, state, .. } = open(&path, CACHE, &[]).unwrap();
    assert_eq!((state.revision, state.checkpointed, state.compacted, state.kvs.len()), (1, 1, 0, 0));
    write(&db, vec![put("a", 2, 2, 1), put("b", 2, 2, 1), put("c", 2, 2, 1)]);
    checkpoint(&db, 100).unwrap();
    write(&db, vec![delete("a", 3)]);
    write(&db, vec![put("b", 4, 2, 2), put("d", 4, 4, 1)]);
    drop(db);
    let Loaded { files: db, state, .. } = open(&path, CACHE, &[]).unwrap();
    assert_eq!((state.revision, state.checkpointed), (4, 2));
    let keys: Vec<_> = state.kvs.keys().map(|k| String::from_utf8_lossy(k).into_owned()).collect();
    assert_eq!(keys, ["b", "c", "d"]);
    let Entry::Hot(b) = &state.kvs[&b"b".to_vec()] else { panic!("no key is cold here") };
    assert_eq!((b.create_revision, b.mod_revision, b.version, b.value.as_slice()), (2, 4, 2, &b"b@4"[..]));
    assert_eq!(values_at(&db, 3).unwrap(), ["b@2", "c@2"]);
}

#[test]
fn a_file_of_another_format_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    {
        let db = Database::create(&path).unwrap();
        let write = db.begin_write().unwrap();
        write.open_table(disk::META).unwrap().insert("schema_version", 1).unwrap();
        write.commit().unwrap();
    }
    let Err(error) = open(&path, CACHE, &[]) else { panic!("a version 1 file must be refused") };
    let message = error.to_string();
    assert!(message.contains("file format version 1") && message.contains("version 3"), "{message}");
}

#[test]
fn a_crash_between_the_checkpoint_and_the_log_trim_is_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let Loaded { files: db, .. } = open(&path, CACHE, &[]).unwrap();
    seven_revisions(&db);
    // The checkpoint and compaction committed in the MVCC file; the writer never trimmed.
    compact(&db, 5).unwrap();
    assert_eq!(table_len(&db, false), 6);
    drop(db);
    let Loaded { files: db, state, log_start, .. } = open(&path, CACHE, &[]).unwrap();
    assert_eq!((state.revision, state.checkpointed, state.compacted, state.cleaned), (7, 7, 5, 5));
    assert_eq!(log_start, 2, "entries at or below the checkpoint are kept, and skipped by replay");
    let keys: Vec<_> = state.kvs.iter().map(|(k, kv)| (k.clone(), kv.meta().mod_revision)).collect();
    assert_eq!(keys, [(b"a".to_vec(), 6), (b"b".to_vec(), 7)]);
    assert_eq!(values_at(&db, 5).unwrap(), ["b@5"]);
    assert_eq!(values_at(&db, 7).unwrap(), ["a@6", "b@7"]);
    // Above the checkpoint, reopen after reopen: the same state (replay is by revision).
    write(&db, vec![put("c", 8, 8, 1)]);
    drop(db);
    for _ in 0..2 {
        let Loaded { files: db, state, .. } = open(&path, CACHE, &[]).unwrap();
        assert_eq!((state.revision, state.checkpointed, state.kvs.len()), (8, 7, 3));
        assert_eq!(values_at(&db, 8).unwrap(), ["a@6", "b@7", "c@8"]);
    }
}

#[test]
fn a_log_that_lacks_revisions_above_the_checkpoint_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let Loaded { files: db, .. } = open(&path, CACHE, &[]).unwrap();
    seven_revisions(&db);
    checkpoint(&db, 1).unwrap();
    // A trim that goes above the checkpoint (which the writer never does).
    let batch = DiskBatch { revision: 7, ..Default::default() };
    commit(&db.log, &batch, Some(2..4)).unwrap();
    drop(db);
    let Err(error) = open(&path, CACHE, &[]) else { panic!("a gap above the checkpoint must be refused") };
    assert!(matches!(error, StoreError::Corrupt(_)), "{error}");
}

#[test]
fn a_one_file_store_of_format_2_is_migrated() {
    use redb::TableDefinition;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    {
        let db = Database::create(&path).unwrap();
        let write = db.begin_write().unwrap();
        {
            let kv = |key: &str, rev| KeyValue {
                key: key.into(),
                value: format!("{key}@{rev}").into_bytes(),
                create_revision: rev,
                mod_revision: rev,
                version: 1,
                lease: None,
            };
            let a = kv("a", 2);
            let mut mvcc = write.open_table(MVCC).unwrap();
            mvcc.insert((&b"a"[..], 2u64), crate::codec::encode_kv(Some(&a)).as_slice()).unwrap();
            let mut log = write.open_table(LOG).unwrap();
            for (rev, key) in [(2u64, "a"), (3, "b")] {
                let kv = kv(key, rev as Revision);
                let entry = crate::codec::encode_log_entry([(key.as_bytes(), Some(&kv), 0)]);
                log.insert(rev, entry.as_slice()).unwrap();
            }
            let leases: TableDefinition<u64, u64> = TableDefinition::new("leases");
            write.open_table(leases).unwrap().insert(9, 30).unwrap();
            let mut meta = write.open_table(disk::META).unwrap();
            for (name, value) in [("schema_version", 2), ("revision", 3), ("checkpointed_revision", 2)] {
                meta.insert(name, value).unwrap();
            }
        }
        write.commit().unwrap();
    }
    for _ in 0..2 {
        let Loaded { files: db, state, leases, .. } = open(&path, CACHE, &[]).unwrap();
        assert_eq!((state.revision, state.checkpointed, state.kvs.len()), (3, 2, 2));
        assert_eq!(leases, [(sb_store::LeaseId(9), 30)]);
        assert_eq!(values_at(&db, 2).unwrap(), ["a@2"]);
        assert_eq!(values_at(&db, 3).unwrap(), ["a@2", "b@3"]);
        let read = db.mvcc.begin_read().unwrap();
        assert!(read.open_table(LOG).is_err(), "the MVCC file no longer holds the log");
    }
}

/// The log overlay while the checkpointer lags, races and compacts: one thread commits
/// to the log (trimming below the durably cleaned revision, as the writer does), one
/// checkpoints and compacts in tiny steps (most of them not fsynced), and readers check
/// every past read and watch catch-up against a model. A read sees each revision exactly
/// once, from the MVCC table or the log, however the two snapshots interleave with the
/// checkpoints and trims.
#[test]
fn past_reads_stay_exact_while_the_checkpointer_and_the_trim_race_them() {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
    use std::sync::Mutex;

    let dir = tempfile::tempdir().unwrap();
    let Loaded { files, .. } = open(&dir.path().join("s.redb"), CACHE, &[]).unwrap();
    let files = Arc::new(files);
    // The state after each revision: key -> value.
    let model: Arc<Mutex<Vec<BTreeMap<String, String>>>> = Arc::new(Mutex::new(vec![BTreeMap::new(); 2]));
    let current = Arc::new(AtomicI64::new(1));
    let cleaned = Arc::new(AtomicI64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    const REVISIONS: i64 = 400;

    let writer = {
        let (files, model, current, cleaned) =
            (files.clone(), model.clone(), current.clone(), cleaned.clone());
        std::thread::spawn(move || {
            let mut log_start = 2;
            let mut state = BTreeMap::new();
            for rev in 2..=REVISIONS + 1 {
                let key = format!("k{}", rev % 7);
                let change = if rev % 5 == 0 && state.contains_key(&key) {
                    state.remove(&key);
                    delete(&key, rev)
                } else {
                    state.insert(key.clone(), format!("{key}@{rev}"));
                    put(&key, rev, rev, 1)
                };
                let (key, _, kv) = change;
                let batch = DiskBatch {
                    revisions: vec![(rev, vec![(key, kv, 0)])],
                    revision: rev,
                    ..Default::default()
                };
                let clean = cleaned.load(Ordering::SeqCst);
                let trim = (clean > log_start).then_some(log_start..clean);
                commit(&files.log, &batch, trim.clone()).unwrap();
                if let Some(trim) = trim {
                    log_start = trim.end;
                }
                model.lock().unwrap().push(state.clone());
                current.store(rev, Ordering::SeqCst);
            }
        })
    };
    let checkpointer = {
        let (files, current, cleaned, done) = (files.clone(), current.clone(), cleaned.clone(), done.clone());
        std::thread::spawn(move || {
            // One step in three is durable, as the checkpointer's are every so often: the
            // others are visible to readers at once, and the writer trims the log only
            // below what a durable one cleaned.
            let mut steps = 0u64;
            while !done.load(Ordering::SeqCst) {
                let step = disk::Compaction {
                    target: current.load(Ordering::SeqCst) - 30,
                    walk_lag: 10,
                    walk_min: 1,
                    walk_records: 3,
                };
                steps += 1;
                let done = disk::maintain(&files, 3, Some(step), steps.is_multiple_of(3)).unwrap();
                if done.durable {
                    cleaned.store(done.cleaned, Ordering::SeqCst);
                }
            }
        })
    };
    let readers: Vec<_> = (0..2)
        .map(|seed| {
            let (files, model, current, done) = (files.clone(), model.clone(), current.clone(), done.clone());
            std::thread::spawn(move || {
                let (mut exact, mut compacted) = (0, 0);
                let mut i = seed;
                while !done.load(Ordering::SeqCst) {
                    i += 1;
                    let now = current.load(Ordering::SeqCst);
                    let rev = (now - (i * 7919) % 45).max(1);
                    let expected: Vec<String> =
                        model.lock().unwrap()[rev as usize].values().cloned().collect();
                    match values_at(&files, rev) {
                        Ok(values) => {
                            assert_eq!(values, expected, "at {rev}, current {now}");
                            exact += 1;
                        }
                        Err(StoreError::Compacted { .. }) => compacted += 1,
                        Err(error) => panic!("{error}"),
                    }
                    match read_history(&files, &KeyRange::prefix(""), rev, now, usize::MAX) {
                        Ok(history) => {
                            let revs: Vec<Revision> = history.batches.iter().map(|b| b.0).collect();
                            let want: Vec<Revision> = (rev..=now).filter(|r| *r >= 2).collect();
                            // Only a tombstone at exactly the compacted revision drops out.
                            assert!(
                                revs.len() + 1 >= want.len() && revs.iter().all(|r| want.contains(r)),
                                "{revs:?}"
                            );
                        }
                        Err(StoreError::Compacted { .. }) => {}
                        Err(error) => panic!("{error}"),
                    }
                }
                (exact, compacted)
            })
        })
        .collect();
    writer.join().unwrap();
    done.store(true, Ordering::SeqCst);
    checkpointer.join().unwrap();
    let mut exact = 0;
    for reader in readers {
        exact += reader.join().unwrap().0;
    }
    assert!(exact > 0, "some reads were served");
    assert!(cleaned.load(Ordering::SeqCst) > 100, "the checkpointer compacted and cleaned as it went");
}

#[test]
fn cold_keys_reopen_without_values_and_read_from_the_mvcc_table_or_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let cold = [b"c".to_vec()];
    let Loaded { files: db, .. } = open(&path, CACHE, &cold).unwrap();
    // c1 is checkpointed; c2 was put twice in revision 3, only in the log; "b" stays hot.
    write(&db, vec![put("c1", 2, 2, 1), put("b", 2, 2, 1), put("c2", 2, 2, 1)]);
    checkpoint(&db, 100).unwrap();
    write(&db, vec![put("c2", 3, 2, 2), put("c2", 3, 2, 3)]);
    drop(db);
    let Loaded { files: db, state, .. } = open(&path, CACHE, &cold).unwrap();
    assert!(matches!(&state.kvs[&b"b".to_vec()], Entry::Hot(kv) if kv.value == b"b@2"));
    let Entry::Cold(c1) = state.kvs[&b"c1".to_vec()] else { panic!("c1 is cold") };
    assert_eq!(c1, Meta::new(2, 2, 1, None));
    let Entry::Cold(c2) = state.kvs[&b"c2".to_vec()] else { panic!("c2 is cold") };
    assert_eq!(c2, Meta::new(2, 3, 3, None));
    let mut reader = ColdReader::open(&db).unwrap();
    assert_eq!(reader.value(b"c1", 2).unwrap(), b"c1@2");
    assert_eq!(reader.value(b"c2", 3).unwrap(), b"c2@3");
    // A record that is not there is corruption, not an empty value.
    assert!(matches!(reader.value(b"c1", 3), Err(StoreError::Corrupt(_))));
    assert!(matches!(reader.value(b"c1", 4), Err(StoreError::Corrupt(_))));
}
