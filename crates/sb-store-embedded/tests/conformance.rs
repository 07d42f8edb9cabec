//! The shared store conformance suite, run against the embedded adapter.

use sb_store::conformance::TestStore;
use sb_store_embedded::{EmbeddedOptions, EmbeddedStore};

async fn new_store() -> TestStore {
    let dir = tempfile::tempdir().expect("temp dir");
    let store =
        EmbeddedStore::open(EmbeddedOptions::new(dir.path().join("store.redb"))).await.expect("open store");
    TestStore::new(store, dir)
}

sb_store::store_conformance_suite!(new_store);
