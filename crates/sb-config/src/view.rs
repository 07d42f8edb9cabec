//! The config view: every item with its current content, in memory, fed by a watch over
//! `config/`. Reads and listeners use it, never the store.
//!
//! The view sees item keys and history entries. For each item path it keeps the item and
//! only the newest history entry's content (entries of an item sort in commit order, see
//! `model`), so memory holds one copy of each current config, not its history.

use std::sync::Arc;
use std::time::Duration;

use sb_store::codec::decode;
use sb_store::view::{ViewChange, ViewState};
use sb_store::{Event, EventKind, KeyRange, Revision, SharedStore, StoreResult, View, ViewError};
use tokio::sync::broadcast;
use tracing::warn;

use crate::error::{ConfigError, ConfigResult};
use crate::gray::{GrayClient, GrayRecord};
use crate::model::{
    split_history_path, ConfigItem, ConfigKey, EntryId, HistoryEntry, CONFIG_PREFIX, GRAY_PREFIX,
    HISTORY_PREFIX, ITEMS_PREFIX,
};

/// What a read sees of one item.
#[derive(Clone, Debug)]
pub struct ConfigSnapshot {
    pub key: ConfigKey,
    pub item: Arc<ConfigItem>,
    /// The revision of the publish: the item key's mod revision.
    pub version: Revision,
    /// The revision that created the item (since its last delete).
    pub created_version: Revision,
    pub content: Arc<str>,
    /// This is the item's gray version (served to a client its selector matches).
    pub gray: bool,
}

impl ConfigSnapshot {
    /// The history key this version's content is stored under (a secret's associated data).
    pub fn entry_key(&self) -> ConfigResult<String> {
        let entry = EntryId::parse(&self.item.entry).ok_or_else(|| {
            ConfigError::Corrupt(format!("{} names history entry {:?}", self.key, self.item.entry))
        })?;
        Ok(if self.gray { self.key.gray_history_key(&entry) } else { self.key.history_key(&entry) })
    }

    /// What `client` reads of this version: its content and md5 (see [`crate::readable`]).
    pub fn readable(&self, client: &GrayClient) -> ConfigResult<(String, String)> {
        if !self.item.secret {
            return Ok((self.content.to_string(), self.item.md5.clone()));
        }
        crate::secret::readable(&self.content, &self.item.md5, true, &self.entry_key()?, client)
    }

    /// [`Self::readable`] with the content shared with the view instead of copied, for a
    /// read that only sends it.
    pub fn readable_shared(&self, client: &GrayClient) -> ConfigResult<(Arc<str>, String)> {
        if !self.item.secret {
            return Ok((self.content.clone(), self.item.md5.clone()));
        }
        self.readable(client).map(|(content, md5)| (Arc::from(content), md5))
    }
}

/// An item's gray release as the view has it.
#[derive(Clone, Debug)]
pub struct GraySnapshot {
    pub record: Arc<GrayRecord>,
    /// The gray record's mod revision (= the gray entry's version).
    pub version: Revision,
    pub content: Arc<str>,
}

/// The newest history entry of an item: kept as stored until the item points at it, so a
/// load (which sees every retained entry before the items, in key order) decodes only the
/// current ones.
#[derive(Clone, Debug)]
enum Latest {
    Stored(Arc<[u8]>),
    Content(Arc<str>),
}

#[derive(Clone, Debug, Default)]
struct Slot {
    item: Option<(Arc<ConfigItem>, Revision, Revision)>,
    latest: Option<(EntryId, Latest)>,
    /// The item's history entries, oldest first (key order: an id, then whether it is a
    /// gray entry), so a write can fold retention into its own transaction.
    entries: Vec<(EntryId, bool)>,
    /// The gray record and its mod revision.
    gray: Option<(Arc<GrayRecord>, Revision)>,
    /// The newest gray entry (main and gray entries are told apart by key).
    gray_latest: Option<(EntryId, Latest)>,
}

/// Adds a history entry to an item's list, kept in key order (new entries are the newest,
/// so this appends; a load or a replay may bring one out of order).
fn remember_entry(entries: &mut Vec<(EntryId, bool)>, entry: (EntryId, bool)) {
    if entries.last().is_none_or(|last| *last < entry) {
        entries.push(entry);
    } else if let Err(at) = entries.binary_search(&entry) {
        entries.insert(at, entry);
    }
}

fn forget_entry(entries: &mut Vec<(EntryId, bool)>, entry: (EntryId, bool)) {
    if let Ok(at) = entries.binary_search(&entry) {
        entries.remove(at);
    }
}

/// Decodes `latest` if `pointer` names it; `false` if it does not decode.
fn settle_entry(pointer: Option<&str>, latest: &mut Option<(EntryId, Latest)>) -> bool {
    let Some(pointer) = pointer else { return true };
    let Some((entry, Latest::Stored(bytes))) = latest.as_ref() else { return true };
    if pointer != entry.to_string() {
        return true;
    }
    match decode::<HistoryEntry>(bytes) {
        Ok(history) => {
            let entry = *entry;
            *latest = Some((entry, Latest::Content(Arc::from(history.content))));
            true
        }
        Err(error) => {
            warn!(entry = %entry, %error, "skipping undecodable config history entry");
            *latest = None;
            false
        }
    }
}

impl Slot {
    fn is_empty(&self) -> bool {
        self.item.is_none()
            && self.latest.is_none()
            && self.entries.is_empty()
            && self.gray.is_none()
            && self.gray_latest.is_none()
    }

    /// Decodes the newest entries the item and the gray record point at; `false` if one
    /// does not decode.
    fn settle(&mut self) -> bool {
        let main = settle_entry(self.item.as_ref().map(|(item, _, _)| item.entry.as_str()), &mut self.latest);
        let gray =
            settle_entry(self.gray.as_ref().map(|(gray, _)| gray.entry.as_str()), &mut self.gray_latest);
        main && gray
    }

    fn gray(&self) -> Option<GraySnapshot> {
        let (record, version) = self.gray.as_ref()?;
        let (entry, Latest::Content(content)) = self.gray_latest.as_ref()? else { return None };
        if record.entry != entry.to_string() {
            return None;
        }
        Some(GraySnapshot { record: record.clone(), version: *version, content: content.clone() })
    }
}

/// The view's state: item path (`{ns}/{group}/{data_id}`) → slot.
#[derive(Clone, Debug, Default)]
pub struct ConfigState {
    slots: imbl::OrdMap<String, Arc<Slot>>,
    undecodable: u64,
}

impl ConfigState {
    fn update(&mut self, path: &str, change: impl FnOnce(&mut Slot)) {
        let mut slot = self.slots.get(path).map(|s| Slot::clone(s)).unwrap_or_default();
        change(&mut slot);
        if !slot.settle() {
            self.undecodable += 1;
        }
        if slot.is_empty() {
            self.slots.remove(path);
        } else {
            self.slots.insert(path.to_owned(), Arc::new(slot));
        }
    }

    /// The current config of an item; `None` if it does not exist.
    pub fn get(&self, key: &ConfigKey) -> Option<ConfigSnapshot> {
        self.by_path(&key.path(), key)
    }

    fn by_path(&self, path: &str, key: &ConfigKey) -> Option<ConfigSnapshot> {
        let slot = self.slots.get(path)?;
        let (item, version, created_version) = slot.item.as_ref()?;
        let (entry, Latest::Content(content)) = slot.latest.as_ref()? else { return None };
        if item.entry != entry.to_string() {
            // Cannot happen after a whole revision is applied (item and entry commit
            // together, and the newest entry is the current one); never serve a mismatch.
            return None;
        }
        Some(ConfigSnapshot {
            key: key.clone(),
            item: item.clone(),
            version: *version,
            created_version: *created_version,
            content: content.clone(),
            gray: false,
        })
    }

    /// The item's gray release, if it has one.
    pub fn gray(&self, key: &ConfigKey) -> Option<GraySnapshot> {
        self.slots.get(&key.path())?.gray()
    }

    /// What `client` reads of the item's gray version `gray`: its content and md5. The gray
    /// of a secret item is sealed like its main version (see [`crate::readable`]).
    pub fn gray_readable(
        &self,
        key: &ConfigKey,
        gray: &GraySnapshot,
        client: &GrayClient,
    ) -> ConfigResult<(String, String)> {
        let entry = EntryId::parse(&gray.record.entry).ok_or_else(|| {
            ConfigError::Corrupt(format!("the gray of {key} names history entry {:?}", gray.record.entry))
        })?;
        let secret = self.get(key).is_some_and(|main| main.item.secret);
        crate::secret::readable(
            &gray.content,
            &gray.record.md5,
            secret,
            &key.gray_history_key(&entry),
            client,
        )
    }

    /// What `client` reads: the gray version if its selector matches the client, else the
    /// main version.
    pub fn get_for(&self, key: &ConfigKey, client: &GrayClient) -> Option<ConfigSnapshot> {
        let main = self.get(key)?;
        match self.gray(key) {
            Some(gray) if gray.record.selector.matches(client) => {
                let mut item = ConfigItem::clone(&main.item);
                item.entry = gray.record.entry.clone();
                item.format = gray.record.format;
                item.md5 = gray.record.md5.clone();
                item.size = gray.record.size;
                item.author = gray.record.author.clone();
                item.modified_ms = gray.record.at_ms;
                Some(ConfigSnapshot {
                    item: Arc::new(item),
                    version: gray.version,
                    content: gray.content,
                    gray: true,
                    ..main
                })
            }
            _ => Some(main),
        }
    }

    /// The md5 `client` would read, `""` when the item does not exist (as Nacos) or is a
    /// secret this node cannot open.
    pub fn md5_for(&self, key: &ConfigKey, client: &GrayClient) -> String {
        let Some(snapshot) = self.get_for(key, client) else { return String::new() };
        if !snapshot.item.secret {
            // What `readable` answers for a plain item, without copying its content.
            return snapshot.item.md5.clone();
        }
        snapshot.readable(client).map(|(_, md5)| md5).unwrap_or_default()
    }

    /// What a writer needs to know of an item, as this view has it: the item and its version
    /// (`None` when absent).
    pub(crate) fn for_write(&self, key: &ConfigKey) -> Option<(Arc<ConfigItem>, Revision)> {
        let slot = self.slots.get(&key.path())?;
        slot.item.as_ref().map(|(item, version, _)| (item.clone(), *version))
    }

    /// The history keys of `key` that retention drops once a new main entry `adding` is
    /// written (`None`: nothing is added), as far as this view knows them, oldest first.
    /// The newest main entry and the newest gray entry always stay.
    pub(crate) fn doomed(
        &self,
        key: &ConfigKey,
        retention: &crate::retention::Retention,
        adding: Option<EntryId>,
        now_ms: u64,
    ) -> Vec<String> {
        let known = self.slots.get(&key.path()).map(|slot| slot.entries.as_slice()).unwrap_or_default();
        retention
            .doomed_entries(known, adding.map(|id| (id, false)), now_ms)
            .into_iter()
            // The entry being added is the newest: never doomed, so every index is a known one.
            .filter_map(|i| known.get(i))
            .map(|&(id, gray)| if gray { key.gray_history_key(&id) } else { key.history_key(&id) })
            .collect()
    }

    /// The md5 of an item's current content, `""` when it does not exist (as Nacos).
    pub fn md5(&self, key: &ConfigKey) -> String {
        self.get(key).map(|s| s.item.md5.clone()).unwrap_or_default()
    }

    /// Every item of a namespace, optionally of one group, in key order.
    pub fn list(&self, namespace: &str, group: Option<&str>) -> Vec<ConfigSnapshot> {
        let prefix = match group {
            Some(group) => format!("{namespace}/{group}/"),
            None => format!("{namespace}/"),
        };
        self.slots
            .range(prefix.clone()..)
            .take_while(|(path, _)| path.starts_with(&prefix))
            .filter_map(|(path, _)| ConfigKey::from_path(path).and_then(|key| self.by_path(path, &key)))
            .collect()
    }

    /// How many items exist.
    pub fn len(&self) -> usize {
        self.slots.values().filter(|s| s.item.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every item path with a slot (live items and the newest record of deleted ones).
    pub fn paths(&self) -> impl Iterator<Item = &String> {
        self.slots.keys()
    }

    pub fn undecodable(&self) -> u64 {
        self.undecodable
    }
}

fn key_text(key: &[u8]) -> Option<&str> {
    std::str::from_utf8(key).ok()
}

impl ViewState for ConfigState {
    fn apply(&mut self, event: &Event) {
        let Some(key) = key_text(&event.kv.key) else { return };
        if let Some(path) = key.strip_prefix(ITEMS_PREFIX) {
            match event.kind {
                EventKind::Delete => self.update(path, |slot| slot.item = None),
                EventKind::Put => match decode::<ConfigItem>(&event.kv.value) {
                    Ok(item) => {
                        let kv = &event.kv;
                        let value = (Arc::new(item), kv.mod_revision, kv.create_revision);
                        self.update(path, |slot| slot.item = Some(value));
                    }
                    Err(error) => {
                        self.undecodable += 1;
                        warn!(key, %error, "skipping undecodable config item");
                        self.update(path, |slot| slot.item = None);
                    }
                },
            }
        } else if let Some(path) = key.strip_prefix(GRAY_PREFIX) {
            match event.kind {
                EventKind::Delete => self.update(path, |slot| {
                    slot.gray = None;
                    slot.gray_latest = None;
                }),
                EventKind::Put => match decode::<GrayRecord>(&event.kv.value) {
                    Ok(record) => {
                        let value = (Arc::new(record), event.kv.mod_revision);
                        self.update(path, |slot| slot.gray = Some(value));
                    }
                    Err(error) => {
                        self.undecodable += 1;
                        warn!(key, %error, "skipping undecodable config gray record");
                        self.update(path, |slot| slot.gray = None);
                    }
                },
            }
        } else if let Some(rest) = key.strip_prefix(HISTORY_PREFIX) {
            let Some((path, entry, gray)) = split_history_path(rest) else { return };
            if gray {
                // Only the newest gray entry can be the gray content; an older one only
                // counts (and a gray that was aborted keeps no content in memory).
                match event.kind {
                    EventKind::Delete => self.update(path, |slot| {
                        forget_entry(&mut slot.entries, (entry, true));
                        if slot.gray_latest.as_ref().is_some_and(|(id, _)| *id == entry)
                            && slot.gray.is_none()
                        {
                            slot.gray_latest = None;
                        }
                    }),
                    EventKind::Put => {
                        let newer = self
                            .slots
                            .get(path)
                            .and_then(|s| s.gray_latest.as_ref())
                            .is_none_or(|(id, _)| entry > *id);
                        let stored: Arc<[u8]> = Arc::from(event.kv.value.as_slice());
                        self.update(path, |slot| {
                            remember_entry(&mut slot.entries, (entry, true));
                            if newer {
                                slot.gray_latest = Some((entry, Latest::Stored(stored)));
                            }
                        });
                    }
                }
                return;
            }
            match event.kind {
                // Retention never deletes an item's current entry; an item that is gone
                // loses its slot once its newest entry is gone.
                EventKind::Delete => self.update(path, |slot| {
                    forget_entry(&mut slot.entries, (entry, false));
                    if slot.latest.as_ref().is_some_and(|(id, _)| *id == entry) && slot.item.is_none() {
                        slot.latest = None;
                    }
                }),
                EventKind::Put => {
                    let newer = self
                        .slots
                        .get(path)
                        .and_then(|s| s.latest.as_ref())
                        .is_none_or(|(id, _)| entry > *id);
                    if !newer {
                        self.update(path, |slot| remember_entry(&mut slot.entries, (entry, false)));
                        return;
                    }
                    let stored: Arc<[u8]> = Arc::from(event.kv.value.as_slice());
                    self.update(path, |slot| {
                        remember_entry(&mut slot.entries, (entry, false));
                        slot.latest = Some((entry, Latest::Stored(stored)));
                    });
                }
            }
        }
    }
}

/// One item that changed, as listeners and streams hear it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigChange {
    Changed(ConfigKey),
    /// The view reloaded (or a subscriber fell behind): anything may have changed.
    Reset,
}

/// The watch-fed config view.
pub struct ConfigView {
    view: View<ConfigState>,
    /// Long-polls held right now (for metrics).
    pub(crate) listening: std::sync::atomic::AtomicUsize,
    /// Held long-polls by the items they watch, woken by one dispatcher task.
    pub(crate) listeners: Arc<crate::listen::Listeners>,
}

impl ConfigView {
    /// Loads the view and starts following it, with the listeners' dispatcher (which ends
    /// when the view is dropped).
    pub async fn start(store: SharedStore) -> StoreResult<ConfigView> {
        let listeners = Arc::new(crate::listen::Listeners::default());
        let observer: sb_store::ChangeObserver = {
            let listeners = listeners.clone();
            Arc::new(move |change: &ViewChange| listeners.wake(&changed_items(change)))
        };
        let range = KeyRange::prefix(CONFIG_PREFIX);
        let view = View::start_observed(store, range, "config", Some(observer)).await?;
        Ok(ConfigView { view, listening: std::sync::atomic::AtomicUsize::new(0), listeners })
    }

    pub fn snapshot(&self) -> Arc<ConfigState> {
        self.view.snapshot()
    }

    pub fn get(&self, key: &ConfigKey) -> Option<ConfigSnapshot> {
        self.view.snapshot().get(key)
    }

    pub fn revision(&self) -> Revision {
        self.view.revision()
    }

    /// Long-polls held right now.
    pub fn listening(&self) -> usize {
        self.listening.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub async fn wait_for(&self, revision: Revision, timeout: Duration) -> Result<(), ViewError> {
        self.view.wait_for(revision, timeout).await
    }

    /// Changes from now on: subscribe first, then read the snapshot, so nothing is missed.
    pub fn subscribe(&self) -> ConfigChanges {
        ConfigChanges { inner: self.view.subscribe() }
    }
}

/// A subscription to item changes.
pub struct ConfigChanges {
    inner: broadcast::Receiver<ViewChange>,
}

impl ConfigChanges {
    /// The next batch of changed items; `None` when the view has stopped. A lagging
    /// subscriber hears [`ConfigChange::Reset`].
    pub async fn next(&mut self) -> Option<Vec<ConfigChange>> {
        loop {
            match self.inner.recv().await {
                Ok(change) => {
                    let changed = changed_items(&change);
                    if !changed.is_empty() {
                        return Some(changed);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => return Some(vec![ConfigChange::Reset]),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// The items a view change touches (an item or its gray release), or `Reset`.
pub(crate) fn changed_items(change: &ViewChange) -> Vec<ConfigChange> {
    match change {
        ViewChange::Reset { .. } => vec![ConfigChange::Reset],
        ViewChange::Applied { events, .. } => events
            .iter()
            .filter_map(|event| {
                let key = key_text(&event.kv.key)?;
                key.strip_prefix(ITEMS_PREFIX).or_else(|| key.strip_prefix(GRAY_PREFIX))
            })
            .filter_map(ConfigKey::from_path)
            .map(ConfigChange::Changed)
            .collect(),
    }
}
