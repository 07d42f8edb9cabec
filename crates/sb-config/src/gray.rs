//! Gray release: a gray version of an item is served to the clients its selector matches
//! (a client IP list, or labels), and the main version to everyone else, until it is
//! promoted (a new publish of the gray content) or aborted.
//!
//! The gray content is a history entry (key suffix `g`, op `gray`); the gray record at
//! `config/gray/{ns}/{group}/{data_id}` only points at it, so the content is stored once
//! and shows in history and diff like any other version.

use std::collections::BTreeMap;
use std::net::IpAddr;

use sb_audit::Audit;
use sb_store::codec::{decode, StoredValue};
use sb_store::{Compare, CompareOp, Revision, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, ConfigResult};
use crate::format::ConfigFormat;
use crate::model::{content_md5, ConfigItem, ConfigKey, EntryId, HistoryEntry, HistoryOp};
use crate::service::{
    decode_entry, encode_value, now_ms, ConfigService, PublishKind, PublishOutcome, PublishRequest,
};

const MAX_SELECTOR_IPS: usize = 1000;
const MAX_LABELS: usize = 32;
const MAX_LABEL_BYTES: usize = 63;

/// Who a gray version is for: clients with one of `ips`, or carrying every one of `labels`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraySelector {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// What a reader is, as far as gray release cares: its IP (after trusted proxies) and the
/// labels it sent (`X-Switchboard-Labels`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrayClient {
    pub ip: Option<IpAddr>,
    pub labels: BTreeMap<String, String>,
    /// Set when the reader may read secrets: their content opens, and their md5 is the
    /// plaintext's. Without it, secrets read masked.
    pub reveal: Option<crate::secret::Reveal>,
}

impl GrayClient {
    /// A client known by IP only (the Nacos API: its beta selects by IP).
    pub fn by_ip(ip: Option<IpAddr>) -> GrayClient {
        GrayClient { ip, labels: BTreeMap::new(), reveal: None }
    }

    /// The same reader, seeing secrets through `reveal` (or not, with `None`).
    pub fn with_reveal(mut self, reveal: Option<crate::secret::Reveal>) -> GrayClient {
        self.reveal = reveal;
        self
    }
}

fn check_label_part(what: &str, text: &str) -> ConfigResult<()> {
    if text.is_empty() || text.len() > MAX_LABEL_BYTES {
        return Err(ConfigError::InvalidSelector(format!(
            "label {what} {text:?} must be 1 to {MAX_LABEL_BYTES} bytes"
        )));
    }
    if let Some(bad) = text.chars().find(|c| !(c.is_ascii_alphanumeric() || "-_.".contains(*c))) {
        return Err(ConfigError::InvalidSelector(format!(
            "label {what} {text:?}: {bad:?} is not allowed (use letters, digits and - _ .)"
        )));
    }
    Ok(())
}

/// Parses `env=canary,zone=a` (the `X-Switchboard-Labels` header and the selector's form).
pub fn parse_labels(text: &str) -> ConfigResult<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, value)) = part.split_once('=') else {
            return Err(ConfigError::InvalidSelector(format!("label {part:?} is not name=value")));
        };
        let (name, value) = (name.trim(), value.trim());
        check_label_part("name", name)?;
        check_label_part("value", value)?;
        labels.insert(name.to_owned(), value.to_owned());
    }
    if labels.len() > MAX_LABELS {
        return Err(ConfigError::InvalidSelector(format!("{} labels, limit is {MAX_LABELS}", labels.len())));
    }
    Ok(labels)
}

/// Parses IPs (each one must be an IPv4 or IPv6 address).
pub fn parse_ips<'a>(items: impl IntoIterator<Item = &'a str>) -> ConfigResult<Vec<IpAddr>> {
    let mut ips = Vec::new();
    for text in items.into_iter().map(str::trim).filter(|t| !t.is_empty()) {
        let ip = text
            .parse::<IpAddr>()
            .map_err(|_| ConfigError::InvalidSelector(format!("{text:?} is not an IP address")))?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    if ips.len() > MAX_SELECTOR_IPS {
        return Err(ConfigError::InvalidSelector(format!("{} IPs, limit is {MAX_SELECTOR_IPS}", ips.len())));
    }
    Ok(ips)
}

impl GraySelector {
    /// A selector must select someone.
    pub fn check(&self) -> ConfigResult<()> {
        if self.ips.is_empty() && self.labels.is_empty() {
            return Err(ConfigError::InvalidSelector("it names no IP and no label".into()));
        }
        for (name, value) in &self.labels {
            check_label_part("name", name)?;
            check_label_part("value", value)?;
        }
        Ok(())
    }

    /// Matches a client whose IP is listed, or that carries every label of the selector.
    pub fn matches(&self, client: &GrayClient) -> bool {
        let by_ip = client.ip.is_some_and(|ip| self.ips.contains(&ip));
        let by_labels =
            !self.labels.is_empty() && self.labels.iter().all(|(k, v)| client.labels.get(k) == Some(v));
        by_ip || by_labels
    }
}

/// The gray release of an item: a pointer to its gray history entry and the selector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GrayRecord {
    /// The gray history entry's id (its key carries the `g` suffix).
    pub entry: String,
    pub selector: GraySelector,
    pub format: ConfigFormat,
    pub md5: String,
    pub size: usize,
    pub author: String,
    pub at_ms: u64,
}

impl StoredValue for GrayRecord {
    const KIND: &'static str = "config gray record";
    const FORMAT_VERSION: u32 = 1;
}

#[derive(Clone, Debug)]
pub struct GrayRequest {
    pub content: String,
    pub selector: GraySelector,
    pub author: String,
    pub source_ip: String,
}

impl ConfigService {
    async fn current_item(&self, key: &ConfigKey) -> ConfigResult<(ConfigItem, Revision)> {
        let kv =
            self.store.get(key.item_key().as_bytes()).await?.ok_or_else(|| {
                ConfigError::NotFound(format!("{key} (a gray version needs a main version)"))
            })?;
        let item = decode::<ConfigItem>(&kv.value).map_err(|e| ConfigError::Corrupt(e.to_string()))?;
        Ok((item, kv.mod_revision))
    }

    /// The gray record as stored, with its mod revision; `None` if there is none.
    pub(crate) async fn stored_gray(&self, key: &ConfigKey) -> ConfigResult<Option<(GrayRecord, Revision)>> {
        let Some(kv) = self.store.get(key.gray_key().as_bytes()).await? else { return Ok(None) };
        let record = decode::<GrayRecord>(&kv.value).map_err(|e| ConfigError::Corrupt(e.to_string()))?;
        Ok(Some((record, kv.mod_revision)))
    }

    /// Publishes (or replaces) the item's gray version. The item must exist; the content is
    /// validated in the item's format and against its schema.
    pub async fn publish_gray(
        &self,
        key: &ConfigKey,
        request: GrayRequest,
        audit: &Audit,
    ) -> ConfigResult<PublishOutcome> {
        request.selector.check()?;
        let (item, item_version) = self.current_item(key).await?;
        self.validate(item.format, &request.content, item.schema.as_ref())?;
        let stored = self.stored_gray(key).await?;
        let gray_version = stored.as_ref().map_or(0, |(_, v)| *v);
        let before = stored.as_ref().map(|(record, _)| encode_value(record)).transpose()?;
        let now = now_ms();
        let entry_id = EntryId::next(now, self.latest_entry(key).await?);
        let md5 = content_md5(&request.content);
        let (stored, stored_md5) =
            self.seal(&key.gray_history_key(&entry_id), &request.content, item.secret)?;
        let history = HistoryEntry {
            op: HistoryOp::Gray,
            content: stored,
            format: item.format,
            md5: stored_md5.clone(),
            description: item.description.clone(),
            tags: item.tags.clone(),
            app_name: item.app_name.clone(),
            author: request.author.clone(),
            source_ip: request.source_ip.clone(),
            at_ms: now,
            rolled_back_from: None,
            secret: item.secret,
        };
        let record = GrayRecord {
            entry: entry_id.to_string(),
            selector: request.selector,
            format: item.format,
            md5: stored_md5,
            size: request.content.len(),
            author: request.author,
            at_ms: now,
        };
        let txn = Txn::new()
            .when([
                Compare::mod_revision(key.item_key(), CompareOp::Equal, item_version),
                Compare::mod_revision(key.gray_key(), CompareOp::Equal, gray_version),
            ])
            .and_then({
                let value = encode_value(&record)?;
                [
                    TxnOp::put(key.gray_history_key(&entry_id), encode_value(&history)?),
                    audit.op("config.gray.publish", key.gray_key(), before.as_deref(), Some(&value)),
                    TxnOp::put(key.gray_key(), value),
                ]
            });
        let response = self.store.txn(txn).await?;
        if !response.succeeded {
            return Err(ConfigError::Contended(key.to_string()));
        }
        self.wait_for(response.revision).await?;
        Ok(PublishOutcome { version: response.revision, md5, created: false })
    }

    /// Makes the gray content the main version (a new publish, op `promote`) and ends the
    /// gray release, in one transaction.
    pub async fn promote_gray(&self, key: &ConfigKey, audit: &Audit) -> ConfigResult<PublishOutcome> {
        let (record, gray_version) =
            self.stored_gray(key).await?.ok_or_else(|| ConfigError::NoGray(key.to_string()))?;
        let entry_id = EntryId::parse(&record.entry).ok_or_else(|| {
            ConfigError::Corrupt(format!("gray record of {key} names entry {:?}", record.entry))
        })?;
        let kv =
            self.store.get(key.gray_history_key(&entry_id).as_bytes()).await?.ok_or_else(|| {
                ConfigError::Corrupt(format!("the gray entry {entry_id} of {key} is missing"))
            })?;
        let entry = decode_entry(&kv)?;
        let content = self.open_entry(&key.gray_history_key(&entry_id), &entry)?;
        let request = PublishRequest {
            content,
            format: entry.format,
            description: None,
            tags: None,
            app_name: None,
            author: audit.actor.clone(),
            source_ip: audit.source_ip.clone(),
            if_match: None,
            schema: crate::service::SchemaChange::Keep,
            secret: None,
        };
        self.publish_op(key, request, PublishKind::Promote { gray_version }, audit).await
    }

    /// Ends the gray release without changing the main version; the gray entry stays in
    /// history.
    pub async fn abort_gray(&self, key: &ConfigKey, audit: &Audit) -> ConfigResult<Revision> {
        let (record, gray_version) =
            self.stored_gray(key).await?.ok_or_else(|| ConfigError::NoGray(key.to_string()))?;
        let before = encode_value(&record)?;
        let txn = Txn::new()
            .when([Compare::mod_revision(key.gray_key(), CompareOp::Equal, gray_version)])
            .and_then([
                TxnOp::delete(key.gray_key()),
                audit.op("config.gray.abort", key.gray_key(), Some(&before), None),
            ]);
        let response = self.store.txn(txn).await?;
        if !response.succeeded {
            return Err(ConfigError::Contended(key.to_string()));
        }
        self.wait_for(response.revision).await?;
        Ok(response.revision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_parse_and_match() {
        let labels = parse_labels("env=canary, zone=a").unwrap();
        assert_eq!(labels.len(), 2);
        assert!(parse_labels("env").is_err());
        assert!(parse_labels("env=can ary").is_err());
        assert!(parse_ips(["10.0.0.1", "::1"]).is_ok());
        assert!(parse_ips(["10.0.0.300"]).unwrap_err().to_string().contains("10.0.0.300"));
        let selector = GraySelector {
            ips: parse_ips(["10.0.0.1"]).unwrap(),
            labels: parse_labels("env=canary").unwrap(),
        };
        assert!(selector.matches(&GrayClient::by_ip(Some("10.0.0.1".parse().unwrap()))));
        assert!(!selector.matches(&GrayClient::by_ip(Some("10.0.0.2".parse().unwrap()))));
        assert!(selector.matches(&GrayClient { ip: None, labels, reveal: None }));
        assert!(!selector.matches(&GrayClient::default()));
        assert!(GraySelector::default().check().is_err());
    }
}
