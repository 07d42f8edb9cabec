//! `sb-bench health`: one node running 10,000 active checks (half TCP, half HTTP) every 5 s
//! against local listeners in this process. It reports the node's CPU (share of one core,
//! from `/proc/<pid>/stat`) and RSS, and the schedule lag measured at the targets: for each
//! target, the gap between two probes minus the interval. The targets: probing keeps
//! up (no check overdue by more than one interval) and uses under 50% of one core.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::http_bench::{bench_token, connect, request};
use crate::nacos_targets::{proc_kib, start_switchboard};

#[derive(clap::Args)]
pub struct HealthArgs {
    #[arg(long)]
    pub switchboard_bin: PathBuf,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Checks (one persistent instance and one listener each); even ones TCP, odd ones HTTP.
    #[arg(long, default_value_t = 10_000)]
    pub checks: usize,
    /// Every check's interval.
    #[arg(long, default_value_t = 5000)]
    pub interval_ms: u64,
    /// The measured window, after one interval of warm-up.
    #[arg(long, default_value_t = 30)]
    pub secs: u64,
    /// Connections used to register the instances and set the checks.
    #[arg(long, default_value_t = 32)]
    pub setup_clients: usize,
}

/// Probe arrivals at the targets.
struct Arrivals {
    start: Instant,
    measuring: AtomicBool,
    /// Per target: the last arrival in the window, in µs since `start` (0: none yet).
    last_us: Vec<AtomicU64>,
    probes: AtomicU64,
    /// Gap between two probes of one target minus the interval, in µs.
    lateness_us: Mutex<Vec<i64>>,
    interval_us: i64,
}

impl Arrivals {
    fn arrived(&self, target: usize) {
        if !self.measuring.load(Ordering::Relaxed) {
            return;
        }
        let now = self.start.elapsed().as_micros() as u64;
        self.probes.fetch_add(1, Ordering::Relaxed);
        let last = self.last_us[target].swap(now, Ordering::Relaxed);
        if last != 0 {
            let lateness = now as i64 - last as i64 - self.interval_us;
            self.lateness_us.lock().unwrap_or_else(|e| e.into_inner()).push(lateness);
        }
    }
}

/// One listener per target: it records each connection, and answers an HTTP request 200.
async fn listen(arrivals: Arc<Arrivals>, target: usize) -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            arrivals.arrived(target);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await;
                if let Ok(Ok(n)) = read {
                    if n > 0 {
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                            .await;
                    }
                }
            });
        }
    });
    Ok(port)
}

/// CPU seconds (user + system) the process has used.
fn cpu_secs(pid: u32, ticks_per_sec: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_sec)
}

fn ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

pub async fn run(args: HealthArgs) -> anyhow::Result<()> {
    let scratch = match &args.data_dir {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir()?,
    };
    let arrivals = Arc::new(Arrivals {
        start: Instant::now(),
        measuring: AtomicBool::new(false),
        last_us: (0..args.checks).map(|_| AtomicU64::new(0)).collect(),
        probes: AtomicU64::new(0),
        lateness_us: Mutex::new(Vec::new()),
        interval_us: (args.interval_ms * 1000) as i64,
    });
    let mut ports = Vec::with_capacity(args.checks);
    for target in 0..args.checks {
        ports.push(listen(arrivals.clone(), target).await.context("a listener per check (raise ulimit -n)")?);
    }
    let node = start_switchboard(&args.switchboard_bin, scratch.path(), &["--dns-listen", "off"]).await?;
    let setup = Instant::now();
    let ports = Arc::new(ports);
    let mut tasks = Vec::new();
    for client in 0..args.setup_clients.max(1) {
        let (ports, addr, interval_ms) = (ports.clone(), node.addr.clone(), args.interval_ms);
        let clients = args.setup_clients.max(1);
        tasks.push(tokio::spawn(async move {
            let mut conn = connect(&addr).await?;
            let token = bench_token();
            for i in (client..ports.len()).step_by(clients) {
                let (service, port) = (format!("svc{}", i % 100), ports[i]);
                let instance = serde_json::json!({"ip": "127.0.0.1", "port": port, "ephemeral": false});
                let path = format!("/api/v1/namespaces/public/services/{service}/instances");
                request(&mut conn, "POST", &path, &token, instance.to_string().into_bytes()).await?;
                let kind = if i % 2 == 0 { "tcp" } else { "http" };
                let check = serde_json::json!({"kind": kind, "path": "/health", "interval_ms": interval_ms,
                                               "timeout_ms": interval_ms.min(2000)});
                let path = format!("{path}/127.0.0.1:{port}/check");
                request(&mut conn, "PUT", &path, &token, check.to_string().into_bytes()).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    println!(
        "health: {} checks ({} tcp, {} http) every {} ms on one node, set up in {:.1} s",
        args.checks,
        args.checks.div_ceil(2),
        args.checks / 2,
        args.interval_ms,
        setup.elapsed().as_secs_f64()
    );
    // Warm-up: every check has started (a random offset within one interval) and the
    // reconcile has picked them all up.
    tokio::time::sleep(Duration::from_millis(args.interval_ms) + Duration::from_secs(2)).await;
    let ticks = ticks_per_sec();
    arrivals.measuring.store(true, Ordering::Relaxed);
    let cpu_before = cpu_secs(node.pid, ticks).context("reading the node's CPU time")?;
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.secs)).await;
    let cpu_after = cpu_secs(node.pid, ticks).context("reading the node's CPU time")?;
    let elapsed = window.elapsed().as_secs_f64();
    arrivals.measuring.store(false, Ordering::Relaxed);

    let cpu_share = (cpu_after - cpu_before) / elapsed * 100.0;
    let mut lateness = std::mem::take(&mut *arrivals.lateness_us.lock().unwrap_or_else(|e| e.into_inner()));
    lateness.sort_unstable();
    let pct =
        |p: f64| lateness.get(((lateness.len() as f64 * p) as usize).min(lateness.len().saturating_sub(1)));
    let ms = |v: Option<&i64>| v.map_or("-".to_owned(), |us| format!("{:.1} ms", *us as f64 / 1000.0));
    let interval_us = arrivals.interval_us;
    let overdue = lateness.iter().filter(|l| **l > interval_us).count();
    let unprobed = arrivals.last_us.iter().filter(|l| l.load(Ordering::Relaxed) == 0).count();
    let probes = arrivals.probes.load(Ordering::Relaxed);
    let expected = args.checks as f64 * elapsed * 1000.0 / args.interval_ms as f64;
    let kib = |field| proc_kib(node.pid, field).map_or("?".to_owned(), |k| format!("{} MiB", k / 1024));
    println!(
        "health cpu     switchboard {cpu_share:.1}% of one core over {elapsed:.0} s (target < 50%: {})",
        if cpu_share < 50.0 { "met" } else { "missed" }
    );
    println!("health rss     switchboard {} now, {} peak", kib("VmRSS:"), kib("VmHWM:"));
    println!(
        "health lag     probe gap minus interval: p50 {}  p99 {}  max {}  ({} gaps)",
        ms(pct(0.50)),
        ms(pct(0.99)),
        ms(lateness.last()),
        lateness.len()
    );
    println!(
        "health overdue gaps over two intervals {overdue}, targets not probed in the window {unprobed} (target 0: {})",
        if overdue == 0 && unprobed == 0 { "met" } else { "missed" }
    );
    println!("health probes  {probes} seen, {expected:.0} expected ({:.0}/s)", probes as f64 / elapsed);
    Ok(())
}
