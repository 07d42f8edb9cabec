//! End-to-end tests of the HTTP API against the real binary, as a user with curl would
//! talk to it: bootstrap token, KV, CAS conflicts, watch over SSE, leases, errors, probes.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::client;
use common::Server;
use reqwest::StatusCode;
use serde_json::Value;

async fn json(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, value)
}

/// A fresh node and its admin token.
fn start() -> (tempfile::TempDir, Server, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path(), |_| {});
    let token = server.printed_token().expect("a first start prints the admin token");
    (dir, server, token)
}

fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
}

#[tokio::test]
async fn first_start_prints_the_token_once_and_writes_it_0600() {
    let (dir, server, token) = start();
    let file = dir.path().join("admin-token");
    let mode = std::fs::metadata(&file).expect("admin-token written").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "admin-token is readable by its owner only");
    assert_eq!(std::fs::read_to_string(&file).expect("read").trim(), token);
    let printed = server.stdout.lock().unwrap().join("\n");
    assert!(printed.contains("curl"), "the first start prints a quick start: {printed}");
    let logged = server.stderr.lock().unwrap().join("\n");
    assert!(!logged.contains(&token), "the token never reaches the log");
    server.terminate();

    // A restart on the same store mints nothing new, prints no token, and the old one works.
    let server = Server::start(dir.path(), |_| {});
    assert_eq!(server.printed_token(), None, "the token is printed only once");
    let response = client().get(server.url("/api/v1/kv")).bearer_auth(&token).send().await.expect("list");
    assert_eq!(response.status(), StatusCode::OK);
    server.terminate();
}

#[tokio::test]
async fn short_admin_token_from_the_environment_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = common::switchboard()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("SWITCHBOARD_ADMIN_TOKEN", "too-short")
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("SWITCHBOARD_ADMIN_TOKEN") && stderr.contains("32"), "{stderr}");
}

#[tokio::test]
async fn admin_token_from_the_environment_works_and_is_not_printed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let token = "a-long-enough-token-for-automation-0123456789";
    let server = Server::start(dir.path(), |c| {
        c.env("SWITCHBOARD_ADMIN_TOKEN", token);
    });
    assert_eq!(server.printed_token(), None);
    assert!(!server.stdout.lock().unwrap().join("\n").contains(token));
    let response = client().get(server.url("/api/v1/kv")).bearer_auth(token).send().await.expect("list");
    assert_eq!(response.status(), StatusCode::OK);
    server.terminate();
}

#[tokio::test]
async fn requests_without_a_valid_token_get_a_401_json_error() {
    let (_dir, server, _token) = start();
    let http = client();
    let (status, body) = json(http.get(server.url("/api/v1/kv/a")).send().await.expect("get")).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthenticated");
    assert_eq!(body["error"]["field"], "Authorization");
    let response = http.put(server.url("/api/v1/kv/a")).bearer_auth("sbt_not-a-real-token").body("x");
    let (status, body) = json(response.send().await.expect("put")).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthenticated");
    let (status, body) = json(http.get(server.url("/api/v1/openapi.json")).send().await.expect("get")).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthenticated");
    // Probes and metrics need no token.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let response = http.get(server.url(path)).send().await.expect("probe");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    server.terminate();
}

/// Under `/nacos/` the answers are Nacos 1.x's: plain text, and a 403 `unknown user!` for a
/// missing or unknown `accessToken`.
#[tokio::test]
async fn nacos_paths_answer_as_nacos_does() {
    let (_dir, server, token) = start();
    let http = client();
    for url in [
        server.url("/nacos/v1/cs/configs?dataId=a&group=g"),
        server.url("/nacos/v1/cs/configs?dataId=a&group=g&accessToken=sbt_not-a-real-token"),
    ] {
        let response = http.get(url).send().await.expect("get");
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        assert_eq!(response.text().await.unwrap(), "unknown user!");
    }
    let url = server.url(&format!("/nacos/v1/cs/configs?dataId=a&group=g&accessToken={token}"));
    let response = http.get(url).send().await.expect("get");
    assert_eq!(
        response.status(),
        StatusCode::NOT_FOUND,
        "an authenticated Nacos path that does not exist yet"
    );
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    server.terminate();
}

#[tokio::test]
async fn kv_put_get_cas_conflict_delete_and_watch_over_sse() {
    let (_dir, server, token) = start();
    let http = client();
    let put = |key: &str, value: &'static [u8]| {
        http.put(server.url(&format!("/api/v1/kv/{key}"))).bearer_auth(&token).body(value)
    };
    let get = |path: &str| http.get(server.url(path)).bearer_auth(&token);

    let (status, written) = json(put("app/greeting", b"hello").send().await.expect("put")).await;
    assert_eq!(status, StatusCode::OK, "{written}");
    let first = written["revision"].as_i64().expect("revision");
    // Read-your-writes: the GET right after the PUT sees it.
    let (status, kv) = json(get("/api/v1/kv/app/greeting").send().await.expect("get")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        kv,
        serde_json::json!({"key": "app/greeting", "value": "hello", "value_encoding": "utf8",
            "create_revision": first, "mod_revision": first, "version": 1, "lease": null})
    );
    let (_, binary) = json(put("app/blob", &[0, 159, 146, 150]).send().await.expect("put")).await;
    let (_, kv) = json(get("/api/v1/kv/app/blob").send().await.expect("get")).await;
    assert_eq!((kv["value_encoding"].as_str(), kv["value"].as_str()), (Some("base64"), Some("AJ+Slg==")));

    // Compare-and-set on the mod revision, quoted or bare; a stale one is a 409.
    let stale = put("app/greeting", b"lost").header("If-Match", "\"1\"").send().await.expect("put");
    let (status, body) = json(stale).await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    assert!(body["error"]["message"].as_str().unwrap().contains(&first.to_string()), "{body}");
    let cas =
        put("app/greeting", b"hi").header("If-Match", format!("\"{first}\"")).send().await.expect("put");
    let (status, written) = json(cas).await;
    assert_eq!(status, StatusCode::OK, "{written}");
    let second = written["revision"].as_i64().unwrap();
    let cas = put("app/greeting", b"hey").header("If-Match", second.to_string()).send().await.expect("put");
    assert_eq!(cas.status(), StatusCode::OK);

    // A prefix list, and a read at a past revision from the store's history.
    let (_, list) = json(get("/api/v1/kv/app/?prefix=true&limit=1").send().await.expect("list")).await;
    assert_eq!((list["count"].as_i64(), list["more"].as_bool()), (Some(2), Some(true)), "{list}");
    assert_eq!(list["kvs"].as_array().map(Vec::len), Some(1));
    let (_, past) =
        json(get(&format!("/api/v1/kv/app/greeting?revision={first}")).send().await.expect("get")).await;
    assert_eq!(past["value"], "hello");

    let deleted =
        http.delete(server.url("/api/v1/kv/app/greeting")).bearer_auth(&token).send().await.expect("del");
    let (status, body) = json(deleted).await;
    assert_eq!((status, body["deleted"].as_i64()), (StatusCode::OK, Some(1)), "{body}");
    let (status, body) = json(get("/api/v1/kv/app/greeting").send().await.expect("get")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");

    // The watch replays history from a revision: put, put, put, delete of app/greeting.
    let events = read_sse(get(&format!("/api/v1/watch?key=app/greeting&from_revision={first}")), 4).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds, ["put", "put", "put", "delete"]);
    assert_eq!(events[0].id.as_deref(), Some(first.to_string().as_str()));
    assert_eq!(events[0].data["value"], "hello");
    assert_eq!(events[0].data["key"], "app/greeting");
    // Last-Event-ID resumes after the revision it names.
    let resumed =
        read_sse(get("/api/v1/watch?key=app/&prefix=true").header("Last-Event-ID", first.to_string()), 1)
            .await;
    assert_eq!(resumed[0].id.as_deref(), Some(binary["revision"].to_string().as_str()), "{:?}", resumed[0]);
    assert_eq!(resumed[0].data["key"], "app/blob");

    // A live watch sees a new write; an open stream does not hold up a graceful stop.
    let live = get("/api/v1/watch?key=live").send().await.expect("watch");
    assert_eq!(live.status(), StatusCode::OK);
    put("live", b"now").send().await.expect("put");
    let live_events = read_sse_from(live, 1).await;
    assert_eq!(live_events[0].data["value"], "now");
    let _open = get("/api/v1/watch?key=idle").send().await.expect("watch");
    server.terminate();
}

#[derive(Debug)]
struct SseEvent {
    event: String,
    id: Option<String>,
    data: Value,
}

async fn read_sse(request: reqwest::RequestBuilder, count: usize) -> Vec<SseEvent> {
    let response = request.send().await.expect("watch");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    read_sse_from(response, count).await
}

async fn read_sse_from(mut response: reqwest::Response, count: usize) -> Vec<SseEvent> {
    let mut text = String::new();
    let mut events = Vec::new();
    let read = async {
        while events.len() < count {
            let chunk = response.chunk().await.expect("stream").expect("the stream stays open");
            text.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = text.find("\n\n") {
                let block: String = text.drain(..end + 2).collect();
                let mut event = SseEvent { event: String::new(), id: None, data: Value::Null };
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ").or_else(|| line.strip_prefix("event:")) {
                        event.event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        event.id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        event.data = serde_json::from_str(v.trim()).expect("event data is JSON");
                    }
                }
                if !event.event.is_empty() {
                    events.push(event);
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.expect("events arrive");
    events
}

#[tokio::test]
async fn oversized_values_and_keys_get_413_naming_the_limit() {
    let (_dir, server, token) = start();
    let http = client();
    let big = vec![b'x'; 2_000_000];
    let response =
        http.put(server.url("/api/v1/kv/big")).bearer_auth(&token).body(big).send().await.expect("put");
    let (status, body) = json(response).await;
    assert_error(status, &body, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("1 MiB") && message.contains("--max-value-bytes"), "{message}");

    let long_key = "k".repeat(2000);
    let response = http
        .put(server.url(&format!("/api/v1/kv/{long_key}")))
        .bearer_auth(&token)
        .body("v")
        .send()
        .await
        .expect("put");
    let (status, body) = json(response).await;
    assert_error(status, &body, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    assert!(body["error"]["message"].as_str().unwrap().contains("--max-key-bytes"), "{body}");

    // Malformed input is a 400, never a 500.
    for (path, field) in [
        ("/api/v1/kv/a?revision=abc", "revision"),
        ("/api/v1/kv/a?lease=-x", "lease"),
        ("/api/v1/watch", "key"),
    ] {
        let request = if path.contains("lease") {
            http.put(server.url(path)).body("v")
        } else {
            http.get(server.url(path))
        };
        let (status, body) = json(request.bearer_auth(&token).send().await.expect("request")).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_argument");
        assert_eq!(body["error"]["field"], field, "{path}");
    }
    let response = http.post(server.url("/api/v1/leases")).bearer_auth(&token).body("{not json").send().await;
    let (status, body) = json(response.expect("grant")).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_argument");
    server.terminate();
}

#[tokio::test]
async fn user_leases_work_and_the_membership_lease_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path(), |c| {
        c.env("SWITCHBOARD_LOG", "info");
    });
    let token = server.printed_token().expect("token");
    let membership_lease: i64 =
        common::wait_for_line(&server.stderr.clone(), "the membership lease", |lines| {
            let line = lines.iter().find(|l| l.contains("node joined"))?;
            let log: Value = serde_json::from_str(line).ok()?;
            log["fields"]["lease"].as_i64()
        });
    let http = client();

    let lease = membership_lease.to_string();
    let (status, body) = json(
        http.delete(server.url(&format!("/api/v1/leases/{lease}"))).bearer_auth(&token).send().await.unwrap(),
    )
    .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "permission_denied");
    let keepalive = http.post(server.url(&format!("/api/v1/leases/{lease}/keepalive"))).bearer_auth(&token);
    let (status, body) = json(keepalive.send().await.unwrap()).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "permission_denied");
    let attach = http.put(server.url(&format!("/api/v1/kv/x?lease={lease}"))).bearer_auth(&token).body("v");
    let (status, body) = json(attach.send().await.unwrap()).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "permission_denied");

    // A user lease: grant (id as a decimal string), attach, keep alive, revoke.
    let grant = http.post(server.url("/api/v1/leases")).bearer_auth(&token).body(r#"{"ttl_secs":30}"#);
    let (status, granted) = json(grant.send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{granted}");
    let id = granted["id"].as_str().expect("the id is a string").to_owned();
    assert_eq!(granted["ttl_secs"], 30);
    let attach =
        http.put(server.url(&format!("/api/v1/kv/session?lease={id}"))).bearer_auth(&token).body("on");
    assert_eq!(attach.send().await.unwrap().status(), StatusCode::OK);
    let (_, kv) =
        json(http.get(server.url("/api/v1/kv/session")).bearer_auth(&token).send().await.unwrap()).await;
    assert_eq!(kv["lease"], id.as_str());
    let keepalive = http.post(server.url(&format!("/api/v1/leases/{id}/keepalive"))).bearer_auth(&token);
    let (status, body) = json(keepalive.send().await.unwrap()).await;
    assert_eq!((status, body["ttl_secs"].as_i64()), (StatusCode::OK, Some(30)));
    let revoke = http.delete(server.url(&format!("/api/v1/leases/{id}"))).bearer_auth(&token);
    assert_eq!(revoke.send().await.unwrap().status(), StatusCode::OK);
    let gone = http.get(server.url("/api/v1/kv/session")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND, "the revoke deleted the leased key");
    let (status, body) = json(
        http.delete(server.url(&format!("/api/v1/leases/{id}"))).bearer_auth(&token).send().await.unwrap(),
    )
    .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    server.terminate();
}

#[tokio::test]
async fn readyz_metrics_request_ids_openapi_and_log_level() {
    let (_dir, server, token) = start();
    let http = client();
    let (status, ready) = json(http.get(server.url("/readyz")).send().await.unwrap()).await;
    assert_eq!((status, ready["status"].as_str()), (StatusCode::OK, Some("ready")), "{ready}");

    let put = http
        .put(server.url("/api/v1/kv/customer-secret-name"))
        .bearer_auth(&token)
        .header("X-Request-Id", "req-42");
    let response = put.body("v").send().await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "req-42", "a client's request id is echoed");
    let response = http.get(server.url("/healthz")).send().await.unwrap();
    assert!(response.headers().contains_key("x-request-id"), "a request id is generated");

    let metrics = http.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(
            r#"switchboard_http_requests_total{route="/api/v1/kv/{*key}",method="PUT",status_class="2xx"} 1"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains("switchboard_http_request_duration_seconds_bucket"), "{metrics}");
    assert!(metrics.contains("switchboard_membership_nodes 1"), "{metrics}");
    assert!(metrics.contains("switchboard_kv_keys 1"), "{metrics}");
    assert!(!metrics.contains("customer-secret-name"), "labels carry no user data");
    assert!(metrics.contains("switchboard_store_group_commits_total"), "{metrics}");
    assert!(metrics.contains("switchboard_store_op_duration_seconds_bucket"), "{metrics}");

    let (status, doc) =
        json(http.get(server.url("/api/v1/openapi.json")).bearer_auth(&token).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["paths"]["/api/v1/kv/{key}"]["put"].is_object(), "{doc}");
    // The registry's and the config center's native routes are in the served document too.
    for (path, method) in [
        ("/api/v1/namespaces/{ns}/services", "get"),
        ("/api/v1/namespaces/{ns}/services/{service}/instances", "post"),
        ("/api/v1/namespaces/{ns}/services/{service}/instances/{instance}/health", "put"),
        ("/api/v1/namespaces/{ns}/services/{service}/watch", "get"),
        ("/api/v1/namespaces/{ns}/configs/{group}/{data_id}", "put"),
        ("/api/v1/namespaces/{ns}/configs/{group}/{data_id}/history", "get"),
    ] {
        assert!(doc["paths"][path][method].is_object(), "{method} {path} is not in the OpenAPI document");
    }

    let set =
        http.put(server.url("/api/v1/admin/log-level")).bearer_auth(&token).body(r#"{"level":"debug"}"#);
    let (status, body) = json(set.send().await.unwrap()).await;
    assert_eq!((status, body["level"].as_str()), (StatusCode::OK, Some("debug")), "{body}");
    let bad = http.put(server.url("/api/v1/admin/log-level")).bearer_auth(&token).body(r#"{"level":"[[["}"#);
    let (status, body) = json(bad.send().await.unwrap()).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_argument");
    server.terminate();
}

#[tokio::test]
async fn config_file_sets_limits_and_access_logs_redact_secrets() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("switchboard.toml");
    // The file says 16 bytes; a flag (--listen, set by the harness) still wins over it.
    std::fs::write(&config, "max-value-bytes = 16\nlisten = \"127.0.0.1:1\"\n").expect("write");
    let server = Server::start(dir.path(), |c| {
        c.arg("--config").arg(&config).env("SWITCHBOARD_LOG", "info");
    });
    assert!(!server.base.ends_with(":1"), "the --listen flag wins over the file: {}", server.base);
    let token = server.printed_token().expect("token");
    let http = client();
    let put = http.put(server.url("/api/v1/kv/k?accessToken=hunter2&password=swordfish")).bearer_auth(&token);
    let (status, body) = json(put.body(vec![b'v'; 17]).send().await.unwrap()).await;
    assert_error(status, &body, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    assert!(body["error"]["message"].as_str().unwrap().contains("limit is 16 bytes"), "{body}");
    let access_line = common::wait_for_line(&server.stderr.clone(), "the access log line", |lines| {
        lines.iter().find(|l| l.contains("/api/v1/kv/k")).cloned()
    });
    assert!(access_line.contains("accessToken=***") && access_line.contains("password=***"), "{access_line}");
    let logs = server.stderr.lock().unwrap().join("\n");
    assert!(!logs.contains("hunter2") && !logs.contains("swordfish") && !logs.contains(&token), "{logs}");
    server.terminate();
}

/// Two nodes start at once on one etcd: exactly one mints the admin token, and it works
/// on both.
#[tokio::test]
async fn two_etcd_nodes_bootstrap_one_admin_token() {
    let prefix = format!("/sbtest-api/{}-{}/", std::process::id(), rand_suffix());
    let store = format!("etcd://{}", common::etcd_endpoint());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let configure = |c: &mut std::process::Command| {
        c.args(["--store", &store, "--root-prefix", &prefix]);
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Server::start(dir_a.path(), configure));
        let b = s.spawn(|| Server::start(dir_b.path(), configure));
        (a.join().unwrap(), b.join().unwrap())
    });
    let tokens: Vec<String> = [a.printed_token(), b.printed_token()].into_iter().flatten().collect();
    assert_eq!(tokens.len(), 1, "exactly one node mints the token");
    let http = client();
    for server in [&a, &b] {
        let put = http.put(server.url("/api/v1/kv/shared")).bearer_auth(&tokens[0]).body("v");
        assert_eq!(put.send().await.unwrap().status(), StatusCode::OK);
    }
    let (_, ready) = json(http.get(a.url("/readyz")).send().await.unwrap()).await;
    assert_eq!(ready["store"], "etcd");
    a.terminate();
    b.terminate();
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}
