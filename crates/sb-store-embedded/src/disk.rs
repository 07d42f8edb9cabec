//! Everything that writes redb: the two files' layout, loading the state at open,
//! committing a batch, the checkpoint, and compaction. Reads of history live in
//! [`crate::history`].
//!
//! Log first, checkpoint later, in two files so that neither waits for the other's write
//! lock (redb has one writer per database):
//! - the **log file** (`<path>.log`, see [`log_path`]) is written only by group commits:
//!   each one appends the batch's revisions to `log` (sequential keys, so a few dirty pages
//!   whatever keys the batch touched), records the current revision and the lease changes,
//!   in one durable transaction. That fsync is what a request waits for. Every
//!   acknowledged revision is in this file, so it is what survives a kill -9.
//! - the **MVCC file** (`<path>`) is written only by the checkpointer, on its own task: it
//!   copies log entries into the MVCC table (so the random MVCC pages of many batches are
//!   written by one fsync), moves the compacted revision and cleans, and records how far it
//!   got. A checkpoint costs several ms, and group commits no longer wait behind it.
//!
//! Tables of the log file:
//! - `log`: `revision -> every change of that revision` (key and full record). It is the
//!   only copy of revisions above the checkpoint, and it serves watch catch-up.
//! - `leases`: `lease id -> granted ttl (s)`. Only grant and revoke write it.
//! - `meta`: file format version, current revision.
//!
//! Tables of the MVCC file:
//! - `mvcc`: `(key, revision) -> record` ([`crate::codec`]) for every revision up to the
//!   checkpointed one. redb compares tuple keys element by element, so every revision of a
//!   key is contiguous and a key range is the tuple range `(start, 0)..(end, 0)`.
//! - `meta`: file format version, checkpointed, compacted and cleaned revision.
//!
//! Compaction is logical first: the compacted revision moves in a checkpoint's
//! transaction (reads below it fail from that commit on, reads at or above it stay
//! exact), and the records only reads below it needed are removed after: at once for the
//! keys that checkpoint wrote (their pages are dirty anyway), and by a bounded cleanup
//! walk over the log, trailing by another retention, for the rest. Below the cleaned
//! revision nothing unreachable remains, and the log is no longer needed there: the
//! writer trims it, in bounded steps inside later group commits ([`commit`]).
//!
//! Invariants:
//! - `cleaned <= compacted <= checkpointed <= revision` on disk, and the MVCC table holds
//!   nothing above `checkpointed` (in memory `checkpointed` may pass `revision` for the
//!   moment between a commit's log append and its apply; see `record_checkpoint`);
//! - the log file holds every revision from the cleaned one (the writer only trims below a
//!   cleaned revision that the MVCC file recorded durably) up to the current one.
//!
//! Most checkpoints commit the MVCC file without an fsync (redb's `Durability::None`; one
//! is durable at least every second, and at close): readers in this process see them at
//! once, and a kill -9 only takes the file back to its last durable commit, whose
//! checkpoint the log is still complete above (see [`maintain`]).
//!
//! A reader opens a log read transaction first, then an MVCC one ([`crate::history`]):
//! the MVCC snapshot's checkpointed revision C is then at least the cleaned revision
//! the writer trimmed below when the log snapshot was taken (both only grow), so the log
//! snapshot holds every revision in `(C, R]` for any R already committed. A revision is
//! thus read exactly once, from the MVCC table at or below C and from the log above it.
//! A crash between a checkpoint's commit and the log trim is harmless: the log keeps
//! entries at or below C, and replay at open starts above C.
//!
//! Every function here is blocking; callers run them on the blocking pool.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use sb_store::{Event, EventKind, KeyValue, LeaseId, Revision, StoreError, StoreResult};

use crate::codec;
use crate::state::{is_cold, Entry, MemState};

pub(crate) const MVCC: TableDefinition<(&[u8], u64), &[u8]> = TableDefinition::new("mvcc");
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const LEASES: TableDefinition<u64, u64> = TableDefinition::new("leases");
/// In both files, with different entries.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const META_SCHEMA: &str = "schema_version";
/// Log file: the current revision.
const META_REVISION: &str = "revision";
pub(crate) const META_CHECKPOINTED: &str = "checkpointed_revision";
pub(crate) const META_COMPACTED: &str = "compacted_revision";
/// Written at open when absent (files from before cleaning trailed compaction).
pub(crate) const META_CLEANED: &str = "cleaned_revision";
/// The file format this code reads and writes: the MVCC file and its log file. Version 2
/// (one file holding the log, the leases and the revision too) is migrated at open;
/// version 1 (an MVCC table written by every commit) never shipped, so it is refused.
const SCHEMA_VERSION: u64 = 3;
const SCHEMA_ONE_FILE: u64 = 2;

/// The log file that goes with the MVCC file at `path`: the same name with `.log` added.
pub fn log_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".log");
    PathBuf::from(name)
}

/// The store's two redb files.
pub(crate) struct Files {
    /// Written only by the writer (group commits and log trims).
    pub(crate) log: Database,
    /// Written only by the checkpointer (checkpoints and compaction).
    pub(crate) mvcc: Database,
}

pub(crate) fn storage_error(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("redb: {error}"))
}

pub(crate) fn rev_u64(rev: Revision) -> u64 {
    debug_assert!(rev >= 0, "revisions are never negative");
    rev.max(0) as u64
}

/// The revisions the MVCC file's `meta` records, read in one transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MetaRevisions {
    pub(crate) checkpointed: Revision,
    pub(crate) compacted: Revision,
    pub(crate) cleaned: Revision,
}

pub(crate) fn read_meta(meta: &impl ReadableTable<&'static str, u64>) -> StoreResult<MetaRevisions> {
    let get = |name: &str, default: Revision| -> StoreResult<Revision> {
        Ok(meta.get(name).map_err(storage_error)?.map_or(default, |v| v.value() as Revision))
    };
    Ok(MetaRevisions {
        checkpointed: get(META_CHECKPOINTED, 1)?,
        compacted: get(META_COMPACTED, 0)?,
        cleaned: get(META_CLEANED, 0)?,
    })
}

/// The current revision, as the log file's `meta` records it.
pub(crate) fn read_log_revision(meta: &impl ReadableTable<&'static str, u64>) -> StoreResult<Revision> {
    Ok(meta.get(META_REVISION).map_err(storage_error)?.map_or(1, |v| v.value() as Revision))
}

/// The current revision in a log read transaction.
pub(crate) fn log_revision(log: &ReadTransaction) -> StoreResult<Revision> {
    read_log_revision(&log.open_table(META).map_err(storage_error)?)
}

/// What [`open`] finds in the files.
pub(crate) struct Loaded {
    pub(crate) files: Files,
    pub(crate) state: MemState,
    /// Every persisted lease with its granted TTL.
    pub(crate) leases: Vec<(LeaseId, i64)>,
    /// The first revision in the log (the current revision + 1 when it is empty).
    pub(crate) log_start: Revision,
}

fn open_database(path: &Path, cache_bytes: usize) -> StoreResult<Database> {
    Database::builder()
        .set_cache_size(cache_bytes)
        .create(path)
        .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))
}

fn refuse_schema(path: &Path, other: u64) -> StoreError {
    StoreError::Corrupt(format!(
        "{} has file format version {other}, this build reads only version {SCHEMA_VERSION} \
         (move the file away, start empty, and restore a backup into it)",
        path.display()
    ))
}

/// Opens (or creates) the two files and rebuilds the current state: the MVCC table as of
/// the checkpoint, then the log above it replayed in order. The MVCC file gets three
/// quarters of `cache_bytes` as its page cache, the log file the rest.
/// Cold keys (under `cold_prefixes`) keep only their metadata in memory.
pub(crate) fn open(path: &Path, cache_bytes: usize, cold_prefixes: &[Vec<u8>]) -> StoreResult<Loaded> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| {
            StoreError::Unavailable(format!("cannot create directory {}: {e}", parent.display()))
        })?;
    }
    let log_file = log_path(path);
    let mvcc = open_database(path, cache_bytes - cache_bytes / 4)?;
    let log = open_database(&log_file, cache_bytes / 4)?;

    let schema = {
        let read = mvcc.begin_read().map_err(storage_error)?;
        match read.open_table(META) {
            Ok(meta) => meta.get(META_SCHEMA).map_err(storage_error)?.map(|v| v.value()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(error) => return Err(storage_error(error)),
        }
    };
    match schema {
        None | Some(SCHEMA_VERSION) => {}
        Some(SCHEMA_ONE_FILE) => migrate_one_file(&mvcc, &log, path)?,
        Some(other) => return Err(refuse_schema(path, other)),
    }
    let write = mvcc.begin_write().map_err(storage_error)?;
    {
        let mut meta = write.open_table(META).map_err(storage_error)?;
        meta.insert(META_SCHEMA, SCHEMA_VERSION).map_err(storage_error)?;
        // Files from before cleaning trailed compaction were cleaned up to compacted.
        if meta.get(META_CLEANED).map_err(storage_error)?.is_none() {
            let compacted = meta.get(META_COMPACTED).map_err(storage_error)?.map_or(0, |v| v.value());
            meta.insert(META_CLEANED, compacted).map_err(storage_error)?;
        }
        write.open_table(MVCC).map_err(storage_error)?;
    }
    write.commit().map_err(storage_error)?;
    let write = log.begin_write().map_err(storage_error)?;
    {
        let mut meta = write.open_table(META).map_err(storage_error)?;
        let schema = meta.get(META_SCHEMA).map_err(storage_error)?.map(|v| v.value());
        match schema {
            None => {
                meta.insert(META_SCHEMA, SCHEMA_VERSION).map_err(storage_error)?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(other) => return Err(refuse_schema(&log_file, other)),
        }
        write.open_table(LOG).map_err(storage_error)?;
        write.open_table(LEASES).map_err(storage_error)?;
    }
    write.commit().map_err(storage_error)?;

    // The log first, as every reader does (see the module's invariants).
    let log_read = log.begin_read().map_err(storage_error)?;
    let mvcc_read = mvcc.begin_read().map_err(storage_error)?;
    let revisions = read_meta(&mvcc_read.open_table(META).map_err(storage_error)?)?;
    let revision = log_revision(&log_read)?;
    if revision < revisions.checkpointed {
        return Err(StoreError::Corrupt(format!(
            "{} is at revision {revision}, behind {} checkpointed at {} (was the log file replaced?)",
            log_file.display(),
            path.display(),
            revisions.checkpointed
        )));
    }
    let mut state = MemState {
        kvs: BTreeMap::new(),
        revision,
        checkpointed: revisions.checkpointed,
        compacted: revisions.compacted,
        cleaned: revisions.cleaned,
        durably_cleaned: revisions.cleaned,
    };
    let table = mvcc_read.open_table(MVCC).map_err(storage_error)?;
    // Records of one key are contiguous and ordered by revision: the last one is current.
    // A cold key's value is not even copied.
    let mut last: Option<(Vec<u8>, u64, Vec<u8>)> = None;
    let finish = |entry: Option<(Vec<u8>, u64, Vec<u8>)>, state: &mut MemState| -> StoreResult<()> {
        if let Some((key, rev, bytes)) = entry {
            if let Some(entry) = load_entry(&key, rev as Revision, &bytes, cold_prefixes)? {
                state.kvs.insert(key, entry);
            }
        }
        Ok(())
    };
    for entry in table.iter().map_err(storage_error)? {
        let (k, v) = entry.map_err(storage_error)?;
        let (key, rev) = k.value();
        if last.as_ref().is_some_and(|(last_key, _, _)| last_key.as_slice() != key) {
            finish(last.take(), &mut state)?;
        }
        let bytes = v.value();
        let bytes =
            if is_cold(cold_prefixes, key) { &bytes[..bytes.len().min(codec::HEADER_BYTES)] } else { bytes };
        last = Some((key.to_vec(), rev, bytes.to_vec()));
    }
    finish(last, &mut state)?;
    // Acknowledged revisions that were never checkpointed. Entries at or below the
    // checkpoint (a crash before the writer trimmed them) are skipped: replay is by
    // revision, so it is idempotent.
    let table = log_read.open_table(LOG).map_err(storage_error)?;
    let log_start = match table.first().map_err(storage_error)? {
        Some((rev, _)) => rev.value() as Revision,
        None => revision + 1,
    };
    let mut replayed = revisions.checkpointed;
    for entry in table.range(rev_u64(revisions.checkpointed) + 1..).map_err(storage_error)? {
        let (rev, changes) = entry.map_err(storage_error)?;
        let rev = rev.value() as Revision;
        // Every revision has a log entry (only writes get one): a gap means lost history.
        if rev != replayed + 1 {
            return Err(StoreError::Corrupt(format!(
                "{} lacks revision {} (next entry {rev}, checkpointed {})",
                log_file.display(),
                replayed + 1,
                revisions.checkpointed
            )));
        }
        for (key, record) in codec::decode_log_entry(changes.value())? {
            match load_entry(key, rev, record, cold_prefixes)? {
                Some(entry) => state.kvs.insert(key.to_vec(), entry),
                None => state.kvs.remove(key),
            };
        }
        replayed = rev;
    }
    if replayed > state.revision {
        return Err(StoreError::Corrupt(format!(
            "{} has a log entry at revision {replayed} above its revision {}",
            log_file.display(),
            state.revision
        )));
    }
    let leases = log_read
        .open_table(LEASES)
        .map_err(storage_error)?
        .iter()
        .map_err(storage_error)?
        .map(|entry| {
            let (id, ttl) = entry.map_err(storage_error)?;
            Ok((LeaseId(id.value() as i64), ttl.value() as i64))
        })
        .collect::<StoreResult<Vec<_>>>()?;
    drop((table, log_read, mvcc_read));
    Ok(Loaded { files: Files { log, mvcc }, state, leases, log_start })
}

/// A key's state in memory from its latest record; `None` for a tombstone. For a cold key,
/// the record's header is enough.
fn load_entry(
    key: &[u8],
    rev: Revision,
    record: &[u8],
    cold_prefixes: &[Vec<u8>],
) -> StoreResult<Option<Entry>> {
    if is_cold(cold_prefixes, key) {
        return Ok(codec::decode_meta(record, rev)?.map(Entry::Cold));
    }
    Ok(codec::decode_record(record)?.into_kv(key, rev).map(|kv| Entry::Hot(Arc::new(kv))))
}

/// Moves a version 2 file's log, leases and revision into the log file, then drops them
/// from the MVCC file and marks it version 3. The log file is written (durably) first, so
/// a crash in between only repeats the copy at the next open.
fn migrate_one_file(mvcc: &Database, log: &Database, path: &Path) -> StoreResult<()> {
    tracing::info!(path = %path.display(), "moving the store's log into its own file (format 2 to 3)");
    {
        let read = mvcc.begin_read().map_err(storage_error)?;
        let old_log = read.open_table(LOG).map_err(storage_error)?;
        let old_leases = read.open_table(LEASES).map_err(storage_error)?;
        let revision = read_log_revision(&read.open_table(META).map_err(storage_error)?)?;
        let write = log.begin_write().map_err(storage_error)?;
        {
            let mut new_log = write.open_table(LOG).map_err(storage_error)?;
            for entry in old_log.iter().map_err(storage_error)? {
                let (rev, changes) = entry.map_err(storage_error)?;
                new_log.insert(rev.value(), changes.value()).map_err(storage_error)?;
            }
            let mut new_leases = write.open_table(LEASES).map_err(storage_error)?;
            for entry in old_leases.iter().map_err(storage_error)? {
                let (id, ttl) = entry.map_err(storage_error)?;
                new_leases.insert(id.value(), ttl.value()).map_err(storage_error)?;
            }
            let mut meta = write.open_table(META).map_err(storage_error)?;
            meta.insert(META_SCHEMA, SCHEMA_VERSION).map_err(storage_error)?;
            meta.insert(META_REVISION, rev_u64(revision)).map_err(storage_error)?;
        }
        write.commit().map_err(storage_error)?;
    }
    let write = mvcc.begin_write().map_err(storage_error)?;
    write.delete_table(LOG).map_err(storage_error)?;
    write.delete_table(LEASES).map_err(storage_error)?;
    {
        let mut meta = write.open_table(META).map_err(storage_error)?;
        meta.remove(META_REVISION).map_err(storage_error)?;
        meta.insert(META_SCHEMA, SCHEMA_VERSION).map_err(storage_error)?;
    }
    write.commit().map_err(storage_error)
}

/// A key's state after a change: `None` for a delete, then the create revision of the
/// life a delete ends (ignored for a put), which its tombstone records so that cleaning
/// knows whether anything of that life is old enough to remove.
pub(crate) type Change = (Vec<u8>, Option<Arc<KeyValue>>, Revision);

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

/// Writes a batch to the log file in one durable redb transaction: log entries, the
/// revision, lease changes, and the removal of the log entries in `trim` (all below a
/// cleaned revision the MVCC file recorded durably). Never the MVCC file.
pub(crate) fn commit(log: &Database, batch: &DiskBatch, trim: Option<Range<Revision>>) -> StoreResult<()> {
    let mut write = log.begin_write().map_err(storage_error)?;
    write.set_durability(Durability::Immediate).map_err(storage_error)?;
    {
        if !batch.revisions.is_empty() || trim.is_some() {
            let mut table = write.open_table(LOG).map_err(storage_error)?;
            for (rev, changes) in &batch.revisions {
                let bytes = codec::encode_log_entry(
                    changes.iter().map(|(k, kv, ended)| (k.as_slice(), kv.as_deref(), *ended)),
                );
                table.insert(rev_u64(*rev), bytes.as_slice()).map_err(storage_error)?;
            }
            if let Some(trim) = trim {
                table
                    .retain_in(rev_u64(trim.start)..rev_u64(trim.end), |_, _| false)
                    .map_err(storage_error)?;
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

/// A key a checkpoint wrote that may have records to clean, with the revision its earlier
/// records start at, as far as its records tell (see [`codec::earlier_records_from`]).
type ToClean = (Vec<u8>, Revision);

/// Copies log entries above the checkpointed revision into the MVCC table and records the
/// new checkpoint, inside `write`, reading the log snapshot `log`: every entry, or whole
/// revisions until at least `max_records` records moved. Also returns the keys it wrote
/// that had a record before (overwrites and deletes), in key order.
fn checkpoint_in(
    write: &WriteTransaction,
    log: &ReadTransaction,
    max_records: usize,
) -> StoreResult<(Checkpoint, Vec<ToClean>)> {
    let mut meta = write.open_table(META).map_err(storage_error)?;
    let from = read_meta(&meta)?.checkpointed;
    let current = log_revision(log)?;
    if current <= from {
        return Ok((Checkpoint { checkpointed: from, moved: false, more: false }, Vec::new()));
    }
    let table = log.open_table(LOG).map_err(storage_error)?;
    let mut mvcc = write.open_table(MVCC).map_err(storage_error)?;
    let mut records: Vec<(Vec<u8>, u64, Vec<u8>)> = Vec::new();
    let mut to = rev_u64(from);
    for entry in table.range(rev_u64(from) + 1..=rev_u64(current)).map_err(storage_error)? {
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
    // A key whose records here are all creations (version 1 puts) has nothing of its
    // current life to clean; the others with the revision their earlier records start at,
    // as far as the records tell; see `maintain`.
    let mut keys: Vec<ToClean> = Vec::new();
    for (key, _, record) in records {
        let Some(since) = codec::earlier_records_from(&record) else { continue };
        match keys.last_mut() {
            Some((last, earliest)) if *last == key => *earliest = (*earliest).min(since),
            _ => keys.push((key, since)),
        }
    }
    Ok((Checkpoint { checkpointed: to as Revision, moved: true, more }, keys))
}

/// Moves log entries not yet in the MVCC table there, in one durable transaction: whole
/// revisions until at least `max_records` records moved.
#[cfg(test)]
pub(crate) fn checkpoint(files: &Files, max_records: usize) -> StoreResult<Checkpoint> {
    Ok(maintain(files, max_records, None, true)?.checkpoint)
}

/// Automatic compaction, as one maintenance step applies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Compaction {
    /// The compacted revision to reach (`current - retention`); capped at the checkpoint.
    pub(crate) target: Revision,
    /// The cleanup walk trails the compacted revision by this many revisions, so that the
    /// keys rewritten meanwhile were cleaned by their checkpoint for free.
    pub(crate) walk_lag: u64,
    /// The walk runs once it is at least this many revisions behind its target...
    pub(crate) walk_min: u64,
    /// ...and reads this many log records at most per step (whole revisions).
    pub(crate) walk_records: usize,
}

/// What one maintenance step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Maintenance {
    pub(crate) checkpoint: Checkpoint,
    /// The compacted and cleaned revisions after the step.
    pub(crate) compacted: Revision,
    pub(crate) cleaned: Revision,
    /// Whether the step committed durably: everything it and the steps before it wrote
    /// survives a crash from now on.
    pub(crate) durable: bool,
}

/// One maintenance step, in one transaction of the MVCC file: a bounded checkpoint, then
/// with `compaction`:
/// 1. the compacted revision moves up to the target (never above the checkpoint). Reads
///    below it fail from this commit on, so records only they needed may go from now on;
/// 2. the keys the checkpoint just wrote that had a record before (an overwrite or a
///    delete) are cleaned at the compacted revision: their leaf pages are dirty already,
///    so this costs no extra page writes. A key the checkpoint created (version 1), or
///    whose current life was created above the compacted revision, has no record of that
///    life to remove at it; what a deleted earlier life left ends with a tombstone, which
///    the walk reads and cleans;
/// 3. a bounded step of the cleanup walk, when it trails far enough.
///
/// With `durable`, the transaction is fsynced (and makes every earlier non-durable one
/// durable with it). Without, it is visible to every reader of this process at once but
/// a kill -9 may take the file back to its last durable commit. That is safe because the
/// log holds every revision above that commit's checkpoint: the writer trims the log only
/// below the cleaned revision of a *durable* commit (`MemState::durably_cleaned`), and the
/// open replays the log above the file's checkpoint. Compaction and cleaning going back
/// with it is harmless too: the file is then exactly as it was at that commit.
///
/// It reads the log through a read transaction, so group commits go on meanwhile.
pub(crate) fn maintain(
    files: &Files,
    max_records: usize,
    compaction: Option<Compaction>,
    durable: bool,
) -> StoreResult<Maintenance> {
    let log = files.log.begin_read().map_err(storage_error)?;
    let mut write = files.mvcc.begin_write().map_err(storage_error)?;
    let durability = if durable { Durability::Immediate } else { Durability::None };
    write.set_durability(durability).map_err(storage_error)?;
    let (checkpoint, keys) = checkpoint_in(&write, &log, max_records.max(1))?;
    let before = read_meta(&write.open_table(META).map_err(storage_error)?)?;
    let (mut compacted, mut cleaned) = (before.compacted, before.cleaned);
    if let Some(compaction) = compaction {
        let target = compaction.target.min(before.checkpointed);
        if target > compacted {
            compacted = target;
            let mut meta = write.open_table(META).map_err(storage_error)?;
            meta.insert(META_COMPACTED, rev_u64(compacted)).map_err(storage_error)?;
        }
        // Records of a key's current life that start above the compacted revision hold
        // nothing to clean at it.
        let mut doomed = keys.iter().filter(|(_, since)| *since <= compacted).peekable();
        if compacted > 0 && doomed.peek().is_some() {
            let mut mvcc = write.open_table(MVCC).map_err(storage_error)?;
            clean_keys(&mut mvcc, doomed.map(|(key, _)| key.as_slice()), rev_u64(compacted))?;
        }
        let walk_to = compacted.saturating_sub(i64::try_from(compaction.walk_lag).unwrap_or(i64::MAX));
        if u64::try_from(walk_to - cleaned).is_ok_and(|behind| behind >= compaction.walk_min.max(1)) {
            cleaned = walk_in(&write, &log, walk_to, compaction.walk_records.max(1))?;
        }
    }
    // A durable step commits even when it changed nothing: that makes the non-durable
    // commits before it durable.
    if !durable && !checkpoint.moved && compacted == before.compacted && cleaned == before.cleaned {
        write.abort().map_err(storage_error)?;
    } else {
        write.commit().map_err(storage_error)?;
    }
    Ok(Maintenance { checkpoint, compacted, cleaned, durable })
}

/// Checkpoints, then compacts at `revision` and cleans everything below it at once.
/// Returns what the checkpoint did (it moves everything the log held when it started,
/// which includes every revision acknowledged before).
///
/// redb reuses the pages cleaning frees for later writes, so with automatic compaction the
/// files stop growing at a size set by the retention; nobody ever defragments by hand.
pub(crate) fn compact(files: &Files, revision: Revision) -> StoreResult<Checkpoint> {
    let log = files.log.begin_read().map_err(storage_error)?;
    let mut write = files.mvcc.begin_write().map_err(storage_error)?;
    write.set_durability(Durability::Immediate).map_err(storage_error)?;
    let (checkpoint, _) = checkpoint_in(&write, &log, usize::MAX)?;
    let checkpointed = checkpoint.checkpointed;
    if revision > checkpointed {
        // The MVCC table must hold every revision at or below the compacted one before the
        // log below it goes.
        return Err(StoreError::Unavailable(format!(
            "cannot compact at {revision}: only revisions up to {checkpointed} are checkpointed"
        )));
    }
    {
        let mut meta = write.open_table(META).map_err(storage_error)?;
        let compacted = read_meta(&meta)?.compacted.max(revision);
        meta.insert(META_COMPACTED, rev_u64(compacted)).map_err(storage_error)?;
    }
    walk_in(&write, &log, revision, usize::MAX)?;
    write.commit().map_err(storage_error)?;
    Ok(checkpoint)
}

/// Removes, for each key, what no read at or above `at` needs: every record older than
/// the latest one at or below `at`, and that one too when it is a tombstone. Only valid
/// once the compacted revision is at least `at`.
fn clean_keys<'k>(
    mvcc: &mut redb::Table<(&'static [u8], u64), &'static [u8]>,
    keys: impl IntoIterator<Item = &'k [u8]>,
    at: u64,
) -> StoreResult<()> {
    let mut records: Vec<(u64, bool)> = Vec::new();
    for key in keys {
        // Revisions of this key at or below `at`, oldest first, with their tombstone flag.
        records.clear();
        for entry in mvcc.range((key, 0u64)..=(key, at)).map_err(storage_error)? {
            let (k, v) = entry.map_err(storage_error)?;
            records.push((k.value().1, codec::is_tombstone(v.value())));
        }
        let keep_last = records.last().is_some_and(|(_, tombstone)| !tombstone);
        let doomed = records.len() - usize::from(keep_last);
        for (rev, _) in &records[..doomed] {
            mvcc.remove((key, *rev)).map_err(storage_error)?;
        }
    }
    Ok(())
}

/// One step of the cleanup walk inside `write`, from the cleaned revision towards `to`
/// (at most the compacted one): reads the log snapshot from the cleaned revision on, whole
/// revisions until at least `max_records` records were read or `to` is reached, cleans
/// every key it read at the last revision read, and records it as cleaned. The writer
/// trims the log below it afterwards. Returns the cleaned revision after the step.
///
/// Invariant (cleaned = C): no key holds a record that reads at or above C do not need.
/// Only keys changed since C can have records to remove at a later revision, so the work
/// is proportional to the changes, read from the log, not to the size of the store.
fn walk_in(
    write: &WriteTransaction,
    log: &ReadTransaction,
    to: Revision,
    max_records: usize,
) -> StoreResult<Revision> {
    let mut meta = write.open_table(META).map_err(storage_error)?;
    let revisions = read_meta(&meta)?;
    let to = to.min(revisions.compacted);
    let from = revisions.cleaned;
    if to <= from {
        return Ok(from);
    }
    let table = log.open_table(LOG).map_err(storage_error)?;
    let mut changed: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut read = 0usize;
    let mut at = rev_u64(from);
    // The entry at the cleaned revision itself is read again: harmless, its keys hold
    // nothing to remove at it.
    for entry in table.range(rev_u64(from)..=rev_u64(to)).map_err(storage_error)? {
        let (rev, changes) = entry.map_err(storage_error)?;
        at = rev.value();
        let changes = codec::decode_log_entry(changes.value())?;
        read += changes.len();
        // A creation (a version 1 put) has nothing of its key's current life before it, and
        // what an earlier life left ends with a tombstone, itself a change the walk reads
        // (in this step or an earlier one): the key needs cleaning only for its other
        // changes.
        changed.extend(
            changes
                .into_iter()
                .filter(|(_, record)| codec::had_earlier_record(record))
                .map(|(k, _)| k.to_vec()),
        );
        if read >= max_records {
            break;
        }
    }
    // Every revision has a log entry (only writes get one), so reading up to `to` without
    // stopping covers it whole.
    if read < max_records {
        at = rev_u64(to);
    }
    if at <= rev_u64(from) {
        return Ok(from);
    }
    let mut mvcc = write.open_table(MVCC).map_err(storage_error)?;
    clean_keys(&mut mvcc, changed.iter().map(Vec::as_slice), at)?;
    meta.insert(META_CLEANED, at).map_err(storage_error)?;
    Ok(at as Revision)
}

/// A delete event as etcd sends it: the key and the deleting revision, all else zero.
pub(crate) fn delete_event(key: &[u8], revision: Revision) -> Event {
    Event {
        kind: EventKind::Delete,
        kv: KeyValue { key: key.to_vec(), mod_revision: revision, ..KeyValue::default() },
    }
}
