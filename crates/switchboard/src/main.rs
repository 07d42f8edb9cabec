//! The `switchboard` binary: `serve` runs a node (through `sb-server`); `kv`, `lease`,
//! `id`, `lock`, `elect`, `svc`, `config` and `ratelimit` are HTTP clients of a running node; `backup` asks a running node (or, `--offline`,
//! reads a store), and `restore` writes into an empty store.
// One audited exception: `malloc::one_arena_per_core` (a measured allocator setting).
#![deny(unsafe_code)]

mod audit;
mod auth;
mod client;
mod config;
mod elect;
mod id;
mod kv;
mod lease;
mod lock;
mod malloc;
mod master_key;
mod ratelimit;
mod snapshot;
mod sse;
mod svc;
mod table;

use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

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
    // Boxed: its flags outweigh every other command.
    /// Run a node.
    Serve(Box<sb_server::ServeArgs>),
    /// Read, write, list and watch keys of a running node.
    Kv(kv::KvArgs),
    /// Grant, renew and revoke leases on a running node.
    Lease(lease::LeaseArgs),
    /// Unique IDs from a running node: Snowflake (`next`, `decode`) and segments.
    Id(id::IdArgs),
    /// Acquire, release and renew locks; run a command while holding one.
    Lock(lock::LockArgs),
    /// Campaign in a leader election (or observe one with --listen).
    Elect(elect::ElectArgs),
    /// Register, list, watch and drain service instances on a running node.
    Svc(svc::SvcArgs),
    /// Get, publish, list, delete, diff, roll back and watch configs on a running node.
    Config(config::ConfigArgs),
    /// Rate-limit rules, checks and permits on a running node.
    #[command(alias = "rl")]
    Ratelimit(ratelimit::RateLimitArgs),
    /// The audit log of a running node: who changed what, from where, at which revision.
    Audit(audit::AuditArgs),
    /// Write a consistent snapshot of every key (at one revision) to a file, from a
    /// running node (or, with --offline, from a stopped embedded store or an etcd).
    Backup(snapshot::BackupArgs),
    /// Load a backup file into an empty store (embedded or etcd).
    Restore(snapshot::RestoreArgs),
    /// Create or rotate the master key file secret configs are sealed with.
    MasterKey(master_key::MasterKeyArgs),
    /// Access control: log in, who am I, users, service accounts, roles, tokens, backoff.
    Auth(auth::AuthArgs),
    /// Namespaces: create, list, delete.
    Ns(auth::NsArgs),
}

/// Parses the command line; for `serve --config FILE`, parses it again with the file's
/// settings added as flags (flags and variables keep precedence).
fn parse() -> anyhow::Result<Cli> {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let Command::Serve(args) = &cli.command else {
        return Ok(cli);
    };
    let (Some(path), Some(serve_matches), Some(serve_command)) =
        (&args.config, matches.subcommand_matches("serve"), Cli::command().find_subcommand("serve").cloned())
    else {
        return Ok(cli);
    };
    let extra = sb_server::config_file_args(path, serve_matches, &serve_command)?;
    Ok(Cli::parse_from(std::env::args_os().chain(extra)))
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("switchboard: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    malloc::one_arena_per_core();
    let cli = parse()?;
    let log_control = match cli.command {
        // A server logs JSON, and its filter can change at runtime.
        Command::Serve(_) => sb_server::logging::init_json_logging(),
        _ => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_env(sb_server::logging::LOG_ENV)
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .with_writer(std::io::stderr)
                .init();
            None
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => {
                let control = log_control.map(|c| c as Arc<dyn sb_api::LogLevelControl>);
                Ok(sb_server::run(*args, control).await?)
            }
            Command::Kv(args) => kv::run(args).await,
            Command::Lease(args) => lease::run(args).await,
            Command::Id(args) => id::run(args).await,
            Command::Lock(args) => lock::run(args).await,
            Command::Elect(args) => elect::run(args).await,
            Command::Svc(args) => svc::run(args).await,
            Command::Config(args) => config::run(args).await,
            Command::Ratelimit(args) => ratelimit::run(args).await,
            Command::Auth(args) => auth::run(args).await,
            Command::Ns(args) => auth::run_ns(args).await,
            Command::Audit(args) => audit::run(args).await,
            Command::Backup(args) => snapshot::backup(args).await,
            Command::Restore(args) => snapshot::restore(args).await,
            Command::MasterKey(args) => master_key::run(args),
        }
    })
}
