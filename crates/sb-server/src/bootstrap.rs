//! First start: the admin token.
//!
//! On a store that was never bootstrapped, a random admin token is generated; the store
//! keeps only its SHA-256. The bootstrap is one create-if-absent transaction on
//! `auth/bootstrap`, so two nodes starting at once on one etcd never both mint a token.
//! The token goes to `<data-dir>/admin-token` (mode 0600) and, once, to the console:
//! never to the structured log.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use sb_api::auth::{generate_token, token_key, BootstrapRecord, TokenRecord, BOOTSTRAP_KEY, MIN_TOKEN_CHARS};
use sb_store::codec::encode;
use sb_store::{Compare, SharedStore, Txn, TxnOp};
use tracing::{info, warn};

use crate::error::{ServerError, ServerResult};

/// The file the first start writes the admin token to.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// The variable that sets the admin token instead of generating one.
pub const ADMIN_TOKEN_ENV: &str = "SWITCHBOARD_ADMIN_TOKEN";

#[derive(Debug)]
pub enum Bootstrap {
    /// This start minted the token: show it once.
    Generated { token: String, file: PathBuf },
    /// `SWITCHBOARD_ADMIN_TOKEN` is a valid admin token (stored now or before).
    FromEnv,
    /// The store was bootstrapped before (by this node or another).
    AlreadyDone,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn admin_record(description: &str) -> TokenRecord {
    TokenRecord {
        subject: "admin".into(),
        roles: vec!["admin".into()],
        created_at_ms: now_ms(),
        description: description.into(),
    }
}

fn encoded<T: sb_store::codec::StoredValue>(value: &T) -> ServerResult<Vec<u8>> {
    encode(value).map_err(|e| ServerError::Config(format!("encoding the bootstrap records: {e}")))
}

pub async fn bootstrap_admin(
    store: &SharedStore,
    data_dir: &Path,
    node: &str,
    env_token: Option<String>,
) -> ServerResult<Bootstrap> {
    let marker = encoded(&BootstrapRecord { node: node.into(), created_at_ms: now_ms() })?;
    if let Some(token) = env_token {
        let chars = token.chars().count();
        if chars < MIN_TOKEN_CHARS {
            return Err(ServerError::Config(format!(
                "{ADMIN_TOKEN_ENV} is {chars} characters, at least {MIN_TOKEN_CHARS} are required"
            )));
        }
        let key = token_key(&token);
        let txn = Txn::new().when([Compare::absent(key.clone())]).and_then([
            TxnOp::put(key, encoded(&admin_record(&format!("set by {ADMIN_TOKEN_ENV}")))?),
            TxnOp::put(BOOTSTRAP_KEY, marker),
        ]);
        store.txn(txn).await.map_err(ServerError::store("storing the admin token"))?;
        info!("admin token from {ADMIN_TOKEN_ENV} is in place");
        return Ok(Bootstrap::FromEnv);
    }
    let token = generate_token();
    let txn = Txn::new().when([Compare::absent(BOOTSTRAP_KEY)]).and_then([
        TxnOp::put(token_key(&token), encoded(&admin_record("generated at first start"))?),
        TxnOp::put(BOOTSTRAP_KEY, marker),
    ]);
    let response = store.txn(txn).await.map_err(ServerError::store("bootstrapping the admin token"))?;
    if !response.succeeded {
        return Ok(Bootstrap::AlreadyDone);
    }
    let file = data_dir.join(ADMIN_TOKEN_FILE);
    if let Err(error) = write_secret(&file, &token) {
        // The token is in the store already; the console print is then its only copy.
        warn!(file = %file.display(), %error, "the admin token could not be written to its file");
    }
    info!(file = %file.display(), "admin token generated (printed once on the console)");
    Ok(Bootstrap::Generated { token, file })
}

/// Writes a secret readable by its owner only (mode 0600, also when the file existed).
fn write_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(secret.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

/// The console block of a first start: the token once, and a quick start.
pub fn first_start_banner(token: &str, file: &Path, base_url: &str) -> String {
    let file = file.display();
    format!(
        "\nswitchboard: first start: an admin token was generated and written to {file} (mode 0600).\n\
         switchboard: it is shown here once:\n\n    {token}\n\n\
         Quick start:\n\
         \x20 export SWITCHBOARD_TOKEN=$(cat {file})\n\
         \x20 curl -X PUT -H \"Authorization: Bearer $SWITCHBOARD_TOKEN\" --data-binary 'hello' {base_url}/api/v1/kv/greeting\n\
         \x20 curl -H \"Authorization: Bearer $SWITCHBOARD_TOKEN\" {base_url}/api/v1/kv/greeting\n\
         \x20 curl -N -H \"Authorization: Bearer $SWITCHBOARD_TOKEN\" '{base_url}/api/v1/watch?key=greeting'\n\n\
         or with the CLI (it reads SWITCHBOARD_TOKEN and SWITCHBOARD_ENDPOINT):\n\
         \x20 export SWITCHBOARD_ENDPOINT={base_url}\n\
         \x20 switchboard kv put greeting hello\n\
         \x20 switchboard kv get greeting\n\
         \x20 switchboard kv watch greeting\n"
    )
}
