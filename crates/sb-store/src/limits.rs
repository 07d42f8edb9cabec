//! Request limits, as etcd applies them, checked before a request is sent or applied.
//!
//! The embedded adapter enforces the same limits as etcd by default, so code that works
//! embedded also works on etcd. Both adapters call [`Limits::check_txn`]: the rule lives here.

use std::collections::HashSet;

use crate::error::{StoreError, StoreResult};
use crate::types::{KeyRange, Txn, TxnOp};

/// etcd's default `--max-request-bytes`: 1.5 MiB.
pub const ETCD_MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// etcd's default `--max-txn-ops`.
pub const ETCD_MAX_TXN_OPS: usize = 128;
/// etcd's minimum lease TTL with default election settings (`ceil(1.5 * 1000 ms)`).
pub const MIN_LEASE_TTL_SECS: i64 = 2;
/// etcd's maximum lease TTL.
pub const MAX_LEASE_TTL_SECS: i64 = 9_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_request_bytes: ETCD_MAX_REQUEST_BYTES, max_txn_ops: ETCD_MAX_TXN_OPS }
    }
}

impl Limits {
    /// Checks a transaction against etcd 3.4's rules: each list (compares, success ops,
    /// failure ops) holds at most `max_txn_ops`; the encoded request fits in
    /// `max_request_bytes`; no key is written twice in one branch; no key is empty.
    pub fn check_txn(&self, txn: &Txn) -> StoreResult<()> {
        for (list, count) in [
            ("compares", txn.compares.len()),
            ("success operations", txn.success.len()),
            ("failure operations", txn.failure.len()),
        ] {
            if count > self.max_txn_ops {
                return Err(StoreError::TooManyOps { list, count, limit: self.max_txn_ops });
            }
        }
        for compare in &txn.compares {
            check_key(&compare.key)?;
        }
        check_branch(&txn.success)?;
        check_branch(&txn.failure)?;
        self.check_size(txn_request_bytes(txn))
    }

    pub fn check_size(&self, bytes: usize) -> StoreResult<()> {
        if bytes > self.max_request_bytes {
            return Err(StoreError::RequestTooLarge { bytes, limit: self.max_request_bytes });
        }
        Ok(())
    }
}

/// Refuses an empty key, which etcd refuses too.
pub fn check_key(key: &[u8]) -> StoreResult<()> {
    if key.is_empty() {
        return Err(StoreError::InvalidArgument("key is empty".into()));
    }
    Ok(())
}

/// Checks a lease TTL request and returns the TTL a store grants for it.
pub fn granted_ttl(requested_secs: i64) -> StoreResult<i64> {
    if requested_secs < 0 {
        return Err(StoreError::InvalidArgument(format!(
            "lease ttl is {requested_secs} s, it must not be negative"
        )));
    }
    if requested_secs > MAX_LEASE_TTL_SECS {
        return Err(StoreError::InvalidArgument(format!(
            "lease ttl is {requested_secs} s, limit is {MAX_LEASE_TTL_SECS} s"
        )));
    }
    Ok(requested_secs.max(MIN_LEASE_TTL_SECS))
}

/// etcd refuses a branch where two puts name the same key, or a put falls inside a
/// deleted range. Ranges may overlap anything, and deletes may overlap each other.
fn check_branch(ops: &[TxnOp]) -> StoreResult<()> {
    let mut put_keys: HashSet<&[u8]> = HashSet::new();
    let mut deletes: Vec<&KeyRange> = Vec::new();
    for op in ops {
        match op {
            TxnOp::Put { key, .. } => {
                check_key(key)?;
                if !put_keys.insert(key.as_slice()) {
                    return Err(duplicate(key));
                }
            }
            TxnOp::Delete(range) => {
                check_key(range.start()).or_else(|e| match range {
                    KeyRange::Prefix(_) | KeyRange::From(_) => Ok(()),
                    _ => Err(e),
                })?;
                deletes.push(range);
            }
            TxnOp::Range(req) => {
                if let KeyRange::Key(k) = &req.range {
                    check_key(k)?;
                }
            }
        }
    }
    for key in &put_keys {
        if deletes.iter().any(|range| range.contains(key)) {
            return Err(duplicate(key));
        }
    }
    Ok(())
}

fn duplicate(key: &[u8]) -> StoreError {
    StoreError::DuplicateKey { key: String::from_utf8_lossy(key).into_owned() }
}

/// The size of a transaction as etcd sees it: its protobuf encoding, give or take a few
/// bytes of framing (etcd's own check runs on the marshalled raft request, which adds a
/// small header; adapters map etcd's refusal to the same error).
pub fn txn_request_bytes(txn: &Txn) -> usize {
    let compares: usize = txn
        .compares
        .iter()
        .map(|c| {
            let target = match &c.target {
                crate::types::CompareTarget::Value(v) => field(v.len()),
                _ => 11,
            };
            field(field(c.key.len()) + target + 4)
        })
        .sum();
    let ops: usize = txn.success.iter().chain(&txn.failure).map(|op| field(op_bytes(op))).sum();
    compares + ops
}

/// The encoded size of a single put, as a plain `PutRequest`.
pub fn put_request_bytes(key: &[u8], value: &[u8]) -> usize {
    field(key.len()) + field(value.len()) + 11
}

fn op_bytes(op: &TxnOp) -> usize {
    match op {
        TxnOp::Put { key, value, .. } => field(put_request_bytes(key, value)),
        TxnOp::Delete(range) => field(range_bytes(range)),
        TxnOp::Range(req) => field(range_bytes(&req.range) + 24),
    }
}

fn range_bytes(range: &KeyRange) -> usize {
    field(range.start().len()) + field(range.end().map_or(1, |e| e.len()))
}

/// A length-delimited protobuf field: tag, varint length, payload.
fn field(len: usize) -> usize {
    1 + varint_len(len) + len
}

fn varint_len(mut n: usize) -> usize {
    let mut bytes = 1;
    while n >= 0x80 {
        n >>= 7;
        bytes += 1;
    }
    bytes
}
