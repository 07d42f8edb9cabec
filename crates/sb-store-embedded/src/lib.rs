//! The embedded store adapter, Switchboard's default: the store port ([`sb_store::Store`])
//! on two redb files, the MVCC file at the configured path and its log file next to it
//! ([`log_path`]).
//!
//! - The current state of every live key is held in memory, so reads at the current
//!   revision never touch redb; except for *cold* keys ([`EmbeddedOptions::cold_prefixes`]),
//!   whose values stay only in the files and are read from there. Past revisions are read from an MVCC table keyed by
//!   `(key, revision)`, as etcd's own backend is, plus the log above its checkpoint.
//! - One writer task owns every mutation and group-commits: it drains every pending
//!   request into one durable redb transaction of the log file, then answers them all.
//! - A checkpointer task, with the MVCC file's own write lock, copies the log into the MVCC
//!   table meanwhile, so the MVCC table's random page writes are paid once for many
//!   batches and group commits never wait for them ([`disk`]). If it falls more than
//!   `max_log_lag` revisions behind, the writer waits for it (backpressure).
//! - Lease expiry runs in memory; keep-alives never touch the disk. After a restart every
//!   lease gets its full TTL again, as etcd does after a leader change.
//! - Watchers have bounded buffers and catch up from the log when they fall behind.
//! - History is compacted automatically by a retention setting, as revisions grow: each
//!   checkpoint moves the compacted revision to `current - retention` and cleans the keys
//!   it wrote; a bounded walk cleans the rest ([`disk`]).
//!
//! Architecture invariant: nothing outside this crate knows redb is there; callers see
//! only the port.
#![forbid(unsafe_code)]

mod batch;
mod checkpointer;
mod codec;
mod cold;
mod disk;
mod history;
mod lease;
mod state;
mod store;
mod watch;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use sb_store::{Limits, Revision};
use tokio::sync::{broadcast, Notify};

pub use disk::log_path;
pub use store::EmbeddedStore;

/// How the embedded store is set up.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// The MVCC redb file (created with its parent directories if absent). The log lives
    /// next to it, in [`log_path`]`(path)`; the two files belong together.
    pub path: PathBuf,
    /// The request limits, etcd's by default so that what works embedded works on etcd.
    pub limits: Limits,
    /// How many revisions of history automatic compaction keeps.
    pub retention_revisions: u64,
    /// How often the timer makes sure compaction caught up, even when the store is idle
    /// (under load, every checkpoint compacts).
    pub compaction_interval: Duration,
    /// How many requests one group commit takes at most.
    pub max_batch_txns: usize,
    /// How many batches a watcher's buffer holds before its task waits for the consumer.
    pub watch_buffer: usize,
    /// The checkpointer copies the log into the MVCC table once this long has passed since
    /// the oldest revision not yet checkpointed was committed (also when idle).
    pub checkpoint_interval: Duration,
    /// ...or as soon as this many revisions are pending, whatever the time. Past-revision
    /// reads above the checkpoint scan the log, so this bounds their cost.
    pub checkpoint_revisions: u64,
    /// Checkpoints commit the MVCC file without an fsync, except one at least this often
    /// (and at close, and for an explicit compaction), which makes those before it durable
    /// too: an fsync and a durable commit's bookkeeping per checkpoint cost more than its
    /// page writes. A kill -9 takes back at most this much checkpointing, never an
    /// acknowledged write: the log is trimmed only below a durable checkpoint, and the
    /// next open replays it.
    pub checkpoint_sync_interval: Duration,
    /// Backpressure: before a group commit, the writer waits while more than this many
    /// revisions are not checkpointed yet (one batch may add up to `max_batch_txns` more).
    /// This bounds the log, the time to reopen, and the cost of past reads.
    pub max_log_lag: u64,
    /// redb's page cache, in bytes, for both files (three quarters for the MVCC file, a
    /// quarter for the log file). The current state is in memory anyway; the cache only
    /// serves reads of cold values and past revisions, watch catch-up and the pages the
    /// checkpoint and compaction touch, which compaction keeps to about
    /// `retention_revisions` records. The OS page cache backs it (outside the process's
    /// RSS), so it is small by default: measured with 10k configs of 1 KiB, 64 MiB cost
    /// 36 MiB more RSS than 4 MiB, and 8 MiB 6 MiB more.
    pub cache_bytes: usize,
    /// Keys under these prefixes are *cold*: memory keeps only their metadata (revisions,
    /// version, lease), and their values are read from the files when a range read or a
    /// value compare needs them. For bulky data that is rarely read through the store
    /// (history entries, audit records, data a watch-fed view keeps anyway). Everything
    /// else (revisions, compares on them, leases, watches, compaction) works as for any
    /// key. Empty by default.
    pub cold_prefixes: Vec<Vec<u8>>,
}

impl EmbeddedOptions {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        EmbeddedOptions {
            path: path.into(),
            limits: Limits::default(),
            retention_revisions: 50_000,
            compaction_interval: Duration::from_secs(60),
            max_batch_txns: 512,
            watch_buffer: 256,
            checkpoint_interval: Duration::from_millis(50),
            checkpoint_sync_interval: Duration::from_secs(1),
            checkpoint_revisions: 10_000,
            max_log_lag: 100_000,
            cache_bytes: 4 << 20,
            cold_prefixes: Vec::new(),
        }
    }
}

/// A snapshot of the store's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmbeddedMetrics {
    /// redb write transactions committed for requests (group commits).
    pub commits: u64,
    /// Transactions that wrote, that is got a revision of their own.
    pub txns_committed: u64,
    /// Transactions the writer evaluated in batches, writing or not; the mean batch size
    /// is `batched_txns / commits`.
    pub batched_txns: u64,
    /// Checkpoints that moved the log into the MVCC table (each one redb commit).
    pub checkpoints: u64,
    /// Times the writer waited for the checkpointer before a group commit (backpressure).
    pub backpressure_waits: u64,
    /// Automatic compaction steps that moved the compacted or the cleaned revision (each
    /// shares a checkpoint's redb commit).
    pub compaction_steps: u64,
    /// How long the last group commit took, from evaluation to a durable commit.
    pub last_commit_latency: Duration,
    /// Live watches.
    pub watchers: u64,
    /// Live leases.
    pub leases: u64,
    pub current_revision: Revision,
    /// Every revision up to this one is in the MVCC table.
    pub checkpointed_revision: Revision,
    pub compacted_revision: Revision,
    /// Old records below this revision are gone from disk; between it and the compacted
    /// revision, records no read can reach any more are still being removed.
    pub cleaned_revision: Revision,
}

#[derive(Debug, Default)]
struct Counters {
    commits: AtomicU64,
    txns_committed: AtomicU64,
    batched_txns: AtomicU64,
    checkpoints: AtomicU64,
    backpressure_waits: AtomicU64,
    compaction_steps: AtomicU64,
    last_commit_latency_ns: AtomicU64,
    watchers: AtomicU64,
}

/// What the store's handle, the writer and the background tasks share.
struct Shared {
    options: EmbeddedOptions,
    /// `None` once the store is closed, which releases the files.
    files: RwLock<Option<Arc<disk::Files>>>,
    state: RwLock<state::MemState>,
    leases: Mutex<lease::LeaseTable>,
    /// Wakes the expiry timer when a lease is granted (its deadline may be the earliest).
    lease_changed: Notify,
    /// Wakes the checkpointer: the writer committed revisions.
    checkpoint_wake: Notify,
    /// Wakes a writer waiting for the checkpointer (backpressure): it checkpointed.
    checkpointed: Notify,
    /// Tests hold the checkpointer back with this: while set, no step is due.
    #[cfg(test)]
    checkpoints_paused: AtomicBool,
    /// Every commit's events, for watchers.
    events: broadcast::Sender<Arc<watch::Committed>>,
    metrics: Counters,
    closed: AtomicBool,
}

impl Shared {
    fn files(&self) -> Option<Arc<disk::Files>> {
        self.files.read().clone()
    }

    fn is_cold(&self, key: &[u8]) -> bool {
        state::is_cold(&self.options.cold_prefixes, key)
    }
}

#[cfg(test)]
mod tests;
