//! Listeners: a client names items with the md5 it holds; it is answered at once if any
//! differs, otherwise when one changes or at the timeout. Everything comes from the view.
//!
//! Held listeners are indexed by the item paths they watch ([`Listeners`]). The view tells
//! the table of every change on its own task (an observer), right after publishing the new
//! snapshot and before it wakes writers: the table wakes only the listeners of the items
//! that changed, so a publish costs one wake-up per listener of that item, not one per
//! held long-poll (10k long-polls would otherwise each parse every change batch), and a
//! long-poll is queued to answer before its publisher is. After a view reset every
//! listener is woken and re-checks all of its md5s, so no change is missed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::gray::GrayClient;
use crate::model::ConfigKey;
use crate::view::{ConfigChange, ConfigState, ConfigView};

/// One item a listener holds, with the md5 of the content it has (`""` for none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenKey {
    pub key: ConfigKey,
    pub md5: String,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ListenOutcome {
    /// These items differ from what the listener holds (in the order given).
    Changed(Vec<ConfigKey>),
    TimedOut,
    /// The view stopped (the server is shutting down).
    Stopped,
}

/// The keys whose md5, as `client` reads them (gray or main), differs from what it holds.
fn differing(state: &ConfigState, keys: &[ListenKey], client: &GrayClient) -> Vec<ConfigKey> {
    keys.iter().filter(|k| state.md5_for(&k.key, client) != k.md5).map(|k| k.key.clone()).collect()
}

/// Held listeners by the item paths they watch. Each has one [`Notify`]: a wake-up is a
/// stored permit, never a queued message, so the table holds nothing beyond the listeners.
#[derive(Default)]
pub(crate) struct Listeners {
    table: Mutex<ListenerTable>,
}

#[derive(Default)]
struct ListenerTable {
    next_id: u64,
    by_path: HashMap<String, HashMap<u64, Arc<Notify>>>,
    /// Every listener with its paths (to wake all on a reset, and to unregister).
    all: HashMap<u64, (Arc<Notify>, Vec<String>)>,
}

/// A listener's place in the table; unregisters when dropped (also when the long-poll's
/// future is dropped with its connection).
pub(crate) struct Registration<'a> {
    listeners: &'a Listeners,
    id: u64,
    notify: Arc<Notify>,
}

impl Listeners {
    pub(crate) fn register(&self, keys: &[ListenKey]) -> Registration<'_> {
        let notify = Arc::new(Notify::new());
        let mut paths: Vec<String> = keys.iter().map(|k| k.key.path()).collect();
        paths.sort();
        paths.dedup();
        let mut table = self.table.lock();
        let id = table.next_id;
        table.next_id += 1;
        for path in &paths {
            table.by_path.entry(path.clone()).or_default().insert(id, notify.clone());
        }
        table.all.insert(id, (notify.clone(), paths));
        Registration { listeners: self, id, notify }
    }

    /// Wakes the listeners a batch of changes concerns (all of them on a reset).
    pub(crate) fn wake(&self, batch: &[ConfigChange]) {
        let table = self.table.lock();
        if batch.iter().any(|c| matches!(c, ConfigChange::Reset)) {
            table.all.values().for_each(|(notify, _)| notify.notify_one());
            return;
        }
        for change in batch {
            let ConfigChange::Changed(key) = change else { continue };
            if let Some(waiting) = table.by_path.get(&key.path()) {
                waiting.values().for_each(|notify| notify.notify_one());
            }
        }
    }

    /// How many listeners are registered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table.lock().all.len()
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut table = self.listeners.table.lock();
        let Some((_, paths)) = table.all.remove(&self.id) else { return };
        for path in paths {
            if let Some(waiting) = table.by_path.get_mut(&path) {
                waiting.remove(&self.id);
                if waiting.is_empty() {
                    table.by_path.remove(&path);
                }
            }
        }
    }
}

impl ConfigView {
    /// The items whose md5 differs now, without waiting.
    pub fn changed_now(&self, keys: &[ListenKey], client: &GrayClient) -> Vec<ConfigKey> {
        differing(&self.snapshot(), keys, client)
    }

    /// Long-poll: answers at once if anything differs, else waits for a change to one of
    /// `keys` (or a reset), at most `timeout`.
    pub async fn listen(
        &self,
        keys: &[ListenKey],
        client: &GrayClient,
        timeout: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) -> ListenOutcome {
        let _held = Held::new(&self.listening);
        listen_on(&self.listeners, || self.snapshot(), keys, client, timeout, stop).await
    }
}

/// Counts a held long-poll while it lives (also when its future is dropped).
struct Held<'a>(&'a AtomicUsize);

impl<'a> Held<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Held(count)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The long-poll over a listener table and a way to read the current state.
pub(crate) async fn listen_on(
    listeners: &Listeners,
    current: impl Fn() -> Arc<ConfigState>,
    keys: &[ListenKey],
    client: &GrayClient,
    timeout: Duration,
    stop: impl std::future::Future<Output = ()>,
) -> ListenOutcome {
    // Register before the first check: a change applied after the check wakes this
    // listener (the view publishes a snapshot before telling the table), one applied
    // before it is seen by the check.
    let registration = listeners.register(keys);
    let deadline = tokio::time::Instant::now() + timeout;
    tokio::pin!(stop);
    loop {
        let now = differing(&current(), keys, client);
        if !now.is_empty() {
            return ListenOutcome::Changed(now);
        }
        tokio::select! {
            () = registration.notify.notified() => {}
            () = tokio::time::sleep_until(deadline) => return ListenOutcome::TimedOut,
            () = &mut stop => return ListenOutcome::Stopped,
        }
    }
}
