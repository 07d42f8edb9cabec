//! End-to-end tests of the service registry against the real binary: the native API and
//! the `svc` CLI, heartbeats and expiry, the protection threshold, long-polls and SSE,
//! drain, a restart that keeps instances, the Nacos 1.x naming API (shapes, beats, UDP
//! push) and the real Nacos SDK, on the embedded store and on etcd.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Server;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

/// Short timeouts so expiry takes seconds: unhealthy after 2 s, deleted after 4 s.
const TIMEOUT_FLAGS: [&str; 6] =
    ["--heartbeat-timeout-ms", "2000", "--ip-delete-timeout-ms", "4000", "--session-ttl-secs", "5"];

fn start(dir: &Path, extra: &[&str]) -> (Server, String) {
    let server = Server::start(dir, |command| {
        command.args(TIMEOUT_FLAGS).args(extra);
    });
    let token = std::fs::read_to_string(dir.join("admin-token")).expect("admin token").trim().to_owned();
    (server, token)
}

fn client() -> Client {
    Client::builder().timeout(Duration::from_secs(30)).build().expect("client")
}

async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("request");
    let status = response.status();
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

struct Api<'a> {
    http: Client,
    server: &'a Server,
    token: String,
}

impl Api<'_> {
    fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        send(self.http.get(self.url(path)).bearer_auth(&self.token)).await
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> (StatusCode, Value) {
        let request = self.http.request(method, self.url(path)).bearer_auth(&self.token);
        send(request.header("content-type", "application/json").body(body.to_string())).await
    }

    async fn nacos(&self, method: reqwest::Method, path: &str, query: &str) -> (StatusCode, Value) {
        let url = format!("{}?accessToken={}&{query}", self.url(path), self.token);
        send(self.http.request(method, url)).await
    }
}

const SVC: &str = "/api/v1/namespaces/public/services/providers:com.x.Y:1.0";

fn ports(list: &Value) -> Vec<(u64, bool)> {
    let mut out: Vec<(u64, bool)> = list["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| (i["port"].as_u64().unwrap(), i["healthy"].as_bool().unwrap()))
        .collect();
    out.sort();
    out
}

/// `switchboard_registry_store_writes` from `/metrics`.
async fn registry_writes(api: &Api<'_>) -> f64 {
    common::metric(&api.http, api.server, "switchboard_registry_store_writes_total").await
}

async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn native_api_registers_beats_expires_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let (server, token) = start(dir.path(), &[]);
    let api = Api { http: client(), server: &server, token };
    let post = reqwest::Method::POST;

    // Register an ephemeral and a persistent instance: read-your-writes.
    let (status, body) = api
        .call(
            post.clone(),
            &format!("{SVC}/instances"),
            json!({"ip":"10.0.0.1","port":80,"metadata":{"a":"b"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = api
        .call(post.clone(), &format!("{SVC}/instances"), json!({"ip":"10.0.0.2","port":81,"ephemeral":false}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, list) = api.get(&format!("{SVC}/instances")).await;
    assert_eq!(ports(&list), [(80, true), (81, true)], "{list}");
    assert_eq!(list["instances"][0]["metadata"]["a"], "b");

    // Bad input: 400 naming the field, nothing half-registered.
    for (body, field) in [
        (json!({"ip":"10.0.0.300","port":80}), "ip"),
        (json!({"ip":"10.0.0.1","port":0}), "port"),
        (json!({"ip":"10.0.0.1","port":65536}), "port"),
        (json!({"ip":"10.0.0.1","port":80,"weight":10001}), "weight"),
        (json!({"ip":"10.0.0.1","port":82,"metadata":{"k":"x".repeat(17 * 1024)}}), "metadata"),
    ] {
        let (status, error) = api.call(post.clone(), &format!("{SVC}/instances"), body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
        assert_eq!(error["error"]["field"], field, "{error}");
    }
    let (status, error) = api
        .call(
            post.clone(),
            "/api/v1/namespaces/public/services/a%2Fb/instances",
            json!({"ip":"10.0.0.1","port":1}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    let (_, list) = api.get(&format!("{SVC}/instances")).await;
    assert_eq!(ports(&list), [(80, true), (81, true)]);

    // Beats keep 80 alive and are not store writes; then it goes unhealthy and is deleted.
    let beat = format!("{SVC}/instances/10.0.0.1:80/beat");
    let revision = list["revision"].as_i64().unwrap();
    let writes = registry_writes(&api).await;
    assert!(writes >= 2.0, "the two registrations are registry writes: {writes}");
    for _ in 0..6 {
        let (status, body) = api.call(post.clone(), &beat, json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (_, list) = api.get(&format!("{SVC}/instances")).await;
    assert_eq!(ports(&list), [(80, true), (81, true)]);
    assert_eq!(list["revision"].as_i64().unwrap(), revision, "beats changed the service");
    assert_eq!(registry_writes(&api).await, writes, "beats were written to the store");
    wait_until("80 unhealthy", async || {
        ports(&api.get(&format!("{SVC}/instances")).await.1) == [(80, false), (81, true)]
    })
    .await;
    wait_until("80 deleted", async || ports(&api.get(&format!("{SVC}/instances")).await.1) == [(81, true)])
        .await;
    let (status, body) = api.call(post.clone(), &beat, json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "an unknown instance's beat is never a silent success: {body}");

    // Service detail and list; a service with instances cannot be deleted.
    let (_, detail) = api.get(SVC).await;
    assert_eq!(detail["instance_count"], 1, "{detail}");
    let (_, services) = api.get("/api/v1/namespaces/public/services").await;
    assert_eq!(services["count"], 1, "{services}");
    let (status, _) = api.call(reqwest::Method::DELETE, SVC, json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) =
        api.call(reqwest::Method::DELETE, &format!("{SVC}/instances/10.0.0.2:81"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api.call(reqwest::Method::DELETE, SVC, json!({})).await;
    assert_eq!(status, StatusCode::OK);
    server.terminate();
}

#[tokio::test]
async fn protection_threshold_long_poll_sse_and_drain() {
    let dir = tempfile::tempdir().unwrap();
    let (server, token) = start(dir.path(), &[]);
    let api = Api { http: client(), server: &server, token };
    let post = reqwest::Method::POST;
    let svc = "/api/v1/namespaces/dev/services/orders?group=shop";
    // A threshold outside 0–1: a 400 naming it, natively and on the Nacos path.
    let (status, error) = api.call(reqwest::Method::PUT, svc, json!({"protect_threshold": 1.5})).await;
    assert_eq!((status, &error["error"]["field"]), (StatusCode::BAD_REQUEST, &json!("protect_threshold")));
    let (status, error) = api
        .nacos(reqwest::Method::POST, "/nacos/v1/ns/service", "serviceName=bad&protectThreshold=-0.1")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    assert!(error.as_str().is_some_and(|e| e.starts_with("caused: ")), "{error}");
    let (status, _) = api.call(reqwest::Method::PUT, svc, json!({"protect_threshold": 0.6})).await;
    assert_eq!(status, StatusCode::OK);
    let instances = "/api/v1/namespaces/dev/services/orders/instances?group=shop";
    for port in [1, 2, 3] {
        let ephemeral = port == 1;
        let body = json!({"ip":"10.0.1.1","port":port,"ephemeral":ephemeral});
        assert_eq!(api.call(post.clone(), instances, body).await.0, StatusCode::OK);
    }
    // The ephemeral one goes unhealthy: 2/3 healthy > 0.6, no protection.
    wait_until("port 1 unhealthy", async || ports(&api.get(instances).await.1)[0] == (1, false)).await;
    let (_, list) = api.get(&format!("{instances}&healthy_only=true")).await;
    assert_eq!(list["reach_protection_threshold"], false);
    assert_eq!(ports(&list), [(2, true), (3, true)]);
    // Raise the threshold: 2/3 ≤ 0.7, every instance is served, the native API shows the truth.
    assert_eq!(
        api.call(reqwest::Method::PUT, svc, json!({"protect_threshold": 0.7})).await.0,
        StatusCode::OK
    );
    let (_, list) = api.get(&format!("{instances}&healthy_only=true")).await;
    assert_eq!(list["reach_protection_threshold"], true, "{list}");
    assert_eq!(ports(&list), [(1, false), (2, true), (3, true)]);
    assert_eq!(list["instances"][0]["served_healthy"], true);
    // On the Nacos path the protected instances are marked healthy.
    let (_, nacos) = api
        .nacos(
            reqwest::Method::GET,
            "/nacos/v1/ns/instance/list",
            "namespaceId=dev&serviceName=shop@@orders&healthyOnly=true",
        )
        .await;
    assert_eq!(nacos["reachProtectionThreshold"], true, "{nacos}");
    assert_eq!(nacos["hosts"].as_array().unwrap().len(), 3);
    assert!(nacos["hosts"].as_array().unwrap().iter().all(|h| h["healthy"] == true));

    // A long-poll holds until the service changes.
    let since = list["revision"].as_i64().unwrap();
    let poll_url = format!("{instances}&wait_secs=20&since_revision={since}");
    let poll = {
        let http = api.http.clone();
        let url = api.url(&poll_url);
        let token = api.token.clone();
        tokio::spawn(async move { send(http.get(url).bearer_auth(token)).await })
    };
    // And an SSE stream sees it too.
    let mut sse = api
        .http
        .get(api.url("/api/v1/namespaces/dev/services/orders/watch?group=shop"))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    let first = read_event(&mut sse).await;
    assert_eq!(first["instances"].as_array().unwrap().len(), 3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished(), "the long-poll answered before any change");
    assert_eq!(
        api.call(post.clone(), instances, json!({"ip":"10.0.1.1","port":4,"ephemeral":false})).await.0,
        StatusCode::OK
    );
    let (status, polled) = poll.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(polled["revision"].as_i64().unwrap() > since);
    assert_eq!(polled["instances"].as_array().unwrap().len(), 4);
    let next = read_event(&mut sse).await;
    assert_eq!(next["instances"].as_array().unwrap().len(), 4);

    // Drain: disabled at once (Nacos lists leave it out), deleted after the delay.
    let drain = "/api/v1/namespaces/dev/services/orders/instances/10.0.1.1:4/drain?group=shop";
    assert_eq!(api.call(post.clone(), drain, json!({"delay_secs": 1})).await.0, StatusCode::OK);
    let (_, list) = api.get(instances).await;
    let drained = list["instances"].as_array().unwrap().iter().find(|i| i["port"] == 4).cloned().unwrap();
    assert_eq!(drained["enabled"], false);
    let (_, nacos) = api
        .nacos(reqwest::Method::GET, "/nacos/v1/ns/instance/list", "namespaceId=dev&serviceName=shop@@orders")
        .await;
    assert!(nacos["hosts"].as_array().unwrap().iter().all(|h| h["port"] != 4), "{nacos}");
    wait_until("the drained instance deleted", async || ports(&api.get(instances).await.1).len() == 3).await;
    drop(sse);
    server.terminate();
}

async fn read_event(response: &mut reqwest::Response) -> Value {
    let mut buffer = String::new();
    loop {
        if let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data:")) {
                return serde_json::from_str(data.trim()).expect("event JSON");
            }
            continue;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
            .await
            .expect("an SSE event within 10 s")
            .expect("stream")
            .expect("stream open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
}

fn cli(server: &Server, data_dir: &Path) -> Command {
    let mut command = common::switchboard();
    command
        .env("SWITCHBOARD_ENDPOINT", &server.base)
        .env("SWITCHBOARD_DATA_DIR", data_dir)
        .env_remove("SWITCHBOARD_TOKEN");
    command
}

fn ok(command: &mut Command) -> String {
    let output = command.stdin(Stdio::null()).output().expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{command:?}: {stdout} {}", String::from_utf8_lossy(&output.stderr));
    stdout
}

#[test]
fn svc_cli_registers_lists_watches_drains_and_beats() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = start(dir.path(), &[]);
    let data = dir.path();
    // A watch first: it prints the changes as they happen.
    let mut watch = cli(&server, data)
        .args(["svc", "watch", "providers:com.x.Y:1.0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    {
        let lines = lines.clone();
        let stdout = watch.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
    }
    let out = ok(cli(&server, data).args([
        "svc",
        "register",
        "providers:com.x.Y:1.0",
        "10.0.0.7:20880",
        "--metadata",
        "side=provider",
        "--persistent",
    ]));
    assert!(out.contains("registered 10.0.0.7:20880"), "{out}");
    ok(cli(&server, data).args(["svc", "register", "providers:com.x.Y:1.0", "10.0.0.8:20880"]));
    ok(cli(&server, data).args(["svc", "beat", "providers:com.x.Y:1.0", "10.0.0.8:20880"]));
    let list = ok(cli(&server, data).args(["svc", "list", "providers:com.x.Y:1.0"]));
    assert!(list.contains("DEFAULT/10.0.0.7:20880") && list.contains("side"), "{list}");
    let services = ok(cli(&server, data).args(["svc", "list"]));
    assert!(services.contains("providers:com.x.Y:1.0"), "{services}");
    let get = ok(cli(&server, data).args(["svc", "get", "providers:com.x.Y:1.0", "-o", "json"]));
    assert_eq!(serde_json::from_str::<Value>(&get).unwrap()["instance_count"], 2);
    ok(cli(&server, data).args([
        "svc",
        "drain",
        "providers:com.x.Y:1.0",
        "10.0.0.7:20880",
        "--delay-secs",
        "1",
    ]));
    ok(cli(&server, data).args(["svc", "deregister", "providers:com.x.Y:1.0", "10.0.0.8:20880"]));
    let output =
        cli(&server, data).args(["svc", "beat", "providers:com.x.Y:1.0", "10.0.0.8:20880"]).output().unwrap();
    assert!(!output.status.success(), "a beat for an unknown instance fails");
    // The watch saw: both added, 7 disabled, 8 removed, then 7 removed after the drain.
    let expected = [
        "ADD DEFAULT/10.0.0.7:20880",
        "ADD DEFAULT/10.0.0.8:20880",
        "UPDATE DEFAULT/10.0.0.7:20880 healthy=true enabled=false",
        "REMOVE DEFAULT/10.0.0.8:20880",
        "REMOVE DEFAULT/10.0.0.7:20880",
    ];
    for _ in 0..100 {
        let seen = lines.lock().unwrap().clone();
        if expected.iter().all(|e| seen.iter().any(|l| l.contains(e))) {
            let _ = watch.kill();
            let _ = watch.wait();
            server.terminate();
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = watch.kill();
    let _ = watch.wait();
    panic!("svc watch printed {:#?}", lines.lock().unwrap());
}

#[tokio::test]
async fn a_restart_keeps_ephemeral_instances_and_re_adopts_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let (server, token) = start(dir.path(), &[]);
    let api = Api { http: client(), server: &server, token: token.clone() };
    let (status, _) = api
        .call(reqwest::Method::POST, &format!("{SVC}/instances"), json!({"ip":"10.0.0.1","port":80}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let session = std::fs::read_to_string(dir.path().join("session-lease")).unwrap();
    server.terminate();
    // A graceful stop keeps the session lease; the next start re-adopts it.
    let (server, _) = start(dir.path(), &[]);
    let api = Api { http: client(), server: &server, token };
    assert_eq!(std::fs::read_to_string(dir.path().join("session-lease")).unwrap(), session);
    let (_, list) = api.get(&format!("{SVC}/instances")).await;
    assert_eq!(ports(&list), [(80, true)], "{list}");
    // Its beats carry on as before, and without them it expires as usual.
    let (status, _) =
        api.call(reqwest::Method::POST, &format!("{SVC}/instances/10.0.0.1:80/beat"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    wait_until("80 deleted without beats", async || {
        ports(&api.get(&format!("{SVC}/instances")).await.1).is_empty()
    })
    .await;
    server.terminate();
}

#[tokio::test]
async fn nacos_naming_api_answers_in_nacos_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let (server, token) = start(dir.path(), &[]);
    let api = Api { http: client(), server: &server, token };
    use reqwest::Method as M;
    // Light beat for an unknown instance: code 20404; full beat registers it.
    let (status, beat) =
        api.nacos(M::PUT, "/nacos/v1/ns/instance/beat", "serviceName=svc&ip=10.2.0.1&port=80").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(beat["code"], 20404, "{beat}");
    let full = r#"{"ip":"10.2.0.1","port":80,"cluster":"c1","weight":2.0,"metadata":{"k":"v"}}"#;
    let query = format!("serviceName=DEFAULT_GROUP%40%40svc&beat={}", urlencode(full));
    let (_, beat) = api.nacos(M::PUT, "/nacos/v1/ns/instance/beat", &query).await;
    assert_eq!(beat, json!({"clientBeatInterval": 5000, "code": 10200, "lightBeatEnabled": true}));
    let (_, beat) = api
        .nacos(M::PUT, "/nacos/v1/ns/instance/beat", "serviceName=svc&ip=10.2.0.1&port=80&clusterName=c1")
        .await;
    assert_eq!(beat["code"], 10200);
    // An instance's own beat interval (Nacos's `preserved.heart.beat.interval` metadata) is
    // what its beats are told, and what the list shows.
    let own = r#"{"ip":"10.2.0.9","port":80,"metadata":{"preserved.heart.beat.interval":"1500"}}"#;
    let query = format!("serviceName=g2%40%40paced&beat={}", urlencode(own));
    let (_, beat) = api.nacos(M::PUT, "/nacos/v1/ns/instance/beat", &query).await;
    assert_eq!((beat["code"].clone(), beat["clientBeatInterval"].clone()), (json!(10200), json!(1500)));
    let (_, list) = api.nacos(M::GET, "/nacos/v1/ns/instance/list", "serviceName=g2@@paced").await;
    assert_eq!(list["hosts"][0]["instanceHeartBeatInterval"], 1500, "{list}");
    assert_eq!(
        api.nacos(M::DELETE, "/nacos/v1/ns/instance", "serviceName=g2@@paced&ip=10.2.0.9&port=80").await.0,
        StatusCode::OK
    );
    // Form-posted registration (as the Java SDK sends it) with `group@@service`.
    let url = format!("{}?accessToken={}", api.url("/nacos/v1/ns/instance"), api.token);
    let form =
        "serviceName=g1%40%40svc&ip=10.2.0.2&port=81&weight=1.5&ephemeral=false&metadata=a%3D1%2Cb%3D2";
    let response = api
        .http
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "ok");
    let (_, list) = api.nacos(M::GET, "/nacos/v1/ns/instance/list", "serviceName=svc&groupName=g1").await;
    for field in [
        "name",
        "groupName",
        "clusters",
        "cacheMillis",
        "hosts",
        "lastRefTime",
        "checksum",
        "allIPs",
        "reachProtectionThreshold",
        "valid",
    ] {
        assert!(list.get(field).is_some(), "instance/list lacks {field}: {list}");
    }
    assert_eq!(list["name"], "g1@@svc");
    let host = &list["hosts"][0];
    assert_eq!(host["metadata"], json!({"a":"1","b":"2"}));
    for field in [
        "instanceId",
        "ip",
        "port",
        "weight",
        "healthy",
        "enabled",
        "ephemeral",
        "clusterName",
        "serviceName",
        "metadata",
        "instanceHeartBeatInterval",
        "instanceHeartBeatTimeOut",
        "ipDeleteTimeout",
    ] {
        assert!(host.get(field).is_some(), "a host lacks {field}: {host}");
    }
    // The cluster filter.
    let (_, list) = api.nacos(M::GET, "/nacos/v1/ns/instance/list", "serviceName=svc&clusters=c1").await;
    assert_eq!(list["hosts"].as_array().unwrap().len(), 1);
    assert_eq!(list["hosts"][0]["weight"], 2.0);
    let (_, list) = api.nacos(M::GET, "/nacos/v1/ns/instance/list", "serviceName=svc&clusters=c2").await;
    assert_eq!(list["hosts"].as_array().unwrap().len(), 0);
    // Bad input: Nacos's plain-text 400.
    for query in [
        "serviceName=svc&ip=1.2.3&port=80",
        "serviceName=svc&ip=1.2.3.4&port=0",
        "serviceName=svc&ip=1.2.3.4&port=80&weight=20000",
        "serviceName=svc&ip=1.2.3.4&port=65536",
        "ip=1.2.3.4&port=80",
    ] {
        let (status, body) = api.nacos(M::POST, "/nacos/v1/ns/instance", query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(body.as_str().is_some_and(|b| b.starts_with("caused: ")), "{body}");
    }
    // Metadata over 16 KiB, in the form body as SDKs send it: refused, nothing registered.
    let url = format!("{}?accessToken={}", api.url("/nacos/v1/ns/instance"), api.token);
    let form = format!("serviceName=svc&ip=10.2.0.7&port=80&metadata=big%3D{}", "x".repeat(17 * 1024));
    let request = api.http.post(url).header("content-type", "application/x-www-form-urlencoded").body(form);
    let (status, body) = send(request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.as_str().is_some_and(|b| b.starts_with("caused: ") && b.contains("metadata")), "{body}");
    let (status, _) = api.nacos(M::GET, "/nacos/v1/ns/instance", "serviceName=svc&ip=10.2.0.7&port=80").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Services: create, conflict, update, get, list, delete.
    assert_eq!(
        api.nacos(M::POST, "/nacos/v1/ns/service", "serviceName=empty&protectThreshold=0.5&metadata=x%3D1")
            .await,
        (StatusCode::OK, json!("ok"))
    );
    assert_eq!(
        api.nacos(M::POST, "/nacos/v1/ns/service", "serviceName=empty").await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        api.nacos(M::PUT, "/nacos/v1/ns/service", "serviceName=empty&protectThreshold=0.2").await.0,
        StatusCode::OK
    );
    let (_, service) = api.nacos(M::GET, "/nacos/v1/ns/service", "serviceName=empty").await;
    assert_eq!(service["protectThreshold"], 0.2, "{service}");
    assert_eq!(service["metadata"]["x"], "1");
    let (_, services) = api.nacos(M::GET, "/nacos/v1/ns/service/list", "pageNo=1&pageSize=10").await;
    assert_eq!(services, json!({"count": 2, "doms": ["empty", "svc"]}));
    // An empty namespaceId is `public`, as an absent one.
    let (_, services) =
        api.nacos(M::GET, "/nacos/v1/ns/service/list", "pageNo=1&pageSize=10&namespaceId=").await;
    assert_eq!(services, json!({"count": 2, "doms": ["empty", "svc"]}));
    // The native list pages over every group of the namespace.
    let (_, page) = api.get("/api/v1/namespaces/public/services?page=2&page_size=2").await;
    let names: Vec<String> = page["services"]
        .as_array()
        .unwrap_or_else(|| panic!("services in {page}"))
        .iter()
        .map(|s| format!("{}/{}", s["group"].as_str().unwrap(), s["service"].as_str().unwrap()))
        .collect();
    assert_eq!(
        (&page["count"], names.as_slice()),
        (&json!(4), ["g1/svc", "g2/paced"].map(String::from).as_slice())
    );
    let (status, error) = api.get("/api/v1/namespaces/public/services?page_size=0").await;
    assert_eq!((status, &error["error"]["field"]), (StatusCode::BAD_REQUEST, &json!("page_size")));
    assert_eq!(api.nacos(M::DELETE, "/nacos/v1/ns/service", "serviceName=empty").await.0, StatusCode::OK);
    assert_eq!(
        api.nacos(M::DELETE, "/nacos/v1/ns/service", "serviceName=svc").await.0,
        StatusCode::BAD_REQUEST
    );
    // Instance get, update, deregister.
    let (_, one) =
        api.nacos(M::GET, "/nacos/v1/ns/instance", "serviceName=g1@@svc&ip=10.2.0.2&port=81").await;
    assert_eq!(one["service"], "g1@@svc");
    assert_eq!(
        api.nacos(M::PUT, "/nacos/v1/ns/instance", "serviceName=g1@@svc&ip=10.2.0.2&port=81&enabled=false")
            .await
            .0,
        StatusCode::OK
    );
    let (_, list) = api.nacos(M::GET, "/nacos/v1/ns/instance/list", "serviceName=g1@@svc").await;
    assert_eq!(list["hosts"].as_array().unwrap().len(), 0, "disabled instances are not listed");
    assert_eq!(
        api.nacos(M::DELETE, "/nacos/v1/ns/instance", "serviceName=g1@@svc&ip=10.2.0.2&port=81").await,
        (StatusCode::OK, json!("ok"))
    );
    assert_eq!(
        api.nacos(M::GET, "/nacos/v1/ns/instance", "serviceName=g1@@svc&ip=10.2.0.2&port=81").await.0,
        StatusCode::NOT_FOUND
    );
    // What SDKs call at start.
    let (_, metrics) = api.nacos(M::GET, "/nacos/v1/ns/operator/metrics", "").await;
    assert_eq!(metrics["status"], "UP");
    assert_eq!(metrics["instanceCount"], 1);
    let (_, switches) = api.nacos(M::GET, "/nacos/v1/ns/operator/switches", "").await;
    assert_eq!(switches["lightBeatEnabled"], true);
    let scrape = api.http.get(api.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(scrape.contains("switchboard_registry_instances 1"), "{scrape}");
    // The token in the `accessToken` header instead of the query.
    let list = api.http.get(api.url("/nacos/v1/ns/instance/list?serviceName=svc"));
    let (status, body) = send(list.header("accessToken", &api.token)).await;
    assert_eq!((status, body["hosts"].is_array()), (StatusCode::OK, true), "{body}");
    // Without a token: Nacos's 403.
    let (status, body) = send(api.http.get(api.url("/nacos/v1/ns/instance/list?serviceName=svc"))).await;
    assert_eq!((status, body), (StatusCode::FORBIDDEN, json!("unknown user!")));
    server.terminate();
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn nacos_udp_push_reaches_a_subscriber_and_is_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let (server, token) = start(dir.path(), &[]);
    let api = Api { http: client(), server: &server, token };
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let udp_port = socket.local_addr().unwrap().port();
    let query = format!("serviceName=push.svc&clientIP=127.0.0.1&udpPort={udp_port}");
    let (_, list) = api.nacos(reqwest::Method::GET, "/nacos/v1/ns/instance/list", &query).await;
    assert_eq!(list["cacheMillis"], 10000, "{list}");
    // A second subscriber of the same service, which never acknowledges.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let query = format!("serviceName=push.svc&clientIP=127.0.0.1&udpPort={silent_port}");
    api.nacos(reqwest::Method::GET, "/nacos/v1/ns/instance/list", &query).await;
    // A large metadata map makes the packet gzipped (over 1 KiB).
    let metadata = urlencode(&json!({"blob": "y".repeat(2000)}).to_string());
    let register = format!("serviceName=push.svc&ip=10.3.0.1&port=80&metadata={metadata}");
    assert_eq!(api.nacos(reqwest::Method::POST, "/nacos/v1/ns/instance", &register).await.0, StatusCode::OK);
    let mut buffer = vec![0u8; 65536];
    let (n, from) = tokio::time::timeout(Duration::from_secs(10), socket.recv_from(&mut buffer))
        .await
        .expect("a push within 10 s")
        .unwrap();
    let mut packet = buffer[..n].to_vec();
    assert_eq!(&packet[..2], &[0x1f, 0x8b], "a packet over 1 KiB is gzipped");
    let mut unzipped = Vec::new();
    flate2::read::GzDecoder::new(&packet[..]).read_to_end(&mut unzipped).unwrap();
    packet = unzipped;
    let push: Value = serde_json::from_slice(&packet).unwrap();
    assert_eq!(push["type"], "dom");
    let data: Value = serde_json::from_str(push["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["name"], "DEFAULT_GROUP@@push.svc");
    assert_eq!(data["hosts"][0]["port"], 80);
    let ack = json!({"type": "push-ack", "lastRefTime": push["lastRefTime"].to_string(), "data": ""});
    socket.send_to(ack.to_string().as_bytes(), from).await.unwrap();
    // The other subscriber got the same push, and gets it again: it did not acknowledge.
    let mut silent_buffer = vec![0u8; 65536];
    for attempt in ["first", "retried"] {
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), silent.recv_from(&mut silent_buffer))
            .await
            .unwrap_or_else(|_| panic!("the {attempt} push to the silent subscriber within 5 s"))
            .unwrap();
        let mut unzipped = Vec::new();
        flate2::read::GzDecoder::new(&silent_buffer[..n]).read_to_end(&mut unzipped).unwrap();
        assert_eq!(unzipped, packet, "the {attempt} push to the silent subscriber is the same packet");
    }
    // Acknowledged: it is not sent again (a later push of a new change, the instance going
    // unhealthy without beats, has its own lastRefTime).
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Ok(Ok((n, _))) = tokio::time::timeout_at(until, socket.recv_from(&mut buffer)).await {
        let mut unzipped = Vec::new();
        flate2::read::GzDecoder::new(&buffer[..n]).read_to_end(&mut unzipped).unwrap();
        let later: Value = serde_json::from_slice(&unzipped).unwrap();
        assert_ne!(later["lastRefTime"], push["lastRefTime"], "an acknowledged push was sent again");
    }
    server.terminate();
}

fn run_sdk(server: &Server, token: &str, service: &str, work: &Path) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/nacos_naming_sdk.py");
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut child = Command::new(common::nacos_python())
        .arg(script)
        .args([addr.as_str(), token, service])
        .arg(work)
        .current_dir(work)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the Nacos SDK's python runs");
    let status = common::wait_with_timeout(&mut child, Duration::from_secs(120));
    let mut out = String::new();
    let mut err = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(
        status.success() && out.contains("OK"),
        "the Nacos SDK scenario failed\nstdout: {out}\nstderr: {err}"
    );
}

#[test]
fn nacos_sdk_registers_discovers_subscribes_and_expires_on_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let (server, token) = start(dir.path(), &[]);
    let work = tempfile::tempdir().unwrap();
    run_sdk(&server, &token, "sdk.embedded", work.path());
    server.terminate();
}

#[test]
fn nacos_sdk_registers_discovers_subscribes_and_expires_on_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("etcd://{}", common::etcd_endpoint());
    let prefix = format!(
        "/t-nacos-sdk-etcd-{}/",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    );
    let (server, token) = start(dir.path(), &["--store", &store, "--root-prefix", &prefix]);
    let work = tempfile::tempdir().unwrap();
    run_sdk(&server, &token, "sdk.etcd", work.path());
    server.terminate();
}

#[tokio::test]
async fn two_etcd_nodes_share_the_registry_and_a_beat_moves_an_instance_to_the_node_it_reaches() {
    let store = format!("etcd://{}", common::etcd_endpoint());
    let prefix = format!(
        "/t-registry-two-etcd-{}/",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    );
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, token) =
        start(dir_a.path(), &["--store", &store, "--root-prefix", &prefix, "--node-id", "node-a"]);
    let b = Server::start(dir_b.path(), |command| {
        command.args(TIMEOUT_FLAGS).args([
            "--store",
            &store,
            "--root-prefix",
            &prefix,
            "--node-id",
            "node-b",
        ]);
    });
    let api_a = Api { http: client(), server: &a, token: token.clone() };
    let api_b = Api { http: client(), server: &b, token };
    let (status, _) = api_a
        .call(reqwest::Method::POST, &format!("{SVC}/instances"), json!({"ip":"10.0.0.1","port":80}))
        .await;
    assert_eq!(status, StatusCode::OK);
    // Node B sees A's registration (its view follows the same etcd).
    wait_until("node B to see the instance", async || {
        ports(&api_b.get(&format!("{SVC}/instances")).await.1) == [(80, true)]
    })
    .await;
    // The client's beats reach B: B adopts the instance onto its own session.
    let (status, _) =
        api_b.call(reqwest::Method::POST, &format!("{SVC}/instances/10.0.0.1:80/beat"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    wait_until("the instance to be owned by node B", async || {
        api_a.get(&format!("{SVC}/instances")).await.1["instances"][0]["owner"] == "node-b"
    })
    .await;
    // A dies without leaving: its session lease expires, the instance stays (B holds it).
    drop(a);
    for _ in 0..14 {
        let (status, _) =
            api_b.call(reqwest::Method::POST, &format!("{SVC}/instances/10.0.0.1:80/beat"), json!({})).await;
        assert_eq!(status, StatusCode::OK, "the instance vanished with node A");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(ports(&api_b.get(&format!("{SVC}/instances")).await.1), [(80, true)]);
    b.terminate();
}

#[tokio::test]
async fn a_lost_session_on_etcd_is_regained_with_the_instances_still_beating() {
    let endpoint = common::etcd_endpoint();
    let store = format!("etcd://{endpoint}");
    let prefix = format!(
        "/t-registry-session-etcd-{}/",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    );
    let dir = tempfile::tempdir().unwrap();
    let (server, token) = start(dir.path(), &["--store", &store, "--root-prefix", &prefix]);
    let api = Api { http: client(), server: &server, token };
    let post = reqwest::Method::POST;
    for port in [80, 81] {
        let body = json!({"ip":"10.0.0.1","port":port});
        assert_eq!(api.call(post.clone(), &format!("{SVC}/instances"), body).await.0, StatusCode::OK);
    }
    // Only 80 keeps beating; 81's client has stopped.
    let beat = format!("{SVC}/instances/10.0.0.1:80/beat");
    for _ in 0..6 {
        api.call(post.clone(), &beat, json!({})).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // The session lease is lost (revoked behind the node's back, as an expiry during a
    // partition would): both instances vanish with it.
    let lease: i64 =
        std::fs::read_to_string(dir.path().join("session-lease")).unwrap().trim().parse().unwrap();
    let revoke = api
        .http
        .post(format!("http://{endpoint}/v3/lease/revoke"))
        .body(json!({"ID": lease.to_string()}).to_string())
        .send()
        .await
        .unwrap();
    assert!(revoke.status().is_success(), "{:?}", revoke.text().await);
    // The node takes a new session and puts back what still beats: 80, not 81.
    let mut back = false;
    for _ in 0..60 {
        api.call(post.clone(), &beat, json!({})).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let session = std::fs::read_to_string(dir.path().join("session-lease")).unwrap_or_default();
        if ports(&api.get(&format!("{SVC}/instances")).await.1) == [(80, true)]
            && session.trim() != lease.to_string()
        {
            back = true;
            break;
        }
    }
    assert!(back, "instances after the session loss: {}", api.get(&format!("{SVC}/instances")).await.1);
    server.terminate();
}

/// The instances' addresses in a native list, sorted.
fn ips(list: &Value) -> Vec<String> {
    let mut ips: Vec<String> = list["instances"]
        .as_array()
        .map(|instances| instances.iter().filter_map(|i| i["ip"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    ips.sort();
    ips
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_two_etcd_nodes_drops_no_instance() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let store = format!("etcd://{}", common::etcd_endpoint());
    let prefix = format!(
        "/t-registry-rolling-{}/",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    );
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let node = |i: usize| {
        Server::start(dirs[i].path(), |command| {
            let id = ["node-a", "node-b"][i];
            command.args(TIMEOUT_FLAGS).args(["--store", &store, "--root-prefix", &prefix, "--node-id", id]);
        })
    };
    let mut nodes = [Some(node(0)), Some(node(1))];
    let token = std::fs::read_to_string(dirs[0].path().join("admin-token")).unwrap().trim().to_owned();
    // The nodes' addresses, `None` while one is down (a restart binds a new port).
    let bases: Arc<Mutex<[Option<String>; 2]>> =
        Arc::new(Mutex::new([0, 1].map(|i| nodes[i].as_ref().map(|n| n.base.clone()))));
    let http = client();
    // One ephemeral instance registered through each node.
    let instances = [(0usize, "10.0.0.1"), (1usize, "10.0.0.2")];
    for (home, ip) in instances {
        let base = bases.lock().unwrap()[home].clone().unwrap();
        let request = http.post(format!("{base}{SVC}/instances")).bearer_auth(&token);
        let body = json!({"ip": ip, "port": 80}).to_string();
        let (status, answer) = send(request.header("content-type", "application/json").body(body)).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    let up = |bases: &Mutex<[Option<String>; 2]>, first: usize| -> Vec<String> {
        let bases = bases.lock().unwrap();
        [first, 1 - first].iter().filter_map(|&i| bases[i].clone()).collect()
    };
    let stop = Arc::new(AtomicBool::new(false));
    // The clients beat every 300 ms, each to its own node, or to the other while it is down
    // (a Nacos client with both servers in its list does the same).
    let beater = tokio::spawn({
        let (bases, stop, http, token) = (bases.clone(), stop.clone(), http.clone(), token.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                for (home, ip) in instances {
                    for base in up(&bases, home) {
                        let beat =
                            http.post(format!("{base}{SVC}/instances/{ip}:80/beat")).bearer_auth(&token);
                        if beat.send().await.is_ok_and(|r| r.status() == StatusCode::OK) {
                            break;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    });
    // Every 100 ms, from a node that is up, the list must hold both instances.
    let checker = tokio::spawn({
        let (bases, stop, http, token) = (bases.clone(), stop.clone(), http.clone(), token.clone());
        async move {
            let (mut seen, mut missing) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                if let Some(base) = up(&bases, 0).into_iter().next() {
                    let list = http.get(format!("{base}{SVC}/instances")).bearer_auth(&token);
                    if let Ok(response) = list.send().await {
                        if response.status() == StatusCode::OK {
                            let text = response.text().await.unwrap_or_default();
                            let list: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                            seen += 1;
                            if ips(&list) != ["10.0.0.1", "10.0.0.2"] {
                                missing.push(text);
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (seen, missing)
        }
    });
    // Restart A, then B: a graceful stop, and a start on the same data dir.
    for (i, slot) in nodes.iter_mut().enumerate() {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        bases.lock().unwrap()[i] = None;
        let stopping = slot.take().unwrap();
        tokio::task::block_in_place(|| stopping.terminate());
        let started = tokio::task::block_in_place(|| node(i));
        bases.lock().unwrap()[i] = Some(started.base.clone());
        *slot = Some(started);
    }
    tokio::time::sleep(Duration::from_millis(3000)).await;
    stop.store(true, Ordering::Relaxed);
    beater.await.unwrap();
    let (seen, missing) = checker.await.unwrap();
    assert!(seen >= 30, "the list was read only {seen} times");
    assert!(missing.is_empty(), "{} of {seen} lists lacked an instance: {missing:?}", missing.len());
    // Both still there and healthy, on every node.
    for base in up(&bases, 0) {
        let (_, list) = send(http.get(format!("{base}{SVC}/instances")).bearer_auth(&token)).await;
        assert_eq!(ports(&list), [(80, true), (80, true)], "{list}");
    }
    for server in nodes.into_iter().flatten() {
        tokio::task::block_in_place(|| server.terminate());
    }
}
