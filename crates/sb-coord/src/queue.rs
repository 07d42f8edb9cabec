//! The one recipe behind locks and elections (etcd's `concurrency.Mutex` and `Election`):
//! contenders queue by create revision, each waits for its predecessor only, and every
//! change to a held key compares on its create revision and its value (the owner hash).

use std::time::Duration;

use sb_store::codec::{decode, encode, StoredValue};
use sb_store::{
    Compare, CompareOp, CompareTarget, EventKind, KeyRange, KeyValue, LeaseId, OpResponse, RangeRequest,
    Revision, SharedStore, StoreError, Txn, TxnOp, WatchRequest,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::error::{CoordError, CoordResult};
use crate::names::QueueName;
use crate::owner;

/// What a contender's key holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MemberRecord {
    /// The subject the owner token is bound to.
    pub subject: String,
    /// SHA-256 (hex) of the owner token; the token itself is never stored.
    pub owner_sha256: String,
    /// An election's proclaimed value; empty for a lock.
    #[serde(default)]
    pub value: String,
}

impl StoredValue for MemberRecord {
    const KIND: &'static str = "lock member";
    const FORMAT_VERSION: u32 = 1;
}

/// A granted lock or won election.
#[derive(Clone, Debug)]
pub struct Grant {
    pub name: QueueName,
    /// The holder key's create revision: strictly increasing per name.
    pub fencing_token: Revision,
    /// The unguessable token that release, renew, proclaim and guarded writes need.
    pub owner: String,
    pub lease: LeaseId,
    /// The lease's TTL (raised to the store's 2 s minimum).
    pub ttl_secs: i64,
    /// No later than the last renewal of the lease before the grant: the lease lives at
    /// least until `renewed_at + ttl_secs`.
    pub renewed_at: Instant,
    /// Whether the caller queued behind another holder.
    pub waited: bool,
}

/// Who holds a lock or leads an election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub subject: String,
    pub fencing_token: Revision,
    pub lease: Option<LeaseId>,
    /// The proclaimed value (elections).
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueStatus {
    pub holder: Option<Holder>,
    /// Contenders queued behind the holder.
    pub waiters: u64,
    /// The store revision the answer was read at.
    pub revision: Revision,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Released {
    pub fencing_token: Revision,
    pub revision: Revision,
}

/// What the recipe needs: the store, and the bounded queue of leases to revoke in the
/// background (released holders, abandoned waiters).
pub(crate) struct Ctx {
    pub store: SharedStore,
    pub cleanup: mpsc::Sender<LeaseId>,
    pub leases: std::sync::Arc<crate::lease_pool::LeasePool>,
}

/// Revokes a waiter's lease (and with it its key) unless disarmed: dropping the acquire
/// future (the HTTP client went away) or failing leaves no orphan waiter behind.
struct WaiterGuard {
    cleanup: mpsc::Sender<LeaseId>,
    lease: Option<LeaseId>,
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            if self.cleanup.try_send(lease).is_err() {
                // The key goes when the lease expires: nobody keeps it alive any more.
                warn!(lease = %lease, "the lease cleanup queue is full; the waiter expires with its lease");
            }
        }
    }
}

fn corrupt(what: impl Into<String>) -> CoordError {
    CoordError::Store(StoreError::Corrupt(what.into()))
}

fn keepalive_period(ttl_secs: i64) -> Duration {
    Duration::from_millis((ttl_secs.max(1) as u64 * 1000 / 3).max(500))
}

/// Queues for `name` and waits (at most `wait`) until this contender holds it.
pub(crate) async fn acquire(
    ctx: &Ctx,
    name: &QueueName,
    subject: &str,
    ttl_secs: i64,
    wait: Duration,
    value: String,
) -> CoordResult<Grant> {
    let start = Instant::now();
    let deadline = start + wait;
    let Enqueued { lease, ttl_secs, owner, key, mine, mut members, mut seen, mut renewed_at, mut guard } =
        enqueue(ctx, name, subject, ttl_secs, value).await?;
    let mut waited = false;
    loop {
        let predecessor = members
            .iter()
            .filter(|kv| kv.create_revision < mine && kv.key != key)
            .max_by_key(|kv| kv.create_revision);
        let Some(predecessor) = predecessor else { break };
        if Instant::now() >= deadline {
            return Err(give_up(ctx, name, &mut guard, start).await);
        }
        waited = true;
        let predecessor = predecessor.key.clone();
        match wait_for_delete(ctx, name, &predecessor, seen + 1, deadline, lease, ttl_secs).await? {
            WaitEnd::Changed => {}
            WaitEnd::TimedOut => return Err(give_up(ctx, name, &mut guard, start).await),
        }
        // The lease re-check after the wait, in one round trip: renew the lease while a
        // transaction confirms the key is still ours (same create revision: the lease did
        // not expire and take it) and reads the queue. Claiming without it would be unsafe.
        renewed_at = Instant::now();
        let check = Txn::new()
            .when([Compare::new(key.clone(), CompareOp::Equal, CompareTarget::CreateRevision(mine))])
            .and_then([TxnOp::Range(RangeRequest::prefix(name.prefix()).keys_only())]);
        let (checked, renewed) = tokio::join!(ctx.store.txn(check), ctx.store.lease_keep_alive(lease));
        match renewed {
            Ok(_) => {}
            Err(StoreError::LeaseNotFound(_)) => {
                return Err(CoordError::LeaseLost { kind: name.kind, name: name.name.clone() })
            }
            Err(error) => return Err(error.into()),
        }
        let checked = checked?;
        if !checked.succeeded {
            return Err(CoordError::LeaseLost { kind: name.kind, name: name.name.clone() });
        }
        seen = checked.revision;
        members = match checked.responses.first() {
            Some(OpResponse::Range(range)) => range.kvs.clone(),
            other => return Err(corrupt(format!("the queue read answered {other:?}"))),
        };
    }
    guard.lease = None;
    debug_assert!(renewed_at >= start);
    Ok(Grant { name: name.clone(), fencing_token: mine, owner, lease, ttl_secs, renewed_at, waited })
}

/// A contender's key, written, and the queue as the same transaction read it.
struct Enqueued {
    lease: LeaseId,
    ttl_secs: i64,
    owner: String,
    key: Vec<u8>,
    /// The key's create revision.
    mine: Revision,
    members: Vec<KeyValue>,
    seen: Revision,
    renewed_at: Instant,
    guard: WaiterGuard,
}

/// Puts the contender's key on a lease of its own (a pooled one when ready, renewed
/// alongside the put), in one transaction with a read of the queue.
async fn enqueue(
    ctx: &Ctx,
    name: &QueueName,
    subject: &str,
    ttl_secs: i64,
    value: String,
) -> CoordResult<Enqueued> {
    let mut use_pool = true;
    loop {
        let renewed_at = Instant::now();
        let pooled = if use_pool { ctx.leases.take(ttl_secs) } else { None };
        let (lease, granted_ttl) = match pooled {
            Some(pooled) => (pooled.id, pooled.ttl_secs),
            None => {
                let granted = ctx.store.lease_grant(ttl_secs).await?;
                (granted.id, granted.ttl_secs)
            }
        };
        let guard = WaiterGuard { cleanup: ctx.cleanup.clone(), lease: Some(lease) };
        let owner = owner::generate(lease);
        let key = name.member_key(lease);
        let record = MemberRecord {
            subject: subject.to_owned(),
            owner_sha256: owner::digest(&owner),
            value: value.clone(),
        };
        let bytes = encode(&record).map_err(|e| corrupt(e.to_string()))?;
        let txn = Txn::new().when([Compare::absent(key.clone())]).and_then([
            TxnOp::put_with_lease(key.clone(), bytes, lease),
            TxnOp::Range(RangeRequest::prefix(name.prefix()).keys_only()),
        ]);
        let (response, renewed) = if pooled.is_some() {
            let (response, renewed) = tokio::join!(ctx.store.txn(txn), ctx.store.lease_keep_alive(lease));
            (response, renewed.map(|_| ()))
        } else {
            (ctx.store.txn(txn).await, Ok(()))
        };
        match (response, renewed) {
            // A pooled lease that expired after all: take a fresh one (the guard cleans up).
            (Err(StoreError::LeaseNotFound(_)), _) | (_, Err(StoreError::LeaseNotFound(_)))
                if pooled.is_some() =>
            {
                use_pool = false;
                continue;
            }
            (Err(error), _) | (_, Err(error)) => return Err(error.into()),
            (Ok(response), Ok(())) => {
                if !response.succeeded {
                    return Err(corrupt(format!("the key of fresh lease {lease} already exists")));
                }
                let members = match response.responses.get(1) {
                    Some(OpResponse::Range(range)) => range.kvs.clone(),
                    other => return Err(corrupt(format!("the enqueue's range answered {other:?}"))),
                };
                return Ok(Enqueued {
                    lease,
                    ttl_secs: granted_ttl,
                    owner,
                    key,
                    mine: response.revision,
                    members,
                    seen: response.revision,
                    renewed_at,
                    guard,
                });
            }
        }
    }
}

/// Removes the waiter now (so the queue no longer shows it) and reports the timeout.
async fn give_up(ctx: &Ctx, name: &QueueName, guard: &mut WaiterGuard, start: Instant) -> CoordError {
    if let Some(lease) = guard.lease {
        match ctx.store.lease_revoke(lease).await {
            Ok(()) | Err(StoreError::LeaseNotFound(_)) => guard.lease = None,
            // The guard retries in the background.
            Err(error) => debug!(%error, lease = %lease, "revoking a timed-out waiter failed"),
        }
    }
    CoordError::Timeout {
        kind: name.kind,
        name: name.name.clone(),
        waited_ms: start.elapsed().as_millis() as u64,
    }
}

enum WaitEnd {
    /// The predecessor went away (or the watch ended): read the queue again.
    Changed,
    TimedOut,
}

/// Waits for the predecessor's delete, keeping the waiter's own lease alive meanwhile.
async fn wait_for_delete(
    ctx: &Ctx,
    name: &QueueName,
    predecessor: &[u8],
    from: Revision,
    deadline: Instant,
    lease: LeaseId,
    ttl_secs: i64,
) -> CoordResult<WaitEnd> {
    let request = WatchRequest::new(KeyRange::key(predecessor.to_vec())).from_revision(from);
    let mut stream = match ctx.store.watch(request).await {
        Ok(stream) => stream,
        Err(StoreError::Compacted { .. }) => return Ok(WaitEnd::Changed),
        Err(error) => return Err(error.into()),
    };
    let period = keepalive_period(ttl_secs);
    let mut keepalive = tokio::time::interval_at(Instant::now() + period, period);
    loop {
        tokio::select! {
            item = stream.next() => match item {
                Some(Ok(batch)) => {
                    if batch.events.iter().any(|event| event.kind == EventKind::Delete) {
                        return Ok(WaitEnd::Changed);
                    }
                }
                Some(Err(error)) => {
                    debug!(%error, "a predecessor watch ended; reading the queue again");
                    // Never spin on a store that keeps failing watches.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return Ok(WaitEnd::Changed);
                }
                None => return Ok(WaitEnd::Changed),
            },
            _ = tokio::time::sleep_until(deadline) => return Ok(WaitEnd::TimedOut),
            _ = keepalive.tick() => match ctx.store.lease_keep_alive(lease).await {
                Ok(_) => {}
                Err(StoreError::LeaseNotFound(_)) => {
                    return Err(CoordError::LeaseLost { kind: name.kind, name: name.name.clone() });
                }
                Err(error) if error.is_retryable() => {
                    debug!(%error, lease = %lease, "a waiter's keep-alive failed; retrying");
                }
                Err(error) => return Err(error.into()),
            },
        }
    }
}

/// The contender key an owner token holds, after checking the token and the subject.
async fn verify(
    ctx: &Ctx,
    name: &QueueName,
    subject: &str,
    owner: &str,
) -> CoordResult<(KeyValue, MemberRecord)> {
    let found = match owner::lease_of(owner) {
        Some(lease) => ctx.store.get(&name.member_key(lease)).await?,
        None => None,
    };
    let Some(kv) = found else {
        return Err(absent(ctx, name).await);
    };
    let record: MemberRecord = decode(&kv.value).map_err(|e| corrupt(e.to_string()))?;
    if record.owner_sha256 != owner::digest(owner) {
        return Err(CoordError::WrongOwner { kind: name.kind, name: name.name.clone(), reason: "" });
    }
    if record.subject != subject {
        return Err(CoordError::WrongOwner {
            kind: name.kind,
            name: name.name.clone(),
            reason: " for this caller: it was issued to another subject",
        });
    }
    Ok((kv, record))
}

/// The error for an owner token whose key does not exist: 404 when nothing holds the
/// name at all, otherwise the token is simply not the holder's.
async fn absent(ctx: &Ctx, name: &QueueName) -> CoordError {
    match ctx.store.range(RangeRequest::prefix(name.prefix()).count_only()).await {
        Ok(range) if range.count == 0 => CoordError::NotHeld { kind: name.kind, name: name.name.clone() },
        Ok(_) => CoordError::WrongOwner {
            kind: name.kind,
            name: name.name.clone(),
            reason: " (it is not the current holder's: it expired, was released, or was never issued for it)",
        },
        Err(error) => error.into(),
    }
}

/// The compares that pin the exact incarnation and owner of a held key.
fn held(kv: &KeyValue) -> [Compare; 2] {
    [
        Compare::new(kv.key.clone(), CompareOp::Equal, CompareTarget::CreateRevision(kv.create_revision)),
        Compare::value(kv.key.clone(), CompareOp::Equal, kv.value.clone()),
    ]
}

/// A proclaim can change the value between the read and the transaction: a few retries
/// settle that; the owner check is redone each time.
const ATTEMPTS: usize = 4;

/// Runs `ops(kv, record)` if `owner` still holds `name`, in one transaction.
async fn while_held(
    ctx: &Ctx,
    name: &QueueName,
    subject: &str,
    owner: &str,
    ops: impl Fn(&KeyValue, &MemberRecord) -> CoordResult<Vec<TxnOp>>,
) -> CoordResult<(KeyValue, Revision)> {
    for _ in 0..ATTEMPTS {
        let (kv, record) = verify(ctx, name, subject, owner).await?;
        let txn = Txn::new().when(held(&kv)).and_then(ops(&kv, &record)?);
        let response = ctx.store.txn(txn).await?;
        if response.succeeded {
            return Ok((kv, response.revision));
        }
    }
    Err(CoordError::Store(StoreError::Unavailable(format!(
        "{} {:?} changed under {ATTEMPTS} attempts in a row; try again",
        name.kind, name.name
    ))))
}

pub(crate) async fn release(
    ctx: &Ctx,
    name: &QueueName,
    subject: &str,
    owner: &str,
) -> CoordResult<Released> {
    let (kv, revision) =
        while_held(ctx, name, subject, owner, |kv, _| Ok(vec![TxnOp::delete(kv.key.clone())])).await?;
    if let Some(lease) = kv.lease {
        // The key is gone already; the empty lease is dropped off the response path.
        let _ = ctx.cleanup.try_send(lease);
    }
    Ok(Released { fencing_token: kv.create_revision, revision })
}

pub(crate) async fn renew(ctx: &Ctx, name: &QueueName, subject: &str, owner: &str) -> CoordResult<i64> {
    let (kv, _) = verify(ctx, name, subject, owner).await?;
    let lease = kv.lease.ok_or_else(|| corrupt(format!("{} key {:?} has no lease", name.kind, name.name)))?;
    match ctx.store.lease_keep_alive(lease).await {
        Ok(ttl) => Ok(ttl),
        Err(StoreError::LeaseNotFound(_)) => {
            Err(CoordError::NotHeld { kind: name.kind, name: name.name.clone() })
        }
        Err(error) => Err(error.into()),
    }
}

pub(crate) async fn proclaim(
    ctx: &Ctx,
    name: &QueueName,
    subject: &str,
    owner: &str,
    value: &str,
) -> CoordResult<Revision> {
    let (_, revision) = while_held(ctx, name, subject, owner, |kv, record| {
        let updated = MemberRecord { value: value.to_owned(), ..record.clone() };
        let bytes = encode(&updated).map_err(|e| corrupt(e.to_string()))?;
        Ok(vec![TxnOp::Put { key: kv.key.clone(), value: bytes, lease: kv.lease }])
    })
    .await?;
    Ok(revision)
}

/// Puts `key` only while `owner` holds `name`, in the same transaction as the check.
pub(crate) async fn guarded_put(
    ctx: &Ctx,
    name: &QueueName,
    subject: &str,
    owner: &str,
    key: &[u8],
    value: &[u8],
) -> CoordResult<(Revision, Revision)> {
    let (kv, revision) =
        while_held(ctx, name, subject, owner, |_, _| Ok(vec![TxnOp::put(key.to_vec(), value.to_vec())]))
            .await?;
    Ok((kv.create_revision, revision))
}

pub(crate) fn holder_of(kv: &KeyValue) -> CoordResult<Holder> {
    let record: MemberRecord = decode(&kv.value).map_err(|e| corrupt(e.to_string()))?;
    Ok(Holder {
        subject: record.subject,
        fencing_token: kv.create_revision,
        lease: kv.lease,
        value: record.value,
    })
}

pub(crate) async fn status(ctx: &Ctx, name: &QueueName) -> CoordResult<QueueStatus> {
    let range = ctx.store.range(RangeRequest::prefix(name.prefix())).await?;
    let holder = range.kvs.iter().min_by_key(|kv| kv.create_revision).map(holder_of).transpose()?;
    Ok(QueueStatus { holder, waiters: range.count.saturating_sub(1), revision: range.revision })
}
