//! The registry over the Nacos 1.x naming API (`/nacos/v1/ns/…`), side by side with a
//! peer speaking the same API (r-nacos 0.8.8 with `--peer rnacos`), A B A B:
//! - `beat`: light beats of known instances (and the registry's store writes before and
//!   after, from `/metrics`: a beat-only load must leave them flat);
//! - `list`: `instance/list` of a 10-instance service, also against the bare-hyper ceiling
//!   answering a body of the same size;
//! - `push`: register → subscriber notified by Nacos UDP push, at concurrency 1 and at
//!   `--push-clients` (each client its own service and subscriber), against a bare-hyper
//!   round trip at the same concurrency;
//! - `register`: ephemeral instances, each a new one (its instances expire after it, so it
//!   runs after the others);
//! - `register-persistent`: persistent instances, each a new one, in services whose cluster's
//!   checker is `NONE`;
//! - `rss`: RSS with `--instances` persistent instances in `--services` services, and the
//!   list of one such service against the ceiling.
//!
//! Every client holds one HTTP/1.1 keep-alive connection, as `wrk -c N` does.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio::net::UdpSocket;
use tokio::time::Instant;

use crate::http_bench::{connect, request};
use crate::nacos_targets::{
    ab, any, connect_all, nacos, nacos_as, nacos_load, proc_kib, start_ceiling, start_rnacos,
    start_switchboard, Conn, Peer, Target,
};
use crate::report::{
    compare_ab_isolated, notified_level, notified_levels, run_clients, run_notify_clients, Isolate, Notified,
    Outcome,
};

#[derive(clap::Args)]
pub struct NamingArgs {
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
    /// Register → notified samples at concurrency 1.
    #[arg(long, default_value_t = 200)]
    push_samples: usize,
    /// Concurrent clients of the register → notified run beside the concurrency-1 one
    /// (each with its own service and subscriber); 0 or 1 skips it.
    #[arg(long, default_value_t = 64)]
    push_clients: usize,
    /// Other instances in each pushed service (a push carries the whole list: its size
    /// is what rendering and gzip cost).
    #[arg(long, default_value_t = 0)]
    push_instances: usize,
    /// The RSS scenario's instances and services.
    #[arg(long, default_value_t = 100_000)]
    instances: usize,
    #[arg(long, default_value_t = 1_000)]
    services: usize,
    /// Only these scenarios (comma-separated: register,register-persistent,beat,list,push,rss);
    /// all by default.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Keep every server running during the others' runs. By default each server (and the
    /// bare-hyper ceiling) is stopped with SIGSTOP while another one is measured, so that
    /// one's background work does not load the other's numbers.
    #[arg(long)]
    no_isolate: bool,
}

pub async fn run(args: NamingArgs) -> anyhow::Result<()> {
    let scratch = match &args.data_dir {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir()?,
    };
    let wants = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    println!(
        "sb-bench naming: {} clients, {} s per run, A B A B, peer {:?}, nproc {}",
        args.clients,
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
    let secs = Duration::from_secs(args.secs);
    let clients = args.clients;

    let peer_name = peer.as_ref().map_or("none", |p| p.name);
    if wants("beat") {
        for target in std::iter::once(&sb).chain(peer.as_ref()) {
            prime_beaters(target, clients).await?;
        }
        let writes = "switchboard_registry_store_writes_total";
        let revision = "switchboard_store_revision";
        let before = (scraped(&sb, writes).await?, scraped(&sb, revision).await?);
        let b = peer.as_ref().map(|p| || beat_load(p, clients, secs));
        ab("beat", [sb.name, peer_name], pids, || beat_load(&sb, clients, secs), b).await?;
        let after = (scraped(&sb, writes).await?, scraped(&sb, revision).await?);
        println!(
            "beat           switchboard registry store writes {} before the beat runs, {} after (store revision {} → {}: \
             other subsystems, such as the Snowflake high-water mark, write while idle too)\n",
            before.0, after.0, before.1, after.1
        );
    }
    if wants("list") {
        for target in std::iter::once(&sb).chain(peer.as_ref()) {
            let mut conn = connect(&target.addr).await?;
            for port in 0..10 {
                let query =
                    format!("serviceName=bench.list&ip=10.9.0.1&port={}&ephemeral=false", 1000 + port);
                nacos(&mut conn, target, "POST", "/nacos/v1/ns/instance", &query).await?;
            }
        }
        let path = "/nacos/v1/ns/instance/list";
        let query = "serviceName=bench.list";
        let b = peer.as_ref().map(|p| || get_load(p, clients, secs, path, query));
        ab("list", [sb.name, peer_name], pids, || get_load(&sb, clients, secs, path, query), b).await?;
        let body = nacos(&mut connect(&sb.addr).await?, &sb, "GET", path, query).await?;
        let (ceiling, _guard) = start_ceiling(&args.bench_bin, body.len()).await?;
        compare_ab_isolated(
            "list",
            ["switchboard", "hyper"],
            [keep(sb.pid), keep(ceiling.pid)],
            || get_load(&sb, clients, secs, path, query),
            || get_load(&ceiling, clients, secs, "/", ""),
        )
        .await?;
    }
    if wants("push") {
        let (ceiling, _guard) = start_ceiling(&args.bench_bin, 64).await?;
        let targets: Vec<&Target> = std::iter::once(&sb).chain(peer.as_ref()).collect();
        let levels = notified_levels(args.push_samples, args.push_clients);
        for (round, (clients, samples)) in levels.into_iter().enumerate() {
            let label = format!("push-c{clients}");
            let names: Vec<&str> = targets.iter().map(|t| t.name).collect();
            notified_level(
                &label,
                &names,
                round,
                (clients == 1).then(|| scratch.path()),
                Isolate { targets: &target_pids, floor: keep(ceiling.pid) },
                || get_load(&ceiling, clients, secs, "/", ""),
                |index, tag: String| {
                    let (target, instances) = (targets[index], args.push_instances);
                    async move { push_load(target, clients, secs, samples, &tag, instances).await }
                },
            )
            .await?;
        }
        println!("(push-cN: N clients, each with its own service and UDP subscriber, each loop re-registering its one instance with new metadata and timing until its own subscriber's push shows it; push: from the register request, push-ack: from its answer (0 if the push came first); the floor is a bare-hyper round trip at the same N; c1 runs at most --push-samples loops; each service also holds --push-instances other instances)\n");
    }
    // Last of the timed scenarios: every instance it registers stops beating when it ends,
    // so both servers spend the next 15–30 s marking them unhealthy and deleting them, which
    // would load any scenario run after it.
    if wants("register") {
        let round = std::sync::atomic::AtomicUsize::new(0);
        let next = || round.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let a = || register_load(&sb, clients, secs, next(), true);
        let b = peer.as_ref().map(|p| || register_load(p, clients, secs, next(), true));
        ab("register", [sb.name, peer_name], pids, a, b).await?;
    }
    // Persistent instances (durable in Switchboard; r-nacos 0.8.8 kept none of them across a
    // restart when tried by hand). Each client's service has its cluster's health checker set
    // to NONE first, on both targets, so no default check probes the bench's unreachable
    // addresses.
    if wants("register-persistent") {
        for target in std::iter::once(&sb).chain(peer.as_ref()) {
            let refused = quiet_services(target, clients).await?;
            if refused > 0 {
                println!("register-p     {} refused the NONE checker for {refused} services", target.name);
            }
        }
        let round = std::sync::atomic::AtomicUsize::new(0);
        let next = || round.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let a = || register_load(&sb, clients, secs, next(), false);
        let b = peer.as_ref().map(|p| || register_load(p, clients, secs, next(), false));
        ab("register-p", [sb.name, peer_name], pids, a, b).await?;
    }
    if wants("rss") {
        for target in std::iter::once(&sb).chain(peer.as_ref()) {
            let took = fill(target, args.instances, args.services, clients).await?;
            println!(
                "rss            {:<11} {} instances in {} services registered in {:.1} s: VmRSS {} KiB, VmHWM {} KiB",
                target.name,
                args.instances,
                args.services,
                took.as_secs_f64(),
                proc_kib(target.pid, "VmRSS:").unwrap_or(0),
                proc_kib(target.pid, "VmHWM:").unwrap_or(0)
            );
        }
        let per = (args.instances / args.services.max(1)).max(1);
        let path = "/nacos/v1/ns/instance/list";
        let body = nacos(&mut connect(&sb.addr).await?, &sb, "GET", path, "serviceName=bench.rss.0").await?;
        let (ceiling, _guard) = start_ceiling(&args.bench_bin, body.len()).await?;
        let services = args.services.max(1);
        let list = move |target: &Target| {
            let (addr, auth) = (target.addr.clone(), target.auth.clone());
            async move {
                let conns = connect_all(&addr, clients).await?;
                run_clients(conns, secs, move |mut conn, task, i| {
                    let path = format!(
                        "/nacos/v1/ns/instance/list?serviceName=bench.rss.{}{auth}",
                        (task * 7919 + i) % services
                    );
                    async move {
                        let result = request(&mut conn, "GET", &path, "", Vec::new()).await.map(|_| ());
                        (conn, result)
                    }
                })
                .await
            }
        };
        compare_ab_isolated(
            "list-100k",
            ["switchboard", "hyper"],
            [keep(sb.pid), keep(ceiling.pid)],
            || list(&sb),
            || get_load(&ceiling, clients, secs, "/", ""),
        )
        .await?;
        println!("(each list answers {per} instances, {} B)\n", body.len());
    }
    Ok(())
}

fn answered_ok(body: &[u8]) -> bool {
    body == b"ok"
}

fn beat_ok(body: &[u8]) -> bool {
    std::str::from_utf8(body).is_ok_and(|b| b.contains("10200"))
}

fn instance_ip(task: usize, i: usize) -> String {
    format!("10.{}.{}.{}", task % 250, (i / 250) % 250, i % 250 + 1)
}

/// Each client registers new instances in its own service: ephemeral ones in
/// `bench.reg.{client}`, persistent ones in `bench.preg.{client}` (see [`quiet_services`]).
async fn register_load(
    target: &Target,
    clients: usize,
    secs: Duration,
    round: usize,
    ephemeral: bool,
) -> anyhow::Result<Outcome> {
    let prefix = if ephemeral { "bench.reg" } else { "bench.preg" };
    nacos_load(
        target,
        clients,
        secs,
        "POST",
        "/nacos/v1/ns/instance",
        move |task, i| {
            format!(
                "serviceName={prefix}.{task}&ip={}&port={}&ephemeral={ephemeral}",
                instance_ip(task, i / 60000),
                1 + (i % 60000) + round % 5
            )
        },
        answered_ok,
    )
    .await
}

/// Creates each client's persistent-registration service with its cluster's checker set to
/// `NONE`; returns how many cluster settings the target refused.
async fn quiet_services(target: &Target, clients: usize) -> anyhow::Result<usize> {
    let mut conn = connect(&target.addr).await?;
    let mut refused = 0;
    for task in 0..clients {
        if !quiet_service(&mut conn, &target.auth, &format!("bench.preg.{task}")).await? {
            refused += 1;
        }
    }
    Ok(refused)
}

/// Creates a service and sets its `DEFAULT` cluster's checker to `NONE`, so that no default
/// check probes the bench's unreachable instance addresses; `false` if the target refused
/// the checker setting (r-nacos has none). `auth` is the target's [`Target::auth`].
async fn quiet_service(conn: &mut Conn, auth: &str, service: &str) -> anyhow::Result<bool> {
    let service = format!("serviceName={service}");
    nacos_as(conn, auth, "POST", "/nacos/v1/ns/service", &service).await?;
    let none = "healthChecker=%7B%22type%22%3A%22NONE%22%7D";
    let query = format!("{service}&clusterName=DEFAULT&{none}");
    Ok(nacos_as(conn, auth, "PUT", "/nacos/v1/ns/cluster", &query).await.is_ok())
}

const BEATERS_PER_CLIENT: usize = 10;

async fn prime_beaters(target: &Target, clients: usize) -> anyhow::Result<()> {
    let mut conn = connect(&target.addr).await?;
    for task in 0..clients {
        for n in 0..BEATERS_PER_CLIENT {
            let query = format!(
                "serviceName=bench.beat&ip={}&port={}&ephemeral=true",
                instance_ip(task, 0),
                2000 + n
            );
            nacos(&mut conn, target, "POST", "/nacos/v1/ns/instance", &query).await?;
        }
    }
    Ok(())
}

async fn beat_load(target: &Target, clients: usize, secs: Duration) -> anyhow::Result<Outcome> {
    nacos_load(
        target,
        clients,
        secs,
        "PUT",
        "/nacos/v1/ns/instance/beat",
        |task, i| {
            format!(
                "serviceName=bench.beat&ip={}&port={}",
                instance_ip(task, 0),
                2000 + i % BEATERS_PER_CLIENT
            )
        },
        beat_ok,
    )
    .await
}

async fn get_load(
    target: &Target,
    clients: usize,
    secs: Duration,
    path: &'static str,
    query: &'static str,
) -> anyhow::Result<Outcome> {
    if target.name == "hyper" {
        return nacos_load(target, clients, secs, "GET", "/", |_, _| String::new(), any).await;
    }
    nacos_load(target, clients, secs, "GET", path, move |_, _| query.to_owned(), any).await
}

/// Switchboard's store revision (the KV list answers it), to show beats do not write.
/// One counter or gauge from the server's `/metrics`, as a whole number.
async fn scraped(sb: &Target, name: &str) -> anyhow::Result<i64> {
    let body = request(&mut connect(&sb.addr).await?, "GET", "/metrics", "", Vec::new()).await?;
    let text = String::from_utf8_lossy(&body);
    let value = text
        .lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|value| value.trim().parse().ok());
    value.with_context(|| format!("no {name} in /metrics"))
}

/// One push client: its connection, its UDP subscriber socket and its own service.
struct PushClient {
    conn: Conn,
    socket: UdpSocket,
    service: String,
    ip: String,
    auth: String,
    buffer: Vec<u8>,
}

/// `clients` loops of one write each: re-register the client's one instance with new
/// metadata, and time until the client's own subscriber gets a push that shows it.
async fn push_load(
    target: &Target,
    clients: usize,
    secs: Duration,
    samples: usize,
    tag: &str,
    others: usize,
) -> anyhow::Result<[Outcome; 2]> {
    let mut states = Vec::with_capacity(clients);
    for task in 0..clients {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let udp_port = socket.local_addr()?.port();
        let mut conn = connect(&target.addr).await?;
        let service = format!("bench.push.{tag}.{task}");
        for n in 0..others {
            let other =
                format!("serviceName={service}&ip=10.9.{}.{}&port=5000&ephemeral=true", n / 250, n % 250 + 1);
            nacos(&mut conn, target, "POST", "/nacos/v1/ns/instance", &other).await?;
        }
        // A client's poll with `clientIP` and `udpPort` subscribes it (for 30 s, longer
        // than a run).
        let subscribe = format!("serviceName={service}&clientIP=127.0.0.1&udpPort={udp_port}");
        nacos(&mut conn, target, "GET", "/nacos/v1/ns/instance/list", &subscribe).await?;
        let ip = format!("10.8.{}.{}", task / 250, task % 250 + 1);
        let buffer = vec![0u8; 65536];
        states.push(PushClient { conn, socket, service, ip, auth: target.auth.clone(), buffer });
    }
    run_notify_clients(states, secs, samples, |mut client: PushClient, _task, i| async move {
        let result = push_once(&mut client, i).await;
        (client, result)
    })
    .await
}

async fn push_once(client: &mut PushClient, n: usize) -> anyhow::Result<Notified> {
    // `{"seq":"<n>"}`: every register changes the instance, so every one is pushed.
    let uri = format!(
        "/nacos/v1/ns/instance?serviceName={}&ip={}&port=4000&ephemeral=true&metadata=%7B%22seq%22%3A%22{n}%22%7D{}",
        client.service, client.ip, client.auth
    );
    let start = Instant::now();
    let body = request(&mut client.conn, "POST", &uri, "", Vec::new()).await?;
    let answered = Instant::now();
    anyhow::ensure!(answered_ok(&body), "register answered {}", String::from_utf8_lossy(&body));
    let needle = format!("\"seq\":\"{n}\"");
    let notified = wait_for_push(client, start, |packet| packet.contains(&needle)).await?;
    Ok(Notified { from_request: notified - start, from_answer: notified.saturating_duration_since(answered) })
}

/// Acknowledges every push (as a Nacos client does) until one satisfies `wanted`; returns
/// when it arrived.
async fn wait_for_push(
    client: &mut PushClient,
    since: Instant,
    wanted: impl Fn(&str) -> bool,
) -> anyhow::Result<Instant> {
    let deadline = since + Duration::from_secs(2);
    loop {
        let (len, from) = tokio::time::timeout_at(deadline, client.socket.recv_from(&mut client.buffer))
            .await
            .context("no push within 2 s")??;
        let arrived = Instant::now();
        let packet = decode_packet(&client.buffer[..len]);
        if let Some(last_ref) = last_ref_time(&packet) {
            let ack = format!("{{\"type\":\"push-ack\",\"lastRefTime\":\"{last_ref}\",\"data\":\"\"}}");
            let _ = client.socket.send_to(ack.as_bytes(), from).await;
        }
        if wanted(&packet.replace("\\\"", "\"")) {
            return Ok(arrived);
        }
    }
}

fn decode_packet(bytes: &[u8]) -> String {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = String::new();
        if flate2::read::GzDecoder::new(bytes).read_to_string(&mut out).is_ok() {
            return out;
        }
    }
    String::from_utf8_lossy(bytes).into_owned()
}

fn last_ref_time(packet: &str) -> Option<String> {
    let rest = packet.split("\"lastRefTime\":").last()?;
    let value: String = rest.trim_start_matches('"').chars().take_while(|c| c.is_ascii_digit()).collect();
    (!value.is_empty()).then_some(value)
}

/// Registers `instances` persistent instances over `services` services; returns the time.
/// On Switchboard each service is created first with its cluster's health checker set to
/// `NONE` (Nacos's cluster setting): a persistent Nacos instance otherwise gets the default
/// TCP check, and 100k probes of unreachable bench addresses would be what is measured.
/// r-nacos does not probe persistent instances.
async fn fill(
    target: &Target,
    instances: usize,
    services: usize,
    clients: usize,
) -> anyhow::Result<Duration> {
    let began = Instant::now();
    if target.name == "switchboard" {
        let per_client = services.div_ceil(clients.max(1));
        let mut handles = Vec::new();
        for task in 0..clients {
            let mut conn = connect(&target.addr).await?;
            let auth = target.auth.clone();
            handles.push(tokio::spawn(async move {
                for n in (task * per_client)..((task + 1) * per_client).min(services) {
                    let quiet = quiet_service(&mut conn, &auth, &format!("bench.rss.{n}")).await?;
                    anyhow::ensure!(quiet, "switchboard refused the NONE checker");
                }
                anyhow::Ok(())
            }));
        }
        for handle in handles {
            handle.await??;
        }
    }
    let per_client = instances.div_ceil(clients.max(1));
    let mut handles = Vec::new();
    for task in 0..clients {
        let mut conn = connect(&target.addr).await?;
        let auth = target.auth.clone();
        handles.push(tokio::spawn(async move {
            for n in (task * per_client)..((task + 1) * per_client).min(instances) {
                let uri = format!(
                    "/nacos/v1/ns/instance?serviceName=bench.rss.{}&ip=10.7.{}.{}&port={}&ephemeral=false{auth}",
                    n % services,
                    (n / 250) % 250,
                    n % 250 + 1,
                    1000 + n / 62500
                );
                request(&mut conn, "POST", &uri, "", Vec::new()).await?;
            }
            anyhow::Ok(())
        }));
    }
    for handle in handles {
        handle.await??;
    }
    Ok(began.elapsed())
}
