//! `switchboard audit ls`: the audit log of a running node, oldest first, filtered by time
//! range, actor, resource prefix and action; `-o json` prints the API's pages unchanged.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::Value;

use crate::client::{query_value, ApiClient, ClientArgs, Output};
use crate::table;

#[derive(clap::Args)]
pub struct AuditArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(clap::Subcommand)]
enum AuditCommand {
    /// List audit records, oldest first.
    #[command(alias = "list")]
    Ls(ListArgs),
}

#[derive(clap::Args)]
struct ListArgs {
    /// Records at or after this time: Unix milliseconds, or an age such as 90s, 15m, 2h, 7d.
    #[arg(long, value_parser = parse_time)]
    from: Option<u64>,
    /// Records at or before this time (same forms as --from).
    #[arg(long, value_parser = parse_time)]
    to: Option<u64>,
    /// Only this actor's records.
    #[arg(long)]
    actor: Option<String>,
    /// Only records whose resource starts with this (for example `config/items/public/`).
    #[arg(long)]
    resource: Option<String>,
    /// Only this action (for example `config.publish`).
    #[arg(long)]
    action: Option<String>,
    /// Records per page (1 to 1000).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Continue after a previous page (its `next` token).
    #[arg(long)]
    after: Option<String>,
    /// Follow every page to the end of the range.
    #[arg(long)]
    all: bool,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Unix milliseconds, or an age (`90s`, `15m`, `2h`, `7d`) before now.
fn parse_time(text: &str) -> Result<u64, String> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 =
        number.parse().map_err(|_| format!("{text:?} is neither Unix ms nor an age like 15m"))?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{text:?}: the unit of an age is s, m, h or d")),
    };
    Ok(now_ms().saturating_sub(number.saturating_mul(unit_ms)))
}

/// `2026-11-26T13:04:05.123Z` from Unix milliseconds (UTC).
fn utc(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

fn page_path(args: &ListArgs, after: Option<&str>) -> String {
    let mut query = vec![format!("limit={}", args.limit)];
    let numbers = [("from", args.from), ("to", args.to)];
    query.extend(numbers.iter().filter_map(|(name, value)| value.map(|v| format!("{name}={v}"))));
    let texts = [("actor", &args.actor), ("resource", &args.resource), ("action", &args.action)];
    query.extend(
        texts.iter().filter_map(|(name, value)| value.as_ref().map(|v| format!("{name}={}", query_value(v)))),
    );
    if let Some(after) = after {
        query.push(format!("after={}", query_value(after)));
    }
    format!("/api/v1/audit?{}", query.join("&"))
}

pub async fn run(args: AuditArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(&args.client.connect, &args.client.data_dir)?;
    let output = args.client.output;
    let AuditCommand::Ls(list) = &args.command;
    if let (Some(from), Some(to)) = (list.from, list.to) {
        if from > to {
            bail!("--from ({}) is after --to ({})", utc(from), utc(to));
        }
    }
    let mut after = list.after.clone();
    let mut rows = Vec::new();
    loop {
        let page = client.call(client.request(Method::GET, &page_path(list, after.as_deref()))).await?;
        let records = page["records"].as_array().context("the server's page has no records array")?;
        if output == Output::Json {
            println!("{page}");
        } else {
            rows.extend(records.iter().map(row));
        }
        after = page["next"].as_str().map(str::to_owned);
        if !list.all || after.is_none() {
            break;
        }
    }
    if output == Output::Table {
        table::print(&["TIME", "REVISION", "ACTOR", "ACTION", "RESOURCE", "SOURCE"], &rows);
        if let Some(next) = after {
            eprintln!("more records: --after {next} (or --all)");
        }
    }
    Ok(())
}

fn row(record: &Value) -> Vec<String> {
    let text = |name: &str| table::cell_value(record[name].as_str().unwrap_or(""), "");
    vec![
        record["at_ms"].as_u64().map(utc).unwrap_or_default(),
        record["revision"].to_string(),
        text("actor"),
        text("action"),
        text("resource"),
        text("source_ip"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_and_print() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
        assert_eq!(parse_time("1700000000000").unwrap(), 1_700_000_000_000);
        let hour_ago = parse_time("1h").unwrap();
        assert!(now_ms() - hour_ago >= 3_600_000 && now_ms() - hour_ago < 3_700_000);
        assert!(parse_time("5w").is_err());
        assert!(parse_time("x").is_err());
    }
}
