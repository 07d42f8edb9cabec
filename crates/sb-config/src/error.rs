//! The errors callers match on; `sb-api` maps each to its HTTP and Nacos answers in its
//! one error table.

use sb_store::{Revision, StoreError, ViewError};

use crate::format::ContentError;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A namespace, group, data id, tag or description that breaks its rule.
    #[error("{field} {value:?} is not valid: {reason}")]
    InvalidName { field: &'static str, value: String, reason: String },
    #[error("unknown config format {0:?}, expected one of text, json, yaml, toml, properties, xml, html")]
    UnknownFormat(String),
    /// The content does not parse in its format.
    #[error("{0}")]
    InvalidContent(ContentError),
    /// The item's JSON Schema is not a valid schema.
    #[error("the JSON Schema is not valid: {0}")]
    InvalidSchema(String),
    /// The content parses but breaks the item's JSON Schema.
    #[error("content does not match the item's JSON Schema: {0}")]
    SchemaViolation(String),
    #[error("config content is {size} bytes, limit is {limit} bytes (set --config-max-bytes)")]
    TooLarge { size: usize, limit: usize },
    /// `If-Match` named another version.
    #[error("{key} is at version {current}, If-Match asked for {expected}")]
    VersionMismatch { key: String, expected: Revision, current: Revision },
    #[error("config {0} not found")]
    NotFound(String),
    #[error("config {key} has no version {version} in its history")]
    VersionNotFound { key: String, version: Revision },
    /// Another writer kept winning the race for the same item.
    #[error("config {0} changed concurrently too many times, retry")]
    Contended(String),
    /// A gray selector with a malformed IP or label, or none at all.
    #[error("gray selector is not valid: {0}")]
    InvalidSelector(String),
    /// Promote or abort of an item with no gray version.
    #[error("config {0} has no gray version")]
    NoGray(String),
    /// An import file or entry that is not valid (nothing was written).
    #[error("import refused: {0}")]
    InvalidImport(String),
    /// An import that met a conflict it may not resolve.
    #[error("import conflict: {0}")]
    ImportConflict(String),
    /// A master key file that cannot be used (at start), or a key problem.
    #[error("master keys: {0}")]
    Keys(String),
    /// A secret cannot be sealed or opened on this node: no master key, or not the key
    /// it was sealed with. The message names `--master-key-file`.
    #[error("{0}")]
    SecretsUnavailable(String),
    #[error("stored config value is unreadable: {0}")]
    Corrupt(String),
    #[error("the write committed at revision {revision}, but this node has not caught up: {source}")]
    NotCaughtUp { revision: Revision, source: ViewError },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type ConfigResult<T> = Result<T, ConfigError>;
