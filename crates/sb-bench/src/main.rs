//! Switchboard's bench tool. Every scenario runs against Switchboard and its peer in the
//! same run, A B A B, and prints ops/s, latency percentiles, errors and the ratio, as
//! `shared/bench.md` asks. Timings live here, never in pass/fail tests.
//!
//! `sb-bench store`: the embedded store in-process against a single-member etcd through
//! raw `etcd-client` (the ceiling the etcd adapter is measured by).
#![forbid(unsafe_code)]

mod report;
mod store_bench;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sb-bench", about = "Switchboard benchmarks, always side by side with a peer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The embedded store in-process vs. raw etcd-client against a single-member etcd.
    Store(store_bench::StoreArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Store(args) => runtime.block_on(store_bench::run(args)),
    }
}
