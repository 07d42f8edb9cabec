//! Why a node could not start or stop cleanly.

use sb_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A flag, variable or config-file value is wrong; the message names it.
    #[error("{0}")]
    Config(String),
    #[error("{context}: {cause}")]
    Store { context: String, cause: StoreError },
    #[error("{context}: {cause}")]
    Ids { context: String, cause: sb_ids::IdError },
    #[error("{context}: {cause}")]
    Io { context: String, cause: std::io::Error },
}

impl ServerError {
    pub fn store(context: impl Into<String>) -> impl FnOnce(StoreError) -> ServerError {
        let context = context.into();
        move |cause| ServerError::Store { context, cause }
    }

    pub fn ids(context: impl Into<String>) -> impl FnOnce(sb_ids::IdError) -> ServerError {
        let context = context.into();
        move |cause| ServerError::Ids { context, cause }
    }

    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
        let context = context.into();
        move |cause| ServerError::Io { context, cause }
    }
}

pub type ServerResult<T> = Result<T, ServerError>;
