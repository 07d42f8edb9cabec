//! Reads of history from redb: ranges at a past revision and watch catch-up.
//!
//! A past revision R is served from two read transactions, the log file's first, then the
//! MVCC file's: the MVCC table gives the state at `min(R, checkpointed)`, and the log
//! entries in `(checkpointed, R]` are laid over it. In that order the log snapshot holds
//! every revision the MVCC snapshot lacks: the writer trims the log only below a cleaned
//! revision the MVCC file had recorded durably before, and the cleaned revision is at most
//! the checkpointed one, which only grows (see [`crate::disk`]). Watch catch-up reads the
//! log only: it holds every record of every revision not yet cleaned, so every revision
//! not yet compacted.
//!
//! Every function here is blocking; callers run them on the blocking pool.

use std::collections::BTreeMap;
use std::ops::Bound;

use redb::ReadableDatabase;
use sb_store::{Event, EventKind, KeyRange, RangeRequest, RangeResponse, Revision, StoreError, StoreResult};

use crate::codec::{self, Record};
use crate::disk::{self, read_meta, rev_u64, storage_error, Files, MetaRevisions, LOG, META, MVCC};
use crate::state::RangeBuilder;

/// The revisions the MVCC snapshot records, failing with `Compacted` when `requested` is
/// below the compacted one, so a read never races a compaction.
fn check_compacted(read: &redb::ReadTransaction, requested: Revision) -> StoreResult<MetaRevisions> {
    let revisions = read_meta(&read.open_table(META).map_err(storage_error)?)?;
    if requested < revisions.compacted {
        return Err(StoreError::Compacted { requested, compacted: Some(revisions.compacted) });
    }
    Ok(revisions)
}

/// A key's record as of the read revision: `(mod revision, encoded record)`.
type Latest = (u64, Vec<u8>);

/// A range read at a past revision.
pub(crate) fn read_at(
    files: &Files,
    request: &RangeRequest,
    revision: Revision,
    current: Revision,
) -> StoreResult<RangeResponse> {
    // The log first: see the module's documentation.
    let log_read = files.log.begin_read().map_err(storage_error)?;
    let read = files.mvcc.begin_read().map_err(storage_error)?;
    let revisions = check_compacted(&read, revision)?;
    let mut builder = RangeBuilder::new(request);
    let start = request.range.start();
    let end = request.range.end();
    if end.as_deref().is_some_and(|end| end <= start) {
        return Ok(builder.finish(current));
    }
    let at = rev_u64(revision);

    // Changes in (checkpointed, revision], last one per key: they shadow the MVCC table.
    let mut overlay: BTreeMap<Vec<u8>, Latest> = BTreeMap::new();
    if revision > revisions.checkpointed {
        let log = log_read.open_table(LOG).map_err(storage_error)?;
        for entry in log.range(rev_u64(revisions.checkpointed) + 1..=at).map_err(storage_error)? {
            let (rev, changes) = entry.map_err(storage_error)?;
            for (key, record) in codec::decode_log_entry(changes.value())? {
                if request.range.contains(key) {
                    overlay.insert(key.to_vec(), (rev.value(), record.to_vec()));
                }
            }
        }
    }

    let emit = |key: &[u8], (rev, bytes): Latest, builder: &mut RangeBuilder| -> StoreResult<()> {
        if let Some(kv) = codec::decode_record(&bytes)?.into_kv(key, rev as Revision) {
            builder.push(kv);
        }
        Ok(())
    };
    // Emits a key's state at `revision` in key order: overlay keys before it first, then the
    // overlay's record for it if any, else the MVCC one.
    let mut settle = |key: Vec<u8>, latest: Latest, builder: &mut RangeBuilder| -> StoreResult<()> {
        while let Some(entry) = overlay.first_entry().filter(|e| e.key() < &key) {
            let (k, l) = entry.remove_entry();
            emit(&k, l, builder)?;
        }
        match overlay.remove(&key) {
            Some(shadow) => emit(&key, shadow, builder),
            None => emit(&key, latest, builder),
        }
    };

    let mvcc = read.open_table(MVCC).map_err(storage_error)?;
    let lower = Bound::Included((start, 0u64));
    let upper = match &end {
        Some(end) => Bound::Excluded((end.as_slice(), 0u64)),
        None => Bound::Unbounded,
    };
    let mut latest: Option<(Vec<u8>, Latest)> = None;
    for entry in mvcc.range::<(&[u8], u64)>((lower, upper)).map_err(storage_error)? {
        let (k, v) = entry.map_err(storage_error)?;
        let (key, rev) = k.value();
        if latest.as_ref().is_some_and(|(k, _)| k.as_slice() != key) {
            if let Some((k, l)) = latest.take() {
                settle(k, l, &mut builder)?;
            }
        }
        if rev <= at {
            latest = Some((key.to_vec(), (rev, v.value().to_vec())));
        }
    }
    if let Some((k, l)) = latest {
        settle(k, l, &mut builder)?;
    }
    for (key, shadow) in overlay {
        emit(&key, shadow, &mut builder)?;
    }
    Ok(builder.finish(current))
}

/// Events of a watch's catch-up, read from the log.
pub(crate) struct History {
    /// `(revision, events matching the watch)`, only revisions with at least one match.
    pub(crate) batches: Vec<(Revision, Vec<Event>)>,
    /// The last revision read; the next read starts after it.
    pub(crate) read_to: Revision,
}

/// Reads the changes of revisions `from..=to` that fall in `range`, stopping after
/// `max_events` matching events (never inside a revision).
pub(crate) fn read_history(
    files: &Files,
    range: &KeyRange,
    from: Revision,
    to: Revision,
    max_events: usize,
) -> StoreResult<History> {
    // The log first: when `from` is not compacted in the MVCC snapshot, the log snapshot
    // still holds it (it is trimmed only below the cleaned revision, at most the compacted
    // one).
    let log_read = files.log.begin_read().map_err(storage_error)?;
    let compacted = check_compacted(&files.mvcc.begin_read().map_err(storage_error)?, from)?.compacted;
    let log = log_read.open_table(LOG).map_err(storage_error)?;
    let mut history = History { batches: Vec::new(), read_to: from - 1 };
    let mut events_read = 0;
    for entry in log.range(rev_u64(from)..=rev_u64(to)).map_err(storage_error)? {
        let (rev, changes) = entry.map_err(storage_error)?;
        let rev = rev.value() as Revision;
        let mut events = Vec::new();
        for (key, record) in codec::decode_log_entry(changes.value())? {
            if !range.contains(key) {
                continue;
            }
            // A tombstone at exactly the compacted revision is compacted away from the
            // MVCC table; its event is gone with it, as in etcd.
            if rev == compacted && codec::is_tombstone(record) {
                continue;
            }
            events.push(event_of(key, rev, codec::decode_record(record)?));
        }
        history.read_to = rev;
        if !events.is_empty() {
            events_read += events.len();
            history.batches.push((rev, events));
        }
        if events_read >= max_events {
            return Ok(history);
        }
    }
    history.read_to = to;
    Ok(history)
}

fn event_of(key: &[u8], revision: Revision, record: Record) -> Event {
    match record.into_kv(key, revision) {
        Some(kv) => Event { kind: EventKind::Put, kv },
        None => disk::delete_event(key, revision),
    }
}

#[cfg(test)]
mod tests;
