//! End-to-end tests of the Nacos 1.x config API against the real binary: raw HTTP
//! (configs, the listener's encoding and holds, history) and the real Nacos 1.x SDK
//! (nacos-sdk-python's `NacosClient`) on the embedded store and on etcd.

mod common;

use std::time::Duration;

use common::Server;
use common::{client, json_of, start_with};
use reqwest::StatusCode;

fn nacos(server: &Server, path: &str, token: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    server.url(&format!("{path}{sep}accessToken={token}"))
}

#[tokio::test]
async fn config_nacos_api_configs_listener_and_history() {
    let (_dir, server, token) = start_with(&[]);
    let http = client();
    let publish = |content: &str, kind: &str| {
        http.post(nacos(&server, "/nacos/v1/cs/configs", &token))
            .form(&[
                ("dataId", "svc.json"),
                ("group", "G"),
                ("tenant", "dev"),
                ("content", content),
                ("type", kind),
            ])
            .send()
    };
    let response = publish("{\"a\":1}", "json").await.expect("publish");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "true");
    let response = publish("{\"a\":", "json").await.expect("publish");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let reason = response.text().await.unwrap();
    assert!(reason.contains("line 1 column 5"), "{reason}");
    let response = publish("x", "ini").await.expect("publish");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    let response = http
        .get(nacos(&server, "/nacos/v1/cs/configs?dataId=svc.json&group=G&tenant=dev", &token))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), StatusCode::OK);
    let md5 = response.headers()["content-md5"].to_str().unwrap().to_owned();
    assert_eq!(response.text().await.unwrap(), "{\"a\":1}");
    let response = http
        .get(nacos(&server, "/nacos/v1/cs/configs?dataId=nope&group=G", &token))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    // An empty tenant is `public`, as an absent one: published with `tenant=`, read without.
    let response = http
        .post(nacos(&server, "/nacos/v1/cs/configs", &token))
        .form(&[("dataId", "plain.txt"), ("group", "G"), ("tenant", ""), ("content", "p")])
        .send()
        .await
        .expect("publish");
    assert_eq!(response.status(), StatusCode::OK);
    let response = http
        .get(nacos(&server, "/nacos/v1/cs/configs?dataId=plain.txt&group=G", &token))
        .send()
        .await
        .expect("get");
    assert_eq!((response.status(), response.text().await.unwrap()), (StatusCode::OK, "p".to_owned()));
    let native = http.get(server.url("/api/v1/namespaces/public/configs/G/plain.txt")).bearer_auth(&token);
    assert_eq!(native.send().await.expect("get").status(), StatusCode::OK);

    // Listener: a stale md5 answers at once, in Nacos's encoding.
    let listen = |probe: String, timeout_ms: u64| {
        http.post(nacos(&server, "/nacos/v1/cs/configs/listener", &token))
            .header("Long-Pulling-Timeout", timeout_ms.to_string())
            .form(&[("Listening-Configs", probe)])
            .send()
    };
    let stale = "svc.json\u{2}G\u{2}old\u{2}dev\u{1}".to_owned();
    let response = listen(stale, 30_000).await.expect("listen");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "svc.json%02G%02dev%01");
    // Up to date: held until the timeout (less Nacos's 500 ms margin), then empty.
    let current = format!("svc.json\u{2}G\u{2}{md5}\u{2}dev\u{1}");
    let response = listen(current.clone(), 1_000).await.expect("listen");
    assert_eq!(response.text().await.unwrap(), "");
    // No hang-up (a client's first poll): answered at once even when nothing changed.
    let response = http
        .post(nacos(&server, "/nacos/v1/cs/configs/listener", &token))
        .header("Long-Pulling-Timeout", "30000")
        .header("Long-Pulling-Timeout-No-Hangup", "true")
        .form(&[("Listening-Configs", current.clone())])
        .send();
    let response =
        tokio::time::timeout(Duration::from_secs(5), response).await.expect("not held").expect("listen");
    assert_eq!(response.text().await.unwrap(), "");
    // Up to date, then a publish: the held poll answers with the key.
    let held = tokio::spawn(listen(current, 20_000));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let response = publish("{\"a\":2}", "json").await.expect("publish");
    assert_eq!(response.status(), StatusCode::OK);
    let response = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("the held poll answers on the change")
        .expect("task")
        .expect("listen");
    assert_eq!(response.text().await.unwrap(), "svc.json%02G%02dev%01");
    let metrics = http.get(server.url("/metrics")).send().await.expect("metrics").text().await.unwrap();
    assert!(metrics.contains("switchboard_config_items 2"), "{metrics}");
    assert!(metrics.contains("switchboard_config_long_polls 0"), "{metrics}");
    // Malformed bodies are 400s, never hangs.
    for probe in ["", "only-two\u{2}fields\u{1}", "a/b\u{2}G\u{2}x\u{1}"] {
        let response = listen(probe.to_owned(), 30_000).await.expect("listen");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{probe:?}");
    }

    // History: a page, one entry by nid, and the previous one.
    let response = http
        .get(nacos(
            &server,
            "/nacos/v1/cs/history?search=accurate&dataId=svc.json&group=G&tenant=dev",
            &token,
        ))
        .send()
        .await
        .expect("history");
    let (status, page) = json_of(response).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["totalCount"], 2);
    assert_eq!(page["pageNumber"], 1);
    assert_eq!(page["pagesAvailable"], 1);
    let newest = page["pageItems"][0]["id"].as_str().expect("id").to_owned();
    let oldest = page["pageItems"][1]["id"].as_str().expect("id").to_owned();
    assert_eq!(page["pageItems"][0]["opType"], "U ");
    assert_eq!(page["pageItems"][1]["opType"], "I ");
    assert_eq!(page["pageItems"][0]["tenant"], "dev");
    let response = http
        .get(nacos(
            &server,
            &format!("/nacos/v1/cs/history?nid={oldest}&dataId=svc.json&group=G&tenant=dev"),
            &token,
        ))
        .send()
        .await
        .expect("detail");
    let (status, entry) = json_of(response).await;
    assert_eq!(status, StatusCode::OK, "{entry}");
    assert_eq!(entry["content"], "{\"a\":1}");
    let response = http
        .get(nacos(
            &server,
            &format!("/nacos/v1/cs/history/previous?id={newest}&dataId=svc.json&group=G&tenant=dev"),
            &token,
        ))
        .send()
        .await
        .expect("previous");
    let (status, previous) = json_of(response).await;
    assert_eq!(status, StatusCode::OK, "{previous}");
    assert_eq!(previous["id"], oldest.as_str());

    let response = http
        .delete(nacos(&server, "/nacos/v1/cs/configs?dataId=svc.json&group=G&tenant=dev", &token))
        .send()
        .await
        .expect("delete");
    assert_eq!(response.text().await.unwrap(), "true");
    server.terminate();
}

/// Runs `tests/nacos/config_sdk.py` with the real Nacos 1.x SDK against a node.
fn run_nacos_sdk(server: &Server, token: &str, namespace: &str) {
    let work = tempfile::tempdir().expect("temp dir");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/nacos/config_sdk.py");
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut child = std::process::Command::new(common::nacos_python())
        .arg(script)
        .args([address.as_str(), token, namespace])
        .arg(work.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the Nacos SDK's python runs");
    let status = common::wait_with_timeout(&mut child, Duration::from_secs(60));
    let output = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(status.success() && stdout.contains("ALL OK"), "the Nacos SDK run failed:\n{stdout}\n{stderr}");
}

#[test]
fn config_nacos_sdk_publish_get_listen_delete_embedded() {
    let (_dir, server, token) = start_with(&[]);
    run_nacos_sdk(&server, &token, "");
    run_nacos_sdk(&server, &token, "dev");
    server.terminate();
}

#[test]
fn config_nacos_sdk_publish_get_listen_delete_on_etcd() {
    let endpoint = common::etcd_endpoint();
    let prefix = format!("/t-config-sdk-{}/", rand::random::<u32>());
    let store = format!("etcd://{endpoint}");
    let (_dir, server, token) = start_with(&["--store", &store, "--root-prefix", &prefix]);
    run_nacos_sdk(&server, &token, "");
    run_nacos_sdk(&server, &token, "prod");
    server.terminate();
}
