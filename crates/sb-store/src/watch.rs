//! The consumer end of a watch, common to every adapter.

use tokio::sync::mpsc;

use crate::error::StoreResult;
use crate::types::WatchBatch;

/// Batches of one watch, in revision order with no gaps. The stream ends after an error
/// (for example [`crate::StoreError::Compacted`]); dropping it cancels the watch.
pub struct WatchStream {
    batches: mpsc::Receiver<StoreResult<WatchBatch>>,
    progress: mpsc::Sender<()>,
    ended: bool,
    start_revision: Option<crate::types::Revision>,
}

impl WatchStream {
    /// Built by adapters: `batches` is fed by the adapter's watch task (a bounded
    /// channel); `progress` asks that task for a progress notification.
    pub fn new(batches: mpsc::Receiver<StoreResult<WatchBatch>>, progress: mpsc::Sender<()>) -> Self {
        WatchStream { batches, progress, ended: false, start_revision: None }
    }

    /// Set by adapters that know it: the first revision the watch delivers.
    pub fn with_start_revision(mut self, revision: crate::types::Revision) -> Self {
        self.start_revision = Some(revision);
        self
    }

    /// The first revision the watch delivers, when the adapter says: for a watch opened
    /// with no start revision, one past the store's revision when it was established (so a
    /// caller can tell whether it missed anything since an earlier read).
    pub fn start_revision(&self) -> Option<crate::types::Revision> {
        self.start_revision
    }

    /// The next batch; `None` once the watch has ended.
    pub async fn next(&mut self) -> Option<StoreResult<WatchBatch>> {
        if self.ended {
            return None;
        }
        let item = self.batches.recv().await;
        if !matches!(item, Some(Ok(_))) {
            self.ended = true;
        }
        item
    }

    /// The next batch if one is already waiting, without waiting.
    pub fn try_next(&mut self) -> Option<StoreResult<WatchBatch>> {
        if self.ended {
            return None;
        }
        match self.batches.try_recv() {
            Ok(Ok(batch)) => Some(Ok(batch)),
            Ok(Err(error)) => {
                self.ended = true;
                Some(Err(error))
            }
            Err(mpsc::error::TryRecvError::Empty) => None,
            Err(mpsc::error::TryRecvError::Disconnected) => {
                self.ended = true;
                None
            }
        }
    }

    /// Whether the stream has ended (after an error or the adapter closing it).
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Asks for a progress notification: an empty batch whose revision says every event
    /// up to it has been delivered. Requests made while one is pending are merged.
    pub fn request_progress(&self) {
        let _ = self.progress.try_send(());
    }
}
