//! `switchboard config get|list|publish|delete|history|diff|rollback|watch|gray|promote|abort|export|import`: the config
//! center's native API from the command line. `publish` reads a file (or `-` for stdin)
//! and infers the format from the file's extension; `-o json` prints the API's JSON.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::{ApiClient, ClientArgs, Output};
use crate::sse::SseParser;
use crate::table;

#[derive(clap::Args)]
pub struct ConfigArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The namespace.
    #[arg(long, global = true, default_value = "public")]
    ns: String,
    /// The group.
    #[arg(long, global = true, default_value = "DEFAULT_GROUP")]
    group: String,
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(clap::Subcommand)]
enum ConfigCommand {
    /// Print a config's content (-o json: with its version and metadata).
    Get {
        data_id: String,
        /// Read as a client with these gray-release labels (`env=canary,zone=a`).
        #[arg(long)]
        labels: Option<String>,
    },
    /// List the namespace's configs (of --group only with --only-group).
    #[command(alias = "ls")]
    List {
        #[arg(long)]
        only_group: bool,
    },
    /// Publish a file (`-` reads stdin); the format comes from the extension unless --format.
    Publish {
        data_id: String,
        file: String,
        /// text, json, yaml, toml, properties, xml or html.
        #[arg(long)]
        format: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// Publish only if the config is at this version (0: only if it does not exist).
        #[arg(long)]
        if_match: Option<i64>,
        /// A JSON Schema file the content (json, yaml, toml) must match from now on.
        #[arg(long)]
        schema: Option<String>,
        /// Seal the config at rest with the master key (`--secret=false` unseals it); by
        /// default a config keeps what it was.
        #[arg(long, num_args = 0..=1, default_missing_value = "true")]
        secret: Option<bool>,
    },
    /// The master key secrets are sealed with, and how many history entries each key still
    /// seals (a key at 0 can be retired).
    Keys,
    /// Delete a config (recorded in its history).
    #[command(alias = "rm")]
    Delete {
        data_id: String,
        #[arg(long)]
        if_match: Option<i64>,
    },
    /// List a config's versions, newest first (or print one with --version).
    History {
        data_id: String,
        #[arg(long)]
        version: Option<i64>,
        #[arg(long, default_value_t = 1)]
        page: usize,
        #[arg(long, default_value_t = 20)]
        page_size: usize,
    },
    /// A unified diff from version FROM to version TO (default: the current version).
    Diff { data_id: String, from: i64, to: Option<i64> },
    /// Publish an old version's content again.
    Rollback {
        data_id: String,
        version: i64,
        #[arg(long)]
        if_match: Option<i64>,
    },
    /// Print a line for every publish and delete of a config, until interrupted.
    Watch { data_id: String },
    /// Publish FILE as the gray version for --ips and/or --labels; without FILE, print the
    /// current gray version.
    Gray {
        data_id: String,
        file: Option<String>,
        /// Client IPs that get the gray version (comma-separated).
        #[arg(long)]
        ips: Option<String>,
        /// Labels a client must carry to get it (`env=canary,zone=a`).
        #[arg(long)]
        labels: Option<String>,
    },
    /// Make the gray version the main version (a new publish).
    Promote { data_id: String },
    /// End the gray release; everyone reads the main version again.
    Abort { data_id: String },
    /// Export the namespace's configs (of --group only with --only-group) as one YAML file,
    /// or as a Nacos console export zip (`--format zip`).
    Export {
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<String>,
        #[arg(long)]
        only_group: bool,
        /// yaml (Switchboard's, with tags and schemas) or zip (Nacos's console format).
        #[arg(long, default_value = "yaml")]
        format: String,
    },
    /// Import an export file (`-` reads stdin) into --ns: a Switchboard YAML export or a
    /// Nacos console export zip. Every entry is validated before any write; nothing is
    /// written if one is bad.
    Import {
        file: String,
        /// What to do with a config that exists with other content: skip, overwrite or abort.
        #[arg(long, default_value = "abort")]
        policy: String,
        /// Show a progress bar while the server writes (the default when stderr is a
        /// terminal); `--progress=false` turns it off.
        #[arg(long, num_args = 0..=1, default_missing_value = "true")]
        progress: Option<bool>,
    },
}

/// `json` for `app.json`, `yaml` for `app.yml`; text for anything unknown.
fn format_of(file: &str) -> &'static str {
    let extension = Path::new(file).extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match extension.as_str() {
        "json" => "json",
        "yaml" | "yml" => "yaml",
        "toml" => "toml",
        "properties" => "properties",
        "xml" => "xml",
        "html" | "htm" => "html",
        _ => "text",
    }
}

fn read_input(file: &str) -> anyhow::Result<String> {
    if file == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("reading the content from stdin")?;
        return Ok(text);
    }
    std::fs::read_to_string(file).with_context(|| format!("reading {file}"))
}

fn read_input_bytes(file: &str) -> anyhow::Result<Vec<u8>> {
    if file == "-" {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes).context("reading the file from stdin")?;
        return Ok(bytes);
    }
    std::fs::read(file).with_context(|| format!("reading {file}"))
}

/// Reads an import's JSON lines (`progress`, then `report` or `error`), drawing a progress
/// bar on stderr (hidden when stderr is not a terminal), and returns the report.
async fn import_with_progress(client: &ApiClient, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
    let mut response = client.send(request).await?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("importing {bar:40} {pos}/{len} configs ({elapsed})")
            .context("the progress bar's template")?,
    );
    let mut pending = Vec::new();
    loop {
        let chunk = response.chunk().await.context("reading the import's progress")?;
        let Some(chunk) = chunk else {
            bar.abandon();
            bail!("the server closed the import's progress stream before its report");
        };
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let value: Value = serde_json::from_slice(&line).context("the import's progress is not JSON")?;
            if let Some(progress) = value.get("progress") {
                bar.set_length(progress["planned"].as_u64().unwrap_or(0));
                bar.set_position(progress["written"].as_u64().unwrap_or(0));
            } else if let Some(report) = value.get("report") {
                bar.finish();
                return Ok(report.clone());
            } else if let Some(error) = value.get("error") {
                bar.abandon();
                bail!("{}", error["message"].as_str().unwrap_or("the import failed"));
            }
        }
    }
}

/// Names are letters, digits and `-_.:`; anything else is escaped and the server refuses it
/// with a message naming the rule.
fn segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b':' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

pub async fn run(args: ConfigArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(&args.client.connect, &args.client.data_dir)?;
    let output = args.client.output;
    let base = format!("/api/v1/namespaces/{}/configs", segment(&args.ns));
    let item = |data_id: &str| format!("{base}/{}/{}", segment(&args.group), segment(data_id));
    let with_if_match = |request: reqwest::RequestBuilder, if_match: Option<i64>| match if_match {
        Some(version) => request.header("If-Match", version.to_string()),
        None => request,
    };
    match args.command {
        ConfigCommand::Get { data_id, labels } => {
            let mut request = client.request(Method::GET, &item(&data_id));
            if let Some(labels) = labels {
                request = request.header("X-Switchboard-Labels", labels);
            }
            let value = client.call(request).await?;
            match output {
                Output::Json => println!("{value}"),
                _ => print!("{}", value["content"].as_str().unwrap_or_default()),
            }
        }
        ConfigCommand::List { only_group } => {
            let path =
                if only_group { format!("{base}?group={}", segment(&args.group)) } else { base.clone() };
            let value = client.call(client.request(Method::GET, &path)).await?;
            if output == Output::Json {
                println!("{value}");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = value["items"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|i| {
                    vec![
                        i["group"].as_str().unwrap_or_default().to_owned(),
                        i["data_id"].as_str().unwrap_or_default().to_owned(),
                        i["format"].as_str().unwrap_or_default().to_owned(),
                        i["version"].to_string(),
                        i["size"].to_string(),
                        i["md5"].as_str().unwrap_or_default().to_owned(),
                    ]
                })
                .collect();
            table::print(&["GROUP", "DATA ID", "FORMAT", "VERSION", "SIZE", "MD5"], &rows);
        }
        ConfigCommand::Publish { data_id, file, format, description, if_match, schema, secret } => {
            let content = read_input(&file)?;
            let format = format.unwrap_or_else(|| format_of(&file).to_owned());
            let mut body = json!({"content": content, "format": format});
            if let Some(secret) = secret {
                body["secret"] = Value::Bool(secret);
            }
            if let Some(description) = description {
                body["description"] = Value::String(description);
            }
            if let Some(schema) = schema {
                let text = std::fs::read_to_string(&schema).with_context(|| format!("reading {schema}"))?;
                body["schema"] =
                    serde_json::from_str(&text).with_context(|| format!("{schema} is not valid JSON"))?;
            }
            let request = client
                .request(Method::PUT, &item(&data_id))
                .header("content-type", "application/json")
                .body(body.to_string());
            let value = client.call(with_if_match(request, if_match)).await?;
            match output {
                Output::Json => println!("{value}"),
                _ => println!(
                    "published {} version {} md5 {}",
                    data_id,
                    value["version"],
                    value["md5"].as_str().unwrap_or_default()
                ),
            }
        }
        ConfigCommand::Keys => {
            let value = client.call(client.request(Method::GET, "/api/v1/config-keys")).await?;
            match output {
                Output::Json => println!("{value}"),
                _ => {
                    println!("active key: {}", value["active"].as_str().unwrap_or_default());
                    if let Some(keys) = value["entries_by_key"].as_object() {
                        for (id, count) in keys {
                            println!("{id}\t{count} entries");
                        }
                    }
                }
            }
        }
        ConfigCommand::Delete { data_id, if_match } => {
            let request = client.request(Method::DELETE, &item(&data_id));
            let value = client.call(with_if_match(request, if_match)).await?;
            match output {
                Output::Json => println!("{value}"),
                _ => println!("deleted {} at revision {}", data_id, value["revision"]),
            }
        }
        ConfigCommand::History { data_id, version: Some(version), .. } => {
            let value = client
                .call(client.request(Method::GET, &format!("{}/history/{version}", item(&data_id))))
                .await?;
            match output {
                Output::Json => println!("{value}"),
                _ => print!("{}", value["content"].as_str().unwrap_or_default()),
            }
        }
        ConfigCommand::History { data_id, version: None, page, page_size } => {
            let path = format!("{}/history?page={page}&page_size={page_size}", item(&data_id));
            let value = client.call(client.request(Method::GET, &path)).await?;
            if output == Output::Json {
                println!("{value}");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = value["entries"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|e| {
                    let op = match e["rolled_back_from"].as_i64() {
                        Some(from) => format!("rollback to {from}"),
                        None => e["op"].as_str().unwrap_or_default().to_owned(),
                    };
                    vec![
                        e["version"].to_string(),
                        op,
                        e["format"].as_str().unwrap_or_default().to_owned(),
                        e["size"].to_string(),
                        e["author"].as_str().unwrap_or_default().to_owned(),
                        e["md5"].as_str().unwrap_or_default().to_owned(),
                    ]
                })
                .collect();
            table::print(&["VERSION", "OP", "FORMAT", "SIZE", "AUTHOR", "MD5"], &rows);
            println!("{} version(s) in all", value["total"]);
        }
        ConfigCommand::Diff { data_id, from, to } => {
            let mut path = format!("{}/diff?from={from}", item(&data_id));
            if let Some(to) = to {
                path.push_str(&format!("&to={to}"));
            }
            let value = client.call(client.request(Method::GET, &path)).await?;
            match output {
                Output::Json => println!("{value}"),
                _ => print!("{}", value["diff"].as_str().unwrap_or_default()),
            }
        }
        ConfigCommand::Rollback { data_id, version, if_match } => {
            let request = client
                .request(Method::POST, &format!("{}/rollback", item(&data_id)))
                .header("content-type", "application/json")
                .body(json!({"version": version}).to_string());
            let value = client.call(with_if_match(request, if_match)).await?;
            match output {
                Output::Json => println!("{value}"),
                _ => {
                    println!("rolled {} back to version {version}: now version {}", data_id, value["version"])
                }
            }
        }
        ConfigCommand::Watch { data_id } => watch(&client, output, &item(&data_id)).await?,
        ConfigCommand::Gray { data_id, file: None, .. } => {
            let value = client.call(client.request(Method::GET, &format!("{}/gray", item(&data_id)))).await?;
            match output {
                Output::Json => println!("{value}"),
                _ => {
                    println!("gray version {} for {}", value["version"], value["selector"]);
                    print!("{}", value["content"].as_str().unwrap_or_default());
                }
            }
        }
        ConfigCommand::Gray { data_id, file: Some(file), ips, labels } => {
            let content = read_input(&file)?;
            let mut body = json!({"content": content});
            if let Some(ips) = ips {
                body["ips"] = Value::String(ips);
            }
            if let Some(labels) = labels {
                body["labels"] = Value::String(labels);
            }
            let request = client
                .request(Method::PUT, &format!("{}/gray", item(&data_id)))
                .header("content-type", "application/json")
                .body(body.to_string());
            let value = client.call(request).await?;
            match output {
                Output::Json => println!("{value}"),
                _ => println!(
                    "published gray {} version {} md5 {}",
                    data_id,
                    value["version"],
                    value["md5"].as_str().unwrap_or_default()
                ),
            }
        }
        ConfigCommand::Promote { data_id } => {
            let value =
                client.call(client.request(Method::POST, &format!("{}/promote", item(&data_id)))).await?;
            match output {
                Output::Json => println!("{value}"),
                _ => println!("promoted the gray {}: now version {}", data_id, value["version"]),
            }
        }
        ConfigCommand::Export { out, only_group, format } => {
            let mut path = format!(
                "/api/v1/namespaces/{}/configs-export?format={}",
                segment(&args.ns),
                segment(&format)
            );
            if only_group {
                path.push_str(&format!("&group={}", segment(&args.group)));
            }
            let response = client.send(client.request(Method::GET, &path)).await?;
            let bytes = response.bytes().await.context("reading the export")?;
            match out {
                Some(out) => std::fs::write(&out, &bytes).with_context(|| format!("writing {out}"))?,
                None => std::io::stdout().write_all(&bytes).context("writing the export")?,
            }
        }
        ConfigCommand::Import { file, policy, progress } => {
            let bytes = read_input_bytes(&file)?;
            let progress = progress.unwrap_or_else(|| std::io::IsTerminal::is_terminal(&std::io::stderr()));
            let path = format!(
                "/api/v1/namespaces/{}/configs-import?policy={}&progress={progress}",
                segment(&args.ns),
                segment(&policy)
            );
            let content_type = if bytes.starts_with(b"PK") { "application/zip" } else { "application/yaml" };
            let request =
                client.request(Method::POST, &path).header("content-type", content_type).body(bytes);
            let value = if progress {
                import_with_progress(&client, request).await?
            } else {
                client.call(request).await?
            };
            let count = |field: &str| value[field].as_array().map_or(0, Vec::len);
            match output {
                Output::Json => println!("{value}"),
                _ => println!(
                    "imported {} config(s): {} created, {} overwritten, {} skipped, {} unchanged, in {} batch(es)",
                    value["total"],
                    count("created"),
                    count("overwritten"),
                    count("skipped"),
                    count("unchanged"),
                    value["batches"]
                ),
            }
        }
        ConfigCommand::Abort { data_id } => {
            let value =
                client.call(client.request(Method::DELETE, &format!("{}/gray", item(&data_id)))).await?;
            match output {
                Output::Json => println!("{value}"),
                _ => println!("aborted the gray release of {} at revision {}", data_id, value["revision"]),
            }
        }
    }
    Ok(())
}

async fn watch(client: &ApiClient, output: Output, item: &str) -> anyhow::Result<()> {
    let mut response = client.send(client.request(Method::GET, &format!("{item}/watch"))).await?;
    let mut parser = SseParser::default();
    let stdout = std::io::stdout();
    while let Some(chunk) = response.chunk().await.context("reading the watch stream")? {
        for event in parser.push(&chunk) {
            let data: Value = serde_json::from_str(&event.data)
                .with_context(|| format!("a watch event is not JSON: {:.200}", event.data))?;
            let line = match (output, event.event.as_str()) {
                (Output::Json, _) => data.to_string(),
                (_, "publish") => format!(
                    "PUBLISH version {} md5 {} format {} size {}",
                    data["version"],
                    data["md5"].as_str().unwrap_or_default(),
                    data["format"].as_str().unwrap_or_default(),
                    data["size"]
                ),
                (_, "delete") => "DELETE".to_owned(),
                (_, other) => bail!("unexpected watch event {other:?}"),
            };
            let mut out = stdout.lock();
            writeln!(out, "{line}")?;
            out.flush()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_come_from_extensions() {
        assert_eq!(format_of("app.yml"), "yaml");
        assert_eq!(format_of("dir.d/app.JSON"), "json");
        assert_eq!(format_of("notes"), "text");
        assert_eq!(format_of("-"), "text");
    }
}
