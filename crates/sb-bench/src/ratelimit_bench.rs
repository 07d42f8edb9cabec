//! Rate limiting against its peers and ceilings, in one run:
//! - `local`: GCRA decisions in-process on the local tier against the `governor` crate's
//!   keyed limiter, same keys, same quota, same threads (target ≥ 10 M/s per core, ≥ 1×);
//! - `redis`: the Redis tier in-process against `redis-benchmark` running the same script
//!   by `EVALSHA` at the same concurrency (target ≥ 0.8×);
//! - `http`: `POST /api/v1/ratelimit/check` against the bare-hyper ceiling with a body of
//!   the same size (target ≥ 0.7×);
//! - `failover`: how long a Redis rule takes to switch to its failure policy after its
//!   Redis is killed, and to come back after a restart (its own redis-server).

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use sb_ratelimit::{GlobalTier, Limit, LocalTier, RateLimiter, RuleCatalog, RuleSpec, ServedBy};
use sb_ratelimit_redis::{RedisTier, RedisTierOptions};
use tokio::time::Instant;

use crate::http_bench::{bench_token, connect, free_port, request, wait_until_answers, Killed};
use crate::report::{compare_ab, run_clients, Outcome};

#[derive(clap::Args)]
pub struct RateLimitArgs {
    /// Seconds per run.
    #[arg(long, default_value_t = 5)]
    secs: u64,
    /// Threads for the in-process local scenario [default: nproc].
    #[arg(long)]
    threads: Option<usize>,
    /// Concurrent tasks (Redis) or connections (HTTP), and redis-benchmark's -c.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Distinct keys the load spreads over.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Which scenarios: all, local, redis, http, failover (comma-separated).
    #[arg(long, default_value = "all", value_delimiter = ',')]
    scenarios: Vec<String>,
    /// The Redis for the `redis` scenario (redis://host:port).
    #[arg(long, env = "SB_BENCH_REDIS", default_value = "redis://127.0.0.1:6379")]
    redis: String,
    #[arg(long, default_value = "redis-benchmark")]
    redis_benchmark_bin: PathBuf,
    #[arg(long, default_value = "redis-server")]
    redis_server_bin: PathBuf,
    /// The switchboard binary for the HTTP scenario (a release build).
    #[arg(long, default_value = "target/release/switchboard")]
    switchboard_bin: PathBuf,
    /// This bench binary, to start the bare-hyper ceiling as its own process.
    #[arg(long, default_value = "target/release/sb-bench")]
    bench_bin: PathBuf,
    /// Where temp data dirs go.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl RateLimitArgs {
    fn wants(&self, scenario: &str) -> bool {
        self.scenarios.iter().any(|s| s == "all" || s == scenario)
    }
}

/// One quota for every scenario: 1,000/s with a burst of 100 per key.
const RATE_PER_SEC: u32 = 1000;
const BURST: u32 = 100;

pub async fn run(args: RateLimitArgs) -> anyhow::Result<()> {
    let scratch = match &args.data_dir {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir()?,
    };
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    println!(
        "sb-bench ratelimit: {} s per run, {threads} threads in-process, {} clients, {} keys, quota {RATE_PER_SEC}/s burst {BURST}, nproc {}",
        args.secs,
        args.clients,
        args.keys,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let secs = Duration::from_secs(args.secs);
    if args.wants("local") {
        local(&args, threads, secs).await?;
    }
    if args.wants("redis") {
        redis(&args, secs).await?;
    }
    if args.wants("http") {
        http(&args, scratch.path(), secs).await?;
    }
    if args.wants("failover") {
        failover(&args, scratch.path()).await?;
    }
    Ok(())
}

/// Runs `threads` OS threads calling `decide(key index)` back to back for `secs`.
async fn decisions_per_sec<F>(
    threads: usize,
    secs: Duration,
    keys: usize,
    decide: F,
) -> anyhow::Result<Outcome>
where
    F: Fn(usize) -> bool + Send + Sync + 'static,
{
    tokio::task::spawn_blocking(move || {
        let decide = &decide;
        let start = Instant::now();
        let deadline = start + secs;
        let ops: u64 = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    scope.spawn(move || {
                        let mut ops = 0u64;
                        let mut i = t * 7919;
                        loop {
                            // The clock is read once per 1,024 decisions.
                            for _ in 0..1024 {
                                std::hint::black_box(decide(i % keys));
                                i += 1;
                            }
                            ops += 1024;
                            if Instant::now() >= deadline {
                                return ops;
                            }
                        }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        Outcome {
            ops,
            elapsed: start.elapsed(),
            p50_us: 0,
            p99_us: 0,
            p999_us: 0,
            errors: 0,
            note: Some(format!(
                "{:.1} M decisions/s per thread (latency is not sampled per decision)",
                ops as f64 / start.elapsed().as_secs_f64() / threads as f64 / 1e6
            )),
        }
    })
    .await
    .context("the decision threads")
}

async fn local(args: &RateLimitArgs, threads: usize, secs: Duration) -> anyhow::Result<()> {
    let keys: Arc<Vec<String>> =
        Arc::new((0..args.keys).map(|i| format!("public\u{1f}bench\u{1f}1\u{1f}user-{i}")).collect());
    let spec: RuleSpec = serde_json::from_value(serde_json::json!({
        "algorithm": "gcra", "rate": RATE_PER_SEC, "burst": BURST
    }))?;
    let limit = Limit::of(&spec.into_rule("bench")?.algorithm);
    let tier = Arc::new(LocalTier::new());
    let quota = governor::Quota::per_second(NonZeroU32::new(RATE_PER_SEC).context("rate")?)
        .allow_burst(NonZeroU32::new(BURST).context("burst")?);
    let peer: Arc<governor::DefaultKeyedRateLimiter<String>> = Arc::new(governor::RateLimiter::keyed(quota));
    let ours = || {
        let (tier, keys) = (tier.clone(), keys.clone());
        decisions_per_sec(threads, secs, args.keys, move |k| tier.check(&keys[k], limit, 1).allowed)
    };
    let theirs = || {
        let (peer, keys) = (peer.clone(), keys.clone());
        decisions_per_sec(threads, secs, args.keys, move |k| peer.check_key(&keys[k]).is_ok())
    };
    let ratio = compare_ab("rl-local", ["local", "governor"], ours, theirs).await?;
    println!("rl-local       target: >= 10 M/s per core and >= 1.00x governor (got {ratio:.2}x)\n");
    Ok(())
}

fn host_port(url: &str) -> anyhow::Result<(String, String)> {
    let rest = url.strip_prefix("redis://").context("--redis must be redis://host:port")?;
    let hostport = rest.rsplit('@').next().unwrap_or(rest).split('/').next().unwrap_or(rest);
    let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, "6379"));
    Ok((host.to_owned(), port.to_owned()))
}

async fn redis(args: &RateLimitArgs, secs: Duration) -> anyhow::Result<()> {
    let mut options = RedisTierOptions::new(args.redis.clone());
    options.key_prefix = format!("sb-bench:{}:", std::process::id());
    let tier = RedisTier::start(options.clone()).await?;
    if !tier.health().is_up() {
        bail!("no Redis answers at --redis {}", args.redis);
    }
    let limit = Limit::Gcra { interval_ns: 1_000_000_000 / RATE_PER_SEC as u64, burst: BURST as u64 };
    let keys: Arc<Vec<String>> = Arc::new((0..args.keys).map(|i| format!("bench{i:012}")).collect());
    let ours = || {
        let (tier, keys) = (tier.clone(), keys.clone());
        run_clients(vec![(); args.clients], secs, move |(), task, i| {
            let (tier, keys) = (tier.clone(), keys.clone());
            async move {
                let key = &keys[(task * 7919 + i) % keys.len()];
                let result = tier.check(key, limit, 1).await.map(|_| ()).map_err(anyhow::Error::from);
                ((), result)
            }
        })
    };
    let (host, port) = host_port(&args.redis)?;
    let sha = tier.script_sha().to_owned();
    let prefix = options.key_prefix.clone();
    let requests = 200_000 * args.secs;
    let theirs = || {
        let (host, port, sha, prefix) = (host.clone(), port.clone(), sha.clone(), prefix.clone());
        let clients = args.clients.to_string();
        let keys = args.keys.to_string();
        let bin = args.redis_benchmark_bin.clone();
        async move {
            let mut command = Command::new(&bin);
            command
                .args([
                    "-h",
                    &host,
                    "-p",
                    &port,
                    "-c",
                    &clients,
                    "-n",
                    &requests.to_string(),
                    "-r",
                    &keys,
                    "--csv",
                ])
                .args(["EVALSHA", &sha, "1", &format!("{prefix}bench__rand_int__"), "gcra"])
                .arg(format!("{}.000", 1_000_000 / RATE_PER_SEC))
                .args([BURST.to_string(), "1".to_owned()]);
            let output = tokio::task::spawn_blocking(move || command.output())
                .await?
                .with_context(|| format!("running {}", bin.display()))?;
            parse_redis_benchmark(&String::from_utf8_lossy(&output.stdout), requests)
        }
    };
    let ratio = compare_ab("rl-redis", ["tier", "redis-bm"], ours, theirs).await?;
    println!("rl-redis       target: >= 0.80x redis-benchmark EVALSHA (got {ratio:.2}x)\n");
    Ok(())
}

/// redis-benchmark's `--csv` line: "EVALSHA …","rps","avg","min","p50","p95","p99","max".
fn parse_redis_benchmark(csv: &str, requests: u64) -> anyhow::Result<Outcome> {
    let line = csv
        .lines()
        .rev()
        .find(|l| l.starts_with("\"EVALSHA") || l.starts_with("\"evalsha"))
        .with_context(|| format!("no EVALSHA line in redis-benchmark's output: {csv:.300}"))?;
    let fields: Vec<f64> =
        line.split("\",\"").skip(1).map(|f| f.trim_matches('"').parse::<f64>().unwrap_or(0.0)).collect();
    let rps = *fields.first().context("no rps field")?;
    let ms_to_us = |v: Option<&f64>| (v.copied().unwrap_or(0.0) * 1000.0) as u32;
    Ok(Outcome {
        ops: requests,
        elapsed: Duration::from_secs_f64(requests as f64 / rps.max(1.0)),
        p50_us: ms_to_us(fields.get(3)),
        p99_us: ms_to_us(fields.get(5)),
        p999_us: 0,
        errors: 0,
        note: None,
    })
}

async fn http(args: &RateLimitArgs, scratch: &std::path::Path, secs: Duration) -> anyhow::Result<()> {
    let port = free_port()?;
    let base = format!("127.0.0.1:{port}");
    let _server = Killed(
        Command::new(&args.switchboard_bin)
            .args(["serve", "--listen", &base, "--data-dir"])
            .arg(scratch.join("server"))
            .env("SWITCHBOARD_ADMIN_TOKEN", bench_token())
            .env("SWITCHBOARD_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", args.switchboard_bin.display()))?,
    );
    wait_until_answers(&base, "/readyz").await?;
    let token = bench_token();
    let mut probe = connect(&base).await?;
    let rule = serde_json::json!({"algorithm":"gcra","rate":RATE_PER_SEC,"burst":BURST,"descriptors":[{"key":"user"}]});
    request(&mut probe, "PUT", "/api/v1/ratelimit/rules/bench", &token, rule.to_string().into_bytes())
        .await?;
    let check_body = |k: usize| {
        serde_json::json!({"rule":"bench","descriptors":{"user":format!("u{k}")},"hits":1})
            .to_string()
            .into_bytes()
    };
    let body = request(&mut probe, "POST", "/api/v1/ratelimit/check", &token, check_body(0)).await?;
    let ceiling_port = free_port()?;
    let _ceiling = Killed(
        Command::new(&args.bench_bin)
            .args(["ceiling", "--listen", &format!("127.0.0.1:{ceiling_port}"), "--body-bytes"])
            .arg(body.len().to_string())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", args.bench_bin.display()))?,
    );
    let ceiling = format!("127.0.0.1:{ceiling_port}");
    wait_until_answers(&ceiling, "/").await?;
    let keys = args.keys;
    let load = |addr: String, path: &'static str, method: &'static str| {
        let token = token.clone();
        async move {
            let mut conns = Vec::new();
            for _ in 0..args.clients {
                conns.push(connect(&addr).await?);
            }
            run_clients(conns, secs, move |mut conn, task, i| {
                let token = token.clone();
                let body = if method == "POST" { check_body((task * 7919 + i) % keys) } else { Vec::new() };
                async move {
                    let result = request(&mut conn, method, path, &token, body).await.map(|_| ());
                    (conn, result)
                }
            })
            .await
        }
    };
    let ratio = compare_ab(
        "rl-http-check",
        ["switchboard", "hyper"],
        || load(base.clone(), "/api/v1/ratelimit/check", "POST"),
        || load(ceiling.clone(), "/", "GET"),
    )
    .await?;
    println!(
        "rl-http-check  target: >= 0.70x the bare-hyper ceiling (got {ratio:.2}x; ceiling body {} B)\n",
        body.len()
    );
    Ok(())
}

/// Kills its own Redis under a steady load of checks and measures how long the rule takes
/// to answer by its failure policy, then how long after a restart Redis answers again.
async fn failover(args: &RateLimitArgs, scratch: &std::path::Path) -> anyhow::Result<()> {
    let port = free_port()?;
    let start_redis = || {
        Command::new(&args.redis_server_bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", args.redis_server_bin.display()))
    };
    let mut redis = Killed(start_redis()?);
    wait_for_port(port).await?;
    let store = sb_store_embedded::EmbeddedStore::open(sb_store_embedded::EmbeddedOptions::new(
        scratch.join("failover.redb"),
    ))
    .await?;
    let catalog = RuleCatalog::start(store, Duration::from_secs(5)).await?;
    let tier = RedisTier::start(RedisTierOptions::new(format!("redis://127.0.0.1:{port}"))).await?;
    let global: Arc<dyn GlobalTier> = tier.clone();
    let limiter = Arc::new(RateLimiter::new(Arc::new(catalog), Some(global), Arc::new(|| 1)));
    let spec: RuleSpec = serde_json::from_value(serde_json::json!({
        "algorithm":"gcra","rate":RATE_PER_SEC,"burst":BURST,"tier":"redis"
    }))?;
    limiter.catalog().put("public", "bench", spec, &sb_audit::Audit::system("bench")).await?;
    for round in 0..3 {
        // A steady load: 8 tasks, one check per millisecond each.
        let stop = Arc::new(AtomicBool::new(false));
        let (last_fallback_ns, last_redis_ns) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let epoch = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (limiter, stop, fallback, up) =
                (limiter.clone(), stop.clone(), last_fallback_ns.clone(), last_redis_ns.clone());
            tasks.push(tokio::spawn(async move {
                let none: [(&str, &str); 0] = [];
                while !stop.load(Ordering::Relaxed) {
                    let answer = limiter.check("public", "bench", &none[..], 1).await;
                    let at = epoch.elapsed().as_nanos() as u64;
                    match answer.map(|a| a.served_by) {
                        Ok(ServedBy::Redis) => up.fetch_max(at, Ordering::Relaxed),
                        Ok(_) => fallback.fetch_max(at, Ordering::Relaxed),
                        Err(_) => 0,
                    };
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let killed_at = epoch.elapsed();
        drop(redis);
        let switched =
            wait_until(epoch, || last_fallback_ns.load(Ordering::Relaxed) > killed_at.as_nanos() as u64)
                .await?;
        let restarted_at = epoch.elapsed();
        redis = Killed(start_redis()?);
        let back =
            wait_until(epoch, || last_redis_ns.load(Ordering::Relaxed) > restarted_at.as_nanos() as u64)
                .await?;
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            let _ = task.await;
        }
        println!(
            "rl-failover    round {round}: switched to the failure policy {:>6.1} ms after the kill (target <= 1000), back on Redis {:>6.1} ms after the restart",
            (switched - killed_at).as_secs_f64() * 1000.0,
            (back - restarted_at).as_secs_f64() * 1000.0,
        );
    }
    drop(redis);
    Ok(())
}

async fn wait_for_port(port: u16) -> anyhow::Result<()> {
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("redis-server on port {port} did not accept connections within 5 s")
}

/// Polls `done` every 100 µs (30 s at most); answers when it turned true, as an offset
/// from `epoch`.
async fn wait_until(epoch: Instant, done: impl Fn() -> bool) -> anyhow::Result<Duration> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if done() {
            return Ok(epoch.elapsed());
        }
        tokio::time::sleep(Duration::from_micros(100)).await;
    }
    bail!("the rule did not switch within 30 s")
}
