//! The config service and view over the real embedded store, and the listener's re-check
//! after a view reset.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sb_store::codec::encode;
use sb_store::view::{ViewChange, ViewState};
use sb_store::{Event, EventKind, KeyValue, SharedStore, Store};
use sb_store_embedded::{EmbeddedOptions, EmbeddedStore};

use crate::gray::GrayClient;
use crate::listen::{listen_on, Listeners};
use crate::view::changed_items;
use crate::*;

async fn service(dir: &tempfile::TempDir, retention: Retention) -> ConfigService {
    let store = EmbeddedStore::open(EmbeddedOptions::new(dir.path().join("store.redb"))).await.unwrap();
    let store = store as Arc<dyn Store> as SharedStore;
    service_on(store, retention).await
}

async fn service_on(store: SharedStore, retention: Retention) -> ConfigService {
    let view = Arc::new(ConfigView::start(store.clone()).await.unwrap());
    ConfigService::new(store, view, ConfigSettings { retention, ..ConfigSettings::default() })
}

#[tokio::test]
async fn a_fresh_view_loads_only_current_contents() {
    let dir = tempfile::tempdir().unwrap();
    let first = service(&dir, Retention::default()).await;
    let (a, b) = (key("a"), key("b"));
    for n in 0..3 {
        first.publish(&a, text(&format!("a{n}")), &audit()).await.unwrap();
    }
    let b_version = first.publish(&b, text("b0"), &audit()).await.unwrap().version;
    first.delete(&b, None, &audit()).await.unwrap();
    first.publish(&key("c"), text("c0"), &audit()).await.unwrap();
    // A second view loads the store from scratch, as a restarted node does.
    let second = service_on(first.store_for_tests(), Retention::default()).await;
    assert_eq!(&*second.get(&a).unwrap().content, "a2");
    assert!(second.get(&b).is_none(), "a deleted config stays deleted");
    assert_eq!(second.view().snapshot().len(), 2);
    let history = second.history(&b, 1, 10).await.unwrap();
    assert_eq!(history.records.last().map(|r| r.version), Some(b_version));
}

fn audit() -> sb_audit::Audit {
    sb_audit::Audit::new("t", "10.0.0.9", "unit-test", "req")
}

async fn audit_log(store: &SharedStore) -> Vec<(String, String, sb_store::Revision)> {
    let query = sb_audit::AuditQuery { limit: 1000, ..Default::default() };
    let page = sb_audit::query(store.as_ref(), &query).await.unwrap();
    page.records.into_iter().map(|e| (e.record.action, e.record.resource, e.revision)).collect()
}

#[tokio::test]
async fn every_change_writes_one_record_in_its_transaction_without_content() {
    let dir = tempfile::tempdir().unwrap();
    let service = service(&dir, Retention::default()).await;
    let store = service.store_for_tests();
    let a = key("audited.txt");
    let v1 = service.publish(&a, text("super-secret-value"), &audit()).await.unwrap().version;
    let v2 = service.publish(&a, text("two"), &audit()).await.unwrap().version;
    let v3 = service.rollback(&a, v1, None, &audit()).await.unwrap().version;
    let gray = GrayRequest {
        content: "g".into(),
        selector: GraySelector { ips: parse_ips(["10.0.0.1"]).unwrap(), ..GraySelector::default() },
        author: "t".into(),
        source_ip: String::new(),
    };
    let v4 = service.publish_gray(&a, gray.clone(), &audit()).await.unwrap().version;
    let v5 = service.abort_gray(&a, &audit()).await.unwrap();
    service.publish_gray(&a, gray, &audit()).await.unwrap();
    let v7 = service.promote_gray(&a, &audit()).await.unwrap().version;
    let v8 = service.delete(&a, None, &audit()).await.unwrap().unwrap();
    // A refused publish writes no record.
    let stale = PublishRequest { if_match: Some(v1), ..text("x") };
    assert!(service.publish(&a, stale, &audit()).await.is_err());
    assert_eq!(audit_log(&store).await.len(), 8);
    let log = audit_log(&store).await;
    let item = a.item_key();
    let gray_key = a.gray_key();
    let actions: Vec<(&str, &str)> = log.iter().map(|(a, r, _)| (a.as_str(), r.as_str())).collect();
    assert_eq!(
        actions[..8],
        [
            ("config.publish", item.as_str()),
            ("config.publish", item.as_str()),
            ("config.rollback", item.as_str()),
            ("config.gray.publish", gray_key.as_str()),
            ("config.gray.abort", gray_key.as_str()),
            ("config.gray.publish", gray_key.as_str()),
            ("config.gray.promote", item.as_str()),
            ("config.delete", item.as_str()),
        ]
    );
    let revisions: Vec<_> = log.iter().map(|(_, _, r)| *r).collect();
    assert_eq!([revisions[0], revisions[1], revisions[2], revisions[3], revisions[4]], [v1, v2, v3, v4, v5]);
    assert_eq!([revisions[6], revisions[7]], [v7, v8]);
    let raw = store.range(sb_store::RangeRequest::prefix(sb_audit::AUDIT_PREFIX)).await.unwrap();
    for kv in raw.kvs {
        let text = String::from_utf8_lossy(&kv.value);
        assert!(!text.contains("super-secret-value"), "{text}");
    }
}

fn text(content: &str) -> PublishRequest {
    PublishRequest { content: content.into(), author: "test".into(), ..PublishRequest::default() }
}

fn key(data_id: &str) -> ConfigKey {
    ConfigKey::new("public", "G", data_id).unwrap()
}

#[tokio::test]
async fn versions_are_revisions_and_the_view_serves_the_current_content() {
    let dir = tempfile::tempdir().unwrap();
    let service = service(&dir, Retention::default()).await;
    let a = key("a");
    let first = service.publish(&a, text("one"), &audit()).await.unwrap();
    let second = service.publish(&a, text("two"), &audit()).await.unwrap();
    assert!(first.created && !second.created);
    assert!(second.version > first.version);
    let current = service.get(&a).expect("read-your-writes");
    assert_eq!((&*current.content, current.version), ("two", second.version));
    let history = service.history(&a, 1, 10).await.unwrap();
    let versions: Vec<_> = history.records.iter().map(|r| r.version).collect();
    assert_eq!(versions, [second.version, first.version]);

    // A delete and a re-create: new versions, history kept, content from the new publish.
    service.delete(&a, None, &audit()).await.unwrap().expect("deleted");
    assert!(service.get(&a).is_none());
    let third = service.publish(&a, text("three"), &audit()).await.unwrap();
    assert!(third.created && third.version > second.version);
    assert_eq!(&*service.get(&a).unwrap().content, "three");
    let history = service.history(&a, 1, 10).await.unwrap();
    let ops: Vec<_> = history.records.iter().map(|r| r.entry.op).collect();
    assert_eq!(ops, [HistoryOp::Create, HistoryOp::Delete, HistoryOp::Update, HistoryOp::Create]);
}

#[tokio::test]
async fn a_failed_publish_changes_nothing_and_if_match_guards() {
    let dir = tempfile::tempdir().unwrap();
    let service = service(&dir, Retention::default()).await;
    let a = key("a.json");
    let json = |content: &str| PublishRequest { format: ConfigFormat::Json, ..text(content) };
    let v1 = service.publish(&a, json("{\"a\":1}"), &audit()).await.unwrap().version;
    assert!(matches!(
        service.publish(&a, json("{\"a\":"), &audit()).await,
        Err(ConfigError::InvalidContent(_))
    ));
    let stale = PublishRequest { if_match: Some(v1 - 1), ..json("{\"a\":2}") };
    assert!(matches!(service.publish(&a, stale, &audit()).await, Err(ConfigError::VersionMismatch { .. })));
    assert_eq!(service.get(&a).unwrap().version, v1);
    assert_eq!(service.history(&a, 1, 10).await.unwrap().total, 1);
}

#[tokio::test]
async fn listeners_answer_on_stale_md5s_and_on_changes() {
    let dir = tempfile::tempdir().unwrap();
    let service = Arc::new(service(&dir, Retention::default()).await);
    let a = key("a");
    service.publish(&a, text("one"), &audit()).await.unwrap();
    let held = ListenKey { key: a.clone(), md5: content_md5("one") };
    let stale = ListenKey { key: a.clone(), md5: "x".into() };
    let never = std::future::pending::<()>;
    let view = service.view().clone();
    assert_eq!(
        view.listen(&[stale], &GrayClient::default(), Duration::from_secs(5), never()).await,
        ListenOutcome::Changed(vec![a.clone()])
    );
    assert_eq!(
        view.listen(std::slice::from_ref(&held), &GrayClient::default(), Duration::from_millis(50), never())
            .await,
        ListenOutcome::TimedOut
    );
    let waiting = {
        let view = view.clone();
        let held = held.clone();
        tokio::spawn(async move {
            view.listen(&[held], &GrayClient::default(), Duration::from_secs(10), never()).await
        })
    };
    until(|| view.listening() == 1).await;
    service.publish(&key("other"), text("unrelated"), &audit()).await.unwrap();
    service.publish(&a, text("two"), &audit()).await.unwrap();
    assert_eq!(waiting.await.unwrap(), ListenOutcome::Changed(vec![a]));
}

fn state_with(data_id: &str, content: &str) -> ConfigState {
    let entry = EntryId(1 << 40);
    let item = ConfigItem {
        entry: entry.to_string(),
        format: ConfigFormat::Text,
        md5: content_md5(content),
        size: content.len(),
        description: String::new(),
        tags: Vec::new(),
        app_name: String::new(),
        author: String::new(),
        created_ms: 0,
        modified_ms: 0,
        schema: None,
        secret: false,
    };
    let history = HistoryEntry {
        op: HistoryOp::Create,
        content: content.into(),
        format: ConfigFormat::Text,
        md5: item.md5.clone(),
        description: String::new(),
        tags: Vec::new(),
        app_name: String::new(),
        author: String::new(),
        source_ip: String::new(),
        at_ms: 0,
        rolled_back_from: None,
        secret: false,
    };
    let k = key(data_id);
    let put = |key: String, value: Vec<u8>| Event {
        kind: EventKind::Put,
        kv: KeyValue {
            key: key.into_bytes(),
            value,
            create_revision: 5,
            mod_revision: 5,
            version: 1,
            lease: None,
        },
    };
    let mut state = ConfigState::default();
    state.apply(&put(k.history_key(&entry), encode(&history).unwrap()));
    state.apply(&put(k.item_key(), encode(&item).unwrap()));
    state
}

/// A listener of `held` over a hand-fed listener table and state; `tell` plays the view
/// telling the table of a change.
/// Yields to the spawned listener until `held` says it is waiting (at most 5 s).
async fn until(held: impl Fn() -> bool) {
    let waiting = async {
        while !held() {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("the listener is held");
}

fn listener_over(
    state: Arc<Mutex<Arc<ConfigState>>>,
    held: Vec<ListenKey>,
) -> (Arc<Listeners>, tokio::task::JoinHandle<ListenOutcome>) {
    let listeners = Arc::new(Listeners::default());
    let waiting = {
        let listeners = listeners.clone();
        tokio::spawn(async move {
            let current = move || state.lock().clone();
            listen_on(
                &listeners,
                current,
                &held,
                &GrayClient::default(),
                Duration::from_secs(10),
                std::future::pending(),
            )
            .await
        })
    };
    (listeners, waiting)
}

fn tell(listeners: &Listeners, change: ViewChange) {
    listeners.wake(&changed_items(&change));
}

#[tokio::test]
async fn after_a_view_reset_listeners_recheck_every_md5() {
    let state = Arc::new(Mutex::new(Arc::new(state_with("a", "one"))));
    let held = vec![ListenKey { key: key("a"), md5: content_md5("one") }];
    let (listeners, waiting) = listener_over(state.clone(), held);
    until(|| listeners.len() == 1).await;
    // A reload replaced the state (the change itself was never seen as an event): only the
    // reset tells the listener, and it must re-check.
    *state.lock() = Arc::new(state_with("a", "two"));
    tell(&listeners, ViewChange::Reset { revision: 9 });
    let outcome = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("answered").unwrap();
    assert_eq!(outcome, ListenOutcome::Changed(vec![key("a")]));
}

#[tokio::test]
async fn a_change_wakes_only_the_listeners_of_its_item_and_they_unregister() {
    let state = Arc::new(Mutex::new(Arc::new(state_with("a", "one"))));
    let held = vec![ListenKey { key: key("a"), md5: content_md5("one") }];
    let (listeners, mut waiting) = listener_over(state.clone(), held);
    until(|| listeners.len() == 1).await;
    assert_eq!(listeners.len(), 1);
    let announce = |changed: ConfigKey| {
        let kv = KeyValue {
            key: changed.item_key().into_bytes(),
            value: Vec::new(),
            create_revision: 6,
            mod_revision: 6,
            version: 1,
            lease: None,
        };
        ViewChange::Applied { revision: 6, events: Arc::new(vec![Event { kind: EventKind::Put, kv }]) }
    };
    // Another item changed: the listener stays held.
    tell(&listeners, announce(key("b")));
    assert!(tokio::time::timeout(Duration::from_millis(100), &mut waiting).await.is_err());
    // Its own item changed (the view applies before it announces).
    *state.lock() = Arc::new(state_with("a", "two"));
    tell(&listeners, announce(key("a")));
    let outcome = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("answered").unwrap();
    assert_eq!(outcome, ListenOutcome::Changed(vec![key("a")]));
    assert_eq!(listeners.len(), 0, "an answered listener leaves the table");
}

#[tokio::test]
async fn retention_keeps_the_last_n_and_rollback_restores() {
    let dir = tempfile::tempdir().unwrap();
    let service = service(&dir, Retention { keep_last: 2, max_age: None }).await;
    let a = key("a");
    let mut versions = Vec::new();
    for n in 0..4 {
        versions.push(service.publish(&a, text(&format!("v{n}")), &audit()).await.unwrap().version);
    }
    let page = service.history(&a, 1, 10).await.unwrap();
    assert_eq!(page.total, 2);
    // Retention's deletes commit in the publish's own transaction: one revision each.
    assert!(versions.windows(2).all(|w| w[1] == w[0] + 1), "a publish commits once: {versions:?}");
    assert!(matches!(
        service.rollback(&a, versions[0], None, &audit()).await,
        Err(ConfigError::VersionNotFound { .. })
    ));
    let back = service.rollback(&a, versions[2], None, &audit()).await.unwrap();
    assert_eq!(&*service.get(&a).unwrap().content, "v2");
    let diff = service.diff(&a, versions[3], Some(back.version), &GrayClient::default()).await.unwrap();
    assert!(diff.contains("-v3") && diff.contains("+v2"), "{diff}");
}

#[tokio::test]
async fn two_nodes_on_one_store_never_lose_a_publish_whatever_their_views_show() {
    let dir = tempfile::tempdir().unwrap();
    let first = service(&dir, Retention::default()).await;
    let second = service_on(first.store_for_tests(), Retention::default()).await;
    let a = key("a");
    let mut last = 0;
    for n in 0..20 {
        // Alternate nodes, each right after the other's write: the second view may not
        // have it yet, and the publish must still land on top of it.
        let writer = if n % 2 == 0 { &first } else { &second };
        let if_match = (n % 4 == 1).then_some(last);
        let request = PublishRequest { if_match, ..text(&format!("v{n}")) };
        let outcome = writer.publish(&a, request, &audit()).await.unwrap();
        assert!(outcome.version > last);
        last = outcome.version;
    }
    second.view().wait_for(last, Duration::from_secs(5)).await.unwrap();
    first.view().wait_for(last, Duration::from_secs(5)).await.unwrap();
    assert_eq!(&*first.get(&a).unwrap().content, "v19");
    assert_eq!(&*second.get(&a).unwrap().content, "v19");
    let history = first.history(&a, 1, 100).await.unwrap();
    assert_eq!(history.total, 20, "every publish is in the history");
    let ids: Vec<_> = history.records.iter().map(|r| r.entry_id).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "entries sort in commit order");
}

#[tokio::test]
async fn gray_serves_matching_clients_survives_a_reload_and_promotes_or_aborts() {
    let dir = tempfile::tempdir().unwrap();
    let service = service(&dir, Retention { keep_last: 2, max_age: None }).await;
    let a = key("a");
    let main = service.publish(&a, text("main"), &audit()).await.unwrap();
    let selector =
        GraySelector { ips: parse_ips(["10.0.0.1"]).unwrap(), labels: parse_labels("env=canary").unwrap() };
    let gray = |content: &str| GrayRequest {
        content: content.into(),
        selector: selector.clone(),
        author: "t".into(),
        source_ip: String::new(),
    };
    // Several grays: retention (keep 2) must keep the main entry and the newest gray.
    for n in 0..3 {
        service.publish_gray(&a, gray(&format!("gray{n}")), &audit()).await.unwrap();
        service.prune(&a).await.unwrap();
    }
    let canary = GrayClient { ip: None, labels: parse_labels("env=canary").unwrap(), reveal: None };
    let by_ip = GrayClient::by_ip(Some("10.0.0.1".parse().unwrap()));
    let other = GrayClient::by_ip(Some("10.0.0.2".parse().unwrap()));
    for s in [&service, &service_on(service.store_for_tests(), Retention::default()).await] {
        let state = s.view().snapshot();
        assert_eq!(&*state.get_for(&a, &canary).unwrap().content, "gray2");
        assert_eq!(&*state.get_for(&a, &by_ip).unwrap().content, "gray2");
        assert_eq!(&*state.get_for(&a, &other).unwrap().content, "main");
        assert_eq!(state.get(&a).unwrap().version, main.version);
    }
    let held = vec![ListenKey { key: a.clone(), md5: content_md5("main") }];
    assert!(service.view().changed_now(&held, &other).is_empty());
    assert_eq!(service.view().changed_now(&held, &canary), vec![a.clone()]);
    // Abort: everyone reads main; the gray entries stay in history.
    service.abort_gray(&a, &audit()).await.unwrap();
    assert_eq!(&*service.view().snapshot().get_for(&a, &canary).unwrap().content, "main");
    assert!(matches!(service.abort_gray(&a, &audit()).await, Err(ConfigError::NoGray(_))));
    assert!(matches!(service.promote_gray(&a, &audit()).await, Err(ConfigError::NoGray(_))));
    let history = service.history(&a, 1, 10).await.unwrap();
    assert!(history.records.iter().any(|r| r.entry.op == HistoryOp::Gray));
    // Promote: the gray content becomes the main version, for everyone.
    service.publish_gray(&a, gray("next"), &audit()).await.unwrap();
    let promoted = service.promote_gray(&a, &audit()).await.unwrap();
    let state = service.view().snapshot();
    assert!(state.gray(&a).is_none());
    assert_eq!(&*state.get_for(&a, &other).unwrap().content, "next");
    assert_eq!(state.get(&a).unwrap().version, promoted.version);
    assert_eq!(service.history_entry(&a, promoted.version).await.unwrap().entry.op, HistoryOp::Promote);
    // Bad selectors.
    let empty = GrayRequest { selector: GraySelector::default(), ..gray("x") };
    assert!(matches!(service.publish_gray(&a, empty, &audit()).await, Err(ConfigError::InvalidSelector(_))));
    assert!(matches!(
        service.publish_gray(&key("none"), gray("x"), &audit()).await,
        Err(ConfigError::NotFound(_))
    ));
}

#[tokio::test]
async fn export_import_round_trips_in_batches_and_refuses_bad_files_before_writing() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (service(&dir_a, Retention::default()).await, service(&dir_b, Retention::default()).await);
    for n in 0..50 {
        let request = PublishRequest {
            content: format!("n: {n}\nlist:\n  - \"x\"\n"),
            format: ConfigFormat::Yaml,
            description: Some(format!("item {n}")),
            tags: Some(vec!["t".into()]),
            ..text("")
        };
        a.publish(&ConfigKey::new("dev", "G", format!("c{n}.yaml")).unwrap(), request, &audit())
            .await
            .unwrap();
    }
    a.publish(&ConfigKey::new("dev", "H", "plain").unwrap(), text("line one\n  two: 'q'\n"), &audit())
        .await
        .unwrap();
    let exported = a.export("dev", None, None).unwrap().to_yaml().unwrap();
    let doc = ExportDoc::parse(&exported).unwrap();
    assert_eq!(doc.items.len(), 51);
    let report = b.import("dev", doc.clone(), ConflictPolicy::Abort, &audit()).await.unwrap();
    assert_eq!((report.created.len(), report.batches), (51, 2), "{report:?}");
    let mut again = b.export("dev", None, None).unwrap();
    again.exported_at_ms = doc.exported_at_ms;
    assert_eq!(again, doc);
    // Importing the same file again changes nothing; other content conflicts.
    let report = b.import("dev", doc.clone(), ConflictPolicy::Abort, &audit()).await.unwrap();
    assert_eq!(report.unchanged.len(), 51);
    let mut changed = doc.clone();
    changed.items[3].content = "n: changed\n".into();
    changed.items[3].md5 = String::new();
    let before = b.view().revision();
    assert!(matches!(
        b.import("dev", changed.clone(), ConflictPolicy::Abort, &audit()).await,
        Err(ConfigError::ImportConflict(_))
    ));
    assert_eq!(b.view().revision(), before, "an aborted import writes nothing");
    let report = b.import("dev", changed.clone(), ConflictPolicy::Skip, &audit()).await.unwrap();
    assert_eq!(report.skipped.len(), 1);
    let report = b.import("dev", changed, ConflictPolicy::Overwrite, &audit()).await.unwrap();
    assert_eq!(report.overwritten, vec!["dev/G/c11.yaml".to_owned()]);
    // A bad entry anywhere: nothing is written, the error names it.
    let mut bad = doc.clone();
    bad.items[40].content = "n: [".into();
    bad.items[40].md5 = String::new();
    let fresh = tempfile::tempdir().unwrap();
    let c = service(&fresh, Retention::default()).await;
    let error = c.import("dev", bad, ConflictPolicy::Abort, &audit()).await.unwrap_err().to_string();
    assert!(error.contains("items[40]"), "{error}");
    assert!(c.view().snapshot().is_empty());
    assert!(ExportDoc::parse("kind: other\nitems: []\n").is_err());
    let error = ExportDoc::parse(&exported.replace("format: yaml", "format: 7")).unwrap_err().to_string();
    assert!(error.contains("items[0]"), "{error}");
}

fn keyring(keys: &[(&str, u8)], active: &str) -> Arc<Keyring> {
    Arc::new(Keyring::new(keys.iter().map(|(id, b)| (id.to_string(), [*b; 32])).collect(), active).unwrap())
}

async fn service_with_keys(store: SharedStore, keys: Option<Arc<Keyring>>) -> ConfigService {
    let view = Arc::new(ConfigView::start(store.clone()).await.unwrap());
    ConfigService::new(store, view, ConfigSettings { keyring: keys, ..ConfigSettings::default() })
}

fn secret(content: &str) -> PublishRequest {
    PublishRequest { secret: Some(true), ..text(content) }
}

#[tokio::test]
async fn secrets_are_sealed_at_rest_and_read_masked_without_reveal() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(EmbeddedOptions::new(dir.path().join("store.redb"))).await.unwrap();
    let store = store as Arc<dyn Store> as SharedStore;
    let keys = keyring(&[("a", 1)], "a");
    let configs = service_with_keys(store.clone(), Some(keys.clone())).await;
    let k = key("db");
    configs.publish(&k, secret("password=hunter2"), &audit()).await.unwrap();
    configs.publish(&k, text("password=hunter3"), &audit()).await.unwrap(); // stays secret
                                                                            // Nothing in the store holds the plaintext or its md5.
    let all = store.range(sb_store::RangeRequest::prefix("")).await.unwrap();
    for kv in &all.kvs {
        let value = String::from_utf8_lossy(&kv.value);
        for plain in ["hunter2", "hunter3"] {
            assert!(!value.contains(plain), "{value}");
        }
        assert!(!value.contains(&content_md5("password=hunter3")), "{value}");
    }
    let snapshot = configs.get(&k).unwrap();
    assert!(snapshot.item.secret);
    let reader = GrayClient::default().with_reveal(Some(Reveal(keys.clone())));
    let (content, md5) = snapshot.readable(&reader).unwrap();
    assert_eq!((content.as_str(), md5), ("password=hunter3", content_md5("password=hunter3")));
    let (masked, masked_md5) = snapshot.readable(&GrayClient::default()).unwrap();
    assert!(masked.starts_with("******") && !masked.contains("hunter"), "{masked}");
    assert_eq!(masked_md5, content_md5(&masked));
    // Listeners: each compared against what it reads.
    let view = configs.view().snapshot();
    assert_eq!(view.md5_for(&k, &reader), content_md5("password=hunter3"));
    assert_eq!(view.md5_for(&k, &GrayClient::default()), masked_md5);
    // A rollback restores the plaintext, sealed again.
    let first = configs.history(&k, 0, 10).await.unwrap().records.last().unwrap().version;
    configs.rollback(&k, first, None, &audit()).await.unwrap();
    let (content, _) = configs.get(&k).unwrap().readable(&reader).unwrap();
    assert_eq!(content, "password=hunter2");

    // A node without keys: a 503-kind error naming the flag, and nothing written.
    let keyless = service_with_keys(store.clone(), None).await;
    let error = keyless.publish(&key("other"), secret("x"), &audit()).await.unwrap_err();
    assert!(
        matches!(error, ConfigError::SecretsUnavailable(_)) && error.to_string().contains(MASTER_KEY_FLAG)
    );
    assert!(keyless.get(&key("other")).is_none());
    // Another key under the same id is refused at start.
    configs.check_keys().await.unwrap();
    configs.check_keys().await.unwrap();
    let other = service_with_keys(store.clone(), Some(keyring(&[("a", 2)], "a"))).await;
    let error = other.check_keys().await.unwrap_err().to_string();
    assert!(error.contains("\"a\"") && error.contains("same key file"), "{error}");
}

#[tokio::test]
async fn rotation_reencrypts_every_entry_and_old_keys_can_then_retire() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(EmbeddedOptions::new(dir.path().join("store.redb"))).await.unwrap();
    let store = store as Arc<dyn Store> as SharedStore;
    let old = service_with_keys(store.clone(), Some(keyring(&[("a", 1)], "a"))).await;
    let k = key("db");
    old.publish(&k, secret("v1"), &audit()).await.unwrap();
    old.publish(&k, secret("v2"), &audit()).await.unwrap();
    old.publish_gray(
        &k,
        GrayRequest {
            content: "v3".into(),
            selector: GraySelector { ips: parse_ips(["10.0.0.1"]).unwrap(), ..GraySelector::default() },
            author: "t".into(),
            source_ip: String::new(),
        },
        &audit(),
    )
    .await
    .unwrap();
    let md5_before = old.get(&k).unwrap().item.md5.clone();
    let both = keyring(&[("a", 1), ("b", 2)], "b");
    let rotated = service_with_keys(store.clone(), Some(both.clone())).await;
    let usage = rotated.reencrypt().await.unwrap();
    assert_eq!(
        (usage.reencrypted, usage.entries_by_key.get("b").copied(), usage.entries_by_key.get("a")),
        (3, Some(3), None)
    );
    assert_eq!(rotated.reencrypt().await.unwrap().reencrypted, 0);
    // Only the new key is needed now; versions keep their md5.
    let retired = keyring(&[("b", 2)], "b");
    let after = service_with_keys(store.clone(), Some(retired.clone())).await;
    let reader = GrayClient::default().with_reveal(Some(Reveal(retired)));
    let snapshot = after.get(&k).unwrap();
    assert_eq!(snapshot.item.md5, md5_before);
    assert_eq!(snapshot.readable(&reader).unwrap().0, "v2");
    let gray_reader = GrayClient::by_ip(Some("10.0.0.1".parse().unwrap())).with_reveal(reader.reveal.clone());
    assert_eq!(
        after.view().snapshot().get_for(&k, &gray_reader).unwrap().readable(&gray_reader).unwrap().0,
        "v3"
    );
    after.promote_gray(&k, &audit()).await.unwrap();
    assert_eq!(after.get(&k).unwrap().readable(&reader).unwrap().0, "v3");
    let history = after.history(&k, 0, 10).await.unwrap();
    assert!(history.records.iter().all(|r| !r.entry.secret || r.entry.content.starts_with("sbenc1:b:")));
}

#[tokio::test]
async fn secrets_export_sealed_or_in_plaintext_and_import_sealed_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(EmbeddedOptions::new(dir.path().join("a.redb"))).await.unwrap();
    let keys = keyring(&[("a", 1)], "a");
    let a = service_with_keys(store as Arc<dyn Store> as SharedStore, Some(keys.clone())).await;
    a.publish(&key("db"), secret("password=hunter2"), &audit()).await.unwrap();
    a.publish(&key("plain"), text("hello"), &audit()).await.unwrap();
    let sealed = a.export("public", None, None).unwrap();
    let yaml = sealed.to_yaml().unwrap();
    assert!(!yaml.contains("hunter2") && yaml.contains("sealed_at"), "{yaml}");
    assert!(sealed.to_nacos_zip().is_err(), "a zip cannot carry sealed secrets");
    let plain = a.export("public", None, Some(&Reveal(keys.clone()))).unwrap();
    assert!(plain.to_yaml().unwrap().contains("hunter2"));

    let other = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(EmbeddedOptions::new(other.path().join("b.redb"))).await.unwrap();
    let store = store as Arc<dyn Store> as SharedStore;
    let b = service_with_keys(store.clone(), Some(keys.clone())).await;
    let report =
        b.import("public", ExportDoc::parse(&yaml).unwrap(), ConflictPolicy::Abort, &audit()).await.unwrap();
    assert_eq!(report.created.len(), 2);
    let reader = GrayClient::default().with_reveal(Some(Reveal(keys.clone())));
    assert_eq!(b.get(&key("db")).unwrap().readable(&reader).unwrap().0, "password=hunter2");
    // Importing the same again: unchanged, secrets included.
    let again =
        b.import("public", ExportDoc::parse(&yaml).unwrap(), ConflictPolicy::Abort, &audit()).await.unwrap();
    assert_eq!(again.unchanged.len(), 2, "{again:?}");
    // A server without the key refuses before writing.
    let keyless_dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(EmbeddedOptions::new(keyless_dir.path().join("c.redb"))).await.unwrap();
    let c = service_with_keys(store as Arc<dyn Store> as SharedStore, None).await;
    let error = c
        .import("public", ExportDoc::parse(&yaml).unwrap(), ConflictPolicy::Abort, &audit())
        .await
        .unwrap_err();
    assert!(matches!(error, ConfigError::SecretsUnavailable(_)), "{error}");
    assert!(c.get(&key("plain")).is_none());
}
