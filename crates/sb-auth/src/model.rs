//! What access control stores, and the vocabulary of the policy: resource kinds, actions,
//! principals, role bindings. Every stored record carries the store's `"v"` format version.

use sb_store::codec::StoredValue;
use serde::{Deserialize, Serialize};

use crate::error::{AuthError, AuthResult};

/// Everything access control stores lives under this prefix (one watch-fed view).
pub const AUTH_PREFIX: &str = "auth/";
pub const USERS_PREFIX: &str = "auth/users/";
pub const ACCOUNTS_PREFIX: &str = "auth/service-accounts/";
pub const TOKENS_PREFIX: &str = "auth/tokens/";
pub const ROLES_PREFIX: &str = "auth/roles/";
/// Written once, with the first admin user and token, so bootstrap happens once per store.
pub const BOOTSTRAP_KEY: &str = "auth/bootstrap";
/// Explicit namespaces (display name, description). Namespaces are also implicit on first
/// use through Nacos paths, as Nacos 1.x allows.
pub const NAMESPACES_PREFIX: &str = "namespaces/";
/// The namespace that an absent or empty namespace parameter means.
pub const DEFAULT_NAMESPACE: &str = "public";

/// The largest user, service-account and role name.
pub const MAX_PRINCIPAL_CHARS: usize = 64;
/// The largest namespace id (as the registry's and config center's names).
pub const MAX_NAMESPACE_CHARS: usize = 128;
/// The largest description or display name.
pub const MAX_DESCRIPTION_CHARS: usize = 256;

/// What a permission is about. Namespaced kinds live inside one namespace; the others are
/// global and only a binding on the namespace pattern `*` reaches them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Kv,
    Service,
    Instance,
    Config,
    ConfigSecret,
    Lock,
    Id,
    RateLimit,
    Namespace,
    User,
    Role,
    Audit,
    /// The node itself: log level, backup.
    System,
}

impl Kind {
    pub const ALL: [Kind; 13] = [
        Kind::Kv,
        Kind::Service,
        Kind::Instance,
        Kind::Config,
        Kind::ConfigSecret,
        Kind::Lock,
        Kind::Id,
        Kind::RateLimit,
        Kind::Namespace,
        Kind::User,
        Kind::Role,
        Kind::Audit,
        Kind::System,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Kv => "kv",
            Kind::Service => "service",
            Kind::Instance => "instance",
            Kind::Config => "config",
            Kind::ConfigSecret => "config-secret",
            Kind::Lock => "lock",
            Kind::Id => "id",
            Kind::RateLimit => "ratelimit",
            Kind::Namespace => "namespace",
            Kind::User => "user",
            Kind::Role => "role",
            Kind::Audit => "audit",
            Kind::System => "system",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// Whether resources of this kind belong to one namespace.
    pub fn is_namespaced(self) -> bool {
        matches!(
            self,
            Kind::Service
                | Kind::Instance
                | Kind::Config
                | Kind::ConfigSecret
                | Kind::Lock
                | Kind::Id
                | Kind::RateLimit
        )
    }
}

/// What a request does to its resource. `admin` on a kind implies every other action on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Read,
    /// Changes that reach selected clients or none: edits, gray publishes, aborts,
    /// registrations, lock and ID use.
    Write,
    /// Changes every client sees: a config publish, delete, rollback, promote, import.
    Publish,
    Admin,
}

impl Action {
    pub const ALL: [Action; 4] = [Action::Read, Action::Write, Action::Publish, Action::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
            Action::Publish => "publish",
            Action::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == text)
    }
}

/// What one request touches: a kind in a namespace (`None` for global kinds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resource<'a> {
    pub kind: Kind,
    pub namespace: Option<&'a str>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    User,
    ServiceAccount,
}

impl PrincipalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::User => "user",
            PrincipalKind::ServiceAccount => "service_account",
        }
    }
}

/// A user or a service account, by name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PrincipalRef {
    pub kind: PrincipalKind,
    pub name: String,
}

/// A role granted on a namespace pattern: `*` (everything, global kinds included), an
/// exact namespace, or a prefix ending in `*` (`team-*`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Binding {
    pub role: String,
    pub namespace: String,
}

/// One permission of a custom role: a kind (or `*`) × an action (or `*`) × a namespace
/// pattern. It applies where both it and the binding's pattern match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    pub kind: String,
    pub action: String,
    #[serde(default = "any_namespace")]
    pub namespace: String,
}

fn any_namespace() -> String {
    "*".into()
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Random, new for each creation: tokens carry it, so a user deleted and created again
    /// under the same name never inherits the old user's tokens.
    pub uid: String,
    /// argon2id, in the PHC string format (salt and parameters included).
    pub password_hash: String,
    pub bindings: Vec<Binding>,
    pub description: String,
    pub created_at_ms: u64,
}

impl StoredValue for UserRecord {
    const KIND: &'static str = "user";
    const FORMAT_VERSION: u32 = 1;
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAccountRecord {
    /// As [`UserRecord::uid`].
    pub uid: String,
    pub bindings: Vec<Binding>,
    pub description: String,
    pub created_at_ms: u64,
}

impl StoredValue for ServiceAccountRecord {
    const KIND: &'static str = "service_account";
    const FORMAT_VERSION: u32 = 1;
}

/// A token as stored under `auth/tokens/{id}`: never the token itself, only its SHA-256.
/// The id is the first 16 hex digits of that SHA-256, so a presented token finds its record
/// by one map lookup, and the full digest is then compared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub sha256: String,
    pub principal: PrincipalRef,
    /// The principal's `uid` when the token was minted.
    pub principal_uid: String,
    pub created_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    pub description: String,
    /// A login's session token (on a lease that ends with its TTL), not an API token.
    pub session: bool,
}

impl StoredValue for TokenRecord {
    const KIND: &'static str = "token";
    const FORMAT_VERSION: u32 = 2;
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleRecord {
    pub permissions: Vec<Permission>,
    pub description: String,
}

impl StoredValue for RoleRecord {
    const KIND: &'static str = "role";
    const FORMAT_VERSION: u32 = 1;
}

/// The marker that the store has been bootstrapped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapRecord {
    pub node: String,
    pub created_at_ms: u64,
}

impl StoredValue for BootstrapRecord {
    const KIND: &'static str = "bootstrap";
    const FORMAT_VERSION: u32 = 1;
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceRecord {
    pub display_name: String,
    pub description: String,
    pub created_at_ms: u64,
}

impl StoredValue for NamespaceRecord {
    const KIND: &'static str = "namespace";
    const FORMAT_VERSION: u32 = 1;
}

/// Checks a user, service-account or role name: letters, digits and `. _ -`, starting
/// with a letter or digit, at most [`MAX_PRINCIPAL_CHARS`].
pub fn check_principal_name(field: &'static str, name: &str) -> AuthResult<()> {
    if name.is_empty() || name.len() > MAX_PRINCIPAL_CHARS {
        return Err(AuthError::invalid(
            field,
            format!("{field} is {} characters, it must be 1 to {MAX_PRINCIPAL_CHARS}", name.len()),
        ));
    }
    let first_ok = name.as_bytes()[0].is_ascii_alphanumeric();
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if !first_ok || !name.chars().all(allowed) {
        return Err(AuthError::invalid(
            field,
            format!(
                "{field} {name:?} is not valid: letters, digits and . _ - (starting with a letter or digit)"
            ),
        ));
    }
    Ok(())
}

/// Checks a namespace id: the registry's and config center's name pattern (letters,
/// digits and `. : _ - @`), at most [`MAX_NAMESPACE_CHARS`].
pub fn check_namespace(namespace: &str) -> AuthResult<()> {
    if namespace.is_empty() || namespace.len() > MAX_NAMESPACE_CHARS {
        return Err(AuthError::invalid(
            "namespace",
            format!("namespace is {} characters, it must be 1 to {MAX_NAMESPACE_CHARS}", namespace.len()),
        ));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '_' | '-' | '@');
    if let Some(bad) = namespace.chars().find(|c| !allowed(*c)) {
        return Err(AuthError::invalid(
            "namespace",
            format!("namespace {namespace:?} has {bad:?}; names are letters, digits and . : _ - @"),
        ));
    }
    Ok(())
}

/// Checks a binding's or permission's namespace pattern: `*`, a namespace, or a namespace
/// prefix followed by `*`.
pub fn check_namespace_pattern(pattern: &str) -> AuthResult<()> {
    if pattern == "*" {
        return Ok(());
    }
    check_namespace(pattern.strip_suffix('*').unwrap_or(pattern))
}

/// Checks a description or display name.
pub fn check_description(field: &'static str, text: &str) -> AuthResult<()> {
    let chars = text.chars().count();
    if chars > MAX_DESCRIPTION_CHARS {
        return Err(AuthError::invalid(
            field,
            format!("{field} is {chars} characters, limit is {MAX_DESCRIPTION_CHARS}"),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(AuthError::invalid(field, format!("{field} has a control character")));
    }
    Ok(())
}

/// Whether a namespace pattern covers a resource's namespace (`None`: a global kind, which
/// only `*` covers).
pub fn pattern_matches(pattern: &str, namespace: Option<&str>) -> bool {
    if pattern == "*" {
        return true;
    }
    let Some(namespace) = namespace else {
        return false;
    };
    match pattern.strip_suffix('*') {
        Some(prefix) => namespace.starts_with(prefix),
        None => pattern == namespace,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_cover_what_they_say() {
        assert!(pattern_matches("*", None));
        assert!(pattern_matches("*", Some("dev")));
        assert!(pattern_matches("dev", Some("dev")));
        assert!(!pattern_matches("dev", Some("dev2")));
        assert!(!pattern_matches("dev", None), "a namespace binding never reaches a global kind");
        assert!(pattern_matches("team-*", Some("team-a")));
        assert!(!pattern_matches("team-*", Some("other")));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_principal_name("user", "alice.b-1").is_ok());
        assert!(check_principal_name("user", "").is_err());
        assert!(check_principal_name("user", "-x").is_err());
        assert!(check_principal_name("user", "a/b").is_err());
        assert!(check_namespace_pattern("team-*").is_ok());
        assert!(check_namespace_pattern("a b").is_err());
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
        }
    }
}
