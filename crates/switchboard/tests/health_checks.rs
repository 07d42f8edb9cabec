//! End-to-end tests of active health checks through the real binary: gRPC
//! `grpc.health.v1` checks against a real tonic-health server, and Nacos's cluster
//! health-checker settings (`PUT /nacos/v1/ns/cluster`).

mod common;

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{client, start_with, Server};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

struct Api<'a> {
    http: Client,
    server: &'a Server,
    token: String,
}

impl Api<'_> {
    async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> (StatusCode, Value) {
        let request = self.http.request(method, self.server.url(path)).bearer_auth(&self.token);
        self.send(request.header("content-type", "application/json").body(body.to_string())).await
    }

    /// A Nacos 1.x call with form parameters, as the SDKs send them.
    async fn nacos(&self, method: reqwest::Method, path: &str, form: &[(&str, &str)]) -> (StatusCode, Value) {
        let mut form = form.to_vec();
        form.push(("accessToken", &self.token));
        self.send(self.http.request(method, self.server.url(path)).form(&form)).await
    }

    /// The health of the one instance of a native service.
    async fn healthy(&self, service: &str) -> bool {
        let path = format!("/api/v1/namespaces/public/services/{service}/instances");
        let (_, list) = self.call(reqwest::Method::GET, &path, Value::Null).await;
        list["instances"][0]["healthy"].as_bool().unwrap_or_else(|| panic!("one instance: {list}"))
    }

    async fn wait_healthy(&self, service: &str, want: bool) {
        for _ in 0..100 {
            if self.healthy(service).await == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{service}: the instance did not become healthy={want} within 10 s");
    }

    async fn stays_healthy(&self, service: &str, for_ms: u64) {
        for _ in 0..for_ms / 100 {
            assert!(self.healthy(service).await, "{service}: the instance stays healthy");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Reconcile every 100 ms and probe clusters set through Nacos every 150 ms.
const FAST_NACOS_CHECKS: [&str; 6] =
    ["--dns-listen", "off", "--health-reconcile-ms", "100", "--nacos-check-interval-ms", "150"];

/// A real `grpc.health.v1` server (tonic-health) on a free loopback port.
async fn grpc_health_server() -> (tonic_health::server::HealthReporter, u16) {
    let (reporter, service) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming));
    (reporter, port)
}

#[tokio::test]
async fn a_grpc_check_follows_the_targets_serving_status() {
    let (_dir, server, token) = start_with(&["--dns-listen", "off", "--health-reconcile-ms", "100"]);
    let api = Api { http: client(), server: &server, token };
    let (reporter, port) = grpc_health_server().await;
    reporter.set_service_status("pkg.Orders", tonic_health::ServingStatus::Serving).await;
    let body = json!({"ip": "127.0.0.1", "port": port, "ephemeral": false});
    let (code, answer) =
        api.call(reqwest::Method::POST, "/api/v1/namespaces/public/services/orders/instances", body).await;
    assert!(code.is_success(), "{answer}");
    let check_path = format!("/api/v1/namespaces/public/services/orders/instances/127.0.0.1:{port}/check");

    let (code, answer) =
        api.call(reqwest::Method::PUT, &check_path, json!({"kind": "grpc", "service": "bad name"})).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["error"]["field"], "service", "{answer}");

    let check = json!({"kind": "grpc", "service": "pkg.Orders", "interval_ms": 150, "timeout_ms": 140,
                       "healthy_threshold": 1, "unhealthy_threshold": 2});
    let (code, answer) = api.call(reqwest::Method::PUT, &check_path, check).await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    assert_eq!(answer["check"]["kind"], "grpc");
    assert_eq!(answer["check"]["service"], "pkg.Orders");

    api.stays_healthy("orders", 600).await;
    reporter.set_service_status("pkg.Orders", tonic_health::ServingStatus::NotServing).await;
    api.wait_healthy("orders", false).await;
    reporter.set_service_status("pkg.Orders", tonic_health::ServingStatus::Serving).await;
    api.wait_healthy("orders", true).await;
    // A service the target does not know answers NOT_FOUND: unhealthy.
    let check = json!({"kind": "grpc", "service": "pkg.Unknown", "interval_ms": 150, "timeout_ms": 140,
                       "healthy_threshold": 1, "unhealthy_threshold": 2});
    let (code, answer) = api.call(reqwest::Method::PUT, &check_path, check).await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    api.wait_healthy("orders", false).await;
}

async fn flapping_target(status: Arc<AtomicU16>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let status = status.load(Ordering::SeqCst);
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 1024];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                // The checker's configured header must arrive.
                let text = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                let status = if text.contains("x-probe: yes") { status } else { 400 };
                let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn nacos_cluster_health_checkers_drive_the_checks_and_show_in_the_service_detail() {
    let (_dir, server, token) = start_with(&FAST_NACOS_CHECKS);
    let api = Api { http: client(), server: &server, token };
    let status = Arc::new(AtomicU16::new(200));
    let port = flapping_target(status.clone()).await;
    let port_text = port.to_string();
    let instance = [
        ("serviceName", "legacy"),
        ("ip", "127.0.0.1"),
        ("port", port_text.as_str()),
        ("clusterName", "c1"),
        ("ephemeral", "false"),
    ];
    let (code, answer) = api.nacos(reqwest::Method::POST, "/nacos/v1/ns/instance", &instance).await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    let cluster = |checker: &'static str| {
        vec![("serviceName", "legacy"), ("clusterName", "c1"), ("healthChecker", checker)]
    };

    // Bad settings: Nacos's 400 with a plain-text reason.
    for (form, reason) in [
        (cluster(r#"{"type":"MYSQL"}"#), "MYSQL"),
        (cluster("{not json"), "healthChecker"),
        (cluster(r#"{"type":"HTTP","expectedResponseCode":700}"#), "expectedResponseCode"),
        (
            vec![("serviceName", "nope"), ("clusterName", "c1"), ("healthChecker", r#"{"type":"TCP"}"#)],
            "nope",
        ),
        (vec![("serviceName", "legacy"), ("clusterName", "c1")], "healthChecker"),
    ] {
        let (code, answer) = api.nacos(reqwest::Method::PUT, "/nacos/v1/ns/cluster", &form).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{form:?}: {answer}");
        assert!(answer.as_str().is_some_and(|a| a.contains(reason)), "{form:?}: {answer}");
    }

    // With no settings, the Nacos default TCP check: a 503 from the target does not matter.
    status.store(503, Ordering::SeqCst);
    api.stays_healthy("legacy", 700).await;

    // An HTTP checker with a header: the 503 now makes the instance unhealthy, and a 200
    // healthy again.
    let http = r#"{"type":"HTTP","path":"/health","headers":"X-Probe:yes","expectedResponseCode":200}"#;
    let mut form = cluster(http);
    form.extend([("checkPort", "80"), ("useInstancePort4Check", "true"), ("metadata", "zone=a")]);
    let (code, answer) = api.nacos(reqwest::Method::PUT, "/nacos/v1/ns/cluster", &form).await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    assert_eq!(answer, "ok");
    let (code, detail) =
        api.nacos(reqwest::Method::GET, "/nacos/v1/ns/service", &[("serviceName", "legacy")]).await;
    assert_eq!(code, StatusCode::OK, "{detail}");
    let c1 = detail["clusters"].as_array().unwrap().iter().find(|c| c["name"] == "c1").cloned();
    let c1 = c1.unwrap_or_else(|| panic!("cluster c1 in {detail}"));
    assert_eq!(
        c1["healthChecker"],
        json!({"type": "HTTP", "path": "/health", "headers": "X-Probe:yes", "expectedResponseCode": 200}),
        "{detail}"
    );
    assert_eq!(c1["metadata"], json!({"zone": "a"}));
    assert_eq!(c1["useIPPort4Check"], true);
    api.wait_healthy("legacy", false).await;
    status.store(200, Ordering::SeqCst);
    api.wait_healthy("legacy", true).await;

    // NONE: the cluster is not probed, whatever the target answers.
    let (code, answer) =
        api.nacos(reqwest::Method::PUT, "/nacos/v1/ns/cluster", &cluster(r#"{"type":"NONE"}"#)).await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    status.store(503, Ordering::SeqCst);
    api.stays_healthy("legacy", 700).await;

    // TCP on a separate check port that nothing listens on: unhealthy.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let mut form = cluster(r#"{"type":"TCP"}"#);
    form.extend([("checkPort", closed.as_str()), ("useInstancePort4Check", "false")]);
    let (code, answer) = api.nacos(reqwest::Method::PUT, "/nacos/v1/ns/cluster", &form).await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    api.wait_healthy("legacy", false).await;
    let (_, detail) =
        api.nacos(reqwest::Method::GET, "/nacos/v1/ns/service", &[("serviceName", "legacy")]).await;
    let c1 = detail["clusters"].as_array().unwrap().iter().find(|c| c["name"] == "c1").cloned().unwrap();
    assert_eq!(c1["healthChecker"], json!({"type": "TCP"}), "{detail}");
    assert_eq!(c1["checkPort"].to_string(), closed);
    assert_eq!(c1["useIPPort4Check"], false);

    // A check set on the instance through the native API wins over its cluster's settings.
    let check_path =
        format!("/api/v1/namespaces/public/services/legacy/instances/127.0.0.1:{port}/check?cluster=c1");
    let (code, answer) =
        api.call(reqwest::Method::PUT, &check_path, json!({"kind": "tcp", "interval_ms": 150})).await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    api.wait_healthy("legacy", true).await;
}

#[tokio::test]
async fn health_is_set_by_hand_only_while_nothing_probes_the_instance() {
    use reqwest::Method as M;
    let (_dir, server, token) = start_with(&FAST_NACOS_CHECKS);
    let api = Api { http: client(), server: &server, token };
    // A target that accepts TCP: a probe of it would find it healthy.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            drop(socket);
        }
    });
    let instance = |cluster: &'static str, port: &str, ephemeral: &'static str| {
        vec![
            ("serviceName", "manual".to_owned()),
            ("ip", "127.0.0.1".to_owned()),
            ("port", port.to_owned()),
            ("clusterName", cluster.to_owned()),
            ("ephemeral", ephemeral.to_owned()),
        ]
    };
    let form = |fields: &[(&'static str, String)], extra: &[(&'static str, &'static str)]| {
        let mut form: Vec<(&str, String)> = fields.to_vec();
        form.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        form
    };
    let nacos = async |method: M, path: &str, form: Vec<(&str, String)>| {
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        api.nacos(method, path, &form).await
    };

    // Probed by Nacos's default TCP check (cluster `probed` has no settings): refused.
    let probed = instance("probed", &port, "false");
    let (code, answer) = nacos(M::POST, "/nacos/v1/ns/instance", probed.clone()).await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    let (code, answer) =
        nacos(M::PUT, "/nacos/v1/ns/health/instance", form(&probed, &[("healthy", "false")])).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{answer}");
    let text = answer.as_str().unwrap_or_default();
    assert!(text.starts_with("caused: health check is still working") && text.contains("tcp"), "{answer}");
    let native = format!("/api/v1/namespaces/public/services/manual/instances/127.0.0.1:{port}/health");
    let (code, answer) =
        api.call(M::PUT, &format!("{native}?cluster=probed"), json!({"healthy": false})).await;
    assert_eq!((code, &answer["error"]["field"]), (StatusCode::BAD_REQUEST, &json!("healthy")), "{answer}");

    // Cluster `quiet` is not probed (NONE, set before its instances come): health is set by
    // hand, through either Nacos path (`healthy`, or the older `valid`), and stays.
    let none = vec![
        ("serviceName", "manual".to_owned()),
        ("clusterName", "quiet".to_owned()),
        ("healthChecker", r#"{"type":"NONE"}"#.to_owned()),
    ];
    let (code, answer) = nacos(M::PUT, "/nacos/v1/ns/cluster", none).await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    let quiet = instance("quiet", &port, "false");
    for fields in [quiet.clone(), instance("quiet", "9", "false")] {
        let (code, answer) = nacos(M::POST, "/nacos/v1/ns/instance", fields).await;
        assert_eq!(code, StatusCode::OK, "{answer}");
    }
    let health = async |path: &str| -> Vec<(u64, bool)> {
        let list = [("serviceName", "manual"), ("clusters", "quiet")];
        let (code, list) = api.nacos(M::GET, path, &list).await;
        assert_eq!(code, StatusCode::OK, "{list}");
        let mut hosts: Vec<(u64, bool)> = list["hosts"]
            .as_array()
            .unwrap_or_else(|| panic!("hosts in {list}"))
            .iter()
            .map(|h| (h["port"].as_u64().unwrap(), h["healthy"].as_bool().unwrap()))
            .collect();
        hosts.sort();
        hosts
    };
    let target: u64 = port.parse().unwrap();
    let (code, answer) =
        nacos(M::PUT, "/nacos/v1/ns/health/instance", form(&quiet, &[("healthy", "false")])).await;
    assert_eq!((code, answer), (StatusCode::OK, json!("ok")));
    for _ in 0..5 {
        assert_eq!(health("/nacos/v1/ns/instance/list").await, [(9, true), (target, false)]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, answer) = nacos(M::PUT, "/nacos/v1/ns/health", form(&quiet, &[("valid", "true")])).await;
    assert_eq!((code, answer), (StatusCode::OK, json!("ok")));
    assert_eq!(health("/nacos/v1/ns/instance/list").await, [(9, true), (target, true)]);
    // The native API, which answers the instance's revision.
    let (code, answer) =
        api.call(M::PUT, &format!("{native}?cluster=quiet"), json!({"healthy": false})).await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    assert!(answer["revision"].as_i64().is_some_and(|r| r > 0) && answer["healthy"] == false, "{answer}");
    assert_eq!(health("/nacos/v1/ns/instance/list").await, [(9, true), (target, false)]);

    // Bad input: a clear 400 (404 natively for an unknown instance), nothing changed.
    let (code, answer) =
        api.call(M::PUT, &format!("{native}?cluster=quiet"), json!({"healthy": "yes"})).await;
    assert_eq!((code, &answer["error"]["field"]), (StatusCode::BAD_REQUEST, &json!("healthy")), "{answer}");
    let (code, answer) = nacos(M::PUT, "/nacos/v1/ns/health/instance", quiet.clone()).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{answer}");
    assert!(answer.as_str().is_some_and(|a| a.contains("Param 'healthy' is required")), "{answer}");
    let unknown = instance("quiet", "10", "false");
    let (code, answer) =
        nacos(M::PUT, "/nacos/v1/ns/health/instance", form(&unknown, &[("healthy", "true")])).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{answer}");
    assert!(answer.as_str().is_some_and(|a| a.contains("is not registered")), "{answer}");
    let missing = "/api/v1/namespaces/public/services/manual/instances/127.0.0.1:10/health?cluster=quiet";
    assert_eq!(api.call(M::PUT, missing, json!({"healthy": true})).await.0, StatusCode::NOT_FOUND);
    let mut beating = instance("quiet", "11", "true");
    let (code, answer) = nacos(M::POST, "/nacos/v1/ns/instance", beating.clone()).await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    beating.push(("healthy", "false".to_owned()));
    let (code, answer) = nacos(M::PUT, "/nacos/v1/ns/health/instance", beating).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{answer}");
    assert!(answer.as_str().is_some_and(|a| a.contains("ephemeral")), "{answer}");
    assert_eq!(health("/nacos/v1/ns/instance/list").await, [(9, true), (11, true), (target, false)]);
}
