//! Listeners: a client names items with the md5 it holds; it is answered at once if any
//! differs, otherwise when one changes or at the timeout. Everything comes from the view.
//! After a view reset (or a listener falling behind the change channel) every listener
//! re-checks all of its md5s, so no change is missed.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::gray::GrayClient;
use crate::model::ConfigKey;
use crate::view::{ConfigChange, ConfigChanges, ConfigState, ConfigView};

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
        // Subscribe before the first check, so a change between the two is not lost.
        let mut changes = self.subscribe();
        let _held = Held::new(&self.listening);
        listen_on(&mut changes, || self.snapshot(), keys, client, timeout, stop).await
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

/// The long-poll over a subscription and a way to read the current state.
pub(crate) async fn listen_on(
    changes: &mut ConfigChanges,
    current: impl Fn() -> Arc<ConfigState>,
    keys: &[ListenKey],
    client: &GrayClient,
    timeout: Duration,
    stop: impl std::future::Future<Output = ()>,
) -> ListenOutcome {
    let now = differing(&current(), keys, client);
    if !now.is_empty() {
        return ListenOutcome::Changed(now);
    }
    let watched: HashSet<&ConfigKey> = keys.iter().map(|k| &k.key).collect();
    let deadline = tokio::time::Instant::now() + timeout;
    tokio::pin!(stop);
    loop {
        let batch = tokio::select! {
            batch = changes.next() => batch,
            _ = tokio::time::sleep_until(deadline) => return ListenOutcome::TimedOut,
            _ = &mut stop => return ListenOutcome::Stopped,
        };
        let Some(batch) = batch else { return ListenOutcome::Stopped };
        // A reset says nothing about which items changed: re-check them all.
        let relevant = batch.iter().any(|change| match change {
            ConfigChange::Reset => true,
            ConfigChange::Changed(key) => watched.contains(key),
        });
        if relevant {
            let now = differing(&current(), keys, client);
            if !now.is_empty() {
                return ListenOutcome::Changed(now);
            }
        }
    }
}
