//! The registry over the real embedded store, with timeouts shortened to fractions of a
//! second (real time: the store's leases run on the wall clock).

use std::sync::Arc;
use std::time::Duration;

use sb_store::{SharedStore, Store};
use sb_store_embedded::{EmbeddedOptions, EmbeddedStore};

use super::*;

const UNHEALTHY: Duration = Duration::from_millis(600);
const DELETE: Duration = Duration::from_millis(1200);

async fn store(dir: &tempfile::TempDir) -> SharedStore {
    let store = EmbeddedStore::open(EmbeddedOptions::new(dir.path().join("store.redb"))).await.unwrap();
    store as Arc<dyn Store>
}

fn options() -> RegistryOptions {
    let mut options = RegistryOptions::new("node-a", UNHEALTHY, DELETE);
    options.session_ttl_secs = 3;
    options
}

fn spec(service: &ServiceId, port: i64) -> InstanceSpec {
    InstanceSpec::new(service.clone(), InstanceAddr::parse("", "10.0.0.1", port).unwrap())
}

fn hosts(registry: &Registry, id: &ServiceId) -> Vec<(u16, bool)> {
    let selection = registry.instances(id, &InstanceQuery::default());
    selection.instances.iter().map(|i| (i.entry.addr.port, i.entry.record.healthy)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beats_keep_instances_and_never_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let registry = Registry::start(store.clone(), options()).await.unwrap();
    let id = ServiceId::new("", "", "providers:com.x.Y:1.0").unwrap();
    registry.register(spec(&id, 80)).await.unwrap();
    // Read-your-writes: the view has it as soon as register returns.
    assert_eq!(hosts(&registry, &id), [(80, true)]);
    let before = store.current_revision().await.unwrap();
    let addr = InstanceAddr::parse("", "10.0.0.1", 80).unwrap();
    for _ in 0..8 {
        registry.beat(&id, &addr, None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(store.current_revision().await.unwrap(), before, "beats are not store writes");
    assert_eq!(hosts(&registry, &id), [(80, true)]);
    // Beats stop: unhealthy, then deleted.
    tokio::time::sleep(UNHEALTHY + Duration::from_millis(400)).await;
    assert_eq!(hosts(&registry, &id), [(80, false)]);
    tokio::time::sleep(DELETE).await;
    assert_eq!(hosts(&registry, &id), []);
    // A light beat for it now is refused; a full one registers it again.
    assert!(matches!(registry.beat(&id, &addr, None).await, Err(RegistryError::UnknownInstance(_))));
    registry.beat(&id, &addr, Some(spec(&id, 80))).await.unwrap();
    assert_eq!(hosts(&registry, &id), [(80, true)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_instances_stay_and_a_beat_heals_an_unhealthy_one() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(store(&dir).await, options()).await.unwrap();
    let id = ServiceId::new("dev", "g", "svc").unwrap();
    let mut persistent = spec(&id, 81);
    persistent.ephemeral = false;
    registry.register(persistent).await.unwrap();
    registry.register(spec(&id, 82)).await.unwrap();
    tokio::time::sleep(UNHEALTHY + Duration::from_millis(400)).await;
    assert_eq!(hosts(&registry, &id), [(81, true), (82, false)]);
    registry.beat(&id, &InstanceAddr::parse("", "10.0.0.1", 82).unwrap(), None).await.unwrap();
    assert_eq!(hosts(&registry, &id), [(81, true), (82, true)]);
    tokio::time::sleep(DELETE + UNHEALTHY).await;
    assert_eq!(hosts(&registry, &id), [(81, true)]);
    assert!(matches!(registry.delete_service(&id).await, Err(RegistryError::Conflict(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_session_is_regained_with_the_instances_still_beating() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let registry = Registry::start(store.clone(), options()).await.unwrap();
    let id = ServiceId::new("", "", "svc").unwrap();
    registry.register(spec(&id, 90)).await.unwrap();
    registry.register(spec(&id, 91)).await.unwrap();
    let beating = InstanceAddr::parse("", "10.0.0.1", 90).unwrap();
    // 91 stops beating at once, 90 keeps on.
    for _ in 0..8 {
        registry.beat(&id, &beating, None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lost = registry.session_lease();
    store.lease_revoke(lost).await.unwrap();
    let mut regained = false;
    for _ in 0..30 {
        // Only 90 keeps beating (while it is gone from the view, its beats are refused).
        let _ = registry.beat(&id, &beating, None).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if registry.session_lease() != lost && hosts(&registry, &id) == [(90, true)] {
            regained = true;
            break;
        }
    }
    assert!(regained, "instances: {:?}", hosts(&registry, &id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_re_adopts_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let first = Registry::start(store.clone(), options()).await.unwrap();
    let id = ServiceId::new("", "", "svc").unwrap();
    first.register(spec(&id, 70)).await.unwrap();
    let session = first.session_lease();
    first.stop();
    drop(first);
    let mut options = options();
    options.previous_session_opt = Some(session);
    let second = Registry::start(store.clone(), options).await.unwrap();
    assert_eq!(second.session_lease(), session);
    assert_eq!(hosts(&second, &id), [(70, true)]);
    // The beat table is rebuilt from the view: without beats it goes unhealthy in time.
    tokio::time::sleep(UNHEALTHY + Duration::from_millis(400)).await;
    assert_eq!(hosts(&second, &id), [(70, false)]);
    assert!(second.tracked_beats() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_wakes_on_a_change_and_drain_disables_then_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Arc::new(Registry::start(store(&dir).await, options()).await.unwrap());
    let id = ServiceId::new("", "", "svc").unwrap();
    let since = registry.instances(&id, &InstanceQuery::default()).changed_revision;
    assert_eq!(since, 0);
    let waiter = {
        let registry = registry.clone();
        let id = id.clone();
        tokio::spawn(async move { registry.wait_for_change(&id, since, Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let revision = registry.register(spec(&id, 60)).await.unwrap();
    assert_eq!(waiter.await.unwrap(), revision);
    let addr = InstanceAddr::parse("", "10.0.0.1", 60).unwrap();
    registry.drain(&id, &addr, Duration::from_millis(300)).await.unwrap();
    let selection = registry.instances(&id, &InstanceQuery { enabled_only: true, ..Default::default() });
    assert!(selection.instances.is_empty());
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(hosts(&registry, &id), []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let registry = Registry::start(store.clone(), options()).await.unwrap();
    let id = ServiceId::new("", "", "svc").unwrap();
    let before = store.current_revision().await.unwrap();
    let mut bad = spec(&id, 1);
    bad.weight = 10_001.0;
    assert!(matches!(registry.register(bad).await, Err(RegistryError::Invalid { field: "weight", .. })));
    let mut bad = spec(&id, 1);
    bad.metadata.insert("k".into(), "v".repeat(17 * 1024));
    assert!(matches!(registry.register(bad).await, Err(RegistryError::Invalid { field: "metadata", .. })));
    assert_eq!(store.current_revision().await.unwrap(), before);
    assert!(registry.snapshot().service(&id).is_none());
}
