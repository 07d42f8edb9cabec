//! First start: the `admin` user and an admin token (`sb_auth::bootstrap` does the store
//! part, create-if-absent). This module takes the secrets from the environment, writes
//! generated ones to `<data-dir>/admin-password` and `<data-dir>/admin-token` (mode 0600),
//! and prints them once on the console: never to the structured log.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sb_auth::bootstrap::{bootstrap, BootstrapOutcome, BootstrapSecrets};
use sb_auth::AuthService;
use tracing::{info, warn};

use crate::error::{ServerError, ServerResult};

/// The file the first start writes the admin token to.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// The file the first start writes the admin password to.
pub const ADMIN_PASSWORD_FILE: &str = "admin-password";
/// The variable that sets the admin token instead of generating one.
pub const ADMIN_TOKEN_ENV: &str = "SWITCHBOARD_ADMIN_TOKEN";
/// The variable that sets the admin password instead of generating one.
pub const ADMIN_PASSWORD_ENV: &str = "SWITCHBOARD_ADMIN_PASSWORD";

#[derive(Debug)]
pub enum Bootstrap {
    /// This start bootstrapped the store; generated secrets are shown once.
    Created { token_opt: Option<(String, PathBuf)>, password_opt: Option<(String, PathBuf)> },
    /// The store was bootstrapped before (by this node or another).
    AlreadyDone,
}

/// The environment's secrets (empty values count as unset).
pub fn secrets_from_env() -> BootstrapSecrets {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    BootstrapSecrets { password_opt: var(ADMIN_PASSWORD_ENV), token_opt: var(ADMIN_TOKEN_ENV) }
}

pub async fn bootstrap_admin(
    auth: &AuthService,
    data_dir: &Path,
    node: &str,
    secrets: BootstrapSecrets,
) -> ServerResult<Bootstrap> {
    let outcome = bootstrap(auth, node, secrets).await.map_err(|error| match error {
        sb_auth::AuthError::Invalid { message, .. } => ServerError::Config(message),
        other => ServerError::Config(format!("bootstrapping the admin user: {other}")),
    })?;
    let BootstrapOutcome::Created { password_opt, token_opt } = outcome else {
        return Ok(Bootstrap::AlreadyDone);
    };
    let write = |file_name: &str, secret: String| {
        let file = data_dir.join(file_name);
        if let Err(error) = write_secret(&file, &secret) {
            // The secret is in the store already; the console print is then its only copy.
            warn!(file = %file.display(), %error, "a bootstrap secret could not be written to its file");
        }
        (secret, file)
    };
    let token_opt = token_opt.map(|t| write(ADMIN_TOKEN_FILE, t));
    let password_opt = password_opt.map(|p| write(ADMIN_PASSWORD_FILE, p));
    info!(
        user = sb_auth::bootstrap::ADMIN_USER,
        "admin user bootstrapped (generated secrets are printed once on the console)"
    );
    Ok(Bootstrap::Created { token_opt, password_opt })
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

/// The console block of a first start: the generated secrets once, and a quick start.
pub fn first_start_banner(
    token_opt: Option<&(String, PathBuf)>,
    password_opt: Option<&(String, PathBuf)>,
    base_url: &str,
) -> String {
    let mut banner = String::from("\n");
    if let Some((password, file)) = password_opt {
        banner.push_str(&format!(
            "switchboard: first start: user admin was created; its password was written to {} (mode 0600).\n\
             switchboard: it is shown here once:\n\n    {password}\n\n",
            file.display()
        ));
    }
    let Some((token, file)) = token_opt else {
        banner.push_str(&format!("switchboard: the admin token is the one in {ADMIN_TOKEN_ENV}\n"));
        return banner;
    };
    let file = file.display();
    banner.push_str(&format!(
        "switchboard: first start: an admin token was generated and written to {file} (mode 0600).\n\
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
         \x20 switchboard auth whoami\n"
    ));
    banner
}
