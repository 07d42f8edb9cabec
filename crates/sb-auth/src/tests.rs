//! The service over the real embedded store: tokens, revocation, logins, bootstrap.

use std::net::IpAddr;
use std::sync::Arc;

use sb_store::{SharedStore, Store};
use sb_store_embedded::{EmbeddedOptions, EmbeddedStore};

use crate::bootstrap::{bootstrap, BootstrapOutcome, BootstrapSecrets};
use crate::*;

async fn store(dir: &tempfile::TempDir) -> SharedStore {
    let store = EmbeddedStore::open(EmbeddedOptions::new(dir.path().join("store.redb"))).await.unwrap();
    store as Arc<dyn Store> as SharedStore
}

async fn service(store: SharedStore) -> AuthService {
    AuthService::start(store, AuthOptions::default()).await.unwrap()
}

fn user(name: &str) -> PrincipalRef {
    PrincipalRef { kind: PrincipalKind::User, name: name.into() }
}

fn audit() -> sb_audit::Audit {
    sb_audit::Audit::system("test")
}

const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 2, 3));
const PASSWORD: &str = "tr0ub4dor&3-horse";

#[tokio::test]
async fn tokens_resolve_until_revoked_and_revocation_is_immediate_here() {
    let dir = tempfile::tempdir().unwrap();
    let auth = service(store(&dir).await).await;
    auth.create_user("alice", PASSWORD, "", vec![], &audit()).await.unwrap();
    let minted = auth.create_token(&user("alice"), None, "ci", &audit()).await.unwrap();
    let subject = auth.resolve_token(&minted.token).expect("resolves");
    assert_eq!(subject.name, "alice");
    assert_eq!(subject.token_id.as_deref(), Some(minted.id.as_str()));
    assert!(auth.resolve_token(&minted.token.replace('a', "b")).is_none());
    auth.revoke_token(&minted.id, &audit()).await.unwrap();
    assert!(auth.resolve_token(&minted.token).is_none(), "revoked on this node on return");
    assert!(matches!(auth.revoke_token(&minted.id, &audit()).await, Err(AuthError::NotFound(_))));
}

#[tokio::test]
async fn a_recreated_user_does_not_inherit_old_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let auth = service(store(&dir).await).await;
    auth.create_user("bob", PASSWORD, "", vec![], &audit()).await.unwrap();
    let minted = auth.create_token(&user("bob"), None, "", &audit()).await.unwrap();
    auth.delete_principal(&user("bob"), &audit()).await.unwrap();
    assert!(auth.resolve_token(&minted.token).is_none());
    auth.create_user("bob", PASSWORD, "", vec![], &audit()).await.unwrap();
    assert!(auth.resolve_token(&minted.token).is_none());
}

#[tokio::test]
async fn expired_tokens_do_not_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let auth = service(store(&dir).await).await;
    auth.create_user("carol", PASSWORD, "", vec![], &audit()).await.unwrap();
    let minted = auth.create_token(&user("carol"), Some(1), "", &audit()).await.unwrap();
    assert!(auth.resolve_token(&minted.token).is_some());
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert!(auth.resolve_token(&minted.token).is_none());
    let forever = auth.create_token(&user("carol"), None, "", &audit()).await.unwrap();
    assert_eq!(auth.sweep_expired_tokens().await.unwrap(), 1, "the expired record is deleted");
    let left: Vec<String> = auth.snapshot().tokens.keys().cloned().collect();
    assert_eq!(left, [forever.id]);
}

#[tokio::test]
async fn logins_check_passwords_and_back_off() {
    let dir = tempfile::tempdir().unwrap();
    let auth = service(store(&dir).await).await;
    auth.create_user(
        "dave",
        PASSWORD,
        "",
        vec![Binding { role: "viewer".into(), namespace: "dev".into() }],
        &audit(),
    )
    .await
    .unwrap();
    let session = auth.login("dave", PASSWORD, IP, Some(60)).await.unwrap();
    assert!(!session.global_admin);
    let subject = auth.resolve_token(&session.token).unwrap();
    assert!(auth.authorize(&subject, Action::Read, Resource { kind: Kind::Config, namespace: Some("dev") }));
    assert!(!auth.authorize(
        &subject,
        Action::Write,
        Resource { kind: Kind::Config, namespace: Some("dev") }
    ));
    for _ in 0..3 {
        assert!(matches!(
            auth.login("dave", "wrong-password-x", IP, None).await,
            Err(AuthError::BadCredentials)
        ));
    }
    assert!(matches!(auth.login("dave", "wrong-password-x", IP, None).await, Err(AuthError::BadCredentials)));
    assert!(matches!(auth.login("dave", PASSWORD, IP, None).await, Err(AuthError::Backoff { .. })));
    let other: IpAddr = "10.9.9.9".parse().unwrap();
    assert!(auth.login("dave", PASSWORD, other, None).await.is_ok(), "another address is not slowed");
    assert!(matches!(auth.login("nobody", PASSWORD, other, None).await, Err(AuthError::BadCredentials)));
}

#[tokio::test]
async fn bootstrap_is_create_if_absent() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let a = service(store.clone()).await;
    let b = service(store.clone()).await;
    let (first, second) = tokio::join!(
        bootstrap(&a, "n1", BootstrapSecrets::default()),
        bootstrap(&b, "n2", BootstrapSecrets::default())
    );
    let created: Vec<_> = [first.unwrap(), second.unwrap()]
        .into_iter()
        .filter_map(|o| match o {
            BootstrapOutcome::Created { password_opt, token_opt } => {
                Some((password_opt.unwrap(), token_opt.unwrap()))
            }
            BootstrapOutcome::AlreadyDone => None,
        })
        .collect();
    assert_eq!(created.len(), 1, "exactly one node bootstraps");
    let (password, token) = &created[0];
    let admin = a.resolve_token(token).unwrap();
    assert!(a.is_global_admin(&admin));
    assert!(a.login("admin", password, IP, None).await.is_ok());
    let weak = BootstrapSecrets { password_opt: Some("admin".into()), token_opt: None };
    assert!(matches!(bootstrap(&a, "n1", weak).await, Err(AuthError::Invalid { .. })));
    let env = BootstrapSecrets {
        password_opt: Some("another-Strong-pass-77".into()),
        token_opt: Some("sbt_0123456789abcdef0123456789abcdef-env".into()),
    };
    assert!(matches!(bootstrap(&a, "n1", env.clone()).await.unwrap(), BootstrapOutcome::AlreadyDone));
    assert!(a.resolve_token(env.token_opt.as_deref().unwrap()).is_some());
    assert!(a.login("admin", env.password_opt.as_deref().unwrap(), IP, None).await.is_ok());
}

#[tokio::test]
async fn mutations_are_audited_in_their_own_transaction_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let auth = service(store.clone()).await;
    let who = sb_audit::Audit::new("root", "10.0.0.1", "curl", "req-1");
    auth.create_user("erin", PASSWORD, "", vec![], &who).await.unwrap();
    let minted = auth.create_token(&user("erin"), None, "", &who).await.unwrap();
    auth.grant(&user("erin"), Binding { role: "viewer".into(), namespace: "dev".into() }, &who)
        .await
        .unwrap();
    auth.revoke_token(&minted.id, &who).await.unwrap();
    // A failed change writes no record.
    assert!(auth.create_user("erin", PASSWORD, "", vec![], &who).await.is_err());
    let records = store.range(sb_store::RangeRequest::prefix(sb_audit::AUDIT_PREFIX)).await.unwrap();
    let actions: Vec<String> = records
        .kvs
        .iter()
        .map(|kv| sb_store::codec::decode::<sb_audit::AuditRecord>(&kv.value).unwrap())
        .inspect(|r| assert_eq!((r.actor.as_str(), r.source_ip.as_str()), ("root", "10.0.0.1")))
        .map(|r| r.action)
        .collect();
    assert_eq!(actions, ["user.create", "token.create", "binding.grant", "token.revoke"]);
    for kv in &records.kvs {
        let text = String::from_utf8_lossy(&kv.value);
        assert!(!text.contains(PASSWORD) && !text.contains(&minted.token), "{text}");
    }
}

#[tokio::test]
async fn a_store_bootstrapped_before_users_existed_gets_its_admin_user_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let marker = model::BootstrapRecord { node: "old".into(), created_at_ms: 0 };
    store
        .put(model::BOOTSTRAP_KEY.as_bytes(), &sb_store::codec::encode(&marker).unwrap(), None)
        .await
        .unwrap();
    let auth = service(store).await;
    let outcome = bootstrap(&auth, "n1", BootstrapSecrets::default()).await.unwrap();
    let BootstrapOutcome::Created { password_opt: Some(password), token_opt: Some(token) } = outcome else {
        panic!("the admin user is created on a store that has none");
    };
    assert!(auth.resolve_token(&token).is_some());
    assert!(auth.login("admin", &password, IP, None).await.is_ok());
    assert!(matches!(
        bootstrap(&auth, "n1", BootstrapSecrets::default()).await.unwrap(),
        BootstrapOutcome::AlreadyDone
    ));
}
