//! `switchboard lock acquire|release|renew|status|put|run`: locks from the command line.
//!
//! `run` is `etcdctl lock NAME CMD`: it acquires the lock, starts CMD with the tokens in
//! its environment, renews the lease every third of its TTL, and kills CMD (SIGKILL, as
//! etcdctl) when the lock is lost: a renew refused (403/404), or no successful renew for a
//! whole TTL. When CMD exits, the lock is released and CMD's exit status is returned.

use std::time::Duration;

use anyhow::{bail, Context};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::client::{query_value, ApiClient, ClientArgs, Output};
use crate::table;

#[derive(clap::Args)]
pub struct LockArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The namespace the lock name lives in.
    #[arg(long, short = 'n', default_value = "public", global = true)]
    namespace: String,
    #[command(subcommand)]
    command: LockCommand,
}

#[derive(clap::Args, Clone)]
pub struct AcquireOptions {
    /// The lease's TTL: the lock is freed this long after the last renew (1 to 86400).
    #[arg(long, default_value_t = 30)]
    pub ttl_secs: i64,
    /// How long to wait for the lock (0: try once).
    #[arg(long, default_value_t = 30_000)]
    pub wait_ms: i64,
}

#[derive(clap::Subcommand)]
enum LockCommand {
    /// Acquire a lock; prints the fencing token and the owner token.
    Acquire {
        name: String,
        #[command(flatten)]
        options: AcquireOptions,
    },
    /// Release a lock with its owner token.
    Release {
        name: String,
        #[arg(long)]
        owner: String,
    },
    /// Renew a held lock's lease, once.
    Renew {
        name: String,
        #[arg(long)]
        owner: String,
    },
    /// Show a lock's holder and how many wait for it.
    #[command(alias = "get")]
    Status { name: String },
    /// Put a KV key only while the owner token holds the lock.
    Put {
        name: String,
        key: String,
        value: String,
        #[arg(long)]
        owner: String,
    },
    /// Hold the lock while CMD runs; CMD is killed if the lock is lost.
    Run {
        name: String,
        #[command(flatten)]
        options: AcquireOptions,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

/// A lock or election path: `/api/v1/{kind}/{name}{suffix}?namespace=…`.
pub fn path(kind: &str, name: &str, suffix: &str, namespace: &str) -> String {
    format!("/api/v1/{kind}/{}{suffix}?namespace={}", query_value(name), query_value(namespace))
}

/// An acquire or campaign: a long-poll, so the timeout follows `wait_ms`.
pub async fn acquire(client: &ApiClient, path: &str, body: Value, wait_ms: i64) -> anyhow::Result<Value> {
    let timeout = Duration::from_millis(wait_ms.max(0) as u64) + Duration::from_secs(30);
    let request = client
        .request(Method::POST, path)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .timeout(timeout);
    let response = client.send(request).await?;
    let text = response.text().await.context("reading the server's answer")?;
    serde_json::from_str(&text).with_context(|| format!("the server's answer is not JSON: {text:.200}"))
}

fn post(client: &ApiClient, path: &str, body: Value) -> reqwest::RequestBuilder {
    client
        .request(Method::POST, path)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
}

pub fn text(value: &Value) -> String {
    value.as_str().map_or_else(|| value.to_string(), str::to_owned)
}

pub async fn run(args: LockArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(&args.client.connect, &args.client.data_dir)?;
    let output = args.client.output;
    let ns = &args.namespace;
    let answer = match &args.command {
        LockCommand::Acquire { name, options } => {
            let body = json!({ "ttl_secs": options.ttl_secs, "wait_ms": options.wait_ms });
            acquire(&client, &path("locks", name, "/acquire", ns), body, options.wait_ms).await?
        }
        LockCommand::Release { name, owner } => {
            client
                .call(post(&client, &path("locks", name, "/release", ns), json!({ "owner": owner })))
                .await?
        }
        LockCommand::Renew { name, owner } => {
            client.call(post(&client, &path("locks", name, "/renew", ns), json!({ "owner": owner }))).await?
        }
        LockCommand::Status { name } => {
            client.call(client.request(Method::GET, &path("locks", name, "", ns))).await?
        }
        LockCommand::Put { name, key, value, owner } => {
            let body = json!({ "owner": owner, "key": key, "value": value });
            client.call(post(&client, &path("locks", name, "/put", ns), body)).await?
        }
        LockCommand::Run { name, options, command } => {
            let code = run_command(&client, name, ns, options, command).await?;
            std::process::exit(code);
        }
    };
    match (output, &args.command) {
        (Output::Json, _) => println!("{answer}"),
        (Output::Table, LockCommand::Acquire { .. }) => table::print(
            &["TOKEN", "OWNER", "LEASE", "TTL_SECS"],
            &[vec![
                text(&answer["token"]),
                text(&answer["owner"]),
                text(&answer["lease"]),
                text(&answer["ttl_secs"]),
            ]],
        ),
        (Output::Table, LockCommand::Release { name, .. }) => {
            println!("released lock {name} (token {})", text(&answer["token"]))
        }
        (Output::Table, LockCommand::Renew { .. }) => println!("renewed for {} s", text(&answer["ttl_secs"])),
        (Output::Table, LockCommand::Status { .. }) => table::print(
            &["HOLDER", "TOKEN", "LEASE", "WAITERS"],
            &[vec![
                text(&answer["holder"]["subject"]),
                text(&answer["holder"]["token"]),
                text(&answer["holder"]["lease"]),
                text(&answer["waiters"]),
            ]],
        ),
        (Output::Table, LockCommand::Put { key, .. }) => {
            println!(
                "put {key} at revision {} under token {}",
                text(&answer["revision"]),
                text(&answer["token"])
            )
        }
        (Output::Table, LockCommand::Run { .. }) => {}
    }
    Ok(())
}

/// Why holding ended.
pub enum Lost {
    /// The server refused a renew: the lease expired or the lock was taken over.
    Refused(String),
    /// No renew succeeded for a whole TTL.
    Unreachable(String),
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lost::Refused(why) => write!(f, "the server refused to renew it: {why}"),
            Lost::Unreachable(why) => write!(f, "no renew succeeded for a whole TTL: {why}"),
        }
    }
}

/// Renews every third of the TTL until the lock is lost (never returns otherwise).
pub async fn keep_renewing(client: &ApiClient, renew_path: &str, owner: &str, ttl_secs: i64) -> Lost {
    let ttl = Duration::from_secs(ttl_secs.max(1) as u64);
    let period = (ttl / 3).max(Duration::from_millis(300));
    let mut last_ok = Instant::now();
    loop {
        tokio::time::sleep(period).await;
        let request = post(client, renew_path, json!({ "owner": owner })).timeout(period);
        let failure = match request.send().await {
            Ok(response) if response.status().is_success() => {
                last_ok = Instant::now();
                continue;
            }
            Ok(response) if matches!(response.status(), StatusCode::FORBIDDEN | StatusCode::NOT_FOUND) => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                let message: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                let message = message["error"]["message"].as_str().map_or(body.clone(), str::to_owned);
                return Lost::Refused(format!("{message} ({})", status.as_u16()));
            }
            Ok(response) => format!("the server answered {}", response.status()),
            Err(error) => error.to_string(),
        };
        if last_ok.elapsed() >= ttl {
            return Lost::Unreachable(failure);
        }
        eprintln!("switchboard: renewing failed ({failure}); retrying");
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn interrupted() -> anyhow::Result<i32> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    Ok(tokio::select! {
        _ = interrupt.recv() => 130,
        _ = terminate.recv() => 143,
    })
}

async fn run_command(
    client: &ApiClient,
    name: &str,
    ns: &str,
    options: &AcquireOptions,
    command: &[String],
) -> anyhow::Result<i32> {
    let Some((program, arguments)) = command.split_first() else { bail!("no command given after --") };
    let body = json!({ "ttl_secs": options.ttl_secs, "wait_ms": options.wait_ms });
    let grant = acquire(client, &path("locks", name, "/acquire", ns), body, options.wait_ms).await?;
    let (token, owner) = (text(&grant["token"]), text(&grant["owner"]));
    let ttl_secs = grant["ttl_secs"].as_i64().unwrap_or(options.ttl_secs);
    eprintln!("switchboard: holding lock {name} with fencing token {token}");
    let mut child = tokio::process::Command::new(program)
        .args(arguments)
        .env("SWITCHBOARD_LOCK_NAME", name)
        .env("SWITCHBOARD_LOCK_NAMESPACE", ns)
        .env("SWITCHBOARD_LOCK_TOKEN", &token)
        .env("SWITCHBOARD_LOCK_OWNER", &owner)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let renew_path = path("locks", name, "/renew", ns);
    let outcome = tokio::select! {
        status = child.wait() => Ok(status.context("waiting for the command")?),
        lost = keep_renewing(client, &renew_path, &owner, ttl_secs) => Err((lost, 1)),
        code = interrupted() => Err((Lost::Refused("interrupted".into()), code?)),
    };
    let code = match outcome {
        Ok(status) => {
            let code = status.code().unwrap_or(1);
            release(client, name, ns, &owner).await;
            return Ok(code);
        }
        Err((lost, code)) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            if code == 1 {
                eprintln!("switchboard: lost lock {name} ({lost}); killed {program}");
            } else {
                release(client, name, ns, &owner).await;
            }
            code
        }
    };
    Ok(code)
}

async fn release(client: &ApiClient, name: &str, ns: &str, owner: &str) {
    let request = post(client, &path("locks", name, "/release", ns), json!({ "owner": owner }));
    if let Err(error) = client.call(request).await {
        eprintln!("switchboard: releasing lock {name} failed ({error}); it expires with its lease");
    }
}
