//! Watch-fed in-memory views: the only way read paths see state.
//!
//! A [`View`] reads its range at a revision R (in pages), then watches from R+1 and applies
//! every batch to a typed state. Readers take a cheap [`Arc`] snapshot, swapped atomically;
//! they never touch the store. On `Compacted`, or when the watch breaks in a way the
//! adapter could not resume, the view reloads and tells its subscribers [`ViewChange::Reset`],
//! so no long-poll misses a change.
//!
//! Writers give read-your-writes with [`View::wait_for`]: they answer only once their own
//! node's view has applied their commit revision.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{debug, warn};

use crate::codec::{decode, StoredValue};
use crate::error::{StoreError, StoreResult};
use crate::paging::RangePager;
use crate::store::SharedStore;
use crate::types::{Event, EventKind, KeyRange, KeyValue, LeaseId, Revision, WatchBatch, WatchRequest};

/// How many changes a subscriber may fall behind before it must treat the view as reset.
const CHANGES_CAPACITY: usize = 1024;
/// How long `wait_for` waits for the revision to arrive by itself before asking the
/// watch for a progress notification (a revision outside the view's range never arrives
/// as an event).
const PROGRESS_GRACE: Duration = Duration::from_millis(50);
/// Pause before reloading after a store error, so an unreachable store is not hammered.
const RELOAD_BACKOFF: Duration = Duration::from_millis(200);

/// The typed state a view maintains. `Clone` must be cheap (persistent maps), since each
/// applied batch publishes a new snapshot.
pub trait ViewState: Clone + Default + Send + Sync + 'static {
    /// Applies one change: a put (also used for every key of a reload) or a delete.
    fn apply(&mut self, event: &Event);
}

/// What subscribers hear.
#[derive(Clone, Debug)]
pub enum ViewChange {
    /// These events were applied; the snapshot now reflects `revision`.
    Applied { revision: Revision, events: Arc<Vec<Event>> },
    /// The view was reloaded (after compaction or a broken watch): anything may have
    /// changed. A subscriber that lagged behind the channel must also treat it as a reset.
    Reset { revision: Revision },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    #[error("view {view} has applied revision {applied}, still waiting for {wanted} after {waited_ms} ms")]
    Timeout { view: &'static str, wanted: Revision, applied: Revision, waited_ms: u64 },
    #[error("view {view} has stopped")]
    Stopped { view: &'static str },
}

/// Told of every change synchronously, on the view's task, after the new snapshot is
/// published and before writers waiting in [`View::wait_for`] or channel subscribers are
/// woken. It must be quick and must not block (for example: wake waiters by key).
pub type ChangeObserver = Arc<dyn Fn(&ViewChange) + Send + Sync>;

struct Shared<S> {
    name: &'static str,
    state: ArcSwap<S>,
    applied: watch::Sender<Revision>,
    changes: broadcast::Sender<ViewChange>,
    progress: mpsc::Sender<()>,
    observer: Option<ChangeObserver>,
}

/// A watch-fed view over one key range of the store.
pub struct View<S: ViewState> {
    shared: Arc<Shared<S>>,
    task: tokio::task::JoinHandle<()>,
}

impl<S: ViewState> Drop for View<S> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<S: ViewState> View<S> {
    /// Loads the range and starts following it. Returns once the first load is applied,
    /// so a node is ready only when its views are.
    pub async fn start(store: SharedStore, range: KeyRange, name: &'static str) -> StoreResult<View<S>> {
        View::start_observed(store, range, name, None).await
    }

    /// [`View::start`] with an observer told of every change before anyone else is woken
    /// (so what it wakes runs first: a long-poll answers before its writer does).
    pub async fn start_observed(
        store: SharedStore,
        range: KeyRange,
        name: &'static str,
        observer: Option<ChangeObserver>,
    ) -> StoreResult<View<S>> {
        let (state, revision) = load::<S>(&store, &range).await?;
        let (applied, _) = watch::channel(revision);
        let (changes, _) = broadcast::channel(CHANGES_CAPACITY);
        let (progress, progress_rx) = mpsc::channel(1);
        let shared = Arc::new(Shared {
            name,
            state: ArcSwap::from_pointee(state),
            applied,
            changes,
            progress,
            observer,
        });
        let task = tokio::spawn(follow(store, range, shared.clone(), progress_rx));
        Ok(View { shared, task })
    }

    /// The current state; cheap, and never touches the store.
    pub fn snapshot(&self) -> Arc<S> {
        self.shared.state.load_full()
    }

    /// The revision the snapshot reflects.
    pub fn revision(&self) -> Revision {
        *self.shared.applied.borrow()
    }

    /// Changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ViewChange> {
        self.shared.changes.subscribe()
    }

    /// Waits until the view has applied `revision` (read-your-writes), at most `timeout`.
    pub async fn wait_for(&self, revision: Revision, timeout: Duration) -> Result<(), ViewError> {
        let start = tokio::time::Instant::now();
        let deadline = start + timeout;
        let mut applied = self.shared.applied.subscribe();
        let mut next_progress = start + PROGRESS_GRACE;
        loop {
            if *applied.borrow_and_update() >= revision {
                return Ok(());
            }
            let wake = next_progress.min(deadline);
            match tokio::time::timeout_at(wake, applied.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(ViewError::Stopped { view: self.shared.name }),
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    return Err(ViewError::Timeout {
                        view: self.shared.name,
                        wanted: revision,
                        applied: *applied.borrow(),
                        waited_ms: timeout.as_millis() as u64,
                    });
                }
                Err(_) => {
                    // The revision may touch no key of this view: ask the watch to confirm
                    // it has seen everything up to now.
                    let _ = self.shared.progress.try_send(());
                    next_progress = tokio::time::Instant::now() + PROGRESS_GRACE * 4;
                }
            }
        }
    }
}

async fn load<S: ViewState>(store: &SharedStore, range: &KeyRange) -> StoreResult<(S, Revision)> {
    let mut pager = RangePager::new(store.as_ref(), range.clone(), None);
    let mut state = S::default();
    while let Some(page) = pager.next_page().await? {
        for kv in page {
            state.apply(&Event { kind: EventKind::Put, kv });
        }
    }
    let revision = match pager.revision() {
        Some(rev) => rev,
        None => store.current_revision().await?,
    };
    Ok((state, revision))
}

async fn follow<S: ViewState>(
    store: SharedStore,
    range: KeyRange,
    shared: Arc<Shared<S>>,
    mut progress_rx: mpsc::Receiver<()>,
) {
    let mut needs_reload = false;
    loop {
        if needs_reload {
            match load::<S>(&store, &range).await {
                Ok((state, revision)) => {
                    shared.state.store(Arc::new(state));
                    let change = ViewChange::Reset { revision };
                    if let Some(observer) = &shared.observer {
                        observer(&change);
                    }
                    shared.applied.send_replace(revision);
                    let _ = shared.changes.send(change);
                    debug!(view = shared.name, revision, "view reloaded");
                }
                Err(error) => {
                    warn!(view = shared.name, %error, "view reload failed, retrying");
                    tokio::time::sleep(RELOAD_BACKOFF).await;
                    continue;
                }
            }
        }
        needs_reload = true;
        let from = *shared.applied.borrow() + 1;
        let mut stream = match store.watch(WatchRequest::new(range.clone()).from_revision(from)).await {
            Ok(stream) => stream,
            Err(error) => {
                warn!(view = shared.name, %error, "view watch failed, reloading");
                tokio::time::sleep(RELOAD_BACKOFF).await;
                continue;
            }
        };
        let ended_with = follow_stream(&shared, &mut stream, &mut progress_rx).await;
        // Compaction means "reload now"; anything else may be the store failing, so the
        // reload waits a little rather than hammer it.
        match &ended_with {
            Some(error @ StoreError::Compacted { .. }) => {
                warn!(view = shared.name, %error, "view watch ended, reloading");
            }
            Some(error) => {
                warn!(view = shared.name, %error, "view watch ended, reloading");
                tokio::time::sleep(RELOAD_BACKOFF).await;
            }
            None => {
                warn!(view = shared.name, "view watch closed, reloading");
                tokio::time::sleep(RELOAD_BACKOFF).await;
            }
        }
    }
}

/// Applies a watch's batches until it ends; returns the error that ended it, if any.
async fn follow_stream<S: ViewState>(
    shared: &Shared<S>,
    stream: &mut crate::watch::WatchStream,
    progress_rx: &mut mpsc::Receiver<()>,
) -> Option<StoreError> {
    loop {
        tokio::select! {
            item = stream.next() => {
                let batch = match item? {
                    Ok(batch) => batch,
                    Err(error) => return Some(error),
                };
                // Apply whatever else is already here in one snapshot swap.
                let mut batches = vec![batch];
                let mut ended_with = None;
                while batches.len() < 256 {
                    match stream.try_next() {
                        Some(Ok(batch)) => batches.push(batch),
                        Some(Err(error)) => {
                            ended_with = Some(error);
                            break;
                        }
                        None => break,
                    }
                }
                apply(shared, batches);
                if ended_with.is_some() || stream.is_ended() {
                    return ended_with;
                }
            }
            Some(()) = progress_rx.recv() => stream.request_progress(),
        }
    }
}

fn apply<S: ViewState>(shared: &Shared<S>, batches: Vec<WatchBatch>) {
    let applied = *shared.applied.borrow();
    let mut events = Vec::new();
    let mut revision = applied;
    for batch in batches {
        if batch.revision <= revision {
            continue; // a progress notification or a batch already applied
        }
        revision = batch.revision;
        events.extend(batch.events);
    }
    if revision == applied {
        return;
    }
    if events.is_empty() {
        shared.applied.send_replace(revision);
        return;
    }
    let mut state = S::clone(&shared.state.load());
    for event in &events {
        state.apply(event);
    }
    shared.state.store(Arc::new(state));
    let change = ViewChange::Applied { revision, events: Arc::new(events) };
    if let Some(observer) = &shared.observer {
        observer(&change);
    }
    shared.applied.send_replace(revision);
    let _ = shared.changes.send(change);
}

/// Every key of the range with its raw value and metadata.
#[derive(Clone, Default, Debug)]
pub struct RawMap {
    pub entries: imbl::OrdMap<Vec<u8>, Arc<KeyValue>>,
}

impl ViewState for RawMap {
    fn apply(&mut self, event: &Event) {
        match event.kind {
            EventKind::Put => {
                self.entries.insert(event.kv.key.clone(), Arc::new(event.kv.clone()));
            }
            EventKind::Delete => {
                self.entries.remove(&event.kv.key);
            }
        }
    }
}

/// One decoded value with the metadata a reader needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry<T> {
    pub value: T,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    pub lease: Option<LeaseId>,
}

/// Every key of the range, decoded from the stored-value format. A value that does not
/// decode is left out, logged and counted, so one bad value never stops a view.
#[derive(Debug)]
pub struct DecodedMap<T> {
    pub entries: imbl::OrdMap<Vec<u8>, Arc<Entry<T>>>,
    pub undecodable: u64,
}

impl<T> Clone for DecodedMap<T> {
    fn clone(&self) -> Self {
        DecodedMap { entries: self.entries.clone(), undecodable: self.undecodable }
    }
}

impl<T> Default for DecodedMap<T> {
    fn default() -> Self {
        DecodedMap { entries: imbl::OrdMap::new(), undecodable: 0 }
    }
}

impl<T: StoredValue + Send + Sync + 'static> ViewState for DecodedMap<T> {
    fn apply(&mut self, event: &Event) {
        let kv = &event.kv;
        if event.kind == EventKind::Delete {
            self.entries.remove(&kv.key);
            return;
        }
        match decode::<T>(&kv.value) {
            Ok(value) => {
                let entry = Entry {
                    value,
                    create_revision: kv.create_revision,
                    mod_revision: kv.mod_revision,
                    lease: kv.lease,
                };
                self.entries.insert(kv.key.clone(), Arc::new(entry));
            }
            Err(error) => {
                self.entries.remove(&kv.key);
                self.undecodable += 1;
                warn!(key = %String::from_utf8_lossy(&kv.key), %error, "skipping undecodable stored value");
            }
        }
    }
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
