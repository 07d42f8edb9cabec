//! The store conformance suite against a real etcd, each test in a fresh namespace.

mod common;

async fn new_store() -> sb_store::conformance::TestStore {
    let namespace = common::fresh_namespace();
    let store = common::connect(namespace.clone()).await;
    sb_store::conformance::TestStore::new(store, common::NamespaceCleanup::new(namespace))
}

sb_store::store_conformance_suite!(new_store);
