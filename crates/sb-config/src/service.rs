//! The config service: every rule of publishing, deleting, history, diff and rollback.
//!
//! Writes go to the store in one transaction that compares the item's mod revision (so a
//! concurrent writer is never lost, and `If-Match` is the same compare), then wait until
//! this node's view has applied the revision (read-your-writes). Reads of current content
//! come from the view; history reads go to the store.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sb_audit::Audit;
use sb_store::codec::{decode, encode};
use sb_store::{Compare, CompareOp, KeyValue, RangeRequest, Revision, SharedStore, Txn, TxnOp};
use tracing::warn;

use crate::error::{ConfigError, ConfigResult};
use crate::format::{validate_content, ConfigFormat};
use crate::model::{
    content_md5, ConfigItem, ConfigKey, EntryId, HistoryEntry, HistoryOp, MAX_METADATA_BYTES,
};
use crate::retention::Retention;
use crate::secret::{Keyring, MASTER_KEY_FLAG};
use crate::view::{ConfigSnapshot, ConfigView};

/// How often a publish retries when another writer changed the item in between.
const MAX_ATTEMPTS: usize = 8;
/// Retention deletes a write folds into its transaction; more wait for the next prune.
const RETENTION_OPS: usize = 64;

#[derive(Clone, Debug)]
pub struct ConfigSettings {
    /// The largest content accepted (`--config-max-bytes`).
    pub max_content_bytes: usize,
    pub retention: Retention,
    /// How long a write waits for the local view to apply its revision.
    pub read_your_writes_timeout: Duration,
    /// The master keys secrets are sealed with (`--master-key-file`); without them a
    /// secret cannot be published or read.
    pub keyring: Option<Arc<Keyring>>,
}

impl Default for ConfigSettings {
    fn default() -> Self {
        ConfigSettings {
            max_content_bytes: 1024 * 1024,
            retention: Retention::default(),
            read_your_writes_timeout: Duration::from_secs(5),
            keyring: None,
        }
    }
}

/// What to do with the item's JSON Schema.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum SchemaChange {
    #[default]
    Keep,
    Set(serde_json::Value),
    Clear,
}

#[derive(Clone, Debug, Default)]
pub struct PublishRequest {
    pub content: String,
    pub format: ConfigFormat,
    /// `None` keeps the current description (a new item gets none).
    pub description: Option<String>,
    pub tags: Option<Vec<String>>,
    pub app_name: Option<String>,
    pub author: String,
    pub source_ip: String,
    /// The version (revision) the item must be at; 0 means "must not exist".
    pub if_match: Option<Revision>,
    pub schema: SchemaChange,
    /// Seal the content ([`crate::Keyring`]); `None` keeps the item's flag (a new item is
    /// not secret).
    pub secret: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishOutcome {
    pub version: Revision,
    pub md5: String,
    pub created: bool,
}

/// One history entry with its version.
#[derive(Clone, Debug)]
pub struct HistoryRecord {
    pub version: Revision,
    pub entry_id: EntryId,
    pub entry: HistoryEntry,
}

/// A page of history, newest first.
#[derive(Clone, Debug)]
pub struct HistoryPage {
    pub total: usize,
    pub records: Vec<HistoryRecord>,
}

/// Why a publish happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PublishKind {
    Publish,
    /// Restores this version's content.
    Rollback(Revision),
    /// The gray content becomes the main version; the gray record (at this mod revision)
    /// goes in the same transaction.
    Promote {
        gray_version: Revision,
    },
}

pub struct ConfigService {
    pub(crate) store: SharedStore,
    view: Arc<ConfigView>,
    settings: ConfigSettings,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn decode_item(kv: &KeyValue) -> ConfigResult<ConfigItem> {
    decode::<ConfigItem>(&kv.value).map_err(|e| ConfigError::Corrupt(e.to_string()))
}

pub(crate) fn decode_entry(kv: &KeyValue) -> ConfigResult<HistoryEntry> {
    decode::<HistoryEntry>(&kv.value).map_err(|e| ConfigError::Corrupt(e.to_string()))
}

pub(crate) fn encode_value<T: sb_store::codec::StoredValue>(value: &T) -> ConfigResult<Vec<u8>> {
    encode(value).map_err(|e| ConfigError::Corrupt(e.to_string()))
}

pub(crate) fn check_metadata(description: &str, tags: &[String]) -> ConfigResult<()> {
    let size = description.len() + tags.iter().map(String::len).sum::<usize>();
    if size > MAX_METADATA_BYTES {
        return Err(ConfigError::InvalidName {
            field: "description",
            value: format!("{} bytes of description and tags", size),
            reason: format!("limit is {MAX_METADATA_BYTES} bytes"),
        });
    }
    Ok(())
}

/// Checks a parsed document against a JSON Schema; the error names the path and the rule.
fn check_schema(schema: &serde_json::Value, document: &serde_json::Value) -> ConfigResult<()> {
    let validator =
        jsonschema::validator_for(schema).map_err(|e| ConfigError::InvalidSchema(e.to_string()))?;
    if let Some(error) = validator.iter_errors(document).next() {
        let path = error.instance_path().to_string();
        let at = if path.is_empty() { "/".to_owned() } else { path };
        return Err(ConfigError::SchemaViolation(format!("at {at}: {error}")));
    }
    Ok(())
}

impl ConfigService {
    pub fn new(store: SharedStore, view: Arc<ConfigView>, settings: ConfigSettings) -> ConfigService {
        ConfigService { store, view, settings }
    }

    #[cfg(test)]
    pub(crate) fn store_for_tests(&self) -> SharedStore {
        self.store.clone()
    }

    pub fn view(&self) -> &Arc<ConfigView> {
        &self.view
    }

    pub fn settings(&self) -> &ConfigSettings {
        &self.settings
    }

    /// The keys, or the 503 a secret meets on a node without them.
    pub(crate) fn keyring(&self) -> ConfigResult<&Arc<Keyring>> {
        self.settings.keyring.as_ref().ok_or_else(|| {
            ConfigError::SecretsUnavailable(format!(
                "secret configs need master keys, and this node has none: start it with {MASTER_KEY_FLAG}"
            ))
        })
    }

    /// What to store for `content` under the history key `aad`, and its md5: the content
    /// and its md5, or for a secret the sealed content and the version's tag.
    pub(crate) fn seal(&self, aad: &str, content: &str, secret: bool) -> ConfigResult<(String, String)> {
        if !secret {
            return Ok((content.to_owned(), content_md5(content)));
        }
        let keys = self.keyring()?;
        Ok((keys.seal(content, aad)?, keys.tag(aad)?))
    }

    /// The plaintext of a stored history entry (stored under the history key `aad`).
    pub(crate) fn open_entry(&self, aad: &str, entry: &HistoryEntry) -> ConfigResult<String> {
        if !entry.secret {
            return Ok(entry.content.clone());
        }
        self.keyring()?.open(&entry.content, aad)
    }

    /// The current config, from the view.
    pub fn get(&self, key: &ConfigKey) -> Option<ConfigSnapshot> {
        self.view.get(key)
    }

    /// Checks size, format and (when set) the JSON Schema; the first failure wins.
    pub fn validate(
        &self,
        format: ConfigFormat,
        content: &str,
        schema: Option<&serde_json::Value>,
    ) -> ConfigResult<()> {
        let limit = self.settings.max_content_bytes;
        if content.len() > limit {
            return Err(ConfigError::TooLarge { size: content.len(), limit });
        }
        let document = validate_content(format, content).map_err(ConfigError::InvalidContent)?;
        if let Some(schema) = schema {
            // A schema must compile even when the format has no JSON model.
            if let (Some(document), true) = (document, format.has_json_model()) {
                check_schema(schema, &document)?;
            } else {
                jsonschema::validator_for(schema).map_err(|e| ConfigError::InvalidSchema(e.to_string()))?;
            }
        }
        Ok(())
    }

    pub async fn publish(
        &self,
        key: &ConfigKey,
        request: PublishRequest,
        audit: &Audit,
    ) -> ConfigResult<PublishOutcome> {
        self.publish_op(key, request, PublishKind::Publish, audit).await
    }

    pub(crate) async fn publish_op(
        &self,
        key: &ConfigKey,
        request: PublishRequest,
        kind: PublishKind,
        audit: &Audit,
    ) -> ConfigResult<PublishOutcome> {
        let rolled_back_from = match kind {
            PublishKind::Rollback(version) => Some(version),
            _ => None,
        };
        // Size and syntax first: they do not depend on the item.
        let limit = self.settings.max_content_bytes;
        if request.content.len() > limit {
            return Err(ConfigError::TooLarge { size: request.content.len(), limit });
        }
        validate_content(request.format, &request.content).map_err(ConfigError::InvalidContent)?;
        let item_key = key.item_key();
        for attempt in 0..MAX_ATTEMPTS {
            // First from the view (no round trip; this node's own writes are in it), then,
            // if the transaction's compare says it was stale, from the store.
            let viewed = (attempt == 0).then(|| self.view.snapshot().for_write(key));
            let (current_version, current_item) = match viewed {
                Some(Some((item, version))) => (version, Some(ConfigItem::clone(&item))),
                // An item absent from the view may exist elsewhere; creates read the store.
                Some(None) | None => {
                    let current = self.store.get(item_key.as_bytes()).await?;
                    let version = current.as_ref().map_or(0, |kv| kv.mod_revision);
                    (version, current.as_ref().map(decode_item).transpose()?)
                }
            };
            let before = current_item.as_ref().map(encode_value).transpose()?;
            if let Some(expected) = request.if_match {
                if expected != current_version {
                    if attempt == 0 {
                        continue; // the view may be behind: ask the store before refusing
                    }
                    return Err(ConfigError::VersionMismatch {
                        key: key.to_string(),
                        expected,
                        current: current_version,
                    });
                }
            }
            let schema = match &request.schema {
                SchemaChange::Keep => current_item.as_ref().and_then(|i| i.schema.clone()),
                SchemaChange::Set(schema) => Some(schema.clone()),
                SchemaChange::Clear => None,
            };
            self.validate(request.format, &request.content, schema.as_ref())?;
            let description = request
                .description
                .clone()
                .or_else(|| current_item.as_ref().map(|i| i.description.clone()))
                .unwrap_or_default();
            let tags = request
                .tags
                .clone()
                .or_else(|| current_item.as_ref().map(|i| i.tags.clone()))
                .unwrap_or_default();
            check_metadata(&description, &tags)?;
            let app_name = request
                .app_name
                .clone()
                .or_else(|| current_item.as_ref().map(|i| i.app_name.clone()))
                .unwrap_or_default();
            let after = match &current_item {
                Some(item) => EntryId::parse(&item.entry),
                None => self.latest_entry(key).await?,
            };
            let now = now_ms();
            let entry_id = EntryId::next(now, after);
            let secret = request.secret.unwrap_or_else(|| current_item.as_ref().is_some_and(|i| i.secret));
            let (stored, stored_md5) = self.seal(&key.history_key(&entry_id), &request.content, secret)?;
            // A plain item's stored md5 is its content's; a secret's is the version's tag.
            let md5 = if secret { content_md5(&request.content) } else { stored_md5.clone() };
            let op = match (kind, &current_item) {
                (PublishKind::Rollback(_), _) => HistoryOp::Rollback,
                (PublishKind::Promote { .. }, _) => HistoryOp::Promote,
                (PublishKind::Publish, None) => HistoryOp::Create,
                (PublishKind::Publish, Some(_)) => HistoryOp::Update,
            };
            let history = HistoryEntry {
                op,
                content: stored,
                format: request.format,
                md5: stored_md5.clone(),
                description: description.clone(),
                tags: tags.clone(),
                app_name: app_name.clone(),
                author: request.author.clone(),
                source_ip: request.source_ip.clone(),
                at_ms: now,
                rolled_back_from,
                secret,
            };
            let item = ConfigItem {
                entry: entry_id.to_string(),
                format: request.format,
                md5: stored_md5,
                size: request.content.len(),
                description,
                tags,
                app_name,
                author: request.author.clone(),
                created_ms: current_item.as_ref().map_or(now, |i| i.created_ms),
                modified_ms: now,
                schema,
                secret,
            };
            let mut compares =
                vec![Compare::mod_revision(item_key.clone(), CompareOp::Equal, current_version)];
            let item_value = encode_value(&item)?;
            let action = match kind {
                PublishKind::Publish => "config.publish",
                PublishKind::Rollback(_) => "config.rollback",
                PublishKind::Promote { .. } => "config.gray.promote",
            };
            let mut ops = vec![
                TxnOp::put(key.history_key(&entry_id), encode_value(&history)?),
                audit.op(action, item_key.clone(), before.as_deref(), Some(&item_value)),
                TxnOp::put(item_key.clone(), item_value),
            ];
            ops.extend(self.retention_ops(key, entry_id, now));
            if let PublishKind::Promote { gray_version } = kind {
                compares.push(Compare::mod_revision(key.gray_key(), CompareOp::Equal, gray_version));
                ops.push(TxnOp::delete(key.gray_key()));
            }
            let txn = Txn::new().when(compares).and_then(ops);
            let response = self.store.txn(txn).await?;
            if !response.succeeded {
                continue; // someone else wrote the item; read again (If-Match then reports it)
            }
            self.wait_for(response.revision).await?;
            self.prune_quietly(key).await;
            return Ok(PublishOutcome { version: response.revision, md5, created: current_item.is_none() });
        }
        Err(ConfigError::Contended(key.to_string()))
    }

    /// Deletes an item, recording the delete in its history; `None` if it did not exist.
    pub async fn delete(
        &self,
        key: &ConfigKey,
        if_match: Option<Revision>,
        audit: &Audit,
    ) -> ConfigResult<Option<Revision>> {
        let item_key = key.item_key();
        for _ in 0..MAX_ATTEMPTS {
            let Some(current) = self.store.get(item_key.as_bytes()).await? else {
                return match if_match {
                    Some(expected) if expected != 0 => {
                        Err(ConfigError::VersionMismatch { key: key.to_string(), expected, current: 0 })
                    }
                    _ => Ok(None),
                };
            };
            if let Some(expected) = if_match {
                if expected != current.mod_revision {
                    return Err(ConfigError::VersionMismatch {
                        key: key.to_string(),
                        expected,
                        current: current.mod_revision,
                    });
                }
            }
            let item = decode_item(&current)?;
            let now = now_ms();
            let entry_id = EntryId::next(now, EntryId::parse(&item.entry));
            let history = HistoryEntry {
                op: HistoryOp::Delete,
                content: String::new(),
                format: item.format,
                md5: String::new(),
                description: String::new(),
                tags: Vec::new(),
                app_name: item.app_name.clone(),
                author: audit.actor.clone(),
                source_ip: audit.source_ip.clone(),
                at_ms: now,
                rolled_back_from: None,
                secret: false,
            };
            let txn = Txn::new()
                .when([Compare::mod_revision(item_key.clone(), CompareOp::Equal, current.mod_revision)])
                .and_then([
                    TxnOp::put(key.history_key(&entry_id), encode_value(&history)?),
                    audit.op("config.delete", item_key.clone(), Some(&current.value), None),
                    TxnOp::delete(item_key.clone()),
                    // A gray release ends with its item.
                    TxnOp::delete(key.gray_key()),
                ])
                .and_then(self.retention_ops(key, entry_id, now));
            let response = self.store.txn(txn).await?;
            if !response.succeeded {
                continue;
            }
            self.wait_for(response.revision).await?;
            self.prune_quietly(key).await;
            return Ok(Some(response.revision));
        }
        Err(ConfigError::Contended(key.to_string()))
    }

    /// Restores a version's content as a new publish.
    pub async fn rollback(
        &self,
        key: &ConfigKey,
        version: Revision,
        if_match: Option<Revision>,
        audit: &Audit,
    ) -> ConfigResult<PublishOutcome> {
        let record = self.history_entry(key, version).await?;
        if record.entry.op == HistoryOp::Delete {
            return Err(ConfigError::NotFound(format!(
                "{key} version {version}: that version is a delete, with no content to roll back to"
            )));
        }
        let content = self.open_entry(&key.history_key(&record.entry_id), &record.entry)?;
        let request = PublishRequest {
            content,
            format: record.entry.format,
            description: Some(record.entry.description),
            tags: Some(record.entry.tags),
            app_name: None,
            author: audit.actor.clone(),
            source_ip: audit.source_ip.clone(),
            if_match,
            schema: crate::service::SchemaChange::Keep,
            secret: None,
        };
        self.publish_op(key, request, PublishKind::Rollback(version), audit).await
    }

    pub(crate) async fn wait_for(&self, revision: Revision) -> ConfigResult<()> {
        self.view
            .wait_for(revision, self.settings.read_your_writes_timeout)
            .await
            .map_err(|source| ConfigError::NotCaughtUp { revision, source })
    }

    /// Applies retention to one item's history; the newest entry always stays.
    pub async fn prune(&self, key: &ConfigKey) -> ConfigResult<usize> {
        let keys = self.history_keys(key).await?;
        let entries: Vec<(EntryId, bool)> = keys.iter().map(|(_, id, _, gray)| (*id, *gray)).collect();
        let doomed = self.settings.retention.doomed_entries(&entries, None, now_ms());
        let mut deleted = 0;
        for chunk in doomed.chunks(100) {
            let ops: Vec<TxnOp> = chunk.iter().map(|&i| TxnOp::delete(keys[i].0.clone())).collect();
            self.store.txn(Txn::new().and_then(ops)).await?;
            deleted += chunk.len();
        }
        Ok(deleted)
    }

    /// Retention's deletes for a write that adds history entry `adding`, to commit in the
    /// write's own transaction (as the view knows the item's entries: an entry it has not
    /// seen yet is left to [`Self::prune_quietly`]). At most [`RETENTION_OPS`] of them.
    fn retention_ops(&self, key: &ConfigKey, adding: EntryId, now_ms: u64) -> Vec<TxnOp> {
        let doomed = self.view.snapshot().doomed(key, &self.settings.retention, Some(adding), now_ms);
        doomed.into_iter().take(RETENTION_OPS).map(TxnOp::delete).collect()
    }

    async fn prune_quietly(&self, key: &ConfigKey) {
        // The view knows each item's entries: only an item it finds over retention (a write
        // whose transaction could not take every delete, or an age rule) needs the store.
        if self.view.snapshot().doomed(key, &self.settings.retention, None, now_ms()).is_empty() {
            return;
        }
        if let Err(error) = self.prune(key).await {
            warn!(config = %key, %error, "config history retention failed; the next publish retries");
        }
    }

    /// Applies retention to every item the view knows (for the age rule on quiet items).
    pub async fn sweep(&self) -> ConfigResult<usize> {
        let state = self.view.snapshot();
        let mut deleted = 0;
        for key in state.paths().filter_map(|p| ConfigKey::from_path(p)) {
            deleted += self.prune(&key).await?;
        }
        Ok(deleted)
    }

    /// Runs [`ConfigService::sweep`] every `interval` until the service is dropped.
    pub fn spawn_sweeper(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let Some(service) = weak.upgrade() else { return };
                if let Err(error) = service.sweep().await {
                    warn!(%error, "config history sweep failed");
                }
            }
        })
    }
}

/// Where each master key's check value is kept, so every node can tell that it holds the
/// same key under the same id as the others (`config/keys/{id}`).
pub const KEY_CHECKS_PREFIX: &str = "config/keys/";
/// History entries read per page while re-encrypting.
const REENCRYPT_PAGE: u64 = 256;

/// What a re-encryption pass did, and what is left sealed under each key.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KeyUsage {
    pub active: String,
    /// Entries sealed under each key after the pass.
    pub entries_by_key: std::collections::BTreeMap<String, usize>,
    /// Entries this pass moved to the active key.
    pub reencrypted: usize,
}

impl ConfigService {
    /// Records this node's key check values (create-if-absent) and refuses keys whose
    /// check differs from what another node recorded under the same id.
    pub async fn check_keys(&self) -> ConfigResult<()> {
        let Some(keys) = self.settings.keyring.as_ref() else { return Ok(()) };
        for (id, check) in keys.checks() {
            let key = format!("{KEY_CHECKS_PREFIX}{id}");
            let txn = Txn::new()
                .when([Compare::absent(key.clone())])
                .and_then([TxnOp::put(key.clone(), check.as_bytes().to_vec())])
                .or_else([TxnOp::get(key.clone())]);
            let response = self.store.txn(txn).await?;
            if response.succeeded {
                continue;
            }
            let recorded = self.store.get(key.as_bytes()).await?.map(|kv| kv.value).unwrap_or_default();
            if recorded != check.as_bytes() {
                return Err(ConfigError::Keys(format!(
                    "key {id:?} in {MASTER_KEY_FLAG} is not the key other nodes use under that id \
                     (every node must be given the same key file)"
                )));
            }
        }
        Ok(())
    }

    /// Moves every secret history entry sealed under another key to the active key, one
    /// compare-and-put per entry (a concurrent change wins; the next pass retries). Tags are
    /// not recomputed: a version's md5 stays what it was. Returns what remains under each key.
    pub async fn reencrypt(&self) -> ConfigResult<KeyUsage> {
        self.scan_keys(true).await
    }

    /// How many secret history entries are sealed under each key: a key with none left can
    /// be retired from every node's key file.
    pub async fn key_usage(&self) -> ConfigResult<KeyUsage> {
        self.scan_keys(false).await
    }

    async fn scan_keys(&self, move_them: bool) -> ConfigResult<KeyUsage> {
        let keys = self.keyring()?.clone();
        let mut usage = KeyUsage { active: keys.active().to_owned(), ..KeyUsage::default() };
        let mut range = sb_store::KeyRange::prefix(crate::model::HISTORY_PREFIX);
        loop {
            let page = self.store.range(RangeRequest::new(range.clone()).with_limit(REENCRYPT_PAGE)).await?;
            for kv in &page.kvs {
                let Ok(mut entry) = decode::<HistoryEntry>(&kv.value) else { continue };
                if !entry.secret {
                    continue;
                }
                let Some(id) = Keyring::key_of(&entry.content).map(str::to_owned) else { continue };
                if id == keys.active() || !move_them {
                    *usage.entries_by_key.entry(id).or_default() += 1;
                    continue;
                }
                let aad = String::from_utf8_lossy(&kv.key).into_owned();
                let moved = match keys.open(&entry.content, &aad) {
                    Ok(plain) => {
                        entry.content = keys.seal(&plain, &aad)?;
                        let txn = Txn::new()
                            .when([Compare::mod_revision(kv.key.clone(), CompareOp::Equal, kv.mod_revision)])
                            .and_then([TxnOp::put(kv.key.clone(), encode_value(&entry)?)]);
                        self.store.txn(txn).await?.succeeded
                    }
                    Err(error) => {
                        warn!(entry = %aad, %error, "a secret entry cannot be re-encrypted");
                        false
                    }
                };
                let now_under = if moved { keys.active().to_owned() } else { id };
                usage.reencrypted += usize::from(moved);
                *usage.entries_by_key.entry(now_under).or_default() += 1;
            }
            match (page.more, page.kvs.last()) {
                (true, Some(last)) => range = range.after(&last.key),
                _ => break,
            }
        }
        Ok(usage)
    }

    /// Runs [`ConfigService::reencrypt`] now and then every `interval` while secrets are
    /// sealed under a key other than the active one, until the service is dropped.
    pub fn spawn_reencrypter(self: &Arc<Self>, interval: Duration) -> Option<tokio::task::JoinHandle<()>> {
        self.settings.keyring.as_ref()?;
        let weak = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            loop {
                ticker.tick().await;
                let Some(service) = weak.upgrade() else { return };
                match service.reencrypt().await {
                    Ok(usage) if usage.reencrypted > 0 => {
                        tracing::info!(reencrypted = usage.reencrypted, active = %usage.active,
                            "secret configs re-encrypted to the active master key");
                    }
                    Ok(_) => {}
                    Err(error) => warn!(%error, "re-encrypting secret configs failed; retrying later"),
                }
            }
        }))
    }
}
