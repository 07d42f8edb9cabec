//! `switchboard svc register|deregister|list|get|watch|drain|beat`: the registry's native
//! API from the command line. Options mirror the API's parameters; `-o json` prints the
//! API's JSON.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::{query_value, ApiClient, ClientArgs, Output};
use crate::sse::SseParser;
use crate::table;

#[derive(clap::Args)]
pub struct SvcArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The namespace.
    #[arg(long, global = true, default_value = "public")]
    ns: String,
    /// The group.
    #[arg(long, global = true, default_value = "DEFAULT_GROUP")]
    group: String,
    #[command(subcommand)]
    command: SvcCommand,
}

#[derive(clap::Args)]
struct InstanceArg {
    service: String,
    /// The instance, as IP:PORT ([v6]:PORT for IPv6).
    instance: String,
    /// The instance's cluster.
    #[arg(long, default_value = "DEFAULT")]
    cluster: String,
}

#[derive(clap::Subcommand)]
enum SvcCommand {
    /// Register an instance (ephemeral unless --persistent: keep it alive with `svc beat`).
    Register {
        #[command(flatten)]
        target: InstanceArg,
        #[arg(long, default_value_t = 1.0)]
        weight: f64,
        /// A metadata entry KEY=VALUE (repeatable).
        #[arg(long = "metadata", value_parser = parse_pair)]
        metadata: Vec<(String, String)>,
        /// Kept until deregistered, with no heartbeat.
        #[arg(long)]
        persistent: bool,
        /// Registered disabled (clients do not pick it).
        #[arg(long)]
        disabled: bool,
    },
    /// Deregister an instance.
    #[command(alias = "dereg")]
    Deregister {
        #[command(flatten)]
        target: InstanceArg,
    },
    /// List services (without SERVICE) or one service's instances.
    #[command(alias = "ls")]
    List {
        service: Option<String>,
        /// Only instances served as healthy.
        #[arg(long)]
        healthy_only: bool,
        /// Only these clusters (comma-separated).
        #[arg(long)]
        clusters: Option<String>,
    },
    /// Print a service's settings and health summary.
    Get { service: String },
    /// Print the service's instances, then one line per change, until interrupted.
    Watch { service: String },
    /// Disable an instance now and delete it after --delay-secs.
    Drain {
        #[command(flatten)]
        target: InstanceArg,
        #[arg(long, default_value_t = 30)]
        delay_secs: u64,
    },
    /// Send a heartbeat for an ephemeral instance (with --every, until interrupted).
    Beat {
        #[command(flatten)]
        target: InstanceArg,
        /// Beat every this many seconds instead of once.
        #[arg(long)]
        every: Option<f64>,
    },
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

struct Paths<'a> {
    ns: &'a str,
    group: &'a str,
}

impl Paths<'_> {
    fn service(&self, service: &str) -> String {
        format!("/api/v1/namespaces/{}/services/{}", query_value(self.ns), query_value(service))
    }

    fn with_group(&self, path: String, extra: &str) -> String {
        format!("{path}?group={}{extra}", query_value(self.group))
    }

    fn instance(&self, target: &InstanceArg, suffix: &str) -> String {
        let path =
            format!("{}/instances/{}{suffix}", self.service(&target.service), query_value(&target.instance));
        self.with_group(path, &format!("&cluster={}", query_value(&target.cluster)))
    }
}

pub async fn run(args: SvcArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(&args.client.connect, &args.client.data_dir)?;
    let output = args.client.output;
    let paths = Paths { ns: &args.ns, group: &args.group };
    match args.command {
        SvcCommand::Register { target, weight, metadata, persistent, disabled } => {
            let (ip, port) = split_instance(&target.instance)?;
            let body = json!({
                "ip": ip, "port": port, "cluster": target.cluster, "weight": weight,
                "enabled": !disabled, "ephemeral": !persistent,
                "metadata": metadata.into_iter().collect::<BTreeMap<_, _>>(),
            });
            let path = paths.with_group(format!("{}/instances", paths.service(&target.service)), "");
            let answer = client
                .call(
                    client
                        .request(Method::POST, &path)
                        .header("content-type", "application/json")
                        .body(body.to_string()),
                )
                .await?;
            print_or(output, &answer, || {
                let kind = if persistent { "persistent" } else { "ephemeral; keep it alive with `svc beat`" };
                format!(
                    "registered {} in {} at revision {} ({kind})",
                    target.instance, target.service, answer["revision"]
                )
            });
        }
        SvcCommand::Deregister { target } => {
            let answer = client.call(client.request(Method::DELETE, &paths.instance(&target, ""))).await?;
            print_or(output, &answer, || {
                format!(
                    "deregistered {} from {} at revision {}",
                    target.instance, target.service, answer["revision"]
                )
            });
        }
        SvcCommand::List { service: None, .. } => {
            let path = format!("/api/v1/namespaces/{}/services?page_size=1000", query_value(&args.ns));
            let answer = client.call(client.request(Method::GET, &path)).await?;
            if output == Output::Json {
                println!("{answer}");
            } else {
                let rows: Vec<Vec<String>> = answer["services"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(|s| {
                        vec![
                            s["group"].as_str().unwrap_or_default().to_owned(),
                            s["service"].as_str().unwrap_or_default().to_owned(),
                            s["instance_count"].to_string(),
                            s["healthy_count"].to_string(),
                        ]
                    })
                    .collect();
                if rows.is_empty() {
                    println!("no services in namespace {}", args.ns);
                } else {
                    table::print(&["GROUP", "SERVICE", "INSTANCES", "HEALTHY"], &rows);
                }
            }
        }
        SvcCommand::List { service: Some(service), healthy_only, clusters } => {
            let mut extra = String::new();
            if healthy_only {
                extra.push_str("&healthy_only=true");
            }
            if let Some(clusters) = clusters {
                extra.push_str(&format!("&clusters={}", query_value(&clusters)));
            }
            let path = paths.with_group(format!("{}/instances", paths.service(&service)), &extra);
            let answer = client.call(client.request(Method::GET, &path)).await?;
            print_instances(output, &answer);
        }
        SvcCommand::Get { service } => {
            let answer = client
                .call(client.request(Method::GET, &paths.with_group(paths.service(&service), "")))
                .await?;
            if output == Output::Json {
                println!("{answer}");
            } else {
                let rows = vec![vec![
                    format!(
                        "{}@@{}",
                        answer["group"].as_str().unwrap_or_default(),
                        answer["service"].as_str().unwrap_or_default()
                    ),
                    answer["instance_count"].to_string(),
                    answer["healthy_count"].to_string(),
                    answer["protect_threshold"].to_string(),
                    answer["reach_protection_threshold"].to_string(),
                    answer["metadata"].to_string(),
                ]];
                table::print(
                    &["SERVICE", "INSTANCES", "HEALTHY", "PROTECT_THRESHOLD", "PROTECTING", "METADATA"],
                    &rows,
                );
            }
        }
        SvcCommand::Watch { service } => watch(&client, output, &paths, &service).await?,
        SvcCommand::Drain { target, delay_secs } => {
            let request = client
                .request(Method::POST, &paths.instance(&target, "/drain"))
                .header("content-type", "application/json")
                .body(json!({"delay_secs": delay_secs}).to_string());
            let answer = client.call(request).await?;
            print_or(output, &answer, || {
                format!("drained {}: disabled now, deleted in {delay_secs} s", target.instance)
            });
        }
        SvcCommand::Beat { target, every } => {
            let path = paths.instance(&target, "/beat");
            loop {
                let answer = client.call(client.request(Method::POST, &path)).await?;
                print_or(output, &answer, || {
                    format!("beat {} (next within {} ms)", target.instance, answer["beat_interval_ms"])
                });
                match every {
                    Some(secs) if secs > 0.0 => tokio::time::sleep(Duration::from_secs_f64(secs)).await,
                    _ => break,
                }
            }
        }
    }
    Ok(())
}

fn split_instance(instance: &str) -> anyhow::Result<(String, u16)> {
    let (ip, port) = instance.rsplit_once(':').with_context(|| format!("{instance:?} is not IP:PORT"))?;
    let port = port.parse().with_context(|| format!("port {port:?} in {instance:?} is not a number"))?;
    Ok((ip.trim_start_matches('[').trim_end_matches(']').to_owned(), port))
}

fn instance_name(i: &Value) -> String {
    let ip = i["ip"].as_str().unwrap_or_default();
    let ip = if ip.contains(':') { format!("[{ip}]") } else { ip.to_owned() };
    format!("{}/{ip}:{}", i["cluster"].as_str().unwrap_or_default(), i["port"])
}

fn print_instances(output: Output, answer: &Value) {
    if output == Output::Json {
        println!("{answer}");
        return;
    }
    let instances = answer["instances"].as_array().map(Vec::as_slice).unwrap_or_default();
    if instances.is_empty() {
        println!("no instances");
        return;
    }
    let rows: Vec<Vec<String>> = instances
        .iter()
        .map(|i| {
            vec![
                instance_name(i),
                i["healthy"].to_string(),
                i["enabled"].to_string(),
                i["weight"].to_string(),
                i["ephemeral"].to_string(),
                i["metadata"].to_string(),
            ]
        })
        .collect();
    table::print(&["INSTANCE", "HEALTHY", "ENABLED", "WEIGHT", "EPHEMERAL", "METADATA"], &rows);
    if answer["reach_protection_threshold"].as_bool() == Some(true) {
        println!("(protection threshold reached: clients are served every instance)");
    }
}

/// One line per change: `<revision> ADD|UPDATE|REMOVE <cluster>/<ip:port> healthy=… enabled=… weight=…`.
async fn watch(client: &ApiClient, output: Output, paths: &Paths<'_>, service: &str) -> anyhow::Result<()> {
    let path = paths.with_group(format!("{}/watch", paths.service(service)), "");
    let mut response = client.send(client.request(Method::GET, &path)).await?;
    let mut parser = SseParser::default();
    let mut known: BTreeMap<String, Value> = BTreeMap::new();
    let stdout = std::io::stdout();
    while let Some(chunk) = response.chunk().await.context("reading the watch stream")? {
        for event in parser.push(&chunk) {
            let list: Value = serde_json::from_str(&event.data)
                .with_context(|| format!("a watch event is not JSON: {:.200}", event.data))?;
            let mut lines = Vec::new();
            if output == Output::Json {
                lines.push(list.to_string());
            } else {
                let revision = &list["revision"];
                let now: BTreeMap<String, Value> = list["instances"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(|i| (instance_name(i), i.clone()))
                    .collect();
                let describe = |i: &Value| {
                    format!("healthy={} enabled={} weight={}", i["healthy"], i["enabled"], i["weight"])
                };
                for (name, instance) in &now {
                    match known.get(name) {
                        None => lines.push(format!("{revision} ADD {name} {}", describe(instance))),
                        Some(before) if before != instance => {
                            lines.push(format!("{revision} UPDATE {name} {}", describe(instance)))
                        }
                        Some(_) => {}
                    }
                }
                for name in known.keys().filter(|name| !now.contains_key(*name)) {
                    lines.push(format!("{revision} REMOVE {name}"));
                }
                known = now;
            }
            let mut out = stdout.lock();
            for line in lines {
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    return Ok(());
                }
            }
        }
    }
    bail!("the server ended the watch (is it stopping?)")
}

fn print_or(output: Output, answer: &Value, line: impl FnOnce() -> String) {
    match output {
        Output::Json => println!("{answer}"),
        Output::Table => println!("{}", line()),
    }
}
