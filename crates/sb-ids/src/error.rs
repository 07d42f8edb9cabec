//! The errors callers of this crate match on.

use sb_store::StoreError;

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
