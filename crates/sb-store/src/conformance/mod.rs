//! The store conformance suite: one set of tests that states the port's semantics and runs
//! unchanged against every adapter (the quickwit `metastore_test_suite!` pattern).
//!
//! An adapter's `tests/conformance.rs` provides an `async fn() -> TestStore` that returns
//! a fresh, empty store, and instantiates the suite with
//! `sb_store::store_conformance_suite!(that_fn);`. A semantic that only one adapter
//! passes does not exist.
//!
//! Tests that assert exact revisions or compact assume that nothing else writes to the
//! same backing store while they run: the etcd suite runs serially (see
//! `.config/nextest.toml`).

use std::any::Any;

use crate::store::SharedStore;

/// A fresh, empty store for one test, and whatever must live as long as it (a temp dir).
pub struct TestStore {
    pub store: SharedStore,
    pub guard: Box<dyn Any + Send + Sync>,
}

impl TestStore {
    pub fn new(store: SharedStore, guard: impl Any + Send + Sync) -> Self {
        TestStore { store, guard: Box::new(guard) }
    }
}

/// Instantiates every conformance test for one adapter. `$factory` is a path to an
/// `async fn() -> TestStore`.
#[macro_export]
macro_rules! store_conformance_suite {
    ($factory:path) => {
        $crate::store_conformance_suite!(@tests $factory;
            // The suite's tests, by name; each is `pub async fn name(store: &TestStore)` in
            // `sb_store::conformance`.
            put_and_get_roundtrip
        );
    };
    (@tests $factory:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let store = $factory().await;
                $crate::conformance::$name(&store).await;
            }
        )*
    };
}

/// A put is read back with its metadata (placeholder until the suite lands).
pub async fn put_and_get_roundtrip(t: &TestStore) {
    let rev = t.store.put(b"a", b"1", None).await.expect("put");
    let kv = t.store.get(b"a").await.expect("get").expect("present");
    assert_eq!(kv.value, b"1");
    assert_eq!(kv.mod_revision, rev);
}
