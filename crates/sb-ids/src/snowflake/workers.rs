//! The store recipes of Snowflake workers.
//!
//! - `ids/workers/{n}` is put on the node's worker lease: when the node dies, the lease
//!   expires and worker id n is free again (Leaf never reclaims them).
//! - `ids/watermarks/{n}` is *not* leased and only grows. Its holder issues only
//!   timestamps below it, and writes a higher one (ahead of the clock) before it gets
//!   there, with a compare on its lease, so a node that lost the worker can no longer move
//!   it. Whoever takes worker n next issues only at or above it.
//! - `ids/snowflake` records the layout's epoch: a node with another epoch refuses to start.

use std::collections::{BTreeMap, BTreeSet};

use sb_store::codec::{decode, encode, StoredValue};
use sb_store::{
    Compare, CompareOp, CompareTarget, KeyRange, LeaseId, OpResponse, RangeRequest, SharedStore, Txn, TxnOp,
};
use serde::{Deserialize, Serialize};

use crate::error::{bounded, IdError, IdResult};

pub const WORKERS_PREFIX: &str = "ids/workers/";
pub const WATERMARKS_PREFIX: &str = "ids/watermarks/";
pub const EPOCH_KEY: &str = "ids/snowflake";

/// Who holds a worker id (the key itself is on the holder's lease).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub node: String,
    pub taken_ms: u64,
}

impl StoredValue for WorkerRecord {
    const KIND: &'static str = "snowflake worker";
    const FORMAT_VERSION: u32 = 1;
}

/// A worker id's high-water mark: no ID of this worker has a timestamp at or above it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Watermark {
    /// Unix milliseconds.
    pub ts_ms: u64,
}

impl StoredValue for Watermark {
    const KIND: &'static str = "snowflake watermark";
    const FORMAT_VERSION: u32 = 1;
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct EpochRecord {
    epoch_ms: u64,
}

impl StoredValue for EpochRecord {
    const KIND: &'static str = "snowflake layout";
    const FORMAT_VERSION: u32 = 1;
}

pub(crate) fn worker_key(n: u16) -> Vec<u8> {
    format!("{WORKERS_PREFIX}{n}").into_bytes()
}

pub(crate) fn watermark_key(n: u16) -> Vec<u8> {
    format!("{WATERMARKS_PREFIX}{n}").into_bytes()
}

fn number_after(prefix: &str, key: &[u8]) -> Option<u16> {
    std::str::from_utf8(key.strip_prefix(prefix.as_bytes())?).ok()?.parse().ok()
}

fn corrupt(e: impl std::fmt::Display) -> IdError {
    IdError::Corrupt(e.to_string())
}

pub(crate) fn encode_value<T: StoredValue>(value: &T) -> IdResult<Vec<u8>> {
    encode(value).map_err(corrupt)
}

/// Records the epoch on first use; refuses another one.
pub(crate) async fn check_epoch(store: &SharedStore, epoch_ms: u64) -> IdResult<()> {
    let value = encode_value(&EpochRecord { epoch_ms })?;
    let txn = Txn::new()
        .when([Compare::absent(EPOCH_KEY)])
        .and_then([TxnOp::put(EPOCH_KEY, value)])
        .or_else([TxnOp::get(EPOCH_KEY)]);
    let response = bounded("the epoch check", store.txn(txn)).await?;
    if response.succeeded {
        return Ok(());
    }
    let Some(OpResponse::Range(range)) = response.responses.first() else {
        return Err(IdError::Corrupt("the epoch read answered nothing".into()));
    };
    let Some(kv) = range.kvs.first() else { return Ok(()) };
    let stored: EpochRecord = decode(&kv.value).map_err(corrupt)?;
    if stored.epoch_ms != epoch_ms {
        return Err(IdError::invalid(
            "epoch",
            format!(
                "--ids-epoch-ms is {epoch_ms}, but this store's Snowflake epoch is {}: every node must use the same epoch",
                stored.epoch_ms
            ),
        ));
    }
    Ok(())
}

/// What the store says about the worker pool right now.
pub(crate) struct PoolState {
    pub taken: BTreeSet<u16>,
    /// Worker → the lease its key is on.
    pub held_by: BTreeMap<u16, LeaseId>,
    /// Worker → (mark in Unix ms, the mark key's mod revision).
    pub marks: BTreeMap<u16, (u64, i64)>,
}

impl PoolState {
    pub fn mark_of(&self, n: u16) -> (u64, i64) {
        self.marks.get(&n).copied().unwrap_or((0, 0))
    }
}

pub(crate) async fn read_pool(store: &SharedStore) -> IdResult<PoolState> {
    let workers =
        bounded("the worker read", store.range(RangeRequest::prefix(WORKERS_PREFIX).keys_only())).await?;
    let marks = bounded("the mark read", store.range(RangeRequest::prefix(WATERMARKS_PREFIX))).await?;
    let taken = workers.kvs.iter().filter_map(|kv| number_after(WORKERS_PREFIX, &kv.key)).collect();
    let held_by = workers
        .kvs
        .iter()
        .filter_map(|kv| Some((number_after(WORKERS_PREFIX, &kv.key)?, kv.lease?)))
        .collect();
    let mut by_worker = BTreeMap::new();
    for kv in &marks.kvs {
        if let Some(n) = number_after(WATERMARKS_PREFIX, &kv.key) {
            let mark: Watermark = decode(&kv.value).map_err(corrupt)?;
            by_worker.insert(n, (mark.ts_ms, kv.mod_revision));
        }
    }
    Ok(PoolState { taken, held_by, marks: by_worker })
}

/// Takes worker `n` if it is still free and its mark unchanged, writing the new mark.
pub(crate) async fn try_take(
    store: &SharedStore,
    n: u16,
    seen_mark_revision: i64,
    lease: LeaseId,
    record: &WorkerRecord,
    new_mark_ms: u64,
) -> IdResult<bool> {
    let txn = Txn::new()
        .when([
            Compare::absent(worker_key(n)),
            Compare::mod_revision(watermark_key(n), CompareOp::Equal, seen_mark_revision),
        ])
        .and_then([
            TxnOp::put_with_lease(worker_key(n), encode_value(record)?, lease),
            TxnOp::put(watermark_key(n), encode_value(&Watermark { ts_ms: new_mark_ms })?),
        ]);
    Ok(bounded("taking a worker id", store.txn(txn)).await?.succeeded)
}

/// Writes a higher mark for worker `n`, only while `lease` still holds it. `false` means
/// the worker is lost.
pub(crate) async fn renew_mark(store: &SharedStore, n: u16, lease: LeaseId, mark_ms: u64) -> IdResult<bool> {
    let txn = Txn::new()
        .when([Compare::new(worker_key(n), CompareOp::Equal, CompareTarget::Lease(Some(lease)))])
        .and_then([TxnOp::put(watermark_key(n), encode_value(&Watermark { ts_ms: mark_ms })?)]);
    Ok(bounded("the mark renewal", store.txn(txn)).await?.succeeded)
}

/// Gives worker `n` back (its mark stays).
pub(crate) async fn release(store: &SharedStore, n: u16, lease: LeaseId) -> IdResult<()> {
    let txn = Txn::new()
        .when([Compare::new(worker_key(n), CompareOp::Equal, CompareTarget::Lease(Some(lease)))])
        .and_then([TxnOp::Delete(KeyRange::key(worker_key(n)))]);
    bounded("releasing a worker id", store.txn(txn)).await?;
    Ok(())
}
