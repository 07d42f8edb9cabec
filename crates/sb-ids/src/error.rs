//! The errors callers of this crate match on.

use std::future::Future;
use std::time::Duration;

use sb_store::{StoreError, StoreResult};

pub type IdResult<T> = Result<T, IdError>;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// A caller's value is out of range or malformed (count, name, id, start, step).
    #[error("{message}")]
    InvalidArgument { field: &'static str, message: String },
    #[error(
        "tag {tag:?} does not exist in namespace {namespace:?} (create it with POST /api/v1/ids/segments)"
    )]
    UnknownTag { namespace: String, tag: String },
    #[error("tag {tag:?} already exists in namespace {namespace:?}")]
    TagExists { namespace: String, tag: String },
    /// IDs cannot be issued right now; the message says why and what would help. Never a
    /// duplicate instead.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored value this release cannot read.
    #[error("{0}")]
    Corrupt(String),
}

impl IdError {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        IdError::InvalidArgument { field, message: message.into() }
    }
}

/// How long one store call of this crate may take. A store that does not answer is
/// treated as unavailable, so no request and no keeper round hangs on it; an unknown
/// outcome is always safe here (a lost segment is a gap, a mark written but not used only
/// holds issuing lower, a worker taken but unknown is released at the next take).
pub(crate) const STORE_CALL_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) async fn bounded<T>(what: &str, call: impl Future<Output = StoreResult<T>>) -> IdResult<T> {
    match tokio::time::timeout(STORE_CALL_TIMEOUT, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(IdError::Store(StoreError::Unavailable(format!(
            "the store did not answer {what} within {} ms",
            STORE_CALL_TIMEOUT.as_millis()
        )))),
    }
}
