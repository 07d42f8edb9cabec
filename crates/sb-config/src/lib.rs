//! The config center: items addressed by namespace → group → data id, validated publishes,
//! versions that are store revisions, history with diff and rollback, retention, and
//! listeners fed by a watch-fed view.
//!
//! Architecture invariant: this crate sees only the `sb_store` port. It knows nothing about
//! redb, etcd-client or HTTP; the native REST API and the Nacos compat layer in `sb-api`
//! are thin translators over [`ConfigService`] and [`ConfigView`].
#![forbid(unsafe_code)]

mod diff;
mod error;
mod format;
mod gray;
mod history;
mod listen;
mod model;
mod nacos_zip;
mod retention;
mod secret;
mod service;
mod transfer;
mod view;

#[cfg(test)]
mod tests;

pub use diff::unified_diff;
pub use error::{ConfigError, ConfigResult};
pub use format::{validate_content, ConfigFormat, ContentError};
pub use gray::{parse_ips, parse_labels, GrayClient, GrayRecord, GrayRequest, GraySelector};
pub use listen::{ListenKey, ListenOutcome};
pub use model::{
    check_namespace, content_md5, ConfigItem, ConfigKey, EntryId, HistoryEntry, HistoryOp, CONFIG_PREFIX,
    GRAY_PREFIX, HISTORY_PREFIX, ITEMS_PREFIX,
};
pub use nacos_zip::{is_zip, MAX_ZIP_ENTRIES, MAX_ZIP_TOTAL_BYTES};
pub use retention::Retention;
pub use secret::{masked_content, readable, Keyring, Reveal, MASTER_KEY_FLAG, SEALED_PREFIX};
pub use service::{
    ConfigService, ConfigSettings, HistoryPage, HistoryRecord, KeyUsage, PublishOutcome, PublishRequest,
    SchemaChange, KEY_CHECKS_PREFIX,
};
pub use transfer::{
    ConflictPolicy, ExportDoc, ExportItem, ImportPlan, ImportProgress, ImportReport, EXPORT_KIND,
    OPS_PER_ITEM,
};
pub use view::{ConfigChange, ConfigChanges, ConfigSnapshot, ConfigState, ConfigView, GraySnapshot};
