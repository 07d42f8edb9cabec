//! History reads: the list (keys only, then one range for a page), one entry by version,
//! the one before it, and diffs. They go to the store: history is not in the view.

use sb_store::{KeyRange, RangeRequest, Revision};

use crate::diff::unified_diff;
use crate::error::{ConfigError, ConfigResult};
use crate::model::{split_history_path, ConfigKey, EntryId, HISTORY_PREFIX};
use crate::service::{decode_entry, ConfigService, HistoryPage, HistoryRecord};

impl ConfigService {
    /// The item's history keys in commit order, without values.
    pub(crate) async fn history_keys(
        &self,
        key: &ConfigKey,
    ) -> ConfigResult<Vec<(Vec<u8>, EntryId, Revision, bool)>> {
        let request = RangeRequest::prefix(key.history_prefix()).keys_only();
        let response = self.store.range(request).await?;
        Ok(response
            .kvs
            .into_iter()
            .filter_map(|kv| {
                let text = std::str::from_utf8(&kv.key).ok()?;
                let (_, entry, gray) = split_history_path(text.strip_prefix(HISTORY_PREFIX)?)?;
                Some((kv.key.clone(), entry, kv.create_revision, gray))
            })
            .collect())
    }

    pub(crate) async fn latest_entry(&self, key: &ConfigKey) -> ConfigResult<Option<EntryId>> {
        Ok(self.history_keys(key).await?.last().map(|(_, id, _, _)| *id))
    }

    /// A page of history, newest first. `page` starts at 1.
    pub async fn history(&self, key: &ConfigKey, page: usize, page_size: usize) -> ConfigResult<HistoryPage> {
        let mut keys = self.history_keys(key).await?;
        keys.reverse();
        let total = keys.len();
        let start = page.saturating_sub(1).saturating_mul(page_size);
        let chosen: Vec<_> = keys.into_iter().skip(start).take(page_size).collect();
        let mut records = Vec::with_capacity(chosen.len());
        // The chosen keys are contiguous in key order: one range read.
        if let (Some(newest), Some(oldest)) = (chosen.first(), chosen.last()) {
            let mut end = newest.0.clone();
            end.push(0);
            let range = KeyRange::Between { start: oldest.0.clone(), end };
            let response = self.store.range(RangeRequest::new(range)).await?;
            for kv in response.kvs.iter().rev() {
                let Some((_, entry_id, _)) = std::str::from_utf8(&kv.key)
                    .ok()
                    .and_then(|k| k.strip_prefix(HISTORY_PREFIX))
                    .and_then(split_history_path)
                else {
                    continue;
                };
                records.push(HistoryRecord {
                    version: kv.create_revision,
                    entry_id,
                    entry: decode_entry(kv)?,
                });
            }
        }
        Ok(HistoryPage { total, records })
    }

    /// One version's history entry.
    pub async fn history_entry(&self, key: &ConfigKey, version: Revision) -> ConfigResult<HistoryRecord> {
        let keys = self.history_keys(key).await?;
        let found = keys.into_iter().find(|(_, _, rev, _)| *rev == version);
        let not_found = || ConfigError::VersionNotFound { key: key.to_string(), version };
        let (store_key, entry_id, _, _) = found.ok_or_else(not_found)?;
        let kv = self.store.get(&store_key).await?.ok_or_else(not_found)?;
        Ok(HistoryRecord { version, entry_id, entry: decode_entry(&kv)? })
    }

    /// The entry committed just before `version` (Nacos's `history/previous`).
    pub async fn previous_entry(&self, key: &ConfigKey, version: Revision) -> ConfigResult<HistoryRecord> {
        let keys = self.history_keys(key).await?;
        let position = keys
            .iter()
            .position(|(_, _, rev, _)| *rev == version)
            .ok_or_else(|| ConfigError::VersionNotFound { key: key.to_string(), version })?;
        let previous = position
            .checked_sub(1)
            .and_then(|p| keys.get(p))
            .ok_or_else(|| ConfigError::NotFound(format!("{key}: nothing before version {version}")))?;
        self.history_entry(key, previous.2).await
    }

    /// A unified diff from version `from` to version `to` (the current version if `None`),
    /// of what `client` may read (secrets it may not read differ only in their masks).
    pub async fn diff(
        &self,
        key: &ConfigKey,
        from: Revision,
        to: Option<Revision>,
        client: &crate::GrayClient,
    ) -> ConfigResult<String> {
        let (old, _) = self.history_entry(key, from).await?.readable(key, client)?;
        let (new_content, to) = match to {
            Some(to) => (self.history_entry(key, to).await?.readable(key, client)?.0, to),
            None => {
                let current = self.get(key).ok_or_else(|| ConfigError::NotFound(key.to_string()))?;
                (current.readable(client)?.0, current.version)
            }
        };
        Ok(unified_diff(&old, &new_content, &format!("{key} version {from}"), &format!("{key} version {to}")))
    }
}

impl HistoryRecord {
    /// The history key the entry is stored under (a secret's associated data).
    pub fn entry_key(&self, key: &ConfigKey) -> String {
        if self.entry.op == crate::model::HistoryOp::Gray {
            key.gray_history_key(&self.entry_id)
        } else {
            key.history_key(&self.entry_id)
        }
    }

    /// What `client` reads of this entry: its content and md5 (see [`crate::readable`]).
    pub fn readable(&self, key: &ConfigKey, client: &crate::GrayClient) -> ConfigResult<(String, String)> {
        crate::secret::readable(
            &self.entry.content,
            &self.entry.md5,
            self.entry.secret,
            &self.entry_key(key),
            client,
        )
    }
}
