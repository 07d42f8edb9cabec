//! The on-disk encoding of MVCC records and event-log entries (file format version 1).
//!
//! A record is `flags: u8` (bit 0 = tombstone), then `create_revision`, `version` and
//! `lease` as little-endian `i64`, then the value bytes. The mod revision is not stored: it
//! is the revision half of the record's `(key, revision)` table key. An event-log entry is
//! the list of keys a revision changed, each as a little-endian `u32` length and the bytes.
//! This module knows nothing about redb.

use sb_store::{KeyValue, LeaseId, Revision, StoreError, StoreResult};

const TOMBSTONE: u8 = 1;
const HEADER_BYTES: usize = 1 + 3 * 8;

/// One key's state at one revision, as stored in the MVCC table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Record {
    Live { create_revision: Revision, version: i64, lease: Option<LeaseId>, value: Vec<u8> },
    Tombstone,
}

impl Record {
    pub(crate) fn is_tombstone(&self) -> bool {
        matches!(self, Record::Tombstone)
    }

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

pub(crate) fn encode_kv(kv: Option<&KeyValue>) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + kv.map_or(0, |kv| kv.value.len()));
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
            out.extend_from_slice(&[0; 24]);
        }
    }
    out
}

pub(crate) fn decode_record(bytes: &[u8]) -> StoreResult<Record> {
    if bytes.len() < HEADER_BYTES {
        return Err(StoreError::Corrupt(format!(
            "mvcc record is {} bytes, at least {HEADER_BYTES}",
            bytes.len()
        )));
    }
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

/// Whether an encoded record is a tombstone, without decoding the value.
pub(crate) fn is_tombstone(bytes: &[u8]) -> bool {
    bytes.first().is_some_and(|flags| flags & TOMBSTONE != 0)
}

fn read_i64(bytes: &[u8]) -> i64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(bytes);
    i64::from_le_bytes(buf)
}

pub(crate) fn encode_keys<'a>(keys: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for key in keys {
        // Keys are bounded by the request limit (1.5 MiB), far below u32::MAX.
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
    }
    out
}

pub(crate) fn decode_keys(mut bytes: &[u8]) -> StoreResult<Vec<Vec<u8>>> {
    let mut keys = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < 4 {
            return Err(StoreError::Corrupt("event-log entry ends inside a key length".into()));
        }
        let mut len = [0u8; 4];
        len.copy_from_slice(&bytes[..4]);
        let len = u32::from_le_bytes(len) as usize;
        bytes = &bytes[4..];
        if bytes.len() < len {
            return Err(StoreError::Corrupt(format!(
                "event-log key is {len} bytes but only {} remain",
                bytes.len()
            )));
        }
        keys.push(bytes[..len].to_vec());
        bytes = &bytes[len..];
    }
    Ok(keys)
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
        let record = decode_record(&encode_kv(Some(&kv))).unwrap();
        assert_eq!(record.into_kv(b"k", 9), Some(kv));
    }

    #[test]
    fn tombstone_roundtrips() {
        let bytes = encode_kv(None);
        assert!(is_tombstone(&bytes));
        assert_eq!(decode_record(&bytes).unwrap(), Record::Tombstone);
    }

    #[test]
    fn short_record_is_corrupt() {
        assert!(matches!(decode_record(&[0, 1, 2]), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn key_lists_roundtrip() {
        let keys: Vec<Vec<u8>> = vec![b"a".to_vec(), Vec::new(), b"longer key".to_vec()];
        let bytes = encode_keys(keys.iter().map(|k| k.as_slice()));
        assert_eq!(decode_keys(&bytes).unwrap(), keys);
        assert!(decode_keys(&bytes[..bytes.len() - 1]).is_err());
    }
}
