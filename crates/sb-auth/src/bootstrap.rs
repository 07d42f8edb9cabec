//! First start: the `admin` user (random password) and an admin token, bound to the
//! built-in `admin` role on `*`. One create-if-absent transaction on `auth/bootstrap` and
//! `auth/users/admin`, so several nodes starting at once on one etcd never both mint.
//! `SWITCHBOARD_ADMIN_PASSWORD` / `SWITCHBOARD_ADMIN_TOKEN` set the secrets instead; weak
//! values are refused. This module never logs a secret: the caller shows generated ones
//! once, on the console.

use sb_store::{Compare, CompareOp, RangeRequest, Txn, TxnOp};

use crate::error::{AuthError, AuthResult};
use crate::model::{
    Binding, BootstrapRecord, PrincipalKind, PrincipalRef, TokenRecord, UserRecord, BOOTSTRAP_KEY,
    USERS_PREFIX,
};
use crate::password::{check_password_strength, generate_password};
use crate::service::{now_ms, token_key, user_key, AuthService};
use crate::tokens::{generate_token, generate_uid, token_id_and_digest, MIN_TOKEN_CHARS};

pub const ADMIN_USER: &str = "admin";

/// Secrets given by the environment.
#[derive(Clone, Default)]
pub struct BootstrapSecrets {
    pub password_opt: Option<String>,
    pub token_opt: Option<String>,
}

impl std::fmt::Debug for BootstrapSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapSecrets")
            .field("password", &self.password_opt.as_ref().map(|_| "***"))
            .field("token", &self.token_opt.as_ref().map(|_| "***"))
            .finish()
    }
}

/// What a start did. Generated secrets are carried out once, to be shown and written.
pub enum BootstrapOutcome {
    /// This start bootstrapped the store; `Some` for each secret it generated.
    Created { password_opt: Option<String>, token_opt: Option<String> },
    /// The store was bootstrapped before; environment secrets were put in place.
    AlreadyDone,
}

/// Refuses weak environment secrets (checked before anything is written).
pub fn check_secrets(secrets: &BootstrapSecrets) -> AuthResult<()> {
    if let Some(password) = &secrets.password_opt {
        check_password_strength("SWITCHBOARD_ADMIN_PASSWORD", password)?;
    }
    if let Some(token) = &secrets.token_opt {
        let chars = token.chars().count();
        let distinct: std::collections::HashSet<char> = token.chars().collect();
        if chars < MIN_TOKEN_CHARS || distinct.len() < 8 {
            return Err(AuthError::invalid(
                "SWITCHBOARD_ADMIN_TOKEN",
                format!(
                    "SWITCHBOARD_ADMIN_TOKEN is {chars} characters with {} distinct, at least {MIN_TOKEN_CHARS} and 8 distinct are required",
                    distinct.len()
                ),
            ));
        }
    }
    Ok(())
}

fn admin_token_record(token: &str, uid: &str, description: &str) -> (String, TokenRecord) {
    let (id, sha256) = token_id_and_digest(token);
    let record = TokenRecord {
        sha256,
        principal: PrincipalRef { kind: PrincipalKind::User, name: ADMIN_USER.into() },
        principal_uid: uid.to_owned(),
        created_at_ms: now_ms(),
        expires_at_ms: None,
        description: description.to_owned(),
        session: false,
    };
    (id, record)
}

fn encoded<T: sb_store::codec::StoredValue>(value: &T) -> AuthResult<Vec<u8>> {
    sb_store::codec::encode(value)
        .map_err(|e| AuthError::Corrupt(format!("encoding a bootstrap record: {e}")))
}

pub async fn bootstrap(
    service: &AuthService,
    node: &str,
    secrets: BootstrapSecrets,
) -> AuthResult<BootstrapOutcome> {
    check_secrets(&secrets)?;
    let store = service.store();
    let marked = store.get(BOOTSTRAP_KEY.as_bytes()).await?.is_some();
    // A store bootstrapped before users existed (only an admin token) gets its admin user
    // now; a store with users is never bootstrapped twice.
    let users = store.range(RangeRequest::prefix(USERS_PREFIX).count_only()).await?.count;
    if !marked || users == 0 {
        let password_generated = secrets.password_opt.is_none();
        let password = secrets.password_opt.clone().unwrap_or_else(generate_password);
        let token_generated = secrets.token_opt.is_none();
        let token = secrets.token_opt.clone().unwrap_or_else(generate_token);
        let uid = generate_uid();
        let user = UserRecord {
            uid: uid.clone(),
            password_hash: service.hasher().hash(&password).await?,
            bindings: vec![Binding { role: "admin".into(), namespace: "*".into() }],
            description: "created at first start".into(),
            created_at_ms: now_ms(),
        };
        let (id, token_record) = admin_token_record(&token, &uid, "created at first start");
        let marker = BootstrapRecord { node: node.to_owned(), created_at_ms: now_ms() };
        let txn = Txn::new()
            .when(if marked {
                vec![Compare::absent(user_key(ADMIN_USER))]
            } else {
                vec![Compare::absent(BOOTSTRAP_KEY), Compare::absent(user_key(ADMIN_USER))]
            })
            .and_then([
                TxnOp::put(user_key(ADMIN_USER), encoded(&user)?),
                TxnOp::put(token_key(&id), encoded(&token_record)?),
                TxnOp::put(BOOTSTRAP_KEY, encoded(&marker)?),
                sb_audit::Audit::system("switchboard-bootstrap").op(
                    "user.create",
                    format!("user/{ADMIN_USER}"),
                    None,
                    None,
                ),
            ]);
        let (succeeded, _) = service.commit_public(txn).await?;
        if succeeded {
            return Ok(BootstrapOutcome::Created {
                password_opt: password_generated.then_some(password),
                token_opt: token_generated.then_some(token),
            });
        }
    }
    // Bootstrapped before (or by another node just now): put environment secrets in place.
    let admin = store.get(user_key(ADMIN_USER).as_bytes()).await?;
    let Some(admin) = admin else {
        return Ok(BootstrapOutcome::AlreadyDone);
    };
    let record: UserRecord = sb_store::codec::decode(&admin.value)
        .map_err(|e| AuthError::Corrupt(format!("the admin user record: {e}")))?;
    if let Some(token) = &secrets.token_opt {
        let (id, token_record) = admin_token_record(token, &record.uid, "set by SWITCHBOARD_ADMIN_TOKEN");
        let key = token_key(&id);
        let current = store.get(key.as_bytes()).await?;
        let current_ok = current
            .as_ref()
            .and_then(|kv| sb_store::codec::decode::<TokenRecord>(&kv.value).ok())
            .is_some_and(|t| t.principal_uid == record.uid && t.sha256 == token_record.sha256);
        if !current_ok {
            let compare = match &current {
                Some(kv) => Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision),
                None => Compare::absent(key.clone()),
            };
            service
                .commit_public(
                    Txn::new().when([compare]).and_then([TxnOp::put(key, encoded(&token_record)?)]),
                )
                .await?;
        }
    }
    if let Some(password) = &secrets.password_opt {
        let matches = service.hasher().verify(password, Some(record.password_hash.clone())).await?;
        if !matches {
            service
                .set_password(ADMIN_USER, password, &sb_audit::Audit::system("switchboard-bootstrap"))
                .await?;
        }
    }
    Ok(BootstrapOutcome::AlreadyDone)
}
