//! The shared store conformance suite, run against the embedded adapter: as configured by
//! default, and with every key cold (values only in the files, read from there).

use sb_store::conformance::TestStore;
use sb_store_embedded::{EmbeddedOptions, EmbeddedStore};

async fn open(cold_prefixes: Vec<Vec<u8>>) -> TestStore {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut options = EmbeddedOptions::new(dir.path().join("store.redb"));
    options.cold_prefixes = cold_prefixes;
    let store = EmbeddedStore::open(options).await.expect("open store");
    TestStore::new(store, dir)
}

async fn new_store() -> TestStore {
    open(Vec::new()).await
}

sb_store::store_conformance_suite!(new_store);

/// Every key cold: the empty prefix matches them all.
mod all_cold {
    use super::*;

    async fn new_store() -> TestStore {
        open(vec![Vec::new()]).await
    }

    sb_store::store_conformance_suite!(new_store);
}
