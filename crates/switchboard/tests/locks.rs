//! Locks and elections end to end through the real binary: the HTTP API (long-poll
//! acquire, owner tokens, bad input, disconnecting waiters, guarded writes, elections
//! with SSE), the `lock run` and `elect` commands, and the lock-safety checker across two
//! nodes sharing one etcd.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::Server;
use reqwest::{Client, StatusCode};
use sb_coord::checker::{self, Acquired, CheckerConfig, LockClient, Refusal};
use serde_json::{json, Value};

fn client() -> Client {
    Client::builder().timeout(Duration::from_secs(30)).build().expect("client")
}

fn start() -> (tempfile::TempDir, Server, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path(), |_| {});
    let token = server.printed_token().expect("a first start prints the admin token");
    (dir, server, token)
}

async fn post(server: &Server, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
    let response = client()
        .post(server.url(path))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("post");
    decode(response).await
}

async fn get(server: &Server, token: &str, path: &str) -> (StatusCode, Value) {
    decode(client().get(server.url(path)).bearer_auth(token).send().await.expect("get")).await
}

async fn decode(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
}

fn assert_error(answer: &(StatusCode, Value), status: StatusCode, code: &str, mentions: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["error"]["code"], code, "{}", answer.1);
    let message = answer.1["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(mentions), "the message names {mentions:?}: {message}");
}

#[tokio::test]
async fn locks_over_http_with_owner_tokens_guarded_writes_and_bad_input() {
    let (_dir, server, token) = start();
    let (status, grant) =
        post(&server, &token, "/api/v1/locks/db/acquire", json!({"ttl_secs": 30, "wait_ms": 0})).await;
    assert_eq!(status, StatusCode::OK, "{grant}");
    let owner = grant["owner"].as_str().unwrap().to_owned();
    let fencing: i64 = grant["token"].as_str().unwrap().parse().unwrap();
    assert!(fencing > 0 && grant["lease"].is_string(), "{grant}");

    // A wrong owner token is refused and the lock stays held.
    let refused = post(&server, &token, "/api/v1/locks/db/release", json!({"owner": "sbo_not-mine"})).await;
    assert_error(&refused, StatusCode::FORBIDDEN, "permission_denied", "owner token");
    let (status, held) = get(&server, &token, "/api/v1/locks/db").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (held["holder"]["token"].as_str(), held["waiters"].as_u64()),
        (Some(grant["token"].as_str().unwrap()), Some(0))
    );
    assert_eq!(held["holder"]["subject"], "admin");
    // Others cannot take it meanwhile (try-lock and a short wait both time out with 409).
    for wait_ms in [0, 200] {
        let busy = post(&server, &token, "/api/v1/locks/db/acquire", json!({"wait_ms": wait_ms})).await;
        assert_error(&busy, StatusCode::CONFLICT, "conflict", "held by another owner");
    }
    // Namespaces are separate.
    let (status, other) =
        post(&server, &token, "/api/v1/locks/db/acquire?namespace=staging", json!({"wait_ms": 0})).await;
    assert_eq!(status, StatusCode::OK, "{other}");
    assert_eq!(other["namespace"], "staging");

    // Bad input: clear 4xx naming the value and the limit.
    assert_error(
        &post(&server, &token, "/api/v1/locks/db/acquire", json!({"ttl_secs": 0})).await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        "ttl_secs is 0",
    );
    assert_error(
        &post(&server, &token, "/api/v1/locks/db/acquire", json!({"ttl_secs": 86_401})).await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        "86400",
    );
    assert_error(
        &post(&server, &token, "/api/v1/locks/db/acquire", json!({"wait_ms": -1})).await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        "wait_ms is -1",
    );
    assert_error(
        &post(&server, &token, "/api/v1/locks/a%20b/acquire", json!({})).await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        "lock name",
    );
    assert_error(
        &get(&server, &token, "/api/v1/locks/unknown").await,
        StatusCode::NOT_FOUND,
        "not_found",
        "\"unknown\"",
    );
    assert_error(
        &post(&server, &token, "/api/v1/locks/unknown/release", json!({"owner": owner})).await,
        StatusCode::NOT_FOUND,
        "not_found",
        "not held",
    );

    // Guarded writes land in the KV API while the lock is held, and renew works.
    let put = json!({"owner": owner, "key": "app/leader-state", "value": "v1"});
    let (status, written) = post(&server, &token, "/api/v1/locks/db/put", put.clone()).await;
    assert_eq!(status, StatusCode::OK, "{written}");
    assert_eq!(written["token"], grant["token"]);
    let (_, kv) = get(&server, &token, "/api/v1/kv/app/leader-state").await;
    assert_eq!(
        (kv["value"].as_str(), kv["mod_revision"].as_i64()),
        (Some("v1"), written["revision"].as_i64())
    );
    let (status, renewed) = post(&server, &token, "/api/v1/locks/db/renew", json!({"owner": owner})).await;
    assert_eq!((status, renewed["ttl_secs"].as_i64()), (StatusCode::OK, Some(30)));

    // Release; a retried release and a late guarded write change nothing.
    let (status, released) = post(&server, &token, "/api/v1/locks/db/release", json!({"owner": owner})).await;
    assert_eq!((status, &released["token"]), (StatusCode::OK, &grant["token"]), "{released}");
    assert_error(
        &post(&server, &token, "/api/v1/locks/db/release", json!({"owner": owner})).await,
        StatusCode::NOT_FOUND,
        "not_found",
        "not held",
    );
    let late = post(
        &server,
        &token,
        "/api/v1/locks/db/put",
        json!({"owner": owner, "key": "app/leader-state", "value": "stale"}),
    )
    .await;
    assert_error(&late, StatusCode::NOT_FOUND, "not_found", "not held");
    let (_, kv) = get(&server, &token, "/api/v1/kv/app/leader-state").await;
    assert_eq!(kv["value"], "v1", "the stale write did not land");
    // The next holder gets a higher fencing token.
    let (_, next) = post(&server, &token, "/api/v1/locks/db/acquire", json!({"wait_ms": 0})).await;
    assert!(next["token"].as_str().unwrap().parse::<i64>().unwrap() > fencing, "{next}");

    // The lock metrics are on /metrics.
    let metrics = client().get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let value = |line: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line).and_then(|rest| rest.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {line} in /metrics:\n{metrics}"))
    };
    assert!(value(r#"switchboard_lock_acquires_total{kind="lock",outcome="acquired"}"#) >= 3.0);
    assert!(value(r#"switchboard_lock_acquires_total{kind="lock",outcome="timeout"}"#) >= 1.0);
    assert!(value(r#"switchboard_lock_wait_seconds_count{kind="lock"}"#) >= 2.0);
    assert_eq!(value(r#"switchboard_locks_held{kind="lock"}"#), 2.0, "db and staging/db");
    assert!(value(r#"switchboard_lock_releases_rejected_total{kind="lock"}"#) >= 1.0);
    server.terminate();
}

#[tokio::test]
async fn a_waiter_whose_client_disconnects_is_removed_and_handoff_is_fifo() {
    let (_dir, server, token) = start();
    let (_, holder) =
        post(&server, &token, "/api/v1/locks/q/acquire", json!({"ttl_secs": 30, "wait_ms": 0})).await;
    // A long-poll whose client gives up after 500 ms.
    let impatient = Client::builder().timeout(Duration::from_millis(500)).build().unwrap();
    let gone = impatient
        .post(server.url("/api/v1/locks/q/acquire"))
        .bearer_auth(&token)
        .body(json!({"wait_ms": 60_000}).to_string())
        .send()
        .await;
    assert!(gone.is_err_and(|e| e.is_timeout()), "the client timed out");
    let mut waiters = u64::MAX;
    for _ in 0..100 {
        waiters = get(&server, &token, "/api/v1/locks/q").await.1["waiters"].as_u64().unwrap();
        if waiters == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(waiters, 0, "the disconnected waiter was removed");

    // A patient waiter gets the lock as soon as the holder releases.
    let waiter = {
        let (url, token) = (server.url("/api/v1/locks/q/acquire"), token.clone());
        tokio::spawn(async move {
            let response = client()
                .post(url)
                .bearer_auth(token)
                .body(json!({"wait_ms": 20_000}).to_string())
                .send()
                .await;
            decode(response.expect("acquire")).await
        })
    };
    for _ in 0..100 {
        if get(&server, &token, "/api/v1/locks/q").await.1["waiters"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) =
        post(&server, &token, "/api/v1/locks/q/release", json!({"owner": holder["owner"]})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, grant) = waiter.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{grant}");
    server.terminate();
}

#[tokio::test]
async fn elections_campaign_observe_proclaim_and_resign_over_http() {
    let (_dir, server, token) = start();
    let mut observe = client()
        .get(server.url("/api/v1/elections/primary/observe?namespace=prod"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("observe");
    assert_eq!(observe.status(), StatusCode::OK);
    let mut seen = String::new();
    let mut next_leader = async || -> Value {
        loop {
            if let Some(end) = seen.find("\n\n") {
                let event: String = seen.drain(..end + 2).collect();
                let data = event.lines().find_map(|l| l.strip_prefix("data: ")).expect("a data line");
                return serde_json::from_str(data).expect("JSON");
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), observe.chunk())
                .await
                .expect("an event in time");
            seen.push_str(&String::from_utf8_lossy(&chunk.expect("stream").expect("open")));
        }
    };
    assert_eq!(next_leader().await, json!({"leader": null}));
    assert_error(
        &get(&server, &token, "/api/v1/elections/primary?namespace=prod").await,
        StatusCode::NOT_FOUND,
        "not_found",
        "primary",
    );
    let campaign = json!({"value": "node-a", "ttl_secs": 30, "wait_ms": 0});
    let (status, a) =
        post(&server, &token, "/api/v1/elections/primary/campaign?namespace=prod", campaign).await;
    assert_eq!(status, StatusCode::OK, "{a}");
    assert_eq!(next_leader().await["leader"]["value"], "node-a");
    let (status, _) = post(
        &server,
        &token,
        "/api/v1/elections/primary/proclaim?namespace=prod",
        json!({"owner": a["owner"], "value": "node-a:v2"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(next_leader().await["leader"]["value"], "node-a:v2");
    let stolen = post(
        &server,
        &token,
        "/api/v1/elections/primary/proclaim?namespace=prod",
        json!({"owner": "sbo_x", "value": "mine"}),
    )
    .await;
    assert_error(&stolen, StatusCode::FORBIDDEN, "permission_denied", "owner token");
    let (_, leader) = get(&server, &token, "/api/v1/elections/primary?namespace=prod").await;
    assert_eq!(
        (leader["leader"]["value"].as_str(), leader["leader"]["token"].as_str()),
        (Some("node-a:v2"), a["token"].as_str())
    );
    let (status, renewed) =
        post(&server, &token, "/api/v1/elections/primary/renew?namespace=prod", json!({"owner": a["owner"]}))
            .await;
    assert_eq!(status, StatusCode::OK, "{renewed}");
    let (status, _) = post(
        &server,
        &token,
        "/api/v1/elections/primary/resign?namespace=prod",
        json!({"owner": a["owner"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(next_leader().await, json!({"leader": null}));
    server.terminate();
}

fn cli(server: &Server, dir: &std::path::Path) -> Command {
    let mut command = common::switchboard();
    command
        .env("SWITCHBOARD_ENDPOINT", &server.base)
        .env("SWITCHBOARD_DATA_DIR", dir)
        .env_remove("SWITCHBOARD_TOKEN");
    command
}

#[test]
fn lock_run_holds_the_lock_for_the_command_and_kills_it_when_the_lock_is_lost() {
    let (dir, server, _token) = start();
    // CMD runs with the tokens in its environment; its exit status is passed through and
    // the lock is released after it.
    let output = cli(&server, dir.path())
        .args([
            "lock",
            "run",
            "job",
            "--ttl-secs",
            "2",
            "--",
            "sh",
            "-c",
            "echo token=$SWITCHBOARD_LOCK_TOKEN; exit 3",
        ])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(3), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("token="));
    let status = cli(&server, dir.path()).args(["lock", "status", "job"]).output().expect("runs");
    assert!(!status.status.success(), "released after the command");
    assert!(String::from_utf8_lossy(&status.stderr).contains("not held"));

    // The lock is lost when `lock run` cannot renew for longer than the TTL (it is
    // stopped): CMD is killed and `lock run` fails.
    let pid_file = dir.path().join("child-pid");
    let mut run = cli(&server, dir.path())
        .args(["lock", "run", "job", "--ttl-secs", "2", "--", "sh", "-c"])
        .arg(format!("echo $$ > {}; exec sleep 60", pid_file.display()))
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let child_pid = (0..100)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            std::fs::read_to_string(&pid_file).ok().filter(|p| !p.trim().is_empty())
        })
        .expect("the command started")
        .trim()
        .to_owned();
    let signal = |name: &str| {
        assert!(Command::new("kill").arg(name).arg(run.id().to_string()).status().unwrap().success());
    };
    signal("-STOP");
    std::thread::sleep(Duration::from_millis(4_500));
    signal("-CONT");
    let status = common::wait_with_timeout(&mut run, Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    let mut stderr = String::new();
    std::io::Read::read_to_string(run.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("lost lock job"), "{stderr}");
    assert!(!std::path::Path::new(&format!("/proc/{child_pid}")).exists(), "the command was killed");
    server.terminate();
}

#[test]
fn elect_campaigns_until_elected_and_resigns_on_sigterm() {
    let (dir, server, token) = start();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let waiting =
        || runtime.block_on(get(&server, &token, "/api/v1/elections/primary")).1["waiters"].as_u64();
    let spawn = |value: &str| {
        cli(&server, dir.path())
            .args(["elect", "primary", value, "--ttl-secs", "5"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut a = spawn("alpha");
    for _ in 0..200 {
        if waiting().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(waiting(), Some(0), "alpha leads");
    let mut b = spawn("beta");
    // beta queues behind alpha before alpha steps down.
    for _ in 0..200 {
        if waiting() == Some(1) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(waiting(), Some(1), "beta waits behind alpha");
    let mut listener = cli(&server, dir.path())
        .args(["elect", "primary", "--listen"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(listener.stdout.take().unwrap()));
    assert!(lines.next().unwrap().unwrap().starts_with("alpha"), "alpha leads first");
    common::terminate(&mut a);
    assert!(lines.next().unwrap().unwrap().starts_with("beta"), "beta takes over after alpha resigns");
    common::terminate(&mut b);
    assert_eq!(lines.next().unwrap().unwrap(), "no leader");
    let _ = listener.kill();
    let _ = listener.wait();
    server.terminate();
}

/// A checker client over HTTP: one node of several, as one subject.
struct HttpLock {
    http: Client,
    base: String,
    token: String,
}

impl HttpLock {
    async fn call(&self, path: &str, body: Value) -> Result<Value, Refusal> {
        let response = self
            .http
            .post(format!("{}/api/v1/locks/checked/{path}", self.base))
            .bearer_auth(&self.token)
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| Refusal::Other(e.to_string()))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| Refusal::Other(e.to_string()))?;
        match status {
            StatusCode::OK => serde_json::from_str(&text).map_err(|e| Refusal::Other(format!("{e}: {text}"))),
            StatusCode::CONFLICT => Err(Refusal::Timeout),
            StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => Err(Refusal::NotHolder(text)),
            other => Err(Refusal::Other(format!("{other}: {text}"))),
        }
    }
}

impl LockClient for HttpLock {
    async fn acquire(&self, ttl_secs: i64, wait_ms: i64) -> Result<Acquired, Refusal> {
        let sent = tokio::time::Instant::now();
        let grant = self.call("acquire", json!({"ttl_secs": ttl_secs, "wait_ms": wait_ms})).await?;
        let token =
            grant["token"].as_str().and_then(|t| t.parse().ok()).ok_or(Refusal::Other(grant.to_string()))?;
        Ok(Acquired {
            token,
            owner: grant["owner"].as_str().unwrap_or_default().to_owned(),
            renewed_at: sent,
        })
    }

    async fn release(&self, owner: &str) -> Result<(), Refusal> {
        self.call("release", json!({"owner": owner})).await.map(|_| ())
    }

    async fn guarded_write(&self, owner: &str, key: &str, value: &str) -> Result<i64, Refusal> {
        let written = self.call("put", json!({"owner": owner, "key": key, "value": value})).await?;
        written["revision"].as_i64().ok_or(Refusal::Other(written.to_string()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_checker_across_two_nodes_on_etcd() {
    let endpoint = common::etcd_endpoint();
    let prefix = format!("/t-lock-checker-2nodes-etcd-{:016x}/", rand::random::<u64>());
    let store = format!("etcd://{endpoint}");
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let configure = |c: &mut Command| {
        c.args(["--store", &store, "--root-prefix", &prefix]);
    };
    let a = Server::start(dir_a.path(), configure);
    let token = a.printed_token().expect("the first node mints the admin token");
    let b = Server::start(dir_b.path(), configure);
    let config = CheckerConfig::from_env("checker/two-nodes");
    let clients: Vec<_> = (0..config.clients)
        .map(|i| {
            let base = if i % 2 == 0 { a.base.clone() } else { b.base.clone() };
            Arc::new(HttpLock { http: client(), base, token: token.clone() })
        })
        .collect();
    let report = checker::run(clients, config).await;
    eprintln!("two nodes on etcd: {report:?}");
    a.terminate();
    b.terminate();
    // Leave nothing behind whose lease could expire during another test.
    let options = sb_store_etcd::EtcdOptions::new(vec![format!("http://{endpoint}")]).with_namespace(prefix);
    let etcd = sb_store_etcd::EtcdStore::connect(options).await.expect("etcd");
    sb_store::Store::delete(&*etcd, sb_store::KeyRange::prefix("")).await.expect("clean up");
    assert!(
        report.violations.is_empty(),
        "the lock-safety checker found violations across two nodes (replay with SB_LOCK_CHECKER_SEED={}):\n{}",
        report.seed,
        report.violations.join("\n")
    );
    assert!(report.long_pauses > 0 && report.guarded_ok > 0, "{report:?}");
}

#[tokio::test]
async fn a_stopping_node_cuts_waiters_off_and_leaves_no_waiter_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path(), |_| {});
    let token = server.printed_token().expect("a first start prints the admin token");
    let (_, holder) =
        post(&server, &token, "/api/v1/locks/stop/acquire", json!({"ttl_secs": 300, "wait_ms": 0})).await;
    let waiter = {
        let (url, token) = (server.url("/api/v1/locks/stop/acquire"), token.clone());
        tokio::spawn(async move {
            let response = client()
                .post(url)
                .bearer_auth(token)
                .body(json!({"ttl_secs": 300, "wait_ms": 60_000}).to_string())
                .send()
                .await;
            decode(response.expect("acquire")).await
        })
    };
    for _ in 0..100 {
        if get(&server, &token, "/api/v1/locks/stop").await.1["waiters"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.terminate();
    let cut = waiter.await.unwrap();
    assert_error(&cut, StatusCode::SERVICE_UNAVAILABLE, "unavailable", "stopping");
    // After a restart the holder still holds (its TTL is 300 s), and no waiter is left.
    let server = Server::start(dir.path(), |_| {});
    let (status, held) = get(&server, &token, "/api/v1/locks/stop").await;
    assert_eq!(status, StatusCode::OK, "{held}");
    assert_eq!((&held["holder"]["token"], held["waiters"].as_u64()), (&holder["token"], Some(0)), "{held}");
    server.terminate();
}
