//! Export and import: a namespace (or one group) as one YAML document with metadata, and
//! back. An import validates every item before writing any, then writes in batches that
//! stay within the store's operation and byte limits, and reports what it did.

use std::collections::{BTreeMap, HashSet};

use sb_audit::Audit;
use sb_store::{txn_request_bytes, ETCD_MAX_REQUEST_BYTES, ETCD_MAX_TXN_OPS};
use sb_store::{Compare, CompareOp, RangeRequest, Revision, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, ConfigResult};
use crate::format::ConfigFormat;
use crate::model::{content_md5, ConfigItem, ConfigKey, EntryId, HistoryEntry, HistoryOp, ITEMS_PREFIX};
use crate::service::{encode_value, now_ms, ConfigService};

pub const EXPORT_KIND: &str = "switchboard-config-export";
pub const EXPORT_VERSION: u32 = 1;
/// Operations counted per imported config: its item, its history entry and its audit record.
pub const OPS_PER_ITEM: usize = 3;
/// Room left in each batch for the transaction's framing.
const BATCH_BYTES: usize = ETCD_MAX_REQUEST_BYTES - 64 * 1024;

/// One exported config: its current version's content and metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExportItem {
    pub group: String,
    pub data_id: String,
    pub format: ConfigFormat,
    pub content: String,
    /// The md5 of the content; an import checks it when present.
    #[serde(default)]
    pub md5: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub app_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<serde_json::Value>,
    /// A secret config: imported sealed again. Its `md5` is empty (no md5 of a secret's
    /// plaintext is ever written down).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
    /// Set when `content` is sealed: the history key it was sealed under (its associated
    /// data). A server with the same master key opens it on import.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_at: Option<String>,
}

/// An export file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExportDoc {
    pub kind: String,
    pub version: u32,
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default)]
    pub exported_at_ms: u64,
    pub items: Vec<ExportItem>,
}

/// What an import does when a config already exists with other content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConflictPolicy {
    Skip,
    Overwrite,
    /// Refuse the whole import (before any write).
    Abort,
}

impl ConflictPolicy {
    pub fn parse(text: &str) -> ConfigResult<ConflictPolicy> {
        match text {
            "skip" => Ok(ConflictPolicy::Skip),
            "overwrite" => Ok(ConflictPolicy::Overwrite),
            "abort" => Ok(ConflictPolicy::Abort),
            other => Err(ConfigError::InvalidImport(format!(
                "conflict policy {other:?} is not one of skip, overwrite, abort"
            ))),
        }
    }
}

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    pub total: usize,
    pub created: Vec<String>,
    pub overwritten: Vec<String>,
    /// Existing with other content, left alone (policy skip).
    pub skipped: Vec<String>,
    /// Existing with the same content and format: nothing to write.
    pub unchanged: Vec<String>,
    pub batches: usize,
    /// The revision of the last batch (0 when nothing was written).
    pub revision: Revision,
}

pub(crate) fn json_to_yaml(value: &serde_json::Value) -> yaml_rust2::Yaml {
    use yaml_rust2::Yaml;
    match value {
        serde_json::Value::Null => Yaml::Null,
        serde_json::Value::Bool(b) => Yaml::Boolean(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Integer(i),
            None => Yaml::Real(n.to_string()),
        },
        serde_json::Value::String(s) => Yaml::String(s.clone()),
        serde_json::Value::Array(items) => Yaml::Array(items.iter().map(json_to_yaml).collect()),
        serde_json::Value::Object(map) => {
            Yaml::Hash(map.iter().map(|(k, v)| (Yaml::String(k.clone()), json_to_yaml(v))).collect())
        }
    }
}

impl ExportDoc {
    /// The document as YAML.
    pub fn to_yaml(&self) -> ConfigResult<String> {
        let value = serde_json::to_value(self).map_err(|e| ConfigError::Corrupt(e.to_string()))?;
        let mut out = String::new();
        let mut emitter = yaml_rust2::YamlEmitter::new(&mut out);
        // Double-quoted strings with escapes: yaml-rust2's literal blocks lose content
        // that starts with spaces.
        emitter.dump(&json_to_yaml(&value)).map_err(|e| ConfigError::Corrupt(format!("{e:?}")))?;
        out.push('\n');
        Ok(out)
    }

    /// Parses an export file (YAML, or JSON, which is YAML too).
    pub fn parse(text: &str) -> ConfigResult<ExportDoc> {
        let docs = yaml_rust2::YamlLoader::load_from_str(text).map_err(|e| {
            ConfigError::InvalidImport(format!(
                "the file is not valid YAML at line {} column {}: {}",
                e.marker().line(),
                e.marker().col() + 1,
                e.info()
            ))
        })?;
        let doc = docs.first().ok_or_else(|| ConfigError::InvalidImport("the file is empty".into()))?;
        let value = crate::format::yaml_to_json(doc);
        if value.get("kind").and_then(|k| k.as_str()) != Some(EXPORT_KIND) {
            return Err(ConfigError::InvalidImport(format!("the file's kind is not {EXPORT_KIND:?}")));
        }
        // Name the first bad entry rather than serde's path.
        if let Some(items) = value.get("items").and_then(|i| i.as_array()) {
            for (index, item) in items.iter().enumerate() {
                serde_json::from_value::<ExportItem>(item.clone()).map_err(|e| {
                    ConfigError::InvalidImport(format!("items[{index}] is not a config entry: {e}"))
                })?;
            }
        }
        let doc: ExportDoc = serde_json::from_value(value)
            .map_err(|e| ConfigError::InvalidImport(format!("the file is not an export: {e}")))?;
        if doc.version > EXPORT_VERSION {
            return Err(ConfigError::InvalidImport(format!(
                "export version {} is newer than this server's {EXPORT_VERSION}",
                doc.version
            )));
        }
        Ok(doc)
    }
}

enum Action {
    Create,
    Overwrite,
}

/// An import checked and decided, not yet written: what [`ConfigService::plan_import`]
/// returns and [`ConfigService::apply_import`] writes.
pub struct ImportPlan {
    planned: Vec<Planned>,
    report: ImportReport,
}

impl ImportPlan {
    /// How many configs the plan writes.
    pub fn writes(&self) -> usize {
        self.planned.len()
    }
}

/// How far an import has got: configs written of those planned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ImportProgress {
    pub written: usize,
    pub planned: usize,
}

struct Planned {
    key: ConfigKey,
    item: ExportItem,
    current: Option<(ConfigItem, Revision)>,
    action: Action,
}

impl ConfigService {
    /// The current version of every config of a namespace (or one group), from the view.
    /// Secrets are exported sealed, or in plaintext when `reveal` is given.
    pub fn export(
        &self,
        namespace: &str,
        group: Option<&str>,
        reveal: Option<&crate::secret::Reveal>,
    ) -> ConfigResult<ExportDoc> {
        let state = self.view().snapshot();
        let mut items = Vec::new();
        for s in state.list(namespace, group) {
            let (content, md5, sealed_at) = match (s.item.secret, reveal) {
                (false, _) => (s.content.to_string(), s.item.md5.clone(), None),
                (true, Some(crate::secret::Reveal(keys))) => {
                    (keys.open(&s.content, &s.entry_key()?)?, String::new(), None)
                }
                (true, None) => (s.content.to_string(), String::new(), Some(s.entry_key()?)),
            };
            items.push(ExportItem {
                group: s.key.group.clone(),
                data_id: s.key.data_id.clone(),
                format: s.item.format,
                content,
                md5,
                description: s.item.description.clone(),
                tags: s.item.tags.clone(),
                app_name: s.item.app_name.clone(),
                schema: s.item.schema.clone(),
                secret: s.item.secret,
                sealed_at,
            });
        }
        Ok(ExportDoc {
            kind: EXPORT_KIND.into(),
            version: EXPORT_VERSION,
            namespace: namespace.into(),
            group: group.map(str::to_owned),
            exported_at_ms: now_ms(),
            items,
        })
    }

    /// Imports `doc` into `namespace`: [`ConfigService::plan_import`], then
    /// [`ConfigService::apply_import`].
    pub async fn import(
        &self,
        namespace: &str,
        doc: ExportDoc,
        policy: ConflictPolicy,
        audit: &Audit,
    ) -> ConfigResult<ImportReport> {
        let plan = self.plan_import(namespace, doc, policy).await?;
        self.apply_import(plan, audit, |_| {}).await
    }

    /// Validates every item of `doc` (names, size, format, schema, md5, duplicates) and
    /// decides every conflict, writing nothing.
    pub async fn plan_import(
        &self,
        namespace: &str,
        doc: ExportDoc,
        policy: ConflictPolicy,
    ) -> ConfigResult<ImportPlan> {
        crate::model::check_namespace(namespace)?;
        let invalid = |index: usize, item: &ExportItem, reason: String| {
            ConfigError::InvalidImport(format!("items[{index}] ({}/{}): {reason}", item.group, item.data_id))
        };
        // The namespace's items as stored (authoritative, not the view).
        let response = self.store.range(RangeRequest::prefix(format!("{ITEMS_PREFIX}{namespace}/"))).await?;
        let mut existing: BTreeMap<String, (ConfigItem, Revision)> = BTreeMap::new();
        for kv in &response.kvs {
            let item = sb_store::codec::decode::<ConfigItem>(&kv.value)
                .map_err(|e| ConfigError::Corrupt(e.to_string()))?;
            existing.insert(String::from_utf8_lossy(&kv.key).into_owned(), (item, kv.mod_revision));
        }
        let mut report = ImportReport { total: doc.items.len(), ..ImportReport::default() };
        let mut seen = HashSet::new();
        let mut plan = Vec::new();
        for (index, mut item) in doc.items.into_iter().enumerate() {
            let key = ConfigKey::new(namespace, item.group.clone(), item.data_id.clone())
                .map_err(|e| invalid(index, &item, e.to_string()))?;
            if !seen.insert(key.clone()) {
                return Err(invalid(index, &item, "it appears twice in the file".into()));
            }
            // A sealed secret opens with this node's keys (the exporting server's).
            if let Some(aad) = item.sealed_at.take() {
                if !item.secret {
                    return Err(invalid(index, &item, "sealed content must be marked secret".into()));
                }
                item.content = match self.keyring()?.open(&item.content, &aad) {
                    Ok(plain) => plain,
                    Err(ConfigError::SecretsUnavailable(reason)) => {
                        return Err(ConfigError::SecretsUnavailable(format!(
                            "items[{index}] ({}/{}): {reason}",
                            item.group, item.data_id
                        )))
                    }
                    Err(error) => return Err(invalid(index, &item, error.to_string())),
                };
            } else if item.secret && item.content.starts_with(crate::secret::SEALED_PREFIX) {
                return Err(invalid(index, &item, "sealed content without sealed_at".into()));
            }
            if item.secret {
                self.keyring()?;
            }
            self.validate(item.format, &item.content, item.schema.as_ref())
                .map_err(|e| invalid(index, &item, e.to_string()))?;
            let md5 = content_md5(&item.content);
            if !item.md5.is_empty() && item.md5 != md5 {
                return Err(invalid(
                    index,
                    &item,
                    format!("md5 {} does not match the content's {md5}", item.md5),
                ));
            }
            crate::service::check_metadata(&item.description, &item.tags)
                .map_err(|e| invalid(index, &item, e.to_string()))?;
            let current = existing.get(&key.item_key()).cloned();
            let same_content = match &current {
                Some((found, _)) if found.secret && item.secret => {
                    self.current_plaintext(&key, found).await? == item.content
                }
                Some((found, _)) => !found.secret && !item.secret && found.md5 == md5,
                None => false,
            };
            let action = match &current {
                None => Action::Create,
                Some((found, _))
                    if same_content && found.format == item.format && found.schema == item.schema =>
                {
                    report.unchanged.push(key.to_string());
                    continue;
                }
                Some(_) => match policy {
                    ConflictPolicy::Skip => {
                        report.skipped.push(key.to_string());
                        continue;
                    }
                    ConflictPolicy::Overwrite => Action::Overwrite,
                    ConflictPolicy::Abort => {
                        return Err(ConfigError::ImportConflict(format!(
                            "{key} exists with other content (policy abort); nothing was written"
                        )))
                    }
                },
            };
            plan.push(Planned { key, item, current, action });
        }
        Ok(ImportPlan { planned: plan, report })
    }

    /// Writes a plan, in batches within the store's limits, each comparing every item's
    /// version; `progress` hears after each batch.
    pub async fn apply_import(
        &self,
        plan: ImportPlan,
        audit: &Audit,
        mut progress: impl FnMut(ImportProgress) + Send,
    ) -> ConfigResult<ImportReport> {
        let (author, source_ip) = (audit.actor.as_str(), audit.source_ip.as_str());
        let ImportPlan { planned: plan, mut report } = plan;
        let planned_count = plan.len();
        progress(ImportProgress { written: 0, planned: planned_count });
        // Writes, in batches that fit the store's limits.
        let max_items = ETCD_MAX_TXN_OPS / OPS_PER_ITEM;
        let mut batch: Option<Txn> = None;
        let mut in_batch: Vec<(String, bool)> = Vec::new();
        let mut written = 0usize;
        for planned in plan {
            let now = now_ms();
            let after = match &planned.current {
                Some((item, _)) => EntryId::parse(&item.entry),
                None => self.latest_entry(&planned.key).await?,
            };
            let entry_id = EntryId::next(now, after);
            let secret = planned.item.secret;
            let (stored, md5) =
                self.seal(&planned.key.history_key(&entry_id), &planned.item.content, secret)?;
            let created = matches!(planned.action, Action::Create);
            let history = HistoryEntry {
                op: if created { HistoryOp::Create } else { HistoryOp::Update },
                content: stored,
                format: planned.item.format,
                md5: md5.clone(),
                description: planned.item.description.clone(),
                tags: planned.item.tags.clone(),
                app_name: planned.item.app_name.clone(),
                author: author.to_owned(),
                source_ip: source_ip.to_owned(),
                at_ms: now,
                rolled_back_from: None,
                secret,
            };
            let item = ConfigItem {
                entry: entry_id.to_string(),
                format: planned.item.format,
                md5,
                size: planned.item.content.len(),
                description: planned.item.description,
                tags: planned.item.tags,
                app_name: planned.item.app_name,
                author: author.to_owned(),
                created_ms: planned.current.as_ref().map_or(now, |(i, _)| i.created_ms),
                modified_ms: now,
                schema: planned.item.schema,
                secret,
            };
            let version = planned.current.as_ref().map_or(0, |(_, v)| *v);
            let item_key = planned.key.item_key();
            let compare = Compare::mod_revision(item_key.clone(), CompareOp::Equal, version);
            let item_value = encode_value(&item)?;
            let before = planned.current.as_ref().map(|(item, _)| encode_value(item)).transpose()?;
            // One record per imported config, in the config's own batch.
            let ops = [
                TxnOp::put(planned.key.history_key(&entry_id), encode_value(&history)?),
                audit.op("config.import", item_key.clone(), before.as_deref(), Some(&item_value)),
                TxnOp::put(item_key, item_value),
            ];
            let single = Txn::new().when([compare.clone()]).and_then(ops.clone());
            if txn_request_bytes(&single) > BATCH_BYTES {
                return Err(ConfigError::InvalidImport(format!(
                    "{} is too large for one store request",
                    planned.key
                )));
            }
            let grown = batch.clone().map(|txn| {
                let mut txn = txn;
                txn.compares.push(compare.clone());
                txn.success.extend(ops.clone());
                txn
            });
            match grown {
                Some(txn) if in_batch.len() < max_items && txn_request_bytes(&txn) <= BATCH_BYTES => {
                    batch = Some(txn);
                }
                _ => {
                    if let Some(full) = batch.take() {
                        written += self.commit_batch(full, &mut in_batch, &mut report, written).await?;
                        progress(ImportProgress { written, planned: planned_count });
                    }
                    batch = Some(single);
                }
            }
            in_batch.push((planned.key.to_string(), created));
        }
        if let Some(full) = batch.take() {
            written += self.commit_batch(full, &mut in_batch, &mut report, written).await?;
            progress(ImportProgress { written, planned: planned_count });
        }
        if report.revision > 0 {
            self.wait_for(report.revision).await?;
        }
        Ok(report)
    }

    /// The plaintext of an item's current version, from the store.
    async fn current_plaintext(&self, key: &ConfigKey, item: &ConfigItem) -> ConfigResult<String> {
        let entry = EntryId::parse(&item.entry)
            .ok_or_else(|| ConfigError::Corrupt(format!("{key} names history entry {:?}", item.entry)))?;
        let aad = key.history_key(&entry);
        let kv = self
            .store
            .get(aad.as_bytes())
            .await?
            .ok_or_else(|| ConfigError::Corrupt(format!("the current entry of {key} is missing")))?;
        self.open_entry(&aad, &crate::service::decode_entry(&kv)?)
    }

    async fn commit_batch(
        &self,
        txn: Txn,
        in_batch: &mut Vec<(String, bool)>,
        report: &mut ImportReport,
        written_before: usize,
    ) -> ConfigResult<usize> {
        let count = in_batch.len();
        let response = self.store.txn(txn).await?;
        if !response.succeeded {
            return Err(ConfigError::ImportConflict(format!(
                "a config of the batch after the first {written_before} written ones changed during the \
                 import; {written_before} of the planned configs were written, run the import again"
            )));
        }
        for (key, created) in in_batch.drain(..) {
            if created {
                report.created.push(key);
            } else {
                report.overwritten.push(key);
            }
        }
        report.batches += 1;
        report.revision = response.revision;
        Ok(count)
    }
}
