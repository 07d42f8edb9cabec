//! Everything that touches redb: the table layout, loading the state at open, committing a
//! batch, compaction, and reads of history (past revisions, watch catch-up).
//!
//! Tables:
//! - `mvcc`: `(key, revision) -> record` ([`crate::codec`]). redb compares tuple keys
//!   element by element, so every revision of a key is contiguous and a key range is the
//!   tuple range `(start, 0)..(end, 0)`.
//! - `event_log`: `revision -> keys changed at that revision`. Values are not duplicated:
//!   catch-up reads each key's record at `(key, revision)`.
//! - `leases`: `lease id -> granted ttl (s)`. Only grant and revoke write it.
//! - `meta`: current revision, compacted revision, file format version.
//!
//! Every function here is blocking; callers run them on the blocking pool.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use sb_store::{
    Event, EventKind, KeyRange, KeyValue, LeaseId, RangeRequest, RangeResponse, Revision, StoreError,
    StoreResult,
};

use crate::codec::{self, Record};
use crate::state::{MemState, RangeBuilder};

const MVCC: TableDefinition<(&[u8], u64), &[u8]> = TableDefinition::new("mvcc");
const EVENT_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("event_log");
const LEASES: TableDefinition<u64, u64> = TableDefinition::new("leases");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const META_SCHEMA: &str = "schema_version";
const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted_revision";
/// The file format this code reads and writes.
const SCHEMA_VERSION: u64 = 1;

pub(crate) fn storage_error(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("redb: {error}"))
}

fn rev_u64(rev: Revision) -> u64 {
    debug_assert!(rev >= 0, "revisions are never negative");
    rev.max(0) as u64
}

/// What [`open`] finds in the file.
pub(crate) struct Loaded {
    pub(crate) db: Database,
    pub(crate) state: MemState,
    /// Every persisted lease with its granted TTL.
    pub(crate) leases: Vec<(LeaseId, i64)>,
}

/// Opens (or creates) the redb file and rebuilds the current state from the MVCC table.
pub(crate) fn open(path: &Path) -> StoreResult<Loaded> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| {
            StoreError::Unavailable(format!("cannot create directory {}: {e}", parent.display()))
        })?;
    }
    let db = Database::create(path)
        .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
    let write = db.begin_write().map_err(storage_error)?;
    {
        let mut meta = write.open_table(META).map_err(storage_error)?;
        let schema = meta.get(META_SCHEMA).map_err(storage_error)?.map(|v| v.value());
        match schema {
            None => {
                meta.insert(META_SCHEMA, SCHEMA_VERSION).map_err(storage_error)?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(other) => {
                return Err(StoreError::Corrupt(format!(
                    "{} has file format version {other}, this build reads version {SCHEMA_VERSION}",
                    path.display()
                )));
            }
        }
        write.open_table(MVCC).map_err(storage_error)?;
        write.open_table(EVENT_LOG).map_err(storage_error)?;
        write.open_table(LEASES).map_err(storage_error)?;
    }
    write.commit().map_err(storage_error)?;

    let read = db.begin_read().map_err(storage_error)?;
    let meta = read.open_table(META).map_err(storage_error)?;
    let get_meta =
        |name| -> StoreResult<Option<u64>> { Ok(meta.get(name).map_err(storage_error)?.map(|v| v.value())) };
    let mut state = MemState {
        kvs: BTreeMap::new(),
        revision: get_meta(META_REVISION)?.map_or(1, |r| r as Revision),
        compacted: get_meta(META_COMPACTED)?.map_or(0, |r| r as Revision),
    };
    let mvcc = read.open_table(MVCC).map_err(storage_error)?;
    // Records of one key are contiguous and ordered by revision: the last one is current.
    let mut last: Option<(Vec<u8>, u64, Vec<u8>)> = None;
    let finish = |entry: Option<(Vec<u8>, u64, Vec<u8>)>, state: &mut MemState| -> StoreResult<()> {
        if let Some((key, rev, bytes)) = entry {
            if let Some(kv) = codec::decode_record(&bytes)?.into_kv(&key, rev as Revision) {
                state.kvs.insert(key, Arc::new(kv));
            }
        }
        Ok(())
    };
    for entry in mvcc.iter().map_err(storage_error)? {
        let (k, v) = entry.map_err(storage_error)?;
        let (key, rev) = k.value();
        if last.as_ref().is_some_and(|(last_key, _, _)| last_key.as_slice() != key) {
            finish(last.take(), &mut state)?;
        }
        last = Some((key.to_vec(), rev, v.value().to_vec()));
    }
    finish(last, &mut state)?;
    let leases = read
        .open_table(LEASES)
        .map_err(storage_error)?
        .iter()
        .map_err(storage_error)?
        .map(|entry| {
            let (id, ttl) = entry.map_err(storage_error)?;
            Ok((LeaseId(id.value() as i64), ttl.value() as i64))
        })
        .collect::<StoreResult<Vec<_>>>()?;
    drop((meta, mvcc, read));
    Ok(Loaded { db, state, leases })
}

/// One group commit's writes.
#[derive(Default)]
pub(crate) struct DiskBatch {
    /// `(key, revision, state after)`, `None` for a delete.
    pub(crate) records: Vec<(Vec<u8>, Revision, Option<Arc<KeyValue>>)>,
    /// `(revision, keys it changed)`, in revision order.
    pub(crate) revisions: Vec<(Revision, Vec<Vec<u8>>)>,
    pub(crate) granted: Vec<(LeaseId, i64)>,
    pub(crate) removed_leases: Vec<LeaseId>,
    /// The revision after the batch.
    pub(crate) revision: Revision,
}

impl DiskBatch {
    pub(crate) fn is_empty(&self) -> bool {
        self.records.is_empty() && self.granted.is_empty() && self.removed_leases.is_empty()
    }
}

/// Writes a batch in one durable redb transaction.
pub(crate) fn commit(db: &Database, batch: &DiskBatch) -> StoreResult<()> {
    let mut write = db.begin_write().map_err(storage_error)?;
    write.set_durability(Durability::Immediate).map_err(storage_error)?;
    {
        let mut mvcc = write.open_table(MVCC).map_err(storage_error)?;
        for (key, rev, kv) in &batch.records {
            let bytes = codec::encode_kv(kv.as_deref());
            mvcc.insert((key.as_slice(), rev_u64(*rev)), bytes.as_slice()).map_err(storage_error)?;
        }
        let mut log = write.open_table(EVENT_LOG).map_err(storage_error)?;
        for (rev, keys) in &batch.revisions {
            let bytes = codec::encode_keys(keys.iter().map(|k| k.as_slice()));
            log.insert(rev_u64(*rev), bytes.as_slice()).map_err(storage_error)?;
        }
        let mut leases = write.open_table(LEASES).map_err(storage_error)?;
        for (id, ttl) in &batch.granted {
            leases.insert(rev_u64(id.0), rev_u64(*ttl)).map_err(storage_error)?;
        }
        for id in &batch.removed_leases {
            leases.remove(rev_u64(id.0)).map_err(storage_error)?;
        }
        let mut meta = write.open_table(META).map_err(storage_error)?;
        meta.insert(META_REVISION, rev_u64(batch.revision)).map_err(storage_error)?;
    }
    write.commit().map_err(storage_error)
}

/// Removes history below `revision`: per key, every record older than the latest one at
/// or below it (and that one too when it is a tombstone), and event-log entries below it.
///
/// Only keys changed since the previous compaction (`previous`) can have records to remove
/// (anything older was removed then), so the work is proportional to the changes, read
/// from the event log, not to the size of the store.
///
/// redb reuses the pages this frees for later writes, so with automatic compaction the
/// file stops growing at a size set by the retention; nobody ever defragments it by hand.
pub(crate) fn compact(db: &Database, previous: Revision, revision: Revision) -> StoreResult<()> {
    let at = rev_u64(revision);
    let mut write = db.begin_write().map_err(storage_error)?;
    write.set_durability(Durability::Immediate).map_err(storage_error)?;
    {
        let mut log = write.open_table(EVENT_LOG).map_err(storage_error)?;
        let mut changed: BTreeSet<Vec<u8>> = BTreeSet::new();
        for entry in log.range(rev_u64(previous)..=at).map_err(storage_error)? {
            let (_, keys) = entry.map_err(storage_error)?;
            changed.extend(codec::decode_keys(keys.value())?);
        }
        let mut mvcc = write.open_table(MVCC).map_err(storage_error)?;
        for key in changed {
            // Revisions of this key at or below `at`, oldest first, with their tombstone flag.
            let mut records: Vec<(u64, bool)> = Vec::new();
            for entry in mvcc.range((key.as_slice(), 0u64)..=(key.as_slice(), at)).map_err(storage_error)? {
                let (k, v) = entry.map_err(storage_error)?;
                records.push((k.value().1, codec::is_tombstone(v.value())));
            }
            let keep_last = records.last().is_some_and(|(_, tombstone)| !tombstone);
            let doomed = records.len() - usize::from(keep_last);
            for (rev, _) in &records[..doomed] {
                mvcc.remove((key.as_slice(), *rev)).map_err(storage_error)?;
            }
        }
        log.retain_in(..at, |_, _| false).map_err(storage_error)?;
        let mut meta = write.open_table(META).map_err(storage_error)?;
        meta.insert(META_COMPACTED, at).map_err(storage_error)?;
    }
    write.commit().map_err(storage_error)
}

/// Fails with `Compacted` when `requested` is below the compacted revision recorded in the
/// same read transaction, so a read never races a compaction.
fn check_compacted(read: &redb::ReadTransaction, requested: Revision) -> StoreResult<()> {
    let meta = read.open_table(META).map_err(storage_error)?;
    let compacted = meta.get(META_COMPACTED).map_err(storage_error)?.map_or(0, |v| v.value() as Revision);
    if requested < compacted {
        return Err(StoreError::Compacted { requested, compacted: Some(compacted) });
    }
    Ok(())
}

/// A range read at a past revision, from the MVCC table.
pub(crate) fn read_at(
    db: &Database,
    request: &RangeRequest,
    revision: Revision,
    current: Revision,
) -> StoreResult<RangeResponse> {
    let read = db.begin_read().map_err(storage_error)?;
    check_compacted(&read, revision)?;
    let mvcc = read.open_table(MVCC).map_err(storage_error)?;
    let at = rev_u64(revision);
    let mut builder = RangeBuilder::new(request);
    let start = request.range.start();
    let end = request.range.end();
    if end.as_deref().is_some_and(|end| end <= start) {
        return Ok(builder.finish(current));
    }
    let lower = Bound::Included((start, 0u64));
    let upper = match &end {
        Some(end) => Bound::Excluded((end.as_slice(), 0u64)),
        None => Bound::Unbounded,
    };
    let mut latest: Option<(Vec<u8>, u64, Vec<u8>)> = None;
    let emit = |entry: Option<(Vec<u8>, u64, Vec<u8>)>, builder: &mut RangeBuilder| -> StoreResult<()> {
        if let Some((key, rev, bytes)) = entry {
            if let Some(kv) = codec::decode_record(&bytes)?.into_kv(&key, rev as Revision) {
                builder.push(kv);
            }
        }
        Ok(())
    };
    for entry in mvcc.range::<(&[u8], u64)>((lower, upper)).map_err(storage_error)? {
        let (k, v) = entry.map_err(storage_error)?;
        let (key, rev) = k.value();
        if latest.as_ref().is_some_and(|(k, _, _)| k.as_slice() != key) {
            emit(latest.take(), &mut builder)?;
        }
        if rev <= at {
            latest = Some((key.to_vec(), rev, v.value().to_vec()));
        }
    }
    emit(latest, &mut builder)?;
    Ok(builder.finish(current))
}

/// Events of a watch's catch-up, read from the event log.
pub(crate) struct History {
    /// `(revision, events matching the watch)`, only revisions with at least one match.
    pub(crate) batches: Vec<(Revision, Vec<Event>)>,
    /// The last revision read; the next read starts after it.
    pub(crate) read_to: Revision,
}

/// Reads the changes of revisions `from..=to` that fall in `range`, stopping after
/// `max_events` matching events (never inside a revision).
pub(crate) fn read_history(
    db: &Database,
    range: &KeyRange,
    from: Revision,
    to: Revision,
    max_events: usize,
) -> StoreResult<History> {
    let read = db.begin_read().map_err(storage_error)?;
    check_compacted(&read, from)?;
    let log = read.open_table(EVENT_LOG).map_err(storage_error)?;
    let mvcc = read.open_table(MVCC).map_err(storage_error)?;
    let mut history = History { batches: Vec::new(), read_to: from - 1 };
    let mut events_read = 0;
    for entry in log.range(rev_u64(from)..=rev_u64(to)).map_err(storage_error)? {
        let (rev, keys) = entry.map_err(storage_error)?;
        let rev = rev.value();
        let mut events = Vec::new();
        for key in codec::decode_keys(keys.value())? {
            if !range.contains(&key) {
                continue;
            }
            // A tombstone at exactly the compacted revision is compacted away; its event
            // is gone with it, as in etcd.
            let Some(bytes) = mvcc.get((key.as_slice(), rev)).map_err(storage_error)? else {
                continue;
            };
            let record = codec::decode_record(bytes.value())?;
            events.push(event_of(&key, rev as Revision, record));
        }
        history.read_to = rev as Revision;
        if !events.is_empty() {
            events_read += events.len();
            history.batches.push((rev as Revision, events));
        }
        if events_read >= max_events {
            return Ok(history);
        }
    }
    history.read_to = to;
    Ok(history)
}

fn event_of(key: &[u8], revision: Revision, record: Record) -> Event {
    if record.is_tombstone() {
        return delete_event(key, revision);
    }
    let kv = record.into_kv(key, revision).unwrap_or_default();
    Event { kind: EventKind::Put, kv }
}

/// A delete event as etcd sends it: the key and the deleting revision, all else zero.
pub(crate) fn delete_event(key: &[u8], revision: Revision) -> Event {
    Event {
        kind: EventKind::Delete,
        kv: KeyValue { key: key.to_vec(), mod_revision: revision, ..KeyValue::default() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(
        key: &str,
        rev: Revision,
        create: Revision,
        version: i64,
    ) -> (Vec<u8>, Revision, Option<Arc<KeyValue>>) {
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

    fn write(db: &Database, changes: Vec<(Vec<u8>, Revision, Option<Arc<KeyValue>>)>) {
        let revision = changes.iter().map(|c| c.1).max().unwrap();
        let revisions = changes.iter().map(|c| (c.1, vec![c.0.clone()])).collect();
        let batch = DiskBatch { records: changes, revisions, revision, ..DiskBatch::default() };
        commit(db, &batch).unwrap();
    }

    fn values_at(db: &Database, rev: Revision) -> StoreResult<Vec<String>> {
        let response = read_at(db, &RangeRequest::prefix(""), rev, 9)?;
        Ok(response.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.value).into_owned()).collect())
    }

    fn record_count(db: &Database) -> usize {
        db.begin_read().unwrap().open_table(MVCC).unwrap().iter().unwrap().count()
    }

    #[test]
    fn compaction_keeps_exactly_what_reads_at_or_above_it_need() {
        let dir = tempfile::tempdir().unwrap();
        let Loaded { db, .. } = open(&dir.path().join("s.redb")).unwrap();
        write(&db, vec![put("a", 2, 2, 1)]);
        write(&db, vec![put("a", 3, 2, 2)]);
        write(&db, vec![(b"a".to_vec(), 4, None)]);
        write(&db, vec![put("b", 5, 5, 1)]);
        write(&db, vec![put("a", 6, 6, 1)]);
        write(&db, vec![put("b", 7, 5, 2)]);
        assert_eq!(values_at(&db, 3).unwrap(), ["a@3"]);

        compact(&db, 0, 5).unwrap();
        // a: 2, 3 and the tombstone at 4 are gone; b keeps 5 (latest at or below 5).
        assert_eq!(record_count(&db), 3);
        assert!(matches!(values_at(&db, 4), Err(StoreError::Compacted { requested: 4, compacted: Some(5) })));
        assert_eq!(values_at(&db, 5).unwrap(), ["b@5"]);
        assert_eq!(values_at(&db, 6).unwrap(), ["a@6", "b@5"]);
        assert_eq!(values_at(&db, 7).unwrap(), ["a@6", "b@7"]);
        let history = read_history(&db, &KeyRange::prefix(""), 5, 7, 100).unwrap();
        assert_eq!(history.batches.iter().map(|b| b.0).collect::<Vec<_>>(), [5, 6, 7]);
        assert!(read_history(&db, &KeyRange::prefix(""), 4, 7, 100).is_err());

        compact(&db, 5, 7).unwrap();
        assert_eq!(record_count(&db), 2);
        assert_eq!(values_at(&db, 7).unwrap(), ["a@6", "b@7"]);
    }

    #[test]
    fn reopening_rebuilds_the_current_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let Loaded { db, state, .. } = open(&path).unwrap();
        assert_eq!((state.revision, state.compacted, state.kvs.len()), (1, 0, 0));
        write(&db, vec![put("a", 2, 2, 1), put("b", 2, 2, 1)]);
        write(&db, vec![(b"a".to_vec(), 3, None)]);
        drop(db);
        let Loaded { state, .. } = open(&path).unwrap();
        assert_eq!(state.revision, 3);
        assert_eq!(state.kvs.keys().cloned().collect::<Vec<_>>(), [b"b".to_vec()]);
    }
}
