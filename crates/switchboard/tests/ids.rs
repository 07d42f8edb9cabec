//! Unique IDs through the real binary on the embedded store: Snowflake and segments over
//! HTTP and the CLI, bad input, and the clock guard with the debug-only test clock.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{metric, Server};
use reqwest::{Client, StatusCode};
use serde_json::Value;

const TEST_CLOCK_ENV: &str = "SWITCHBOARD_TEST_CLOCK_OFFSET_FILE";

fn token(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("admin-token")).expect("admin-token").trim().to_owned()
}

async fn get(client: &Client, server: &Server, token: &str, path: &str) -> (StatusCode, Value) {
    let response = client.get(server.url(path)).bearer_auth(token).send().await.expect("request");
    let status = response.status();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: not JSON: {text}")))
}

fn ids_of(answer: &Value) -> Vec<u64> {
    answer["ids"]
        .as_array()
        .expect("ids array")
        .iter()
        .map(|id| id.as_str().expect("ids are strings").parse().expect("decimal"))
        .collect()
}

fn cli(server: &Server, dir: &Path, args: &[&str]) -> Command {
    let mut command = common::switchboard();
    command.args(args).args(["--endpoint", &server.base, "--data-dir"]).arg(dir);
    command
}

fn ok(command: &mut Command) -> String {
    let output = command.output().expect("cli runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf8")
}

#[tokio::test]
async fn ids_over_http_and_the_cli() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path(), |_| {});
    let token = token(dir.path());
    let client = Client::new();

    let (status, answer) = get(&client, &server, &token, "/api/v1/ids/snowflake?count=10000").await;
    assert_eq!(status, StatusCode::OK);
    let ids = ids_of(&answer);
    assert_eq!(ids.len(), 10_000);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let (_, single) = get(&client, &server, &token, "/api/v1/ids/snowflake").await;
    let single = ids_of(&single)[0];
    assert!(single > ids[9_999]);

    let (status, decoded) =
        get(&client, &server, &token, &format!("/api/v1/ids/snowflake/{single}/decode")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(decoded["id"], single.to_string());
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let issued_ms = decoded["timestamp_ms"].as_u64().unwrap();
    assert!(issued_ms <= now_ms && now_ms - issued_ms < 60_000, "{decoded}");
    assert!(decoded["worker"].as_u64().unwrap() < 1024);

    // Segments: created on first use, explicit create with start and step, list.
    let (status, first) = get(&client, &server, &token, "/api/v1/ids/segment/orders?count=3").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids_of(&first), vec![1, 2, 3]);
    let created = client
        .post(server.url("/api/v1/ids/segments?namespace=team-a"))
        .bearer_auth(&token)
        .body(serde_json::json!({"tag": "invoices", "start": 5000, "step": 20}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::OK);
    let (_, invoices) =
        get(&client, &server, &token, "/api/v1/ids/segment/invoices?namespace=team-a&count=50").await;
    assert_eq!(ids_of(&invoices), (5000..5050).collect::<Vec<_>>(), "segments of 20 chain into one batch");
    let again = client
        .post(server.url("/api/v1/ids/segments?namespace=team-a"))
        .bearer_auth(&token)
        .body(serde_json::json!({"tag": "invoices"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::CONFLICT);
    let (_, list) = get(&client, &server, &token, "/api/v1/ids/segments?namespace=team-a").await;
    let tags: Vec<&str> =
        list["tags"].as_array().unwrap().iter().map(|t| t["tag"].as_str().unwrap()).collect();
    assert_eq!(tags, ["invoices"], "tags are scoped by namespace: {list}");
    assert!(list["tags"][0]["node_buffer"]["remaining"].as_u64().is_some(), "{list}");

    // Bad input: a 4xx with the stable code and a message naming the value.
    for (path, expected, needle) in [
        ("/api/v1/ids/snowflake?count=0", StatusCode::BAD_REQUEST, "count is 0"),
        ("/api/v1/ids/snowflake?count=-3", StatusCode::BAD_REQUEST, "count is -3"),
        ("/api/v1/ids/snowflake?count=10001", StatusCode::BAD_REQUEST, "count is 10001"),
        ("/api/v1/ids/snowflake?count=ten", StatusCode::BAD_REQUEST, "\"ten\""),
        ("/api/v1/ids/segment/orders?count=0", StatusCode::BAD_REQUEST, "count is 0"),
        ("/api/v1/ids/segment/orders?count=x1", StatusCode::BAD_REQUEST, "\"x1\""),
        ("/api/v1/ids/segment/bad%2Ftag", StatusCode::BAD_REQUEST, "'/'"),
        ("/api/v1/ids/segment/orders?namespace=a%20b", StatusCode::BAD_REQUEST, "namespace"),
        ("/api/v1/ids/snowflake/abc/decode", StatusCode::BAD_REQUEST, "not a Snowflake ID"),
        ("/api/v1/ids/snowflake/-1/decode", StatusCode::BAD_REQUEST, "not a Snowflake ID"),
        ("/api/v1/ids/snowflake/9223372036854775808/decode", StatusCode::BAD_REQUEST, "sign bit"),
    ] {
        let (status, body) = get(&client, &server, &token, path).await;
        assert_eq!(status, expected, "{path}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{path}: {body}");
        assert_eq!(body["error"]["code"], "invalid_argument", "{path}");
    }
    let bad_create = client
        .post(server.url("/api/v1/ids/segments"))
        .bearer_auth(&token)
        .body(serde_json::json!({"tag": "zero", "step": 0}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(bad_create.status(), StatusCode::BAD_REQUEST);
    let anonymous = client.get(server.url("/api/v1/ids/snowflake")).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    // The CLI.
    let printed = ok(&mut cli(&server, dir.path(), &["id", "next", "-n", "5"]));
    let cli_ids: Vec<u64> = printed.lines().map(|l| l.parse().expect("one id a line")).collect();
    assert_eq!(cli_ids.len(), 5);
    assert!(cli_ids[0] > single);
    let first_cli_id = cli_ids[0].to_string();
    let decoded = ok(&mut cli(&server, dir.path(), &["id", "decode", &first_cli_id, "-o", "json"]));
    let decoded: Value = serde_json::from_str(&decoded).unwrap();
    assert_eq!(decoded["id"], cli_ids[0].to_string());
    let refused = cli(&server, dir.path(), &["id", "next", "-n", "0"]).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("count is 0"));
    ok(&mut cli(
        &server,
        dir.path(),
        &["id", "segment", "create", "cli-tag", "--start", "70", "--step", "5"],
    ));
    let seg = ok(&mut cli(&server, dir.path(), &["id", "segment", "next", "cli-tag", "-n", "2"]));
    assert_eq!(seg.lines().collect::<Vec<_>>(), ["70", "71"]);
    let listed = ok(&mut cli(&server, dir.path(), &["id", "segment", "ls"]));
    assert!(listed.contains("cli-tag") && listed.contains("orders"), "{listed}");
    server.terminate();
}

#[tokio::test]
async fn ids_unknown_tags_are_refused_without_auto_create() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path(), |c| {
        c.args(["--ids-segment-auto-create", "false"]);
    });
    let token = token(dir.path());
    let client = Client::new();
    let (status, body) = get(&client, &server, &token, "/api/v1/ids/segment/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    assert!(body["error"]["message"].as_str().unwrap().contains("\"nope\""), "{body}");
}

/// The clock guard against the real binary: the debug-only test clock steps it back.
#[tokio::test]
async fn ids_clock_steps_back_wait_switch_worker_or_refuse() {
    if cfg!(not(debug_assertions)) {
        panic!("the test clock exists in debug builds only: run this test without --release");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let clock_file = dir.path().join("clock-offset");
    std::fs::write(&clock_file, "0").unwrap();
    let server = Server::start(dir.path(), |c| {
        c.env(TEST_CLOCK_ENV, &clock_file).args(["--ids-workers", "2", "--ids-watermark-ahead-ms", "500"]);
    });
    let token = token(dir.path());
    let client = Client::new();
    let mut seen = HashSet::new();
    let mut take = |ids: Vec<u64>| {
        for id in ids {
            assert!(seen.insert(id), "duplicate {id}");
        }
    };
    let step = |offset: &str| {
        std::fs::write(&clock_file, offset).unwrap();
        // The server re-reads the file every 10 ms.
        std::thread::sleep(Duration::from_millis(100));
    };
    let (_, first) = get(&client, &server, &token, "/api/v1/ids/snowflake?count=100").await;
    let first = ids_of(&first);
    take(first.clone());
    let worker_of = |id: u64| (id >> 12) & 1023;

    step("-2");
    let (status, after_small) = get(&client, &server, &token, "/api/v1/ids/snowflake?count=100").await;
    assert_eq!(status, StatusCode::OK, "a 2 ms step is waited out: {after_small}");
    let after_small = ids_of(&after_small);
    assert_eq!(worker_of(after_small[0]), worker_of(first[0]));
    take(after_small);

    step("-10000");
    let (status, after_large) = get(&client, &server, &token, "/api/v1/ids/snowflake?count=100").await;
    assert_eq!(status, StatusCode::OK, "a 10 s step takes the other worker: {after_large}");
    let after_large = ids_of(&after_large);
    assert_ne!(worker_of(after_large[0]), worker_of(first[0]));
    take(after_large);
    assert_eq!(metric(&client, &server, "switchboard_ids_snowflake_worker_switches_total").await, 1.0);

    step("-20000");
    let (status, refused) = get(&client, &server, &token, "/api/v1/ids/snowflake").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{refused}");
    assert_eq!(refused["error"]["code"], "unavailable");
    assert!(refused["error"]["message"].as_str().unwrap().contains("no Snowflake worker id"), "{refused}");
    let refusals =
        metric(&client, &server, "switchboard_ids_snowflake_refusals_total{reason=\"no_free_worker\"}").await;
    assert!(refusals >= 1.0);

    step("0");
    let (status, resumed) = get(&client, &server, &token, "/api/v1/ids/snowflake?count=100").await;
    assert_eq!(status, StatusCode::OK, "{resumed}");
    take(ids_of(&resumed));
    server.terminate();
}
