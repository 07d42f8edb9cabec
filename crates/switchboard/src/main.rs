//! The `switchboard` binary: `serve` runs a node; the other subcommands are clients.
#![forbid(unsafe_code)]

mod serve;
mod snapshot;
mod store_args;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Registry, config center and coordination services in one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Serve(serve::ServeArgs),
    /// Write a consistent snapshot of every key (at one revision) to a file.
    Backup(snapshot::BackupArgs),
    /// Load a backup file into an empty store (embedded or etcd).
    Restore(snapshot::RestoreArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SWITCHBOARD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Backup(args) => snapshot::backup(args).await,
            Command::Restore(args) => snapshot::restore(args).await,
        }
    })
}
