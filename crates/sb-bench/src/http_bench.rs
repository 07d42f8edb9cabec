//! The server through its HTTP API, against its ceilings and its peer, in one run:
//! - KV GET against the bare-hyper ceiling (`sb-bench ceiling`, a separate process) with a
//!   body of the same size;
//! - durable KV PUT against etcd's put through raw `etcd-client`, at the same concurrency;
//! - time to ready on an empty data dir against etcd's start-up time, and idle RSS.
//!
//! Every client task holds one HTTP/1.1 keep-alive connection, as `wrk -c N` does.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::report::{compare_ab, run_clients, Outcome, PeerArgs};

/// The token the benchmarked server is started with (the bench sets it; never a default).
pub(crate) fn bench_token() -> String {
    format!("sb-bench-{:032x}", std::process::id() as u128 * 0x9e37_79b9_7f4a_7c15)
}

#[derive(clap::Args)]
pub struct HttpArgs {
    #[command(flatten)]
    peer: PeerArgs,
    /// The switchboard binary to benchmark (a release build).
    #[arg(long, default_value = "target/release/switchboard")]
    switchboard_bin: PathBuf,
    /// This bench binary, to start the bare-hyper ceiling as its own process.
    #[arg(long, default_value = "target/release/sb-bench")]
    bench_bin: PathBuf,
    /// The etcd binary, for the start-up comparison.
    #[arg(long, default_value = "etcd")]
    etcd_bin: PathBuf,
    /// Concurrent clients (connections).
    #[arg(long, default_value_t = 64)]
    clients: usize,
}

pub(crate) struct Killed(pub(crate) Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub async fn run(args: HttpArgs) -> anyhow::Result<()> {
    let scratch = args.peer.scratch()?;
    println!(
        "sb-bench http: {} clients, value {} B, {} s per run, A B A B, nproc {}",
        args.clients,
        args.peer.value_bytes,
        args.peer.secs,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // Start-up: switchboard on an empty data dir vs. etcd on an empty data dir.
    let mut ready = [Vec::new(), Vec::new()];
    for round in 0..3 {
        let dir = scratch.path().join(format!("startup-{round}"));
        let (_server, _, took) = start_switchboard(&args, &dir.join("sb")).await?;
        ready[0].push(took);
        ready[1].push(start_etcd(&args, &dir.join("etcd")).await?);
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (sb_ready, etcd_ready) = (median(&mut ready[0]), median(&mut ready[1]));
    println!(
        "ready          switchboard {:>6} ms  etcd {:>6} ms  ratio {:.2}x (median of 3, empty data dirs)",
        sb_ready.as_millis(),
        etcd_ready.as_millis(),
        sb_ready.as_secs_f64() / etcd_ready.as_secs_f64().max(1e-9)
    );

    let (server, base, _) = start_switchboard(&args, &scratch.path().join("server")).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = server.0.id();
    println!(
        "idle RSS       switchboard {} KiB (VmRSS 2 s after ready)",
        proc_kib(pid, "VmRSS:").unwrap_or(0)
    );

    let token = bench_token();
    let value = vec![b'v'; args.peer.value_bytes];
    // Seed 1,000 keys and learn the size of a typical GET response for the ceiling.
    let mut seed = connect(&base).await?;
    for i in 0..1000 {
        request(&mut seed, "PUT", &format!("/api/v1/kv/bench/k{i:04}"), &token, value.clone()).await?;
    }
    let get_body = request(&mut seed, "GET", "/api/v1/kv/bench/k0001", &token, Vec::new()).await?;
    let ceiling_port = free_port()?;
    let _ceiling = Killed(
        Command::new(&args.bench_bin)
            .args(["ceiling", "--listen", &format!("127.0.0.1:{ceiling_port}"), "--body-bytes"])
            .arg(get_body.len().to_string())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", args.bench_bin.display()))?,
    );
    let ceiling = format!("127.0.0.1:{ceiling_port}");
    wait_until_answers(&ceiling, "/").await?;
    let secs = Duration::from_secs(args.peer.secs);

    let kv_get = || {
        http_load(&base, args.clients, secs, &token, |_, i| {
            (format!("/api/v1/kv/bench/k{:04}", i % 1000), None)
        })
    };
    let ceiling_get = || http_load(&ceiling, args.clients, secs, &token, |_, _| ("/".to_owned(), None));
    compare_ab("kv-get", ["switchboard", "hyper"], kv_get, ceiling_get).await?;
    println!("(the ceiling answers a body of {} B, the size of a KV GET answer)\n", get_body.len());

    // The same reads straight to etcd, for reference (etcd serves them from its own
    // store; Switchboard from a view).
    let etcd = etcd_client::Client::connect([args.peer.etcd.as_str()], None).await?;
    for i in 0..1000 {
        etcd.kv_client().put(format!("bench/k{i:04}"), value.clone(), None).await?;
    }
    compare_ab("kv-get", ["switchboard", "etcd"], kv_get, || etcd_get_load(&etcd, args.clients, secs))
        .await?;

    let kv_put = || {
        let value = value.clone();
        http_load(&base, args.clients, secs, &token, move |task, i| {
            (format!("/api/v1/kv/bench/p{task:02}/{:04}", i % 1000), Some(value.clone()))
        })
    };
    compare_ab("kv-put", ["switchboard", "etcd"], kv_put, || etcd_load(&etcd, args.clients, secs, &value))
        .await?;
    println!("peak RSS       switchboard {} KiB (VmHWM)", proc_kib(pid, "VmHWM:").unwrap_or(0));
    Ok(())
}

async fn start_switchboard(
    args: &HttpArgs,
    data_dir: &std::path::Path,
) -> anyhow::Result<(Killed, String, Duration)> {
    let port = free_port()?;
    let base = format!("127.0.0.1:{port}");
    let began = Instant::now();
    let child = Command::new(&args.switchboard_bin)
        .args(["serve", "--listen", &base, "--data-dir"])
        .arg(data_dir)
        .env("SWITCHBOARD_ADMIN_TOKEN", bench_token())
        .env("SWITCHBOARD_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", args.switchboard_bin.display()))?;
    let child = Killed(child);
    wait_until_answers(&base, "/readyz").await?;
    Ok((child, base, began.elapsed()))
}

async fn start_etcd(args: &HttpArgs, data_dir: &std::path::Path) -> anyhow::Result<Duration> {
    let (client, peer) = (free_port()?, free_port()?);
    let began = Instant::now();
    let _etcd = Killed(
        Command::new(&args.etcd_bin)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{client}")])
            .args(["--advertise-client-urls", &format!("http://127.0.0.1:{client}")])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-cluster", &format!("default=http://127.0.0.1:{peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", args.etcd_bin.display()))?,
    );
    // Ready = it answers a read.
    let endpoint = format!("http://127.0.0.1:{client}");
    for _ in 0..2000 {
        if let Ok(mut c) = etcd_client::Client::connect([endpoint.as_str()], None).await {
            if c.get("ready", None).await.is_ok() {
                return Ok(began.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    bail!("etcd did not become ready")
}

pub(crate) async fn wait_until_answers(addr: &str, path: &str) -> anyhow::Result<()> {
    for _ in 0..5000 {
        if let Ok(mut conn) = connect(addr).await {
            if request(&mut conn, "GET", path, "", Vec::new()).await.is_ok() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    bail!("{addr}{path} did not answer 200 within 5 s")
}

pub(crate) async fn connect(addr: &str) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// One request; the body on a 2xx, an error otherwise.
pub(crate) async fn request(
    conn: &mut SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    token: &str,
    body: Vec<u8>,
) -> anyhow::Result<Bytes> {
    conn.ready().await?;
    let mut builder = Request::builder().method(method).uri(path).header("host", "bench");
    if !token.is_empty() {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    let response = conn.send_request(builder.body(Full::new(Bytes::from(body)))?).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("{method} {path}: {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok(body)
}

pub(crate) async fn http_load<F>(
    addr: &str,
    clients: usize,
    secs: Duration,
    token: &str,
    op: F,
) -> anyhow::Result<Outcome>
where
    F: Fn(usize, usize) -> (String, Option<Vec<u8>>) + Clone + Send + 'static,
{
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(connect(addr).await?);
    }
    let token = token.to_owned();
    run_clients(conns, secs, move |mut conn: SendRequest<Full<Bytes>>, task, i| {
        let (path, body) = op(task, i + task * 7919);
        let token = token.clone();
        async move {
            let method = if body.is_some() { "PUT" } else { "GET" };
            let result =
                request(&mut conn, method, &path, &token, body.unwrap_or_default()).await.map(|_| ());
            (conn, result)
        }
    })
    .await
}

async fn etcd_load(
    client: &etcd_client::Client,
    clients: usize,
    secs: Duration,
    value: &[u8],
) -> anyhow::Result<Outcome> {
    let value = value.to_vec();
    run_clients(vec![client.kv_client(); clients], secs, move |mut kv: etcd_client::KvClient, task, i| {
        let value = value.clone();
        async move {
            let result = kv.put(format!("bench/p{task:02}/{:04}", i % 1000), value, None).await;
            (kv, result.map(|_| ()).map_err(Into::into))
        }
    })
    .await
}

async fn etcd_get_load(
    client: &etcd_client::Client,
    clients: usize,
    secs: Duration,
) -> anyhow::Result<Outcome> {
    run_clients(
        vec![client.kv_client(); clients],
        secs,
        move |mut kv: etcd_client::KvClient, task, i| async move {
            let result = kv.get(format!("bench/k{:04}", (task * 7919 + i) % 1000), None).await;
            (kv, result.map(|_| ()).map_err(Into::into))
        },
    )
    .await
}

fn proc_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
