//! End-to-end tests of the registry's edges against the real binary: Prometheus HTTP
//! service discovery, the DNS interface (with the real `dig`) and active health checks.

mod common;

use std::path::Path;
use std::time::Duration;

use common::Server;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

fn start(dir: &Path, extra: &[&str]) -> (Server, String) {
    let server = Server::start(dir, |command| {
        command.args(["--session-ttl-secs", "5"]).args(extra);
    });
    let token = std::fs::read_to_string(dir.join("admin-token")).expect("admin token").trim().to_owned();
    (server, token)
}

struct Api<'a> {
    http: Client,
    server: &'a Server,
    token: String,
}

impl Api<'_> {
    fn new(server: &Server, token: String) -> Api<'_> {
        let http = Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
        Api { http, server, token }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.http.get(self.server.url(path)).bearer_auth(&self.token)).await
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> (StatusCode, Value) {
        let request = self.http.request(method, self.server.url(path)).bearer_auth(&self.token);
        self.send(request.header("content-type", "application/json").body(body.to_string())).await
    }

    async fn register(&self, ns: &str, group: &str, service: &str, body: Value) {
        let path = format!("/api/v1/namespaces/{ns}/services/{service}/instances?group={group}");
        let (status, answer) = self.call(reqwest::Method::POST, &path, body).await;
        assert!(status.is_success(), "register {service}: {status} {answer}");
    }
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks the shape Prometheus's `http_sd` requires: a JSON array of objects, each with
/// `targets` (an array of strings) and `labels` (an object of valid label names to
/// strings). Returns `target → labels`.
fn validate_http_sd(body: &Value) -> std::collections::BTreeMap<String, serde_json::Map<String, Value>> {
    let groups = body.as_array().unwrap_or_else(|| panic!("http_sd is a JSON array: {body}"));
    let mut out = std::collections::BTreeMap::new();
    for group in groups {
        let object = group.as_object().expect("a target group is an object");
        assert!(object.keys().all(|k| k == "targets" || k == "labels"), "only targets and labels: {group}");
        let labels = object["labels"].as_object().expect("labels is an object");
        for (name, value) in labels {
            assert!(valid_label_name(name), "label name {name:?} is valid for Prometheus");
            assert!(value.is_string(), "label {name} is a string: {value}");
        }
        let targets = object["targets"].as_array().expect("targets is an array");
        assert!(!targets.is_empty());
        for target in targets {
            let target = target.as_str().expect("a target is a string");
            let (host, port) = target.rsplit_once(':').expect("host:port");
            assert!(port.parse::<u16>().is_ok(), "target {target} has a port");
            assert!(!host.is_empty());
            out.insert(target.to_owned(), labels.clone());
        }
    }
    out
}

#[tokio::test]
async fn prometheus_http_sd_lists_enabled_instances_with_sanitised_labels() {
    let dir = tempfile::tempdir().unwrap();
    let (server, token) = start(dir.path(), &[]);
    let api = Api::new(&server, token);
    api.register(
        "public",
        "DEFAULT_GROUP",
        "orders",
        json!({"ip": "10.0.0.1", "port": 9100, "cluster": "c1", "ephemeral": false,
               "metadata": {"version": "1.2", "preserved.heart-beat": "x", "zone:a": "z"}}),
    )
    .await;
    api.register(
        "public",
        "DEFAULT_GROUP",
        "orders",
        json!({"ip": "::1", "port": 9101, "ephemeral": false, "healthy": false}),
    )
    .await;
    api.register(
        "public",
        "DEFAULT_GROUP",
        "orders",
        json!({"ip": "10.0.0.3", "port": 9102, "enabled": false}),
    )
    .await;
    api.register("dev", "g2", "payments", json!({"ip": "10.0.1.1", "port": 8080})).await;

    let (status, body) = api.get("/api/v1/prometheus/sd").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let all = validate_http_sd(&body);
    assert_eq!(all.keys().cloned().collect::<Vec<_>>(), ["10.0.0.1:9100", "10.0.1.1:8080", "[::1]:9101"]);
    let first = &all["10.0.0.1:9100"];
    let label = |labels: &serde_json::Map<String, Value>, name: &str| {
        labels.get(&format!("__meta_switchboard_{name}")).and_then(Value::as_str).map(str::to_owned)
    };
    assert_eq!(label(first, "namespace").as_deref(), Some("public"));
    assert_eq!(label(first, "group").as_deref(), Some("DEFAULT_GROUP"));
    assert_eq!(label(first, "service").as_deref(), Some("orders"));
    assert_eq!(label(first, "cluster").as_deref(), Some("c1"));
    assert_eq!(label(first, "healthy").as_deref(), Some("true"));
    assert_eq!(label(first, "metadata_version").as_deref(), Some("1.2"));
    assert_eq!(label(first, "metadata_preserved_heart_beat").as_deref(), Some("x"));
    assert_eq!(label(first, "metadata_zone_a").as_deref(), Some("z"));
    assert_eq!(label(&all["[::1]:9101"], "healthy").as_deref(), Some("false"));
    assert_eq!(label(&all["[::1]:9101"], "cluster").as_deref(), Some("DEFAULT"));
    assert_eq!(label(&all["10.0.1.1:8080"], "namespace").as_deref(), Some("dev"));

    // Filters.
    let (_, body) = api.get("/api/v1/prometheus/sd?namespace=dev").await;
    assert_eq!(validate_http_sd(&body).keys().collect::<Vec<_>>(), ["10.0.1.1:8080"]);
    let (_, body) = api.get("/api/v1/prometheus/sd?group=g2").await;
    assert_eq!(validate_http_sd(&body).keys().collect::<Vec<_>>(), ["10.0.1.1:8080"]);
    let (_, body) = api.get("/api/v1/prometheus/sd?namespace=public&service=orders").await;
    assert_eq!(validate_http_sd(&body).len(), 2);
    let (_, body) = api.get("/api/v1/prometheus/sd?service=nothing").await;
    assert_eq!(body, json!([]));

    // Bad input and no credentials.
    let (status, body) = api.get("/api/v1/prometheus/sd?namespace=a/b").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.to_string().contains("namespace"), "{body}");
    let response = api.http.get(server.url("/api/v1/prometheus/sd")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

/// `dig @addr -p port +short name type` (and the status line with `+noall +comments`).
fn dig(dns: &str, args: &[&str]) -> String {
    let (host, port) = dns.rsplit_once(':').expect("host:port");
    let output = std::process::Command::new("dig")
        .args([format!("@{host}"), "-p".into(), port.into(), "+time=2".into(), "+tries=2".into()])
        .args(args)
        .output()
        .expect("dig runs (Debian's bind9-dnsutils; scripts/test installs it)");
    assert!(output.status.success(), "dig {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8")
}

fn sorted_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).filter(|l| !l.is_empty()).collect();
    lines.sort();
    lines
}

#[tokio::test]
async fn dig_gets_a_srv_and_nxdomain_answers_from_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let (server, token) = start(dir.path(), &["--dns-listen", "127.0.0.1:0", "--dns-ttl-secs", "3"]);
    let dns = common::wait_for_line(&server.stdout, "its dns address", |lines| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix("switchboard: dns on "))
            .map(|r| r.split(' ').next().unwrap().to_owned())
    });
    let api = Api::new(&server, token);
    let persistent = |ip: &str, port: u16, weight: f64, healthy: bool| json!({"ip": ip, "port": port, "weight": weight, "healthy": healthy, "ephemeral": false});
    api.register("public", "DEFAULT_GROUP", "orders", persistent("10.0.0.1", 8080, 1.0, true)).await;
    api.register("public", "DEFAULT_GROUP", "orders", persistent("10.0.0.2", 8081, 2.5, true)).await;
    api.register("public", "DEFAULT_GROUP", "orders", persistent("10.0.0.3", 8082, 1.0, false)).await;
    api.register("public", "DEFAULT_GROUP", "orders", persistent("fd00::7", 8083, 1.0, true)).await;
    api.register("dev", "g1", "providers:com.x.Y:1.0", persistent("10.1.0.1", 20880, 1.0, true)).await;

    // A: the healthy IPv4 instances, by the short and the full name, in any case.
    let a = dig(&dns, &["+short", "orders.svc.switchboard", "A"]);
    assert_eq!(sorted_lines(&a), ["10.0.0.1", "10.0.0.2"]);
    let a = dig(&dns, &["+short", "ORDERS.default_group.Public.svc.switchboard.", "A"]);
    assert_eq!(sorted_lines(&a), ["10.0.0.1", "10.0.0.2"]);
    assert_eq!(sorted_lines(&dig(&dns, &["+short", "orders.svc.switchboard", "AAAA"])), ["fd00::7"]);
    // Over TCP too.
    let a = dig(&dns, &["+tcp", "+short", "orders.DEFAULT_GROUP.public.svc.switchboard", "A"]);
    assert_eq!(sorted_lines(&a), ["10.0.0.1", "10.0.0.2"]);

    // SRV: priority, weight (× 100), port, a target under addr.switchboard. with its
    // address in the additional section.
    let srv = dig(&dns, &["+short", "orders.svc.switchboard", "SRV"]);
    assert_eq!(
        sorted_lines(&srv),
        [
            "0 100 8080 10-0-0-1.addr.switchboard.",
            "0 100 8083 fd00--7.addr.switchboard.",
            "0 250 8081 10-0-0-2.addr.switchboard.",
        ]
    );
    let full = dig(&dns, &["+noall", "+additional", "orders.svc.switchboard", "SRV"]);
    assert!(full.contains("10-0-0-1.addr.switchboard.") && full.contains("10.0.0.1"), "{full}");
    assert!(full.contains("fd00::7"), "{full}");
    assert_eq!(dig(&dns, &["+short", "10-0-0-2.addr.switchboard", "A"]).trim(), "10.0.0.2");
    // The TTL is the configured one.
    let answer = dig(&dns, &["+noall", "+answer", "orders.svc.switchboard", "A"]);
    assert!(answer.lines().all(|l| l.split_whitespace().nth(1) == Some("3")), "{answer}");

    // A name no label can carry, through the base32 encoding.
    let encoded = format!("b32-{}.g1.dev.svc.switchboard", data_encoding_lower("providers:com.x.Y:1.0"));
    assert_eq!(dig(&dns, &["+short", &encoded, "A"]).trim(), "10.1.0.1");

    // NXDOMAIN for an unknown service; NOERROR with no answer for a known one without
    // records of the type; REFUSED outside the zone.
    let status = |name: &str, kind: &str| {
        let out = dig(&dns, &["+noall", "+comments", name, kind]);
        out.split("status: ").nth(1).and_then(|r| r.split(',').next()).unwrap_or_default().to_owned()
    };
    assert_eq!(status("nothing.svc.switchboard", "A"), "NXDOMAIN");
    assert_eq!(status("orders.nogroup.public.svc.switchboard", "A"), "NXDOMAIN");
    assert_eq!(status("providers.g1.dev.svc.switchboard", "A"), "NXDOMAIN");
    assert_eq!(status("example.com", "A"), "REFUSED");

    // The protection threshold applies: with none healthy, every enabled instance answers.
    api.register("public", "DEFAULT_GROUP", "sick", persistent("10.2.0.1", 80, 1.0, false)).await;
    api.register("public", "DEFAULT_GROUP", "sick", persistent("10.2.0.2", 80, 1.0, false)).await;
    assert_eq!(sorted_lines(&dig(&dns, &["+short", "sick.svc.switchboard", "A"])), ["10.2.0.1", "10.2.0.2"]);
    // A deregistered instance leaves the answers at once (answers come from the view).
    let path = "/api/v1/namespaces/public/services/orders/instances/10.0.0.2:8081";
    let (status_code, body) = api.call(reqwest::Method::DELETE, path, json!({})).await;
    assert!(status_code.is_success(), "{status_code} {body}");
    assert_eq!(sorted_lines(&dig(&dns, &["+short", "orders.svc.switchboard", "A"])), ["10.0.0.1"]);
}

/// RFC 4648 base32, lowercase, no padding (what the DNS encoding uses), written out here
/// so the test does not share the server's code.
fn data_encoding_lower(text: &str) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for byte in text.bytes() {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

#[test]
fn dns_refuses_networks_it_does_not_allow() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _token) = start(dir.path(), &["--dns-listen", "127.0.0.1:0", "--dns-allow", "10.0.0.0/8"]);
    let dns = common::wait_for_line(&server.stdout, "its dns address", |lines| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix("switchboard: dns on "))
            .map(|r| r.split(' ').next().unwrap().to_owned())
    });
    let out = dig(&dns, &["+noall", "+comments", "orders.svc.switchboard", "A"]);
    assert!(out.contains("status: REFUSED"), "{out}");
}

/// A tiny HTTP target whose answer status the test sets.
async fn flapping_target(status: std::sync::Arc<std::sync::atomic::AtomicU16>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let status = status.load(std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn a_flapping_http_target_crosses_its_thresholds_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let (server, token) = start(dir.path(), &["--dns-listen", "off", "--health-reconcile-ms", "100"]);
    let api = Api::new(&server, token);
    let status = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(200));
    let port = flapping_target(status.clone()).await;
    api.register(
        "public",
        "DEFAULT_GROUP",
        "web",
        json!({"ip": "127.0.0.1", "port": port, "ephemeral": false}),
    )
    .await;
    let check_path = format!("/api/v1/namespaces/public/services/web/instances/127.0.0.1:{port}/check");

    // Bad definitions: 400 naming the field.
    for (body, field) in [
        (json!({"kind": "http", "interval_ms": 0}), "interval_ms"),
        (json!({"kind": "http", "interval_ms": 500, "timeout_ms": 900}), "timeout_ms"),
        (json!({"kind": "icmp"}), "kind"),
    ] {
        let (code, answer) = api.call(reqwest::Method::PUT, &check_path, body).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{answer}");
        assert_eq!(answer["error"]["field"], field, "{answer}");
    }

    let check = json!({"kind": "http", "method": "GET", "path": "/health", "expect_status": [200, 299],
                       "interval_ms": 150, "timeout_ms": 100, "healthy_threshold": 2, "unhealthy_threshold": 3});
    let (code, answer) = api.call(reqwest::Method::PUT, &check_path, check).await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    let (code, answer) = api.get(&check_path).await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    assert_eq!(answer["kind"], "http");

    let healthy = async || -> bool {
        let (_, list) = api.get("/api/v1/namespaces/public/services/web/instances").await;
        list["instances"][0]["healthy"].as_bool().expect("one instance")
    };
    let wait_for = async |want: bool| {
        for _ in 0..100 {
            if healthy().await == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the instance did not become healthy={want} within 10 s");
    };
    assert!(healthy().await);
    status.store(503, std::sync::atomic::Ordering::SeqCst);
    wait_for(false).await;
    status.store(200, std::sync::atomic::Ordering::SeqCst);
    wait_for(true).await;
    // One failure is under the unhealthy threshold of 3: the instance stays healthy.
    status.store(500, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(160)).await;
    status.store(200, std::sync::atomic::Ordering::SeqCst);
    for _ in 0..10 {
        assert!(healthy().await, "a single failure stays under the threshold");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (code, answer) = api.call(reqwest::Method::DELETE, &check_path, json!({})).await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    assert_eq!(answer["deleted"], true);
}

/// An HTTP target answering 200 that records which node probed it (from the User-Agent).
async fn recording_target(seen: std::sync::Arc<std::sync::Mutex<Vec<(u16, String)>>>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let seen = seen.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 1024];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                if let Some(node) =
                    text.lines().find_map(|l| l.strip_prefix("User-Agent: switchboard-health/"))
                {
                    seen.lock().unwrap().push((port, node.trim().to_owned()));
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    port
}

#[tokio::test]
async fn two_etcd_nodes_split_the_checks_and_one_takes_over_when_the_other_stops() {
    let store = format!("etcd://{}", common::etcd_endpoint());
    let prefix = format!(
        "/t-health-two-etcd-{}/",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    );
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let common_flags =
        ["--store", &store, "--root-prefix", &prefix, "--dns-listen", "off", "--health-reconcile-ms", "100"];
    let (a, token) = start(dir_a.path(), &[&common_flags[..], &["--node-id", "node-a"]].concat());
    let b = Server::start(dir_b.path(), |command| {
        command.args(common_flags).args(["--node-id", "node-b"]);
    });
    let api = Api::new(&a, token);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut ports = Vec::new();
    for _ in 0..16 {
        let port = recording_target(seen.clone()).await;
        ports.push(port);
        api.register(
            "public",
            "DEFAULT_GROUP",
            "web",
            json!({"ip": "127.0.0.1", "port": port, "ephemeral": false}),
        )
        .await;
        let path = format!("/api/v1/namespaces/public/services/web/instances/127.0.0.1:{port}/check");
        let check = json!({"kind": "http", "interval_ms": 200, "timeout_ms": 150});
        let (code, answer) = api.call(reqwest::Method::PUT, &path, check).await;
        assert_eq!(code, StatusCode::OK, "{answer}");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    seen.lock().unwrap().clear();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let owners = |seen: &[(u16, String)]| {
        let mut by_port: std::collections::BTreeMap<u16, std::collections::BTreeSet<String>> =
            Default::default();
        for (port, node) in seen {
            by_port.entry(*port).or_default().insert(node.clone());
        }
        by_port
    };
    let split = owners(&seen.lock().unwrap());
    assert_eq!(split.len(), 16, "every target is probed: {split:?}");
    assert!(split.values().all(|nodes| nodes.len() == 1), "each by exactly one node: {split:?}");
    let nodes: std::collections::BTreeSet<&String> = split.values().flatten().collect();
    assert_eq!(nodes.len(), 2, "both nodes take a share: {split:?}");

    // node-b stops (SIGKILL: no leave); within the membership TTL (2 s) node-a probes all.
    drop(b);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    seen.lock().unwrap().clear();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = owners(&seen.lock().unwrap());
    assert_eq!(after.len(), 16, "every target is still probed: {after:?}");
    assert!(after.values().all(|nodes| nodes.iter().all(|n| n == "node-a")), "{after:?}");
}

/// The health of each instance of a native service, by port.
async fn health_by_port(api: &Api<'_>, service: &str) -> std::collections::BTreeMap<u64, bool> {
    let (code, list) = api.get(&format!("/api/v1/namespaces/public/services/{service}/instances")).await;
    assert_eq!(code, StatusCode::OK, "{list}");
    let instances = list["instances"].as_array().unwrap_or_else(|| panic!("instances: {list}"));
    instances.iter().map(|i| (i["port"].as_u64().unwrap(), i["healthy"].as_bool().unwrap())).collect()
}

/// Waits until the instance on `port` of `service` has the health `want` (10 s at most).
async fn wait_health(api: &Api<'_>, service: &str, port: u16, want: bool) {
    for _ in 0..100 {
        if health_by_port(api, service).await.get(&u64::from(port)) == Some(&want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{service}: the instance on port {port} did not become healthy={want} within 10 s");
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The keys under `prefix` in a stopped server's embedded store.
async fn stored_keys(dir: &Path, prefix: &str) -> Vec<String> {
    use sb_store::Store;
    let options = sb_store_embedded::EmbeddedOptions::new(dir.join("store.redb"));
    let store = sb_store_embedded::EmbeddedStore::open(options).await.expect("open the store");
    let range = sb_store::RangeRequest::new(sb_store::KeyRange::prefix(prefix)).keys_only();
    let keys = store.range(range).await.expect("range").kvs;
    store.close().await;
    keys.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect()
}

#[tokio::test]
async fn a_persistent_nacos_instance_gets_a_tcp_check_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let fast = ["--dns-listen", "off", "--health-reconcile-ms", "100", "--nacos-check-interval-ms", "150"];
    let (server, token) = start(dir.path(), &fast);
    let api = Api::new(&server, token.clone());
    let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (open_port, closed) = (open.local_addr().unwrap().port(), closed_port());
    let nacos_register = |port: u16, ephemeral: bool| {
        let url = server.url(&format!(
            "/nacos/v1/ns/instance?accessToken={token}&serviceName=legacy&ip=127.0.0.1&port={port}&ephemeral={ephemeral}"
        ));
        api.send(api.http.post(url))
    };
    for (port, ephemeral) in [(open_port, false), (closed, false), (9002, true)] {
        let (code, body) = nacos_register(port, ephemeral).await;
        assert_eq!(code, StatusCode::OK, "{body}");
    }
    // The same closed port registered through the native API as persistent: no default check.
    api.register(
        "public",
        "DEFAULT_GROUP",
        "native",
        json!({"ip": "127.0.0.1", "port": closed, "ephemeral": false}),
    )
    .await;

    // The persistent Nacos instances are TCP-probed: the closed port goes unhealthy, the
    // open one stays healthy.
    wait_health(&api, "legacy", closed, false).await;
    // Four more intervals: time enough for the native one to fail three probes, were it probed.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(health_by_port(&api, "legacy").await[&u64::from(open_port)], "the open port stays healthy");
    assert!(health_by_port(&api, "native").await[&u64::from(closed)], "a native instance is not probed");

    let check_path =
        |port: u16| format!("/api/v1/namespaces/public/services/legacy/instances/127.0.0.1:{port}/check");
    for port in [open_port, closed] {
        let (code, check) = api.get(&check_path(port)).await;
        assert_eq!(code, StatusCode::OK, "{check}");
        assert_eq!(check["kind"], "tcp");
        assert_eq!(check["interval_ms"], 150);
        assert_eq!(check["origin"], "nacos_default");
    }
    let (code, _) = api.get(&check_path(9002)).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "an ephemeral instance has no check");
    let native_check =
        format!("/api/v1/namespaces/public/services/native/instances/127.0.0.1:{closed}/check");
    let (code, _) = api.get(&native_check).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "a native persistent instance has no default check");

    // A re-registration, even through the native API, keeps the default check, like a
    // check of its own; deleting it stops the probing.
    api.register(
        "public",
        "DEFAULT_GROUP",
        "legacy",
        json!({"ip": "127.0.0.1", "port": closed, "ephemeral": false}),
    )
    .await;
    assert_eq!(api.get(&check_path(closed)).await.0, StatusCode::OK);
    let (code, answer) = api.call(reqwest::Method::DELETE, &check_path(closed), Value::Null).await;
    assert_eq!((code, answer["deleted"].clone()), (StatusCode::OK, json!(true)), "{answer}");
    let (code, answer) = api.call(reqwest::Method::DELETE, &check_path(closed), Value::Null).await;
    assert_eq!(answer["deleted"], false, "{code} {answer}");
    assert_eq!(api.get(&check_path(closed)).await.0, StatusCode::NOT_FOUND);
    assert_eq!(api.get(&check_path(open_port)).await.0, StatusCode::OK, "the other one keeps its check");
    // Its port closes: it goes unhealthy.
    drop(open);
    wait_health(&api, "legacy", open_port, false).await;

    // Nothing was stored per instance for the default checks.
    server.terminate();
    assert_eq!(stored_keys(dir.path(), "health/").await, Vec::<String>::new());
}

/// A default check stored per instance by an older version still probes, shows and deletes.
#[tokio::test]
async fn a_default_check_stored_by_an_older_version_still_applies() {
    use sb_store::Store;
    let dir = tempfile::tempdir().unwrap();
    let closed = closed_port();
    let instance = format!("registry/instances/public/DEFAULT_GROUP/old/DEFAULT/127.0.0.1:{closed}");
    let check = format!("health/checks/public/DEFAULT_GROUP/old/DEFAULT/127.0.0.1:{closed}");
    {
        let options = sb_store_embedded::EmbeddedOptions::new(dir.path().join("store.redb"));
        let store = sb_store_embedded::EmbeddedStore::open(options).await.expect("open the store");
        let ops = [
            ("registry/services/public/DEFAULT_GROUP/old", json!({"protect_threshold": 0.0, "v": 1})),
            (
                instance.as_str(),
                json!({"weight": 1.0, "enabled": true, "healthy": true, "ephemeral": false, "owner": "old", "v": 1}),
            ),
            (
                check.as_str(),
                json!({"kind": "tcp", "interval_ms": 150, "timeout_ms": 150, "healthy_threshold": 1,
                       "unhealthy_threshold": 3, "origin": "nacos_default", "v": 1}),
            ),
        ]
        .map(|(key, value)| sb_store::TxnOp::put(key, value.to_string().into_bytes()));
        store.txn(sb_store::Txn::new().and_then(ops)).await.expect("seed");
        store.close().await;
    }
    let fast = ["--dns-listen", "off", "--health-reconcile-ms", "100", "--nacos-check-interval-ms", "150"];
    let (server, token) = start(dir.path(), &fast);
    let api = Api::new(&server, token);
    wait_health(&api, "old", closed, false).await;
    let path = format!("/api/v1/namespaces/public/services/old/instances/127.0.0.1:{closed}/check");
    let (code, shown) = api.get(&path).await;
    assert_eq!((code, shown["origin"].clone()), (StatusCode::OK, json!("nacos_default")), "{shown}");
    let (code, answer) = api.call(reqwest::Method::DELETE, &path, Value::Null).await;
    assert_eq!((code, answer["deleted"].clone()), (StatusCode::OK, json!(true)), "{answer}");
    assert_eq!(api.get(&path).await.0, StatusCode::NOT_FOUND);
    server.terminate();
    assert_eq!(stored_keys(dir.path(), "health/").await, Vec::<String>::new());
}
