//! Evaluation of one group-commit batch, before anything is written.
//!
//! Requests run in order against the committed state plus the batch's overlay, so a later
//! transaction sees an earlier one's writes. Each keeps its own outcome: a failed compare
//! or an error undoes only that transaction's changes. A revision is assigned only to a
//! request that changes a key.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use sb_store::{
    Event, EventKind, KeyValue, LeaseGrant, LeaseId, OpResponse, RangeResponse, Revision, StoreError,
    StoreResult, Txn, TxnOp, TxnResponse,
};
use tokio::sync::oneshot;

use crate::cold::ColdLoader;
use crate::disk::{self, DiskBatch, Files};
use crate::history;
use crate::state::{Meta, Overlay, View};
use crate::writer::WriteRequest;
use crate::Shared;

/// The answer a request gets once its batch is committed.
pub(crate) enum Outcome {
    Txn(oneshot::Sender<StoreResult<TxnResponse>>, StoreResult<TxnResponse>),
    Grant(oneshot::Sender<StoreResult<LeaseGrant>>, StoreResult<LeaseGrant>),
    Revoke(oneshot::Sender<StoreResult<()>>, StoreResult<()>),
    Silent,
}

impl Outcome {
    pub(crate) fn is_txn(&self) -> bool {
        matches!(self, Outcome::Txn(..))
    }

    pub(crate) fn answer(self) {
        match self {
            Outcome::Txn(reply, result) => drop(reply.send(result)),
            Outcome::Grant(reply, result) => drop(reply.send(result)),
            Outcome::Revoke(reply, result) => drop(reply.send(result)),
            Outcome::Silent => {}
        }
    }

    /// The batch did not commit: every request of it fails, whatever it computed, since
    /// its result may have depended on an earlier request of the batch.
    pub(crate) fn fail(self, error: StoreError) {
        match self {
            Outcome::Txn(reply, _) => drop(reply.send(Err(error))),
            Outcome::Grant(reply, _) => drop(reply.send(Err(error))),
            Outcome::Revoke(reply, _) => drop(reply.send(Err(error))),
            Outcome::Silent => {}
        }
    }
}

/// A batch evaluated and ready to commit.
pub(crate) struct Evaluated {
    /// Final state of every key the batch changed (`None` = deleted).
    pub(crate) overlay: Overlay,
    pub(crate) disk: DiskBatch,
    /// Events per revision, for watchers.
    pub(crate) events: Vec<(Revision, Vec<Event>)>,
    pub(crate) writing_txns: u64,
    /// Leases the batch expires (retried if the commit fails).
    pub(crate) expired: Vec<LeaseId>,
}

pub(crate) struct BatchEval<'a> {
    shared: &'a Shared,
    base: View<'a>,
    /// Values of cold keys in `base`, for value compares and range reads.
    cold: ColdLoader<'a>,
    committed_revision: Revision,
    overlay: Overlay,
    /// The revision the next writing request gets.
    next_revision: Revision,
    disk: DiskBatch,
    events: Vec<(Revision, Vec<Event>)>,
    writing_txns: u64,
    granted: HashSet<LeaseId>,
    revoked: HashSet<LeaseId>,
    expired: Vec<LeaseId>,
}

/// A key's new state: `None` when deleted.
type KeyState = Option<Arc<KeyValue>>;

/// Changes of one request, with what they replaced in the overlay so they can be undone
/// (`None`: the key was not in the overlay).
#[derive(Default)]
struct Changes {
    /// Each change, with the create revision of the life a delete ends.
    keys: Vec<disk::Change>,
    undo: Vec<(Vec<u8>, Option<KeyState>)>,
}

impl<'a> BatchEval<'a> {
    /// `base` is the committed state, held (read-locked) for the whole batch: that is what
    /// reading cold values from `files` needs (see `crate::cold`).
    pub(crate) fn new(
        shared: &'a Shared,
        files: &'a Files,
        base: View<'a>,
        committed_revision: Revision,
    ) -> Self {
        BatchEval {
            shared,
            base,
            cold: ColdLoader::new(files),
            committed_revision,
            overlay: Overlay::new(),
            next_revision: committed_revision + 1,
            disk: DiskBatch { revision: committed_revision, ..DiskBatch::default() },
            events: Vec::new(),
            writing_txns: 0,
            granted: HashSet::new(),
            revoked: HashSet::new(),
            expired: Vec::new(),
        }
    }

    pub(crate) fn run(&mut self, request: WriteRequest) -> Outcome {
        match request {
            WriteRequest::Txn { txn, reply } => {
                let result = self.txn(txn).map(|(response, wrote)| {
                    self.writing_txns += u64::from(wrote);
                    response
                });
                Outcome::Txn(reply, result)
            }
            WriteRequest::LeaseGrant { ttl_secs, reply } => {
                let id = self.new_lease_id();
                self.granted.insert(id);
                self.disk.granted.push((id, ttl_secs));
                Outcome::Grant(reply, Ok(LeaseGrant { id, ttl_secs }))
            }
            WriteRequest::LeaseRevoke { id, reply } => {
                let live = self.granted.contains(&id) || self.shared.leases.lock().leases.contains_key(&id);
                let result = if live && !self.revoked.contains(&id) {
                    self.revoke(id);
                    Ok(())
                } else {
                    Err(StoreError::LeaseNotFound(id))
                };
                Outcome::Revoke(reply, result)
            }
            WriteRequest::LeaseExpire { id } => {
                let expiring = self.shared.leases.lock().leases.get(&id).is_some_and(|l| l.expiring);
                if expiring && !self.revoked.contains(&id) {
                    self.expired.push(id);
                    self.revoke(id);
                }
                Outcome::Silent
            }
            WriteRequest::Close { .. } => {
                debug_assert!(false, "control requests never enter a batch");
                request.refuse(StoreError::Unavailable("misrouted request".into()));
                Outcome::Silent
            }
        }
    }

    pub(crate) fn finish(self) -> Evaluated {
        let mut disk = self.disk;
        disk.revision = self.next_revision - 1;
        Evaluated {
            overlay: self.overlay,
            disk,
            events: self.events,
            writing_txns: self.writing_txns,
            expired: self.expired,
        }
    }

    fn view(&self) -> View<'_> {
        View { base: self.base.base, overlay: Some(&self.overlay) }
    }

    fn meta(&self, key: &[u8]) -> Option<Meta> {
        self.view().get(key).map(|found| found.meta())
    }

    fn lease_usable(&self, id: LeaseId) -> bool {
        if self.revoked.contains(&id) {
            return false;
        }
        self.granted.contains(&id) || self.shared.leases.lock().is_live(id)
    }

    fn new_lease_id(&self) -> LeaseId {
        loop {
            // A random positive i63: ids are never reused in practice.
            let id = LeaseId((rand::random::<u64>() >> 1) as i64);
            if id.0 != 0 && !self.granted.contains(&id) && !self.shared.leases.lock().leases.contains_key(&id)
            {
                return id;
            }
        }
    }

    fn set(&mut self, changes: &mut Changes, key: Vec<u8>, kv: Option<Arc<KeyValue>>) {
        self.change(changes, key, kv, 0);
    }

    /// Deletes a live key, recording the create revision of the life the delete ends.
    fn delete(&mut self, changes: &mut Changes, key: Vec<u8>, meta: Meta) {
        self.change(changes, key, None, meta.create_revision);
    }

    fn change(&mut self, changes: &mut Changes, key: Vec<u8>, kv: KeyState, ended: Revision) {
        let previous = self.overlay.insert(key.clone(), kv.clone());
        changes.undo.push((key.clone(), previous));
        changes.keys.push((key, kv, ended));
    }

    fn undo(&mut self, changes: Changes) {
        for (key, previous) in changes.undo.into_iter().rev() {
            match previous {
                Some(previous) => self.overlay.insert(key, previous),
                None => self.overlay.remove(&key),
            };
        }
    }

    /// Records a request's changes at the next revision; returns the revision after it.
    fn commit_changes(&mut self, changes: Changes) -> Revision {
        if changes.keys.is_empty() {
            return self.next_revision - 1;
        }
        let revision = self.next_revision;
        self.next_revision += 1;
        let mut events = Vec::with_capacity(changes.keys.len());
        for (key, kv, _) in &changes.keys {
            events.push(match kv {
                Some(kv) => Event { kind: EventKind::Put, kv: KeyValue::clone(kv) },
                None => disk::delete_event(key, revision),
            });
        }
        self.disk.revisions.push((revision, changes.keys));
        self.events.push((revision, events));
        revision
    }

    /// Runs a transaction; also says whether it wrote. It takes the transaction, so that
    /// put values move into the new state rather than being copied.
    fn txn(&mut self, txn: Txn) -> StoreResult<(TxnResponse, bool)> {
        let mut succeeded = true;
        for compare in &txn.compares {
            let view = View { base: self.base.base, overlay: Some(&self.overlay) };
            // With a source of cold values, every compare has an answer.
            if view.evaluate(compare, Some(&mut self.cold))? != Some(true) {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded { txn.success } else { txn.failure };
        // A put naming an unknown lease fails the whole transaction before any effect.
        for op in &ops {
            if let TxnOp::Put { lease: Some(id), .. } = op {
                if !self.lease_usable(*id) {
                    return Err(StoreError::LeaseNotFound(*id));
                }
            }
        }
        let revision = self.next_revision;
        let mut changes = Changes::default();
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            match self.op(op, revision, &mut changes) {
                Ok(response) => responses.push(response),
                Err(error) => {
                    self.undo(changes);
                    return Err(error);
                }
            }
        }
        let wrote = !changes.keys.is_empty();
        let revision = self.commit_changes(changes);
        for response in &mut responses {
            if let OpResponse::Range(range) = response {
                range.revision = revision;
            }
        }
        Ok((TxnResponse { succeeded, revision, responses }, wrote))
    }

    fn op(&mut self, op: TxnOp, revision: Revision, changes: &mut Changes) -> StoreResult<OpResponse> {
        match op {
            TxnOp::Put { key, value, lease } => {
                let previous = self.meta(&key);
                let kv = KeyValue {
                    key: key.clone(),
                    value,
                    create_revision: previous.as_ref().map_or(revision, |p| p.create_revision),
                    mod_revision: revision,
                    version: previous.as_ref().map_or(1, |p| p.version + 1),
                    lease,
                };
                self.set(changes, key, Some(Arc::new(kv)));
                Ok(OpResponse::Put)
            }
            TxnOp::Delete(range) => {
                let mut keys = Vec::new();
                self.view().for_each_in(&range, |found| {
                    keys.push((found.key().to_vec(), found.meta()));
                    true
                });
                let deleted = keys.len() as u64;
                for (key, meta) in keys {
                    self.delete(changes, key, meta);
                }
                Ok(OpResponse::Delete { deleted })
            }
            TxnOp::Range(request) => {
                // What this transaction sees as current: its own revision once it wrote.
                let current = if changes.keys.is_empty() { self.next_revision - 1 } else { revision };
                match request.revision.filter(|r| *r > 0 && *r != current) {
                    None => {
                        let answer = self.view().answer(&request, current);
                        answer.fill(&mut self.cold).map(OpResponse::Range)
                    }
                    Some(past) => self.past_range(&request, past, current).map(OpResponse::Range),
                }
            }
        }
    }

    fn past_range(
        &self,
        request: &sb_store::RangeRequest,
        past: Revision,
        current: Revision,
    ) -> StoreResult<RangeResponse> {
        if past > current {
            return Err(StoreError::FutureRevision { requested: past, current });
        }
        if past > self.committed_revision {
            // Written earlier in this same batch and not on disk yet: only the batch's final
            // state is kept, so ask the caller to retry (it then reads from disk).
            return Err(StoreError::Unavailable(format!(
                "revision {past} is being committed, retry the transaction"
            )));
        }
        let files = self.shared.files().ok_or(StoreError::Closed)?;
        history::read_at(&files, request, past, current)
    }

    fn revoke(&mut self, id: LeaseId) {
        // Keys attached as committed, plus keys the batch attached; each still counts
        // only if its current state names the lease.
        let mut candidates: BTreeSet<Vec<u8>> =
            self.shared.leases.lock().leases.get(&id).map(|l| l.keys.clone()).unwrap_or_default();
        candidates.extend(
            self.overlay
                .iter()
                .filter(|(_, kv)| kv.as_ref().is_some_and(|kv| kv.lease == Some(id)))
                .map(|(k, _)| k.clone()),
        );
        let mut changes = Changes::default();
        for key in candidates {
            match self.meta(&key) {
                Some(meta) if meta.lease() == Some(id) => self.delete(&mut changes, key, meta),
                _ => {}
            }
        }
        self.commit_changes(changes);
        self.revoked.insert(id);
        self.granted.remove(&id);
        self.disk.removed_leases.push(id);
    }
}
