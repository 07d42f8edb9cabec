//! The in-memory current state: every live key at the current revision, so reads at the
//! current revision never touch redb. Only the writer changes it, and only after a commit.
//!
//! The writer evaluates a batch against this state plus an [`Overlay`] of the batch's
//! pending changes; [`View`] merges the two.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use sb_store::{KeyRange, KeyValue, RangeRequest, RangeResponse, Revision};

/// The committed state every reader sees.
#[derive(Debug, Default)]
pub(crate) struct MemState {
    pub(crate) kvs: BTreeMap<Vec<u8>, Arc<KeyValue>>,
    /// The current revision; 1 for an empty store, as etcd.
    pub(crate) revision: Revision,
    /// Every revision up to this one is in the MVCC table; above it only in the log.
    pub(crate) checkpointed: Revision,
    /// The compacted revision; 0 when nothing was compacted. Reads below it fail.
    pub(crate) compacted: Revision,
    /// Records that no read at or above this revision needs are gone from the MVCC table;
    /// between it and `compacted`, such records may remain (no read can reach them).
    pub(crate) cleaned: Revision,
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

/// Committed state seen through the batch's overlay.
pub(crate) struct View<'a> {
    pub(crate) base: &'a BTreeMap<Vec<u8>, Arc<KeyValue>>,
    pub(crate) overlay: Option<&'a Overlay>,
}

impl<'a> View<'a> {
    pub(crate) fn committed(state: &'a MemState) -> Self {
        View { base: &state.kvs, overlay: None }
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<&'a Arc<KeyValue>> {
        if let Some(pending) = self.overlay.and_then(|o| o.get(key)) {
            return pending.as_ref();
        }
        self.base.get(key)
    }

    /// Every live key in `range`, in key order.
    pub(crate) fn range(&self, range: &KeyRange) -> Vec<&'a Arc<KeyValue>> {
        let mut out = Vec::new();
        self.for_each_in(range, |kv| {
            out.push(kv);
            true
        });
        out
    }

    /// Calls `f` on every live key in `range` in key order, until it returns false.
    pub(crate) fn for_each_in(&self, range: &KeyRange, mut f: impl FnMut(&'a Arc<KeyValue>) -> bool) {
        let Some(bounds) = bounds(range) else { return };
        let mut base = self.base.range::<Vec<u8>, _>(bounds.clone()).peekable();
        let Some(overlay) = self.overlay else {
            for (_, kv) in base {
                if !f(kv) {
                    return;
                }
            }
            return;
        };
        let mut pending = overlay.range::<Vec<u8>, _>(bounds).peekable();
        loop {
            let next = match (base.peek(), pending.peek()) {
                (None, None) => return,
                (Some(_), None) => base.next().map(|(_, kv)| Some(kv)),
                (None, Some(_)) => pending.next().map(|(_, kv)| kv.as_ref()),
                (Some((bk, _)), Some((pk, _))) => match bk.cmp(pk) {
                    std::cmp::Ordering::Less => base.next().map(|(_, kv)| Some(kv)),
                    std::cmp::Ordering::Greater => pending.next().map(|(_, kv)| kv.as_ref()),
                    std::cmp::Ordering::Equal => {
                        base.next();
                        pending.next().map(|(_, kv)| kv.as_ref())
                    }
                },
            };
            if let Some(Some(kv)) = next {
                if !f(kv) {
                    return;
                }
            }
        }
    }

    /// Answers a range read at the view's revision (`revision` goes into the response).
    pub(crate) fn answer(&self, request: &RangeRequest, revision: Revision) -> RangeResponse {
        let mut builder = RangeBuilder::new(request);
        if let KeyRange::Key(key) = &request.range {
            // The hot path: one map lookup, no range bounds to build.
            if let Some(kv) = self.get(key) {
                builder.push_with(kv);
            }
            return builder.finish(revision);
        }
        self.for_each_in(&request.range, |kv| {
            builder.push_with(kv);
            true
        });
        builder.finish(revision)
    }
}

/// Accumulates a range answer with etcd's rules: `count` counts every match, `more` says
/// keys beyond `limit` exist, `count_only` returns no keys, `keys_only` no values.
pub(crate) struct RangeBuilder<'r> {
    request: &'r RangeRequest,
    limit: Option<u64>,
    kvs: Vec<KeyValue>,
    count: u64,
}

impl<'r> RangeBuilder<'r> {
    pub(crate) fn new(request: &'r RangeRequest) -> Self {
        RangeBuilder { request, limit: request.effective_limit(), kvs: Vec::new(), count: 0 }
    }

    /// Whether the next match would be returned (not only counted).
    fn wants_kv(&self) -> bool {
        !self.request.count_only && self.limit.is_none_or(|l| (self.kvs.len() as u64) < l)
    }

    pub(crate) fn push_with(&mut self, kv: &KeyValue) {
        if self.wants_kv() {
            self.kvs.push(self.shape(kv.clone()));
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
        let more = !self.request.count_only && (self.kvs.len() as u64) < self.count;
        RangeResponse { revision, kvs: self.kvs, more, count: self.count }
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

    fn keys(kvs: &[&Arc<KeyValue>]) -> Vec<String> {
        kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect()
    }

    #[test]
    fn overlay_shadows_base_in_key_order() {
        let base: BTreeMap<_, _> =
            ["a", "b", "c", "e"].iter().map(|k| (k.as_bytes().to_vec(), kv(k, 2))).collect();
        let mut overlay = Overlay::new();
        overlay.insert(b"b".to_vec(), None);
        overlay.insert(b"d".to_vec(), Some(kv("d", 3)));
        overlay.insert(b"e".to_vec(), Some(kv("e", 3)));
        let view = View { base: &base, overlay: Some(&overlay) };
        let all = view.range(&KeyRange::prefix(""));
        assert_eq!(keys(&all), ["a", "c", "d", "e"]);
        assert_eq!(all[3].mod_revision, 3);
        assert!(view.get(b"b").is_none());
        assert_eq!(view.get(b"d").map(|kv| kv.mod_revision), Some(3));
    }

    #[test]
    fn inverted_range_is_empty_not_a_panic() {
        let base: BTreeMap<_, _> = [(b"a".to_vec(), kv("a", 2))].into_iter().collect();
        let view = View { base: &base, overlay: None };
        let range = KeyRange::Between { start: b"z".to_vec(), end: b"a".to_vec() };
        assert!(view.range(&range).is_empty());
    }

    #[test]
    fn limit_count_and_more() {
        let base: BTreeMap<_, _> =
            ["a", "b", "c"].iter().map(|k| (k.as_bytes().to_vec(), kv(k, 2))).collect();
        let view = View { base: &base, overlay: None };
        let resp = view.answer(&RangeRequest::prefix("").with_limit(2).keys_only(), 5);
        assert_eq!((resp.kvs.len(), resp.count, resp.more, resp.revision), (2, 3, true, 5));
        assert!(resp.kvs[0].value.is_empty());
        let resp = view.answer(&RangeRequest::prefix("").count_only(), 5);
        assert_eq!((resp.kvs.len(), resp.count, resp.more), (0, 3, false));
    }
}
