//! Starting the real binary for end-to-end tests: a temp data dir, a free loopback port
//! (`--listen 127.0.0.1:0`, read back from what `serve` prints), and its console lines.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub fn switchboard() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command.env("SWITCHBOARD_LOG", "warn").env_remove("SWITCHBOARD_ADMIN_TOKEN");
    command
}

pub fn etcd_endpoint() -> String {
    let endpoints = std::env::var("SB_TEST_ETCD_ENDPOINTS")
        .expect("SB_TEST_ETCD_ENDPOINTS is not set: run scripts/test, which starts etcd and sets it");
    let first = endpoints.split(',').next().unwrap_or_default();
    first.trim_start_matches("http://").to_owned()
}

/// A running `serve`; killed when dropped.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(reader: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// Polls `lines` until `found` picks something out of them (10 s at most).
pub fn wait_for_line<T>(lines: &Mutex<Vec<String>>, what: &str, found: impl Fn(&[String]) -> Option<T>) -> T {
    for _ in 0..200 {
        if let Some(value) = found(&lines.lock().unwrap()) {
            return value;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("serve did not print {what} within 10 s; it printed: {:#?}", lines.lock().unwrap());
}

impl Server {
    pub fn start(data_dir: &Path, configure: impl FnOnce(&mut Command)) -> Server {
        let mut command = switchboard();
        command
            .args(["serve", "--membership-ttl-secs", "2", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        configure(&mut command);
        give_etcd_nodes_the_test_key(&mut command, data_dir);
        let mut child = command.spawn().expect("serve starts");
        let stdout = collect(child.stdout.take().expect("piped stdout"));
        let stderr = collect(child.stderr.take().expect("piped stderr"));
        let mut server = Server { child, base: String::new(), stdout, stderr };
        server.base = wait_for_line(&server.stdout.clone(), "its listen address", |lines| {
            lines
                .iter()
                .find_map(|l| l.split("listening on ").nth(1))
                .map(|rest| rest.split(';').next().unwrap_or_default().trim().to_owned())
        });
        server
    }

    /// The token printed by a first start, once the banner is out.
    pub fn printed_token(&self) -> Option<String> {
        // The banner is printed with the listen line; give its last line a moment.
        std::thread::sleep(Duration::from_millis(100));
        let lines = self.stdout.lock().unwrap();
        lines.iter().find(|l| l.trim_start().starts_with("sbt_")).map(|l| l.trim().to_owned())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGTERM, and the exit status must be a success within 10 s.
    pub fn terminate(mut self) {
        terminate(&mut self.child);
    }
}

/// Sends SIGTERM to a `serve`; its exit status must be a success within 10 s.
pub fn terminate(child: &mut Child) {
    let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().expect("kill runs");
    assert!(status.success());
    let status = wait_with_timeout(child, Duration::from_secs(10));
    assert!(status.success(), "serve exits cleanly on SIGTERM: {status}");
}

/// Waits for a child to exit; kills it and fails the test after `timeout`.
pub fn wait_with_timeout(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    for _ in 0..(timeout.as_millis() / 50) {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("the process did not end within {timeout:?}");
}

/// The Python interpreter of the venv that `scripts/test` fills with nacos-sdk-python 2.0.x,
/// whose legacy `nacos.NacosClient` is a real Nacos 1.x HTTP SDK.
pub fn nacos_python() -> String {
    std::env::var("SB_TEST_NACOS_PYTHON").expect(
        "SB_TEST_NACOS_PYTHON is not set: run scripts/test, which installs nacos-sdk-python and sets it",
    )
}

/// A plain-HTTP client for the end-to-end tests, with a 20 s timeout per request.
/// One sample of the node's `/metrics`: the line named exactly `name` (labels included, as
/// in `name{label="v"}`); panics when there is none.
pub async fn metric(http: &reqwest::Client, server: &Server, name: &str) -> f64 {
    let text = http.get(server.url("/metrics")).send().await.expect("metrics").text().await.expect("body");
    text.lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(20)).build().expect("client")
}

/// An answer's status and JSON body; a body that is not JSON fails the test, showing it.
pub async fn json_of(response: reqwest::Response) -> (reqwest::StatusCode, serde_json::Value) {
    let status = response.status();
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, value)
}

/// Sends `request` with `body` as its JSON; the answer's status and JSON body.
pub async fn send_json(
    request: reqwest::RequestBuilder,
    body: &serde_json::Value,
) -> (reqwest::StatusCode, serde_json::Value) {
    let request = request.header("content-type", "application/json").body(body.to_string());
    json_of(request.send().await.expect("request")).await
}

/// Starts `serve` with extra `args` in a fresh temp dir; returns the dir, the server and
/// the admin token it wrote.
pub fn start_with(args: &[&str]) -> (tempfile::TempDir, Server, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path(), |cmd| {
        cmd.args(args);
    });
    let token =
        std::fs::read_to_string(dir.path().join("admin-token")).expect("admin token").trim().to_owned();
    (dir, server, token)
}

/// The master key every test node on etcd shares (nodes of one cluster must hold the same
/// key file; tests need no secrecy). Test-only material.
pub const TEST_MASTER_KEY_FILE: &str =
    "# test key\nkey ktest AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\nactive ktest\n";

/// A node on etcd must be given `--master-key-file`; unless the test chose one, it gets the
/// shared test key (written into its data dir).
fn give_etcd_nodes_the_test_key(command: &mut Command, data_dir: &Path) {
    let args: Vec<String> = command.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
    let on_etcd = args.iter().any(|a| a.starts_with("etcd://") || a.starts_with("--store=etcd"));
    if !on_etcd || args.iter().any(|a| a.starts_with("--master-key-file")) {
        return;
    }
    std::fs::create_dir_all(data_dir).expect("data dir");
    let path = data_dir.join("test-master-key");
    std::fs::write(&path, TEST_MASTER_KEY_FILE).expect("test master key");
    command.arg("--master-key-file").arg(path);
}

/// Runs a client subcommand against `base` with `token`; it must succeed. Returns stdout.
pub fn cli_ok(base: &str, token: &str, args: &[&str]) -> String {
    let output = switchboard()
        .env("SWITCHBOARD_ENDPOINT", base)
        .env("SWITCHBOARD_TOKEN", token)
        .args(args)
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{args:?} failed\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}
