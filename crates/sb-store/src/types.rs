//! Plain request and response types of the store port, with etcd v3 semantics.
//!
//! These types know nothing about how a store is implemented: the embedded (redb) and
//! the etcd adapters both translate them.

use std::fmt;

/// A store revision: one per committed transaction that writes. Revisions start at 1
/// for an empty store and only grow.
pub type Revision = i64;

/// The id of a lease. Always positive; `0` is never a lease (etcd's "no lease").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct LeaseId(pub i64);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One key with its value and metadata, as etcd's `mvccpb.KeyValue`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// Revision of the put that created the key (since its last delete).
    pub create_revision: Revision,
    /// Revision of the last put to the key.
    pub mod_revision: Revision,
    /// Number of puts since the key was created; 1 after the first.
    pub version: i64,
    pub lease: Option<LeaseId>,
}

/// Which keys a request addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRange {
    /// Exactly one key.
    Key(Vec<u8>),
    /// Every key starting with the bytes. An empty prefix means every key.
    Prefix(Vec<u8>),
    /// Keys in `[start, end)`.
    Between { start: Vec<u8>, end: Vec<u8> },
    /// Every key at or after `start` (etcd's range end `"\0"`).
    From(Vec<u8>),
}

impl KeyRange {
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        KeyRange::Key(key.into())
    }

    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        KeyRange::Prefix(prefix.into())
    }

    /// The first key of the range (inclusive).
    pub fn start(&self) -> &[u8] {
        match self {
            KeyRange::Key(k) | KeyRange::Prefix(k) | KeyRange::From(k) => k,
            KeyRange::Between { start, .. } => start,
        }
    }

    /// The exclusive end of the range; `None` means unbounded.
    pub fn end(&self) -> Option<Vec<u8>> {
        match self {
            KeyRange::Key(k) => {
                let mut end = k.clone();
                end.push(0);
                Some(end)
            }
            KeyRange::Prefix(p) => prefix_end(p),
            KeyRange::Between { end, .. } => Some(end.clone()),
            KeyRange::From(_) => None,
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Key(k) => k.as_slice() == key,
            KeyRange::Prefix(p) => key.starts_with(p),
            KeyRange::Between { start, end } => key >= start.as_slice() && key < end.as_slice(),
            KeyRange::From(start) => key >= start.as_slice(),
        }
    }

    /// Whether two ranges share at least one key.
    pub fn overlaps(&self, other: &KeyRange) -> bool {
        let a_start = self.start();
        let b_start = other.start();
        let a_end = self.end();
        let b_end = other.end();
        let a_before_b_end = b_end.as_deref().is_none_or(|e| a_start < e);
        let b_before_a_end = a_end.as_deref().is_none_or(|e| b_start < e);
        a_before_b_end && b_before_a_end
    }

    /// The same range starting after `key` (used to page through a range).
    pub fn after(&self, key: &[u8]) -> KeyRange {
        let mut start = key.to_vec();
        start.push(0);
        match self.end() {
            Some(end) => KeyRange::Between { start, end },
            None => KeyRange::From(start),
        }
    }

    /// Whether the range addresses one key only.
    pub fn is_single_key(&self) -> bool {
        matches!(self, KeyRange::Key(_))
    }
}

/// The smallest key greater than every key that starts with `prefix`; `None` when no
/// such key exists (an empty prefix or one made only of 0xff bytes).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A range read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeRequest {
    pub range: KeyRange,
    /// Read at this past revision; `None` reads at the current one.
    pub revision: Option<Revision>,
    /// At most this many keys; `None` (or 0) for no limit.
    pub limit: Option<u64>,
    /// Answer only `count`, with no keys.
    pub count_only: bool,
    /// Answer keys and metadata without values.
    pub keys_only: bool,
}

impl RangeRequest {
    pub fn new(range: KeyRange) -> Self {
        RangeRequest { range, revision: None, limit: None, count_only: false, keys_only: false }
    }

    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        Self::new(KeyRange::key(key))
    }

    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        Self::new(KeyRange::prefix(prefix))
    }

    pub fn at_revision(mut self, revision: Revision) -> Self {
        self.revision = Some(revision);
        self
    }

    pub fn with_limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }

    pub fn count_only(mut self) -> Self {
        self.count_only = true;
        self
    }

    pub fn keys_only(mut self) -> Self {
        self.keys_only = true;
        self
    }

    pub fn effective_limit(&self) -> Option<u64> {
        self.limit.filter(|l| *l > 0)
    }
}

/// The answer to a range read.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RangeResponse {
    /// The store's current revision when the read was served (even for a past-revision read).
    pub revision: Revision,
    /// Matching keys in key order, at most `limit`.
    pub kvs: Vec<KeyValue>,
    /// Whether keys beyond `limit` exist.
    pub more: bool,
    /// How many keys match in all, regardless of `limit`.
    pub count: u64,
}

/// What a compare looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    /// The value. Comparing the value of an absent key is always false, as in etcd.
    Value(Vec<u8>),
    /// The version; 0 for an absent key.
    Version(i64),
    /// The create revision; 0 for an absent key.
    CreateRevision(Revision),
    /// The mod revision; 0 for an absent key.
    ModRevision(Revision),
    /// The lease; `None` for an absent key or a key with no lease.
    Lease(Option<LeaseId>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Greater,
    Less,
}

/// One condition of a transaction, on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    pub key: Vec<u8>,
    pub target: CompareTarget,
    pub op: CompareOp,
}

impl Compare {
    pub fn new(key: impl Into<Vec<u8>>, op: CompareOp, target: CompareTarget) -> Self {
        Compare { key: key.into(), target, op }
    }

    /// The key does not exist.
    pub fn absent(key: impl Into<Vec<u8>>) -> Self {
        Self::new(key, CompareOp::Equal, CompareTarget::CreateRevision(0))
    }

    pub fn mod_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: Revision) -> Self {
        Self::new(key, op, CompareTarget::ModRevision(revision))
    }

    pub fn version(key: impl Into<Vec<u8>>, op: CompareOp, version: i64) -> Self {
        Self::new(key, op, CompareTarget::Version(version))
    }

    pub fn value(key: impl Into<Vec<u8>>, op: CompareOp, value: impl Into<Vec<u8>>) -> Self {
        Self::new(key, op, CompareTarget::Value(value.into()))
    }

    pub fn lease(key: impl Into<Vec<u8>>, op: CompareOp, lease: Option<LeaseId>) -> Self {
        Self::new(key, op, CompareTarget::Lease(lease))
    }

    /// Evaluates the compare against the key's current state (`None` when absent), with
    /// etcd's rules. Adapters that evaluate compares themselves call this, so the rule
    /// lives in one place.
    pub fn evaluate(&self, current: Option<&KeyValue>) -> bool {
        use std::cmp::Ordering;
        let ordering = match (&self.target, current) {
            (CompareTarget::Value(_), None) => return false,
            (CompareTarget::Value(v), Some(kv)) => kv.value.as_slice().cmp(v.as_slice()),
            (CompareTarget::Version(v), kv) => kv.map_or(0, |kv| kv.version).cmp(v),
            (CompareTarget::CreateRevision(r), kv) => kv.map_or(0, |kv| kv.create_revision).cmp(r),
            (CompareTarget::ModRevision(r), kv) => kv.map_or(0, |kv| kv.mod_revision).cmp(r),
            (CompareTarget::Lease(l), kv) => {
                let have = kv.and_then(|kv| kv.lease).map_or(0, |l| l.0);
                have.cmp(&l.map_or(0, |l| l.0))
            }
        };
        match self.op {
            CompareOp::Equal => ordering == Ordering::Equal,
            CompareOp::NotEqual => ordering != Ordering::Equal,
            CompareOp::Greater => ordering == Ordering::Greater,
            CompareOp::Less => ordering == Ordering::Less,
        }
    }
}

/// One operation of a transaction branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    Put { key: Vec<u8>, value: Vec<u8>, lease: Option<LeaseId> },
    Delete(KeyRange),
    Range(RangeRequest),
}

impl TxnOp {
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        TxnOp::Put { key: key.into(), value: value.into(), lease: None }
    }

    pub fn put_with_lease(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, lease: LeaseId) -> Self {
        TxnOp::Put { key: key.into(), value: value.into(), lease: Some(lease) }
    }

    pub fn delete(key: impl Into<Vec<u8>>) -> Self {
        TxnOp::Delete(KeyRange::key(key))
    }

    pub fn get(key: impl Into<Vec<u8>>) -> Self {
        TxnOp::Range(RangeRequest::key(key))
    }
}

/// A transaction: if every compare holds, run `success`, otherwise `failure`. All or
/// nothing, at one revision.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

impl Txn {
    pub fn new() -> Self {
        Txn::default()
    }

    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Self {
        self.compares.extend(compares);
        self
    }

    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.success.extend(ops);
        self
    }

    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.failure.extend(ops);
        self
    }

    /// Whether any op of either branch can write.
    pub fn has_writes(&self) -> bool {
        self.success.iter().chain(&self.failure).any(|op| !matches!(op, TxnOp::Range(_)))
    }
}

/// The answer to one op of the branch that ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResponse {
    Put,
    /// How many keys the delete removed.
    Delete {
        deleted: u64,
    },
    Range(RangeResponse),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether the compares held (and `success` ran).
    pub succeeded: bool,
    /// The store revision after the transaction: its own revision if it wrote, else the
    /// current one (a transaction that changes nothing does not advance the revision).
    pub revision: Revision,
    pub responses: Vec<OpResponse>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeleteResponse {
    pub revision: Revision,
    pub deleted: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseGrant {
    pub id: LeaseId,
    /// The granted TTL; requests below the minimum (2 s) are raised to it, as etcd does.
    pub ttl_secs: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    pub id: LeaseId,
    pub granted_ttl_secs: i64,
    /// Seconds left before expiry, rounded as etcd rounds (up).
    pub remaining_ttl_secs: i64,
    /// Keys attached to the lease, in key order (only when asked for).
    pub keys: Vec<Vec<u8>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change. For a delete, `kv` holds the key and `mod_revision` = the deleting revision,
/// with every other field zero, as etcd sends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
}

/// Every event of one revision that matches a watch, never split. A batch with no events
/// is a progress notification: every event up to `revision` has been delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchBatch {
    pub revision: Revision,
    pub events: Vec<Event>,
}

impl WatchBatch {
    pub fn is_progress(&self) -> bool {
        self.events.is_empty()
    }
}

/// A watch of a key or a range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchRequest {
    pub range: KeyRange,
    /// Deliver changes from this revision on (it may be in the past, down to the compacted
    /// revision); `None` means changes after the current revision.
    pub start_revision: Option<Revision>,
}

impl WatchRequest {
    pub fn new(range: KeyRange) -> Self {
        WatchRequest { range, start_revision: None }
    }

    pub fn from_revision(mut self, revision: Revision) -> Self {
        self.start_revision = Some(revision);
        self
    }
}
