//! The config center over the Nacos 1.x config API (`/nacos/v1/cs/…`), side by side with
//! a peer speaking the same API (r-nacos 0.8.8 with `--peer rnacos`), A B A B:
//! - `get`: one config of `--content-bytes`, read by every client; also against the
//!   bare-hyper ceiling answering a body of the same size;
//! - `publish`: each client publishes its own config, new content every time (durable);
//! - `notify`: publish → a held `configs/listener` long-poll answers, at concurrency 1 and
//!   at `--notify-clients` (each client its own config and listener), against a bare-hyper
//!   round trip at the same concurrency;
//! - `rss`: the server's RSS with `--configs` configs of `--content-bytes`;
//! - `longpolls`: `--long-polls` concurrent long-polls held (RSS while held), then one
//!   publish per listened config and the time until every poll has answered.
//!
//! Every client holds one HTTP/1.1 keep-alive connection, as `wrk -c N` does. Many
//! long-polls need as many file descriptors in this process and the server (`ulimit -n`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use md5::{Digest, Md5};
use tokio::time::Instant;

use crate::nacos_targets::{
    ab, connect_all, proc_kib, start_ceiling, start_rnacos, start_switchboard, Conn, Peer, Target,
};
use crate::report::{
    compare_ab_isolated, notified_level, notified_levels, run_clients, run_notify_clients, Isolate, Notified,
    Outcome, Samples,
};

#[derive(clap::Args)]
pub struct ConfigArgs {
    /// The switchboard binary to benchmark (a release build).
    #[arg(long, default_value = "target/release/switchboard")]
    switchboard_bin: PathBuf,
    /// This bench binary, to start the bare-hyper ceiling as its own process.
    #[arg(long, default_value = "target/release/sb-bench")]
    bench_bin: PathBuf,
    /// The peer that runs the same scenarios.
    #[arg(long, value_enum, default_value = "rnacos")]
    peer: Peer,
    #[arg(long, env = "SB_BENCH_RNACOS", default_value = "~/.cache/sb-peers/bin/rnacos")]
    rnacos_bin: String,
    /// Where temp data dirs go.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Seconds per run.
    #[arg(long, default_value_t = 5)]
    secs: u64,
    /// Concurrent clients (connections).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// The size of every config's content.
    #[arg(long, default_value_t = 1024)]
    content_bytes: usize,
    /// Publish → notified samples at concurrency 1.
    #[arg(long, default_value_t = 200)]
    notify_samples: usize,
    /// Concurrent clients of the publish → notified run beside the concurrency-1 one
    /// (each with its own config and listener); 0 or 1 skips it.
    #[arg(long, default_value_t = 64)]
    notify_clients: usize,
    /// The RSS scenario's configs.
    #[arg(long, default_value_t = 10_000)]
    configs: usize,
    /// Concurrent long-polls in the `longpolls` scenario, and the configs they listen to.
    #[arg(long, default_value_t = 10_000)]
    long_polls: usize,
    #[arg(long, default_value_t = 100)]
    long_poll_configs: usize,
    /// Only these scenarios (comma-separated: get,publish,notify,rss,longpolls); all by default.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Keep every server running during the others' runs. By default each server (and the
    /// bare-hyper ceiling) is stopped with SIGSTOP while another one is measured, so that
    /// one's background work does not load the other's numbers.
    #[arg(long)]
    no_isolate: bool,
}

const GROUP: &str = "BENCH";

pub async fn run(args: ConfigArgs) -> anyhow::Result<()> {
    let scratch = match &args.data_dir {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir()?,
    };
    let wants = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    println!(
        "sb-bench config: {} clients, content {} B, {} s per run, A B A B, peer {:?}, nproc {}",
        args.clients,
        args.content_bytes,
        args.secs,
        args.peer,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // Stopped for a whole run of the other server at a time, its leases must outlast that.
    let long_leases: &[&str] = if args.no_isolate {
        &[]
    } else {
        &["--membership-ttl-secs", "120", "--session-ttl-secs", "240", "--ids-worker-ttl-secs", "240"]
    };
    let sb = start_switchboard(&args.switchboard_bin, &scratch.path().join("sb"), long_leases).await?;
    let peer = match args.peer {
        Peer::Rnacos => Some(start_rnacos(&args.rnacos_bin, &scratch.path().join("rnacos")).await?),
        Peer::None => None,
    };
    // Stopped while another server runs, unless `--no-isolate`.
    let keep = |pid: u32| (!args.no_isolate).then_some(pid);
    let pids = [keep(sb.pid), peer.as_ref().and_then(|p| keep(p.pid))];
    let target_pids: Vec<Option<u32>> =
        std::iter::once(&sb).chain(peer.as_ref()).map(|t| keep(t.pid)).collect();
    let targets: Vec<&Target> = std::iter::once(&sb).chain(peer.as_ref()).collect();
    let peer_name = peer.as_ref().map_or("none", |p| p.name);
    let secs = Duration::from_secs(args.secs);
    let (clients, size) = (args.clients, args.content_bytes);

    // r-nacos 0.8.8 sometimes starts with a broken raft apply (shared/bench.md): a publish
    // that cannot be read back stops the run rather than measuring nothing.
    for target in &targets {
        let mut conn = crate::http_bench::connect(&target.addr).await?;
        let mut read_back = None;
        // r-nacos takes a moment after start before publishes stick.
        for _ in 0..20 {
            publish(&mut conn, target, "bench.get", &content(size, 0)).await?;
            if let Ok(body) = get(&mut conn, target, "bench.get").await {
                read_back = Some(body.len());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if read_back != Some(size) {
            bail!(
                "{} answered {read_back:?} bytes for a {size}-byte config published 20 times (r-nacos 0.8.8's start-up race? run again)",
                target.name
            );
        }
    }
    if wants("get") {
        let b = peer.as_ref().map(|p| || get_load(p, clients, secs));
        ab("config-get", [sb.name, peer_name], pids, || get_load(&sb, clients, secs), b).await?;
        let (ceiling, _guard) = start_ceiling(&args.bench_bin, size).await?;
        compare_ab_isolated(
            "config-get",
            ["switchboard", "hyper"],
            [keep(sb.pid), keep(ceiling.pid)],
            || get_load(&sb, clients, secs),
            || ceiling_load(&ceiling, clients, secs),
        )
        .await?;
    }
    if wants("publish") {
        let round = std::sync::atomic::AtomicUsize::new(0);
        let next = || round.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let b = peer.as_ref().map(|p| || publish_load(p, clients, secs, size, next()));
        ab("config-pub", [sb.name, peer_name], pids, || publish_load(&sb, clients, secs, size, next()), b)
            .await?;
    }
    if wants("notify") {
        let (ceiling, _guard) = start_ceiling(&args.bench_bin, 64).await?;
        let levels = notified_levels(args.notify_samples, args.notify_clients);
        for (round, (clients, samples)) in levels.into_iter().enumerate() {
            let label = format!("notify-c{clients}");
            let names: Vec<&str> = targets.iter().map(|t| t.name).collect();
            notified_level(
                &label,
                &names,
                round,
                (clients == 1).then(|| scratch.path()),
                Isolate { targets: &target_pids, floor: keep(ceiling.pid) },
                || ceiling_load(&ceiling, clients, secs),
                |index, tag: String| {
                    let target = targets[index];
                    async move { notify_load(target, clients, secs, samples, size, &tag).await }
                },
            )
            .await?;
        }
        println!("(notify-cN: N clients, each publishing its own config while its own listener is held on the old md5; notify: publish request → the held long-poll answered, notify-ack: from the publish's answer (0 if the listener came first); the floor is a bare-hyper round trip at the same N; c1 runs at most --notify-samples loops)\n");
    }
    if wants("rss") {
        for target in &targets {
            let took = fill(target, args.configs, size, clients).await?;
            println!(
                "config-rss     {:<11} {} configs of {size} B published in {:.1} s: VmRSS {} KiB, VmHWM {} KiB",
                target.name,
                args.configs,
                took.as_secs_f64(),
                proc_kib(target.pid, "VmRSS:").unwrap_or(0),
                proc_kib(target.pid, "VmHWM:").unwrap_or(0)
            );
        }
        println!();
    }
    if wants("longpolls") {
        for target in &targets {
            long_polls(target, args.long_polls, args.long_poll_configs.max(1), size).await?;
        }
    }
    Ok(())
}

/// `size` bytes of text, different for each `n`.
fn content(size: usize, n: usize) -> String {
    let head = format!("n={n}\n");
    let mut text = head.clone();
    text.extend(std::iter::repeat_n('x', size.saturating_sub(head.len() + 1)));
    text.push('\n');
    text.truncate(size.max(head.len()));
    text
}

fn md5_hex(text: &str) -> String {
    hex::encode(Md5::digest(text.as_bytes()))
}

fn form(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (name, value) in pairs {
        if !out.is_empty() {
            out.push('&');
        }
        out.extend(form_encode(name));
        out.push('=');
        out.extend(form_encode(value));
    }
    out
}

fn form_encode(text: &str) -> impl Iterator<Item = String> + '_ {
    text.bytes().map(|b| match b {
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => (b as char).to_string(),
        b' ' => "+".to_owned(),
        other => format!("%{other:02X}"),
    })
}

/// One request with extra headers and an optional form body; the body on a 2xx.
async fn send(
    conn: &mut Conn,
    method: &str,
    uri: &str,
    headers: &[(&str, String)],
    form_body: Option<String>,
) -> anyhow::Result<Bytes> {
    conn.ready().await?;
    let mut builder = hyper::Request::builder().method(method).uri(uri).header("host", "bench");
    for (name, value) in headers {
        builder = builder.header(*name, value);
    }
    let body = match form_body {
        Some(body) => {
            builder = builder.header("content-type", "application/x-www-form-urlencoded");
            Bytes::from(body)
        }
        None => Bytes::new(),
    };
    let response = conn.send_request(builder.body(Full::new(body))?).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("{method} {uri}: {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok(body)
}

fn auth_query(target: &Target) -> String {
    target.auth.trim_start_matches('&').to_owned()
}

async fn publish(conn: &mut Conn, target: &Target, data_id: &str, text: &str) -> anyhow::Result<()> {
    let body = form(&[("dataId", data_id), ("group", GROUP), ("content", text), ("type", "text")]);
    let answer =
        send(conn, "POST", &format!("/nacos/v1/cs/configs?{}", auth_query(target)), &[], Some(body)).await?;
    if answer.as_ref() != b"true" {
        bail!("{} answered a publish with {}", target.name, String::from_utf8_lossy(&answer));
    }
    Ok(())
}

async fn get(conn: &mut Conn, target: &Target, data_id: &str) -> anyhow::Result<Bytes> {
    let uri = format!("/nacos/v1/cs/configs?dataId={data_id}&group={GROUP}{}", target.auth);
    send(conn, "GET", &uri, &[], None).await
}

async fn get_load(target: &Target, clients: usize, secs: Duration) -> anyhow::Result<Outcome> {
    let conns = connect_all(&target.addr, clients).await?;
    let uri = format!("/nacos/v1/cs/configs?dataId=bench.get&group={GROUP}{}", target.auth);
    run_clients(conns, secs, move |mut conn: Conn, _, _| {
        let uri = uri.clone();
        async move {
            let result = send(&mut conn, "GET", &uri, &[], None).await.map(|_| ());
            (conn, result)
        }
    })
    .await
}

async fn ceiling_load(ceiling: &Target, clients: usize, secs: Duration) -> anyhow::Result<Outcome> {
    let conns = connect_all(&ceiling.addr, clients).await?;
    run_clients(conns, secs, |mut conn: Conn, _, _| async move {
        let result = send(&mut conn, "GET", "/", &[], None).await.map(|_| ());
        (conn, result)
    })
    .await
}

async fn publish_load(
    target: &Target,
    clients: usize,
    secs: Duration,
    size: usize,
    round: usize,
) -> anyhow::Result<Outcome> {
    let conns = connect_all(&target.addr, clients).await?;
    let uri = format!("/nacos/v1/cs/configs?{}", auth_query(target));
    run_clients(conns, secs, move |mut conn: Conn, task, i| {
        let uri = uri.clone();
        async move {
            let data_id = format!("bench.pub.{task}");
            let text = content(size, round * 1_000_000 + i);
            let body = form(&[("dataId", &data_id), ("group", GROUP), ("content", &text), ("type", "text")]);
            let result = send(&mut conn, "POST", &uri, &[], Some(body)).await.and_then(|answer| {
                if answer.as_ref() == b"true" {
                    Ok(())
                } else {
                    bail!("publish answered {}", String::from_utf8_lossy(&answer))
                }
            });
            (conn, result)
        }
    })
    .await
}

fn listen_body(data_id: &str, md5: &str) -> String {
    form(&[("Listening-Configs", &format!("{data_id}\u{2}{GROUP}\u{2}{md5}\u{1}"))])
}

/// One notify client: a publisher connection and a listener connection on its own config.
struct NotifyClient {
    publisher: Conn,
    listener: Conn,
    data_id: String,
    current: String,
    publish_uri: String,
    listen_uri: String,
    size: usize,
}

/// `clients` loops of: hold a long-poll on the client's own config at its current md5,
/// publish new content, and time until the long-poll answers.
async fn notify_load(
    target: &Target,
    clients: usize,
    secs: Duration,
    samples: usize,
    size: usize,
    tag: &str,
) -> anyhow::Result<[Outcome; 2]> {
    let mut states = Vec::with_capacity(clients);
    for task in 0..clients {
        let mut publisher = crate::http_bench::connect(&target.addr).await?;
        let listener = crate::http_bench::connect(&target.addr).await?;
        let data_id = format!("bench.notify.{tag}.{task}");
        let current = content(size, task * 1_000_000);
        publish(&mut publisher, target, &data_id, &current).await?;
        states.push(NotifyClient {
            publisher,
            listener,
            data_id,
            current,
            publish_uri: format!("/nacos/v1/cs/configs?{}", auth_query(target)),
            listen_uri: format!("/nacos/v1/cs/configs/listener?{}", auth_query(target)),
            size,
        });
    }
    run_notify_clients(states, secs, samples, |mut client: NotifyClient, task, i| async move {
        let result = notify_once(&mut client, task * 1_000_000 + i + 1).await;
        (client, result)
    })
    .await
}

/// How long a long-poll is given to reach the server and be held before the publish.
const HOLD_BEFORE_PUBLISH: Duration = Duration::from_millis(10);

async fn notify_once(client: &mut NotifyClient, n: usize) -> anyhow::Result<Notified> {
    let body = listen_body(&client.data_id, &md5_hex(&client.current));
    let headers = [("Long-Pulling-Timeout", "30000".to_owned())];
    let listen = send(&mut client.listener, "POST", &client.listen_uri, &headers, Some(body));
    tokio::pin!(listen);
    tokio::select! {
        early = &mut listen => bail!("the listener answered before the publish: {early:?}"),
        () = tokio::time::sleep(HOLD_BEFORE_PUBLISH) => {}
    }
    client.current = content(client.size, n);
    let text = form(&[
        ("dataId", &client.data_id),
        ("group", GROUP),
        ("content", &client.current),
        ("type", "text"),
    ]);
    let start = Instant::now();
    let publish = async {
        let answer = send(&mut client.publisher, "POST", &client.publish_uri, &[], Some(text)).await;
        (Instant::now(), answer)
    };
    let notified = async {
        let answer = (&mut listen).await;
        (Instant::now(), answer)
    };
    let ((answered, published), (notified, listened)) = tokio::join!(publish, notified);
    let published = published?;
    if published.as_ref() != b"true" {
        bail!("publish answered {}", String::from_utf8_lossy(&published));
    }
    if listened?.is_empty() {
        bail!("the listener timed out");
    }
    Ok(Notified { from_request: notified - start, from_answer: notified.saturating_duration_since(answered) })
}

/// Publishes `configs` configs of `size` bytes; returns the time it took.
async fn fill(target: &Target, configs: usize, size: usize, clients: usize) -> anyhow::Result<Duration> {
    let began = Instant::now();
    let per_client = configs.div_ceil(clients.max(1));
    let mut handles = Vec::new();
    for task in 0..clients {
        let mut conn = crate::http_bench::connect(&target.addr).await?;
        let auth = auth_query(target);
        handles.push(tokio::spawn(async move {
            let uri = format!("/nacos/v1/cs/configs?{auth}");
            for n in (task * per_client)..((task + 1) * per_client).min(configs) {
                let data_id = format!("bench.rss.{n}");
                let text = content(size, n);
                let body =
                    form(&[("dataId", &data_id), ("group", GROUP), ("content", &text), ("type", "text")]);
                send(&mut conn, "POST", &uri, &[], Some(body)).await?;
            }
            anyhow::Ok(())
        }));
    }
    for handle in handles {
        handle.await??;
    }
    Ok(began.elapsed())
}

/// Holds `polls` long-polls over `configs` configs, reports the server's RSS, then
/// publishes every config and times until all polls answered.
async fn long_polls(target: &Target, polls: usize, configs: usize, size: usize) -> anyhow::Result<()> {
    let mut publisher = crate::http_bench::connect(&target.addr).await?;
    let mut md5s = Vec::with_capacity(configs);
    for n in 0..configs {
        let text = content(size, n);
        publish(&mut publisher, target, &format!("bench.poll.{n}"), &text).await?;
        md5s.push(md5_hex(&text));
    }
    let rss_before = proc_kib(target.pid, "VmRSS:").unwrap_or(0);
    let uri = format!("/nacos/v1/cs/configs/listener?{}", auth_query(target));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<Result<Instant, String>>(polls.max(1));
    let opened = Instant::now();
    for i in 0..polls {
        let mut conn = crate::http_bench::connect(&target.addr)
            .await
            .with_context(|| format!("opening long-poll connection {i} (raise ulimit -n?)"))?;
        let body = listen_body(&format!("bench.poll.{}", i % configs), &md5s[i % configs]);
        let (uri, done) = (uri.clone(), done_tx.clone());
        tokio::spawn(async move {
            let headers = [("Long-Pulling-Timeout", "60000".to_owned())];
            let answer = send(&mut conn, "POST", &uri, &headers, Some(body)).await;
            let _ = done.send(answer.map(|_| Instant::now()).map_err(|e| e.to_string())).await;
        });
    }
    drop(done_tx);
    // Give the last polls time to reach the server and be held.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_held = proc_kib(target.pid, "VmRSS:").unwrap_or(0);
    let early = done_rx.len();
    let start = Instant::now();
    for n in 0..configs {
        publish(&mut publisher, target, &format!("bench.poll.{n}"), &content(size, n + 1_000_000)).await?;
    }
    let mut samples = Samples::default();
    while let Ok(Some(done)) = tokio::time::timeout(Duration::from_secs(30), done_rx.recv()).await {
        match done {
            Ok(at) if at >= start => samples.record(at - start),
            _ => samples.errors += 1,
        }
    }
    let answered = samples.latencies_us.len();
    let outcome = Outcome::from_samples(samples, start.elapsed());
    println!(
        "config-polls   {:<11} {polls} long-polls on {configs} configs opened in {:.1} s; VmRSS {rss_before} KiB before, {rss_held} KiB held ({} KiB more), VmHWM {} KiB",
        target.name,
        opened.elapsed().as_secs_f64() - 2.0,
        rss_held.saturating_sub(rss_before),
        proc_kib(target.pid, "VmHWM:").unwrap_or(0)
    );
    println!(
        "config-polls   {:<11} after publishing all {configs}: {answered} answered (p50 {} us, p99 {} us after the first publish), {} failed, {early} answered before any publish\n",
        target.name, outcome.p50_us, outcome.p99_us, outcome.errors
    );
    Ok(())
}
