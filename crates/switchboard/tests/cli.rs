//! End-to-end tests of the real binary: `serve`, `backup` and `restore`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

mod common;

use common::{etcd_endpoint, switchboard, terminate};
use sb_store::backup::read_backup_file;
use sb_store::{Store, Txn, TxnOp};
use sb_store_embedded::{EmbeddedOptions, EmbeddedStore};

fn run_ok(command: &mut Command) -> String {
    let output = command.output().expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "command failed: {command:?}\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Starts `serve` and returns it with the first line it prints.
fn start_serve(data_dir: &Path) -> (Child, String) {
    let mut child = switchboard()
        .args(["serve", "--membership-ttl-secs", "2", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .spawn()
        .expect("serve starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().expect("serve prints a line").expect("utf-8");
    let second = lines.next().expect("serve prints the membership count").expect("utf-8");
    assert!(second.contains("1 live node"), "the node sees itself in the membership view: {second}");
    std::thread::spawn(move || for _ in lines {});
    (child, first)
}

#[test]
fn serve_runs_keeps_its_node_id_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut child, first) = start_serve(dir.path());
    assert!(first.contains("on the embedded store"), "{first}");
    let node_id = std::fs::read_to_string(dir.path().join("node-id")).expect("node id written");
    assert!(first.contains(node_id.trim()), "serve names its node: {first}");
    terminate(&mut child);

    // A second start reuses the store and the node id.
    let (mut child, first) = start_serve(dir.path());
    assert!(first.contains(node_id.trim()), "the node id is stable across restarts: {first}");
    terminate(&mut child);
}

#[test]
fn bad_store_flag_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = switchboard()
        .args(["backup", "--offline", "--out", "x.sb", "--store", "mysql://db", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--store") && stderr.contains("mysql://db"), "{stderr}");

    // Without --offline the backup comes from a server, so an etcd --store is a mistake.
    let output = switchboard()
        .args(["backup", "--out", "x.sb", "--store", "etcd://127.0.0.1:2379"])
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--offline"), "{stderr}");
}

/// embedded -> file -> etcd -> file, through the binary: the same keys and values.
#[test]
fn backup_restore_roundtrip_embedded_to_etcd() {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let store =
            EmbeddedStore::open(EmbeddedOptions::new(dir.path().join("store.redb"))).await.expect("open");
        for chunk in 0..4 {
            let ops = (0..50).map(|i| {
                let n = chunk * 50 + i;
                TxnOp::put(format!("config/items/public/g/d{n:03}"), vec![(n % 256) as u8; 10 + n])
            });
            store.txn(Txn::new().and_then(ops)).await.expect("txn");
        }
        store.put(b"kv/binary", &[0, 255, 1, 254], None).await.expect("put");
        let lease = store.lease_grant(60).await.expect("lease");
        store.put(b"nodes/n1", b"ephemeral", Some(lease.id)).await.expect("leased put");
        store.close().await;
    });

    let from_embedded = dir.path().join("embedded.sb");
    let out = run_ok(
        switchboard()
            .args(["backup", "--offline", "--out"])
            .arg(&from_embedded)
            .arg("--data-dir")
            .arg(dir.path()),
    );
    assert!(out.contains("backed up 201 keys"), "{out}");

    let prefix = format!("/sbtest-cli/{}/", std::process::id());
    let etcd = format!("etcd://{}", etcd_endpoint());
    let out = run_ok(
        switchboard()
            .args(["restore", "--store", &etcd, "--root-prefix", &prefix, "--in"])
            .arg(&from_embedded)
            .arg("--data-dir")
            .arg(dir.path()),
    );
    assert!(out.contains("restored 201 keys"), "{out}");

    // A second restore into the now non-empty etcd prefix is refused.
    let output = switchboard()
        .args(["restore", "--store", &etcd, "--root-prefix", &prefix, "--in"])
        .arg(&from_embedded)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .expect("runs");
    assert!(!output.status.success(), "restore into a non-empty store fails");
    assert!(String::from_utf8_lossy(&output.stderr).contains("not empty"));

    let from_etcd = dir.path().join("etcd.sb");
    run_ok(
        switchboard()
            .args(["backup", "--offline", "--store", &etcd, "--root-prefix", &prefix, "--out"])
            .arg(&from_etcd)
            .arg("--data-dir")
            .arg(dir.path()),
    );
    let (a, b) = runtime.block_on(async {
        (
            read_backup_file(&from_embedded).await.expect("read"),
            read_backup_file(&from_etcd).await.expect("read"),
        )
    });
    assert_eq!(a.1.len(), 201);
    assert_eq!(a.1, b.1, "identical keys and values after embedded -> file -> etcd -> file");
    assert!(!a.1.iter().any(|(k, _)| k.starts_with(b"nodes/")), "leased keys are not backed up");
}
