//! Keys and ranges: what a read returns with its metadata, and how ranges are addressed,
//! limited, counted and paged.

use crate::types::{KeyRange, KeyValue, RangeRequest, Txn, TxnOp};

use super::harness::{current_revision, entries, keys_of, pairs, present, text, value_of};
use super::TestStore;

/// A put is read back with its value and metadata; a key never written is absent.
pub async fn put_and_get_roundtrip(t: &TestStore) {
    let rev = t.store.put(b"a", b"1", None).await.expect("put a");
    let kv = present(t, "a").await;
    let expected = KeyValue {
        key: b"a".to_vec(),
        value: b"1".to_vec(),
        create_revision: rev,
        mod_revision: rev,
        version: 1,
        lease: None,
    };
    assert_eq!(kv, expected, "a fresh key has create = mod = the put's revision, version 1, no lease");
    assert_eq!(value_of(t, "b").await, None, "a key never written is absent");
}

/// `version` counts puts since creation; a delete ends the key's life, and re-creating it
/// starts a new one with a new create revision and version 1.
pub async fn version_counts_puts_and_restarts_after_delete(t: &TestStore) {
    let r1 = t.store.put(b"a", b"1", None).await.expect("put a=1");
    let r2 = t.store.put(b"a", b"2", None).await.expect("put a=2");
    let kv = present(t, "a").await;
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r1, r2, 2),
        "after two puts: create = first put, mod = second put, version 2"
    );

    let deleted = t.store.delete(KeyRange::key("a")).await.expect("delete a");
    assert_eq!(deleted.deleted, 1, "deleting a present key deletes one key");
    assert_eq!(deleted.revision, r2 + 1, "a delete that removes a key is the next revision");
    assert_eq!(value_of(t, "a").await, None, "a deleted key is absent");

    let r4 = t.store.put(b"a", b"3", None).await.expect("put a=3");
    assert_eq!(r4, deleted.revision + 1, "the re-create is the next revision");
    let kv = present(t, "a").await;
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r4, r4, 1),
        "a re-created key starts over: create = mod = its put, version 1"
    );
}

/// A prefix range returns exactly the keys that start with the prefix, in key order.
pub async fn prefix_range_returns_matching_keys_in_order(t: &TestStore) {
    for (key, value) in [("a/2", "2"), ("b", "x"), ("a/1", "1"), ("a0", "x"), ("a/3", "3"), ("a", "x")] {
        t.store.put(key.as_bytes(), value.as_bytes(), None).await.expect("put");
    }
    let response = t.store.range(RangeRequest::prefix("a/")).await.expect("range a/");
    assert_eq!(keys_of(&response.kvs), ["a/1", "a/2", "a/3"], "prefix a/ holds a/1..a/3 in key order");
    assert_eq!(response.count, 3, "count is the number of matches");
    assert!(!response.more, "no more keys without a limit");
    assert_eq!(
        entries(t, KeyRange::prefix("a/")).await,
        pairs(&[("a/1", "1"), ("a/2", "2"), ("a/3", "3")]),
        "a prefix range carries values"
    );
}

/// With a limit, `count` still counts every match and `more` says whether keys were left out.
pub async fn range_limit_reports_count_and_more(t: &TestStore) {
    let puts = (1..=5).map(|i| TxnOp::put(format!("k{i}"), "v"));
    t.store.txn(Txn::new().and_then(puts)).await.expect("put k1..k5");

    let page = t.store.range(RangeRequest::prefix("k").with_limit(2)).await.expect("range limit 2");
    assert_eq!(keys_of(&page.kvs), ["k1", "k2"], "limit 2 returns the first two keys");
    assert_eq!(page.count, 5, "count counts all 5 matches regardless of the limit");
    assert!(page.more, "more is set when matches were left out");

    let all = t.store.range(RangeRequest::prefix("k").with_limit(5)).await.expect("range limit 5");
    assert_eq!(all.kvs.len(), 5, "a limit equal to the matches returns them all");
    assert!(!all.more, "more is not set when nothing was left out");

    let unlimited = t.store.range(RangeRequest::prefix("k").with_limit(0)).await.expect("range limit 0");
    assert_eq!(unlimited.kvs.len(), 5, "limit 0 means no limit");
    assert!(!unlimited.more, "more is not set without a limit");
}

/// `count_only` answers the count without keys; `keys_only` answers keys and metadata
/// without values.
pub async fn count_only_and_keys_only(t: &TestStore) {
    let puts = (1..=3).map(|i| TxnOp::put(format!("k{i}"), format!("value {i}")));
    let rev = t.store.txn(Txn::new().and_then(puts)).await.expect("put k1..k3").revision;

    let counted = t.store.range(RangeRequest::prefix("k").count_only()).await.expect("count_only");
    assert_eq!(counted.count, 3, "count_only counts the 3 matches");
    assert!(counted.kvs.is_empty(), "count_only returns no keys, got {:?}", counted.kvs);

    let keys = t.store.range(RangeRequest::prefix("k").keys_only()).await.expect("keys_only");
    assert_eq!(keys_of(&keys.kvs), ["k1", "k2", "k3"], "keys_only returns every key in order");
    for kv in &keys.kvs {
        assert!(kv.value.is_empty(), "keys_only returns no values, got {:?}", kv);
        assert_eq!((kv.mod_revision, kv.version), (rev, 1), "keys_only keeps metadata, got {:?}", kv);
    }
    assert_eq!(keys.count, 3, "keys_only counts the matches");
}

/// `Between` is `[start, end)` and `From` is every key at or after its start.
pub async fn between_and_from_ranges(t: &TestStore) {
    for key in ["a", "b", "c", "d"] {
        t.store.put(key.as_bytes(), b"v", None).await.expect("put");
    }
    let between = KeyRange::Between { start: b"b".to_vec(), end: b"d".to_vec() };
    let response = t.store.range(RangeRequest::new(between)).await.expect("range [b, d)");
    assert_eq!(keys_of(&response.kvs), ["b", "c"], "[b, d) includes b and excludes d");

    let from = t.store.range(RangeRequest::new(KeyRange::From(b"c".to_vec()))).await.expect("range c..");
    assert_eq!(keys_of(&from.kvs), ["c", "d"], "From(c) holds c and every key after it");
    assert_eq!(from.count, 2, "From(c) counts 2 keys");
}

/// An empty prefix addresses the whole store: nothing in a fresh store, then exactly the
/// keys written.
pub async fn empty_prefix_reads_the_whole_store(t: &TestStore) {
    let empty = t.store.range(RangeRequest::prefix(Vec::new())).await.expect("range everything");
    assert_eq!((empty.count, empty.kvs.len()), (0, 0), "a fresh store is empty, got {:?}", empty.kvs);

    for key in ["z", "x", "y/1"] {
        t.store.put(key.as_bytes(), b"v", None).await.expect("put");
    }
    let all = t.store.range(RangeRequest::prefix(Vec::new())).await.expect("range everything");
    assert_eq!(keys_of(&all.kvs), ["x", "y/1", "z"], "an empty prefix returns every key in order");
    assert_eq!(all.count, 3, "an empty prefix counts every key");
}

/// Paging with `KeyRange::after` at one fixed revision returns every key exactly once,
/// with its value at that revision, while other writers change the range between pages.
pub async fn paging_at_a_fixed_revision_sees_each_key_once(t: &TestStore) {
    let originals: Vec<String> = (0..25).map(|i| format!("p/{i:02}")).collect();
    let puts = originals.iter().map(|k| TxnOp::put(k.as_str(), "old"));
    let at = t.store.txn(Txn::new().and_then(puts)).await.expect("put p/00..p/24").revision;

    let mut range = KeyRange::prefix("p/");
    let mut seen: Vec<(String, String)> = Vec::new();
    for page_no in 0.. {
        assert!(page_no < 10, "25 keys in pages of 7 take 4 pages, still paging after {page_no}");
        let request = RangeRequest::new(range.clone()).at_revision(at).with_limit(7);
        let page = t.store.range(request).await.expect("read a page");
        assert_eq!(
            page.count as usize,
            originals.len() - seen.len(),
            "count is what is left of the range at the fixed revision"
        );
        seen.extend(page.kvs.iter().map(|kv| (text(&kv.key), text(&kv.value))));
        let Some(last) = page.kvs.last() else { break };
        let last = last.key.clone();
        // Writers between pages: a key that sorts right after the page, an update and a
        // delete of keys still to come. None of them is visible at the fixed revision.
        let mut inserted = last.clone();
        inserted.push(b'x');
        let next = format!("p/{:02}", (seen.len() + 1).min(24));
        let txn = Txn::new().and_then([TxnOp::put(inserted, "new"), TxnOp::put(next, "new")]);
        t.store.txn(txn).await.expect("write between pages");
        t.store.delete(KeyRange::key(format!("p/{:02}", (seen.len() + 3).min(24)))).await.expect("delete");
        if !page.more {
            break;
        }
        range = range.after(&last);
    }
    let expected: Vec<(String, String)> = originals.iter().map(|k| (k.clone(), "old".to_string())).collect();
    assert_eq!(seen, expected, "paging at a fixed revision returns each key once, with its value then");
    assert!(current_revision(t).await > at, "the writers did advance the store while paging");
    assert_eq!(value_of(t, "p/06x").await.as_deref(), Some("new"), "the writers' keys exist now");
}
