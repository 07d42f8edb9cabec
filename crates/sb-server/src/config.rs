//! `serve`'s settings: flags, `SWITCHBOARD_*` variables, or a TOML file (`--config`).
//!
//! Precedence: a flag, then its variable, then the file, then the default. The file's
//! keys are the flag names (`listen = "0.0.0.0:8848"`, `max-value-bytes = 2097152`,
//! `trusted-proxies = ["10.0.0.0/8"]`; `_` may stand for `-`). It is applied by turning
//! its entries into flags for whatever the command line and environment left at the
//! default, so clap checks every value the same way.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, Command};
use ipnet::IpNet;

use crate::error::{ServerError, ServerResult};
use crate::store_args::StoreArgs;

#[derive(clap::Args, Clone, Debug)]
pub struct ServeArgs {
    /// A TOML file with any of these settings (flags and variables take precedence).
    #[arg(long, env = "SWITCHBOARD_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArgs,
    /// A stable node id (kept in <data-dir>/node-id); generated on first start.
    #[arg(long, env = "SWITCHBOARD_NODE_ID")]
    pub node_id: Option<String>,
    /// The HTTP address to listen on (port 0 picks a free port, printed at start).
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "127.0.0.1:8848")]
    pub listen: String,
    /// The address other nodes see in the membership view [default: the listen address].
    #[arg(long, env = "SWITCHBOARD_ADVERTISE")]
    pub advertise: Option<String>,
    /// A node that stops without leaving drops out of the membership after this.
    #[arg(long, env = "SWITCHBOARD_MEMBERSHIP_TTL_SECS", default_value_t = 10)]
    pub membership_ttl_secs: i64,
    /// Proxies (CIDRs or addresses, comma-separated) whose X-Forwarded-For is believed.
    #[arg(long, env = "SWITCHBOARD_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_cidr)]
    pub trusted_proxies: Vec<IpNet>,
    /// The largest KV value accepted, in bytes.
    #[arg(long, env = "SWITCHBOARD_MAX_VALUE_BYTES", default_value_t = 1024 * 1024)]
    pub max_value_bytes: usize,
    /// The longest KV key accepted, in bytes.
    #[arg(long, env = "SWITCHBOARD_MAX_KEY_BYTES", default_value_t = 1024)]
    pub max_key_bytes: usize,
    /// Registry: an ephemeral instance with no beat for this long is marked unhealthy
    /// (an instance's `preserved.heart.beat.timeout` metadata overrides it).
    #[arg(long, env = "SWITCHBOARD_HEARTBEAT_TIMEOUT_MS", default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub heartbeat_timeout_ms: u64,
    /// Registry: an ephemeral instance with no beat for this long is deleted
    /// (`preserved.ip.delete.timeout` overrides it).
    #[arg(long, env = "SWITCHBOARD_IP_DELETE_TIMEOUT_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub ip_delete_timeout_ms: u64,
    /// Registry: the TTL of this node's session lease, which its ephemeral instances hang
    /// on; after a crash they disappear this long after the last keep-alive.
    #[arg(long, env = "SWITCHBOARD_SESSION_TTL_SECS", default_value_t = 20, value_parser = clap::value_parser!(i64).range(2..=3600))]
    pub session_ttl_secs: i64,
    /// The largest config content accepted, in bytes.
    #[arg(long, env = "SWITCHBOARD_CONFIG_MAX_BYTES", default_value_t = 1024 * 1024)]
    pub config_max_bytes: usize,
    /// Config history entries kept per item (the newest always stays).
    #[arg(long, env = "SWITCHBOARD_CONFIG_HISTORY_KEEP", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub config_history_keep: u32,
    /// Config history entries older than this are dropped (0 keeps them, up to the count).
    #[arg(long, env = "SWITCHBOARD_CONFIG_HISTORY_MAX_AGE_SECS", default_value_t = 0)]
    pub config_history_max_age_secs: u64,
    /// The master keys secret configs are sealed with (`key <id> <base64>` lines and
    /// `active <id>`; `switchboard master-key new|rotate` writes them). Embedded: defaults to
    /// <data-dir>/master-key, created (mode 0600) on first start. etcd: required, the same
    /// file on every node.
    #[arg(long, env = "SWITCHBOARD_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
    /// How often secrets sealed under a key other than the active one are re-encrypted
    /// (also once at start).
    #[arg(long, env = "SWITCHBOARD_REENCRYPT_INTERVAL_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub reencrypt_interval_secs: u64,
    /// Audit records older than this many days are deleted (0 keeps them, up to the count).
    #[arg(long, env = "SWITCHBOARD_AUDIT_RETENTION_DAYS", default_value_t = 90)]
    pub audit_retention_days: u64,
    /// Beyond this many audit records the oldest are deleted (0: no count limit). The
    /// default keeps the log to tens of MiB, far below etcd's storage quota.
    #[arg(long, env = "SWITCHBOARD_AUDIT_MAX_RECORDS", default_value_t = 100_000)]
    pub audit_max_records: u64,
    /// How often audit retention runs (on one node at a time: the lowest live node id).
    #[arg(long, env = "SWITCHBOARD_AUDIT_SWEEP_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub audit_sweep_secs: u64,
    /// The Redis of the global rate-limit tier (redis://host:port[/db]); without it,
    /// `redis` rules apply their failure policy.
    #[arg(long, env = "SWITCHBOARD_REDIS")]
    pub redis: Option<String>,
    /// How long a rate-limit decision waits for Redis before the rule's failure policy
    /// answers (and the tier is marked down until Redis answers again).
    #[arg(long, env = "SWITCHBOARD_REDIS_TIMEOUT_MS", default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub redis_timeout_ms: u64,
    /// Prepended to every rate-limit counter key in Redis.
    #[arg(long, env = "SWITCHBOARD_REDIS_KEY_PREFIX", default_value = "switchboard:rl:")]
    pub redis_key_prefix: String,
    /// On SIGTERM, how long in-flight requests may take before they are cut.
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,
    /// The registry's DNS interface, UDP and TCP [default: 127.0.0.1:8600; `off` disables
    /// it]. Port 0 picks a free port, printed at start. A default address that is taken is
    /// a warning (several nodes on one host); an address given here that cannot be bound is
    /// an error.
    #[arg(long, env = "SWITCHBOARD_DNS_LISTEN")]
    pub dns_listen: Option<String>,
    /// Networks (CIDRs or addresses, comma-separated) that may query the DNS interface.
    #[arg(long, env = "SWITCHBOARD_DNS_ALLOW", value_delimiter = ',', value_parser = parse_cidr, default_value = "127.0.0.0/8,::1/128")]
    pub dns_allow: Vec<IpNet>,
    /// The TTL of DNS answers, in seconds.
    #[arg(long, env = "SWITCHBOARD_DNS_TTL_SECS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=3600))]
    pub dns_ttl_secs: u32,
    /// DNS queries per second one source address may send; over it, UDP queries are
    /// dropped and TCP queries refused (0: no limit).
    #[arg(long, env = "SWITCHBOARD_DNS_PER_SOURCE_QPS", default_value_t = 5000)]
    pub dns_per_source_qps: u32,
    /// The burst a source may send above its rate [default: the rate].
    #[arg(long, env = "SWITCHBOARD_DNS_PER_SOURCE_BURST")]
    pub dns_per_source_burst: Option<u32>,
    /// UDP DNS worker loops: a query flood never takes more cores than this.
    #[arg(long, env = "SWITCHBOARD_DNS_UDP_WORKERS", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub dns_udp_workers: u64,
    /// Active health checks: how often a node re-reads the checks and the membership view
    /// to pick up its share (a departed node's share moves within this plus one
    /// membership TTL).
    #[arg(long, env = "SWITCHBOARD_HEALTH_RECONCILE_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub health_reconcile_ms: u64,
    /// The interval of health checks set through the Nacos API (the default TCP check of a
    /// persistent instance, and clusters' health checkers), which has no setting for it.
    #[arg(long, env = "SWITCHBOARD_NACOS_CHECK_INTERVAL_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub nacos_check_interval_ms: u64,
    #[command(flatten)]
    pub ids: IdArgs,
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
}

/// Access control: logins and their backoff.
#[derive(clap::Args, Clone, Debug)]
pub struct AuthArgs {
    /// A login's session token TTL when the request names none (Nacos's tokenTtl).
    #[arg(long, env = "SWITCHBOARD_LOGIN_SESSION_TTL_SECS", default_value_t = 18_000, value_parser = clap::value_parser!(i64).range(2..=604_800))]
    pub login_session_ttl_secs: i64,
    /// Login backoff: the wait after the first counted failure; it doubles with each
    /// further failure per (user, address) and per address, never per user alone.
    #[arg(long, env = "SWITCHBOARD_LOGIN_BACKOFF_BASE_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub login_backoff_base_ms: u64,
    /// Login backoff: the longest wait.
    #[arg(long, env = "SWITCHBOARD_LOGIN_BACKOFF_MAX_MS", default_value_t = 300_000, value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub login_backoff_max_ms: u64,
    /// Login backoff: failures per (user, address) before any wait.
    #[arg(long, env = "SWITCHBOARD_LOGIN_FREE_FAILURES", default_value_t = 3)]
    pub login_free_failures: u32,
    /// Login backoff: failures per address (all users) before any wait.
    #[arg(long, env = "SWITCHBOARD_LOGIN_FREE_FAILURES_PER_ADDRESS", default_value_t = 20)]
    pub login_free_failures_per_address: u32,
    /// Password hashes computed at once (argon2id: about 19 MiB each).
    #[arg(long, env = "SWITCHBOARD_PASSWORD_HASH_CONCURRENCY", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub password_hash_concurrency: u64,
}

/// Unique IDs: Snowflake and segments.
#[derive(clap::Args, Clone, Debug)]
pub struct IdArgs {
    /// Snowflake: the layout's epoch in Unix ms (every node of a store must use the same;
    /// the first node records it).
    #[arg(long, env = "SWITCHBOARD_IDS_EPOCH_MS", default_value_t = sb_ids::snowflake::DEFAULT_EPOCH_MS)]
    pub ids_epoch_ms: u64,
    /// Snowflake: worker ids 0..N are leased by nodes (1 to 1024).
    #[arg(long, env = "SWITCHBOARD_IDS_WORKERS", default_value_t = 1024,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub ids_workers: u16,
    /// Snowflake: TTL of a node's worker-id lease; issuing stops before it could expire
    /// unnoticed (after about 3/4 of it without a confirmed keep-alive).
    #[arg(long, env = "SWITCHBOARD_IDS_WORKER_TTL_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(i64).range(2..=3600))]
    pub ids_worker_ttl_secs: i64,
    /// Snowflake: how far ahead of the clock a worker's high-water mark is persisted (it is
    /// renewed when the clock comes within half of this).
    #[arg(long, env = "SWITCHBOARD_IDS_WATERMARK_AHEAD_MS", default_value_t = 3_000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub ids_watermark_ahead_ms: u64,
    /// Segments: the step of a tag created without one (on first use or by POST).
    #[arg(long, env = "SWITCHBOARD_IDS_SEGMENT_STEP", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub ids_segment_step: u64,
    /// Segments: the adaptive step never grows past this.
    #[arg(long, env = "SWITCHBOARD_IDS_SEGMENT_MAX_STEP", default_value_t = 1_000_000,
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub ids_segment_max_step: u64,
    /// Segments: whether a request for an unknown tag creates it (start 1, the default
    /// step); with false it is a 404 until the tag is created.
    #[arg(long, env = "SWITCHBOARD_IDS_SEGMENT_AUTO_CREATE", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub ids_segment_auto_create: bool,
}

fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not a CIDR (10.0.0.0/8) or an IP address"))
}

/// The flags that a config file adds: one `--name=value` for each of its settings that
/// neither a flag nor a variable set. `matches` and `command` are those of `serve`.
pub fn config_file_args(path: &Path, matches: &ArgMatches, command: &Command) -> ServerResult<Vec<OsString>> {
    let text = std::fs::read_to_string(path)
        .map_err(ServerError::io(format!("reading --config {}", path.display())))?;
    let table: toml::Table = toml::from_str(&text)
        .map_err(|e| ServerError::Config(format!("--config {} is not valid TOML: {e}", path.display())))?;
    let mut args = Vec::new();
    for (key, value) in table {
        let name = key.replace('_', "-");
        let arg = command
            .get_arguments()
            .find(|arg| arg.get_long() == Some(name.as_str()) && name != "config")
            .ok_or_else(|| {
                ServerError::Config(format!(
                    "--config {}: unknown setting {key:?} (settings are the flag names)",
                    path.display()
                ))
            })?;
        let explicit = matches!(
            matches.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if explicit {
            continue;
        }
        let rendered = render(&value).ok_or_else(|| {
            ServerError::Config(format!(
                "--config {}: setting {key:?} has an unsupported value {value:?}",
                path.display()
            ))
        })?;
        args.push(OsString::from(format!("--{name}={rendered}")));
    }
    Ok(args)
}

fn render(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Array(items) => {
            items.iter().map(render).collect::<Option<Vec<_>>>().map(|v| v.join(","))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn file_settings_fill_in_what_flags_left_at_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchboard.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\nmax_key_bytes = 64\ntrusted-proxies = [\"10.0.0.0/8\", \"192.168.1.1\"]\n").unwrap();
        let argv = ["sb", "--max-key-bytes", "99", "--config", path.to_str().unwrap()];
        let command = Cli::command();
        let matches = command.clone().get_matches_from(argv);
        let extra = config_file_args(&path, &matches, &command).unwrap();
        let all: Vec<OsString> = argv.iter().map(OsString::from).chain(extra).collect();
        let cli = Cli::from_arg_matches(&Cli::command().get_matches_from(all)).unwrap();
        assert_eq!(cli.serve.listen, "127.0.0.1:9000");
        assert_eq!(cli.serve.max_key_bytes, 99, "a flag wins over the file");
        assert_eq!(cli.serve.trusted_proxies.len(), 2);
    }

    #[test]
    fn unknown_file_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchboard.toml");
        std::fs::write(&path, "lisen = \"x\"\n").unwrap();
        let command = Cli::command();
        let matches = command.clone().get_matches_from(["sb"]);
        let error = config_file_args(&path, &matches, &command).unwrap_err().to_string();
        assert!(error.contains("unknown setting \"lisen\""), "{error}");
    }
}
