//! `switchboard kv get|put|del|ls|watch`: the operator KV API from the command line. The
//! options mirror the API's parameters; `-o json` prints the API's JSON unchanged.

use std::io::{Read, Write};

use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::Value;

use crate::client::{key_path, query_value, ApiClient, ClientArgs, Output};
use crate::sse::SseParser;
use crate::table;

#[derive(clap::Args)]
pub struct KvArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: KvCommand,
}

#[derive(clap::Subcommand)]
enum KvCommand {
    /// Print one key.
    Get {
        key: String,
        /// Read the key as it was at this revision.
        #[arg(long)]
        revision: Option<i64>,
    },
    /// Write a key; without VALUE, the value is read from standard input.
    Put {
        key: String,
        value: Option<String>,
        /// Attach the key to this lease (it is deleted when the lease ends).
        #[arg(long)]
        lease: Option<String>,
        /// Write only if the key's mod revision is this (0: only if it does not exist).
        #[arg(long)]
        if_match: Option<i64>,
    },
    /// Delete a key, or every key under a prefix.
    #[command(alias = "delete", alias = "rm")]
    Del {
        key: String,
        /// Delete every key that starts with KEY.
        #[arg(long, conflicts_with = "if_match")]
        prefix: bool,
        /// Delete only if the key's mod revision is this.
        #[arg(long)]
        if_match: Option<i64>,
    },
    /// List keys under a prefix (every key without one).
    #[command(alias = "list")]
    Ls {
        prefix: Option<String>,
        /// Show at most this many keys.
        #[arg(long)]
        limit: Option<u64>,
        /// List the keys as they were at this revision.
        #[arg(long)]
        revision: Option<i64>,
    },
    /// Print one line per change of a key (or prefix) until interrupted.
    Watch {
        key: String,
        /// Watch every key that starts with KEY.
        #[arg(long)]
        prefix: bool,
        /// Replay the changes from this revision on first.
        #[arg(long)]
        from_revision: Option<i64>,
    },
}

pub async fn run(args: KvArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(&args.client.connect, &args.client.data_dir)?;
    let output = args.client.output;
    match args.command {
        KvCommand::Get { key, revision } => {
            let mut query = Query::default();
            query.push_opt("revision", revision);
            let path = format!("/api/v1/kv/{}{}", key_path(&key), query.finish());
            let kv = client.call(client.request(Method::GET, &path)).await?;
            print_kvs(output, &kv, std::slice::from_ref(&kv));
        }
        KvCommand::Put { key, value, lease, if_match } => {
            let value = match value {
                Some(value) => value.into_bytes(),
                None => {
                    let mut value = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut value)
                        .context("reading the value from standard input")?;
                    value
                }
            };
            let mut query = Query::default();
            query.push_opt("lease", lease);
            let path = format!("/api/v1/kv/{}{}", key_path(&key), query.finish());
            let mut request = client.request(Method::PUT, &path).body(value);
            if let Some(revision) = if_match {
                request = request.header("If-Match", format!("\"{revision}\""));
            }
            let answer = client.call(request).await?;
            print_or(output, &answer, || format!("put {key} at revision {}", answer["revision"]));
        }
        KvCommand::Del { key, prefix, if_match } => {
            let mut query = Query::default();
            if prefix {
                query.push("prefix", "true");
            }
            let path = format!("/api/v1/kv/{}{}", key_path(&key), query.finish());
            let mut request = client.request(Method::DELETE, &path);
            if let Some(revision) = if_match {
                request = request.header("If-Match", format!("\"{revision}\""));
            }
            let answer = client.call(request).await?;
            print_or(output, &answer, || {
                let deleted = answer["deleted"].as_u64().unwrap_or(0);
                let noun = if deleted == 1 { "key" } else { "keys" };
                format!("deleted {deleted} {noun} at revision {}", answer["revision"])
            });
        }
        KvCommand::Ls { prefix, limit, revision } => {
            let prefix = prefix.unwrap_or_default();
            let mut query = Query::default();
            query.push_opt("limit", limit);
            query.push_opt("revision", revision);
            let path = if prefix.is_empty() {
                format!("/api/v1/kv{}", query.finish())
            } else {
                query.push("prefix", "true");
                format!("/api/v1/kv/{}{}", key_path(&prefix), query.finish())
            };
            let list = client.call(client.request(Method::GET, &path)).await?;
            let kvs = list["kvs"].as_array().cloned().unwrap_or_default();
            print_kvs(output, &list, &kvs);
            if output == Output::Table {
                let count = list["count"].as_u64().unwrap_or(0);
                if kvs.is_empty() {
                    println!("no keys under {prefix:?} at revision {}", list["revision"]);
                } else if list["more"].as_bool() == Some(true) {
                    println!("({} of {count} keys shown; raise --limit for more)", kvs.len());
                }
            }
        }
        KvCommand::Watch { key, prefix, from_revision } => {
            watch(&client, output, &key, prefix, from_revision).await?
        }
    }
    Ok(())
}

/// Streams the watch until the server ends it or the user interrupts: one line per event.
async fn watch(
    client: &ApiClient,
    output: Output,
    key: &str,
    prefix: bool,
    from_revision: Option<i64>,
) -> anyhow::Result<()> {
    let mut query = Query::default();
    query.push("key", &query_value(key));
    if prefix {
        query.push("prefix", "true");
    }
    query.push_opt("from_revision", from_revision);
    let path = format!("/api/v1/watch{}", query.finish());
    let mut response = client.send(client.request(Method::GET, &path)).await?;
    let mut parser = SseParser::default();
    let mut last_revision = from_revision.map(|r| r - 1);
    let stdout = std::io::stdout();
    while let Some(chunk) = response.chunk().await.context("reading the watch stream")? {
        for event in parser.push(&chunk) {
            if event.event == "error" {
                let error: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
                let message = error["error"]["message"].as_str().unwrap_or(&event.data);
                bail!("the watch failed: {message}");
            }
            let kv: Value = serde_json::from_str(&event.data)
                .with_context(|| format!("a watch event is not JSON: {:.200}", event.data))?;
            if let Some(revision) = event.id.as_deref().and_then(|id| id.parse().ok()) {
                last_revision = Some(revision);
            }
            let line = match output {
                Output::Json => serde_json::json!({"type": event.event, "kv": kv}).to_string(),
                Output::Table => watch_line(&event.event, &kv),
            };
            let mut out = stdout.lock();
            // A closed pipe (`| head`) ends the watch quietly.
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                return Ok(());
            }
        }
    }
    match last_revision {
        Some(revision) => {
            bail!(
                "the server ended the watch (is it stopping?); resume with --from-revision {}",
                revision + 1
            )
        }
        None => bail!("the server ended the watch (is it stopping?)"),
    }
}

/// `<revision> PUT <key> <value>`, or `<revision> DELETE <key>`.
fn watch_line(event: &str, kv: &Value) -> String {
    let key = kv["key"].as_str().unwrap_or_default();
    let revision = &kv["mod_revision"];
    if event == "delete" {
        return format!("{revision} DELETE {key}");
    }
    let value = table::cell_value(
        kv["value"].as_str().unwrap_or_default(),
        kv["value_encoding"].as_str().unwrap_or("utf8"),
    );
    format!("{revision} {} {key} {value}", event.to_ascii_uppercase())
}

fn print_kvs(output: Output, answer: &Value, kvs: &[Value]) {
    if output == Output::Json {
        println!("{answer}");
        return;
    }
    if kvs.is_empty() {
        return;
    }
    let rows: Vec<Vec<String>> = kvs
        .iter()
        .map(|kv| {
            vec![
                kv["key"].as_str().unwrap_or_default().to_owned(),
                kv["mod_revision"].to_string(),
                kv["version"].to_string(),
                kv["lease"].as_str().unwrap_or("-").to_owned(),
                table::cell_value(
                    kv["value"].as_str().unwrap_or_default(),
                    kv["value_encoding"].as_str().unwrap_or("utf8"),
                ),
            ]
        })
        .collect();
    table::print(&["KEY", "MOD_REVISION", "VERSION", "LEASE", "VALUE"], &rows);
}

fn print_or(output: Output, answer: &Value, line: impl FnOnce() -> String) {
    match output {
        Output::Json => println!("{answer}"),
        Output::Table => println!("{}", line()),
    }
}

/// A query string built from already-encoded values.
#[derive(Default)]
struct Query(Vec<String>);

impl Query {
    fn push(&mut self, name: &str, value: &str) {
        self.0.push(format!("{name}={value}"));
    }

    fn push_opt(&mut self, name: &str, value: Option<impl ToString>) {
        if let Some(value) = value {
            self.push(name, &query_value(&value.to_string()));
        }
    }

    fn finish(&self) -> String {
        if self.0.is_empty() {
            String::new()
        } else {
            format!("?{}", self.0.join("&"))
        }
    }
}
