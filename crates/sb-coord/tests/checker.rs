//! The lock-safety checker (`sb_coord::checker`) on both adapters. CI-sized by default;
//! `SB_LOCK_CHECKER_SECS=600 SB_LOCK_CHECKER_CLIENTS=16` makes a long run, and
//! `SB_LOCK_CHECKER_SEED` replays one.

use std::sync::Arc;

use sb_coord::checker::{self, CheckerConfig, InProcessClient};
use sb_coord::Coord;
use sb_store::SharedStore;

async fn check(store: SharedStore, adapter: &str) {
    let coord = Coord::new(store);
    let config = CheckerConfig::from_env("checker/resource");
    // Every client acts as the same subject: only owner tokens tell them apart.
    let clients: Vec<_> = (0..config.clients)
        .map(|_| Arc::new(InProcessClient::new(coord.clone(), "checked", "checker")))
        .collect();
    let report = checker::run(clients, config).await;
    eprintln!("{adapter}: {report:?}");
    assert!(
        report.violations.is_empty(),
        "{adapter}: the lock-safety checker found violations (replay with SB_LOCK_CHECKER_SEED={}):\n{}",
        report.seed,
        report.violations.join("\n")
    );
    assert!(report.long_pauses > 0 && report.guarded_ok > 0, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_checker_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let options = sb_store_embedded::EmbeddedOptions::new(dir.path().join("store.redb"));
    let store: SharedStore = sb_store_embedded::EmbeddedStore::open(options).await.unwrap();
    check(store, "embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_checker_on_etcd() {
    let endpoints = std::env::var("SB_TEST_ETCD_ENDPOINTS")
        .expect("SB_TEST_ETCD_ENDPOINTS is not set: run scripts/test, which starts etcd and sets it");
    let endpoints: Vec<String> = endpoints.split(',').map(str::to_owned).collect();
    let namespace = format!("/t-lock-checker-etcd-{:016x}/", rand::random::<u64>());
    let options = sb_store_etcd::EtcdOptions::new(endpoints).with_namespace(namespace.clone());
    let store: SharedStore = sb_store_etcd::EtcdStore::connect(options).await.unwrap();
    check(store.clone(), "etcd").await;
    store.delete(sb_store::KeyRange::prefix("")).await.unwrap();
}
