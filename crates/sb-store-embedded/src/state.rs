//! The in-memory current state: every live key at the current revision, so reads at the
//! current revision never go through the MVCC table's history. Only the writer changes it,
//! and only after a commit.
//!
//! A *cold* key (under one of [`crate::EmbeddedOptions::cold_prefixes`]) keeps only its
//! metadata here ([`Entry::Cold`]): its value is read from the store files when a read or a
//! value compare needs it ([`ColdValues`]). Revisions, versions, leases, compares on them,
//! watches (events carry their values) and compaction work from memory as for any key.
//!
//! The writer evaluates a batch against this state plus an [`Overlay`] of the batch's
//! pending changes; [`View`] merges the two.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use sb_store::{
    Compare, CompareTarget, KeyRange, KeyValue, LeaseId, RangeRequest, RangeResponse, Revision, StoreResult,
};

/// The committed state every reader sees.
#[derive(Debug, Default)]
pub(crate) struct MemState {
    pub(crate) kvs: BTreeMap<Vec<u8>, Entry>,
    /// The current revision; 1 for an empty store, as etcd.
    pub(crate) revision: Revision,
    /// Every revision up to this one is in the MVCC table; above it only in the log.
    pub(crate) checkpointed: Revision,
    /// The compacted revision; 0 when nothing was compacted. Reads below it fail.
    pub(crate) compacted: Revision,
    /// Records that no read at or above this revision needs are gone from the MVCC table;
    /// between it and `compacted`, such records may remain (no read can reach them).
    pub(crate) cleaned: Revision,
    /// The cleaned revision as of the MVCC file's last *durable* commit: the writer trims
    /// the log only below it. Checkpoints commit without an fsync of their own most of the
    /// time (see `crate::disk::maintain`), so after a kill -9 the MVCC file may be back at
    /// its last durable commit, and the log must still hold every revision above that
    /// commit's checkpoint.
    pub(crate) durably_cleaned: Revision,
}

/// Whether `key` is cold under `prefixes`: its value lives only in the store files.
pub(crate) fn is_cold(prefixes: &[Vec<u8>], key: &[u8]) -> bool {
    prefixes.iter().any(|prefix| key.starts_with(prefix))
}

/// A live key's metadata: everything but its key and value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) create_revision: Revision,
    pub(crate) mod_revision: Revision,
    pub(crate) version: i64,
    /// 0 for none (lease ids are never 0), to keep an entry small.
    lease: i64,
}

impl Meta {
    pub(crate) fn new(
        create_revision: Revision,
        mod_revision: Revision,
        version: i64,
        lease: Option<LeaseId>,
    ) -> Self {
        Meta { create_revision, mod_revision, version, lease: lease.map_or(0, |l| l.0) }
    }

    pub(crate) fn of(kv: &KeyValue) -> Self {
        Meta::new(kv.create_revision, kv.mod_revision, kv.version, kv.lease)
    }

    pub(crate) fn lease(&self) -> Option<LeaseId> {
        (self.lease != 0).then_some(LeaseId(self.lease))
    }

    /// The key-value with `value`.
    pub(crate) fn to_kv(self, key: &[u8], value: Vec<u8>) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease(),
        }
    }
}

/// A live key in memory.
#[derive(Clone, Debug)]
pub(crate) enum Entry {
    /// With its value.
    Hot(Arc<KeyValue>),
    /// Metadata only: the value is in the store files, at `(key, mod_revision)`.
    Cold(Meta),
}

impl Entry {
    /// How the committed state keeps `kv`: without its value when the key is cold.
    pub(crate) fn new(kv: &Arc<KeyValue>, cold: bool) -> Self {
        if cold {
            Entry::Cold(Meta::of(kv))
        } else {
            Entry::Hot(kv.clone())
        }
    }

    pub(crate) fn lease(&self) -> Option<LeaseId> {
        match self {
            Entry::Hot(kv) => kv.lease,
            Entry::Cold(meta) => meta.lease(),
        }
    }

    #[cfg(test)]
    pub(crate) fn meta(&self) -> Meta {
        match self {
            Entry::Hot(kv) => Meta::of(kv),
            Entry::Cold(meta) => *meta,
        }
    }
}

/// A live key as a read finds it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Found<'a> {
    Hot(&'a Arc<KeyValue>),
    Cold(&'a [u8], &'a Meta),
}

impl<'a> Found<'a> {
    pub(crate) fn key(&self) -> &'a [u8] {
        match self {
            Found::Hot(kv) => &kv.key,
            Found::Cold(key, _) => key,
        }
    }

    pub(crate) fn meta(&self) -> Meta {
        match self {
            Found::Hot(kv) => Meta::of(kv),
            Found::Cold(_, meta) => **meta,
        }
    }
}

/// Where the values of cold keys come from: the store files, read through snapshots taken
/// while the in-memory state that named them is held (see `crate::cold`).
pub(crate) trait ColdValues {
    /// The value `key` got at `mod_revision` (its current one).
    fn value(&mut self, key: &[u8], mod_revision: Revision) -> StoreResult<Vec<u8>>;
}

/// Changes made by the batch being evaluated: `None` marks a deleted key.
pub(crate) type Overlay = BTreeMap<Vec<u8>, Option<Arc<KeyValue>>>;

type KeyBounds = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// Bounds for a `BTreeMap` range; `None` when the range is empty (an end before its start
/// would make `BTreeMap::range` panic).
fn bounds(range: &KeyRange) -> Option<KeyBounds> {
    let start = range.start().to_vec();
    match range.end() {
        Some(end) if end <= start => None,
        Some(end) => Some((Bound::Included(start), Bound::Excluded(end))),
        None => Some((Bound::Included(start), Bound::Unbounded)),
    }
}

fn found<'a>(key: &'a [u8], entry: &'a Entry) -> Found<'a> {
    match entry {
        Entry::Hot(kv) => Found::Hot(kv),
        Entry::Cold(meta) => Found::Cold(key, meta),
    }
}

/// Committed state seen through the batch's overlay.
pub(crate) struct View<'a> {
    pub(crate) base: &'a BTreeMap<Vec<u8>, Entry>,
    pub(crate) overlay: Option<&'a Overlay>,
}

impl<'a> View<'a> {
    pub(crate) fn committed(state: &'a MemState) -> Self {
        View { base: &state.kvs, overlay: None }
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<Found<'a>> {
        if let Some(pending) = self.overlay.and_then(|o| o.get(key)) {
            return pending.as_ref().map(Found::Hot);
        }
        self.base.get_key_value(key).map(|(key, entry)| found(key, entry))
    }

    /// The keys of every live key in `range`, in key order.
    #[cfg(test)]
    pub(crate) fn keys(&self, range: &KeyRange) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        self.for_each_in(range, |found| {
            out.push(found.key().to_vec());
            true
        });
        out
    }

    /// Calls `f` on every live key in `range` in key order, until it returns false.
    pub(crate) fn for_each_in(&self, range: &KeyRange, mut f: impl FnMut(Found<'a>) -> bool) {
        let Some(bounds) = bounds(range) else { return };
        let mut base = self.base.range::<Vec<u8>, _>(bounds.clone()).peekable();
        let Some(overlay) = self.overlay else {
            for (key, entry) in base {
                if !f(found(key, entry)) {
                    return;
                }
            }
            return;
        };
        let mut pending = overlay.range::<Vec<u8>, _>(bounds).peekable();
        loop {
            let next = match (base.peek(), pending.peek()) {
                (None, None) => return,
                (Some(_), None) => base.next().map(|(k, e)| Some(found(k, e))),
                (None, Some(_)) => pending.next().map(|(_, kv)| kv.as_ref().map(Found::Hot)),
                (Some((bk, _)), Some((pk, _))) => match bk.cmp(pk) {
                    std::cmp::Ordering::Less => base.next().map(|(k, e)| Some(found(k, e))),
                    std::cmp::Ordering::Greater => pending.next().map(|(_, kv)| kv.as_ref().map(Found::Hot)),
                    std::cmp::Ordering::Equal => {
                        base.next();
                        pending.next().map(|(_, kv)| kv.as_ref().map(Found::Hot))
                    }
                },
            };
            if let Some(Some(found)) = next {
                if !f(found) {
                    return;
                }
            }
        }
    }

    /// Evaluates `compare` with etcd's rules (`Compare::evaluate`). Only a compare on a
    /// cold key's value reads the files, through `cold`; without it, such a compare
    /// answers `None`.
    pub(crate) fn evaluate(
        &self,
        compare: &Compare,
        cold: Option<&mut dyn ColdValues>,
    ) -> StoreResult<Option<bool>> {
        let found = self.get(&compare.key);
        Ok(Some(match found {
            None => compare.evaluate(None),
            Some(Found::Hot(kv)) => compare.evaluate(Some(kv)),
            Some(Found::Cold(key, meta)) => {
                let value = match (&compare.target, cold) {
                    (CompareTarget::Value(_), Some(cold)) => cold.value(key, meta.mod_revision)?,
                    (CompareTarget::Value(_), None) => return Ok(None),
                    // Compares on metadata look at no value.
                    _ => Vec::new(),
                };
                compare.evaluate(Some(&meta.to_kv(&[], value)))
            }
        }))
    }

    /// Answers a range read at the view's revision (`revision` goes into the response);
    /// values of cold keys are left to [`Answer::fill`].
    pub(crate) fn answer(&self, request: &RangeRequest, revision: Revision) -> Answer {
        let mut builder = RangeBuilder::new(request);
        if let KeyRange::Key(key) = &request.range {
            // The hot path: one map lookup, no range bounds to build.
            if let Some(found) = self.get(key) {
                builder.push_found(found);
            }
            return builder.finish_answer(revision);
        }
        self.for_each_in(&request.range, |found| {
            builder.push_found(found);
            true
        });
        builder.finish_answer(revision)
    }
}

/// A range answer from memory, still missing the values of its cold keys.
#[derive(Debug)]
#[must_use]
pub(crate) struct Answer {
    response: RangeResponse,
    /// Indexes in `response.kvs` of cold keys whose value is to be read.
    cold: Vec<usize>,
}

impl Answer {
    /// The answer, when it needs no value from the files.
    pub(crate) fn in_memory(self) -> Result<RangeResponse, Answer> {
        if self.cold.is_empty() {
            Ok(self.response)
        } else {
            Err(self)
        }
    }

    /// Reads the values of the answer's cold keys.
    pub(crate) fn fill(mut self, cold: &mut dyn ColdValues) -> StoreResult<RangeResponse> {
        for index in self.cold {
            let kv = &mut self.response.kvs[index];
            kv.value = cold.value(&kv.key, kv.mod_revision)?;
        }
        Ok(self.response)
    }
}

/// Accumulates a range answer with etcd's rules: `count` counts every match, `more` says
/// keys beyond `limit` exist, `count_only` returns no keys, `keys_only` no values.
pub(crate) struct RangeBuilder<'r> {
    request: &'r RangeRequest,
    limit: Option<u64>,
    kvs: Vec<KeyValue>,
    count: u64,
    /// Indexes in `kvs` of cold keys whose value is still to be read.
    cold: Vec<usize>,
}

impl<'r> RangeBuilder<'r> {
    pub(crate) fn new(request: &'r RangeRequest) -> Self {
        RangeBuilder {
            request,
            limit: request.effective_limit(),
            kvs: Vec::new(),
            count: 0,
            cold: Vec::new(),
        }
    }

    /// Whether the next match would be returned (not only counted).
    fn wants_kv(&self) -> bool {
        !self.request.count_only && self.limit.is_none_or(|l| (self.kvs.len() as u64) < l)
    }

    fn push_found(&mut self, found: Found<'_>) {
        if self.wants_kv() {
            match found {
                Found::Hot(kv) => self.kvs.push(self.shape(KeyValue::clone(kv))),
                Found::Cold(key, meta) => {
                    if !self.request.keys_only {
                        self.cold.push(self.kvs.len());
                    }
                    self.kvs.push(meta.to_kv(key, Vec::new()));
                }
            }
        }
        self.count += 1;
    }

    pub(crate) fn push(&mut self, kv: KeyValue) {
        if self.wants_kv() {
            let kv = self.shape(kv);
            self.kvs.push(kv);
        }
        self.count += 1;
    }

    fn shape(&self, mut kv: KeyValue) -> KeyValue {
        if self.request.keys_only {
            kv.value = Vec::new();
        }
        kv
    }

    pub(crate) fn finish(self, revision: Revision) -> RangeResponse {
        debug_assert!(self.cold.is_empty(), "cold values are filled through an Answer");
        self.finish_answer(revision).response
    }

    fn finish_answer(self, revision: Revision) -> Answer {
        let more = !self.request.count_only && (self.kvs.len() as u64) < self.count;
        Answer {
            response: RangeResponse { revision, kvs: self.kvs, more, count: self.count },
            cold: self.cold,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, rev: Revision) -> Arc<KeyValue> {
        Arc::new(KeyValue {
            key: key.as_bytes().to_vec(),
            value: format!("v{rev}").into_bytes(),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            lease: None,
        })
    }

    fn base(keys: &[&str], cold: &[&str]) -> BTreeMap<Vec<u8>, Entry> {
        keys.iter().map(|k| (k.as_bytes().to_vec(), Entry::new(&kv(k, 2), cold.contains(k)))).collect()
    }

    fn keys(view: &View, range: &KeyRange) -> Vec<String> {
        view.keys(range).iter().map(|k| String::from_utf8_lossy(k).into_owned()).collect()
    }

    /// Cold values as the files would hold them: `v{mod_revision}`.
    struct Files(usize);

    impl ColdValues for Files {
        fn value(&mut self, _key: &[u8], mod_revision: Revision) -> StoreResult<Vec<u8>> {
            self.0 += 1;
            Ok(format!("v{mod_revision}").into_bytes())
        }
    }

    #[test]
    fn overlay_shadows_base_in_key_order() {
        let base = base(&["a", "b", "c", "e"], &["c"]);
        let mut overlay = Overlay::new();
        overlay.insert(b"b".to_vec(), None);
        overlay.insert(b"d".to_vec(), Some(kv("d", 3)));
        overlay.insert(b"e".to_vec(), Some(kv("e", 3)));
        let view = View { base: &base, overlay: Some(&overlay) };
        assert_eq!(keys(&view, &KeyRange::prefix("")), ["a", "c", "d", "e"]);
        assert!(view.get(b"b").is_none());
        assert_eq!(view.get(b"d").map(|f| f.meta().mod_revision), Some(3));
        assert_eq!(view.get(b"e").map(|f| f.meta().mod_revision), Some(3));
        assert!(matches!(view.get(b"c"), Some(Found::Cold(b"c", _))));
    }

    #[test]
    fn inverted_range_is_empty_not_a_panic() {
        let base = base(&["a"], &[]);
        let view = View { base: &base, overlay: None };
        let range = KeyRange::Between { start: b"z".to_vec(), end: b"a".to_vec() };
        let mut seen = 0;
        view.for_each_in(&range, |_| {
            seen += 1;
            true
        });
        assert_eq!(seen, 0);
    }

    #[test]
    fn limit_count_and_more() {
        let base = base(&["a", "b", "c"], &["a"]);
        let view = View { base: &base, overlay: None };
        let answer = view.answer(&RangeRequest::prefix("").with_limit(2).keys_only(), 5);
        let resp = answer.in_memory().expect("keys only reads no value");
        assert_eq!((resp.kvs.len(), resp.count, resp.more, resp.revision), (2, 3, true, 5));
        assert!(resp.kvs[0].value.is_empty());
        let resp = view.answer(&RangeRequest::prefix("").count_only(), 5).in_memory().unwrap();
        assert_eq!((resp.kvs.len(), resp.count, resp.more), (0, 3, false));
    }

    #[test]
    fn cold_values_are_read_only_when_answered() {
        let base = base(&["a", "b", "c"], &["a", "c"]);
        let view = View { base: &base, overlay: None };
        // Beyond the limit, a cold key is counted but not read.
        let Err(answer) = view.answer(&RangeRequest::prefix("").with_limit(2), 5).in_memory() else {
            panic!("a cold value is answered")
        };
        let mut files = Files(0);
        let resp = answer.fill(&mut files).unwrap();
        assert_eq!(files.0, 1);
        assert_eq!(resp.kvs.iter().map(|kv| kv.value.as_slice()).collect::<Vec<_>>(), [b"v2", b"v2"]);
        assert_eq!(resp.kvs[0], *kv("a", 2));
        assert!(view.answer(&RangeRequest::key("b"), 5).in_memory().is_ok());
    }

    #[test]
    fn only_value_compares_on_cold_keys_read_the_files() {
        let base = base(&["a"], &["a"]);
        let view = View { base: &base, overlay: None };
        let by_version = Compare::version("a", sb_store::CompareOp::Equal, 1);
        assert_eq!(view.evaluate(&by_version, None).unwrap(), Some(true));
        let by_value = Compare::value("a", sb_store::CompareOp::Equal, "v2");
        assert_eq!(view.evaluate(&by_value, None).unwrap(), None, "needs the files");
        let mut files = Files(0);
        assert_eq!(view.evaluate(&by_value, Some(&mut files)).unwrap(), Some(true));
        let other = Compare::value("a", sb_store::CompareOp::Equal, "v3");
        assert_eq!(view.evaluate(&other, Some(&mut files)).unwrap(), Some(false));
        let absent = Compare::value("zz", sb_store::CompareOp::Equal, "v2");
        assert_eq!(view.evaluate(&absent, None).unwrap(), Some(false));
    }
}
