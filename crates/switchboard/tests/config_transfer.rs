//! End-to-end tests of config export and import against the real binary, on the embedded
//! store and on etcd: export, import into a fresh server, and export again give equal
//! files; a corrupt file is refused before any write; conflicts follow the policy.

mod common;

use common::client;
use common::Server;
use reqwest::StatusCode;
use serde_json::{json, Value};

struct Env {
    dir: tempfile::TempDir,
    server: Server,
    token: String,
}

fn start(args: &[String]) -> Env {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path(), |cmd| {
        cmd.args(args);
    });
    let token =
        std::fs::read_to_string(dir.path().join("admin-token")).expect("admin token").trim().to_owned();
    Env { dir, server, token }
}

fn cli(env: &Env, args: &[&str]) -> String {
    let args: Vec<&str> = ["config", "--ns", "dev"].into_iter().chain(args.iter().copied()).collect();
    common::cli_ok(&env.server.base, &env.token, &args)
}

/// The export without its timestamp line.
fn comparable(export: &str) -> String {
    export.lines().filter(|l| !l.trim_start().starts_with("exported_at_ms:")).collect::<Vec<_>>().join("\n")
}

async fn import_raw(env: &Env, body: &str, policy: &str) -> (StatusCode, Value) {
    let url = env.server.url(&format!("/api/v1/namespaces/dev/configs-import?policy={policy}"));
    let response = client().post(url).bearer_auth(&env.token).body(body.to_owned()).send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
}

async fn round_trip(make: impl Fn() -> Env) {
    let source = make();
    let http = client();
    let items = [
        ("G", "app.yaml", "yaml", "port: 8080\nhosts:\n  - a\n  - \"b: c\"\n"),
        ("G", "svc.json", "json", "{\"a\": [1, 2.5, null], \"b\": \"x\\ny\"}"),
        ("H", "notes.txt", "text", "  leading spaces\nand: 'quotes' \"here\"\n\ttab\n"),
        ("H", "db.properties", "properties", "url=jdbc:x\nuser=sa\n"),
    ];
    for (group, data_id, format, content) in items {
        let url = source.server.url(&format!("/api/v1/namespaces/dev/configs/{group}/{data_id}"));
        let body = json!({"content": content, "format": format, "description": format!("{data_id} desc"), "tags": ["t1"]});
        let response = http
            .put(url)
            .bearer_auth(&source.token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let file = source.dir.path().join("dev.yaml");
    let file = file.to_str().unwrap();
    tokio::task::block_in_place(|| cli(&source, &["export", "--out", file]));
    let first = std::fs::read_to_string(file).unwrap();
    assert!(first.contains("kind: switchboard-config-export"), "{first}");
    let group_only =
        tokio::task::block_in_place(|| cli(&source, &["--group", "H", "export", "--only-group"]));
    assert!(group_only.contains("notes.txt") && !group_only.contains("app.yaml"), "{group_only}");

    let target = make();
    // A corrupt entry anywhere: a 400 naming it, and nothing written.
    let corrupt = first.replace("format: json", "format: jsonx");
    let (status, value) = import_raw(&target, &corrupt, "abort").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{value}");
    assert!(value["error"]["message"].as_str().unwrap().contains("items["), "{value}");
    let (status, value) = import_raw(&target, "kind: [", "abort").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{value}");
    let (_, listed) = {
        let url = target.server.url("/api/v1/namespaces/dev/configs");
        let response = http.get(url).bearer_auth(&target.token).send().await.unwrap();
        (response.status(), response.json_value().await)
    };
    assert_eq!(listed["items"], json!([]), "a refused import writes nothing");

    let out = tokio::task::block_in_place(|| cli(&target, &["import", file]));
    assert!(out.contains("4 created"), "{out}");
    let second = tokio::task::block_in_place(|| cli(&target, &["export"]));
    assert_eq!(comparable(&second), comparable(&first));
    // Again: unchanged. Changed content with policy abort: 409 and nothing written.
    let out = tokio::task::block_in_place(|| cli(&target, &["import", file]));
    assert!(out.contains("4 unchanged"), "{out}");
    let changed = first.replace("port: 8080", "port: 9090");
    let changed =
        changed.lines().filter(|l| !l.trim_start().starts_with("md5:")).collect::<Vec<_>>().join("\n");
    let (status, value) = import_raw(&target, &changed, "abort").await;
    assert_eq!(status, StatusCode::CONFLICT, "{value}");
    let (status, value) = import_raw(&target, &changed, "skip").await;
    assert_eq!((status, value["skipped"].as_array().map(Vec::len)), (StatusCode::OK, Some(1)), "{value}");
    let (status, value) = import_raw(&target, &changed, "overwrite").await;
    assert_eq!(status, StatusCode::OK, "{value}");
    assert_eq!(value["overwritten"], json!(["dev/G/app.yaml"]), "{value}");
    let (status, _) = import_raw(&target, &changed, "merge").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    source.server.terminate();
    target.server.terminate();
}

trait JsonValue {
    async fn json_value(self) -> Value;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> Value {
        let text = self.text().await.unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_export_import_round_trip_embedded() {
    round_trip(|| start(&[])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_export_import_round_trip_on_etcd() {
    let store = format!("etcd://{}", common::etcd_endpoint());
    round_trip(|| {
        let prefix = format!("/t-config-transfer-{}/", rand::random::<u32>());
        start(&["--store".into(), store.clone(), "--root-prefix".into(), prefix])
    })
    .await;
}

/// A zip as Nacos's console exports it (the newer format, with `.metadata.yml`).
fn nacos_zip(entries: &[(&str, &str)], metadata: Option<&str>) -> Vec<u8> {
    use std::io::Write;
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, content) in entries {
        writer.start_file(*name, options).unwrap();
        writer.write_all(content.as_bytes()).unwrap();
    }
    if let Some(metadata) = metadata {
        writer.start_file(".metadata.yml", options).unwrap();
        writer.write_all(metadata.as_bytes()).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

async fn get_json(env: &Env, path: &str) -> Value {
    client().get(env.server.url(path)).bearer_auth(&env.token).send().await.unwrap().json_value().await
}

async fn import_bytes(env: &Env, body: Vec<u8>, query: &str) -> reqwest::Response {
    let url = env.server.url(&format!("/api/v1/namespaces/dev/configs-import?{query}"));
    client().post(url).bearer_auth(&env.token).body(body).send().await.unwrap()
}

/// A Nacos console export zip imports (formats and app names from its metadata); the
/// progress stream reports every batch and then the report; the CLI draws its bar and
/// exports a zip that a fresh server imports to the same configs.
async fn nacos_zip_and_progress(make: impl Fn() -> Env) {
    let source = make();
    let metadata = "metadata:\n- dataId: app.yaml\n  group: DEFAULT_GROUP\n  type: yaml\n  appName: shop\n  desc: the shop\n\
                    - dataId: db\n  group: billing\n  type: json\n";
    let zip = nacos_zip(
        &[("DEFAULT_GROUP/app.yaml", "port: 8080\n"), ("billing/db", "{\"url\": \"x\"}")],
        Some(metadata),
    );

    // A bad entry anywhere: a 400 naming it, before any write.
    let bad =
        nacos_zip(&[("DEFAULT_GROUP/app.yaml", "port: 8080\n"), ("billing/db", "{not json")], Some(metadata));
    let response = import_bytes(&source, bad, "policy=abort").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let value = response.json_value().await;
    assert!(value["error"]["message"].as_str().unwrap().contains("billing/db"), "{value}");
    let nested = nacos_zip(&[("a/b/c", "x")], None);
    let value = import_bytes(&source, nested, "policy=abort").await.json_value().await;
    assert!(value["error"]["message"].as_str().unwrap().contains("\"a/b/c\""), "{value}");
    let listed = get_json(&source, "/api/v1/namespaces/dev/configs").await;
    assert_eq!(listed["items"], json!([]), "a refused import writes nothing");

    let file = source.dir.path().join("nacos.zip");
    std::fs::write(&file, &zip).unwrap();
    let file = file.to_str().unwrap().to_owned();
    let out = tokio::task::block_in_place(|| cli(&source, &["import", &file, "--progress"]));
    assert!(out.contains("2 created"), "{out}");
    let item = get_json(&source, "/api/v1/namespaces/dev/configs/billing/db").await;
    assert_eq!(
        (item["format"].as_str(), item["content"].as_str()),
        (Some("json"), Some("{\"url\": \"x\"}")),
        "{item}"
    );
    let item = get_json(&source, "/api/v1/namespaces/dev/configs/DEFAULT_GROUP/app.yaml").await;
    assert_eq!(
        (item["format"].as_str(), item["description"].as_str()),
        (Some("yaml"), Some("the shop")),
        "{item}"
    );

    // 100 configs take three batches (42 configs each at most): three progress lines after
    // the first, then the report.
    let entries: Vec<(String, String)> =
        (0..100).map(|i| (format!("bulk/c{i:03}"), format!("value {i}"))).collect();
    let entries: Vec<(&str, &str)> = entries.iter().map(|(n, c)| (n.as_str(), c.as_str())).collect();
    let response = import_bytes(&source, nacos_zip(&entries, None), "policy=abort&progress=true").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let text = response.text().await.unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let progress: Vec<(u64, u64)> = lines
        .iter()
        .filter_map(|l| l.get("progress"))
        .map(|p| (p["written"].as_u64().unwrap(), p["planned"].as_u64().unwrap()))
        .collect();
    assert_eq!(progress.last(), Some(&(100, 100)), "{text}");
    assert!(progress.windows(2).all(|w| w[0].0 <= w[1].0), "progress only grows: {text}");
    let report = &lines.last().unwrap()["report"];
    assert_eq!(
        (report["created"].as_array().map(Vec::len), report["batches"].as_u64()),
        (Some(100), Some(3)),
        "{text}"
    );
    // A conflict found while planning is an ordinary 409, not a stream.
    let changed: Vec<(&str, &str)> = vec![("bulk/c000", "other")];
    let response = import_bytes(&source, nacos_zip(&changed, None), "policy=abort&progress=true").await;
    assert_eq!(response.status(), StatusCode::CONFLICT);

    // Our zip export: a fresh server imports it to the same configs.
    let exported = source.dir.path().join("export.zip");
    let exported = exported.to_str().unwrap().to_owned();
    tokio::task::block_in_place(|| cli(&source, &["export", "--format", "zip", "--out", &exported]));
    let target = make();
    let out = tokio::task::block_in_place(|| cli(&target, &["import", &exported, "--progress=false"]));
    assert!(out.contains("102 created"), "{out}");
    let first = tokio::task::block_in_place(|| cli(&source, &["export"]));
    let second = tokio::task::block_in_place(|| cli(&target, &["export"]));
    // Zip exports carry no tags or schemas; these configs have none, so the YAML exports match.
    assert_eq!(comparable(&second), comparable(&first));
    source.server.terminate();
    target.server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_nacos_zip_import_and_progress_embedded() {
    nacos_zip_and_progress(|| start(&[])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_nacos_zip_import_and_progress_on_etcd() {
    let store = format!("etcd://{}", common::etcd_endpoint());
    nacos_zip_and_progress(|| {
        let prefix = format!("/t-config-zip-{}/", rand::random::<u32>());
        start(&["--store".into(), store.clone(), "--root-prefix".into(), prefix])
    })
    .await;
}
