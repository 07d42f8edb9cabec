//! End-to-end tests of the config center's native API and CLI against the real binary:
//! validated publishes, If-Match, history, diff, rollback, retention and the SSE watch.
//! The Nacos config API is in `config_nacos.rs`.

mod common;

use std::time::Duration;

use common::Server;
use common::{client, json_of, start_with};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

struct Api<'a> {
    server: &'a Server,
    token: &'a str,
    http: Client,
}

impl Api<'_> {
    /// `ns/group/data_id[/…]` → `/api/v1/namespaces/ns/configs/group/data_id[/…]`;
    /// `ns` alone → the namespace's list.
    fn item(&self, path: &str) -> String {
        match path.split_once('/') {
            Some((ns, rest)) => self.server.url(&format!("/api/v1/namespaces/{ns}/configs/{rest}")),
            None => self.server.url(&format!("/api/v1/namespaces/{path}/configs")),
        }
    }

    async fn publish(&self, path: &str, body: Value, if_match: Option<&str>) -> (StatusCode, Value) {
        let mut request = self
            .http
            .put(self.item(path))
            .bearer_auth(self.token)
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(version) = if_match {
            request = request.header("If-Match", version);
        }
        json_of(request.send().await.expect("publish")).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        json_of(self.http.get(self.item(path)).bearer_auth(self.token).send().await.expect("get")).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        json_of(
            self.http
                .post(self.item(path))
                .bearer_auth(self.token)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .expect("post"),
        )
        .await
    }
}

fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, code: &str, needle: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "{needle:?} not in {body}");
}

#[tokio::test]
async fn config_publish_is_validated_versioned_and_guarded_by_if_match() {
    let (_dir, server, token) = start_with(&["--config-max-bytes", "2048"]);
    let api = Api { server: &server, token: &token, http: client() };
    let path = "dev/web/app.json";

    let (status, body) =
        api.publish(path, json!({"content": "{\"port\": 80}", "format": "json"}), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["created"], true);
    let v1 = body["version"].as_i64().expect("version");

    // Read-your-writes: the content, md5 and version are there at once.
    let (status, item) = api.get(path).await;
    assert_eq!(status, StatusCode::OK, "{item}");
    assert_eq!(item["content"], "{\"port\": 80}");
    assert_eq!(item["version"], v1);
    assert_eq!(item["format"], "json");
    assert_eq!(item["md5"], body["md5"]);
    // Who published it and when: the caller's name, and milliseconds since the epoch.
    assert_eq!(item["author"], "admin", "{item}");
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let created = item["created_at_ms"].as_u64().unwrap_or_default();
    assert!(created + 60_000 > now_ms && created <= now_ms, "{item}");
    assert_eq!(item["modified_at_ms"], item["created_at_ms"], "{item}");

    // Broken content: 400 with line and column, and nothing changes.
    let (status, body) =
        api.publish(path, json!({"content": "{\n  \"port\": 80,\n}", "format": "json"}), None).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_argument", "line 3 column 1");
    assert_eq!(body["error"]["field"], "content");
    let (status, body) = api.publish(path, json!({"content": "a = = 1", "format": "toml"}), None).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_argument", "line 1 column 5");
    let (status, body) = api.publish(path, json!({"content": "<a><b></a>", "format": "xml"}), None).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_argument", "line 1");
    let (status, body) = api.publish(path, json!({"content": "x", "format": "ini"}), None).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_argument", "unknown config format");
    let big = "x".repeat(3000);
    let (status, body) = api.publish(path, json!({"content": big, "format": "text"}), None).await;
    assert_error(status, &body, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "--config-max-bytes");
    let (status, body) = api.publish("dev/web/a%2Fb", json!({"content": "x"}), None).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_argument", "data_id");

    // If-Match: a stale version is a 409 and changes nothing; the right one (quoted) wins.
    let (status, body) =
        api.publish(path, json!({"content": "{\"port\": 81}", "format": "json"}), Some("1")).await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict", &format!("at version {v1}"));
    let quoted = format!("\"{v1}\"");
    let (status, body) =
        api.publish(path, json!({"content": "{\"port\": 81}", "format": "json"}), Some(&quoted)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v2 = body["version"].as_i64().expect("version");
    assert!(v2 > v1);
    // html: a tokenizer error (a duplicate attribute here) is refused with its line.
    let page = "qa/web/page.html";
    let (status, body) =
        api.publish(page, json!({"content": "<p>\n<a href=\"x\" href=\"y\">", "format": "html"}), None).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_argument", "line 2");
    let html = "<!DOCTYPE html><html><body><p class=\"x\">hi</p></body></html>";
    let (status, body) = api.publish(page, json!({"content": html, "format": "html"}), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(api.get(page).await.1["format"], "html");
    let (status, body) = api.publish("dev/web/new.txt", json!({"content": "x"}), Some("0")).await;
    assert_eq!(status, StatusCode::OK, "If-Match 0 creates: {body}");
    let (status, body) = api.publish("dev/web/new.txt", json!({"content": "y"}), Some("0")).await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict", "If-Match asked for 0");

    // Only the two good publishes are in the history.
    let (status, history) = api.get(&format!("{path}/history")).await;
    assert_eq!(status, StatusCode::OK, "{history}");
    assert_eq!(history["total"], 2, "{history}");
    assert_eq!(history["entries"][0]["version"], v2);
    assert_eq!(history["entries"][1]["version"], v1);

    // A JSON Schema applies to json, yaml and toml content.
    let schema = json!({"type": "object", "required": ["port"], "properties": {"port": {"type": "integer"}}});
    let (status, body) = api
        .publish(path, json!({"content": "{\"port\": \"80\"}", "format": "json", "schema": schema}), None)
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_argument", "/port");
    let (status, body) =
        api.publish(path, json!({"content": "port: 8080\n", "format": "yaml", "schema": schema}), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The schema stays with the item: toml content must match it too.
    let (status, body) =
        api.publish(path, json!({"content": "port = \"x\"\n", "format": "toml"}), None).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_argument", "/port");
    let (status, body) = api.publish(path, json!({"content": "port = 8081\n", "format": "toml"}), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = api.publish(path, json!({"content": "name: x\n", "format": "yaml"}), None).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_argument", "JSON Schema");
    let (status, body) =
        api.publish(path, json!({"content": "name: x\n", "format": "yaml", "schema": null}), None).await;
    assert_eq!(status, StatusCode::OK, "a null schema clears it: {body}");

    // Listing shows metadata without content; delete then get is a 404.
    let (status, list) = api.get("dev").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let items = list["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{list}");
    assert!(items.iter().all(|i| i.get("content").is_none()), "{list}");
    let response = api.http.delete(api.item(path)).bearer_auth(&token).send().await.expect("delete");
    assert_eq!(response.status(), StatusCode::OK);
    let (status, body) = api.get(path).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found", "not found");
    server.terminate();
}

#[tokio::test]
async fn config_history_diff_and_rollback() {
    let (_dir, server, token) = start_with(&[]);
    let api = Api { server: &server, token: &token, http: client() };
    let path = "public/DEFAULT_GROUP/app.yaml";
    let mut versions = Vec::new();
    for port in [80, 81, 82] {
        let content = format!("name: web\nport: {port}\n");
        let (status, body) = api.publish(path, json!({"content": content, "format": "yaml"}), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        versions.push(body["version"].as_i64().expect("version"));
    }

    let (status, page) = api.get(&format!("{path}/history?page=1&page_size=2")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["total"], 3);
    assert_eq!(page["entries"][0]["version"], versions[2]);
    assert_eq!(page["entries"][1]["version"], versions[1]);
    assert_eq!(page["entries"][1]["op"], "update");
    let (_, page2) = api.get(&format!("{path}/history?page=2&page_size=2")).await;
    assert_eq!(page2["entries"][0]["version"], versions[0]);
    assert_eq!(page2["entries"][0]["op"], "create");

    let (status, entry) = api.get(&format!("{path}/history/{}", versions[0])).await;
    assert_eq!(status, StatusCode::OK, "{entry}");
    assert_eq!(entry["content"], "name: web\nport: 80\n");

    let (status, diff) = api.get(&format!("{path}/diff?from={}&to={}", versions[0], versions[2])).await;
    assert_eq!(status, StatusCode::OK, "{diff}");
    let text = diff["diff"].as_str().expect("diff");
    assert!(
        text.contains("-port: 80\n") && text.contains("+port: 82\n") && text.contains(" name: web\n"),
        "{text}"
    );
    let (_, diff) = api.get(&format!("{path}/diff?from={}", versions[1])).await;
    assert_eq!(diff["to"], versions[2], "to defaults to the current version: {diff}");

    // Rollback: a new publish with the old content.
    let (status, body) = api.post(&format!("{path}/rollback"), json!({"version": versions[0]})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v4 = body["version"].as_i64().expect("version");
    assert!(v4 > versions[2]);
    let (_, item) = api.get(path).await;
    assert_eq!(item["content"], "name: web\nport: 80\n");
    assert_eq!(item["version"], v4);
    let (_, page) = api.get(&format!("{path}/history")).await;
    assert_eq!(page["total"], 4);
    assert_eq!(page["entries"][0]["op"], "rollback");
    assert_eq!(page["entries"][0]["rolled_back_from"], versions[0]);

    let (status, body) = api.post(&format!("{path}/rollback"), json!({"version": 999_999})).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found", "no version 999999");
    let (status, body) = api.get(&format!("{path}/diff?from=999999")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found", "999999");
    server.terminate();
}

#[tokio::test]
async fn config_history_keeps_the_last_100_by_default() {
    let (_dir, server, token) = start_with(&[]);
    let api = Api { server: &server, token: &token, http: client() };
    let path = "public/g/busy.txt";
    let mut versions = Vec::new();
    for i in 0..103 {
        let (status, body) = api.publish(path, json!({"content": format!("v{i}")}), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        versions.push(body["version"].as_i64().expect("version"));
    }
    let (_, page) = api.get(&format!("{path}/history?page_size=100")).await;
    assert_eq!(page["total"], 100, "{page}");
    assert_eq!(page["entries"][0]["version"], versions[102]);
    assert_eq!(page["entries"][99]["version"], versions[3], "the three oldest went");
    let (status, _) = api.get(&format!("{path}/history/{}", versions[2])).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.terminate();
}

#[tokio::test]
async fn config_history_retention_by_count_and_age() {
    let (_dir, server, token) =
        start_with(&["--config-history-keep", "3", "--config-history-max-age-secs", "2"]);
    let api = Api { server: &server, token: &token, http: client() };
    let path = "public/g/kept.txt";
    let mut last = 0;
    for i in 0..5 {
        let (status, body) = api.publish(path, json!({"content": format!("v{i}")}), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        last = body["version"].as_i64().expect("version");
    }
    let (_, page) = api.get(&format!("{path}/history")).await;
    assert_eq!(page["total"], 3, "keep the last 3: {page}");
    assert_eq!(page["entries"][0]["version"], last);

    // Past the maximum age, everything but the newest entry goes (here at the next publish;
    // the background sweep does it for quiet items).
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let (status, body) = api.publish(path, json!({"content": "fresh"}), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, page) = api.get(&format!("{path}/history")).await;
    assert_eq!(page["total"], 1, "{page}");
    assert_eq!(page["entries"][0]["version"], body["version"]);
    let (_, item) = api.get(path).await;
    assert_eq!(item["content"], "fresh");
    server.terminate();
}

#[tokio::test]
async fn config_watch_streams_publishes_and_deletes() {
    let (_dir, server, token) = start_with(&[]);
    let api = Api { server: &server, token: &token, http: client() };
    let path = "public/g/watched.properties";
    let (status, _) = api.publish(path, json!({"content": "a=1\n", "format": "properties"}), None).await;
    assert_eq!(status, StatusCode::OK);
    let mut response =
        api.http.get(api.item(&format!("{path}/watch"))).bearer_auth(&token).send().await.expect("watch");
    assert_eq!(response.status(), StatusCode::OK);
    let mut text = String::new();
    let mut next_event = async || -> (String, Value) {
        loop {
            if let Some(end) = text.find("\n\n") {
                let block: String = text.drain(..end + 2).collect();
                let name = block.lines().find_map(|l| l.strip_prefix("event:")).map(|n| n.trim().to_owned());
                let data = block.lines().find_map(|l| l.strip_prefix("data:")).map(|d| d.trim().to_owned());
                if let (Some(name), Some(data)) = (name, data) {
                    return (name, serde_json::from_str(&data).expect("JSON data"));
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
                .await
                .expect("an event within 10 s")
                .expect("stream")
                .expect("the stream stays open");
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    let (name, data) = next_event().await;
    assert_eq!(
        (name.as_str(), data["content"].as_str()),
        ("publish", Some("a=1\n")),
        "the current state first"
    );
    let (status, _) = api.publish(path, json!({"content": "a=2\n"}), None).await;
    assert_eq!(status, StatusCode::OK);
    let (name, data) = next_event().await;
    assert_eq!((name.as_str(), data["content"].as_str()), ("publish", Some("a=2\n")));
    assert_eq!(data["format"], "properties", "the format stays when a publish omits it");
    api.http.delete(api.item(path)).bearer_auth(&token).send().await.expect("delete");
    let (name, data) = next_event().await;
    assert_eq!(name, "delete");
    assert_eq!(data["data_id"], "watched.properties");
    server.terminate();
}

/// `switchboard config …` against `server`, with the token from `<data-dir>/admin-token`.
fn cli(server: &Server, data_dir: &std::path::Path) -> std::process::Command {
    let mut command = common::switchboard();
    command
        .env("SWITCHBOARD_ENDPOINT", &server.base)
        .env("SWITCHBOARD_DATA_DIR", data_dir)
        .env_remove("SWITCHBOARD_TOKEN")
        .arg("config");
    command
}

fn cli_ok(command: &mut std::process::Command, stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.unwrap_or("").as_bytes()).expect("write stdin");
    drop(input);
    let output = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{command:?} failed\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn config_cli_publish_get_history_diff_rollback_watch() {
    use std::io::BufRead;
    let (dir, server, _token) = start_with(&[]);
    let data = dir.path();
    let file = data.join("app.yml");
    std::fs::write(&file, "port: 80\n").expect("write");
    let out = cli_ok(cli(&server, data).args(["--ns", "dev", "publish", "app.yml"]).arg(&file), None);
    assert!(out.starts_with("published app.yml version "), "{out}");
    let v1: i64 = out.split_whitespace().nth(3).and_then(|v| v.parse().ok()).expect("version");

    // Broken YAML from a .yml file: refused, with the line and column.
    std::fs::write(&file, "port: [80\n").expect("write");
    let output =
        cli(&server, data).args(["--ns", "dev", "publish", "app.yml"]).arg(&file).output().expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not valid yaml at line 2"), "{stderr}");

    // From stdin, with the format given.
    let mut watch = cli(&server, data)
        .args(["--ns", "dev", "watch", "app.yml"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("watch runs");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let stdout = watch.stdout.take().expect("piped");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let next = || lines_rx.recv_timeout(Duration::from_secs(10)).expect("a watch line within 10 s");
    assert!(next().starts_with(&format!("PUBLISH version {v1} ")), "the current version first");
    let out = cli_ok(
        cli(&server, data).args(["--ns", "dev", "publish", "app.yml", "-", "--format", "yaml"]),
        Some("port: 81\n"),
    );
    let v2: i64 = out.split_whitespace().nth(3).and_then(|v| v.parse().ok()).expect("version");
    assert!(next().starts_with(&format!("PUBLISH version {v2} ")));

    assert_eq!(cli_ok(cli(&server, data).args(["--ns", "dev", "get", "app.yml"]), None), "port: 81\n");
    let history = cli_ok(cli(&server, data).args(["--ns", "dev", "history", "app.yml"]), None);
    assert!(history.contains("2 version(s) in all"), "{history}");
    let diff = cli_ok(cli(&server, data).args(["--ns", "dev", "diff", "app.yml", &v1.to_string()]), None);
    assert!(diff.contains("-port: 80\n+port: 81\n"), "{diff}");
    let out = cli_ok(cli(&server, data).args(["--ns", "dev", "rollback", "app.yml", &v1.to_string()]), None);
    assert!(out.contains(&format!("back to version {v1}")), "{out}");
    assert!(next().starts_with("PUBLISH version "), "the rollback is a publish");
    assert_eq!(cli_ok(cli(&server, data).args(["--ns", "dev", "get", "app.yml"]), None), "port: 80\n");
    let old = cli_ok(
        cli(&server, data).args(["--ns", "dev", "history", "app.yml", "--version", &v2.to_string()]),
        None,
    );
    assert_eq!(old, "port: 81\n");
    cli_ok(cli(&server, data).args(["--ns", "dev", "delete", "app.yml"]), None);
    assert_eq!(next(), "DELETE");
    let _ = watch.kill();
    let _ = watch.wait();
    server.terminate();
}
