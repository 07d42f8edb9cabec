//! The ID uniqueness checker: three real nodes share one etcd (their own root prefix),
//! several clients ask them for Snowflake and segment batches, and meanwhile nodes are
//! killed with SIGKILL, stopped with SIGTERM and restarted, and their ID clocks (the
//! debug-only test clock) step backwards by 2 ms and by 10 s. Over at least 1,000,000 IDs
//! there must be no duplicate (Snowflake: none at all; segments: none per tag), and every
//! refusal must be an explicit error: a JSON 503 `unavailable` with a message.
//!
//! `SB_IDS_CHECK_IDS` sets the number of IDs (1,000,000 by default; the sets of seen IDs
//! take about 10 bytes per ID), `SB_IDS_CHECK_CYCLES` the minimum number of disturbance
//! cycles (1; each takes ~12 s). A long run is past nextest's timeout, so run it with
//! cargo test: `SB_IDS_CHECK_CYCLES=50 SB_IDS_CHECK_IDS=20000000 cargo test -p switchboard
//! --test ids_checker -- --nocapture` (about 10 minutes).
//! `SB_IDS_CHECK_SEED` replays a run's client choices (the seed is printed).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use common::Server;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::{Client, StatusCode};
use serde_json::Value;

const NODES: usize = 3;
const CLIENTS: usize = 6;
const TAGS: [&str; 2] = ["orders", "invoices"];
const TOKEN: &str = "sbt_ids_checker_token_0123456789abcdef0123456789";

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// What the clients can see of a node: its URL while it is up, and a generation that
/// changes whenever it is stopped (so a request cut by a kill is recognised as such).
#[derive(Default)]
struct Slot {
    base: RwLock<Option<String>>,
    generation: AtomicU64,
}

#[derive(Default)]
struct Seen {
    snowflake: HashSet<u64>,
    segments: HashMap<&'static str, HashSet<u64>>,
    duplicates: Vec<String>,
    failures: Vec<String>,
    refusals: BTreeMap<String, u64>,
    cut_by_restart: u64,
    /// Snowflake IDs stamped 9 s or more behind the wall clock: issued by a node whose
    /// clock had stepped back 10 s (on a fresh worker id).
    stepped_back: u64,
}

/// The default layout's epoch (the nodes run with it).
const EPOCH_MS: u64 = 1_704_067_200_000;

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

struct Node {
    dir: tempfile::TempDir,
    clock: PathBuf,
    server: Option<Server>,
}

struct Cluster {
    nodes: Vec<Node>,
    slots: Arc<Vec<Slot>>,
    store: String,
    prefix: String,
}

impl Cluster {
    fn start_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let (store, prefix, clock) = (self.store.clone(), self.prefix.clone(), node.clock.clone());
        let server = Server::start(node.dir.path(), |c| {
            c.env("SWITCHBOARD_TEST_CLOCK_OFFSET_FILE", &clock).env("SWITCHBOARD_ADMIN_TOKEN", TOKEN).args([
                "--store",
                &store,
                "--root-prefix",
                &prefix,
                "--ids-workers",
                "16",
                "--ids-worker-ttl-secs",
                "2",
                "--ids-watermark-ahead-ms",
                "500",
                "--ids-segment-step",
                "5000",
                "--shutdown-grace-secs",
                "3",
            ]);
        });
        *self.slots[i].base.write().unwrap() = Some(server.base.clone());
        node.server = Some(server);
    }

    fn take_down(&mut self, i: usize) -> Server {
        *self.slots[i].base.write().unwrap() = None;
        self.slots[i].generation.fetch_add(1, Ordering::AcqRel);
        self.nodes[i].server.take().expect("node is up")
    }

    fn kill_9(&mut self, i: usize) {
        let mut server = self.take_down(i);
        server.child.kill().expect("kill -9");
        server.child.wait().expect("reap");
        self.start_node(i);
    }

    fn restart_gracefully(&mut self, i: usize) {
        self.take_down(i).terminate();
        self.start_node(i);
    }

    fn set_clock(&self, i: usize, offset_ms: i64) {
        std::fs::write(&self.nodes[i].clock, offset_ms.to_string()).expect("clock file");
    }
}

fn is_explicit_refusal(status: StatusCode, body: &str) -> Option<String> {
    let json: Value = serde_json::from_str(body).ok()?;
    let message = json["error"]["message"].as_str()?;
    (status == StatusCode::SERVICE_UNAVAILABLE
        && json["error"]["code"] == "unavailable"
        && !message.is_empty())
    .then(|| message.split(';').next().unwrap_or(message).chars().take(90).collect())
}

async fn client_loop(
    id: u64,
    target: u64,
    slots: Arc<Vec<Slot>>,
    seen: Arc<Mutex<Seen>>,
    total: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    // No pooled connections: a restarted node may get a port a killed one had, and a
    // stale connection to it must not pass for a failure of a live node.
    let http =
        Client::builder().timeout(Duration::from_secs(15)).pool_max_idle_per_host(0).build().expect("client");
    let mut rng = StdRng::seed_from_u64(id);
    while !stop.load(Ordering::Acquire) {
        let i = rng.random_range(0..NODES);
        let generation = slots[i].generation.load(Ordering::Acquire);
        let Some(base) = slots[i].base.read().unwrap().clone() else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let tag = (!rng.random_ratio(3, 5)).then(|| TAGS[rng.random_range(0..TAGS.len())]);
        // Large batches until the target is met; then small ones, which keep the nodes
        // using (nearly) every millisecond, so a clock step lands on used timestamps,
        // without growing the sets of seen IDs much further.
        let count = if total.load(Ordering::Acquire) >= target {
            rng.random_range(1..=50)
        } else if rng.random_ratio(1, 4) {
            rng.random_range(1..=10_000)
        } else {
            10_000
        };
        let url = match tag {
            None => format!("{base}/api/v1/ids/snowflake?count={count}"),
            Some(tag) => format!("{base}/api/v1/ids/segment/{tag}?count={count}"),
        };
        let answer = match http.get(&url).bearer_auth(TOKEN).send().await {
            Ok(response) => {
                let status = response.status();
                response.text().await.map(|body| (status, body))
            }
            Err(error) => Err(error),
        };
        let cut = slots[i].generation.load(Ordering::Acquire) != generation;
        let (status, body) = match answer {
            Ok(answer) => answer,
            Err(error) => {
                let mut seen = seen.lock().unwrap();
                if cut {
                    seen.cut_by_restart += 1;
                } else {
                    seen.failures.push(format!("{url}: transport error on a live node: {error}"));
                }
                continue;
            }
        };
        if status != StatusCode::OK {
            let mut seen = seen.lock().unwrap();
            match is_explicit_refusal(status, &body) {
                Some(reason) => *seen.refusals.entry(reason).or_default() += 1,
                None => {
                    seen.failures.push(format!("{url}: {status} is not an explicit refusal: {body:.300}"))
                }
            }
            continue;
        }
        let ids: Vec<u64> = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|json| json["ids"].as_array().cloned())
            .map(|ids| ids.iter().filter_map(|id| id.as_str()?.parse().ok()).collect())
            .unwrap_or_default();
        let mut seen = seen.lock().unwrap();
        if ids.len() != count as usize || !ids.windows(2).all(|w| w[0] < w[1]) {
            seen.failures.push(format!("{url}: {} IDs, not {count} strictly increasing ones", ids.len()));
            continue;
        }
        if tag.is_none() {
            let stamped = EPOCH_MS + (ids[0] >> 22);
            if stamped + 9_000 <= now_ms() {
                seen.stepped_back += ids.len() as u64;
            }
        }
        let Seen { snowflake, segments, duplicates, .. } = &mut *seen;
        let set = match tag {
            None => snowflake,
            Some(tag) => segments.entry(tag).or_default(),
        };
        for id in ids {
            if !set.insert(id) && duplicates.len() < 20 {
                duplicates.push(format!("{} id {id} (from node {i})", tag.unwrap_or("snowflake")));
            }
        }
        total.fetch_add(count, Ordering::AcqRel);
    }
}

#[test]
fn ids_uniqueness_checker_etcd() {
    if cfg!(not(debug_assertions)) {
        panic!("the test clock exists in debug builds only: run this test without --release");
    }
    let target = env_number("SB_IDS_CHECK_IDS", 1_000_000);
    let min_cycles = env_number("SB_IDS_CHECK_CYCLES", 1);
    let seed = env_number("SB_IDS_CHECK_SEED", rand::rng().random());
    let store = format!("etcd://{}", common::etcd_endpoint());
    let prefix = format!("/t-ids-checker-{}/", rand::rng().random::<u64>());
    println!("ids checker: {target} IDs, SB_IDS_CHECK_SEED={seed}, root prefix {prefix}");
    let nodes = (0..NODES)
        .map(|_| {
            let dir = tempfile::tempdir().expect("temp dir");
            let clock = dir.path().join("clock-offset");
            std::fs::write(&clock, "0").expect("clock file");
            Node { dir, clock, server: None }
        })
        .collect();
    let slots: Arc<Vec<Slot>> = Arc::new((0..NODES).map(|_| Slot::default()).collect());
    let mut cluster = Cluster { nodes, slots: slots.clone(), store, prefix };
    for i in 0..NODES {
        cluster.start_node(i);
    }

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let total = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS as u64)
        .map(|c| {
            runtime.spawn(client_loop(
                seed.wrapping_add(c),
                target,
                slots.clone(),
                seen.clone(),
                total.clone(),
                stop.clone(),
            ))
        })
        .collect();

    // The disturbances, on a 400 ms tick. A step backwards only matters if it lands on
    // timestamps the node already used: node 1 issues for over 10 s on one worker id
    // before its clock steps back 10 s; node 0 is under load when it steps back 2 ms.
    let mut cycles = 0;
    loop {
        for tick in 0..28 {
            std::thread::sleep(Duration::from_millis(400));
            match tick {
                0 => (0..NODES).for_each(|i| cluster.set_clock(i, 0)),
                2 | 8 | 20 => cluster.set_clock(0, -2),
                3 | 9 | 21 => cluster.set_clock(0, 0),
                5 => cluster.kill_9(2),
                10 => cluster.restart_gracefully(0),
                14 => cluster.set_clock(2, -10_000),
                26 => cluster.set_clock(1, -10_000),
                27 => cluster.kill_9(1),
                _ => {}
            }
        }
        cycles += 1;
        if cycles >= min_cycles && total.load(Ordering::Acquire) >= target {
            break;
        }
        assert!(
            cycles < min_cycles + 200,
            "only {} IDs after {cycles} cycles",
            total.load(Ordering::Acquire)
        );
    }
    stop.store(true, Ordering::Release);
    for client in clients {
        runtime.block_on(client).expect("client task");
    }
    let seen = seen.lock().unwrap();
    let segment_ids: usize = seen.segments.values().map(HashSet::len).sum();
    println!(
        "ids checker: {cycles} cycles, {} IDs ({} Snowflake, {} of them from a clock 10 s behind; {segment_ids} segment), refusals {:?}, {} requests cut by restarts",
        total.load(Ordering::Acquire),
        seen.snowflake.len(),
        seen.stepped_back,
        seen.refusals,
        seen.cut_by_restart
    );
    assert!(seen.duplicates.is_empty(), "duplicates: {:?}", seen.duplicates);
    assert!(
        seen.failures.is_empty(),
        "requests that failed without an explicit refusal: {:#?}",
        seen.failures
    );
    assert!(total.load(Ordering::Acquire) >= target);
    assert!(!seen.snowflake.is_empty() && segment_ids > 0, "both generators were exercised");
    assert!(seen.stepped_back > 0, "IDs were issued while a node's clock was 10 s behind");
    for i in 0..NODES {
        cluster.take_down(i).terminate();
    }
}
