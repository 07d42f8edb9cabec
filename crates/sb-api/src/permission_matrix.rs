//! The permission matrix, generated from the route table: every authenticated route ×
//! every built-in role, through the one policy check, against the expectation below. A
//! route whose resource names no policy fails; a new route without an expectation does
//! not compile (the match is exhaustive).

use std::sync::Arc;

use sb_auth::model::{Binding, UserRecord};
use sb_auth::{authorize, AuthState, PrincipalKind, Resource, Subject, BUILTIN_ROLES};
use sb_store::view::Entry;

use crate::routes::{Policy, RouteId, ROUTES};

const ALL: &[&str] = &["admin", "viewer", "editor", "publisher", "registrar"];
const ADMIN: &[&str] = &["admin"];
const READERS: &[&str] = &["admin", "viewer", "editor", "publisher"];
const REGISTRY_READERS: &[&str] = &["admin", "viewer", "editor", "publisher", "registrar"];
const EDITORS: &[&str] = &["admin", "editor"];
const PUBLISHERS: &[&str] = &["admin", "publisher"];
const REGISTRARS: &[&str] = &["admin", "editor", "registrar"];

/// Which built-in roles may call each route.
fn expected(id: RouteId) -> &'static [&'static str] {
    use RouteId::*;
    match id {
        Healthz | Readyz | Metrics | AuthLogin | NacosLogin | NacosUsersLogin => ALL,
        OpenApi | AuthWhoami | NacosSwitches | NacosMetrics => ALL,
        KvList | KvGet | KvPut | KvDelete | LeaseGrant | LeaseKeepAlive | LeaseRevoke | Watch
        | LockGuardedPut => ADMIN,
        LogLevel | Backup | AuditList => ADMIN,
        SnowflakeDecode | SegmentTagList => READERS,
        SnowflakeNext | SegmentNext | SegmentTagCreate => EDITORS,
        LockStatus | ElectionLeader | ElectionObserve => READERS,
        LockAcquire | LockRelease | LockRenew | ElectionCampaign | ElectionProclaim | ElectionResign
        | ElectionRenew => EDITORS,
        PrometheusSd | ServicesList | ServiceGet | ServiceWatch | InstancesList | InstanceCheckGet
        | NacosInstanceGet | NacosInstanceList | NacosServiceGet | NacosServiceList => REGISTRY_READERS,
        ServicePut | ServiceDelete | NacosClusterUpdate | NacosServiceCreate | NacosServiceUpdate
        | NacosServiceDelete => EDITORS,
        InstanceRegister
        | InstanceUpdate
        | InstanceDeregister
        | InstanceBeat
        | InstanceDrain
        | InstanceCheckPut
        | InstanceCheckDelete
        | InstanceHealthPut
        | NacosHealthUpdate
        | NacosHealthUpdateShort
        | NacosInstanceRegister
        | NacosInstanceUpdate
        | NacosInstanceDeregister
        | NacosInstanceBeat => REGISTRARS,
        ConfigList
        | ConfigGet
        | ConfigHistory
        | ConfigHistoryEntry
        | ConfigDiff
        | ConfigWatch
        | ConfigGrayGet
        | ConfigExport
        | NacosConfigGet
        | NacosConfigListener
        | NacosConfigHistory
        | NacosConfigHistoryPrevious => READERS,
        // The master keys' ids and use counts: config-secret readers (never the keys).
        ConfigKeys => EDITORS,
        // A canary to selected clients is an edit; a change every client sees is a publish.
        ConfigGrayPublish | ConfigGrayAbort => EDITORS,
        ConfigPublish | ConfigDelete | ConfigRollback | ConfigGrayPromote | ConfigImport
        | NacosConfigPublish | NacosConfigDelete => PUBLISHERS,
        RateLimitRuleList | RateLimitRuleGet => READERS,
        RateLimitRulePut
        | RateLimitRuleDelete
        | RateLimitCheck
        | RateLimitPermitAcquire
        | RateLimitPermitRelease => EDITORS,
        UserList | UserCreate | UserGet | UserDelete | UserPassword | AccountList | AccountCreate
        | AccountDelete | BindingGrant | BindingRevoke | RoleList | RolePut | RoleDelete | TokenList
        | TokenCreate | TokenRevoke | BackoffList | BackoffClear => ADMIN,
        NamespaceList | NamespaceGet | NacosNamespaceList => READERS,
        NamespaceCreate | NamespaceUpdate | NamespaceDelete | NacosNamespaceCreate | NacosNamespaceUpdate
        | NacosNamespaceDelete => ADMIN,
    }
}

fn state_with(role: &str, namespace: &str) -> AuthState {
    let mut state = AuthState::default();
    let record = UserRecord {
        uid: "u".into(),
        password_hash: String::new(),
        bindings: vec![Binding { role: role.into(), namespace: namespace.into() }],
        description: String::new(),
        created_at_ms: 0,
    };
    state.users.insert(
        "u".into(),
        Arc::new(Entry { value: record, create_revision: 1, mod_revision: 1, lease: None }),
    );
    state
}

fn allowed(state: &AuthState, policy: Policy, action: sb_auth::Action, namespace: &str) -> bool {
    let subject = Subject { name: "u".into(), kind: PrincipalKind::User, token_id: None };
    match policy {
        Policy::Session => state.users.contains_key("u"),
        Policy::Check(kind) => {
            let namespace = kind.is_namespaced().then_some(namespace);
            authorize(state, &subject, action, Resource { kind, namespace })
        }
    }
}

#[test]
fn every_route_times_every_builtin_role() {
    let mut cells = 0;
    for route in ROUTES {
        let expected = expected(route.id);
        if !route.authenticated {
            assert_eq!(expected, ALL, "{:?} is public, so every role (and no one) may call it", route.id);
            continue;
        }
        let policy = route.policy().unwrap_or_else(|| {
            panic!("{:?} {} has resource {:?}, which no policy knows", route.id, route.path, route.resource)
        });
        for role in BUILTIN_ROLES {
            // Bound on every namespace: the role's reach on the route.
            let everywhere = allowed(&state_with(role, "*"), policy, route.action, "dev");
            assert_eq!(
                everywhere,
                expected.contains(&role),
                "{role} bound on * calling {:?} {}",
                route.id,
                route.path
            );
            // Bound on one namespace: the same inside it, nothing outside it, and no global kind.
            if let Policy::Check(kind) = policy {
                let scoped = state_with(role, "dev");
                let inside = allowed(&scoped, policy, route.action, "dev");
                let outside = allowed(&scoped, policy, route.action, "prod");
                assert_eq!(
                    inside,
                    expected.contains(&role) && kind.is_namespaced(),
                    "{role}@dev on {:?}",
                    route.id
                );
                assert!(!outside, "{role}@dev may not call {:?} in namespace prod", route.id);
            }
            cells += 1;
        }
    }
    assert!(cells >= 5 * 100, "the matrix covers every route: {cells} cells");
}

#[test]
fn a_principal_with_no_binding_may_call_only_session_routes() {
    let mut state = state_with("viewer", "*");
    if let Some(entry) = state.users.get("u").cloned() {
        let mut record = entry.value.clone();
        record.bindings.clear();
        state.users.insert("u".into(), Arc::new(Entry { value: record, ..(*entry).clone() }));
    }
    for route in ROUTES.iter().filter(|r| r.authenticated) {
        let policy = route.policy().expect("every route has a policy");
        assert_eq!(
            allowed(&state, policy, route.action, "public"),
            policy == Policy::Session,
            "{:?}",
            route.id
        );
    }
}
