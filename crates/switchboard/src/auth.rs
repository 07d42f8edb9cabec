//! `switchboard auth login|whoami|user|sa|role|token|backoff` and `switchboard ns`: access
//! control from the command line, over `/api/v1/auth/…` and `/api/v1/namespaces`.
//! Passwords are read from stdin (`--password-stdin`) or `SWITCHBOARD_PASSWORD`, never
//! echoed; a minted token is printed once.

use std::io::BufRead;

use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::{query_value, ApiClient, ClientArgs, Output};
use crate::table;

#[derive(clap::Args)]
pub struct AuthArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: AuthCommand,
}

/// Where a password comes from.
#[derive(clap::Args, Clone, Debug)]
struct PasswordArgs {
    /// Read the password from the first line of stdin.
    #[arg(long)]
    password_stdin: bool,
    /// The password (visible to other local users in the process list: prefer
    /// --password-stdin).
    #[arg(long, env = "SWITCHBOARD_PASSWORD", hide_env_values = true)]
    password: Option<String>,
}

impl PasswordArgs {
    fn read(&self) -> anyhow::Result<String> {
        if self.password_stdin {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).context("reading the password from stdin")?;
            return Ok(line.trim_end_matches(['\r', '\n']).to_owned());
        }
        match &self.password {
            Some(password) => Ok(password.clone()),
            None => bail!("no password: pass --password-stdin (and pipe it) or set SWITCHBOARD_PASSWORD"),
        }
    }
}

/// A user or a service account.
#[derive(clap::Args, Clone, Debug)]
#[group(required = true, multiple = false)]
struct PrincipalArgs {
    /// A user.
    #[arg(long)]
    user: Option<String>,
    /// A service account.
    #[arg(long = "sa")]
    service_account: Option<String>,
}

impl PrincipalArgs {
    fn json(&self) -> Value {
        match (&self.user, &self.service_account) {
            (Some(user), _) => json!({ "user": user }),
            (None, Some(account)) => json!({ "service_account": account }),
            (None, None) => json!({}),
        }
    }
}

#[derive(clap::Subcommand)]
enum AuthCommand {
    /// Log in with a user name and password; prints a session token (export it as
    /// SWITCHBOARD_TOKEN).
    Login {
        #[arg(long)]
        user: String,
        #[command(flatten)]
        password: PasswordArgs,
        /// The session's lifetime [default: the server's --login-session-ttl-secs].
        #[arg(long)]
        ttl_secs: Option<i64>,
    },
    /// Who the current credential acts as, and its role bindings.
    Whoami,
    /// Users: list, create, delete, set a password.
    #[command(subcommand)]
    User(UserCommand),
    /// Service accounts (a TLS client certificate's CN acts as the account of that name).
    #[command(subcommand)]
    Sa(AccountCommand),
    /// Roles and role bindings.
    #[command(subcommand)]
    Role(RoleCommand),
    /// API tokens: list, create (shown once), revoke.
    #[command(subcommand)]
    Token(TokenCommand),
    /// This node's login backoff: list or clear.
    #[command(subcommand)]
    Backoff(BackoffCommand),
}

#[derive(clap::Subcommand)]
enum UserCommand {
    Ls,
    Create {
        name: String,
        #[command(flatten)]
        password: PasswordArgs,
        #[arg(long, default_value = "")]
        description: String,
    },
    Rm {
        name: String,
    },
    /// Set a user's password.
    Passwd {
        name: String,
        #[command(flatten)]
        password: PasswordArgs,
    },
}

#[derive(clap::Subcommand)]
enum AccountCommand {
    Ls,
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    Rm {
        name: String,
    },
}

#[derive(clap::Subcommand)]
enum RoleCommand {
    /// The built-in and custom roles.
    Ls,
    /// Create or replace a custom role from permissions `kind:action[:namespace-pattern]`
    /// (`config:read`, `lock:*:team-*`, `*:read`).
    Put {
        name: String,
        #[arg(long = "perm", required = true)]
        permissions: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    Rm {
        name: String,
    },
    /// Grant a role on a namespace pattern (`dev`, `team-*`, `*`).
    Grant {
        role: String,
        #[command(flatten)]
        principal: PrincipalArgs,
        #[arg(long, short = 'n')]
        namespace: String,
    },
    /// Remove a role binding.
    Revoke {
        role: String,
        #[command(flatten)]
        principal: PrincipalArgs,
        #[arg(long, short = 'n')]
        namespace: String,
    },
}

#[derive(clap::Subcommand)]
enum TokenCommand {
    Ls,
    /// Mint an API token for a user or service account; printed once.
    Create {
        #[command(flatten)]
        principal: PrincipalArgs,
        #[arg(long)]
        ttl_secs: Option<i64>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Revoke a token by id (refused at once on the node that revokes it).
    Revoke {
        id: String,
    },
}

#[derive(clap::Subcommand)]
enum BackoffCommand {
    Ls,
    Clear {
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        address: Option<String>,
    },
}

async fn json_call(client: &ApiClient, method: Method, path: &str, body: Value) -> anyhow::Result<Value> {
    let request = client
        .request(method, path)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string());
    client.call(request).await
}

async fn get(client: &ApiClient, path: &str) -> anyhow::Result<Value> {
    client.call(client.request(Method::GET, path)).await
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn bindings_text(bindings: &Value) -> String {
    let list = bindings.as_array().cloned().unwrap_or_default();
    list.iter()
        .map(|b| format!("{}@{}", text(&b["role"]), text(&b["namespace"])))
        .collect::<Vec<_>>()
        .join(",")
}

fn permission(spec: &str) -> anyhow::Result<Value> {
    let parts: Vec<&str> = spec.split(':').collect();
    match parts.as_slice() {
        [kind, action] => Ok(json!({"kind": kind, "action": action, "namespace": "*"})),
        [kind, action, namespace] => Ok(json!({"kind": kind, "action": action, "namespace": namespace})),
        _ => bail!("--perm {spec:?} is not kind:action[:namespace-pattern], for example config:read or lock:*:team-*"),
    }
}

pub async fn run(args: AuthArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(&args.client.connect, &args.client.data_dir)?;
    let output = args.client.output;
    let print = |answer: &Value, table_out: &dyn Fn(&Value)| match output {
        Output::Json => println!("{answer}"),
        Output::Table => table_out(answer),
    };
    match &args.command {
        AuthCommand::Login { user, password, ttl_secs } => {
            let body = json!({"username": user, "password": password.read()?, "ttl_secs": ttl_secs});
            let answer = json_call(&client, Method::POST, "/api/v1/auth/login", body).await?;
            print(&answer, &|a| {
                println!("{}", text(&a["token"]));
                eprintln!(
                    "switchboard: logged in as {} for {} s (export SWITCHBOARD_TOKEN=<the line above>)",
                    text(&a["user"]),
                    text(&a["ttl_secs"])
                );
            });
        }
        AuthCommand::Whoami => {
            let answer = get(&client, "/api/v1/auth/whoami").await?;
            print(&answer, &|a| {
                table::print(
                    &["NAME", "KIND", "TOKEN_ID", "BINDINGS", "GLOBAL_ADMIN"],
                    &[vec![
                        text(&a["name"]),
                        text(&a["kind"]),
                        text(&a["token_id"]),
                        bindings_text(&a["bindings"]),
                        text(&a["global_admin"]),
                    ]],
                )
            });
        }
        AuthCommand::User(command) => user(&client, command, &print).await?,
        AuthCommand::Sa(command) => account(&client, command, &print).await?,
        AuthCommand::Role(command) => role(&client, command, &print).await?,
        AuthCommand::Token(command) => token(&client, command, &print).await?,
        AuthCommand::Backoff(command) => backoff(&client, command, &print).await?,
    }
    Ok(())
}

type Printer<'a> = dyn Fn(&Value, &dyn Fn(&Value)) + 'a;

fn principals_table(list: &Value) {
    let rows: Vec<Vec<String>> = list
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|u| vec![text(&u["name"]), bindings_text(&u["bindings"]), text(&u["description"])])
        .collect();
    table::print(&["NAME", "BINDINGS", "DESCRIPTION"], &rows);
}

fn done(message: String) -> impl Fn(&Value) {
    move |_| println!("{message}")
}

async fn user(client: &ApiClient, command: &UserCommand, print: &Printer<'_>) -> anyhow::Result<()> {
    match command {
        UserCommand::Ls => {
            let answer = get(client, "/api/v1/auth/users").await?;
            print(&answer, &|a| principals_table(&a["users"]));
        }
        UserCommand::Create { name, password, description } => {
            let body = json!({"name": name, "password": password.read()?, "description": description});
            let answer = json_call(client, Method::POST, "/api/v1/auth/users", body).await?;
            print(&answer, &done(format!("created user {name}")));
        }
        UserCommand::Rm { name } => {
            let path = format!("/api/v1/auth/users/{}", query_value(name));
            let answer = client.call(client.request(Method::DELETE, &path)).await?;
            print(&answer, &done(format!("deleted user {name}; its tokens no longer work")));
        }
        UserCommand::Passwd { name, password } => {
            let path = format!("/api/v1/auth/users/{}/password", query_value(name));
            let answer = json_call(client, Method::PUT, &path, json!({"password": password.read()?})).await?;
            print(&answer, &done(format!("set the password of {name}")));
        }
    }
    Ok(())
}

async fn account(client: &ApiClient, command: &AccountCommand, print: &Printer<'_>) -> anyhow::Result<()> {
    match command {
        AccountCommand::Ls => {
            let answer = get(client, "/api/v1/auth/service-accounts").await?;
            print(&answer, &|a| principals_table(&a["service_accounts"]));
        }
        AccountCommand::Create { name, description } => {
            let body = json!({"name": name, "description": description});
            let answer = json_call(client, Method::POST, "/api/v1/auth/service-accounts", body).await?;
            print(&answer, &done(format!("created service account {name}")));
        }
        AccountCommand::Rm { name } => {
            let path = format!("/api/v1/auth/service-accounts/{}", query_value(name));
            let answer = client.call(client.request(Method::DELETE, &path)).await?;
            print(&answer, &done(format!("deleted service account {name}; its tokens no longer work")));
        }
    }
    Ok(())
}

async fn role(client: &ApiClient, command: &RoleCommand, print: &Printer<'_>) -> anyhow::Result<()> {
    match command {
        RoleCommand::Ls => {
            let answer = get(client, "/api/v1/auth/roles").await?;
            print(&answer, &|a| {
                let rows: Vec<Vec<String>> = a["roles"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|r| {
                        let perms: Vec<String> = r["permissions"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default()
                            .iter()
                            .map(|p| {
                                format!(
                                    "{}:{}:{}",
                                    text(&p["kind"]),
                                    text(&p["action"]),
                                    text(&p["namespace"])
                                )
                            })
                            .collect();
                        vec![text(&r["name"]), text(&r["builtin"]), perms.join(",")]
                    })
                    .collect();
                table::print(&["NAME", "BUILTIN", "PERMISSIONS"], &rows);
            });
        }
        RoleCommand::Put { name, permissions, description } => {
            let permissions =
                permissions.iter().map(|p| permission(p)).collect::<anyhow::Result<Vec<_>>>()?;
            let path = format!("/api/v1/auth/roles/{}", query_value(name));
            let body = json!({"permissions": permissions, "description": description});
            let answer = json_call(client, Method::PUT, &path, body).await?;
            print(&answer, &done(format!("role {name} is in place")));
        }
        RoleCommand::Rm { name } => {
            let path = format!("/api/v1/auth/roles/{}", query_value(name));
            let answer = client.call(client.request(Method::DELETE, &path)).await?;
            print(&answer, &done(format!("deleted role {name}")));
        }
        RoleCommand::Grant { role, principal, namespace }
        | RoleCommand::Revoke { role, principal, namespace } => {
            let grant = matches!(command, RoleCommand::Grant { .. });
            let mut body = principal.json();
            body["role"] = json!(role);
            body["namespace"] = json!(namespace);
            let method = if grant { Method::POST } else { Method::DELETE };
            let answer = json_call(client, method, "/api/v1/auth/bindings", body).await?;
            print(&answer, &|a| println!("bindings now: {}", bindings_text(&a["bindings"])));
        }
    }
    Ok(())
}

async fn token(client: &ApiClient, command: &TokenCommand, print: &Printer<'_>) -> anyhow::Result<()> {
    match command {
        TokenCommand::Ls => {
            let answer = get(client, "/api/v1/auth/tokens").await?;
            print(&answer, &|a| {
                let rows: Vec<Vec<String>> = a["tokens"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|t| {
                        vec![
                            text(&t["id"]),
                            text(&t["kind"]),
                            text(&t["name"]),
                            text(&t["session"]),
                            text(&t["expires_at_ms"]),
                            text(&t["description"]),
                        ]
                    })
                    .collect();
                table::print(&["ID", "KIND", "NAME", "SESSION", "EXPIRES_AT_MS", "DESCRIPTION"], &rows);
            });
        }
        TokenCommand::Create { principal, ttl_secs, description } => {
            let mut body = principal.json();
            body["ttl_secs"] = json!(ttl_secs);
            body["description"] = json!(description);
            let answer = json_call(client, Method::POST, "/api/v1/auth/tokens", body).await?;
            print(&answer, &|a| {
                println!("{}", text(&a["token"]));
                eprintln!(
                    "switchboard: token id {} (shown once; revoke with switchboard auth token revoke {})",
                    text(&a["id"]),
                    text(&a["id"])
                );
            });
        }
        TokenCommand::Revoke { id } => {
            let path = format!("/api/v1/auth/tokens/{}", query_value(id));
            let answer = client.call(client.request(Method::DELETE, &path)).await?;
            print(&answer, &done(format!("revoked token {id}")));
        }
    }
    Ok(())
}

async fn backoff(client: &ApiClient, command: &BackoffCommand, print: &Printer<'_>) -> anyhow::Result<()> {
    match command {
        BackoffCommand::Ls => {
            let answer = get(client, "/api/v1/auth/backoff").await?;
            print(&answer, &|a| {
                let rows: Vec<Vec<String>> = a["entries"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|e| {
                        vec![
                            text(&e["address"]),
                            text(&e["user"]),
                            text(&e["failures"]),
                            text(&e["retry_after_ms"]),
                        ]
                    })
                    .collect();
                table::print(&["ADDRESS", "USER", "FAILURES", "RETRY_AFTER_MS"], &rows);
            });
        }
        BackoffCommand::Clear { user, address } => {
            let mut query = Vec::new();
            if let Some(user) = user {
                query.push(format!("user={}", query_value(user)));
            }
            if let Some(address) = address {
                query.push(format!("address={}", query_value(address)));
            }
            let path = format!("/api/v1/auth/backoff?{}", query.join("&"));
            let answer = client.call(client.request(Method::DELETE, &path)).await?;
            print(&answer, &|a| println!("cleared {} entries", text(&a["cleared"])));
        }
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct NsArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: NsCommand,
}

#[derive(clap::Subcommand)]
enum NsCommand {
    /// Create a namespace (namespaces are also implicit on first use).
    Create {
        name: String,
        #[arg(long, default_value = "")]
        display_name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List namespaces.
    Ls,
    /// Delete a namespace's record (what lives in it stays).
    Rm { name: String },
}

pub async fn run_ns(args: NsArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(&args.client.connect, &args.client.data_dir)?;
    let answer = match &args.command {
        NsCommand::Create { name, display_name, description } => {
            let body = json!({"name": name, "display_name": display_name, "description": description});
            json_call(&client, Method::POST, "/api/v1/namespaces", body).await?
        }
        NsCommand::Ls => get(&client, "/api/v1/namespaces").await?,
        NsCommand::Rm { name } => {
            let path = format!("/api/v1/namespaces/{}", query_value(name));
            client.call(client.request(Method::DELETE, &path)).await?
        }
    };
    match (args.client.output, &args.command) {
        (Output::Json, _) => println!("{answer}"),
        (Output::Table, NsCommand::Create { name, .. }) => println!("created namespace {name}"),
        (Output::Table, NsCommand::Rm { name }) => println!("deleted namespace {name}"),
        (Output::Table, NsCommand::Ls) => {
            let rows: Vec<Vec<String>> = answer["namespaces"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|n| {
                    vec![
                        text(&n["name"]),
                        text(&n["display_name"]),
                        text(&n["configs"]),
                        text(&n["description"]),
                    ]
                })
                .collect();
            table::print(&["NAME", "DISPLAY_NAME", "CONFIGS", "DESCRIPTION"], &rows);
        }
    }
    Ok(())
}
