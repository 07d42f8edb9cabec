//! The errors callers of the registry match on.

use sb_store::{StoreError, ViewError};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Bad input: the field and a message naming the value and the limit.
    #[error("{message}")]
    Invalid { field: &'static str, message: String },
    #[error("{0}")]
    NotFound(String),
    /// A beat without the instance's description for an instance this registry does not
    /// know: the client must register again (Nacos's 20404).
    #[error("instance {0} is not registered")]
    UnknownInstance(String),
    /// The request contradicts the current state (a service that exists, or still has
    /// instances).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    View(#[from] ViewError),
}

impl RegistryError {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        RegistryError::Invalid { field, message: message.into() }
    }
}

pub type RegistryResult<T> = Result<T, RegistryError>;
