//! Reads of cold values: a cold key keeps only its metadata in memory ([`crate::state`]), so
//! its current value is read from the files, at `(key, mod_revision)`.
//!
//! A [`ColdReader`] opens a log read transaction, then an MVCC one, as every history read
//! does ([`crate::history`]), and **must be opened while the in-memory state that named the
//! values is held** (its read lock, or by the writer during a batch). Then every live key
//! of that state at mod revision M has its record in the snapshots:
//! - M at or below the MVCC snapshot's checkpointed revision C: the MVCC table holds
//!   `(key, M)`. Compaction removes a record only when a later record of the key is at or
//!   below the compacted revision, and every compaction in the snapshot was decided at an
//!   in-memory revision no later than the held state's (the target is at most the current
//!   revision when it is chosen, and revisions only grow), where the key's latest record
//!   was still M.
//! - M above C: the log snapshot holds revision M. M was appended before it was applied to
//!   memory, so before the log snapshot; and the log is trimmed only below a cleaned
//!   revision the MVCC file recorded before, at most C (see [`crate::disk`]).
//!
//! After opening, the reads themselves may run without the lock (the snapshots are fixed),
//! so a large cold range does not hold back the writer.
//!
//! Every function here is blocking; callers run them on the blocking pool (or the writer).

use redb::{ReadOnlyTable, ReadableDatabase};
use sb_store::{Revision, StoreError, StoreResult};

use crate::codec;
use crate::disk::{read_meta, rev_u64, storage_error, Files, LOG, META, MVCC};
use crate::state::ColdValues;

/// Snapshots of both files for reading current values of cold keys.
pub(crate) struct ColdReader {
    log: ReadOnlyTable<u64, &'static [u8]>,
    mvcc: ReadOnlyTable<(&'static [u8], u64), &'static [u8]>,
    checkpointed: Revision,
}

impl ColdReader {
    /// Opens the snapshots. Call it while holding the in-memory state whose cold values
    /// will be read (see the module's documentation).
    pub(crate) fn open(files: &Files) -> StoreResult<Self> {
        // The log first: see the module's documentation.
        let log_read = files.log.begin_read().map_err(storage_error)?;
        let mvcc_read = files.mvcc.begin_read().map_err(storage_error)?;
        let checkpointed = read_meta(&mvcc_read.open_table(META).map_err(storage_error)?)?.checkpointed;
        Ok(ColdReader {
            log: log_read.open_table(LOG).map_err(storage_error)?,
            mvcc: mvcc_read.open_table(MVCC).map_err(storage_error)?,
            checkpointed,
        })
    }
}

fn missing(key: &[u8], mod_revision: Revision) -> StoreError {
    StoreError::Corrupt(format!(
        "the value of {:?} at revision {mod_revision} is missing from the store files",
        String::from_utf8_lossy(key)
    ))
}

impl ColdValues for ColdReader {
    fn value(&mut self, key: &[u8], mod_revision: Revision) -> StoreResult<Vec<u8>> {
        // A tombstone or no record at all: the snapshots lack what the state named.
        let value = |record: &[u8]| -> StoreResult<Vec<u8>> {
            codec::record_value(record)?.map(<[u8]>::to_vec).ok_or_else(|| missing(key, mod_revision))
        };
        if mod_revision <= self.checkpointed {
            return match self.mvcc.get((key, rev_u64(mod_revision))).map_err(storage_error)? {
                Some(record) => value(record.value()),
                None => Err(missing(key, mod_revision)),
            };
        }
        let Some(entry) = self.log.get(rev_u64(mod_revision)).map_err(storage_error)? else {
            return Err(missing(key, mod_revision));
        };
        // A key changed twice in one revision keeps its last state.
        match codec::decode_log_entry(entry.value())?.into_iter().rev().find(|(k, _)| *k == key) {
            Some((_, record)) => value(record),
            None => Err(missing(key, mod_revision)),
        }
    }
}

/// The writer's source of cold values: opens a [`ColdReader`] at the first one it needs.
/// The writer holds the in-memory state for the whole batch, which is what the reader
/// needs.
pub(crate) struct ColdLoader<'f> {
    files: &'f Files,
    reader: Option<ColdReader>,
}

impl<'f> ColdLoader<'f> {
    pub(crate) fn new(files: &'f Files) -> Self {
        ColdLoader { files, reader: None }
    }
}

impl ColdValues for ColdLoader<'_> {
    fn value(&mut self, key: &[u8], mod_revision: Revision) -> StoreResult<Vec<u8>> {
        let reader = match &mut self.reader {
            Some(reader) => reader,
            None => self.reader.insert(ColdReader::open(self.files)?),
        };
        reader.value(key, mod_revision)
    }
}
