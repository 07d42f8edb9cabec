//! History on disk: the log, the checkpoint, compaction and reopening, below the writer.

use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTableMetadata};
use sb_store::{EventKind, KeyRange, KeyValue, RangeRequest, Revision, StoreError, StoreResult};

use super::{read_at, read_history};
use crate::disk::{self, checkpoint, commit, compact, open, Checkpoint, DiskBatch, Loaded, LOG, MVCC};

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
fn write(db: &Database, changes: Vec<Change>) {
    let revision = changes.iter().map(|c| c.1).max().unwrap();
    let mut batch = DiskBatch { revision, ..DiskBatch::default() };
    for (key, rev, kv) in changes {
        match batch.revisions.last_mut() {
            Some((last, entries)) if *last == rev => entries.push((key, kv)),
            _ => batch.revisions.push((rev, vec![(key, kv)])),
        }
    }
    commit(db, &batch).unwrap();
}

fn values_at(db: &Database, rev: Revision) -> StoreResult<Vec<String>> {
    let response = read_at(db, &RangeRequest::prefix(""), rev, 9)?;
    Ok(response.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.value).into_owned()).collect())
}

fn table_len(db: &Database, mvcc: bool) -> u64 {
    let read = db.begin_read().unwrap();
    match mvcc {
        true => read.open_table(MVCC).unwrap().len().unwrap(),
        false => read.open_table(LOG).unwrap().len().unwrap(),
    }
}

/// a: put 2, put 3, deleted 4, put 6; b: put 5, put 7.
fn seven_revisions(db: &Database) {
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
    let Loaded { db, .. } = open(&dir.path().join("s.redb"), CACHE).unwrap();
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
    let Loaded { db, .. } = open(&dir.path().join("s.redb"), CACHE).unwrap();
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
fn three_more_revisions(db: &Database) {
    write(db, vec![put("a", 3, 2, 2)]);
    write(db, vec![delete("a", 4)]);
    write(db, vec![put("b", 5, 2, 2)]);
}

#[test]
fn past_reads_straddling_the_checkpoint_merge_mvcc_and_log() {
    let dir = tempfile::tempdir().unwrap();
    let Loaded { db, .. } = open(&dir.path().join("s.redb"), CACHE).unwrap();
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
    let Loaded { db, .. } = open(&dir.path().join("s.redb"), CACHE).unwrap();
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
    let Loaded { db, .. } = open(&dir.path().join("s.redb"), CACHE).unwrap();
    seven_revisions(&db);
    assert_eq!(values_at(&db, 3).unwrap(), ["a@3"]);

    let checkpoint = compact(&db, 5).unwrap();
    assert_eq!(checkpoint, Checkpoint { checkpointed: 7, moved: true, more: false }, "it checkpoints first");
    // a: 2, 3 and the tombstone at 4 are gone; b keeps 5 (latest at or below 5).
    assert_eq!(table_len(&db, true), 3);
    assert_eq!(table_len(&db, false), 3, "log entries 5, 6 and 7 remain");
    assert!(matches!(values_at(&db, 4), Err(StoreError::Compacted { requested: 4, compacted: Some(5) })));
    assert_eq!(values_at(&db, 5).unwrap(), ["b@5"]);
    assert_eq!(values_at(&db, 6).unwrap(), ["a@6", "b@5"]);
    assert_eq!(values_at(&db, 7).unwrap(), ["a@6", "b@7"]);
    let history = read_history(&db, &KeyRange::prefix(""), 5, 7, 100).unwrap();
    assert_eq!(history.batches.iter().map(|b| b.0).collect::<Vec<_>>(), [5, 6, 7]);
    assert!(read_history(&db, &KeyRange::prefix(""), 4, 7, 100).is_err());

    // After compaction, new revisions go to the log again and reads merge them.
    write(&db, vec![delete("b", 8)]);
    assert_eq!(values_at(&db, 8).unwrap(), ["a@6"]);
    assert_eq!(compact(&db, 8).unwrap().checkpointed, 8);
    // The tombstone at the compacted revision goes, and so does its event.
    assert_eq!(table_len(&db, true), 1);
    assert_eq!(values_at(&db, 8).unwrap(), ["a@6"]);
    assert!(read_history(&db, &KeyRange::prefix(""), 8, 8, 100).unwrap().batches.is_empty());
}

#[test]
fn reopening_replays_the_log_above_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let Loaded { db, state, .. } = open(&path, CACHE).unwrap();
    assert_eq!((state.revision, state.checkpointed, state.compacted, state.kvs.len()), (1, 1, 0, 0));
    write(&db, vec![put("a", 2, 2, 1), put("b", 2, 2, 1), put("c", 2, 2, 1)]);
    checkpoint(&db, 100).unwrap();
    write(&db, vec![delete("a", 3)]);
    write(&db, vec![put("b", 4, 2, 2), put("d", 4, 4, 1)]);
    drop(db);
    let Loaded { db, state, .. } = open(&path, CACHE).unwrap();
    assert_eq!((state.revision, state.checkpointed), (4, 2));
    let keys: Vec<_> = state.kvs.keys().map(|k| String::from_utf8_lossy(k).into_owned()).collect();
    assert_eq!(keys, ["b", "c", "d"]);
    let b = &state.kvs[&b"b".to_vec()];
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
    let Err(error) = open(&path, CACHE) else { panic!("a version 1 file must be refused") };
    let message = error.to_string();
    assert!(message.contains("file format version 1") && message.contains("version 2"), "{message}");
}
