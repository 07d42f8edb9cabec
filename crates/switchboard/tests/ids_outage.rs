//! IDs while the store is unreachable, on an etcd of the test's own (it is paused with
//! SIGSTOP, so it must not be the shared one): segment IDs keep flowing from the buffered
//! segments; Snowflake stops issuing before its worker lease could expire unnoticed, with
//! an explicit 503; both resume when the store answers again.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::Server;
use reqwest::{Client, StatusCode};
use serde_json::Value;

struct OwnEtcd {
    child: Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl Drop for OwnEtcd {
    fn drop(&mut self) {
        signal(&self.child, "-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill").arg(signal).arg(child.id().to_string()).status().expect("kill runs");
    assert!(status.success());
}

fn start_etcd() -> OwnEtcd {
    let bin = std::env::var("SB_TEST_ETCD_BIN")
        .expect("SB_TEST_ETCD_BIN is not set: run scripts/test, which sets it to the etcd binary");
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.expect("temp dir");
    let (client, peer) = (free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new(bin)
        .args(["--name", "outage", "--data-dir"])
        .arg(dir.path().join("etcd"))
        .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("outage={peer_url}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd starts");
    // Owned at once, so it is killed and reaped on every path.
    let etcd = OwnEtcd { child, endpoint: format!("127.0.0.1:{client}"), _dir: dir };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", client)).is_ok() {
            return etcd;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the test's own etcd did not listen within 10 s");
}

/// A blocking GET (the test drives processes and sleeps between calls).
struct Api {
    runtime: tokio::runtime::Runtime,
    client: Client,
}

impl Api {
    fn get(&self, server: &Server, token: &str, path: &str) -> (StatusCode, Value) {
        self.runtime.block_on(async {
            let response =
                self.client.get(server.url(path)).bearer_auth(token).send().await.expect("request");
            let status = response.status();
            let text = response.text().await.expect("body");
            (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: not JSON: {text}")))
        })
    }
}

#[test]
fn ids_flow_from_buffers_while_own_etcd_is_paused() {
    let etcd = start_etcd();
    let dir = tempfile::tempdir().expect("temp dir");
    let store = format!("etcd://{}", etcd.endpoint);
    let server = Server::start(dir.path(), |c| {
        c.args(["--store", &store, "--ids-worker-ttl-secs", "2", "--ids-segment-step", "100000"]);
    });
    let token =
        std::fs::read_to_string(dir.path().join("admin-token")).expect("admin-token").trim().to_owned();
    let client = Client::builder().timeout(Duration::from_secs(15)).build().unwrap();
    let api = Api { runtime: tokio::runtime::Runtime::new().expect("runtime"), client };

    // One segment of 100,000 in use; the next one is fetched once 10% of it is used.
    let (status, _) = api.get(&server, &token, "/api/v1/ids/segment/outage?count=10000");
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api.get(&server, &token, "/api/v1/ids/snowflake?count=100");
    assert_eq!(status, StatusCode::OK);
    std::thread::sleep(Duration::from_millis(300));
    let (_, list) = api.get(&server, &token, "/api/v1/ids/segments");
    assert_eq!(list["tags"][0]["node_buffer"]["next_segment_ready"], true, "{list}");

    signal(&etcd.child, "-STOP");
    let mut last = 0u64;
    for _ in 0..15 {
        let (status, body) = api.get(&server, &token, "/api/v1/ids/segment/outage?count=10000");
        assert_eq!(status, StatusCode::OK, "segment IDs flow from the buffers: {body}");
        let ids: Vec<u64> =
            body["ids"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().parse().unwrap()).collect();
        assert!(ids[0] > last);
        last = *ids.last().unwrap();
    }
    // Snowflake: refused explicitly within the lease's safe window (TTL 2 s).
    let mut refusal = None;
    for _ in 0..50 {
        let (status, body) = api.get(&server, &token, "/api/v1/ids/snowflake");
        if status != StatusCode::OK {
            refusal = Some((status, body));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, body) = refusal.expect("Snowflake stopped issuing while the store was unreachable");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");

    signal(&etcd.child, "-CONT");
    let mut resumed = false;
    for _ in 0..100 {
        let (status, _) = api.get(&server, &token, "/api/v1/ids/snowflake");
        if status == StatusCode::OK {
            resumed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(resumed, "Snowflake resumed once the store answered again");
    let (status, _) = api.get(&server, &token, "/api/v1/ids/segment/outage?count=10000");
    assert_eq!(status, StatusCode::OK);
    server.terminate();
}
