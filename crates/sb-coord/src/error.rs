//! The errors of locks and elections, typed so the protocol layer maps each to one answer.

use sb_store::StoreError;

use crate::names::QueueKind;

pub type CoordResult<T> = Result<T, CoordError>;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CoordError {
    /// A value out of range: the message names the value and the limit.
    #[error("{message}")]
    InvalidArgument { field: &'static str, message: String },
    /// The wait ended before the caller's turn came; its waiter key was removed.
    #[error("{kind} {name:?} is held by another owner; gave up after waiting {waited_ms} ms")]
    Timeout { kind: QueueKind, name: String, waited_ms: u64 },
    /// Nothing holds or waits for the name.
    #[error("{kind} {name:?} is not held (it expired, was released, or was never acquired)")]
    NotHeld { kind: QueueKind, name: String },
    /// The owner token does not hold the name (another owner does, or it belongs to
    /// another subject): nothing was changed.
    #[error("the owner token does not hold {kind} {name:?}{reason}")]
    WrongOwner { kind: QueueKind, name: String, reason: &'static str },
    /// The caller's lease expired while it waited: it holds nothing and must start again.
    #[error("{kind} {name:?}: the waiter's lease expired while it waited; nothing is held, acquire again")]
    LeaseLost { kind: QueueKind, name: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CoordError {
    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        CoordError::InvalidArgument { field, message: message.into() }
    }
}
