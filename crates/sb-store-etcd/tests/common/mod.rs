//! Shared by the etcd tests: the test etcd, found through `SB_TEST_ETCD_ENDPOINTS`.
#![allow(dead_code)]

use std::sync::Arc;

use sb_store_etcd::{EtcdOptions, EtcdStore};

pub fn endpoints() -> Vec<String> {
    let Ok(endpoints) = std::env::var("SB_TEST_ETCD_ENDPOINTS") else {
        panic!(
            "SB_TEST_ETCD_ENDPOINTS is not set: run scripts/test, which starts etcd and sets \
             SB_TEST_ETCD_ENDPOINTS"
        );
    };
    endpoints.split(',').map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect()
}

/// A namespace no other test uses.
pub fn fresh_namespace() -> Vec<u8> {
    format!("/sbtest/{}/", hex::encode(rand::random::<[u8; 8]>())).into_bytes()
}

pub async fn connect(namespace: Vec<u8>) -> Arc<EtcdStore> {
    EtcdStore::connect(EtcdOptions::new(endpoints()).with_namespace(namespace))
        .await
        .expect("connect to the test etcd")
}

pub async fn connect_fresh() -> Arc<EtcdStore> {
    connect(fresh_namespace()).await
}

/// Deletes a test's namespace when the test ends. Keys a test left on a lease would
/// otherwise be deleted when that lease expires, in the middle of a later test, and move
/// the shared etcd's revision under that test's exact-revision assertions.
pub struct NamespaceCleanup {
    namespace: Vec<u8>,
}

impl NamespaceCleanup {
    pub fn new(namespace: Vec<u8>) -> Self {
        NamespaceCleanup { namespace }
    }
}

impl Drop for NamespaceCleanup {
    fn drop(&mut self) {
        let namespace = self.namespace.clone();
        // Drop cannot await, and the test's runtime may be shutting down: clean up on a
        // thread of its own, and wait for it, so the next test starts after the delete.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                use sb_store::Store;
                let store =
                    EtcdStore::connect(EtcdOptions::new(endpoints()).with_namespace(namespace)).await?;
                store.delete(sb_store::KeyRange::prefix("")).await.map(|_| ())
            })?;
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        });
        if let Ok(Err(e)) = cleanup.join() {
            eprintln!("could not delete the test namespace: {e}");
        }
    }
}
