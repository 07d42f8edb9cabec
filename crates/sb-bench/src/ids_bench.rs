//! Unique IDs against their ceilings, in one run:
//! - Snowflake in-process against the layout's limit of 4,096,000 IDs/s per worker;
//! - segments in-process (IDs/s; the target is 10 M/s);
//! - the HTTP batch endpoint (`count=10000`) in IDs/s (target 1 M/s);
//! - single-ID HTTP against the bare-hyper ceiling with a body of the same size, A B A B.
//!
//! In-process scenarios run on the embedded store in a temp dir (the store is touched
//! only to take a worker, renew marks and allocate segments).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sb_ids::{SegmentOptions, SegmentService, SnowflakeOptions, SnowflakeService, SystemClock};
use sb_store::SharedStore;
use tokio::time::Instant;

use crate::http_bench::{bench_token, connect, free_port, http_load, request, wait_until_answers, Killed};
use crate::report::compare_ab;

/// The Snowflake layout's ceiling: 4,096 IDs per millisecond per worker.
const SNOWFLAKE_LIMIT_PER_SEC: f64 = 4_096_000.0;

#[derive(clap::Args)]
pub struct IdsArgs {
    /// Seconds per run.
    #[arg(long, default_value_t = 5)]
    secs: u64,
    /// Concurrent tasks (in-process) or connections (HTTP).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// IDs per in-process call.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Which scenarios: all, snowflake, segment, http-batch, http-single (comma-separated).
    #[arg(long, default_value = "all", value_delimiter = ',')]
    scenarios: Vec<String>,
    /// The switchboard binary for the HTTP scenarios (a release build).
    #[arg(long, default_value = "target/release/switchboard")]
    switchboard_bin: PathBuf,
    /// This bench binary, to start the bare-hyper ceiling as its own process.
    #[arg(long, default_value = "target/release/sb-bench")]
    bench_bin: PathBuf,
    /// Where temp data dirs go.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl IdsArgs {
    fn wants(&self, scenario: &str) -> bool {
        self.scenarios.iter().any(|s| s == "all" || s == scenario)
    }
}

pub async fn run(args: IdsArgs) -> anyhow::Result<()> {
    let scratch = match &args.data_dir {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir()?,
    };
    println!(
        "sb-bench ids: {} clients, in-process batches of {}, {} s per run, nproc {}",
        args.clients,
        args.batch,
        args.secs,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let secs = Duration::from_secs(args.secs);
    if args.wants("snowflake") || args.wants("segment") {
        let options = sb_store_embedded::EmbeddedOptions::new(scratch.path().join("store.redb"));
        let store: SharedStore = sb_store_embedded::EmbeddedStore::open(options).await?;
        if args.wants("snowflake") {
            let service = Arc::new(
                SnowflakeService::start(store.clone(), SnowflakeOptions::new("bench"), Arc::new(SystemClock))
                    .await?,
            );
            for clients in [1, args.clients] {
                let rate = in_process(clients, secs, args.batch, {
                    let service = service.clone();
                    move |mut out: Vec<u64>, batch| {
                        let service = service.clone();
                        async move {
                            let result = service.fill(&mut out, batch).await.map_err(Into::into);
                            (out, result)
                        }
                    }
                })
                .await?;
                println!(
                    "snowflake      {clients:>3} tasks {rate:>12.0} IDs/s  = {:.3} of the 4,096,000/s layout limit (target >= 0.95)",
                    rate / SNOWFLAKE_LIMIT_PER_SEC
                );
            }
            service.stop().await;
        }
        if args.wants("segment") {
            let segments = SegmentService::new(store.clone(), SegmentOptions::default());
            for clients in [1, args.clients] {
                let rate = in_process(clients, secs, args.batch, {
                    let segments = segments.clone();
                    move |mut out: Vec<u64>, batch| {
                        let segments = segments.clone();
                        async move {
                            let result =
                                segments.fill("public", "bench", &mut out, batch).await.map_err(Into::into);
                            (out, result)
                        }
                    }
                })
                .await?;
                println!("segment        {clients:>3} tasks {rate:>12.0} IDs/s  (target >= 10,000,000)");
            }
            // How long this node's buffers would last without the store, at the rate it
            // measured (what GET /api/v1/ids/segments reports).
            if let Some(buffer) = segments.list_tags("public").await?.into_iter().find_map(|t| t.node_buffer)
            {
                println!(
                    "segment        buffers hold {} IDs (step now {}), {:.0} IDs/s measured: {:.3} s without the store",
                    buffer.remaining,
                    buffer.current_step,
                    buffer.rate_per_sec,
                    buffer.seconds_left.unwrap_or(0.0)
                );
            }
        }
    }
    if args.wants("http-batch") || args.wants("http-single") {
        http(&args, scratch.path(), secs).await?;
    }
    Ok(())
}

/// Runs `clients` tasks calling `fill` back to back for `secs`; answers IDs/s. Each task
/// reuses one buffer (handed to `fill` and back): the measurement is the generator, not
/// the allocator.
async fn in_process<F, Fut>(clients: usize, secs: Duration, batch: usize, fill: F) -> anyhow::Result<f64>
where
    F: Fn(Vec<u64>, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = (Vec<u64>, anyhow::Result<()>)> + Send,
{
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + secs;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (fill, issued) = (fill.clone(), issued.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(batch);
            while Instant::now() < deadline {
                out.clear();
                let (back, result) = fill(out, batch).await;
                result?;
                out = back;
                issued.fetch_add(batch as u64, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(issued.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

async fn http(args: &IdsArgs, scratch: &std::path::Path, secs: Duration) -> anyhow::Result<()> {
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
    if args.wants("http-batch") {
        let batch = || {
            http_load(&base, args.clients, secs, &token, |_, _| {
                ("/api/v1/ids/snowflake?count=10000".to_owned(), None)
            })
        };
        for _round in 0..2 {
            let outcome = batch().await?;
            outcome.print("ids-batch", "switchboard");
            println!(
                "ids-batch      {:>12.0} IDs/s (count=10000; target >= 1,000,000)",
                outcome.ops_per_sec() * 10_000.0
            );
        }
    }
    if args.wants("http-single") {
        let mut probe = connect(&base).await?;
        let body = request(&mut probe, "GET", "/api/v1/ids/snowflake", &token, Vec::new()).await?;
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
        let single = || {
            http_load(&base, args.clients, secs, &token, |_, _| ("/api/v1/ids/snowflake".to_owned(), None))
        };
        let bare = || http_load(&ceiling, args.clients, secs, &token, |_, _| ("/".to_owned(), None));
        let ratio = compare_ab("ids-single", ["switchboard", "hyper"], single, bare).await?;
        println!("(the ceiling answers a body of {} B, the size of a single-ID answer; target >= 0.7x, got {ratio:.2}x)\n", body.len());
    }
    Ok(())
}
