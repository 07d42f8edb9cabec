//! `switchboard lease grant|keepalive|revoke`: user leases from the command line. Ids are
//! decimal strings, as the API gives them.

use reqwest::Method;
use serde_json::{json, Value};

use crate::client::{query_value, ApiClient, ClientArgs, Output};
use crate::table;

#[derive(clap::Args)]
pub struct LeaseArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: LeaseCommand,
}

#[derive(clap::Subcommand)]
enum LeaseCommand {
    /// Grant a lease; keys put with `--lease ID` are deleted when it expires or is revoked.
    Grant {
        /// Seconds the lease lives without a keepalive.
        ttl_secs: i64,
    },
    /// Renew a lease to its full TTL, once.
    #[command(alias = "keep-alive")]
    Keepalive { id: String },
    /// Revoke a lease and delete its keys.
    Revoke { id: String },
}

pub async fn run(args: LeaseArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(&args.client.connect, &args.client.data_dir)?;
    let output = args.client.output;
    let answer = match &args.command {
        LeaseCommand::Grant { ttl_secs } => {
            let request = client
                .request(Method::POST, "/api/v1/leases")
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(json!({ "ttl_secs": ttl_secs }).to_string());
            client.call(request).await?
        }
        LeaseCommand::Keepalive { id } => {
            let path = format!("/api/v1/leases/{}/keepalive", query_value(id));
            client.call(client.request(Method::POST, &path)).await?
        }
        LeaseCommand::Revoke { id } => {
            let path = format!("/api/v1/leases/{}", query_value(id));
            client.call(client.request(Method::DELETE, &path)).await?
        }
    };
    match (output, &args.command) {
        (Output::Json, _) => println!("{answer}"),
        (Output::Table, LeaseCommand::Revoke { id }) => println!("revoked lease {id} and deleted its keys"),
        (Output::Table, _) => {
            table::print(&["ID", "TTL_SECS"], &[vec![text(&answer["id"]), text(&answer["ttl_secs"])]])
        }
    }
    Ok(())
}

fn text(value: &Value) -> String {
    value.as_str().map_or_else(|| value.to_string(), str::to_owned)
}
