//! The audit log: who changed what, from where, and at which revision.
//!
//! A domain mutation receives an [`Audit`] (the request's actor, source address, user agent
//! and request id, built by the protocol layer) and appends [`Audit::op`] to the **same
//! store transaction** as its change, so a change and its record commit together or not at
//! all. The record's key is a time-ordered unique id chosen before the write
//! (`audit/{ms:013}-{node}-{seq:010}`), because a transaction cannot know its own revision;
//! the record's revision is its key's `create_revision`, read back by [`query`].
//!
//! Records carry digests of the stored bytes before and after the change (a truncated
//! SHA-256), never the bytes themselves, so a secret's plaintext never reaches the log.
//!
//! Architecture invariant: this crate sees only the `sb_store` port. It knows no domain
//! (registry, config, ...) and no protocol (HTTP, axum, hyper): resources and actions are
//! plain strings chosen by the callers.
#![forbid(unsafe_code)]

mod query;
mod retention;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use sb_store::codec::StoredValue;
use sb_store::TxnOp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use query::{query, AuditEntry, AuditPage, AuditQuery, MAX_QUERY_LIMIT};
pub use retention::{spawn_retention, sweep, AuditRetention, RETENTION_BATCH};

/// Where audit records live below the root prefix.
pub const AUDIT_PREFIX: &str = "audit/";

/// Hex characters of SHA-256 kept in a digest: 64 bits tell two versions apart without
/// making the log a lookup table for guessable values.
const DIGEST_HEX_CHARS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{field}: {message}")]
    InvalidArgument { field: &'static str, message: String },
    #[error(transparent)]
    Store(#[from] sb_store::StoreError),
    #[error("stored audit record {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
}

/// One audit record as stored (JSON with the format version `"v"`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When the change was made (Unix milliseconds, the writer's clock).
    pub at_ms: u64,
    /// The subject that made it: a user, a token's subject, a service account.
    pub actor: String,
    /// The client address (after `--trusted-proxies`); empty when unknown.
    #[serde(default)]
    pub source_ip: String,
    #[serde(default)]
    pub user_agent: String,
    #[serde(default)]
    pub request_id: String,
    /// What was done, `domain.verb`: `config.publish`, `instance.register`, ...
    pub action: String,
    /// What it was done to, `kind/path`: `config/public/DEFAULT_GROUP/app.yaml`, ...
    pub resource: String,
    /// Digest of the stored value before the change; `None` when it did not exist.
    #[serde(default)]
    pub before: Option<String>,
    /// Digest of the stored value after the change; `None` when it is gone.
    #[serde(default)]
    pub after: Option<String>,
}

impl StoredValue for AuditRecord {
    const KIND: &'static str = "audit record";
    const FORMAT_VERSION: u32 = 1;
}

/// Who is making a change, as the protocol layer knows it. Passed into every audited
/// domain mutation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Audit {
    pub actor: String,
    pub source_ip: String,
    pub user_agent: String,
    pub request_id: String,
}

impl Audit {
    pub fn new(
        actor: impl Into<String>,
        source_ip: impl Into<String>,
        user_agent: impl Into<String>,
        request_id: impl Into<String>,
    ) -> Audit {
        Audit {
            actor: actor.into(),
            source_ip: source_ip.into(),
            user_agent: user_agent.into(),
            request_id: request_id.into(),
        }
    }

    /// A change made by the server itself or by a tool (`system`, `switchboard-restore`).
    pub fn system(actor: impl Into<String>) -> Audit {
        Audit { actor: actor.into(), ..Audit::default() }
    }

    /// The record of one change, stamped now.
    pub fn record(
        &self,
        action: &str,
        resource: impl Into<String>,
        before: Option<&[u8]>,
        after: Option<&[u8]>,
    ) -> AuditRecord {
        AuditRecord {
            at_ms: now_ms(),
            actor: self.actor.clone(),
            source_ip: self.source_ip.clone(),
            user_agent: self.user_agent.clone(),
            request_id: self.request_id.clone(),
            action: action.to_owned(),
            resource: resource.into(),
            before: before.map(digest),
            after: after.map(digest),
        }
    }

    /// The put that records one change: append it to the change's own transaction (its
    /// success branch), so both commit or neither does.
    pub fn op(
        &self,
        action: &str,
        resource: impl Into<String>,
        before: Option<&[u8]>,
        after: Option<&[u8]>,
    ) -> TxnOp {
        record_op(&self.record(action, resource, before, after))
    }
}

/// The put of a record under a fresh time-ordered key.
pub fn record_op(record: &AuditRecord) -> TxnOp {
    TxnOp::put(next_key(record.at_ms), encode_record(record))
}

fn encode_record(record: &AuditRecord) -> Vec<u8> {
    // Strings, numbers and options always encode, and the type has no "v" field.
    sb_store::codec::encode(record).expect("an audit record is strings and numbers, which always encode")
}

/// `sha256:` and the first 16 hex characters of the SHA-256 of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut hex = hex::encode(hash);
    hex.truncate(DIGEST_HEX_CHARS);
    format!("sha256:{hex}")
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// This process's part of every key: random per process, so two nodes (or two servers in
/// one test process) never pick the same key in the same millisecond.
fn node_tag() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        let bytes: [u8; 4] = rand::random();
        hex::encode(bytes)
    })
}

/// A fresh key `audit/{ms:013}-{node}-{seq:010}`: ordered by time, then unique.
pub fn next_key(at_ms: u64) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed) % 10_000_000_000;
    format!("{AUDIT_PREFIX}{at_ms:013}-{}-{seq:010}", node_tag())
}

/// The first key of records stamped at or after `ms`.
pub(crate) fn key_at(ms: u64) -> String {
    format!("{AUDIT_PREFIX}{ms:013}")
}

#[cfg(test)]
mod tests;
