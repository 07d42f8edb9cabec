//! `switchboard ratelimit rule put|get|ls|del`, `check`, `acquire` and `release`: the
//! rate-limit API from the command line. Options mirror the API's JSON fields; `-o json`
//! prints the API's answers unchanged.

use anyhow::Context;
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::client::{key_path, query_value, ApiClient, ClientArgs, Output};
use crate::table;

#[derive(clap::Args)]
pub struct RateLimitArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The namespace of the rules.
    #[arg(short = 'n', long, default_value = "public", global = true)]
    namespace: String,
    #[command(subcommand)]
    command: RateLimitCommand,
}

#[derive(clap::Subcommand)]
enum RateLimitCommand {
    /// Create, show, list and delete rules.
    #[command(subcommand)]
    Rule(RuleCommand),
    /// Count hits against a rule (exits 0 whether allowed or not; read `allowed`).
    Check {
        rule: String,
        /// A descriptor as KEY=VALUE (repeat: -d user=u1 -d route=/x).
        #[arg(short = 'd', long = "descriptor", value_parser = parse_pair)]
        descriptors: Vec<(String, String)>,
        #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
        hits: i64,
    },
    /// Take a permit on a concurrency rule; prints its id.
    Acquire {
        rule: String,
        #[arg(short = 'd', long = "descriptor", value_parser = parse_pair)]
        descriptors: Vec<(String, String)>,
    },
    /// Give a permit back.
    Release {
        rule: String,
        permit_id: String,
        #[arg(short = 'd', long = "descriptor", value_parser = parse_pair)]
        descriptors: Vec<(String, String)>,
    },
}

#[derive(clap::Subcommand)]
enum RuleCommand {
    /// Create or replace a rule (its counters start afresh).
    Put(Box<PutRule>),
    /// Show a rule.
    Get { name: String },
    /// List the namespace's rules.
    #[command(alias = "list")]
    Ls,
    /// Delete a rule.
    #[command(alias = "delete", alias = "rm")]
    Del { name: String },
}

#[derive(clap::Args)]
struct PutRule {
    name: String,
    /// gcra, sliding_window, fixed_window or concurrency.
    #[arg(long)]
    algorithm: String,
    /// GCRA: requests per period.
    #[arg(long, allow_negative_numbers = true)]
    rate: Option<i64>,
    /// GCRA: the period of the rate [default: 1000].
    #[arg(long, allow_negative_numbers = true)]
    period_ms: Option<i64>,
    /// GCRA: requests allowed at once [default: 1].
    #[arg(long, allow_negative_numbers = true)]
    burst: Option<i64>,
    /// Windows: requests per window.
    #[arg(long, allow_negative_numbers = true)]
    limit: Option<i64>,
    /// Windows: the window's length.
    #[arg(long, allow_negative_numbers = true)]
    window_ms: Option<i64>,
    /// Concurrency: permits held at once.
    #[arg(long, allow_negative_numbers = true)]
    max_permits: Option<i64>,
    /// Concurrency: a permit not released expires after this [default: 60000].
    #[arg(long, allow_negative_numbers = true)]
    permit_ttl_ms: Option<i64>,
    /// A descriptor the rule keys on: KEY (a counter per value) or KEY=VALUE (only
    /// that value). Repeat for several.
    #[arg(short = 'd', long = "descriptor")]
    descriptors: Vec<String>,
    /// local (this node's memory) or redis (one limit across nodes).
    #[arg(long)]
    tier: Option<String>,
    /// While Redis is down: local (limit ÷ live nodes), open or closed.
    #[arg(long)]
    failure_policy: Option<String>,
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

fn descriptor_map(pairs: &[(String, String)]) -> Value {
    Value::Object(pairs.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect())
}

pub async fn run(args: RateLimitArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(&args.client.connect, &args.client.data_dir)?;
    let ns = format!("namespace={}", query_value(&args.namespace));
    let output = args.client.output;
    match &args.command {
        RateLimitCommand::Rule(command) => rule(&client, &ns, output, command).await,
        RateLimitCommand::Check { rule, descriptors, hits } => {
            let body = json!({ "rule": rule, "descriptors": descriptor_map(descriptors), "hits": hits });
            let answer = post(&client, &format!("/api/v1/ratelimit/check?{ns}"), body).await?;
            print_decision(output, &answer, &[]);
            Ok(())
        }
        RateLimitCommand::Acquire { rule, descriptors } => {
            let body = json!({ "rule": rule, "descriptors": descriptor_map(descriptors) });
            let answer = post(&client, &format!("/api/v1/ratelimit/permits/acquire?{ns}"), body).await?;
            print_decision(output, &answer, &["permit_id"]);
            Ok(())
        }
        RateLimitCommand::Release { rule, permit_id, descriptors } => {
            let body =
                json!({ "rule": rule, "descriptors": descriptor_map(descriptors), "permit_id": permit_id });
            let answer = post(&client, &format!("/api/v1/ratelimit/permits/release?{ns}"), body).await?;
            match output {
                Output::Json => println!("{answer}"),
                Output::Table => println!("released permit {permit_id} ({})", text(&answer["served_by"])),
            }
            Ok(())
        }
    }
}

async fn post(client: &ApiClient, path: &str, body: Value) -> anyhow::Result<Value> {
    let request = client
        .request(Method::POST, path)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string());
    client.call(request).await
}

async fn rule(client: &ApiClient, ns: &str, output: Output, command: &RuleCommand) -> anyhow::Result<()> {
    let answer = match command {
        RuleCommand::Put(put) => {
            let PutRule {
                name,
                algorithm,
                rate,
                period_ms,
                burst,
                limit,
                window_ms,
                max_permits,
                permit_ttl_ms,
                descriptors,
                tier,
                failure_policy,
            } = put.as_ref();
            let mut body = Map::new();
            body.insert("algorithm".into(), algorithm.clone().into());
            let numbers = [
                ("rate", rate),
                ("period_ms", period_ms),
                ("burst", burst),
                ("limit", limit),
                ("window_ms", window_ms),
                ("max_permits", max_permits),
                ("permit_ttl_ms", permit_ttl_ms),
            ];
            for (field, value) in numbers {
                if let Some(value) = value {
                    body.insert(field.into(), (*value).into());
                }
            }
            for (field, value) in [("tier", tier), ("failure_policy", failure_policy)] {
                if let Some(value) = value {
                    body.insert(field.into(), value.clone().into());
                }
            }
            let matches: Vec<Value> = descriptors
                .iter()
                .map(|d| match d.split_once('=') {
                    Some((key, value)) => json!({ "key": key, "value": value }),
                    None => json!({ "key": d }),
                })
                .collect();
            body.insert("descriptors".into(), matches.into());
            let request = client
                .request(Method::PUT, &format!("/api/v1/ratelimit/rules/{}?{ns}", key_path(name)))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(Value::Object(body).to_string());
            client.call(request).await?
        }
        RuleCommand::Get { name } => {
            let path = format!("/api/v1/ratelimit/rules/{}?{ns}", key_path(name));
            client.call(client.request(Method::GET, &path)).await?
        }
        RuleCommand::Ls => {
            client.call(client.request(Method::GET, &format!("/api/v1/ratelimit/rules?{ns}"))).await?
        }
        RuleCommand::Del { name } => {
            let path = format!("/api/v1/ratelimit/rules/{}?{ns}", key_path(name));
            client.call(client.request(Method::DELETE, &path)).await?
        }
    };
    if output == Output::Json {
        println!("{answer}");
        return Ok(());
    }
    match command {
        RuleCommand::Del { name } => {
            println!("deleted rule {name} at revision {}", text(&answer["revision"]))
        }
        RuleCommand::Ls => {
            let rules = answer["rules"].as_array().context("the server's list has no rules array")?;
            print_rules(rules);
        }
        _ => print_rules(std::slice::from_ref(&answer)),
    }
    Ok(())
}

fn print_rules(rules: &[Value]) {
    let rows: Vec<Vec<String>> = rules
        .iter()
        .map(|rule| {
            let params = ["rate", "period_ms", "burst", "limit", "window_ms", "max_permits", "permit_ttl_ms"]
                .iter()
                .filter(|field| !rule[**field].is_null())
                .map(|field| format!("{field}={}", rule[*field]))
                .collect::<Vec<_>>()
                .join(" ");
            let descriptors = rule["descriptors"]
                .as_array()
                .map(|ds| {
                    ds.iter()
                        .map(|d| match d["value"].as_str() {
                            Some(value) => format!("{}={value}", text(&d["key"])),
                            None => text(&d["key"]),
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                text(&rule["name"]),
                text(&rule["algorithm"]),
                params,
                descriptors,
                text(&rule["tier"]),
                text(&rule["failure_policy"]),
                text(&rule["revision"]),
            ]
        })
        .collect();
    table::print(
        &["NAME", "ALGORITHM", "PARAMETERS", "DESCRIPTORS", "TIER", "ON_REDIS_FAILURE", "REVISION"],
        &rows,
    );
}

fn print_decision(output: Output, answer: &Value, extra: &[&str]) {
    if output == Output::Json {
        println!("{answer}");
        return;
    }
    let mut header = vec!["ALLOWED", "REMAINING", "RESET_AFTER_MS", "RETRY_AFTER_MS", "SERVED_BY"];
    header.extend_from_slice(extra);
    let mut row: Vec<String> = ["allowed", "remaining", "reset_after_ms", "retry_after_ms", "served_by"]
        .iter()
        .map(|f| text(&answer[*f]))
        .collect();
    row.extend(extra.iter().map(|f| text(&answer[*f])));
    let header: Vec<String> = header.iter().map(|h| h.to_uppercase()).collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    table::print(&header, &[row]);
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_are_key_value_pairs() {
        assert_eq!(parse_pair("user=u1"), Ok(("user".into(), "u1".into())));
        assert_eq!(parse_pair("route=/a=b"), Ok(("route".into(), "/a=b".into())));
        assert!(parse_pair("user").is_err());
    }
}
