//! End-to-end tests of the client subcommands (`kv`, `lease`, `backup` of a running
//! server), run as a user runs them: the real binary against a real `serve`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::Server;
use serde_json::Value;

/// `switchboard <args>` against `server`, with the token from `<data-dir>/admin-token`.
fn cli(server: &Server, data_dir: &Path) -> Command {
    let mut command = common::switchboard();
    command
        .env("SWITCHBOARD_ENDPOINT", &server.base)
        .env("SWITCHBOARD_DATA_DIR", data_dir)
        .env_remove("SWITCHBOARD_TOKEN");
    command
}

fn run(command: &mut Command) -> Output {
    command.stdin(Stdio::null()).output().expect("the binary runs")
}

fn ok(command: &mut Command) -> String {
    let output = run(command);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{command:?} failed\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The command fails, and what it prints on stderr.
fn fails(command: &mut Command) -> String {
    let output = run(command);
    assert!(
        !output.status.success(),
        "{command:?} should fail; stdout: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn kv_and_lease_commands_work_against_a_running_server() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path(), |_| {});
    let data = dir.path();

    let put = ok(cli(&server, data).args(["kv", "put", "app/greeting", "hello"]));
    assert!(put.starts_with("put app/greeting at revision "), "{put}");
    let got = json(&ok(cli(&server, data).args(["kv", "get", "app/greeting", "-o", "json"])));
    assert_eq!(got["value"], "hello");
    let revision = got["mod_revision"].as_i64().expect("a revision");

    // The table shows the key, its revision and its value.
    let table = ok(cli(&server, data).args(["kv", "get", "app/greeting"]));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("KEY") && lines[0].contains("VALUE"), "{table}");
    assert!(lines[1].starts_with("app/greeting") && lines[1].ends_with("hello"), "{table}");
    assert!(lines[1].contains(&revision.to_string()), "{table}");

    // A value from stdin (binary, shown base64 in JSON), and a key that needs escaping.
    let mut child = cli(&server, data)
        .args(["kv", "put", "app/bin ary?"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    child.stdin.take().expect("stdin").write_all(&[0, 255, 1]).expect("write");
    assert!(child.wait().expect("wait").success());
    let got = json(&ok(cli(&server, data).args(["kv", "get", "app/bin ary?", "-o", "json"])));
    assert_eq!((got["value"].as_str(), got["value_encoding"].as_str()), (Some("AP8B"), Some("base64")));

    // If-Match: a stale revision is the server's 409 message and a failing exit.
    let stale = (revision - 1).to_string();
    let error = fails(cli(&server, data).args(["kv", "put", "app/greeting", "x", "--if-match", &stale]));
    assert!(error.contains("If-Match asked for") && error.contains("409"), "{error}");
    ok(cli(&server, data).args(["kv", "put", "app/greeting", "hi", "--if-match", &revision.to_string()]));

    // Past reads mirror ?revision=N.
    let old = json(&ok(cli(&server, data).args([
        "kv",
        "get",
        "app/greeting",
        "--revision",
        &revision.to_string(),
        "-o",
        "json",
    ])));
    assert_eq!(old["value"], "hello");

    let error = fails(cli(&server, data).args(["kv", "get", "app/missing"]));
    assert!(error.contains("\"app/missing\" not found") && error.contains("404"), "{error}");

    // ls: a prefix, a limit (with `more`), JSON.
    ok(cli(&server, data).args(["kv", "put", "other/key", "v"]));
    let list = json(&ok(cli(&server, data).args(["kv", "ls", "app/", "-o", "json"])));
    let keys: Vec<&str> =
        list["kvs"].as_array().expect("kvs").iter().filter_map(|kv| kv["key"].as_str()).collect();
    assert_eq!(keys, ["app/bin ary?", "app/greeting"]);
    let limited = ok(cli(&server, data).args(["kv", "ls", "--limit", "1"]));
    assert!(limited.contains("1 of 3 keys shown"), "{limited}");

    // Leases: grant, attach, keepalive, revoke (which deletes the key).
    let lease = json(&ok(cli(&server, data).args(["lease", "grant", "60", "-o", "json"])));
    let id = lease["id"].as_str().expect("a decimal string id").to_owned();
    ok(cli(&server, data).args(["kv", "put", "app/leased", "v", "--lease", &id]));
    let renewed = ok(cli(&server, data).args(["lease", "keepalive", &id]));
    assert!(renewed.contains(&id) && renewed.contains("60"), "{renewed}");
    ok(cli(&server, data).args(["lease", "revoke", &id]));
    fails(cli(&server, data).args(["kv", "get", "app/leased"]));
    let error = fails(cli(&server, data).args(["lease", "keepalive", &id]));
    assert!(error.contains("404"), "{error}");

    // del: one key, then a prefix.
    let deleted = ok(cli(&server, data).args(["kv", "del", "other/key"]));
    assert!(deleted.starts_with("deleted 1 key at revision"), "{deleted}");
    let deleted = ok(cli(&server, data).args(["kv", "del", "app/", "--prefix"]));
    assert!(deleted.starts_with("deleted 2 keys"), "{deleted}");

    // Without a token: the server's 401 message, and where the CLI looked for one.
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let error = fails(cli(&server, elsewhere.path()).args(["kv", "ls"]));
    assert!(error.contains("401") && error.contains("admin-token"), "{error}");
    let error = fails(cli(&server, elsewhere.path()).args(["kv", "ls", "--token", "not-a-token"]));
    assert!(error.contains("unknown, expired or revoked"), "{error}");
    server.terminate();

    // No server at all: a clear error, not a hang.
    let error = fails(common::switchboard().args(["kv", "ls", "--endpoint", "http://127.0.0.1:1"]));
    assert!(error.contains("no server answers at http://127.0.0.1:1"), "{error}");
}

#[test]
fn kv_watch_prints_one_line_per_event() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path(), |_| {});
    let data = dir.path();
    let first = json(&ok(cli(&server, data).args(["kv", "put", "app/a", "1", "-o", "json"])));
    let first = first["revision"].as_i64().expect("revision");

    let mut watch = cli(&server, data)
        .args(["kv", "watch", "app/", "--prefix", "--from-revision", &first.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("watch starts");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let stdout = watch.stdout.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let next = || lines_rx.recv_timeout(Duration::from_secs(10)).expect("a watch line within 10 s");
    assert_eq!(next(), format!("{first} PUT app/a 1"), "the replay from --from-revision");
    ok(cli(&server, data).args(["kv", "put", "app/b", "two words"]));
    assert_eq!(next(), format!("{} PUT app/b two words", first + 1));
    ok(cli(&server, data).args(["kv", "del", "app/a"]));
    assert_eq!(next(), format!("{} DELETE app/a", first + 2));

    // A stopping server ends the stream; the CLI says so and fails.
    server.terminate();
    let status = common::wait_with_timeout(&mut watch, Duration::from_secs(10));
    assert!(!status.success(), "a watch the server ended is an error: {status}");
}

/// Issue 3's acceptance: a backup of a *running* embedded server, restored into an empty
/// etcd namespace, serves the same keys and values (revisions renumbered).
#[test]
fn backup_of_a_running_server_restores_into_etcd() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path(), |_| {});
    let data = dir.path();
    for i in 0..30 {
        ok(cli(&server, data).args(["kv", "put", &format!("svc/item-{i:02}"), &format!("value {i}")]));
    }
    ok(cli(&server, data).args(["kv", "put", "svc/item-00", "overwritten"]));
    ok(cli(&server, data).args(["kv", "del", "svc/item-29"]));
    let lease = json(&ok(cli(&server, data).args(["lease", "grant", "60", "-o", "json"])));
    ok(cli(&server, data).args([
        "kv",
        "put",
        "svc/ephemeral",
        "x",
        "--lease",
        lease["id"].as_str().expect("id"),
    ]));
    let before = json(&ok(cli(&server, data).args(["kv", "ls", "-o", "json"])));

    // The running server holds the store's lock: an offline backup says what to do.
    let file = dir.path().join("running.sb");
    let error = fails(cli(&server, data).args(["backup", "--offline", "--out"]).arg(&file));
    assert!(error.contains("without --offline"), "{error}");
    let out = ok(cli(&server, data).args(["backup", "--out"]).arg(&file));
    assert!(out.contains("from the server at"), "{out}");
    let token = std::fs::read_to_string(data.join("admin-token")).expect("token").trim().to_owned();
    server.terminate();

    let prefix = format!("/sbtest-cli-online/{}/", std::process::id());
    let etcd = format!("etcd://{}", common::etcd_endpoint());
    let restored = ok(common::switchboard()
        .args(["restore", "--store", &etcd, "--root-prefix", &prefix, "--in"])
        .arg(&file)
        .arg("--data-dir")
        .arg(data));
    assert!(restored.starts_with("restored "), "{restored}");

    // A node on the restored etcd: the old token (its hash was restored too) reads it back.
    let etcd_dir = tempfile::tempdir().expect("temp dir");
    let on_etcd = Server::start(etcd_dir.path(), |c| {
        c.args(["--store", &etcd, "--root-prefix", &prefix]);
    });
    assert_eq!(on_etcd.printed_token(), None, "the restored store already has its admin token");
    let mut from_etcd = cli(&on_etcd, etcd_dir.path());
    from_etcd.env("SWITCHBOARD_TOKEN", &token);
    let after = json(&ok(from_etcd.args(["kv", "ls", "-o", "json"])));
    let pairs = |list: &Value| -> Vec<(String, String)> {
        list["kvs"]
            .as_array()
            .expect("kvs")
            .iter()
            .map(|kv| {
                (kv["key"].as_str().unwrap_or("").to_owned(), kv["value"].as_str().unwrap_or("").to_owned())
            })
            .collect()
    };
    let expected: Vec<_> = pairs(&before).into_iter().filter(|(k, _)| k != "svc/ephemeral").collect();
    assert_eq!(expected.len(), 29);
    assert_eq!(pairs(&after), expected, "the same keys and values, leased keys left out");
    let mut get = cli(&on_etcd, etcd_dir.path());
    get.env("SWITCHBOARD_TOKEN", &token);
    let item = json(&ok(get.args(["kv", "get", "svc/item-00", "-o", "json"])));
    assert_eq!(item["value"], "overwritten");
    assert_eq!(item["version"], 1, "a restore renumbers: one version per restored key");
    on_etcd.terminate();
}
