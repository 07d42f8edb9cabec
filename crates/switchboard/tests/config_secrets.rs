//! End-to-end tests of secret configs against the real binary: sealed at rest (a scan of
//! every byte of the data dir, and of etcd's data dir, finds no plaintext), readable by
//! callers allowed to, listened to by md5, rotated by adding a key and re-encrypting in
//! the background, exported and imported, and refused start-ups on etcd.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{client, json_of, send_json, switchboard, Server};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

/// Asserts that no file under `dir` holds `needle` anywhere in its bytes.
fn assert_absent_from(dir: &Path, needle: &str) {
    let files = files_under(dir);
    assert!(!files.is_empty(), "nothing to scan under {}", dir.display());
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{} holds the plaintext",
            file.display()
        );
    }
}

fn cli(server: &Server, token: &str, args: &[&str]) -> String {
    common::cli_ok(&server.base, token, args)
}

async fn publish(server: &Server, token: &str, data_id: &str, body: Value) -> Value {
    let url = server.url(&format!("/api/v1/namespaces/dev/configs/G/{data_id}"));
    let (status, value) = send_json(client().put(url).bearer_auth(token), &body).await;
    assert_eq!(status, StatusCode::OK, "{value}");
    value
}

async fn read(server: &Server, token: &str, data_id: &str) -> Value {
    let url = server.url(&format!("/api/v1/namespaces/dev/configs/G/{data_id}"));
    let (status, value) = json_of(client().get(url).bearer_auth(token).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{value}");
    value
}

fn token_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("admin-token")).expect("admin token").trim().to_owned()
}

/// A Nacos publish of `cipher-app` in `dev`/`G`; Nacos answers `true`.
async fn nacos_publish(server: &Server, token: &str, content: &str) -> String {
    let form = [("dataId", "cipher-app"), ("group", "G"), ("tenant", "dev"), ("content", content)];
    let response = client()
        .post(server.url("/nacos/v1/cs/configs"))
        .query(&[("accessToken", token)])
        .form(&form)
        .send()
        .await
        .unwrap();
    response.text().await.unwrap()
}

/// A Nacos read of `cipher-app` in `dev`/`G`: the content as the caller may see it.
async fn nacos_read(server: &Server, token: &str) -> String {
    let query = [("dataId", "cipher-app"), ("group", "G"), ("tenant", "dev"), ("accessToken", token)];
    client().get(server.url("/nacos/v1/cs/configs")).query(&query).send().await.unwrap().text().await.unwrap()
}

/// Publishes secrets through the native API (with a gray) and the Nacos API (a `cipher-`
/// data id) and reads them back as an allowed reader.
async fn publish_secrets(server: &Server, token: &str, marker: &str) {
    let main = format!("password={marker}-main");
    let gray = format!("password={marker}-gray");
    let nacos = format!("token={marker}-nacos");
    let published = publish(server, token, "db.properties", json!({"content": main, "secret": true})).await;
    assert!(!published.to_string().contains(marker), "{published}");
    publish(server, token, "db.properties", json!({"content": format!("{main}\nuser=sa")})).await;
    // A gray of a secret is sealed too.
    let url = server.url("/api/v1/namespaces/dev/configs/G/db.properties/gray");
    let body = json!({"content": gray, "ips": ["10.9.9.9"]});
    let (status, value) = send_json(client().put(url).bearer_auth(token), &body).await;
    assert_eq!(status, StatusCode::OK, "{value}");
    assert_eq!(nacos_publish(server, token, &nacos).await, "true");

    let item = read(server, token, "db.properties").await;
    assert_eq!(item["secret"], json!(true), "{item}");
    assert_eq!(item["content"].as_str(), Some(format!("{main}\nuser=sa").as_str()), "{item}");
    // The md5 an allowed reader is compared against is its plaintext's: the same as a
    // plain config with that content.
    assert_eq!(
        item["md5"].as_str(),
        Some(sb_config::content_md5(&format!("{main}\nuser=sa")).as_str()),
        "{item}"
    );
    assert_eq!(nacos_read(server, token).await, nacos);
    // History entries and diffs open for an allowed reader too.
    let url = server.url("/api/v1/namespaces/dev/configs/G/db.properties/history");
    let (_, history) = json_of(client().get(url).bearer_auth(token).send().await.unwrap()).await;
    assert!(history["entries"].as_array().unwrap().iter().all(|e| e["secret"] == json!(true)), "{history}");
}

/// Creates a user with `role` on `dev` and logs in; returns its session token.
async fn user_token(server: &Server, admin: &str, name: &str, role: &str) -> String {
    let password = format!("Pw-{name}-7391-xyz");
    let body = json!({"name": name, "password": password, "bindings": [{"role": role, "namespace": "dev"}]});
    let (status, value) =
        send_json(client().post(server.url("/api/v1/auth/users")).bearer_auth(admin), &body).await;
    assert!(status.is_success(), "{value}");
    let body = json!({"username": name, "password": password});
    let (status, value) = send_json(client().post(server.url("/api/v1/auth/login")), &body).await;
    assert_eq!(status, StatusCode::OK, "{value}");
    value["token"].as_str().unwrap().to_owned()
}

/// Nacos's long-poll answer without waiting: the changed keys, `""` when none.
async fn nacos_changed(server: &Server, token: &str, data_id: &str, md5: &str) -> String {
    let probe = format!("{data_id}\u{2}G\u{2}{md5}\u{2}dev\u{1}");
    let response = client()
        .post(server.url("/nacos/v1/cs/configs/listener"))
        .query(&[("accessToken", token)])
        .form(&[("Listening-Configs", probe.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.unwrap()
}

/// A viewer (no leave to read secrets) gets masks whose md5 changes exactly when the secret
/// does, on both APIs; an editor (config-secret read) gets the plaintext; a plaintext export
/// is refused to the viewer.
async fn readers_without_leave_see_masks(server: &Server, admin: &str, marker: &str) {
    let viewer = user_token(server, admin, "sv-viewer", "viewer").await;
    let editor = user_token(server, admin, "sv-editor", "editor").await;
    let masked = read(server, &viewer, "db.properties").await;
    let content = masked["content"].as_str().unwrap().to_owned();
    assert!(content.starts_with("******") && !content.contains(marker), "{masked}");
    assert_eq!(masked["md5"].as_str(), Some(sb_config::content_md5(&content).as_str()), "{masked}");
    let opened = read(server, &editor, "db.properties").await;
    assert!(opened["content"].as_str().unwrap().contains(marker), "{opened}");

    let nacos_masked = nacos_read(server, &viewer).await;
    assert!(nacos_masked.starts_with("******") && !nacos_masked.contains(marker), "{nacos_masked}");
    let mask_md5 = sb_config::content_md5(&nacos_masked);
    assert_eq!(
        nacos_changed(server, &viewer, "cipher-app", &mask_md5).await,
        "",
        "the mask's md5 is current"
    );
    // The editor holds the plaintext's md5, which is current for it.
    let plain = format!("token={marker}-nacos");
    assert_eq!(nacos_changed(server, &editor, "cipher-app", &sb_config::content_md5(&plain)).await, "");
    // A new secret version: both hear the change, the viewer still learns nothing else.
    assert_eq!(nacos_publish(server, admin, "token=rotated-value").await, "true");
    assert!(nacos_changed(server, &viewer, "cipher-app", &mask_md5).await.contains("cipher-app"));
    assert!(nacos_changed(server, &editor, "cipher-app", &sb_config::content_md5(&plain))
        .await
        .contains("cipher-app"));
    assert_eq!(nacos_publish(server, admin, &plain).await, "true");

    let url = server.url("/api/v1/namespaces/dev/configs-export?plaintext=true");
    let (status, value) = json_of(client().get(url).bearer_auth(&viewer).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{value}");
}

/// Rotation: a new active key; the restart re-encrypts every secret entry to it (watched
/// through `config keys` and `GET /api/v1/config-keys`); then the old key is retired from
/// the file and, after another restart, every secret still reads. Returns that server.
async fn rotate_and_retire(key_file: &Path, token: &str, marker: &str, start: impl Fn() -> Server) -> Server {
    let old = std::fs::read_to_string(key_file)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("active "))
        .unwrap()
        .trim()
        .to_owned();
    let out = switchboard().args(["master-key", "rotate"]).arg(key_file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let server = start();
    let keys = cli(&server, token, &["config", "keys", "-o", "json"]);
    let keys: Value = serde_json::from_str(keys.trim()).unwrap();
    let active = keys["active"].as_str().unwrap().to_owned();
    assert_ne!(active, old);
    let mut moved = false;
    for _ in 0..100 {
        let (_, usage) =
            json_of(client().get(server.url("/api/v1/config-keys")).bearer_auth(token).send().await.unwrap())
                .await;
        if usage["entries_by_key"].get(&old).is_none() && usage["entries_by_key"][&active].as_u64() >= Some(4)
        {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(moved, "every secret entry moves to the new key");
    server.terminate();
    let rotated = std::fs::read_to_string(key_file).unwrap();
    let retired: String =
        rotated.lines().filter(|l| !l.contains(&format!(" {old} "))).map(|l| format!("{l}\n")).collect();
    std::fs::write(key_file, retired).unwrap();
    let server = start();
    let item = read(&server, token, "db.properties").await;
    assert!(item["content"].as_str().unwrap().contains(marker), "{item}");
    let nacos = nacos_read(&server, token).await;
    assert!(nacos.contains(marker), "{nacos}");
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_secrets_sealed_at_rest_rotated_and_moved_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a");
    let marker = format!("PLAINTEXT{}", rand::random::<u64>());
    let server = Server::start(&data, |_| {});
    let token = token_of(&data);
    let key_file = data.join("master-key");
    let key_text = std::fs::read_to_string(&key_file).expect("the first start creates the key file");
    assert!(key_text.contains("\nactive "), "{}", key_file.display());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    publish_secrets(&server, &token, &marker).await;
    readers_without_leave_see_masks(&server, &token, &marker).await;
    // A sealed export carries no plaintext; a plaintext export does, on request.
    let sealed = cli(&server, &token, &["config", "--ns", "dev", "export"]);
    assert!(!sealed.contains(&marker) && sealed.contains("sealed_at"), "{sealed}");
    let clear = cli(&server, &token, &["config", "--ns", "dev", "export", "--format", "yaml"]);
    assert!(!clear.contains(&marker));
    let url = server.url("/api/v1/namespaces/dev/configs-export?plaintext=true");
    let clear = client().get(url).bearer_auth(&token).send().await.unwrap().text().await.unwrap();
    assert!(clear.contains(&marker), "{clear}");
    let url = server.url("/api/v1/namespaces/dev/configs-export?format=zip");
    let (status, value) = json_of(client().get(url).bearer_auth(&token).send().await.unwrap()).await;
    assert_eq!(
        (status, value["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("format")),
        "{value}"
    );
    let logs = format!("{:?}{:?}", server.stdout.lock().unwrap(), server.stderr.lock().unwrap());
    server.terminate();
    assert!(!logs.contains(&marker), "the logs hold the plaintext");
    assert_absent_from(&data, &marker);

    let server = rotate_and_retire(&key_file, &token, &marker, || Server::start(&data, |_| {})).await;
    let export = cli(&server, &token, &["config", "--ns", "dev", "export"]);

    // Moved to a fresh server with the same key file: the sealed export imports, and the
    // secrets read the same.
    let other_data = dir.path().join("b");
    std::fs::create_dir_all(&other_data).unwrap();
    let other = Server::start(&other_data, |cmd| {
        cmd.arg("--master-key-file").arg(&key_file);
    });
    let other_token = token_of(&other_data);
    let file = dir.path().join("export.yaml");
    std::fs::write(&file, &export).unwrap();
    let out = cli(&other, &other_token, &["config", "--ns", "dev", "import", file.to_str().unwrap()]);
    assert!(out.contains("created"), "{out}");
    for data_id in ["db.properties", "cipher-app"] {
        let a = read(&server, &token, data_id).await;
        let b = read(&other, &other_token, data_id).await;
        assert_eq!((&a["content"], &a["md5"], &a["secret"]), (&b["content"], &b["md5"], &b["secret"]));
    }
    // A server with another key cannot open them: a 503 naming the flag, nothing written.
    let third_data = dir.path().join("c");
    let third = Server::start(&third_data, |_| {});
    let third_token = token_of(&third_data);
    let url = third.url("/api/v1/namespaces/dev/configs-import?policy=abort");
    let (status, value) =
        json_of(client().post(url).bearer_auth(&third_token).body(export.clone()).send().await.unwrap())
            .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{value}");
    assert!(value["error"]["message"].as_str().unwrap().contains("--master-key-file"), "{value}");
    server.terminate();
    other.terminate();
    third.terminate();
    assert_absent_from(&other_data, &marker);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An etcd of the test's own, so its data dir can be scanned.
struct OwnEtcd {
    child: std::process::Child,
    endpoint: String,
}

impl OwnEtcd {
    fn start(dir: &Path) -> OwnEtcd {
        let bin = std::env::var("SB_TEST_ETCD_BIN")
            .expect("SB_TEST_ETCD_BIN is not set: run scripts/test, which sets it to the etcd binary");
        let (client_port, peer_port) = (free_port(), free_port());
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let child = Command::new(bin)
            .arg("--data-dir")
            .arg(dir)
            .args([
                "--name",
                "secrets",
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("secrets={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd starts");
        // Owned at once, so a failed start still kills and reaps it.
        let etcd = OwnEtcd { child, endpoint: format!("127.0.0.1:{client_port}") };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", client_port)).is_ok() {
                return etcd;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("etcd did not listen within 10 s");
    }
}

impl Drop for OwnEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_secrets_sealed_at_rest_and_rotated_on_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let etcd_data = dir.path().join("etcd");
    let etcd = OwnEtcd::start(&etcd_data);
    let store = format!("etcd://{}", etcd.endpoint);
    let marker = format!("PLAINTEXT{}", rand::random::<u64>());

    // Without a key file a node on etcd refuses to start, naming the flag.
    let out = switchboard()
        .args(["serve", "--listen", "127.0.0.1:0", "--store", &store, "--data-dir"])
        .arg(dir.path().join("keyless"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--master-key-file is required"), "{stderr}");

    let key_file = dir.path().join("cluster-key");
    let out = switchboard().args(["master-key", "new"]).arg(&key_file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let data = dir.path().join("node");
    let server = Server::start(&data, |cmd| {
        cmd.args(["--store", &store]).arg("--master-key-file").arg(&key_file);
    });
    let token = token_of(&data);
    publish_secrets(&server, &token, &marker).await;

    // A second node given another key under the same id refuses to start.
    let id = std::fs::read_to_string(&key_file)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("active "))
        .unwrap()
        .trim()
        .to_owned();
    let forged = dir.path().join("forged-key");
    std::fs::write(
        &forged,
        format!("key {id} {}\nactive {id}\n", "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="),
    )
    .unwrap();
    let out = switchboard()
        .args(["serve", "--listen", "127.0.0.1:0", "--store", &store, "--data-dir"])
        .arg(dir.path().join("forged"))
        .arg("--master-key-file")
        .arg(&forged)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("same key file"), "{stderr}");

    let logs = format!("{:?}{:?}", server.stdout.lock().unwrap(), server.stderr.lock().unwrap());
    server.terminate();
    assert!(!logs.contains(&marker), "the logs hold the plaintext");
    // Rotation on etcd too: every secret moves to the new key, and reads after the old one
    // is retired.
    let start = || {
        Server::start(&data, |cmd| {
            cmd.args(["--store", &store]).arg("--master-key-file").arg(&key_file);
        })
    };
    rotate_and_retire(&key_file, &token, &marker, start).await.terminate();
    drop(etcd);
    assert_absent_from(&etcd_data, &marker);
    assert_absent_from(&data, &marker);
}
