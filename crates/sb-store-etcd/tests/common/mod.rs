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
