//! The errors every adapter returns, typed so callers can match on them.

use crate::types::{LeaseId, Revision};

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A read or watch asked for history that compaction has removed. A view reloads.
    #[error("revision {requested} has been compacted{}", compacted_suffix(*.compacted))]
    Compacted { requested: Revision, compacted: Option<Revision> },
    #[error("revision {requested} is in the future (current revision is {current})")]
    FutureRevision { requested: Revision, current: Revision },
    #[error("lease {0} not found (expired or revoked)")]
    LeaseNotFound(LeaseId),
    /// etcd's `--max-txn-ops`, applied to each list of a transaction on its own.
    #[error("transaction has {count} {list}, limit is {limit}")]
    TooManyOps { list: &'static str, count: usize, limit: usize },
    /// etcd's `--max-request-bytes`.
    #[error("request is {bytes} bytes, limit is {limit} bytes")]
    RequestTooLarge { bytes: usize, limit: usize },
    #[error("key {key:?} is written twice in one transaction branch")]
    DuplicateKey { key: String },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The store cannot be reached or failed; the request may be retried.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A watch ended for a reason other than compaction (for example a slow consumer that
    /// could not be caught up).
    #[error("watch cancelled: {0}")]
    WatchCancelled(String),
    #[error("store is not empty: {0}")]
    NotEmpty(String),
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error("store is closed")]
    Closed,
}

fn compacted_suffix(compacted: Option<Revision>) -> String {
    match compacted {
        Some(rev) => format!(" (compacted revision is {rev})"),
        None => String::new(),
    }
}

impl StoreError {
    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}
