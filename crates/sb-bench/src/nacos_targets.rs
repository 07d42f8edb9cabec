//! What every Nacos-API scenario shares: the targets (Switchboard, r-nacos 0.8.8, the
//! bare-hyper ceiling) started as their own processes on free ports, keep-alive
//! connections, and the A B A B runner that also works without a peer.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::http_bench::{bench_token, connect, free_port, request, wait_until_answers, Killed};
use crate::report::{compare_ab_isolated, run_clients, Outcome};

pub(crate) type Conn = hyper::client::conn::http1::SendRequest<http_body_util::Full<hyper::body::Bytes>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Peer {
    /// r-nacos (`--rnacos-bin`), started on free ports with its own data dir.
    Rnacos,
    /// No peer: Switchboard alone (and its ceilings).
    None,
}

pub(crate) struct Target {
    pub(crate) name: &'static str,
    pub(crate) addr: String,
    /// Appended to every Nacos query (`accessToken=…` for Switchboard).
    pub(crate) auth: String,
    pub(crate) pid: u32,
    _process: Killed,
}

/// Switchboard vs. the peer when there is one, else Switchboard alone; with `pids`, each
/// side's server is stopped while the other runs ([`compare_ab_isolated`]).
pub(crate) async fn ab<FA, FutA, FB, FutB>(
    scenario: &str,
    names: [&str; 2],
    pids: [Option<u32>; 2],
    mut a: FA,
    b: Option<FB>,
) -> anyhow::Result<()>
where
    FA: FnMut() -> FutA,
    FutA: std::future::Future<Output = anyhow::Result<Outcome>>,
    FB: FnMut() -> FutB,
    FutB: std::future::Future<Output = anyhow::Result<Outcome>>,
{
    match b {
        Some(b) => {
            compare_ab_isolated(scenario, names, pids, &mut a, b).await?;
        }
        None => {
            a().await?.print(scenario, names[0]);
            println!();
        }
    }
    Ok(())
}

/// Starts a Switchboard node on a free port with the bench's admin token; `extra` flags
/// are passed to `serve`.
pub(crate) async fn start_switchboard(bin: &Path, data_dir: &Path, extra: &[&str]) -> anyhow::Result<Target> {
    let addr = format!("127.0.0.1:{}", free_port()?);
    let child = Command::new(bin)
        .args(["serve", "--listen", &addr, "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .env("SWITCHBOARD_ADMIN_TOKEN", bench_token())
        .env("SWITCHBOARD_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id();
    let process = Killed(child);
    wait_until_answers(&addr, "/readyz").await?;
    Ok(Target {
        name: "switchboard",
        addr,
        auth: format!("&accessToken={}", bench_token()),
        pid,
        _process: process,
    })
}

/// Starts r-nacos (`~/` in `bin` is the home directory) on free ports with its own data dir.
pub(crate) async fn start_rnacos(bin: &str, data_dir: &Path) -> anyhow::Result<Target> {
    let bin = match bin.strip_prefix("~/") {
        Some(rest) => PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(rest),
        None => PathBuf::from(bin),
    };
    let (http, grpc, console) = (free_port()?, free_port()?, free_port()?);
    let child = Command::new(&bin)
        .env("RNACOS_HTTP_PORT", http.to_string())
        .env("RNACOS_GRPC_PORT", grpc.to_string())
        .env("RNACOS_HTTP_CONSOLE_PORT", console.to_string())
        .env("RNACOS_RAFT_NODE_ADDR", format!("127.0.0.1:{grpc}"))
        .env("RNACOS_DATA_DIR", data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {} (r-nacos 0.8.8; see shared/bench.md)", bin.display()))?;
    let pid = child.id();
    let process = Killed(child);
    let addr = format!("127.0.0.1:{http}");
    wait_until_answers(&addr, "/nacos/v1/ns/operator/metrics").await.context("r-nacos did not start")?;
    Ok(Target { name: "r-nacos", addr, auth: String::new(), pid, _process: process })
}

/// Starts the bare-hyper ceiling (this bench binary) answering `body_bytes`.
pub(crate) async fn start_ceiling(bench_bin: &Path, body_bytes: usize) -> anyhow::Result<(Target, ())> {
    let addr = format!("127.0.0.1:{}", free_port()?);
    let child = Command::new(bench_bin)
        .args(["ceiling", "--listen", &addr, "--body-bytes", &body_bytes.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bench_bin.display()))?;
    let pid = child.id();
    let process = Killed(child);
    wait_until_answers(&addr, "/").await?;
    Ok((Target { name: "hyper", addr, auth: String::new(), pid, _process: process }, ()))
}

pub(crate) async fn connect_all(addr: &str, clients: usize) -> anyhow::Result<Vec<Conn>> {
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(connect(addr).await?);
    }
    Ok(conns)
}

pub(crate) async fn nacos(
    conn: &mut Conn,
    target: &Target,
    method: &str,
    path: &str,
    query: &str,
) -> anyhow::Result<hyper::body::Bytes> {
    nacos_as(conn, &target.auth, method, path, query).await
}

/// A Nacos call with `auth` (a target's [`Target::auth`]) appended to its query.
pub(crate) async fn nacos_as(
    conn: &mut Conn,
    auth: &str,
    method: &str,
    path: &str,
    query: &str,
) -> anyhow::Result<hyper::body::Bytes> {
    request(conn, method, &format!("{path}?{query}{auth}"), "", Vec::new()).await
}

/// Loops of one Nacos call per client; `query(task, i)` names the call.
pub(crate) async fn nacos_load(
    target: &Target,
    clients: usize,
    secs: Duration,
    method: &'static str,
    path: &'static str,
    query: impl Fn(usize, usize) -> String + Clone + Send + Sync + 'static,
    check: fn(&[u8]) -> bool,
) -> anyhow::Result<Outcome> {
    let conns = connect_all(&target.addr, clients).await?;
    let auth = target.auth.clone();
    run_clients(conns, secs, move |mut conn: Conn, task, i| {
        let uri = format!("{path}?{}{auth}", query(task, i));
        async move {
            let result = request(&mut conn, method, &uri, "", Vec::new()).await.and_then(|body| {
                if check(&body) {
                    Ok(())
                } else {
                    bail!("unexpected answer: {}", String::from_utf8_lossy(&body))
                }
            });
            (conn, result)
        }
    })
    .await
}

pub(crate) fn any(_: &[u8]) -> bool {
    true
}

pub(crate) fn proc_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
