//! Switchboard's bench tool. Every scenario runs against Switchboard and its peer in the
//! same run, A B A B, and prints ops/s, latency percentiles, errors and the ratio, as
//! `shared/bench.md` asks. Timings live here, never in pass/fail tests.
//!
//! - `sb-bench store`: the embedded store in-process against a single-member etcd through
//!   raw `etcd-client` (the ceiling the etcd adapter is measured by);
//! - `sb-bench http`: the server's KV API against the bare-hyper ceiling and etcd, with
//!   start-up time and idle RSS;
//! - `sb-bench ids`: Snowflake and segment IDs in-process against their ceilings, the HTTP
//!   batch endpoint in IDs/s, single-ID HTTP against the bare-hyper ceiling;
//! - `sb-bench coord`: lock acquire + release against a single commit, and the contended
//!   handoff against a watch notification, on the embedded store and etcd;
//! - `sb-bench naming`, `sb-bench config`: the registry and the config center over the
//!   Nacos 1.x API against r-nacos (and the bare-hyper ceiling);
//! - `sb-bench ratelimit`: local GCRA in-process vs. `governor`, the Redis tier vs.
//!   `redis-benchmark` EVALSHA, the HTTP check vs. bare hyper, and the Redis failover time;
//! - `sb-bench health`: 10,000 active checks on one node against local listeners: CPU,
//!   RSS and schedule lag;
//! - `sb-bench dns`: the DNS interface vs. a static hickory authority serving the same
//!   records (`sb-bench dns-peer` is that authority);
//! - `sb-bench ceiling`: the bare-hyper server itself.
#![forbid(unsafe_code)]

mod ceiling;
mod config_bench;
mod coord_bench;
mod dns_bench;
mod health_bench;
mod http_bench;
mod ids_bench;
mod nacos_targets;
mod naming_bench;
mod ratelimit_bench;
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
    /// The server's KV API vs. the bare-hyper ceiling and etcd; start-up and idle RSS.
    Http(http_bench::HttpArgs),
    /// A bare hyper server answering a fixed body: the HTTP ceiling.
    Ceiling(ceiling::CeilingArgs),
    /// Unique IDs: Snowflake and segments in-process against their ceilings; the HTTP
    /// batch endpoint in IDs/s; single-ID HTTP vs. the bare-hyper ceiling.
    Ids(ids_bench::IdsArgs),
    /// Locks: uncontended acquire + release vs. a single commit; contended handoff vs. a
    /// watch notification; on the embedded store and etcd.
    Coord(coord_bench::CoordArgs),
    /// The registry over the Nacos 1.x naming API vs. r-nacos (register, beat, list,
    /// register → UDP push, RSS with 100k instances), and list vs. bare hyper.
    Naming(naming_bench::NamingArgs),
    /// The config center over the Nacos 1.x config API vs. r-nacos (get, publish,
    /// publish → listener, RSS with 10k configs, 10k long-polls), and get vs. bare hyper.
    Config(config_bench::ConfigArgs),
    /// Rate limits: local GCRA vs. governor in-process, the Redis tier vs. redis-benchmark
    /// EVALSHA, the HTTP check vs. bare hyper, and the time to switch when Redis dies.
    Ratelimit(ratelimit_bench::RateLimitArgs),
    /// Active health checks: 10k TCP/HTTP checks on one node against local listeners;
    /// the node's CPU and RSS and the probes' schedule lag.
    Health(health_bench::HealthArgs),
    /// The DNS interface vs. a static hickory authority with the same records (UDP A qps).
    Dns(dns_bench::DnsArgs),
    /// A static hickory authority serving `orders.svc.switchboard.` (the dns bench's peer).
    DnsPeer(dns_bench::DnsPeerArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Store(args) => runtime.block_on(store_bench::run(args)),
        Command::Http(args) => runtime.block_on(http_bench::run(args)),
        Command::Ceiling(args) => runtime.block_on(ceiling::run(args)),
        Command::Ids(args) => runtime.block_on(ids_bench::run(args)),
        Command::Coord(args) => runtime.block_on(coord_bench::run(args)),
        Command::Naming(args) => runtime.block_on(naming_bench::run(args)),
        Command::Config(args) => runtime.block_on(config_bench::run(args)),
        Command::Ratelimit(args) => runtime.block_on(ratelimit_bench::run(args)),
        Command::Health(args) => runtime.block_on(health_bench::run(args)),
        Command::Dns(args) => runtime.block_on(dns_bench::run(args)),
        Command::DnsPeer(args) => runtime.block_on(dns_bench::serve_peer(args)),
    }
}
