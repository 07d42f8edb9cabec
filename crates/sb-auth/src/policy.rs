//! The one policy check: [`authorize`]. Every request resolves to a subject, an action
//! and a resource and comes here; nothing else decides access.

use crate::model::{pattern_matches, Action, Binding, Kind, PrincipalKind, PrincipalRef, Resource};
use crate::state::AuthState;

/// Who a request acts as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    /// The principal's name (what audit and lock ownership record).
    pub name: String,
    pub kind: PrincipalKind,
    /// The token the request presented, by id (none for a password or a client certificate).
    pub token_id: Option<String>,
}

impl Subject {
    pub fn principal(&self) -> PrincipalRef {
        PrincipalRef { kind: self.kind, name: self.name.clone() }
    }
}

/// The built-in roles.
pub const BUILTIN_ROLES: [&str; 5] = ["admin", "viewer", "editor", "publisher", "registrar"];

const VIEWED: [Kind; 7] =
    [Kind::Service, Kind::Instance, Kind::Config, Kind::Lock, Kind::Id, Kind::RateLimit, Kind::Namespace];
const EDITED: [Kind; 7] =
    [Kind::Service, Kind::Instance, Kind::Config, Kind::ConfigSecret, Kind::Lock, Kind::Id, Kind::RateLimit];

/// What a built-in role allows on the namespaces of its binding; `None` for other names.
/// - `admin`: everything;
/// - `viewer`: reads of registry, config (not secrets), coordination and namespaces;
/// - `editor`: the viewer's reads, and writes: service and instance changes, config
///   secrets, gray publishes and aborts, locks, IDs and rate limits;
/// - `publisher`: the viewer's reads, and publishes every client sees (publish, delete,
///   rollback, promote, import); the split between editing and publishing is Apollo's;
/// - `registrar`: reads of services and instances, and instance writes (register, beat).
pub fn builtin_allows(role: &str, kind: Kind, action: Action) -> Option<bool> {
    Some(match role {
        "admin" => true,
        "viewer" => action == Action::Read && VIEWED.contains(&kind),
        "editor" => match action {
            Action::Read => VIEWED.contains(&kind) || kind == Kind::ConfigSecret,
            Action::Write => EDITED.contains(&kind),
            Action::Publish | Action::Admin => false,
        },
        "publisher" => match action {
            Action::Read => VIEWED.contains(&kind),
            Action::Publish => matches!(kind, Kind::Config | Kind::ConfigSecret),
            Action::Write | Action::Admin => false,
        },
        "registrar" => match action {
            Action::Read => matches!(kind, Kind::Service | Kind::Instance),
            Action::Write => kind == Kind::Instance,
            Action::Publish | Action::Admin => false,
        },
        _ => return None,
    })
}

/// The principal's bindings, if it exists.
pub fn bindings_of<'a>(state: &'a AuthState, principal: &PrincipalRef) -> Option<&'a [Binding]> {
    match principal.kind {
        PrincipalKind::User => state.users.get(&principal.name).map(|e| e.value.bindings.as_slice()),
        PrincipalKind::ServiceAccount => {
            state.accounts.get(&principal.name).map(|e| e.value.bindings.as_slice())
        }
    }
}

/// Whether `subject` may do `action` on `resource`: some binding of the subject's
/// principal covers the resource's namespace with a role that allows the kind and action.
/// A principal that no longer exists is allowed nothing.
pub fn authorize(state: &AuthState, subject: &Subject, action: Action, resource: Resource<'_>) -> bool {
    let bindings = match subject.kind {
        PrincipalKind::User => state.users.get(&subject.name).map(|e| e.value.bindings.as_slice()),
        PrincipalKind::ServiceAccount => {
            state.accounts.get(&subject.name).map(|e| e.value.bindings.as_slice())
        }
    };
    let Some(bindings) = bindings else {
        return false;
    };
    bindings.iter().any(|binding| {
        pattern_matches(&binding.namespace, resource.namespace)
            && role_allows(state, &binding.role, action, resource)
    })
}

fn role_allows(state: &AuthState, role: &str, action: Action, resource: Resource<'_>) -> bool {
    if let Some(allowed) = builtin_allows(role, resource.kind, action) {
        return allowed;
    }
    let Some(custom) = state.roles.get(role) else {
        return false;
    };
    custom.value.permissions.iter().any(|p| {
        let kind_ok = p.kind == "*" || Kind::parse(&p.kind) == Some(resource.kind);
        let action_ok =
            p.action == "*" || p.action == Action::Admin.as_str() || Action::parse(&p.action) == Some(action);
        kind_ok && action_ok && pattern_matches(&p.namespace, resource.namespace)
    })
}

/// Whether the subject holds `admin` on `*` (Nacos's `globalAdmin`).
pub fn is_global_admin(state: &AuthState, subject: &Subject) -> bool {
    bindings_of(state, &subject.principal())
        .is_some_and(|b| b.iter().any(|b| b.role == "admin" && b.namespace == "*"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sb_store::view::Entry;

    use super::*;
    use crate::model::{Permission, RoleRecord, UserRecord};

    fn state_with(name: &str, bindings: &[(&str, &str)]) -> AuthState {
        let mut state = AuthState::default();
        let record = UserRecord {
            uid: "u1".into(),
            password_hash: String::new(),
            bindings: bindings
                .iter()
                .map(|(role, ns)| Binding { role: (*role).into(), namespace: (*ns).into() })
                .collect(),
            description: String::new(),
            created_at_ms: 0,
        };
        let entry = Entry { value: record, create_revision: 1, mod_revision: 1, lease: None };
        state.users.insert(name.into(), Arc::new(entry));
        state
    }

    fn user(name: &str) -> Subject {
        Subject { name: name.into(), kind: PrincipalKind::User, token_id: None }
    }

    fn ns(kind: Kind, namespace: &str) -> Resource<'_> {
        Resource { kind, namespace: Some(namespace) }
    }

    #[test]
    fn roles_are_scoped_to_their_namespace() {
        let state = state_with("alice", &[("editor", "dev"), ("viewer", "prod")]);
        let alice = user("alice");
        assert!(authorize(&state, &alice, Action::Write, ns(Kind::Config, "dev")));
        assert!(!authorize(&state, &alice, Action::Write, ns(Kind::Config, "prod")));
        assert!(authorize(&state, &alice, Action::Read, ns(Kind::Config, "prod")));
        assert!(!authorize(&state, &alice, Action::Read, ns(Kind::Config, "other")));
        assert!(!authorize(&state, &alice, Action::Read, Resource { kind: Kind::Kv, namespace: None }));
        assert!(!authorize(&state, &user("bob"), Action::Read, ns(Kind::Config, "dev")), "unknown principal");
    }

    #[test]
    fn editing_and_publishing_are_separate() {
        let state = state_with("ed", &[("editor", "*")]);
        assert!(authorize(&state, &user("ed"), Action::Write, ns(Kind::Config, "x")));
        assert!(!authorize(&state, &user("ed"), Action::Publish, ns(Kind::Config, "x")));
        let state = state_with("pub", &[("publisher", "*")]);
        assert!(authorize(&state, &user("pub"), Action::Publish, ns(Kind::Config, "x")));
        assert!(!authorize(&state, &user("pub"), Action::Write, ns(Kind::Config, "x")));
    }

    #[test]
    fn custom_roles_are_permission_sets() {
        let mut state = state_with("ops", &[("lock-user", "team-*")]);
        let role = RoleRecord {
            permissions: vec![Permission { kind: "lock".into(), action: "*".into(), namespace: "*".into() }],
            description: String::new(),
        };
        state.roles.insert(
            "lock-user".into(),
            Arc::new(Entry { value: role, create_revision: 1, mod_revision: 1, lease: None }),
        );
        assert!(authorize(&state, &user("ops"), Action::Write, ns(Kind::Lock, "team-a")));
        assert!(!authorize(&state, &user("ops"), Action::Write, ns(Kind::Lock, "prod")));
        assert!(!authorize(&state, &user("ops"), Action::Read, ns(Kind::Config, "team-a")));
    }

    #[test]
    fn only_admin_on_star_is_global_admin() {
        let state = state_with("root", &[("admin", "*")]);
        assert!(is_global_admin(&state, &user("root")));
        assert!(authorize(
            &state,
            &user("root"),
            Action::Admin,
            Resource { kind: Kind::User, namespace: None }
        ));
        let state = state_with("nsadmin", &[("admin", "dev")]);
        assert!(!is_global_admin(&state, &user("nsadmin")));
        assert!(!authorize(
            &state,
            &user("nsadmin"),
            Action::Admin,
            Resource { kind: Kind::User, namespace: None }
        ));
    }
}
