//! The on-disk encoding of MVCC records and log entries (file format version 2).
//!
//! A record is `flags: u8` (bit 0 = tombstone), then `create_revision`, `version` and
//! `lease` as little-endian `i64`, then the value bytes. A tombstone's `create_revision` is
//! that of the life it ends (0 when not known: files written before it was recorded);
//! its version and lease are 0. The mod revision is not stored: it
//! is the revision half of the record's `(key, revision)` table key, or the log entry's
//! revision. A log entry holds every change of one revision, in order, each as the key and
//! the record, both prefixed by their little-endian `u32` length, so the checkpoint copies
//! record bytes into the MVCC table without decoding them. This module knows nothing about
//! redb.

use sb_store::{KeyValue, LeaseId, Revision, StoreError, StoreResult};

use crate::state::Meta;

const TOMBSTONE: u8 = 1;
pub(crate) const HEADER_BYTES: usize = 1 + 3 * 8;

/// One key's state at one revision, as stored in the MVCC table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Record {
    Live { create_revision: Revision, version: i64, lease: Option<LeaseId>, value: Vec<u8> },
    Tombstone,
}

impl Record {
    /// The key-value this record describes, `None` for a tombstone.
    pub(crate) fn into_kv(self, key: &[u8], mod_revision: Revision) -> Option<KeyValue> {
        match self {
            Record::Live { create_revision, version, lease, value } => {
                Some(KeyValue { key: key.to_vec(), value, create_revision, mod_revision, version, lease })
            }
            Record::Tombstone => None,
        }
    }
}

#[cfg(test)]
pub(crate) fn encode_kv(kv: Option<&KeyValue>) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + kv.map_or(0, |kv| kv.value.len()));
    encode_change_into(&mut out, kv, 0);
    out
}

fn record_len(kv: Option<&KeyValue>) -> usize {
    HEADER_BYTES + kv.map_or(0, |kv| kv.value.len())
}

/// A record; for a tombstone (`None`), `ended` is the create revision of the life it ends.
fn encode_change_into(out: &mut Vec<u8>, kv: Option<&KeyValue>, ended: Revision) {
    match kv {
        Some(kv) => {
            out.push(0);
            out.extend_from_slice(&kv.create_revision.to_le_bytes());
            out.extend_from_slice(&kv.version.to_le_bytes());
            out.extend_from_slice(&kv.lease.map_or(0, |l| l.0).to_le_bytes());
            out.extend_from_slice(&kv.value);
        }
        None => {
            out.push(TOMBSTONE);
            out.extend_from_slice(&ended.to_le_bytes());
            out.extend_from_slice(&[0; 16]);
        }
    }
}

pub(crate) fn decode_record(bytes: &[u8]) -> StoreResult<Record> {
    check_header(bytes)?;
    if bytes[0] & TOMBSTONE != 0 {
        return Ok(Record::Tombstone);
    }
    let create_revision = read_i64(&bytes[1..9]);
    let version = read_i64(&bytes[9..17]);
    let lease = read_i64(&bytes[17..25]);
    Ok(Record::Live {
        create_revision,
        version,
        lease: (lease != 0).then_some(LeaseId(lease)),
        value: bytes[HEADER_BYTES..].to_vec(),
    })
}

/// A record's value without copying it; `None` for a tombstone.
pub(crate) fn record_value(bytes: &[u8]) -> StoreResult<Option<&[u8]>> {
    check_header(bytes)?;
    Ok((bytes[0] & TOMBSTONE == 0).then(|| &bytes[HEADER_BYTES..]))
}

/// A record's metadata, with `mod_revision` (not stored in the record); `None` for a
/// tombstone. The value is not read.
pub(crate) fn decode_meta(bytes: &[u8], mod_revision: Revision) -> StoreResult<Option<Meta>> {
    check_header(bytes)?;
    if bytes[0] & TOMBSTONE != 0 {
        return Ok(None);
    }
    let lease = read_i64(&bytes[17..25]);
    Ok(Some(Meta::new(
        read_i64(&bytes[1..9]),
        mod_revision,
        read_i64(&bytes[9..17]),
        (lease != 0).then_some(LeaseId(lease)),
    )))
}

fn check_header(bytes: &[u8]) -> StoreResult<()> {
    if bytes.len() < HEADER_BYTES {
        return Err(StoreError::Corrupt(format!(
            "mvcc record is {} bytes, at least {HEADER_BYTES}",
            bytes.len()
        )));
    }
    Ok(())
}

/// Whether an encoded record is a tombstone, without decoding the value.
pub(crate) fn is_tombstone(bytes: &[u8]) -> bool {
    bytes.first().is_some_and(|flags| flags & TOMBSTONE != 0)
}

/// Whether the key of an encoded record had a record before it in its current life: a
/// tombstone, or a put that is not the key's first (version above 1). `false` for a
/// creation, or bytes too short to tell.
pub(crate) fn had_earlier_record(bytes: &[u8]) -> bool {
    earlier_records_from(bytes).is_some()
}

/// When the key of an encoded record had records before it in its current life, the
/// revision they start at as far as the record tells: the create revision of a put, or of
/// the life a tombstone ends (0 when the tombstone does not say). `None` for a creation (a
/// version 1 put), or bytes too short to tell.
pub(crate) fn earlier_records_from(bytes: &[u8]) -> Option<Revision> {
    if bytes.len() < HEADER_BYTES {
        return None;
    }
    if is_tombstone(bytes) {
        return Some(read_i64(&bytes[1..9]));
    }
    (read_i64(&bytes[9..17]) > 1).then(|| read_i64(&bytes[1..9]))
}

fn read_i64(bytes: &[u8]) -> i64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(bytes);
    i64::from_le_bytes(buf)
}

/// Encodes one revision's changes (`None` = deleted, with the create revision of the life
/// the delete ends) as a log entry.
pub(crate) fn encode_log_entry<'a>(
    changes: impl IntoIterator<Item = (&'a [u8], Option<&'a KeyValue>, Revision)>,
) -> Vec<u8> {
    let changes: Vec<_> = changes.into_iter().collect();
    let size = changes.iter().map(|(key, kv, _)| 8 + key.len() + record_len(*kv)).sum();
    let mut out = Vec::with_capacity(size);
    for (key, kv, ended) in changes {
        // Keys and values are bounded by the request limit (1.5 MiB), far below u32::MAX.
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(&(record_len(kv) as u32).to_le_bytes());
        encode_change_into(&mut out, kv, ended);
    }
    debug_assert_eq!(out.len(), size, "the size computed up front is exact");
    out
}

/// Splits a log entry into `(key, encoded record)` pairs, in the order they were written.
pub(crate) fn decode_log_entry(mut bytes: &[u8]) -> StoreResult<Vec<(&[u8], &[u8])>> {
    fn take<'b>(bytes: &mut &'b [u8], what: &str) -> StoreResult<&'b [u8]> {
        if bytes.len() < 4 {
            return Err(StoreError::Corrupt(format!("log entry ends inside a {what} length")));
        }
        let mut len = [0u8; 4];
        len.copy_from_slice(&bytes[..4]);
        let len = u32::from_le_bytes(len) as usize;
        let rest = &bytes[4..];
        if rest.len() < len {
            return Err(StoreError::Corrupt(format!(
                "log entry {what} is {len} bytes but only {} remain",
                rest.len()
            )));
        }
        let (item, rest) = rest.split_at(len);
        *bytes = rest;
        Ok(item)
    }
    let mut changes = Vec::new();
    while !bytes.is_empty() {
        let key = take(&mut bytes, "key")?;
        let record = take(&mut bytes, "record")?;
        if record.len() < HEADER_BYTES {
            return Err(StoreError::Corrupt(format!(
                "log record is {} bytes, at least {HEADER_BYTES}",
                record.len()
            )));
        }
        changes.push((key, record));
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_record_roundtrips() {
        let kv = KeyValue {
            key: b"k".to_vec(),
            value: b"value".to_vec(),
            create_revision: 7,
            mod_revision: 9,
            version: 3,
            lease: Some(LeaseId(42)),
        };
        let bytes = encode_kv(Some(&kv));
        assert!(had_earlier_record(&bytes), "version 3 overwrote an earlier record");
        let created = encode_kv(Some(&KeyValue { version: 1, ..kv.clone() }));
        assert!(!had_earlier_record(&created), "a creation has nothing earlier");
        assert_eq!(earlier_records_from(&bytes), Some(7), "from its create revision on");
        assert_eq!(record_value(&bytes).unwrap(), Some(&b"value"[..]));
        assert_eq!(decode_meta(&bytes, 9).unwrap(), Some(Meta::of(&kv)));
        let record = decode_record(&bytes).unwrap();
        assert_eq!(record.into_kv(b"k", 9), Some(kv));
    }

    #[test]
    fn tombstone_roundtrips() {
        let bytes = encode_kv(None);
        assert!(is_tombstone(&bytes));
        assert!(had_earlier_record(&bytes), "a delete always follows a record");
        assert_eq!(earlier_records_from(&bytes), Some(0), "a tombstone does not say since when");
        assert_eq!(record_value(&bytes).unwrap(), None);
        assert_eq!(decode_meta(&bytes, 3).unwrap(), None);
        assert_eq!(decode_record(&bytes).unwrap(), Record::Tombstone);
    }

    #[test]
    fn short_record_is_corrupt() {
        assert!(matches!(decode_record(&[0, 1, 2]), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn log_entries_roundtrip() {
        let kv = KeyValue {
            key: b"a".to_vec(),
            value: b"v".to_vec(),
            create_revision: 3,
            mod_revision: 4,
            version: 2,
            lease: None,
        };
        let changes: Vec<(&[u8], Option<&KeyValue>, Revision)> =
            vec![(b"a", Some(&kv), 0), (b"", None, 0), (b"gone", None, 2)];
        let bytes = encode_log_entry(changes.iter().copied());
        let decoded = decode_log_entry(&bytes).unwrap();
        assert_eq!(decoded.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [&b"a"[..], b"", b"gone"]);
        assert_eq!(decode_record(decoded[0].1).unwrap().into_kv(b"a", 4), Some(kv));
        assert!(is_tombstone(decoded[2].1));
        assert_eq!(decode_record(decoded[2].1).unwrap(), Record::Tombstone);
        assert_eq!(earlier_records_from(decoded[2].1), Some(2), "the life it ended began at 2");
        assert_eq!(earlier_records_from(decoded[1].1), Some(0), "not known: from the start");
        assert!(decode_log_entry(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_log_entry(&[]).unwrap().is_empty());
    }
}
