//! `switchboard id next|decode|segment …`: unique IDs from a running node. IDs print one
//! per line (decimal), so they pipe into other tools; `-o json` prints the API's JSON.

use reqwest::Method;
use serde_json::{json, Value};

use crate::client::{query_value, ApiClient, ClientArgs, Output};
use crate::table;

#[derive(clap::Args)]
pub struct IdArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: IdCommand,
}

#[derive(clap::Subcommand)]
enum IdCommand {
    /// Allocate Snowflake IDs (time-ordered, unique across every node of the store).
    Next {
        /// How many (1 to 10000).
        #[arg(short = 'n', long = "count", default_value_t = 1, allow_negative_numbers = true)]
        count: i64,
    },
    /// Show a Snowflake ID's timestamp, worker and sequence.
    Decode { id: String },
    /// Segment IDs (Leaf-style, per namespace and tag).
    Segment {
        #[command(subcommand)]
        command: SegmentCommand,
    },
}

#[derive(clap::Subcommand)]
enum SegmentCommand {
    /// Allocate IDs of a tag (created on first use unless the server says otherwise).
    Next {
        tag: String,
        /// How many (1 to 10000).
        #[arg(short = 'n', long = "count", default_value_t = 1, allow_negative_numbers = true)]
        count: i64,
        #[arg(long, default_value = "public")]
        namespace: String,
    },
    /// Create a tag with its first ID and step.
    Create {
        tag: String,
        /// The first ID.
        #[arg(long, default_value_t = 1)]
        start: u64,
        /// IDs per allocation [default: the server's --ids-segment-step].
        #[arg(long)]
        step: Option<u64>,
        #[arg(long, default_value = "public")]
        namespace: String,
    },
    /// List the tags of a namespace.
    #[command(alias = "list")]
    Ls {
        #[arg(long, default_value = "public")]
        namespace: String,
    },
}

pub async fn run(args: IdArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(&args.client.connect, &args.client.data_dir)?;
    let output = args.client.output;
    match &args.command {
        IdCommand::Next { count } => {
            let path = format!("/api/v1/ids/snowflake?count={}", query_value(&count.to_string()));
            print_ids(output, &client.call(client.request(Method::GET, &path)).await?);
        }
        IdCommand::Decode { id } => {
            let path = format!("/api/v1/ids/snowflake/{}/decode", query_value(id));
            let answer = client.call(client.request(Method::GET, &path)).await?;
            match output {
                Output::Json => println!("{answer}"),
                Output::Table => table::print(
                    &["ID", "TIMESTAMP_MS", "WORKER", "SEQUENCE"],
                    &[vec![
                        text(&answer["id"]),
                        text(&answer["timestamp_ms"]),
                        text(&answer["worker"]),
                        text(&answer["sequence"]),
                    ]],
                ),
            }
        }
        IdCommand::Segment { command: SegmentCommand::Next { tag, count, namespace } } => {
            let path = format!(
                "/api/v1/ids/segment/{}?count={}&namespace={}",
                query_value(tag),
                query_value(&count.to_string()),
                query_value(namespace)
            );
            print_ids(output, &client.call(client.request(Method::GET, &path)).await?);
        }
        IdCommand::Segment { command: SegmentCommand::Create { tag, start, step, namespace } } => {
            let mut body = json!({ "tag": tag, "start": start });
            if let Some(step) = step {
                body["step"] = json!(step);
            }
            let request = client
                .request(Method::POST, &format!("/api/v1/ids/segments?namespace={}", query_value(namespace)))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
            let answer = client.call(request).await?;
            match output {
                Output::Json => println!("{answer}"),
                Output::Table => print_tags(std::slice::from_ref(&answer)),
            }
        }
        IdCommand::Segment { command: SegmentCommand::Ls { namespace } } => {
            let path = format!("/api/v1/ids/segments?namespace={}", query_value(namespace));
            let answer = client.call(client.request(Method::GET, &path)).await?;
            match output {
                Output::Json => println!("{answer}"),
                Output::Table => print_tags(answer["tags"].as_array().map_or(&[], Vec::as_slice)),
            }
        }
    }
    Ok(())
}

fn print_ids(output: Output, answer: &Value) {
    match output {
        Output::Json => println!("{answer}"),
        Output::Table => {
            for id in answer["ids"].as_array().into_iter().flatten() {
                println!("{}", text(id));
            }
        }
    }
}

fn print_tags(tags: &[Value]) {
    let rows: Vec<Vec<String>> = tags
        .iter()
        .map(|t| {
            let buffer = &t["node_buffer"];
            vec![
                text(&t["namespace"]),
                text(&t["tag"]),
                text(&t["max"]),
                text(&t["step"]),
                if buffer.is_null() { "-".into() } else { text(&buffer["remaining"]) },
            ]
        })
        .collect();
    table::print(&["NAMESPACE", "TAG", "NEXT_UNALLOCATED", "STEP", "BUFFERED_HERE"], &rows);
}

fn text(value: &Value) -> String {
    value.as_str().map_or_else(|| value.to_string(), str::to_owned)
}
