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
use crate::lease_pool::PooledLease;
use crate::names::{QueueKind, QueueName};
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
///
/// The enqueue transaction reads the queue at its own revision: every key with a lower
/// create revision than ours is in that read, and no key created later can have one. So
/// the predecessors are known once, and each is waited for in turn (highest first, so a
/// waiter watches only its immediate predecessor): its delete event, or its absence at a
/// read after our watch was established, removes it. After the last wait, the lease is
/// re-checked with a keep-alive: a live lease still has our key (only the owner token's
/// release, or the lease's end, deletes it), an ended one means nothing is held.
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
    let Enqueued { lease, ttl_secs, owner, key, mine, members, mut seen, mut renewed_at, mut guard } =
        enqueue(ctx, name, subject, ttl_secs, value).await?;
    let mut predecessors = predecessors_of(&members, &key, mine);
    let mut waited = false;
    while let Some(predecessor) = predecessors.last().cloned() {
        if Instant::now() >= deadline {
            return Err(give_up(ctx, name, &mut guard, start).await);
        }
        waited = true;
        match wait_gone(ctx, name, &predecessor, seen, deadline, lease, ttl_secs).await? {
            WaitEnd::Gone => {
                predecessors.pop();
            }
            WaitEnd::TimedOut => return Err(give_up(ctx, name, &mut guard, start).await),
            WaitEnd::Unsure => {
                // The watch failed: read the queue again, in one transaction that also
                // confirms our key is still the one we wrote.
                let check = Txn::new()
                    .when([Compare::new(key.clone(), CompareOp::Equal, CompareTarget::CreateRevision(mine))])
                    .and_then([TxnOp::Range(RangeRequest::prefix(name.prefix()).keys_only())]);
                let checked = ctx.store.txn(check).await?;
                if !checked.succeeded {
                    return Err(CoordError::LeaseLost { kind: name.kind, name: name.name.clone() });
                }
                seen = checked.revision;
                predecessors = match checked.responses.first() {
                    Some(OpResponse::Range(range)) => predecessors_of(&range.kvs, &key, mine),
                    other => return Err(corrupt(format!("the queue read answered {other:?}"))),
                };
            }
        }
    }
    if waited {
        // The lease re-check after the wait. Claiming without it would be unsafe: a lease
        // that ended while we waited took our key with it (the Jepsen etcd finding).
        renewed_at = Instant::now();
        match ctx.store.lease_keep_alive(lease).await {
            Ok(_) => ctx.leases.renewed(lease, renewed_at),
            Err(StoreError::LeaseNotFound(_)) => {
                guard.lease = None;
                ctx.leases.forget(lease);
                return Err(CoordError::LeaseLost { kind: name.kind, name: name.name.clone() });
            }
            Err(error) => return Err(error.into()),
        }
    }
    guard.lease = None;
    ctx.leases.granted(lease, renewed_at);
    Ok(Grant { name: name.clone(), fencing_token: mine, owner, lease, ttl_secs, renewed_at, waited })
}

/// The keys queued ahead of ours, by create revision, the immediate predecessor last.
fn predecessors_of(members: &[KeyValue], key: &[u8], mine: Revision) -> Vec<KeyValue> {
    let mut ahead: Vec<KeyValue> =
        members.iter().filter(|kv| kv.create_revision < mine && kv.key != key).cloned().collect();
    ahead.sort_by_key(|kv| kv.create_revision);
    ahead
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

/// Puts the contender's key on a lease of its own, in one transaction with a read of the
/// queue. The lease comes from the pool when one is ready (renewed alongside the put
/// unless it has most of its TTL left), else it is granted first.
async fn enqueue(
    ctx: &Ctx,
    name: &QueueName,
    subject: &str,
    ttl_secs: i64,
    value: String,
) -> CoordResult<Enqueued> {
    let mut use_pool = true;
    loop {
        let now = Instant::now();
        let pooled = if use_pool { ctx.leases.take(ttl_secs) } else { None };
        let lease = match pooled {
            Some(pooled) => pooled,
            None => {
                let granted = ctx.store.lease_grant(ttl_secs).await?;
                PooledLease {
                    id: granted.id,
                    ttl_secs: granted.ttl_secs,
                    alive_until: now + Duration::from_secs(granted.ttl_secs.max(1) as u64),
                }
            }
        };
        ctx.leases.issued(ttl_secs, lease, name.kind);
        let guard = WaiterGuard { cleanup: ctx.cleanup.clone(), lease: Some(lease.id) };
        let secret = owner::Secret::new(lease.id);
        let key = name.member_key(lease.id);
        let record =
            MemberRecord { subject: subject.to_owned(), owner_sha256: secret.digest(), value: value.clone() };
        let bytes = encode(&record).map_err(|e| corrupt(e.to_string()))?;
        let txn = Txn::new().when([Compare::absent(key.clone())]).and_then([
            TxnOp::put_with_lease(key.clone(), bytes, lease.id),
            TxnOp::Range(RangeRequest::prefix(name.prefix()).keys_only()),
        ]);
        let renew = pooled.is_some() && !lease.fresh(now);
        let (response, renewed) = if renew {
            let (response, renewed) = tokio::join!(ctx.store.txn(txn), ctx.store.lease_keep_alive(lease.id));
            (response, renewed.map(|_| ()))
        } else {
            (ctx.store.txn(txn).await, Ok(()))
        };
        let renewed_at =
            if renew { now } else { lease.alive_until - Duration::from_secs(lease.ttl_secs.max(1) as u64) };
        match (response, renewed) {
            // A pooled lease that ended after all: take a fresh one (the guard cleans up).
            (Err(StoreError::LeaseNotFound(_)), _) | (_, Err(StoreError::LeaseNotFound(_)))
                if pooled.is_some() =>
            {
                use_pool = false;
                continue;
            }
            (Err(error), _) | (_, Err(error)) => return Err(error.into()),
            (Ok(response), Ok(())) => {
                if !response.succeeded {
                    return Err(corrupt(format!("the key of fresh lease {} already exists", lease.id)));
                }
                let members = match response.responses.get(1) {
                    Some(OpResponse::Range(range)) => range.kvs.clone(),
                    other => return Err(corrupt(format!("the enqueue's range answered {other:?}"))),
                };
                return Ok(Enqueued {
                    lease: lease.id,
                    ttl_secs: lease.ttl_secs,
                    owner: secret.token(response.revision),
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
        ctx.leases.forget(lease);
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
    /// The predecessor's key is gone.
    Gone,
    TimedOut,
    /// The watch failed: read the queue again.
    Unsure,
}

/// Waits for the predecessor's key (known to exist at revision `seen`) to go, keeping the
/// waiter's own lease alive meanwhile.
///
/// The watch starts at the store's current revision, so the store never has to replay
/// history to it (etcd serves a watch that starts in the past from a sync loop that runs
/// every 100 ms). When it starts after `seen + 1`, the predecessor may have gone in
/// between: one read, made after the watch was established, settles that.
async fn wait_gone(
    ctx: &Ctx,
    name: &QueueName,
    predecessor: &KeyValue,
    seen: Revision,
    deadline: Instant,
    lease: LeaseId,
    ttl_secs: i64,
) -> CoordResult<WaitEnd> {
    let request = WatchRequest::new(KeyRange::key(predecessor.key.clone()));
    let mut stream = match ctx.store.watch(request).await {
        Ok(stream) => stream,
        Err(error) if error.is_retryable() => {
            debug!(%error, "a predecessor watch failed; reading the queue again");
            // Never spin on a store that keeps failing watches.
            tokio::time::sleep(Duration::from_millis(50)).await;
            return Ok(WaitEnd::Unsure);
        }
        Err(error) => return Err(error.into()),
    };
    if stream.start_revision().is_none_or(|start| start > seen + 1) {
        match ctx.store.get(&predecessor.key).await? {
            Some(kv) if kv.create_revision == predecessor.create_revision => {}
            // Deleted since `seen` (or deleted and written again: a later incarnation
            // queues behind us).
            _ => return Ok(WaitEnd::Gone),
        }
    }
    let period = keepalive_period(ttl_secs);
    let mut keepalive = tokio::time::interval_at(Instant::now() + period, period);
    loop {
        tokio::select! {
            item = stream.next() => match item {
                Some(Ok(batch)) => {
                    if batch.events.iter().any(|event| event.kind == EventKind::Delete) {
                        return Ok(WaitEnd::Gone);
                    }
                }
                Some(Err(error)) => {
                    debug!(%error, "a predecessor watch ended; reading the queue again");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return Ok(WaitEnd::Unsure);
                }
                None => return Ok(WaitEnd::Unsure),
            },
            _ = tokio::time::sleep_until(deadline) => return Ok(WaitEnd::TimedOut),
            _ = keepalive.tick() => {
                let sent = Instant::now();
                match ctx.store.lease_keep_alive(lease).await {
                    Ok(_) => ctx.leases.renewed(lease, sent),
                    Err(StoreError::LeaseNotFound(_)) => {
                        return Err(CoordError::LeaseLost { kind: name.kind, name: name.name.clone() });
                    }
                    Err(error) if error.is_retryable() => {
                        debug!(%error, lease = %lease, "a waiter's keep-alive failed; retrying");
                    }
                    Err(error) => return Err(error.into()),
                }
            }
        }
    }
}

/// Checks that the key `kv` (the one the owner token names) is held by `owner` for
/// `subject`.
fn check_owner(name: &QueueName, kv: &KeyValue, subject: &str, owner: &str) -> CoordResult<MemberRecord> {
    let record: MemberRecord = decode(&kv.value).map_err(|e| corrupt(e.to_string()))?;
    let pinned = owner::parse(owner).and_then(|parsed| parsed.create_revision);
    if record.owner_sha256 != owner::digest(owner) || pinned.is_some_and(|rev| rev != kv.create_revision) {
        return Err(CoordError::WrongOwner { kind: name.kind, name: name.name.clone(), reason: "" });
    }
    if record.subject != subject {
        return Err(CoordError::WrongOwner {
            kind: name.kind,
            name: name.name.clone(),
            reason: " for this caller: it was issued to another subject",
        });
    }
    Ok(record)
}

/// The error for an owner token whose key does not exist, given how many contenders the
/// name has: 404 when nothing holds it at all, otherwise the token is simply not the
/// holder's.
fn absent(name: &QueueName, contenders: u64) -> CoordError {
    if contenders == 0 {
        CoordError::NotHeld { kind: name.kind, name: name.name.clone() }
    } else {
        CoordError::WrongOwner {
            kind: name.kind,
            name: name.name.clone(),
            reason: " (it is not the current holder's: it expired, was released, or was never issued for it)",
        }
    }
}

/// The contender key an owner token holds, read and checked (token and subject).
async fn verify(
    ctx: &Ctx,
    name: &QueueName,
    subject: &str,
    owner: &str,
) -> CoordResult<(KeyValue, MemberRecord)> {
    let found = match owner::parse(owner) {
        Some(parsed) => ctx.store.get(&name.member_key(parsed.lease)).await?,
        None => None,
    };
    let Some(kv) = found else {
        let range = ctx.store.range(RangeRequest::prefix(name.prefix()).count_only()).await?;
        return Err(absent(name, range.count));
    };
    let record = check_owner(name, &kv, subject, owner)?;
    Ok((kv, record))
}

/// The compares that pin the exact incarnation and owner of a held key.
fn held(key: &[u8], create_revision: Revision, value: &[u8]) -> [Compare; 2] {
    [
        Compare::new(key.to_vec(), CompareOp::Equal, CompareTarget::CreateRevision(create_revision)),
        Compare::value(key.to_vec(), CompareOp::Equal, value.to_vec()),
    ]
}

/// A proclaim can change the value between the read and the transaction: a few retries
/// settle that; the owner check is redone each time.
const ATTEMPTS: usize = 4;

/// The held key as the owner token says it is, with no read: a lock's value is fixed by
/// its subject and owner token, and a token of the current form names the key's create
/// revision. `None` when a read is needed (an election's value changes with proclaims; a
/// token of the earlier form names no revision).
fn expected(name: &QueueName, subject: &str, owner: &str) -> CoordResult<Option<KeyValue>> {
    let Some(owner::Parsed { lease, create_revision: Some(create_revision) }) = owner::parse(owner) else {
        return Ok(None);
    };
    if name.kind != QueueKind::Lock {
        return Ok(None);
    }
    let record = MemberRecord {
        subject: subject.to_owned(),
        owner_sha256: owner::digest(owner),
        value: String::new(),
    };
    let value = encode(&record).map_err(|e| corrupt(e.to_string()))?;
    Ok(Some(KeyValue {
        key: name.member_key(lease),
        value,
        create_revision,
        mod_revision: create_revision,
        version: 1,
        lease: Some(lease),
    }))
}

/// Runs `ops(kv, record)` if `owner` still holds `name`, in one transaction that compares
/// on the key's create revision and value (which carries the owner hash). For a lock with
/// a current token that transaction is the only round trip; when it fails, its other
/// branch reads the key and the queue size, which name the error (or, for a value that
/// differs only by its encoding, give the exact one to retry with).
async fn while_held(
    ctx: &Ctx,
    name: &QueueName,
    subject: &str,
    owner: &str,
    ops: impl Fn(&KeyValue, &MemberRecord) -> CoordResult<Vec<TxnOp>>,
) -> CoordResult<(KeyValue, Revision)> {
    let mut known = match expected(name, subject, owner)? {
        Some(kv) => {
            let record = decode(&kv.value).map_err(|e| corrupt(e.to_string()))?;
            (kv, record)
        }
        None => verify(ctx, name, subject, owner).await?,
    };
    for _ in 0..ATTEMPTS {
        let (kv, record) = &known;
        let txn = Txn::new()
            .when(held(&kv.key, kv.create_revision, &kv.value))
            .and_then(ops(kv, record)?)
            .or_else([
                TxnOp::Range(RangeRequest::key(kv.key.clone())),
                TxnOp::Range(RangeRequest::prefix(name.prefix()).count_only()),
            ]);
        let response = ctx.store.txn(txn).await?;
        if response.succeeded {
            return Ok((known.0, response.revision));
        }
        let (current, contenders) = match response.responses.as_slice() {
            [OpResponse::Range(key), OpResponse::Range(queue)] => (key.kvs.first().cloned(), queue.count),
            other => return Err(corrupt(format!("the owner check's reads answered {other:?}"))),
        };
        let Some(current) = current else { return Err(absent(name, contenders)) };
        let record = check_owner(name, &current, subject, owner)?;
        known = (current, record);
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
        // The key is gone already: the lease goes back to the pool, or is revoked off the
        // response path.
        if !ctx.leases.recycle(lease) {
            let _ = ctx.cleanup.try_send(lease);
        }
    }
    Ok(Released { fencing_token: kv.create_revision, revision })
}

pub(crate) async fn renew(ctx: &Ctx, name: &QueueName, subject: &str, owner: &str) -> CoordResult<i64> {
    let (kv, _) = verify(ctx, name, subject, owner).await?;
    let lease = kv.lease.ok_or_else(|| corrupt(format!("{} key {:?} has no lease", name.kind, name.name)))?;
    let sent = Instant::now();
    match ctx.store.lease_keep_alive(lease).await {
        Ok(ttl) => {
            ctx.leases.renewed(lease, sent);
            Ok(ttl)
        }
        Err(StoreError::LeaseNotFound(_)) => {
            ctx.leases.forget(lease);
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
    audit: &sb_audit::Audit,
) -> CoordResult<Revision> {
    let (_, revision) = while_held(ctx, name, subject, owner, |kv, record| {
        let updated = MemberRecord { value: value.to_owned(), ..record.clone() };
        let bytes = encode(&updated).map_err(|e| corrupt(e.to_string()))?;
        let resource = String::from_utf8_lossy(&kv.key).into_owned();
        let audited = audit.op("election.proclaim", resource, Some(&kv.value), Some(&bytes));
        Ok(vec![TxnOp::Put { key: kv.key.clone(), value: bytes, lease: kv.lease }, audited])
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
    audit: &sb_audit::Audit,
) -> CoordResult<(Revision, Revision)> {
    let (kv, revision) = while_held(ctx, name, subject, owner, |_, _| {
        let audited = audit.op("kv.put.guarded", String::from_utf8_lossy(key), None, Some(value));
        Ok(vec![TxnOp::put(key.to_vec(), value.to_vec()), audited])
    })
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
