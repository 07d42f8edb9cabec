//! End-to-end tests of rate limiting through the real binary: rule CRUD, checks, permits
//! and bad input over HTTP; the CLI; and two nodes on one etcd sharing one Redis limit,
//! then splitting it by the membership view when their Redis is killed.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::client;
use common::Server;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

struct Api {
    http: Client,
    base: String,
    token: String,
}

impl Api {
    fn new(server: &Server, token: &str) -> Api {
        Api { http: client(), base: server.base.clone(), token: token.to_owned() }
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status();
        let text = response.text().await.expect("body");
        let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        (status, value)
    }

    async fn put_rule(&self, name: &str, namespace: &str, rule: Value) -> Value {
        let path = format!("/api/v1/ratelimit/rules/{name}?namespace={namespace}");
        let (status, body) = self.send(reqwest::Method::PUT, &path, Some(rule)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    async fn check(&self, rule: &str, descriptors: Value) -> Value {
        let body = json!({ "rule": rule, "descriptors": descriptors, "hits": 1 });
        let (status, answer) = self.send(reqwest::Method::POST, "/api/v1/ratelimit/check", Some(body)).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        answer
    }
}

fn start(dir: &Path, configure: impl FnOnce(&mut Command)) -> (Server, String) {
    let server = Server::start(dir, configure);
    let token = server.printed_token().expect("a first start prints the admin token");
    (server, token)
}

#[tokio::test]
async fn ratelimit_rules_checks_and_permits_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let (server, token) = start(dir.path(), |_| {});
    let api = Api::new(&server, &token);
    use reqwest::Method as M;

    // A rule that never refills during the test: exactly its burst is allowed.
    let rule =
        json!({"algorithm":"gcra","rate":1,"period_ms":3_600_000,"burst":3,"descriptors":[{"key":"user"}]});
    let stored = api.put_rule("per-user", "public", rule).await;
    assert_eq!(stored["tier"], "local");
    assert_eq!(stored["failure_policy"], "local");
    assert!(stored["revision"].as_i64().unwrap() > 0);
    let (status, got) = api.send(M::GET, "/api/v1/ratelimit/rules/per-user", None).await;
    assert_eq!((status, &got["burst"]), (StatusCode::OK, &json!(3)));

    // Namespaces: a rule is visible only in its own.
    let (status, list) = api.send(M::GET, "/api/v1/ratelimit/rules?namespace=dev", None).await;
    assert_eq!((status, list["rules"].as_array().unwrap().len()), (StatusCode::OK, 0));
    let (status, _) = api.send(M::GET, "/api/v1/ratelimit/rules/per-user?namespace=dev", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = api.send(M::GET, "/api/v1/ratelimit/rules", None).await;
    assert_eq!(list["rules"][0]["name"], "per-user");

    let u1 = json!({"user":"u1","route":"/ignored"});
    for remaining in [2, 1, 0] {
        let answer = api.check("per-user", u1.clone()).await;
        assert_eq!(
            (answer["allowed"].clone(), answer["remaining"].clone()),
            (json!(true), json!(remaining)),
            "{answer}"
        );
        assert_eq!(answer["served_by"], "local");
    }
    let denied = api.check("per-user", u1.clone()).await;
    assert_eq!(denied["allowed"], false);
    assert!(denied["retry_after_ms"].as_u64().unwrap() > 0, "{denied}");
    assert!(denied["reset_after_ms"].as_u64().unwrap() > 0, "{denied}");
    assert_eq!(
        api.check("per-user", json!({"user":"u2"})).await["allowed"],
        true,
        "another user, another counter"
    );

    // A descriptor with a value: the rule applies to that value only.
    let rule = json!({"algorithm":"fixed_window","limit":1,"window_ms":3_600_000,"descriptors":[{"key":"route","value":"/x"}]});
    api.put_rule("route-x", "public", rule).await;
    assert_eq!(api.check("route-x", json!({"route":"/x"})).await["allowed"], true);
    assert_eq!(api.check("route-x", json!({"route":"/x"})).await["allowed"], false);
    let other = api.check("route-x", json!({"route":"/y"})).await;
    assert_eq!((other["allowed"].clone(), other["served_by"].clone()), (json!(true), json!("not_matched")));

    // Permits, in their own namespace.
    let rule = json!({"algorithm":"concurrency","max_permits":1,"permit_ttl_ms":60_000});
    api.put_rule("one-at-a-time", "dev", rule).await;
    let acquire = json!({"rule":"one-at-a-time"});
    let (status, first) =
        api.send(M::POST, "/api/v1/ratelimit/permits/acquire?namespace=dev", Some(acquire.clone())).await;
    assert_eq!((status, &first["allowed"]), (StatusCode::OK, &json!(true)), "{first}");
    let permit = first["permit_id"].as_str().unwrap().to_owned();
    let (_, second) =
        api.send(M::POST, "/api/v1/ratelimit/permits/acquire?namespace=dev", Some(acquire.clone())).await;
    assert_eq!(second["allowed"], false, "{second}");
    assert!(second.get("permit_id").is_none());
    let release = json!({"rule":"one-at-a-time","permit_id":permit});
    let (status, released) =
        api.send(M::POST, "/api/v1/ratelimit/permits/release?namespace=dev", Some(release.clone())).await;
    assert_eq!((status, &released["released"]), (StatusCode::OK, &json!(true)), "{released}");
    let (status, again) =
        api.send(M::POST, "/api/v1/ratelimit/permits/release?namespace=dev", Some(release)).await;
    assert_eq!((status, &again["error"]["code"]), (StatusCode::NOT_FOUND, &json!("not_found")), "{again}");
    let (_, third) =
        api.send(M::POST, "/api/v1/ratelimit/permits/acquire?namespace=dev", Some(acquire)).await;
    assert_eq!(third["allowed"], true, "the released permit is free again");

    // Bad input: a clear 4xx with a stable code and the field, never a 500.
    let bad: Vec<(M, &str, Value, StatusCode, &str)> = vec![
        (
            M::PUT,
            "/api/v1/ratelimit/rules/r",
            json!({"algorithm":"gcra","rate":0}),
            StatusCode::BAD_REQUEST,
            "rate",
        ),
        (
            M::PUT,
            "/api/v1/ratelimit/rules/r",
            json!({"algorithm":"gcra","rate":-1}),
            StatusCode::BAD_REQUEST,
            "rate",
        ),
        (
            M::PUT,
            "/api/v1/ratelimit/rules/r",
            json!({"algorithm":"sliding_window","limit":5,"window_ms":-10}),
            StatusCode::BAD_REQUEST,
            "window_ms",
        ),
        (
            M::PUT,
            "/api/v1/ratelimit/rules/r",
            json!({"algorithm":"token_bucket","rate":5}),
            StatusCode::BAD_REQUEST,
            "algorithm",
        ),
        (
            M::PUT,
            "/api/v1/ratelimit/rules/r",
            json!({"algorithm":"gcra","rate":5,"colour":"red"}),
            StatusCode::BAD_REQUEST,
            "body",
        ),
        (
            M::PUT,
            "/api/v1/ratelimit/rules/bad%20name",
            json!({"algorithm":"gcra","rate":5}),
            StatusCode::BAD_REQUEST,
            "name",
        ),
        (
            M::PUT,
            "/api/v1/ratelimit/rules/r?namespace=a/b",
            json!({"algorithm":"gcra","rate":5}),
            StatusCode::BAD_REQUEST,
            "namespace",
        ),
        (
            M::POST,
            "/api/v1/ratelimit/check",
            json!({"rule":"per-user","descriptors":{}}),
            StatusCode::BAD_REQUEST,
            "descriptors",
        ),
        (
            M::POST,
            "/api/v1/ratelimit/check",
            json!({"rule":"per-user","descriptors":{"user":"u9"},"hits":0}),
            StatusCode::BAD_REQUEST,
            "hits",
        ),
        (
            M::POST,
            "/api/v1/ratelimit/check",
            json!({"rule":"per-user","descriptors":{"user":"u9"},"hits":-3}),
            StatusCode::BAD_REQUEST,
            "hits",
        ),
        (
            M::POST,
            "/api/v1/ratelimit/check",
            json!({"rule":"per-user","descriptors":{"user":"u9"},"hits":1_000_000_000_000_i64}),
            StatusCode::BAD_REQUEST,
            "hits",
        ),
        (
            M::POST,
            "/api/v1/ratelimit/check",
            json!({"rule":"per-user","descriptors":{"user":"u9"},"hits":1e30}),
            StatusCode::BAD_REQUEST,
            "body",
        ),
        (
            M::POST,
            "/api/v1/ratelimit/check",
            json!({"rule":"nope","descriptors":{}}),
            StatusCode::NOT_FOUND,
            "rule",
        ),
        (
            M::POST,
            "/api/v1/ratelimit/check?namespace=dev",
            json!({"rule":"one-at-a-time"}),
            StatusCode::BAD_REQUEST,
            "rule",
        ),
        (
            M::POST,
            "/api/v1/ratelimit/permits/acquire",
            json!({"rule":"per-user","descriptors":{"user":"u1"}}),
            StatusCode::BAD_REQUEST,
            "rule",
        ),
        (
            M::POST,
            "/api/v1/ratelimit/permits/release?namespace=dev",
            json!({"rule":"one-at-a-time","permit_id":"bogus"}),
            StatusCode::BAD_REQUEST,
            "permit_id",
        ),
        (
            M::POST,
            "/api/v1/ratelimit/permits/release?namespace=dev",
            json!({"rule":"one-at-a-time","permit_id":format!("l{}", "0".repeat(32))}),
            StatusCode::NOT_FOUND,
            "permit_id",
        ),
    ];
    for (method, path, body, expected, field) in bad {
        let (status, answer) = api.send(method.clone(), path, Some(body.clone())).await;
        assert_eq!(status, expected, "{method} {path} {body}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{method} {path} {body}: {answer}");
        assert!(!answer["error"]["message"].as_str().unwrap().is_empty());
    }
    let raw = api
        .http
        .post(server.url("/api/v1/ratelimit/check"))
        .bearer_auth(&token)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::BAD_REQUEST);
    let anonymous = api.http.post(server.url("/api/v1/ratelimit/check")).body("{}").send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    let (status, _) = api.send(M::DELETE, "/api/v1/ratelimit/rules/per-user", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api.send(M::DELETE, "/api/v1/ratelimit/rules/per-user", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) =
        api.send(M::POST, "/api/v1/ratelimit/check", Some(json!({"rule":"per-user","descriptors":u1}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a deleted rule is gone");

    let metrics = api.http.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    // Denied: the fourth u1 check, the second /x check and the second permit.
    assert!(
        metrics.contains(r#"switchboard_ratelimit_decisions_total{served_by="local",allowed="false"} 3"#),
        "{metrics}"
    );
    server.terminate();
}

fn cli(server: &Server, data_dir: &Path, args: &[&str]) -> String {
    let output = common::switchboard()
        .env("SWITCHBOARD_ENDPOINT", &server.base)
        .env("SWITCHBOARD_DATA_DIR", data_dir)
        .env_remove("SWITCHBOARD_TOKEN")
        .arg("ratelimit")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "ratelimit {args:?} failed\nstdout: {stdout}\nstderr: {stderr}");
    stdout
}

#[tokio::test]
async fn ratelimit_cli_manages_rules_checks_and_permits() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _token) = start(dir.path(), |_| {});
    let d = dir.path();
    let put = cli(
        &server,
        d,
        &[
            "rule",
            "put",
            "api",
            "--algorithm",
            "gcra",
            "--rate",
            "1",
            "--period-ms",
            "3600000",
            "--burst",
            "2",
            "-d",
            "user",
            "-n",
            "dev",
        ],
    );
    assert!(put.contains("api") && put.contains("gcra") && put.contains("burst=2"), "{put}");
    let list = cli(&server, d, &["rule", "ls", "-n", "dev"]);
    assert!(list.lines().count() == 2 && list.contains("user"), "{list}");
    let check = |user: &str| {
        cli(&server, d, &["check", "api", "-d", &format!("user={user}"), "-n", "dev", "-o", "json"])
    };
    let answers: Vec<Value> = (0..3).map(|_| serde_json::from_str(&check("u1")).unwrap()).collect();
    assert_eq!(
        answers.iter().map(|a| a["allowed"].as_bool().unwrap()).collect::<Vec<_>>(),
        [true, true, false]
    );
    let table = cli(&server, d, &["check", "api", "-d", "user=u2", "-n", "dev"]);
    assert!(table.starts_with("ALLOWED") && table.contains("true"), "{table}");

    cli(&server, d, &["rule", "put", "jobs", "--algorithm", "concurrency", "--max-permits", "1"]);
    let acquired: Value = serde_json::from_str(&cli(&server, d, &["acquire", "jobs", "-o", "json"])).unwrap();
    let permit = acquired["permit_id"].as_str().expect("a permit id");
    let released = cli(&server, d, &["release", "jobs", permit]);
    assert!(released.contains("released permit"), "{released}");

    // Errors come back as the server's message, and a non-zero exit.
    let output = common::switchboard()
        .env("SWITCHBOARD_ENDPOINT", &server.base)
        .env("SWITCHBOARD_DATA_DIR", d)
        .args(["ratelimit", "rule", "put", "bad", "--algorithm", "gcra", "--rate", "0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("rate is 0") && stderr.contains("400"), "{stderr}");

    let deleted = cli(&server, d, &["rule", "del", "api", "-n", "dev"]);
    assert!(deleted.contains("deleted rule api"), "{deleted}");
    server.terminate();
}

/// A redis-server of the test's own (never the shared one: this test kills it).
struct OwnRedis {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl OwnRedis {
    fn start() -> OwnRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut redis = OwnRedis { port, child: None, dir: tempfile::tempdir().unwrap() };
        redis.restart();
        redis
    }

    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is in PATH (scripts/test installs it)");
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Two nodes on one etcd and one Redis enforce one limit together; when that Redis is
/// killed, each node enforces its share (limit ÷ the membership view's two live nodes),
/// no request fails, and the global limit returns when Redis does.
#[tokio::test]
async fn ratelimit_two_etcd_nodes_share_one_redis_limit_and_split_it_without_redis() {
    let mut redis = OwnRedis::start();
    let redis_url = format!("redis://127.0.0.1:{}", redis.port);
    let prefix = format!("/t-ratelimit-etcd-{}-{}/", std::process::id(), rand::random::<u64>());
    let store = format!("etcd://{}", common::etcd_endpoint());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let configure = |c: &mut Command| {
        c.args(["--store", &store, "--root-prefix", &prefix, "--redis", &redis_url]);
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Server::start(dir_a.path(), configure));
        let b = s.spawn(|| Server::start(dir_b.path(), configure));
        (a.join().unwrap(), b.join().unwrap())
    });
    let token = [a.printed_token(), b.printed_token()]
        .into_iter()
        .flatten()
        .next()
        .expect("one node minted the token");
    let (api_a, api_b) = (Api::new(&a, &token), Api::new(&b, &token));
    // No refill during the test: the burst is the whole allowance.
    let rule = json!({"algorithm":"gcra","rate":1,"period_ms":3_600_000,"burst":10,"tier":"redis","descriptors":[{"key":"tenant"}]});
    api_a.put_rule("global", "public", rule).await;
    // Node b reads rules through its view: wait until it has it.
    for _ in 0..100 {
        let (status, _) = api_b.send(reqwest::Method::GET, "/api/v1/ratelimit/rules/global", None).await;
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut allowed = 0;
    for i in 0..30 {
        let api = if i % 2 == 0 { &api_a } else { &api_b };
        let answer = api.check("global", json!({"tenant":"t1"})).await;
        assert_eq!(answer["served_by"], "redis", "{answer}");
        allowed += answer["allowed"].as_bool().unwrap() as u32;
    }
    assert_eq!(allowed, 10, "one limit across both nodes");

    redis.kill();
    // Each node now enforces half of the burst for a key it has not seen locally.
    for api in [&api_a, &api_b] {
        let answers: Vec<Value> = checks_in_sequence(api, "global", json!({"tenant":"t2"}), 12).await;
        let fallback: Vec<&Value> = answers.iter().filter(|a| a["served_by"] == "fallback_local").collect();
        assert!(!fallback.is_empty(), "the rule switched to its failure policy: {answers:?}");
        let allowed_locally = fallback.iter().filter(|a| a["allowed"] == true).count();
        assert_eq!(allowed_locally, 5, "each node allows its share: 10 ÷ 2 live nodes");
    }

    redis.restart();
    let mut back = false;
    for _ in 0..200 {
        if api_a.check("global", json!({"tenant":"t3"})).await["served_by"] == "redis" {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back, "the Redis tier came back by itself");
    // One log line for the switch, however many requests hit the dead Redis.
    let down_lines = a
        .stderr
        .lock()
        .unwrap()
        .iter()
        .filter(|line| line.contains("global rate-limit tier is down"))
        .count();
    assert_eq!(down_lines, 1, "one log line when the tier goes down: {:#?}", a.stderr.lock().unwrap());
    let metrics = api_a.http.get(a.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("switchboard_ratelimit_global_tier_failovers_total 1"), "{metrics}");
    assert!(metrics.contains("switchboard_ratelimit_global_tier_up 1"), "{metrics}");
    a.terminate();
    b.terminate();
}

/// `count` checks one after another (every one must answer 200: no request errors).
async fn checks_in_sequence(api: &Api, rule: &str, descriptors: Value, count: usize) -> Vec<Value> {
    let mut answers = Vec::with_capacity(count);
    for _ in 0..count {
        answers.push(api.check(rule, descriptors.clone()).await);
    }
    answers
}
