//! The errors callers of the rate limiter match on. A decision that denies is not an
//! error; neither is an unreachable global tier (the rule's failure policy answers).

use sb_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    /// Bad input: the message names the value and the limit.
    #[error("{message}")]
    InvalidArgument { field: &'static str, message: String },
    #[error("no rate-limit rule {name:?} in namespace {namespace:?}")]
    RuleNotFound { namespace: String, name: String },
    #[error("permit {permit_id:?} is not held on rule {rule:?} (unknown, released or expired)")]
    PermitNotFound { rule: String, permit_id: String },
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The local view did not catch up with a write in time.
    #[error("{0}")]
    View(#[from] sb_store::ViewError),
}

impl RateLimitError {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        RateLimitError::InvalidArgument { field, message: message.into() }
    }
}

pub type RateLimitResult<T> = Result<T, RateLimitError>;
