//! `sb-bench dns`: Switchboard's DNS interface against a static hickory authority serving
//! the same records, in the same run (A B A B), as queries/s of UDP A lookups. The issue's
//! target: Switchboard ≥ 0.5× the static authority.
//!
//! Both answer `orders.svc.switchboard.` with the same A records; the load is closed-loop
//! UDP clients (one socket each) from this process. The static authority is this bench
//! binary's `dns-peer` subcommand: hickory-server with an in-memory zone, as its own process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use hickory_server::proto::rr::rdata::{A, SOA};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};

use crate::http_bench::{bench_token, connect, free_port, request, Killed};
use crate::nacos_targets::{proc_kib, start_switchboard};
use crate::report::{compare_ab, run_clients, Outcome};

const NAME: &str = "orders.svc.switchboard.";
const ADDRESSES: [&str; 3] = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];

#[derive(clap::Args)]
pub struct DnsArgs {
    #[arg(long)]
    pub switchboard_bin: PathBuf,
    #[arg(long)]
    pub bench_bin: PathBuf,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Seconds per run.
    #[arg(long, default_value_t = 5)]
    pub secs: u64,
    /// Concurrent UDP clients, each with one query in flight.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Switchboard's `--dns-udp-workers` (its flood bound; the static authority has none).
    #[arg(long, default_value_t = 1)]
    pub udp_workers: u64,
}

#[derive(clap::Args)]
pub struct DnsPeerArgs {
    #[arg(long)]
    pub listen: SocketAddr,
}

/// A DNS query for `NAME` type A with id `id`, as bytes on the wire.
fn query(id: u16) -> Vec<u8> {
    let mut out = id.to_be_bytes().to_vec();
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in NAME.trim_end_matches('.').split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.extend_from_slice(&[0, 0, 1, 0, 1]);
    out
}

/// Closed-loop UDP A lookups against `addr`: an answer counts when it is NOERROR with
/// every address in it.
async fn load(addr: SocketAddr, clients: usize, secs: u64) -> anyhow::Result<Outcome> {
    let mut sockets = Vec::with_capacity(clients);
    for _ in 0..clients {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        socket.connect(addr).await?;
        sockets.push(Arc::new(socket));
    }
    run_clients(sockets, Duration::from_secs(secs), |socket, _task, i| async move {
        let id = i as u16;
        let result = async {
            socket.send(&query(id)).await?;
            let mut buf = [0u8; 1500];
            loop {
                let n = tokio::time::timeout(Duration::from_millis(500), socket.recv(&mut buf))
                    .await
                    .context("no answer within 500 ms")??;
                if n < 12 || u16::from_be_bytes([buf[0], buf[1]]) != id {
                    continue; // a late answer to an earlier, timed-out query
                }
                let rcode = buf[3] & 0x0f;
                let answers = u16::from_be_bytes([buf[6], buf[7]]);
                if rcode != 0 || usize::from(answers) != ADDRESSES.len() {
                    bail!("rcode {rcode}, {answers} answers");
                }
                return Ok(());
            }
        }
        .await;
        (socket, result)
    })
    .await
}

/// Registers the same records in Switchboard (persistent, healthy instances).
async fn seed(http_addr: &str) -> anyhow::Result<()> {
    let mut conn = connect(http_addr).await?;
    for (i, ip) in ADDRESSES.iter().enumerate() {
        let body = serde_json::json!({"ip": ip, "port": 8080 + i, "ephemeral": false});
        request(
            &mut conn,
            "POST",
            "/api/v1/namespaces/public/services/orders/instances",
            &bench_token(),
            body.to_string().into_bytes(),
        )
        .await?;
    }
    Ok(())
}

pub async fn run(args: DnsArgs) -> anyhow::Result<()> {
    let scratch = match &args.data_dir {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir()?,
    };
    let dns_port = free_port()?;
    let dns_addr: SocketAddr = format!("127.0.0.1:{dns_port}").parse()?;
    let workers = args.udp_workers.to_string();
    let switchboard = start_switchboard(
        &args.switchboard_bin,
        scratch.path(),
        &[
            "--dns-listen",
            &dns_addr.to_string(),
            // One source (this process) asks everything: no per-source limit here.
            "--dns-per-source-qps",
            "0",
            "--dns-udp-workers",
            &workers,
        ],
    )
    .await?;
    seed(&switchboard.addr).await?;
    let peer_addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let peer = Command::new(&args.bench_bin)
        .args(["dns-peer", "--listen", &peer_addr.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {} dns-peer", args.bench_bin.display()))?;
    let peer_pid = peer.id();
    let _peer = Killed(peer);
    // Both answer before the runs start.
    for addr in [dns_addr, peer_addr] {
        let mut ready = false;
        for _ in 0..50 {
            if load(addr, 1, 0).await.is_ok()
                && load(addr, 1, 1).await.is_ok_and(|o| o.ops > 0 && o.errors == 0)
            {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !ready {
            bail!("the DNS server on {addr} does not answer {NAME} with {} A records", ADDRESSES.len());
        }
    }
    println!(
        "dns: UDP A lookups of {NAME} ({} records), {} clients, {} s per run, switchboard --dns-udp-workers {}",
        ADDRESSES.len(),
        args.clients,
        args.secs,
        args.udp_workers
    );
    let (clients, secs) = (args.clients, args.secs);
    let ratio = compare_ab(
        "dns A",
        ["switchboard", "hickory"],
        || load(dns_addr, clients, secs),
        || load(peer_addr, clients, secs),
    )
    .await?;
    println!(
        "dns A          target    switchboard >= 0.5x a static hickory authority: {ratio:.2}x ({})",
        if ratio >= 0.5 { "met" } else { "missed" }
    );
    let rss = |pid| proc_kib(pid, "VmHWM:").map_or("?".to_owned(), |k| format!("{} MiB", k / 1024));
    println!("peak RSS       switchboard {}, hickory {}", rss(switchboard.pid), rss(peer_pid));
    Ok(())
}

/// The static authority: hickory-server with an in-memory `switchboard.` zone holding the
/// same A records, until killed.
pub async fn serve_peer(args: DnsPeerArgs) -> anyhow::Result<()> {
    let origin = Name::from_str("switchboard.")?;
    let mut zone = InMemoryZoneHandler::<hickory_server::net::runtime::TokioRuntimeProvider>::empty(
        origin.clone(),
        ZoneType::Primary,
        AxfrPolicy::Deny,
    );
    let soa = SOA::new(
        Name::from_str("ns.switchboard.")?,
        Name::from_str("admin.switchboard.")?,
        1,
        3600,
        600,
        86400,
        5,
    );
    zone.upsert_mut(Record::from_rdata(origin.clone(), 5, RData::SOA(soa)), 1);
    let name = Name::from_str(NAME)?;
    for ip in ADDRESSES {
        zone.upsert_mut(Record::from_rdata(name.clone(), 5, RData::A(A::from_str(ip)?)), 1);
    }
    let mut catalog = Catalog::new();
    let handler: Arc<dyn ZoneHandler> = Arc::new(zone);
    catalog.upsert(LowerName::new(&origin), vec![handler]);
    let mut server = hickory_server::Server::new(catalog);
    server.register_socket(tokio::net::UdpSocket::bind(args.listen).await?);
    server.block_until_done().await?;
    Ok(())
}
