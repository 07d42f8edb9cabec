//! The config model and its key layout.
//!
//! - `config/items/{ns}/{group}/{data_id}`: the item's metadata and the id of its current
//!   history entry; its `mod_revision` is the item's version.
//! - `config/history/{ns}/{group}/{data_id}/{entry-id}`: one publish, with its content,
//!   stored once. The entry id is chosen before the write (a transaction cannot know its
//!   own revision) and is time-ordered; every write to an item compares the item's mod
//!   revision, and a new entry id is always above the current one, so an item's entries
//!   sort in key order exactly as they were committed. The entry's version is its key's
//!   `create_revision`.

use std::fmt;

use md5::{Digest, Md5};
use sb_store::codec::StoredValue;
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::format::ConfigFormat;

pub const CONFIG_PREFIX: &str = "config/";
pub const ITEMS_PREFIX: &str = "config/items/";
pub const HISTORY_PREFIX: &str = "config/history/";
/// `config/gray/{ns}/{group}/{data_id}`: the item's gray release, a [`crate::GrayRecord`]
/// pointing at a gray history entry (never a copy of the content).
pub const GRAY_PREFIX: &str = "config/gray/";
/// The suffix of a gray history entry's key: the view tells main and gray entries apart by
/// key alone, so it never decodes an entry to learn which it is.
pub const GRAY_ENTRY_SUFFIX: &str = "g";

const MAX_NAME_BYTES: usize = 256;
const MAX_NAMESPACE_BYTES: usize = 128;
/// Description and tags together.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;

/// The address of an item: namespace → group → data id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConfigKey {
    pub namespace: String,
    pub group: String,
    pub data_id: String,
}

impl fmt::Display for ConfigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.group, self.data_id)
    }
}

/// Names are Nacos's: letters, digits and `-_.:`; no `/`, so keys never collide.
fn check_name(field: &'static str, value: &str, limit: usize) -> Result<(), ConfigError> {
    let invalid = |reason: String| ConfigError::InvalidName { field, value: value.to_owned(), reason };
    if value.is_empty() {
        return Err(invalid("it is empty".into()));
    }
    if value.len() > limit {
        return Err(invalid(format!("it is {} bytes, limit is {limit} bytes", value.len())));
    }
    if let Some(bad) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || "-_.:".contains(*c))) {
        return Err(invalid(format!("{bad:?} is not allowed (use letters, digits and - _ . :)")));
    }
    Ok(())
}

impl ConfigKey {
    pub fn new(
        namespace: impl Into<String>,
        group: impl Into<String>,
        data_id: impl Into<String>,
    ) -> Result<ConfigKey, ConfigError> {
        let key = ConfigKey { namespace: namespace.into(), group: group.into(), data_id: data_id.into() };
        check_name("namespace", &key.namespace, MAX_NAMESPACE_BYTES)?;
        check_name("group", &key.group, MAX_NAME_BYTES)?;
        check_name("data_id", &key.data_id, MAX_NAME_BYTES)?;
        Ok(key)
    }

    /// `{ns}/{group}/{data_id}`: the item's path below the items and history prefixes.
    pub fn path(&self) -> String {
        self.to_string()
    }

    pub fn item_key(&self) -> String {
        format!("{ITEMS_PREFIX}{self}")
    }

    /// The prefix of the item's history entries (with the trailing `/`).
    pub fn history_prefix(&self) -> String {
        format!("{HISTORY_PREFIX}{self}/")
    }

    pub fn history_key(&self, entry: &EntryId) -> String {
        format!("{}{}", self.history_prefix(), entry)
    }

    /// The key of a gray history entry (the id with [`GRAY_ENTRY_SUFFIX`]).
    pub fn gray_history_key(&self, entry: &EntryId) -> String {
        format!("{}{}{GRAY_ENTRY_SUFFIX}", self.history_prefix(), entry)
    }

    pub fn gray_key(&self) -> String {
        format!("{GRAY_PREFIX}{self}")
    }

    /// The key of an item path (`{ns}/{group}/{data_id}`), as found below a prefix.
    pub fn from_path(path: &str) -> Option<ConfigKey> {
        let mut parts = path.splitn(3, '/');
        let (ns, group, data_id) = (parts.next()?, parts.next()?, parts.next()?);
        if data_id.contains('/') {
            return None;
        }
        Some(ConfigKey { namespace: ns.into(), group: group.into(), data_id: data_id.into() })
    }
}

pub fn check_namespace(namespace: &str) -> Result<(), ConfigError> {
    check_name("namespace", namespace, MAX_NAMESPACE_BYTES)
}

/// A time-ordered history entry id: 48 bits of Unix milliseconds and 32 bits that make it
/// unique and strictly above the item's current entry, as 20 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId(pub u128);

impl EntryId {
    /// A new id above `after` (the item's current or latest entry), from the clock when
    /// the clock is ahead.
    pub fn next(now_ms: u64, after: Option<EntryId>) -> EntryId {
        let low = u128::from(rand::random::<u32>() >> 1);
        let from_clock = (u128::from(now_ms) << 32) | low;
        match after {
            Some(after) if after.0 >= from_clock => EntryId(after.0 + 1),
            _ => EntryId(from_clock),
        }
    }

    pub fn parse(text: &str) -> Option<EntryId> {
        if text.len() != 20 {
            return None;
        }
        u128::from_str_radix(text, 16).ok().map(EntryId)
    }

    /// When the entry was chosen, in Unix milliseconds.
    pub fn unix_ms(self) -> u64 {
        (self.0 >> 32) as u64
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:020x}", self.0)
    }
}

/// The item: metadata and a pointer to its current history entry, never the content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigItem {
    /// The current history entry (its id, as in the history key).
    pub entry: String,
    pub format: ConfigFormat,
    pub md5: String,
    pub size: usize,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub app_name: String,
    pub author: String,
    pub created_ms: u64,
    pub modified_ms: u64,
    /// A JSON Schema that json, yaml and toml content must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<serde_json::Value>,
    /// The content is sealed ([`crate::Keyring`]) and `md5` is the version's tag, never the
    /// md5 of the plaintext.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
}

impl StoredValue for ConfigItem {
    const KIND: &'static str = "config item";
    const FORMAT_VERSION: u32 = 1;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryOp {
    /// The first publish of an item (or the first after a delete).
    Create,
    Update,
    Rollback,
    Delete,
    /// A gray version (served only to the clients its selector matches).
    Gray,
    /// A gray version promoted to the main version.
    Promote,
}

impl HistoryOp {
    /// Nacos's `opType` letter.
    pub fn nacos_letter(self) -> &'static str {
        match self {
            HistoryOp::Create => "I",
            HistoryOp::Update | HistoryOp::Rollback | HistoryOp::Gray | HistoryOp::Promote => "U",
            HistoryOp::Delete => "D",
        }
    }
}

/// One publish (or delete) of an item, with the content stored once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub op: HistoryOp,
    pub content: String,
    pub format: ConfigFormat,
    pub md5: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub app_name: String,
    pub author: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source_ip: String,
    pub at_ms: u64,
    /// The version a rollback restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_from: Option<i64>,
    /// `content` is sealed under this entry's key and `md5` is its tag.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
}

impl StoredValue for HistoryEntry {
    const KIND: &'static str = "config history entry";
    const FORMAT_VERSION: u32 = 1;
}

/// The md5 of content as Nacos computes it: lowercase hex of the UTF-8 bytes.
pub fn content_md5(content: &str) -> String {
    hex::encode(Md5::digest(content.as_bytes()))
}

/// Splits a history key's path (below [`HISTORY_PREFIX`]) into the item path, the entry id
/// and whether it is a gray entry.
pub fn split_history_path(path: &str) -> Option<(&str, EntryId, bool)> {
    let (item, entry) = path.rsplit_once('/')?;
    match entry.strip_suffix(GRAY_ENTRY_SUFFIX) {
        Some(id) => Some((item, EntryId::parse(id)?, true)),
        None => Some((item, EntryId::parse(entry)?, false)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_nacos_rules() {
        assert!(ConfigKey::new("public", "DEFAULT_GROUP", "app.yaml").is_ok());
        assert!(ConfigKey::new("public", "g", "a/b").is_err());
        assert!(ConfigKey::new("", "g", "a").is_err());
        let error = ConfigKey::new("p", "g", "x".repeat(300)).unwrap_err().to_string();
        assert!(error.contains("limit is 256 bytes"), "{error}");
    }

    #[test]
    fn entry_ids_sort_by_time_and_always_pass_the_previous() {
        let a = EntryId::next(1_000, None);
        let b = EntryId::next(2_000, Some(a));
        assert!(b > a);
        assert_eq!(b.unix_ms(), 2_000);
        // A clock behind the previous entry still yields a greater id.
        let c = EntryId::next(1_000, Some(b));
        assert_eq!(c.0, b.0 + 1);
        assert_eq!(EntryId::parse(&c.to_string()), Some(c));
        assert!(a.to_string() < b.to_string() && b.to_string() < c.to_string());
    }

    #[test]
    fn md5_matches_nacos() {
        assert_eq!(content_md5("hello"), "5d41402abc4b2a76b9719d911017c592");
    }
}
