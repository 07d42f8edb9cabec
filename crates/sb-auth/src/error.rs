use sb_store::{StoreError, ViewError};

/// What access control answers that a caller can act on. Messages never contain a
/// password or a token.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{message}")]
    Invalid { field: &'static str, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Conflict(String),
    /// A wrong user name or password; deliberately does not say which.
    #[error("unknown user or wrong password")]
    BadCredentials,
    /// Too many failed logins from this address (for this user or at all).
    #[error("too many failed logins from this address; retry in {retry_after_secs} s")]
    Backoff { retry_after_secs: u64 },
    /// Every password-hashing slot stayed busy for the whole wait.
    #[error("the server is busy hashing passwords; retry shortly")]
    Busy,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the write is committed but this node's view has not applied it yet: {0}")]
    NotCaughtUp(#[from] ViewError),
    #[error("a stored record is corrupt: {0}")]
    Corrupt(String),
}

impl AuthError {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        AuthError::Invalid { field, message: message.into() }
    }
}

pub type AuthResult<T> = Result<T, AuthError>;
