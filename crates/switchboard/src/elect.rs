//! `switchboard elect NAME [VALUE]`: campaign until elected, print the leadership, renew
//! it until Ctrl-C (then resign); `--listen` prints the leader now and at every change.
//! As `etcdctl elect`.

use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::{ApiClient, ClientArgs, Output};
use crate::lock::{acquire, interrupted, keep_renewing, path, text};
use crate::sse::SseParser;

#[derive(clap::Args)]
pub struct ElectArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The namespace the election lives in.
    #[arg(long, short = 'n', default_value = "public")]
    namespace: String,
    /// The election's name.
    name: String,
    /// The value to proclaim as leader (required unless --listen).
    value: Option<String>,
    /// Print the leader now and at every change instead of campaigning.
    #[arg(long, short = 'l')]
    listen: bool,
    /// The leadership's lease TTL (1 to 86400 seconds).
    #[arg(long, default_value_t = 30)]
    ttl_secs: i64,
}

/// Each campaign call waits this long; the command campaigns again until elected.
const CAMPAIGN_WAIT_MS: i64 = 300_000;

pub async fn run(args: ElectArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(&args.client.connect, &args.client.data_dir)?;
    if args.listen {
        return listen(&client, &args).await;
    }
    let Some(value) = args.value.clone() else { bail!("give a VALUE to proclaim, or --listen to observe") };
    let campaign_path = path("elections", &args.name, "/campaign", &args.namespace);
    let body = json!({ "value": value, "ttl_secs": args.ttl_secs, "wait_ms": CAMPAIGN_WAIT_MS });
    let grant = loop {
        let campaign = acquire(&client, &campaign_path, body.clone(), CAMPAIGN_WAIT_MS);
        let answer = tokio::select! {
            answer = campaign => answer,
            _ = interrupted() => return Ok(()),
        };
        match answer {
            Ok(grant) => break grant,
            // A wait that ended (409 conflict): campaign again.
            Err(error) if error.to_string().ends_with("(409 conflict)") => continue,
            Err(error) => return Err(error),
        }
    };
    let owner = text(&grant["owner"]);
    match args.client.output {
        Output::Json => println!("{grant}"),
        Output::Table => println!("elected {} with {value:?} (token {})", args.name, text(&grant["token"])),
    }
    let renew_path = path("elections", &args.name, "/renew", &args.namespace);
    let ttl_secs = grant["ttl_secs"].as_i64().unwrap_or(args.ttl_secs);
    tokio::select! {
        lost = keep_renewing(&client, &renew_path, &owner, ttl_secs) => bail!("lost leadership of {}: {lost}", args.name),
        _ = interrupted() => {}
    }
    let resign = client
        .request(Method::POST, &path("elections", &args.name, "/resign", &args.namespace))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(json!({ "owner": owner }).to_string());
    client.call(resign).await.context("resigning")?;
    eprintln!("switchboard: resigned from {}", args.name);
    Ok(())
}

async fn listen(client: &ApiClient, args: &ElectArgs) -> anyhow::Result<()> {
    let observe = path("elections", &args.name, "/observe", &args.namespace);
    let mut response = client.send(client.request(Method::GET, &observe)).await?;
    let mut parser = SseParser::default();
    while let Some(chunk) = response.chunk().await.context("reading the leader stream")? {
        for event in parser.push(&chunk) {
            let data: Value = serde_json::from_str(&event.data)
                .with_context(|| format!("a leader event is not JSON: {:.200}", event.data))?;
            if event.event == "error" {
                bail!("observing failed: {}", text(&data["error"]["message"]));
            }
            match args.client.output {
                Output::Json => println!("{data}"),
                Output::Table if data["leader"].is_null() => println!("no leader"),
                Output::Table => println!(
                    "{} (subject {}, token {})",
                    text(&data["leader"]["value"]),
                    text(&data["leader"]["subject"]),
                    text(&data["leader"]["token"])
                ),
            }
        }
    }
    Ok(())
}
