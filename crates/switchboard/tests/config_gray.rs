//! End-to-end tests of gray release against the real binary, on the embedded store and on
//! etcd: a gray version reaches only matching clients (by IP through the Nacos API's
//! `betaIps`, by label through the native API), listeners of matching clients are woken
//! and others are not, promote and abort both work, and bad selectors are refused.
//! Client IPs come from `X-Forwarded-For`, which the server trusts from 127.0.0.1 only
//! because the tests pass `--trusted-proxies 127.0.0.1`.

mod common;

use std::time::Duration;

use common::Server;
use common::{client, json_of};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

const ITEM: &str = "/api/v1/namespaces/dev/configs/G/app.yaml";
const MATCHING_IP: &str = "10.0.0.1";
const OTHER_IP: &str = "10.0.0.2";

struct Env {
    _dir: tempfile::TempDir,
    server: Server,
    token: String,
    http: Client,
}

impl Env {
    fn start(args: &[&str]) -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        let server = Server::start(dir.path(), |cmd| {
            cmd.args(["--trusted-proxies", "127.0.0.1"]).args(args);
        });
        let token =
            std::fs::read_to_string(dir.path().join("admin-token")).expect("admin token").trim().to_owned();
        Env { _dir: dir, server, token, http: client() }
    }

    fn native(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.server.url(path)).bearer_auth(&self.token)
    }

    fn nacos(&self, path: &str) -> String {
        let sep = if path.contains('?') { '&' } else { '?' };
        self.server.url(&format!("{path}{sep}accessToken={}", self.token))
    }

    /// What a client at `ip` reads through the Nacos API: content and whether it is a beta.
    async fn nacos_get(&self, ip: &str) -> (String, bool) {
        let response = self
            .http
            .get(self.nacos("/nacos/v1/cs/configs?dataId=app.yaml&group=G&tenant=dev"))
            .header("X-Forwarded-For", ip)
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), StatusCode::OK);
        let beta = response.headers().get("isBeta").is_some();
        (response.text().await.unwrap(), beta)
    }

    /// What a client with `labels` reads through the native API.
    async fn native_get(&self, labels: Option<&str>) -> Value {
        let mut request = self.native(reqwest::Method::GET, ITEM);
        if let Some(labels) = labels {
            request = request.header("X-Switchboard-Labels", labels);
        }
        let (status, value) = json_of(request.send().await.expect("get")).await;
        assert_eq!(status, StatusCode::OK, "{value}");
        value
    }

    /// A Nacos long-poll from `ip` holding `md5`, at most `hold_ms` (+ the 500 ms margin).
    fn listen(&self, ip: &str, md5: &str, hold_ms: u64) -> tokio::task::JoinHandle<(String, Duration)> {
        let request = self
            .http
            .post(self.nacos("/nacos/v1/cs/configs/listener"))
            .header("X-Forwarded-For", ip)
            .header("Long-Pulling-Timeout", (hold_ms + 500).to_string())
            .form(&[("Listening-Configs", format!("app.yaml\u{2}G\u{2}{md5}\u{2}dev\u{1}"))]);
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let response = request.send().await.expect("listen");
            assert_eq!(response.status(), StatusCode::OK);
            (response.text().await.unwrap(), start.elapsed())
        })
    }
}

fn to_body(value: &Value) -> String {
    value.to_string()
}

const CHANGED: &str = "app.yaml%02G%02dev%01";

/// A matching listener is answered at once, the other one holds until its timeout.
async fn assert_only_matching_woken(
    matching: tokio::task::JoinHandle<(String, Duration)>,
    other: tokio::task::JoinHandle<(String, Duration)>,
    what: &str,
) {
    let (body, elapsed) = matching.await.unwrap();
    assert_eq!(body, CHANGED, "{what}: the matching listener hears the change");
    assert!(elapsed < Duration::from_millis(1500), "{what}: the matching listener waited {elapsed:?}");
    let (body, elapsed) = other.await.unwrap();
    assert_eq!(body, "", "{what}: the other listener is not woken");
    assert!(elapsed >= Duration::from_millis(1500), "{what}: the other listener answered after {elapsed:?}");
}

async fn gray_release(env: &Env) {
    use reqwest::Method;
    let main = "v: main\n";
    let (status, value) = json_of(
        env.native(Method::PUT, ITEM)
            .header("content-type", "application/json")
            .body(to_body(&json!({"content": main, "format": "yaml"})))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{value}");
    let main_version = value["version"].as_i64().unwrap();
    let main_md5 = value["md5"].as_str().unwrap().to_owned();

    // Bad input: malformed IPs and labels are 400s; promote or abort with no gray, 409.
    for body in [
        json!({"content": "v: g\n", "ips": ["10.0.0.300"]}),
        json!({"content": "v: g\n", "labels": "env"}),
        json!({"content": "v: g\n", "labels": {"env": "can ary"}}),
        json!({"content": "v: g\n"}),
    ] {
        let gray = env
            .native(Method::PUT, &format!("{ITEM}/gray"))
            .header("content-type", "application/json")
            .body(to_body(&body))
            .send()
            .await
            .unwrap();
        let (status, value) = json_of(gray).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {value}");
        assert_eq!(value["error"]["field"], "selector", "{value}");
    }
    let gray = env
        .native(Method::PUT, &format!("{ITEM}/gray"))
        .header("content-type", "application/json")
        .body(to_body(&json!({"content": "v: [", "ips": [MATCHING_IP]})));
    assert_eq!(gray.send().await.unwrap().status(), StatusCode::BAD_REQUEST, "gray content is validated");
    let (status, value) =
        json_of(env.native(Method::POST, &format!("{ITEM}/promote")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{value}");
    assert!(value["error"]["message"].as_str().unwrap().contains("no gray version"), "{value}");
    let abort = env.native(Method::DELETE, &format!("{ITEM}/gray")).send().await.unwrap();
    assert_eq!(abort.status(), StatusCode::CONFLICT);
    let bad_labels =
        env.native(Method::GET, ITEM).header("X-Switchboard-Labels", "env").send().await.unwrap();
    assert_eq!(bad_labels.status(), StatusCode::BAD_REQUEST);

    // Nacos beta by IP: listeners of the matching IP are woken, others not.
    let matching = env.listen(MATCHING_IP, &main_md5, 2000);
    let other = env.listen(OTHER_IP, &main_md5, 2000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let beta = "v: beta\n";
    let response = env
        .http
        .post(env.nacos("/nacos/v1/cs/configs"))
        .header("betaIps", format!("{MATCHING_IP},10.9.9.9"))
        .form(&[("dataId", "app.yaml"), ("group", "G"), ("tenant", "dev"), ("content", beta)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "true");
    assert_only_matching_woken(matching, other, "beta publish").await;
    assert_eq!(env.nacos_get(MATCHING_IP).await, (beta.to_owned(), true));
    assert_eq!(env.nacos_get(OTHER_IP).await, (main.to_owned(), false));
    let bad = env
        .http
        .post(env.nacos("/nacos/v1/cs/configs"))
        .header("betaIps", "not-an-ip")
        .form(&[("dataId", "app.yaml"), ("group", "G"), ("tenant", "dev"), ("content", beta)])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let query = env.http.get(env.nacos("/nacos/v1/cs/configs?dataId=app.yaml&group=G&tenant=dev&beta=true"));
    let (_, value) = json_of(query.send().await.unwrap()).await;
    assert_eq!(value["data"]["content"], beta, "{value}");
    assert_eq!(value["data"]["betaIps"], format!("{MATCHING_IP},10.9.9.9"), "{value}");
    // The main version is untouched; labels do not select an IP gray.
    assert_eq!(env.native_get(Some("env=canary")).await["version"], main_version);

    // The gray is in history and diff, as a pointer to its entry.
    let (_, gray) = json_of(env.native(Method::GET, &format!("{ITEM}/gray")).send().await.unwrap()).await;
    let gray_version = gray["version"].as_i64().unwrap();
    assert_eq!(gray["content"], beta);
    let (_, history) =
        json_of(env.native(Method::GET, &format!("{ITEM}/history")).send().await.unwrap()).await;
    assert_eq!(history["entries"][0]["op"], "gray", "{history}");
    assert_eq!(history["entries"][0]["version"], gray_version, "{history}");
    let diff = env.native(Method::GET, &format!("{ITEM}/diff?from={main_version}&to={gray_version}"));
    let (_, diff) = json_of(diff.send().await.unwrap()).await;
    assert!(diff["diff"].as_str().unwrap().contains("+v: beta"), "{diff}");

    // Nacos stopBeta: everyone reads main again; the matching listener hears it.
    let matching = env.listen(MATCHING_IP, gray["md5"].as_str().unwrap(), 2000);
    let other = env.listen(OTHER_IP, &main_md5, 2000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stop =
        env.http.delete(env.nacos("/nacos/v1/cs/configs?dataId=app.yaml&group=G&tenant=dev&beta=true"));
    let (status, value) = json_of(stop.send().await.unwrap()).await;
    assert_eq!((status, &value["data"]), (StatusCode::OK, &Value::Bool(true)), "{value}");
    assert_only_matching_woken(matching, other, "beta stop").await;
    assert_eq!(env.nacos_get(MATCHING_IP).await, (main.to_owned(), false));

    // Native gray by label; the label holder reads it, others read main.
    let canary = "v: canary\n";
    let gray = env
        .native(Method::PUT, &format!("{ITEM}/gray"))
        .header("content-type", "application/json")
        .body(to_body(&json!({"content": canary, "labels": {"env": "canary"}})))
        .send()
        .await
        .unwrap();
    let (status, value) = json_of(gray).await;
    assert_eq!(status, StatusCode::OK, "{value}");
    let read = env.native_get(Some("env=canary, zone=a")).await;
    assert_eq!((read["content"].as_str(), read["gray"].as_bool()), (Some(canary), Some(true)), "{read}");
    assert_eq!(env.native_get(Some("env=prod")).await["content"], main);
    assert_eq!(env.native_get(None).await["content"], main);
    // Promote: a new publish of the gray content, for everyone.
    let (status, promoted) =
        json_of(env.native(Method::POST, &format!("{ITEM}/promote")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{promoted}");
    let read = env.native_get(None).await;
    assert_eq!((read["content"].as_str(), &read["version"]), (Some(canary), &promoted["version"]), "{read}");
    assert!(read.get("gray").is_none(), "{read}");
    let (_, history) =
        json_of(env.native(Method::GET, &format!("{ITEM}/history")).send().await.unwrap()).await;
    assert_eq!(history["entries"][0]["op"], "promote", "{history}");
    let missing = env.native(Method::GET, &format!("{ITEM}/gray")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

/// `switchboard config gray|promote|abort` against `env`.
fn cli(env: &Env, args: &[&str], stdin: &str) -> String {
    use std::io::Write;
    let mut child = common::switchboard()
        .env("SWITCHBOARD_ENDPOINT", &env.server.base)
        .env("SWITCHBOARD_TOKEN", &env.token)
        .args(["config", "--ns", "dev", "--group", "G"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary runs");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    let output = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{args:?} failed\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn gray_cli(env: &Env) {
    let out = cli(env, &["gray", "app.yaml", "-", "--labels", "env=canary", "--ips", OTHER_IP], "v: cli\n");
    assert!(out.starts_with("published gray app.yaml version"), "{out}");
    assert_eq!(cli(env, &["get", "app.yaml", "--labels", "env=canary"], ""), "v: cli\n");
    assert_eq!(cli(env, &["get", "app.yaml"], ""), "v: canary\n");
    assert!(cli(env, &["gray", "app.yaml"], "").ends_with("v: cli\n"));
    assert!(cli(env, &["abort", "app.yaml"], "").starts_with("aborted the gray release of app.yaml"));
    assert_eq!(cli(env, &["get", "app.yaml", "--labels", "env=canary"], ""), "v: canary\n");
    cli(env, &["gray", "app.yaml", "-", "--labels", "env=canary"], "v: next\n");
    assert!(cli(env, &["promote", "app.yaml"], "").starts_with("promoted the gray app.yaml"));
    assert_eq!(cli(env, &["get", "app.yaml"], ""), "v: next\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_gray_release_embedded() {
    let env = Env::start(&[]);
    gray_release(&env).await;
    tokio::task::block_in_place(|| gray_cli(&env));
    env.server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_gray_release_on_etcd() {
    let store = format!("etcd://{}", common::etcd_endpoint());
    let prefix = format!("/t-config-gray-{}/", rand::random::<u32>());
    let env = Env::start(&["--store", &store, "--root-prefix", &prefix]);
    gray_release(&env).await;
    tokio::task::block_in_place(|| gray_cli(&env));
    env.server.terminate();
}
