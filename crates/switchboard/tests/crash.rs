//! Crash safety of the real binary on the embedded store: concurrent writers log every
//! acknowledged `PUT /api/v1/kv/…`, the server is `kill -9`ed at a random moment, and
//! after each restart on the same data dir every acknowledged write must be there, with a
//! value at least as new as the one acknowledged.
//!
//! `SB_CRASH_CYCLES` sets the number of kill cycles (30 by default; 1000 for a long run,
//! about 10 minutes, past nextest's 300 s limit, so run it with cargo test:
//! `SB_CRASH_CYCLES=1000 cargo test -p switchboard --test crash -- --nocapture`),
//! `SB_CRASH_SEED` replays a run (the seed is printed). nextest runs this test alone (see
//! `.config/nextest.toml`): it is timing-driven and wants the machine's cores.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Server;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::{Client, StatusCode};
use serde_json::Value;

const WRITERS: usize = 8;
/// Keys per writer: keys are overwritten, so a restart must keep the *newest* value.
const KEYS_PER_WRITER: u64 = 16;

/// The newest acknowledged write of a key: the writer's sequence number (the value) and
/// the revision the server answered with.
#[derive(Clone, Copy, Debug)]
struct Ack {
    seq: u64,
    revision: i64,
}

type AckLog = Arc<Mutex<HashMap<String, Ack>>>;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn crash_acknowledged_puts_survive_kill_9() {
    let cycles = env_number("SB_CRASH_CYCLES", 30);
    let seed = env_number("SB_CRASH_SEED", rand::rng().random());
    println!("crash test: {cycles} cycles, SB_CRASH_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let acks: AckLog = Arc::default();
    // Each writer's next sequence number, kept across cycles so values only grow.
    let mut next_seq = [0u64; WRITERS];
    let mut total_acks = 0u64;

    for cycle in 0..cycles {
        if rng.random_ratio(1, 5) {
            kill_while_opening(dir.path(), Duration::from_millis(rng.random_range(0..40)));
        }
        let server = Server::start(dir.path(), |_| {});
        let token =
            std::fs::read_to_string(dir.path().join("admin-token")).expect("admin-token").trim().to_owned();
        let client = Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
        runtime.block_on(verify(&client, &server, &token, &acks, cycle, seed));

        let kill_after = Duration::from_millis(rng.random_range(0..600));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (client, base, token, acks) =
                    (client.clone(), server.base.clone(), token.clone(), acks.clone());
                let first = next_seq[w];
                runtime.spawn(write_until_refused(client, base, token, acks, w, first))
            })
            .collect();
        runtime.block_on(async { tokio::time::sleep(kill_after).await });
        // SIGKILL: no shutdown path runs, nothing is flushed on the way out.
        let mut server = server;
        server.child.kill().expect("kill -9");
        server.child.wait().expect("reap");
        for (w, writer) in writers.into_iter().enumerate() {
            let (last_seq, acked) = runtime.block_on(writer).expect("writer task");
            next_seq[w] = last_seq + 1;
            total_acks += acked;
        }
        if (cycle + 1) % 100 == 0 {
            println!("crash test: {} cycles, {total_acks} acknowledged puts so far", cycle + 1);
        }
    }

    // A last start: everything acknowledged before the last kill is there too.
    let server = Server::start(dir.path(), |_| {});
    let token =
        std::fs::read_to_string(dir.path().join("admin-token")).expect("admin-token").trim().to_owned();
    let client = Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    runtime.block_on(verify(&client, &server, &token, &acks, cycles, seed));
    println!("crash test: {total_acks} acknowledged puts over {cycles} kill -9 cycles, none lost");
    assert!(total_acks >= cycles, "too few writes were acknowledged to test anything: {total_acks}");
    server.terminate();
}

/// Some kills land while the node opens its store (recovery, bootstrap, membership), with
/// no writer running: the next start must open cleanly all the same.
fn kill_while_opening(data_dir: &std::path::Path, after: Duration) {
    let mut child = common::switchboard()
        .args(["serve", "--membership-ttl-secs", "2", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("serve starts");
    std::thread::sleep(after);
    let _ = child.kill();
    child.wait().expect("reap");
}

/// Puts `crash/w{w}/k{n}` = sequence number until the server stops answering. Returns the
/// last sequence number used (acknowledged or not) and how many puts were acknowledged.
async fn write_until_refused(
    client: Client,
    base: String,
    token: String,
    acks: AckLog,
    w: usize,
    first_seq: u64,
) -> (u64, u64) {
    let mut seq = first_seq;
    let mut acked = 0;
    loop {
        let key = format!("crash/w{w}/k{:02}", seq % KEYS_PER_WRITER);
        let sent = client
            .put(format!("{base}/api/v1/kv/{key}"))
            .bearer_auth(&token)
            .body(seq.to_string())
            .send()
            .await;
        let answer = match sent {
            Ok(response) if response.status() == StatusCode::OK => response.json_value().await,
            // Refused, reset or cut: the server is gone (or going); this write is unknown.
            _ => return (seq, acked),
        };
        let Some(revision) = answer.and_then(|a| a["revision"].as_i64()) else {
            return (seq, acked);
        };
        acks.lock().expect("ack log").insert(key, Ack { seq, revision });
        acked += 1;
        seq += 1;
    }
}

/// The store opened and is ready, and every acknowledged write is there: the same value
/// at the acknowledged revision, or a newer one.
async fn verify(client: &Client, server: &Server, token: &str, acks: &AckLog, cycle: u64, seed: u64) {
    let context = format!("after kill -9 cycle {cycle} (SB_CRASH_SEED={seed})");
    let ready = client.get(server.url("/readyz")).send().await.expect("readyz answers");
    assert_eq!(ready.status(), StatusCode::OK, "the store opened cleanly {context}");
    let list = client
        .get(server.url("/api/v1/kv/crash/?prefix=true"))
        .bearer_auth(token)
        .send()
        .await
        .expect("list")
        .json_value()
        .await
        .expect("a JSON list");
    let stored: BTreeMap<String, (u64, i64)> = list["kvs"]
        .as_array()
        .expect("kvs")
        .iter()
        .map(|kv| {
            let key = kv["key"].as_str().expect("key").to_owned();
            let seq = kv["value"].as_str().and_then(|v| v.parse().ok()).expect("a sequence number value");
            (key, (seq, kv["mod_revision"].as_i64().expect("mod_revision")))
        })
        .collect();
    let acks = acks.lock().expect("ack log").clone();
    for (key, ack) in &acks {
        let Some(&(seq, revision)) = stored.get(key) else {
            panic!(
                "{key} was acknowledged at revision {} (value {}) and is gone {context}",
                ack.revision, ack.seq
            );
        };
        assert!(seq >= ack.seq, "{key} holds {seq}, older than the acknowledged {} {context}", ack.seq);
        if seq == ack.seq {
            assert_eq!(
                revision, ack.revision,
                "{key} holds the acknowledged value at another revision {context}"
            );
        } else {
            assert!(revision > ack.revision, "{key} holds a newer value at an older revision {context}");
        }
    }
}

trait JsonValue {
    async fn json_value(self) -> Option<Value>;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> Option<Value> {
        let bytes = self.bytes().await.ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}
