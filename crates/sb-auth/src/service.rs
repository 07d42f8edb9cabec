//! The access-control service: identities, roles, tokens and namespaces over the store
//! port, read through watch-fed views. Request paths ([`AuthService::resolve_token`],
//! [`AuthService::authorize`]) read view snapshots only; mutations commit one transaction
//! and answer once this node's view has applied it, so a revoke takes effect here at once
//! and on other nodes within a view update.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use sb_audit::Audit;
use sb_store::codec::{decode, encode, StoredValue};
use sb_store::view::DecodedMap;
use sb_store::{Compare, CompareOp, KeyRange, Revision, SharedStore, Txn, TxnOp, View};
use sha2::{Digest, Sha256};

use crate::backoff::{BackoffOptions, LoginBackoff};
use crate::error::{AuthError, AuthResult};
use crate::model::*;
use crate::password::{check_password_strength, PasswordHasher};
use crate::policy::{authorize, builtin_allows, is_global_admin, Subject, BUILTIN_ROLES};
use crate::state::AuthState;
use crate::tokens::{digests_equal, generate_token, generate_uid, token_id_and_digest, MAX_TOKEN_CHARS};

#[derive(Clone, Debug)]
pub struct AuthOptions {
    /// Password hashes computed at once (each costs about 19 MiB).
    pub hash_concurrency: usize,
    /// How long a login waits for a hashing slot before a 503.
    pub hash_wait: Duration,
    pub backoff: BackoffOptions,
    pub read_your_writes_timeout: Duration,
    /// A login's session TTL when the request names none.
    pub session_ttl_secs: i64,
    pub max_session_ttl_secs: i64,
    /// How long a verified Nacos `username`+`password` pair is remembered, so SDKs that send
    /// them on every call do not cost a hash each.
    pub password_cache_ttl: Duration,
}

impl Default for AuthOptions {
    fn default() -> Self {
        AuthOptions {
            hash_concurrency: 2,
            hash_wait: Duration::from_secs(10),
            backoff: BackoffOptions::default(),
            read_your_writes_timeout: Duration::from_secs(5),
            session_ttl_secs: 18_000,
            max_session_ttl_secs: 7 * 24 * 3600,
            password_cache_ttl: Duration::from_secs(60),
        }
    }
}

/// A login's answer.
#[derive(Clone, Debug)]
pub struct Session {
    pub token: String,
    pub token_id: String,
    pub ttl_secs: i64,
    pub subject: Subject,
    pub global_admin: bool,
}

/// A minted API token: shown once.
#[derive(Clone, Debug)]
pub struct MintedToken {
    pub token: String,
    pub id: String,
    pub record: TokenRecord,
}

const MAX_PASSWORD_CACHE: usize = 1024;

struct CachedLogin {
    user_mod_revision: Revision,
    expires: tokio::time::Instant,
}

pub struct AuthService {
    store: SharedStore,
    view: View<AuthState>,
    namespaces: View<DecodedMap<NamespaceRecord>>,
    hasher: PasswordHasher,
    backoff: LoginBackoff,
    password_cache: Mutex<HashMap<[u8; 32], CachedLogin>>,
    options: AuthOptions,
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn encoded<T: StoredValue>(value: &T) -> AuthResult<Vec<u8>> {
    encode(value).map_err(|e| AuthError::Corrupt(format!("encoding a {} record: {e}", T::KIND)))
}

pub fn user_key(name: &str) -> String {
    format!("{USERS_PREFIX}{name}")
}

pub fn account_key(name: &str) -> String {
    format!("{ACCOUNTS_PREFIX}{name}")
}

pub fn principal_key(principal: &PrincipalRef) -> String {
    match principal.kind {
        PrincipalKind::User => user_key(&principal.name),
        PrincipalKind::ServiceAccount => account_key(&principal.name),
    }
}

pub fn token_key(id: &str) -> String {
    format!("{TOKENS_PREFIX}{id}")
}

fn role_key(name: &str) -> String {
    format!("{ROLES_PREFIX}{name}")
}

fn namespace_key(name: &str) -> String {
    format!("{NAMESPACES_PREFIX}{name}")
}

impl AuthService {
    /// Loads the views; returns once they are applied.
    pub async fn start(store: SharedStore, options: AuthOptions) -> AuthResult<AuthService> {
        let view = View::start(store.clone(), KeyRange::prefix(AUTH_PREFIX), "auth").await?;
        let namespaces =
            View::start(store.clone(), KeyRange::prefix(NAMESPACES_PREFIX), "namespaces").await?;
        Ok(AuthService {
            hasher: PasswordHasher::new(options.hash_concurrency, options.hash_wait),
            backoff: LoginBackoff::new(options.backoff.clone()),
            password_cache: Mutex::new(HashMap::new()),
            store,
            view,
            namespaces,
            options,
        })
    }

    pub fn snapshot(&self) -> Arc<AuthState> {
        self.view.snapshot()
    }

    pub fn revision(&self) -> Revision {
        self.view.revision()
    }

    pub fn backoff(&self) -> &LoginBackoff {
        &self.backoff
    }

    pub fn hasher(&self) -> &PasswordHasher {
        &self.hasher
    }

    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// Commits and waits for this node's auth view (for the bootstrap).
    pub async fn commit_public(&self, txn: Txn) -> AuthResult<(bool, Revision)> {
        self.commit(txn).await
    }

    async fn commit(&self, txn: Txn) -> AuthResult<(bool, Revision)> {
        let response = self.store.txn(txn).await?;
        if response.succeeded {
            self.view.wait_for(response.revision, self.options.read_your_writes_timeout).await?;
        }
        Ok((response.succeeded, response.revision))
    }

    // ---- the request path: views only ----

    /// The subject a bearer token acts as: known, unexpired, and its principal still the
    /// one it was minted for.
    pub fn resolve_token(&self, token: &str) -> Option<Subject> {
        if token.is_empty() || token.len() > MAX_TOKEN_CHARS {
            return None;
        }
        // On every authenticated request: the digest in a stack buffer, no allocation.
        let mut hex = [0u8; 64];
        // 32 digest bytes always fill 64 hex characters, so this cannot fail.
        let _ = hex::encode_to_slice(Sha256::digest(token.as_bytes()), &mut hex);
        let digest = std::str::from_utf8(&hex).ok()?;
        let id = &digest[..crate::tokens::TOKEN_ID_CHARS];
        let state = self.view.snapshot();
        let record = &state.tokens.get(id)?.value;
        if !digests_equal(&record.sha256, digest) {
            return None;
        }
        if record.expires_at_ms.is_some_and(|at| at <= now_ms()) {
            return None;
        }
        if principal_uid(&state, &record.principal)? != record.principal_uid.as_str() {
            return None;
        }
        Some(Subject {
            name: record.principal.name.clone(),
            kind: record.principal.kind,
            token_id: Some(id.to_owned()),
        })
    }

    /// A TLS client certificate's common name acts as the service account of that name; an
    /// unknown name is no one.
    pub fn subject_for_certificate(&self, common_name: &str) -> Option<Subject> {
        let state = self.view.snapshot();
        state.accounts.contains_key(common_name).then(|| Subject {
            name: common_name.to_owned(),
            kind: PrincipalKind::ServiceAccount,
            token_id: None,
        })
    }

    /// The one policy check.
    pub fn authorize(&self, subject: &Subject, action: Action, resource: Resource<'_>) -> bool {
        authorize(&self.view.snapshot(), subject, action, resource)
    }

    pub fn is_global_admin(&self, subject: &Subject) -> bool {
        is_global_admin(&self.view.snapshot(), subject)
    }

    // ---- passwords and logins ----

    /// Checks a user's password for a request that carries it (Nacos SDKs send `username` and
    /// `password` on every call): a short-lived cache of verified pairs first, then
    /// [`AuthService::login`]'s check.
    pub async fn check_password(&self, user: &str, password: &str, address: IpAddr) -> AuthResult<Subject> {
        self.verify_password(user, password, address, true).await
    }

    /// The backoff first (before any hash), then the cache when `use_cache`, then argon2.
    /// `address` drives the backoff.
    async fn verify_password(
        &self,
        user: &str,
        password: &str,
        address: IpAddr,
        use_cache: bool,
    ) -> AuthResult<Subject> {
        let subject = Subject { name: user.to_owned(), kind: PrincipalKind::User, token_id: None };
        let cache_key: [u8; 32] = {
            let mut hasher = Sha256::new();
            hasher.update(user.as_bytes());
            hasher.update([0u8]);
            hasher.update(password.as_bytes());
            hasher.finalize().into()
        };
        let current = self.view.snapshot().users.get(user).cloned();
        if let Some(entry) = current.as_ref().filter(|_| use_cache) {
            let now = tokio::time::Instant::now();
            let cache = self.password_cache.lock();
            if cache
                .get(&cache_key)
                .is_some_and(|c| c.user_mod_revision == entry.mod_revision && c.expires > now)
            {
                return Ok(subject);
            }
        }
        if let Err(wait) = self.backoff.attempt(user, address) {
            return Err(AuthError::Backoff { retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64 });
        }
        let ok = if password.chars().count() > crate::password::MAX_PASSWORD_CHARS {
            false
        } else {
            let phc = current.as_ref().map(|e| e.value.password_hash.clone());
            self.hasher.verify(password, phc).await?
        };
        if !ok {
            // The attempt was counted before the hash; the name is not logged (it may be a
            // password typed into the wrong field).
            tracing::info!(target: "switchboard::auth", address = %address, "login failed");
            return Err(AuthError::BadCredentials);
        }
        self.backoff.succeeded(user, address);
        if let Some(entry) = current {
            let now = tokio::time::Instant::now();
            let mut cache = self.password_cache.lock();
            if cache.len() >= MAX_PASSWORD_CACHE {
                cache.retain(|_, c| c.expires > now);
                if cache.len() >= MAX_PASSWORD_CACHE {
                    cache.clear();
                }
            }
            cache.insert(
                cache_key,
                CachedLogin {
                    user_mod_revision: entry.mod_revision,
                    expires: now + self.options.password_cache_ttl,
                },
            );
        }
        Ok(subject)
    }

    /// A login: the password checked (with backoff), then a session token on a lease of
    /// the TTL, bound to the user.
    pub async fn login(
        &self,
        user: &str,
        password: &str,
        address: IpAddr,
        ttl_secs_opt: Option<i64>,
    ) -> AuthResult<Session> {
        let ttl_secs = ttl_secs_opt.unwrap_or(self.options.session_ttl_secs);
        if !(sb_store::MIN_LEASE_TTL_SECS..=self.options.max_session_ttl_secs).contains(&ttl_secs) {
            return Err(AuthError::invalid(
                "ttl_secs",
                format!(
                    "ttl_secs {ttl_secs} is out of range {}..={}",
                    sb_store::MIN_LEASE_TTL_SECS,
                    self.options.max_session_ttl_secs
                ),
            ));
        }
        let subject = self.verify_password(user, password, address, false).await?;
        let principal = subject.principal();
        let lease = self.store.lease_grant(ttl_secs).await?;
        let minted = self.mint(&principal, Some(ttl_secs), "login session", Some(lease.id), None).await;
        let minted = match minted {
            Ok(minted) => minted,
            Err(error) => {
                let _ = self.store.lease_revoke(lease.id).await;
                return Err(error);
            }
        };
        let global_admin = self.is_global_admin(&subject);
        Ok(Session {
            token: minted.token,
            token_id: minted.id.clone(),
            ttl_secs,
            subject: Subject { token_id: Some(minted.id), ..subject },
            global_admin,
        })
    }

    // ---- tokens ----

    async fn mint(
        &self,
        principal: &PrincipalRef,
        ttl_secs_opt: Option<i64>,
        description: &str,
        lease_opt: Option<sb_store::LeaseId>,
        audit_opt: Option<&Audit>,
    ) -> AuthResult<MintedToken> {
        check_description("description", description)?;
        let key = principal_key(principal);
        let current = self.store.get(key.as_bytes()).await?.ok_or_else(|| {
            AuthError::NotFound(format!("{} {:?} does not exist", principal.kind.as_str(), principal.name))
        })?;
        let uid = match principal.kind {
            PrincipalKind::User => decode_record::<UserRecord>(&current.value)?.uid,
            PrincipalKind::ServiceAccount => decode_record::<ServiceAccountRecord>(&current.value)?.uid,
        };
        let token = generate_token();
        let (id, sha256) = token_id_and_digest(&token);
        let created_at_ms = now_ms();
        let record = TokenRecord {
            sha256,
            principal: principal.clone(),
            principal_uid: uid,
            created_at_ms,
            expires_at_ms: ttl_secs_opt.map(|ttl| created_at_ms + (ttl.max(0) as u64) * 1000),
            description: description.to_owned(),
            session: lease_opt.is_some(),
        };
        let value = encoded(&record)?;
        let put = match lease_opt {
            Some(lease) => TxnOp::put_with_lease(token_key(&id), value.clone(), lease),
            None => TxnOp::put(token_key(&id), value.clone()),
        };
        let mut ops = vec![put];
        if let Some(audit) = audit_opt {
            // The digest is of the stored record (itself a digest), never of the token.
            ops.push(audit.op("token.create", format!("token/{id}"), None, Some(&value)));
        }
        let txn = Txn::new()
            .when([
                Compare::mod_revision(key, CompareOp::Equal, current.mod_revision),
                Compare::absent(token_key(&id)),
            ])
            .and_then(ops);
        let (succeeded, _) = self.commit(txn).await?;
        if !succeeded {
            return Err(AuthError::Conflict(format!(
                "{} {:?} changed while the token was minted; retry",
                principal.kind.as_str(),
                principal.name
            )));
        }
        Ok(MintedToken { token, id, record })
    }

    /// A new API token for a user or service account, with an optional TTL.
    pub async fn create_token(
        &self,
        principal: &PrincipalRef,
        ttl_secs_opt: Option<i64>,
        description: &str,
        audit: &Audit,
    ) -> AuthResult<MintedToken> {
        if let Some(ttl) = ttl_secs_opt {
            if ttl <= 0 {
                return Err(AuthError::invalid("ttl_secs", format!("ttl_secs {ttl} must be positive")));
            }
        }
        self.mint(principal, ttl_secs_opt, description, None, Some(audit)).await
    }

    /// Revokes a token by id: deleted from the store, gone from this node's view on return.
    pub async fn revoke_token(&self, id: &str, audit: &Audit) -> AuthResult<()> {
        let key = token_key(id);
        let txn = Txn::new().when([Compare::new(
            key.clone(),
            CompareOp::Greater,
            sb_store::CompareTarget::CreateRevision(0),
        )]);
        let record = audit.op("token.revoke", format!("token/{id}"), None, None);
        let (succeeded, _) = self.commit(txn.and_then([TxnOp::delete(key), record])).await?;
        if !succeeded {
            return Err(AuthError::NotFound(format!("token {id:?} does not exist")));
        }
        Ok(())
    }

    /// Deletes API tokens past their expiry (they are refused from that moment anyway;
    /// session tokens go with their lease). Any node may sweep: each delete compares the
    /// record's mod revision, so two sweepers never delete a re-minted record.
    pub async fn sweep_expired_tokens(&self) -> AuthResult<usize> {
        let now = now_ms();
        let expired: Vec<(String, Revision)> = self
            .view
            .snapshot()
            .tokens
            .iter()
            .filter(|(_, e)| e.value.expires_at_ms.is_some_and(|at| at <= now))
            .map(|(id, e)| (id.clone(), e.mod_revision))
            .collect();
        let mut deleted = 0;
        for (id, revision) in expired {
            let key = token_key(&id);
            let txn = Txn::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, revision)])
                .and_then([TxnOp::delete(key)]);
            if self.commit(txn).await?.0 {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Runs [`AuthService::sweep_expired_tokens`] every `every` until the service is dropped.
    pub fn spawn_token_sweeper(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let service = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(service) = service.upgrade() else { return };
                match service.sweep_expired_tokens().await {
                    Ok(0) => {}
                    Ok(deleted) => tracing::debug!(deleted, "expired tokens deleted"),
                    Err(error) => tracing::warn!(%error, "the expired-token sweep failed; it runs again"),
                }
            }
        })
    }

    // ---- users and service accounts ----

    pub async fn create_user(
        &self,
        name: &str,
        password: &str,
        description: &str,
        bindings: Vec<Binding>,
        audit: &Audit,
    ) -> AuthResult<Revision> {
        check_principal_name("name", name)?;
        check_description("description", description)?;
        check_password_strength("password", password)?;
        self.check_bindings(&bindings)?;
        let record = UserRecord {
            uid: generate_uid(),
            password_hash: self.hasher.hash(password).await?,
            bindings,
            description: description.to_owned(),
            created_at_ms: now_ms(),
        };
        let key = user_key(name);
        let value = encoded(&record)?;
        let audited = audit.op("user.create", format!("user/{name}"), None, Some(&value));
        let txn = Txn::new().when([Compare::absent(key.clone())]).and_then([TxnOp::put(key, value), audited]);
        match self.commit(txn).await? {
            (true, revision) => Ok(revision),
            (false, _) => Err(AuthError::AlreadyExists(format!("user {name:?} exists"))),
        }
    }

    pub async fn set_password(&self, name: &str, password: &str, audit: &Audit) -> AuthResult<Revision> {
        check_password_strength("password", password)?;
        let hash = self.hasher.hash(password).await?;
        self.update_user(name, ("user.password", audit), move |record| {
            record.password_hash = hash.clone();
            Ok(())
        })
        .await
    }

    pub async fn create_service_account(
        &self,
        name: &str,
        description: &str,
        audit: &Audit,
    ) -> AuthResult<Revision> {
        check_principal_name("name", name)?;
        check_description("description", description)?;
        let record = ServiceAccountRecord {
            uid: generate_uid(),
            bindings: Vec::new(),
            description: description.to_owned(),
            created_at_ms: now_ms(),
        };
        let key = account_key(name);
        let value = encoded(&record)?;
        let audited =
            audit.op("service_account.create", format!("service-account/{name}"), None, Some(&value));
        let txn = Txn::new().when([Compare::absent(key.clone())]).and_then([TxnOp::put(key, value), audited]);
        match self.commit(txn).await? {
            (true, revision) => Ok(revision),
            (false, _) => Err(AuthError::AlreadyExists(format!("service account {name:?} exists"))),
        }
    }

    /// Deletes a user or service account. Its tokens stop working at once (they carry the
    /// principal's uid); the records themselves are deleted too, in batches.
    pub async fn delete_principal(&self, principal: &PrincipalRef, audit: &Audit) -> AuthResult<Revision> {
        let key = principal_key(principal);
        let action = format!("{}.delete", principal.kind.as_str());
        let audited = audit.op(&action, audit_resource(principal), None, None);
        let txn = Txn::new()
            .when([Compare::new(key.clone(), CompareOp::Greater, sb_store::CompareTarget::CreateRevision(0))])
            .and_then([TxnOp::delete(key), audited]);
        let (succeeded, revision) = self.commit(txn).await?;
        if !succeeded {
            return Err(AuthError::NotFound(format!(
                "{} {:?} does not exist",
                principal.kind.as_str(),
                principal.name
            )));
        }
        let ids: Vec<String> = self
            .view
            .snapshot()
            .tokens
            .iter()
            .filter(|(_, e)| &e.value.principal == principal)
            .map(|(id, _)| id.clone())
            .collect();
        for chunk in ids.chunks(64) {
            let txn = Txn::new().and_then(chunk.iter().map(|id| TxnOp::delete(token_key(id))));
            self.commit(txn).await?;
        }
        Ok(revision)
    }

    /// Adds a role binding to a user or service account (idempotent).
    pub async fn grant(
        &self,
        principal: &PrincipalRef,
        binding: Binding,
        audit: &Audit,
    ) -> AuthResult<Revision> {
        self.check_bindings(std::slice::from_ref(&binding))?;
        self.update_bindings(principal, ("binding.grant", audit), move |bindings| {
            if !bindings.contains(&binding) {
                bindings.push(binding.clone());
            }
            Ok(())
        })
        .await
    }

    /// Removes a role binding; a binding that is not there is a not-found.
    pub async fn ungrant(
        &self,
        principal: &PrincipalRef,
        binding: Binding,
        audit: &Audit,
    ) -> AuthResult<Revision> {
        self.update_bindings(principal, ("binding.revoke", audit), move |bindings| {
            let before = bindings.len();
            bindings.retain(|b| b != &binding);
            if bindings.len() == before {
                return Err(AuthError::NotFound(format!(
                    "no binding of role {:?} on {:?}",
                    binding.role, binding.namespace
                )));
            }
            Ok(())
        })
        .await
    }

    fn check_bindings(&self, bindings: &[Binding]) -> AuthResult<()> {
        let state = self.view.snapshot();
        for binding in bindings {
            check_namespace_pattern(&binding.namespace)?;
            if !BUILTIN_ROLES.contains(&binding.role.as_str()) && !state.roles.contains_key(&binding.role) {
                return Err(AuthError::NotFound(format!("role {:?} does not exist", binding.role)));
            }
        }
        Ok(())
    }

    async fn update_bindings(
        &self,
        principal: &PrincipalRef,
        audit: (&str, &Audit),
        change: impl Fn(&mut Vec<Binding>) -> AuthResult<()>,
    ) -> AuthResult<Revision> {
        match principal.kind {
            PrincipalKind::User => {
                self.update_user(&principal.name, audit, |r| change(&mut r.bindings)).await
            }
            PrincipalKind::ServiceAccount => {
                let key = account_key(&principal.name);
                self.update_record::<ServiceAccountRecord>(&key, "service account", audit, |r| {
                    change(&mut r.bindings)
                })
                .await
            }
        }
    }

    async fn update_user(
        &self,
        name: &str,
        audit: (&str, &Audit),
        change: impl Fn(&mut UserRecord) -> AuthResult<()>,
    ) -> AuthResult<Revision> {
        self.update_record::<UserRecord>(&user_key(name), "user", audit, change).await
    }

    /// Read, change, and write back if the record did not change meanwhile (a few retries).
    async fn update_record<T: StoredValue>(
        &self,
        key: &str,
        what: &str,
        (action, audit): (&str, &Audit),
        change: impl Fn(&mut T) -> AuthResult<()>,
    ) -> AuthResult<Revision> {
        for _ in 0..5 {
            let current =
                self.store.get(key.as_bytes()).await?.ok_or_else(|| {
                    AuthError::NotFound(format!("{what} {:?} does not exist", key_name(key)))
                })?;
            let mut record = decode_record::<T>(&current.value)?;
            change(&mut record)?;
            let value = encoded(&record)?;
            let resource = format!("{}/{}", what.replace(' ', "-"), key_name(key));
            let audited = audit.op(action, resource, Some(&current.value), Some(&value));
            let txn = Txn::new()
                .when([Compare::mod_revision(key, CompareOp::Equal, current.mod_revision)])
                .and_then([TxnOp::put(key, value), audited]);
            if let (true, revision) = self.commit(txn).await? {
                return Ok(revision);
            }
        }
        Err(AuthError::Conflict(format!("{what} {:?} is changing too often; retry", key_name(key))))
    }

    // ---- roles ----

    pub async fn put_role(
        &self,
        name: &str,
        permissions: Vec<Permission>,
        description: &str,
        audit: &Audit,
    ) -> AuthResult<Revision> {
        check_principal_name("name", name)?;
        check_description("description", description)?;
        if BUILTIN_ROLES.contains(&name) {
            return Err(AuthError::invalid(
                "name",
                format!("role {name:?} is built in and cannot be changed"),
            ));
        }
        if permissions.is_empty() || permissions.len() > 64 {
            return Err(AuthError::invalid(
                "permissions",
                format!("a role has 1 to 64 permissions, this one has {}", permissions.len()),
            ));
        }
        for p in &permissions {
            if p.kind != "*" && Kind::parse(&p.kind).is_none() {
                let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
                return Err(AuthError::invalid(
                    "permissions",
                    format!("kind {:?} is unknown; kinds are * or {}", p.kind, kinds.join(", ")),
                ));
            }
            if p.action != "*" && Action::parse(&p.action).is_none() {
                return Err(AuthError::invalid(
                    "permissions",
                    format!("action {:?} is unknown; actions are *, read, write, publish, admin", p.action),
                ));
            }
            check_namespace_pattern(&p.namespace)?;
        }
        let record = RoleRecord { permissions, description: description.to_owned() };
        let value = encoded(&record)?;
        let audited = audit.op("role.put", format!("role/{name}"), None, Some(&value));
        let (_, revision) =
            self.commit(Txn::new().and_then([TxnOp::put(role_key(name), value), audited])).await?;
        Ok(revision)
    }

    /// Deletes a custom role; bindings to it then allow nothing.
    pub async fn delete_role(&self, name: &str, audit: &Audit) -> AuthResult<Revision> {
        if BUILTIN_ROLES.contains(&name) {
            return Err(AuthError::invalid(
                "name",
                format!("role {name:?} is built in and cannot be deleted"),
            ));
        }
        let key = role_key(name);
        let audited = audit.op("role.delete", format!("role/{name}"), None, None);
        let txn = Txn::new()
            .when([Compare::new(key.clone(), CompareOp::Greater, sb_store::CompareTarget::CreateRevision(0))])
            .and_then([TxnOp::delete(key), audited]);
        match self.commit(txn).await? {
            (true, revision) => Ok(revision),
            (false, _) => Err(AuthError::NotFound(format!("role {name:?} does not exist"))),
        }
    }

    /// Every role: the built-ins (described by what they allow) and the custom ones.
    pub fn roles(&self) -> Vec<(String, Vec<Permission>, String, bool)> {
        let mut roles: Vec<_> = BUILTIN_ROLES
            .iter()
            .map(|name| {
                let permissions = Kind::ALL
                    .iter()
                    .flat_map(|kind| {
                        Action::ALL
                            .iter()
                            .filter(move |action| builtin_allows(name, *kind, **action) == Some(true))
                            .map(move |action| Permission {
                                kind: kind.as_str().into(),
                                action: action.as_str().into(),
                                namespace: "*".into(),
                            })
                    })
                    .collect();
                ((*name).to_owned(), permissions, "built in".to_owned(), true)
            })
            .collect();
        for (name, entry) in self.view.snapshot().roles.iter() {
            roles.push((
                name.clone(),
                entry.value.permissions.clone(),
                entry.value.description.clone(),
                false,
            ));
        }
        roles
    }

    // ---- namespaces ----

    pub fn namespaces(&self) -> Arc<DecodedMap<NamespaceRecord>> {
        self.namespaces.snapshot()
    }

    pub fn namespace(&self, name: &str) -> Option<NamespaceRecord> {
        self.namespaces.snapshot().entries.get(namespace_key(name).as_bytes()).map(|e| e.value.clone())
    }

    /// Creates a namespace (`create_only`) or replaces its display name and description.
    pub async fn put_namespace(
        &self,
        name: &str,
        display_name: &str,
        description: &str,
        create_only: bool,
        audit: &Audit,
    ) -> AuthResult<Revision> {
        check_namespace(name)?;
        check_description("display_name", display_name)?;
        check_description("description", description)?;
        let key = namespace_key(name);
        let existing = self.namespace(name);
        let record = NamespaceRecord {
            display_name: if display_name.is_empty() { name.to_owned() } else { display_name.to_owned() },
            description: description.to_owned(),
            created_at_ms: existing.as_ref().map_or_else(now_ms, |e| e.created_at_ms),
        };
        let value = encoded(&record)?;
        let action = if create_only { "namespace.create" } else { "namespace.update" };
        let audited = audit.op(action, format!("namespace/{name}"), None, Some(&value));
        let mut txn = Txn::new().and_then([TxnOp::put(key.clone(), value), audited]);
        if create_only {
            txn = txn.when([Compare::absent(key)]);
        }
        let response = self.store.txn(txn).await?;
        if !response.succeeded {
            return Err(AuthError::AlreadyExists(format!("namespace {name:?} exists")));
        }
        self.namespaces.wait_for(response.revision, self.options.read_your_writes_timeout).await?;
        Ok(response.revision)
    }

    /// Deletes a namespace's record. What lives in the namespace stays (Nacos 1.x does the
    /// same); the namespace is implicit again on its next use.
    pub async fn delete_namespace(&self, name: &str, audit: &Audit) -> AuthResult<Revision> {
        let key = namespace_key(name);
        let audited = audit.op("namespace.delete", format!("namespace/{name}"), None, None);
        let txn = Txn::new()
            .when([Compare::new(key.clone(), CompareOp::Greater, sb_store::CompareTarget::CreateRevision(0))])
            .and_then([TxnOp::delete(key), audited]);
        let response = self.store.txn(txn).await?;
        if !response.succeeded {
            return Err(AuthError::NotFound(format!("namespace {name:?} does not exist")));
        }
        self.namespaces.wait_for(response.revision, self.options.read_your_writes_timeout).await?;
        Ok(response.revision)
    }
}

/// Clears login backoff entries and records who did it (an audit record on its own: the
/// backoff lives in memory, not in the store).
impl AuthService {
    pub async fn clear_backoff(
        &self,
        user_opt: Option<&str>,
        address_opt: Option<IpAddr>,
        audit: &Audit,
    ) -> AuthResult<usize> {
        let cleared = self.backoff.clear(user_opt, address_opt);
        let resource = format!(
            "login-backoff/{}@{}",
            user_opt.unwrap_or("*"),
            address_opt.map_or_else(|| "*".to_owned(), |a| a.to_string())
        );
        self.store.txn(Txn::new().and_then([audit.op("backoff.clear", resource, None, None)])).await?;
        Ok(cleared)
    }
}

fn audit_resource(principal: &PrincipalRef) -> String {
    match principal.kind {
        PrincipalKind::User => format!("user/{}", principal.name),
        PrincipalKind::ServiceAccount => format!("service-account/{}", principal.name),
    }
}

fn key_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

fn decode_record<T: StoredValue>(bytes: &[u8]) -> AuthResult<T> {
    decode::<T>(bytes).map_err(|e| AuthError::Corrupt(format!("a stored {} record: {e}", T::KIND)))
}

fn principal_uid<'a>(state: &'a AuthState, principal: &PrincipalRef) -> Option<&'a str> {
    match principal.kind {
        PrincipalKind::User => state.users.get(&principal.name).map(|e| e.value.uid.as_str()),
        PrincipalKind::ServiceAccount => state.accounts.get(&principal.name).map(|e| e.value.uid.as_str()),
    }
}
