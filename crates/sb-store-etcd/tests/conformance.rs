//! The store conformance suite against a real etcd, each test in a fresh namespace.

mod common;

async fn new_store() -> sb_store::conformance::TestStore {
    let store = common::connect_fresh().await;
    sb_store::conformance::TestStore::new(store, ())
}

sb_store::store_conformance_suite!(new_store);
