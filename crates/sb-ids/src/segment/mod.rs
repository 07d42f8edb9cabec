//! Segment IDs (Leaf's segment mode), per namespace and tag.
//!
//! A tag's record `ids/segments/{ns}/{tag}` holds the next unallocated ID (`max`) and the
//! tag's base step. A node allocates `[max, max+step)` with a compare-and-swap on the
//! record's mod revision, and serves IDs from memory: a current segment and, fetched in
//! the background once 10% of the current one is used, the next. The step adapts to
//! consumption (doubling when a segment lasts under half the target time, halving when it
//! lasts over twice that), bounded by the tag's step and `max_step`. IDs are unique across
//! nodes (ranges never overlap) and strictly increasing within a node; while the store is
//! briefly unreachable, the buffered segments keep IDs flowing.

mod buffer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;
use rand::Rng;
use sb_store::codec::{decode, encode, StoredValue};
use sb_store::{Compare, CompareOp, KeyRange, SharedStore, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use crate::error::{bounded, IdError, IdResult};
use crate::names::{check_name, MAX_COUNT};
use buffer::{Segment, TagBuffer, Take};

pub const SEGMENTS_PREFIX: &str = "ids/segments/";
/// The largest ID a segment tag hands out (IDs stay positive as signed 64-bit numbers).
pub const MAX_SEGMENT_ID: u64 = i64::MAX as u64;
/// The largest step a tag may be created with.
pub const MAX_TAG_STEP: u64 = 100_000_000;
/// Attempts of one allocation against concurrent allocators.
const MAX_CAS_ATTEMPTS: usize = 64;

#[derive(Clone, Debug)]
pub struct SegmentOptions {
    /// The step of a tag created on first use.
    pub default_step: u64,
    /// The adaptive step never grows past this.
    pub max_step: u64,
    /// Whether a request for an unknown tag creates it (start 1, the default step), or is
    /// refused with a 404.
    pub auto_create: bool,
    /// A segment should last about this long at the measured rate.
    pub target_segment_ms: u64,
    /// How long a request waits for a segment when both buffers are empty.
    pub fetch_wait_ms: u64,
    /// How many tags one node buffers at most (memory stays bounded whatever clients
    /// ask for); a request for one more tag is refused.
    pub max_buffered_tags: usize,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        SegmentOptions {
            default_step: 1_000,
            max_step: 1_000_000,
            auto_create: true,
            target_segment_ms: 60_000,
            fetch_wait_ms: 3_000,
            max_buffered_tags: 10_000,
        }
    }
}

/// A tag's record in the store.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TagRecord {
    /// The next ID no segment has been allocated from.
    pub max: u64,
    /// The base step (the adaptive step never goes below it).
    pub step: u64,
    pub created_ms: u64,
}

impl StoredValue for TagRecord {
    const KIND: &'static str = "segment tag";
    const FORMAT_VERSION: u32 = 1;
}

/// A tag as the API lists it, with this node's buffers when it has served the tag.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TagStatus {
    pub namespace: String,
    pub tag: String,
    /// The next unallocated ID (every node's segments lie below it).
    pub max: u64,
    pub step: u64,
    /// This node's buffers: how many IDs it can hand out without the store, and how long
    /// that lasts at the rate it measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_buffer: Option<BufferStatus>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BufferStatus {
    pub remaining: u64,
    pub current_step: u64,
    pub next_segment_ready: bool,
    pub rate_per_sec: f64,
    /// `remaining / rate_per_sec`; absent before a rate was measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds_left: Option<f64>,
}

pub struct SegmentService {
    store: SharedStore,
    options: SegmentOptions,
    buffers: RwLock<HashMap<(String, String), Arc<TagBuffer>>>,
    allocations: AtomicU64,
    allocation_conflicts: AtomicU64,
    issued: AtomicU64,
}

/// Counters for metrics, read at each scrape.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SegmentStats {
    pub issued: u64,
    /// Segments allocated by this node.
    pub allocations: u64,
    /// Allocations that lost a compare-and-swap to another node and were retried.
    pub allocation_conflicts: u64,
    pub buffered_tags: u64,
}

fn tag_key(namespace: &str, tag: &str) -> Vec<u8> {
    format!("{SEGMENTS_PREFIX}{namespace}/{tag}").into_bytes()
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn corrupt(e: impl std::fmt::Display) -> IdError {
    IdError::Corrupt(e.to_string())
}

impl SegmentService {
    pub fn new(store: SharedStore, mut options: SegmentOptions) -> Arc<Self> {
        options.default_step = options.default_step.clamp(1, MAX_TAG_STEP);
        options.max_step = options.max_step.max(options.default_step);
        Arc::new(SegmentService {
            store,
            options,
            buffers: RwLock::new(HashMap::new()),
            allocations: AtomicU64::new(0),
            allocation_conflicts: AtomicU64::new(0),
            issued: AtomicU64::new(0),
        })
    }

    pub fn stats(&self) -> SegmentStats {
        SegmentStats {
            issued: self.issued.load(Ordering::Relaxed),
            allocations: self.allocations.load(Ordering::Relaxed),
            allocation_conflicts: self.allocation_conflicts.load(Ordering::Relaxed),
            buffered_tags: self.buffers.read().len() as u64,
        }
    }

    /// The step of a tag created without one.
    pub fn default_step(&self) -> u64 {
        self.options.default_step
    }

    /// `count` IDs (1 to 10,000) of a tag, increasing.
    pub async fn next_ids(self: &Arc<Self>, namespace: &str, tag: &str, count: usize) -> IdResult<Vec<u64>> {
        let mut out = Vec::with_capacity(count);
        self.fill(namespace, tag, &mut out, count).await?;
        Ok(out)
    }

    /// Appends `count` IDs of a tag to `out`.
    pub async fn fill(
        self: &Arc<Self>,
        namespace: &str,
        tag: &str,
        out: &mut Vec<u64>,
        count: usize,
    ) -> IdResult<()> {
        if count == 0 || count as u64 > MAX_COUNT {
            return Err(IdError::invalid(
                "count",
                format!("count is {count}, must be from 1 to {MAX_COUNT}"),
            ));
        }
        let buffer = self.buffer(namespace, tag).await?;
        let want = out.len() + count;
        loop {
            let refilled = buffer.refilled.notified();
            tokio::pin!(refilled);
            refilled.as_mut().enable();
            match buffer.take(out, want, self.options.max_step, self.options.target_segment_ms) {
                Take { done: true, prefetch, .. } => {
                    if prefetch {
                        self.spawn_fetch(&buffer);
                    }
                    self.issued.fetch_add(count as u64, Ordering::Relaxed);
                    return Ok(());
                }
                Take { failed: Some(error), .. } => return Err(error),
                Take { prefetch, .. } => {
                    if prefetch {
                        self.spawn_fetch(&buffer);
                    }
                }
            }
            let wait = Duration::from_millis(self.options.fetch_wait_ms);
            if tokio::time::timeout(wait, refilled).await.is_err() {
                return Err(IdError::Refused(format!(
                    "the segment buffers of tag {tag:?} in namespace {namespace:?} are used up and no new segment arrived within {} ms (is the store reachable?)",
                    wait.as_millis()
                )));
            }
        }
    }

    fn spawn_fetch(self: &Arc<Self>, buffer: &Arc<TagBuffer>) {
        let (service, buffer) = (self.clone(), buffer.clone());
        tokio::spawn(async move {
            let result = service.allocate(&buffer.namespace, &buffer.tag, buffer.wanted_step()).await;
            buffer.refill(result);
        });
    }

    /// This node's buffers of a tag; the first use reads (or creates) the tag and fetches
    /// its first segment.
    async fn buffer(&self, namespace: &str, tag: &str) -> IdResult<Arc<TagBuffer>> {
        let map_key = (namespace.to_owned(), tag.to_owned());
        if let Some(buffer) = self.buffers.read().get(&map_key) {
            return Ok(buffer.clone());
        }
        check_name("namespace", namespace)?;
        check_name("tag", tag)?;
        let buffered = self.buffers.read().len();
        if buffered >= self.options.max_buffered_tags {
            return Err(IdError::Refused(format!(
                "this node already buffers {buffered} segment tags, the limit; tag {tag:?} in namespace {namespace:?} cannot be served here"
            )));
        }
        let existing = bounded("the tag read", self.store.get(&tag_key(namespace, tag))).await?;
        let base_step = match existing {
            Some(kv) => decode::<TagRecord>(&kv.value).map_err(corrupt)?.step,
            None if self.options.auto_create => {
                // Created by an allocation (`--segment-auto-create`), not by a person.
                let audit = sb_audit::Audit::system("system:segment-auto-create");
                match self.create_tag(namespace, tag, 1, self.options.default_step, &audit).await {
                    Ok(status) => status.step,
                    Err(IdError::TagExists { .. }) => self.options.default_step,
                    Err(error) => return Err(error),
                }
            }
            None => return Err(IdError::UnknownTag { namespace: namespace.into(), tag: tag.into() }),
        };
        let first = self.allocate(namespace, tag, base_step).await?;
        let buffer = Arc::new(TagBuffer::new(namespace, tag, first));
        Ok(self.buffers.write().entry(map_key).or_insert(buffer).clone())
    }

    /// Allocates `[max, max+step)` with a compare-and-swap on the record's revision.
    async fn allocate(&self, namespace: &str, tag: &str, step: u64) -> IdResult<(Segment, u64)> {
        let key = tag_key(namespace, tag);
        for attempt in 0..MAX_CAS_ATTEMPTS {
            let Some(kv) = bounded("the tag read", self.store.get(&key)).await? else {
                return Err(IdError::UnknownTag { namespace: namespace.into(), tag: tag.into() });
            };
            let mut record: TagRecord = decode(&kv.value).map_err(corrupt)?;
            let step = step.clamp(record.step, self.options.max_step.max(record.step));
            let start = record.max;
            let end = start.checked_add(step).filter(|end| *end <= MAX_SEGMENT_ID).ok_or_else(|| {
                IdError::Refused(format!(
                    "tag {tag:?} in namespace {namespace:?} is used up: its next ID {start} plus a step of {step} passes {MAX_SEGMENT_ID}"
                ))
            })?;
            record.max = end;
            let txn = Txn::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision)])
                .and_then([TxnOp::put(key.clone(), encode(&record).map_err(corrupt)?)]);
            if bounded("the segment allocation", self.store.txn(txn)).await?.succeeded {
                self.allocations.fetch_add(1, Ordering::Relaxed);
                return Ok((Segment::new(start, end), record.step));
            }
            self.allocation_conflicts.fetch_add(1, Ordering::Relaxed);
            // Another node allocated meanwhile: retry after a short, spread-out pause.
            let pause = rand::rng().random_range(0..=(attempt as u64 + 1).min(10));
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        Err(IdError::Refused(format!(
            "allocating a segment of tag {tag:?} lost {MAX_CAS_ATTEMPTS} races against other nodes; retry"
        )))
    }

    /// Creates a tag whose first ID is `start`, allocated `step` at a time.
    pub async fn create_tag(
        &self,
        namespace: &str,
        tag: &str,
        start: u64,
        step: u64,
        audit: &sb_audit::Audit,
    ) -> IdResult<TagStatus> {
        check_name("namespace", namespace)?;
        check_name("tag", tag)?;
        if step == 0 || step > MAX_TAG_STEP {
            return Err(IdError::invalid(
                "step",
                format!("step is {step}, must be from 1 to {MAX_TAG_STEP}"),
            ));
        }
        if start >= MAX_SEGMENT_ID {
            return Err(IdError::invalid(
                "start",
                format!("start is {start}, must be below {MAX_SEGMENT_ID}"),
            ));
        }
        let key = tag_key(namespace, tag);
        let record = TagRecord { max: start, step, created_ms: now_ms() };
        let value = encode(&record).map_err(corrupt)?;
        let audited =
            audit.op("ids.segment.create", String::from_utf8_lossy(key.as_ref()), None, Some(&value));
        let txn = Txn::new().when([Compare::absent(key.clone())]).and_then([TxnOp::put(key, value), audited]);
        if !bounded("the tag creation", self.store.txn(txn)).await?.succeeded {
            return Err(IdError::TagExists { namespace: namespace.into(), tag: tag.into() });
        }
        Ok(TagStatus { namespace: namespace.into(), tag: tag.into(), max: start, step, node_buffer: None })
    }

    /// Every tag of a namespace, in name order.
    pub async fn list_tags(&self, namespace: &str) -> IdResult<Vec<TagStatus>> {
        check_name("namespace", namespace)?;
        let prefix = format!("{SEGMENTS_PREFIX}{namespace}/");
        let (kvs, _) = bounded(
            "the tag list",
            sb_store::range_all(self.store.as_ref(), KeyRange::prefix(prefix.clone()), None),
        )
        .await?;
        let buffers = self.buffers.read();
        kvs.iter()
            .map(|kv| {
                let record: TagRecord = decode(&kv.value).map_err(corrupt)?;
                let tag = String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned();
                let node_buffer =
                    buffers.get(&(namespace.to_owned(), tag.clone())).map(|buffer| buffer.status());
                Ok(TagStatus {
                    namespace: namespace.into(),
                    tag,
                    max: record.max,
                    step: record.step,
                    node_buffer,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
