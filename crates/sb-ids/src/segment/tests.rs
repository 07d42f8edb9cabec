use std::collections::HashSet;
use std::sync::atomic::Ordering;

use sb_store::SharedStore;

use super::*;
use crate::test_store::flaky;

#[tokio::test]
async fn nodes_share_a_tag_without_overlap_and_each_increases() {
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = flaky(&dir).await;
    let nodes: Vec<_> =
        (0..3).map(|_| SegmentService::new(store.clone(), SegmentOptions::default())).collect();
    let mut seen = HashSet::new();
    let mut last = [0u64; 3];
    for round in 0..60 {
        for (i, node) in nodes.iter().enumerate() {
            let ids = node.next_ids("public", "orders", 97 + round).await.unwrap();
            assert!(ids[0] > last[i] && ids.windows(2).all(|w| w[0] < w[1]), "strictly increasing per node");
            last[i] = *ids.last().unwrap();
            for id in ids {
                assert!(seen.insert(id), "duplicate {id}");
            }
        }
    }
    let tags = nodes[0].list_tags("public").await.unwrap();
    assert_eq!(tags.len(), 1);
    assert_eq!(tags[0].tag, "orders");
    assert!(tags[0].node_buffer.is_some());
}

#[tokio::test]
async fn explicit_tags_start_where_asked_and_unknown_ones_can_be_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = flaky(&dir).await;
    let options = SegmentOptions { auto_create: false, ..SegmentOptions::default() };
    let node = SegmentService::new(store, options);
    let error = node.next_ids("public", "nope", 1).await.unwrap_err();
    assert!(matches!(error, IdError::UnknownTag { .. }), "{error:?}");
    node.create_tag("team-a", "invoices", 5_000, 10, &sb_audit::Audit::system("test")).await.unwrap();
    assert!(matches!(
        node.create_tag("team-a", "invoices", 1, 10, &sb_audit::Audit::system("test")).await,
        Err(IdError::TagExists { .. })
    ));
    assert_eq!(node.next_ids("team-a", "invoices", 3).await.unwrap(), vec![5_000, 5_001, 5_002]);
    assert!(node.list_tags("public").await.unwrap().is_empty(), "tags are scoped by namespace");
    assert!(matches!(
        node.create_tag("public", "x", 0, 0, &sb_audit::Audit::system("test")).await,
        Err(IdError::InvalidArgument { field: "step", .. })
    ));
    assert!(matches!(
        node.next_ids("public", "a/b", 1).await,
        Err(IdError::InvalidArgument { field: "tag", .. })
    ));
}

#[tokio::test]
async fn ids_keep_flowing_from_the_buffers_while_the_store_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let store = flaky(&dir).await;
    let shared: SharedStore = store.clone();
    let node =
        SegmentService::new(shared, SegmentOptions { fetch_wait_ms: 200, ..SegmentOptions::default() });
    node.create_tag("public", "t", 1, 1_000, &sb_audit::Audit::system("test")).await.unwrap();
    // Use 10% so the next segment is fetched, and let the fetch land.
    node.next_ids("public", "t", 150).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    store.down.store(true, Ordering::Release);
    let mut served = 150;
    let error = loop {
        match node.next_ids("public", "t", 100).await {
            Ok(ids) => served += ids.len(),
            Err(error) => break error,
        }
    };
    assert!(served >= 1_900, "both buffers were served while the store was down: {served}");
    assert!(matches!(error, IdError::Store(_) | IdError::Refused(_)), "{error:?}");
    store.down.store(false, Ordering::Release);
    let ids = node.next_ids("public", "t", 10).await.unwrap();
    assert!(ids[0] >= 2_001, "after the outage, a new segment: {ids:?}");
}

#[tokio::test]
async fn the_step_grows_under_fast_consumption_within_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = flaky(&dir).await;
    let options = SegmentOptions { max_step: 8_000, ..SegmentOptions::default() };
    let node = SegmentService::new(store, options);
    node.create_tag("public", "fast", 1, 1_000, &sb_audit::Audit::system("test")).await.unwrap();
    for _ in 0..200 {
        node.next_ids("public", "fast", 1_000).await.unwrap();
    }
    let status = node.list_tags("public").await.unwrap().remove(0);
    assert_eq!(status.node_buffer.unwrap().current_step, 8_000);
    assert_eq!(status.step, 1_000, "the tag's base step is unchanged");
}

#[tokio::test]
async fn the_number_of_buffered_tags_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = flaky(&dir).await;
    let node =
        SegmentService::new(store, SegmentOptions { max_buffered_tags: 2, ..SegmentOptions::default() });
    node.next_ids("public", "a", 1).await.unwrap();
    node.next_ids("public", "b", 1).await.unwrap();
    let refused = node.next_ids("public", "c", 1).await.unwrap_err();
    assert!(refused.to_string().contains("the limit"), "{refused}");
    node.next_ids("public", "a", 1).await.unwrap();
}
