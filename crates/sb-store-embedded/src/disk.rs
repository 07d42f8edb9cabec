//! Everything that writes redb: the table layout, loading the state at open, committing a
//! batch, the checkpoint, and compaction. Reads of history live in [`crate::history`].
//!
//! Log first, checkpoint later. A group commit writes only the `log` (sequential keys, so a
//! few dirty pages whatever keys the batch touched), the current revision and lease changes,
//! in one durable transaction: that fsync is what a request waits for. The checkpoint,
//! run by the writer between batches, later copies the log into the MVCC table, so the
//! random MVCC pages of many batches are written by one fsync.
//!
//! Tables:
//! - `mvcc`: `(key, revision) -> record` ([`crate::codec`]) for every revision up to the
//!   checkpointed one. redb compares tuple keys element by element, so every revision of a
//!   key is contiguous and a key range is the tuple range `(start, 0)..(end, 0)`.
//! - `log`: `revision -> every change of that revision` (key and full record). It is the
//!   only copy of revisions above the checkpoint, and it serves watch catch-up.
//! - `leases`: `lease id -> granted ttl (s)`. Only grant and revoke write it.
//! - `meta`: file format version, current, checkpointed and compacted revision.
//!
//! Invariant: `compacted <= checkpointed <= revision`, and the MVCC table holds nothing
//! above `checkpointed`. A reader that reads the MVCC table and the log in one read
//! transaction therefore sees each revision exactly once.
//!
//! Every function here is blocking; callers run them on the blocking pool.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use sb_store::{Event, EventKind, KeyValue, LeaseId, Revision, StoreError, StoreResult};

use crate::codec;
use crate::state::MemState;

pub(crate) const MVCC: TableDefinition<(&[u8], u64), &[u8]> = TableDefinition::new("mvcc");
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const LEASES: TableDefinition<u64, u64> = TableDefinition::new("leases");
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const META_SCHEMA: &str = "schema_version";
const META_REVISION: &str = "revision";
pub(crate) const META_CHECKPOINTED: &str = "checkpointed_revision";
pub(crate) const META_COMPACTED: &str = "compacted_revision";
/// The file format this code reads and writes. Version 1 (an MVCC table written by every
/// commit, and a keys-only event log) never shipped, so it is refused, not migrated.
const SCHEMA_VERSION: u64 = 2;

pub(crate) fn storage_error(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("redb: {error}"))
}

pub(crate) fn rev_u64(rev: Revision) -> u64 {
    debug_assert!(rev >= 0, "revisions are never negative");
    rev.max(0) as u64
}

/// The revisions `meta` records, read in one transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MetaRevisions {
    pub(crate) revision: Revision,
    pub(crate) checkpointed: Revision,
    pub(crate) compacted: Revision,
}

pub(crate) fn read_meta(meta: &impl ReadableTable<&'static str, u64>) -> StoreResult<MetaRevisions> {
    let get = |name: &str, default: Revision| -> StoreResult<Revision> {
        Ok(meta.get(name).map_err(storage_error)?.map_or(default, |v| v.value() as Revision))
    };
    Ok(MetaRevisions {
        revision: get(META_REVISION, 1)?,
        checkpointed: get(META_CHECKPOINTED, 1)?,
        compacted: get(META_COMPACTED, 0)?,
    })
}

/// What [`open`] finds in the file.
pub(crate) struct Loaded {
    pub(crate) db: Database,
    pub(crate) state: MemState,
    /// Every persisted lease with its granted TTL.
    pub(crate) leases: Vec<(LeaseId, i64)>,
}

/// Opens (or creates) the redb file and rebuilds the current state: the MVCC table as of
/// the checkpoint, then the log above it replayed in order.
pub(crate) fn open(path: &Path, cache_bytes: usize) -> StoreResult<Loaded> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| {
            StoreError::Unavailable(format!("cannot create directory {}: {e}", parent.display()))
        })?;
    }
    let db = Database::builder()
        .set_cache_size(cache_bytes)
        .create(path)
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
                    "{} has file format version {other}, this build reads only version {SCHEMA_VERSION} \
                     (move the file away, start empty, and restore a backup into it)",
                    path.display()
                )));
            }
        }
        write.open_table(MVCC).map_err(storage_error)?;
        write.open_table(LOG).map_err(storage_error)?;
        write.open_table(LEASES).map_err(storage_error)?;
    }
    write.commit().map_err(storage_error)?;

    let read = db.begin_read().map_err(storage_error)?;
    let revisions = read_meta(&read.open_table(META).map_err(storage_error)?)?;
    let mut state = MemState {
        kvs: BTreeMap::new(),
        revision: revisions.revision,
        checkpointed: revisions.checkpointed,
        compacted: revisions.compacted,
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
    // Acknowledged revisions that were never checkpointed.
    let log = read.open_table(LOG).map_err(storage_error)?;
    let mut replayed = revisions.checkpointed;
    for entry in log.range(rev_u64(revisions.checkpointed) + 1..).map_err(storage_error)? {
        let (rev, changes) = entry.map_err(storage_error)?;
        let rev = rev.value() as Revision;
        for (key, record) in codec::decode_log_entry(changes.value())? {
            match codec::decode_record(record)?.into_kv(key, rev) {
                Some(kv) => state.kvs.insert(key.to_vec(), Arc::new(kv)),
                None => state.kvs.remove(key),
            };
        }
        replayed = rev;
    }
    if replayed > state.revision {
        return Err(StoreError::Corrupt(format!(
            "{} has a log entry at revision {replayed} above its revision {}",
            path.display(),
            state.revision
        )));
    }
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
    drop((log, mvcc, read));
    Ok(Loaded { db, state, leases })
}

/// A key's state after a change: `None` for a delete.
pub(crate) type Change = (Vec<u8>, Option<Arc<KeyValue>>);

/// One group commit's writes.
#[derive(Default)]
pub(crate) struct DiskBatch {
    /// `(revision, its changes in order)`, in revision order: the log entries.
    pub(crate) revisions: Vec<(Revision, Vec<Change>)>,
    pub(crate) granted: Vec<(LeaseId, i64)>,
    pub(crate) removed_leases: Vec<LeaseId>,
    /// The revision after the batch.
    pub(crate) revision: Revision,
}

impl DiskBatch {
    pub(crate) fn is_empty(&self) -> bool {
        self.revisions.is_empty() && self.granted.is_empty() && self.removed_leases.is_empty()
    }
}

/// Writes a batch in one durable redb transaction: log entries, the revision, and lease
/// changes. Never the MVCC table (that is the checkpoint's job).
pub(crate) fn commit(db: &Database, batch: &DiskBatch) -> StoreResult<()> {
    let mut write = db.begin_write().map_err(storage_error)?;
    write.set_durability(Durability::Immediate).map_err(storage_error)?;
    {
        if !batch.revisions.is_empty() {
            let mut log = write.open_table(LOG).map_err(storage_error)?;
            for (rev, changes) in &batch.revisions {
                let bytes =
                    codec::encode_log_entry(changes.iter().map(|(k, kv)| (k.as_slice(), kv.as_deref())));
                log.insert(rev_u64(*rev), bytes.as_slice()).map_err(storage_error)?;
            }
        }
        if !batch.granted.is_empty() || !batch.removed_leases.is_empty() {
            let mut leases = write.open_table(LEASES).map_err(storage_error)?;
            for (id, ttl) in &batch.granted {
                leases.insert(rev_u64(id.0), rev_u64(*ttl)).map_err(storage_error)?;
            }
            for id in &batch.removed_leases {
                leases.remove(rev_u64(id.0)).map_err(storage_error)?;
            }
        }
        let mut meta = write.open_table(META).map_err(storage_error)?;
        meta.insert(META_REVISION, rev_u64(batch.revision)).map_err(storage_error)?;
    }
    write.commit().map_err(storage_error)
}

/// What one checkpoint did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    /// Every revision up to this one is now in the MVCC table.
    pub(crate) checkpointed: Revision,
    /// Whether it moved anything.
    pub(crate) moved: bool,
    /// Whether revisions remain above the checkpoint (it stopped at its record budget).
    pub(crate) more: bool,
}

/// Copies log entries above the checkpointed revision into the MVCC table and records the
/// new checkpoint, inside `write`: every entry, or whole revisions until at least
/// `max_records` records moved.
fn checkpoint_in(write: &WriteTransaction, max_records: usize) -> StoreResult<Checkpoint> {
    let mut meta = write.open_table(META).map_err(storage_error)?;
    let revisions = read_meta(&meta)?;
    let (from, current) = (revisions.checkpointed, revisions.revision);
    if current <= from {
        return Ok(Checkpoint { checkpointed: from, moved: false, more: false });
    }
    let log = write.open_table(LOG).map_err(storage_error)?;
    let mut mvcc = write.open_table(MVCC).map_err(storage_error)?;
    let mut records: Vec<(Vec<u8>, u64, Vec<u8>)> = Vec::new();
    let mut to = rev_u64(from);
    for entry in log.range(rev_u64(from) + 1..=rev_u64(current)).map_err(storage_error)? {
        let (rev, changes) = entry.map_err(storage_error)?;
        to = rev.value();
        for (key, record) in codec::decode_log_entry(changes.value())? {
            records.push((key.to_vec(), to, record.to_vec()));
        }
        if records.len() >= max_records {
            break;
        }
    }
    // Every revision has a log entry (only writes get one), so stopping below the current
    // revision means the budget ran out.
    let more = to < rev_u64(current);
    if !more {
        to = rev_u64(current);
    }
    // In key order, so consecutive inserts land on the same leaf pages. The sort is stable:
    // a key changed twice in one revision keeps its last state.
    records.sort_by(|a, b| (a.0.as_slice(), a.1).cmp(&(b.0.as_slice(), b.1)));
    for (key, rev, record) in &records {
        mvcc.insert((key.as_slice(), *rev), record.as_slice()).map_err(storage_error)?;
    }
    meta.insert(META_CHECKPOINTED, to).map_err(storage_error)?;
    Ok(Checkpoint { checkpointed: to as Revision, moved: true, more })
}

/// Moves log entries not yet in the MVCC table there, in one durable transaction: whole
/// revisions until at least `max_records` records moved, so one checkpoint holds the
/// writer for a bounded time.
#[cfg(test)]
pub(crate) fn checkpoint(db: &Database, max_records: usize) -> StoreResult<Checkpoint> {
    Ok(maintain(db, max_records, None)?.checkpoint)
}

/// A bounded step of automatic compaction: towards which revision, and how many log
/// records (whole revisions, so it may go over) one step reads at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CompactStep {
    pub(crate) target: Revision,
    pub(crate) max_records: usize,
}

/// What one maintenance step (a checkpoint, then maybe a compaction step) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Maintenance {
    pub(crate) checkpoint: Checkpoint,
    /// The compacted revision after the step.
    pub(crate) compacted: Revision,
}

/// One maintenance step in one durable transaction: a bounded checkpoint, then, when
/// `compact` asks for it, a bounded compaction step towards its target (never above the
/// checkpoint). Both dirty the same MVCC pages when the same keys are rewritten, and they
/// share one fsync.
pub(crate) fn maintain(
    db: &Database,
    max_records: usize,
    compact: Option<CompactStep>,
) -> StoreResult<Maintenance> {
    let mut write = db.begin_write().map_err(storage_error)?;
    write.set_durability(Durability::Immediate).map_err(storage_error)?;
    let checkpoint = checkpoint_in(&write, max_records.max(1))?;
    let before = read_meta(&write.open_table(META).map_err(storage_error)?)?.compacted;
    let compacted = match compact {
        Some(step) => compact_in(&write, step.target, step.max_records.max(1))?,
        None => before,
    };
    if !checkpoint.moved && compacted == before {
        write.abort().map_err(storage_error)?;
    } else {
        write.commit().map_err(storage_error)?;
    }
    Ok(Maintenance { checkpoint, compacted })
}

/// Checkpoints, then removes history below `revision`: per key, every MVCC record older
/// than the latest one at or below it (and that one too when it is a tombstone), and log
/// entries below it. Returns what the checkpoint did (it moves everything).
///
/// redb reuses the pages this frees for later writes, so with automatic compaction the
/// file stops growing at a size set by the retention; nobody ever defragments it by hand.
pub(crate) fn compact(db: &Database, revision: Revision) -> StoreResult<Checkpoint> {
    let mut write = db.begin_write().map_err(storage_error)?;
    write.set_durability(Durability::Immediate).map_err(storage_error)?;
    let checkpoint = checkpoint_in(&write, usize::MAX)?;
    let checkpointed = checkpoint.checkpointed;
    if revision > checkpointed {
        // The MVCC table must hold every revision at or below the compacted one before the
        // log below it goes.
        return Err(StoreError::Unavailable(format!(
            "cannot compact at {revision}: only revisions up to {checkpointed} are checkpointed"
        )));
    }
    compact_in(&write, revision, usize::MAX)?;
    write.commit().map_err(storage_error)?;
    Ok(checkpoint)
}

/// Compacts inside `write`, from the recorded compacted revision towards `target` (capped
/// at the checkpoint): reads the log from the compacted revision on, whole revisions until
/// at least `max_records` records were read or `target` is reached, and compacts at the
/// last revision read. Returns the compacted revision after the step.
///
/// Only keys changed since the previous compaction can have records to remove (anything
/// older was removed then), so the work is proportional to the changes, read from the log,
/// not to the size of the store. Each step leaves the compacted revision a single global
/// horizon: it moves up to `at` only in the transaction that removed every record below
/// `at` that reads at or above `at` do not need.
fn compact_in(write: &WriteTransaction, target: Revision, max_records: usize) -> StoreResult<Revision> {
    let mut meta = write.open_table(META).map_err(storage_error)?;
    let revisions = read_meta(&meta)?;
    let target = target.min(revisions.checkpointed);
    if target <= revisions.compacted {
        return Ok(revisions.compacted);
    }
    let mut log = write.open_table(LOG).map_err(storage_error)?;
    let mut changed: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut read = 0usize;
    let mut at = rev_u64(revisions.compacted);
    // The entry at the compacted revision itself is read again: harmless, its keys' records
    // below it are gone already.
    for entry in log.range(rev_u64(revisions.compacted)..=rev_u64(target)).map_err(storage_error)? {
        let (rev, changes) = entry.map_err(storage_error)?;
        at = rev.value();
        let changes = codec::decode_log_entry(changes.value())?;
        read += changes.len();
        changed.extend(changes.into_iter().map(|(k, _)| k.to_vec()));
        if read >= max_records {
            break;
        }
    }
    // Every revision has a log entry (only writes get one), so reading up to the target
    // without stopping covers it whole.
    if read < max_records {
        at = rev_u64(target);
    }
    if at <= rev_u64(revisions.compacted) {
        return Ok(revisions.compacted);
    }
    let mut mvcc = write.open_table(MVCC).map_err(storage_error)?;
    let mut records: Vec<(u64, bool)> = Vec::new();
    for key in changed {
        // Revisions of this key at or below `at`, oldest first, with their tombstone flag.
        records.clear();
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
    meta.insert(META_COMPACTED, at).map_err(storage_error)?;
    Ok(at as Revision)
}

/// A delete event as etcd sends it: the key and the deleting revision, all else zero.
pub(crate) fn delete_event(key: &[u8], revision: Revision) -> Event {
    Event {
        kind: EventKind::Delete,
        kv: KeyValue { key: key.to_vec(), mod_revision: revision, ..KeyValue::default() },
    }
}
