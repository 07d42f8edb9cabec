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

fn test_audit() -> sb_audit::Audit {
    sb_audit::Audit::new("tester", "10.9.9.9", "unit-test", "req")
}

async fn audit_actions(store: &SharedStore) -> Vec<(String, String)> {
    let query = sb_audit::AuditQuery { limit: 1000, ..Default::default() };
    let page = sb_audit::query(store.as_ref(), &query).await.unwrap();
    page.records.into_iter().map(|e| (e.record.action, e.record.resource)).collect()
}

#[tokio::test]
async fn changes_are_audited_once_and_beats_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let registry = Registry::start(store.clone(), options()).await.unwrap();
    let id = ServiceId::new("", "", "audited").unwrap();
    let addr = InstanceAddr::parse("", "10.0.0.1", 80).unwrap();
    let key = "registry/instances/public/DEFAULT_GROUP/audited/DEFAULT/10.0.0.1:80".to_owned();
    registry.beat(&id, &addr, Some(spec(&id, 80)), &test_audit()).await.unwrap();
    registry.beat(&id, &addr, None, &test_audit()).await.unwrap();
    let patch = InstancePatch { weight: Some(2.0), ..InstancePatch::default() };
    registry.update_instance(&id, &addr, patch, &test_audit()).await.unwrap();
    assert!(registry.deregister(&id, &addr, &test_audit()).await.unwrap().is_some());
    assert!(registry.deregister(&id, &addr, &test_audit()).await.unwrap().is_none());
    registry.delete_service(&id, &test_audit()).await.unwrap();
    let expected = [
        ("instance.register", key.as_str()),
        ("instance.update", key.as_str()),
        ("instance.deregister", key.as_str()),
        ("service.delete", "registry/services/public/DEFAULT_GROUP/audited"),
    ];
    let actions = audit_actions(&store).await;
    let actions: Vec<(&str, &str)> = actions.iter().map(|(a, r)| (a.as_str(), r.as_str())).collect();
    assert_eq!(actions, expected);
    registry.stop();
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
    registry.register(spec(&id, 80), &test_audit()).await.unwrap();
    // Read-your-writes: the view has it as soon as register returns.
    assert_eq!(hosts(&registry, &id), [(80, true)]);
    let before = store.current_revision().await.unwrap();
    let addr = InstanceAddr::parse("", "10.0.0.1", 80).unwrap();
    for _ in 0..8 {
        registry.beat(&id, &addr, None, &test_audit()).await.unwrap();
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
    assert!(matches!(
        registry.beat(&id, &addr, None, &test_audit()).await,
        Err(RegistryError::UnknownInstance(_))
    ));
    registry.beat(&id, &addr, Some(spec(&id, 80)), &test_audit()).await.unwrap();
    assert_eq!(hosts(&registry, &id), [(80, true)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_instances_stay_and_a_beat_heals_an_unhealthy_one() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(store(&dir).await, options()).await.unwrap();
    let id = ServiceId::new("dev", "g", "svc").unwrap();
    let mut persistent = spec(&id, 81);
    persistent.ephemeral = false;
    registry.register(persistent, &test_audit()).await.unwrap();
    registry.register(spec(&id, 82), &test_audit()).await.unwrap();
    tokio::time::sleep(UNHEALTHY + Duration::from_millis(400)).await;
    assert_eq!(hosts(&registry, &id), [(81, true), (82, false)]);
    registry.beat(&id, &InstanceAddr::parse("", "10.0.0.1", 82).unwrap(), None, &test_audit()).await.unwrap();
    assert_eq!(hosts(&registry, &id), [(81, true), (82, true)]);
    tokio::time::sleep(DELETE + UNHEALTHY).await;
    assert_eq!(hosts(&registry, &id), [(81, true)]);
    assert!(matches!(registry.delete_service(&id, &test_audit()).await, Err(RegistryError::Conflict(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_session_is_regained_with_the_instances_still_beating() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let registry = Registry::start(store.clone(), options()).await.unwrap();
    let id = ServiceId::new("", "", "svc").unwrap();
    registry.register(spec(&id, 90), &test_audit()).await.unwrap();
    registry.register(spec(&id, 91), &test_audit()).await.unwrap();
    let beating = InstanceAddr::parse("", "10.0.0.1", 90).unwrap();
    // 91 stops beating at once, 90 keeps on.
    for _ in 0..8 {
        registry.beat(&id, &beating, None, &test_audit()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lost = registry.session_lease();
    store.lease_revoke(lost).await.unwrap();
    let mut regained = false;
    for _ in 0..30 {
        // Only 90 keeps beating (while it is gone from the view, its beats are refused).
        let _ = registry.beat(&id, &beating, None, &test_audit()).await;
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
    first.register(spec(&id, 70), &test_audit()).await.unwrap();
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
    let revision = registry.register(spec(&id, 60), &test_audit()).await.unwrap();
    assert_eq!(waiter.await.unwrap(), revision);
    let addr = InstanceAddr::parse("", "10.0.0.1", 60).unwrap();
    registry.drain(&id, &addr, Duration::from_millis(300), &test_audit()).await.unwrap();
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
    assert!(matches!(
        registry.register(bad, &test_audit()).await,
        Err(RegistryError::Invalid { field: "weight", .. })
    ));
    let mut bad = spec(&id, 1);
    bad.metadata.insert("k".into(), "v".repeat(17 * 1024));
    assert!(matches!(
        registry.register(bad, &test_audit()).await,
        Err(RegistryError::Invalid { field: "metadata", .. })
    ));
    assert_eq!(store.current_revision().await.unwrap(), before);
    assert!(registry.snapshot().service(&id).is_none());
}
