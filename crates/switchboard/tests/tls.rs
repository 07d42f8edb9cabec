//! TLS end to end, through the real binary, with certificates made at test time (rcgen):
//! HTTPS with a CA, certificate reload for new connections while an old one stays up
//! (file change and SIGHUP), a bad reload keeping the old certificate, mTLS, bad
//! certificates at start, the CLI's --cacert/--cert/--key, and the etcd connection over TLS.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{switchboard, wait_for_line, Server};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use reqwest::StatusCode;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A test CA that signs leaf certificates.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf certificate and its key, as PEM.
struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let pem = params.self_signed(&key).expect("CA cert").pem();
        Ca { pem, issuer: Issuer::new(params, key) }
    }

    fn leaf(&self, cn: &str, names: &[&str], usage: ExtendedKeyUsagePurpose, expired: bool) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert").pem();
        Leaf { cert, key: key.serialize_pem() }
    }

    fn server(&self) -> Leaf {
        self.leaf("switchboard", &["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth, false)
    }

    fn client(&self, cn: &str) -> Leaf {
        self.leaf(cn, &[], ExtendedKeyUsagePurpose::ClientAuth, false)
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    // Write then rename, as a certificate manager would, so a poll never sees half a file.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, &path).expect("rename");
    path
}

/// An HTTPS client trusting `ca` only, presenting `identity` when given.
fn https_client(ca: &str, identity: Option<&Leaf>) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA cert");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some(leaf) => {
            let chain =
                CertificateDer::pem_slice_iter(leaf.cert.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
            let key = PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).expect("client auth")
        }
    };
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// A node serving HTTPS with `leaf`, with extra flags.
fn start_tls(dir: &Path, leaf: &Leaf, extra: &[&str]) -> (Server, PathBuf, PathBuf) {
    let cert = write(dir, "server.crt", &leaf.cert);
    let key = write(dir, "server.key", &leaf.key);
    let data = dir.join("data");
    let server = Server::start(&data, |cmd| {
        cmd.arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .args(extra)
            .env("SWITCHBOARD_LOG", "info");
    });
    (server, cert, key)
}

async fn healthz(client: &reqwest::Client, server: &Server) -> Result<StatusCode, reqwest::Error> {
    client.get(server.url("/healthz")).send().await.map(|r| r.status())
}

/// Polls until a fresh client trusting `ca` gets an answer (the reload happened).
async fn wait_until_served_by(ca: &str, server: &Server) {
    for _ in 0..100 {
        if healthz(&https_client(ca, None), server).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the new certificate was not served within 10 s; stderr: {:#?}", server.stderr.lock().unwrap());
}

#[tokio::test]
async fn tls_serves_https_and_a_reload_reaches_new_connections_while_old_ones_stay_up() {
    let dir = tempfile::tempdir().unwrap();
    let ca1 = Ca::new("ca one");
    let (server, cert_path, key_path) =
        start_tls(dir.path(), &ca1.server(), &["--tls-reload-interval-ms", "200"]);
    assert!(server.base.starts_with("https://127.0.0.1:"), "serve prints the https URL: {}", server.base);
    let token = server.printed_token().expect("token");

    // A client with the CA: the probes and the authenticated API answer over TLS.
    let old = https_client(&ca1.pem, None);
    assert_eq!(healthz(&old, &server).await.unwrap(), StatusCode::OK);
    let put =
        old.put(server.url("/api/v1/kv/tls/a")).bearer_auth(&token).body("secret").send().await.unwrap();
    assert_eq!(put.status(), StatusCode::OK, "{}", put.text().await.unwrap());
    // A client that does not trust the CA is refused; plain HTTP gets no answer.
    let stranger = https_client(&Ca::new("other").pem, None);
    assert!(healthz(&stranger, &server).await.is_err(), "a client without the CA must fail the handshake");
    let plain_url = server.base.replacen("https://", "http://", 1) + "/healthz";
    let plain = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    assert!(plain.get(plain_url).send().await.is_err(), "plain HTTP is not served on a TLS listener");

    // curl with --cacert (scripts/test installs curl): the probe and the API, with the token.
    let ca_file = write(dir.path(), "ca1-curl.pem", &ca1.pem);
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "10", "--cacert"])
            .arg(&ca_file)
            .args(args)
            .output()
            .expect("curl runs (scripts/test installs it)");
        assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    curl(&[&server.url("/healthz")]);
    let auth = format!("Authorization: Bearer {token}");
    let body = curl(&["-H", &auth, &server.url("/api/v1/kv/tls/a")]);
    assert!(body.contains("\"key\"") || body.contains("secret"), "{body}");

    // The CLI with --cacert.
    let data = dir.path().join("data");
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["kv", "get", "tls/a", "-o", "json", "--endpoint", &server.base, "--cacert"])
        .arg(write(dir.path(), "ca1.pem", &ca1.pem))
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("secret"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["kv", "get", "tls/a", "--endpoint", &server.base, "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--cacert"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Replace the files with a certificate from another CA: new connections get it.
    let ca2 = Ca::new("ca two");
    let leaf2 = ca2.server();
    write(dir.path(), "server.key", &leaf2.key);
    assert_eq!(key_path, dir.path().join("server.key"));
    write(dir.path(), "server.crt", &leaf2.cert);
    assert_eq!(cert_path, dir.path().join("server.crt"));
    wait_until_served_by(&ca2.pem, &server).await;
    assert!(
        healthz(&https_client(&ca1.pem, None), &server).await.is_err(),
        "a new connection trusting only the old CA is refused: the new certificate is served"
    );
    // The old client's kept-alive connection (handshaken with the old certificate) still
    // works: a new connection from it would fail, as just shown.
    let get = old.get(server.url("/api/v1/kv/tls/a")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(get.status(), StatusCode::OK);
    assert_eq!(healthz(&old, &server).await.unwrap(), StatusCode::OK);
    server.terminate();
}

#[tokio::test]
async fn tls_reloads_on_sighup_and_a_bad_reload_keeps_the_old_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca1 = Ca::new("ca one");
    // No polling: only SIGHUP reloads.
    let (server, _, _) = start_tls(dir.path(), &ca1.server(), &["--tls-reload-interval-ms", "0"]);
    let hup = |server: &Server| {
        let status = Command::new("kill").arg("-HUP").arg(server.child.id().to_string()).status().unwrap();
        assert!(status.success());
    };

    // A key that does not match the certificate: refused, logged, the old one stays.
    let ca2 = Ca::new("ca two");
    let leaf2 = ca2.server();
    write(dir.path(), "server.crt", &leaf2.cert);
    write(dir.path(), "server.key", &ca2.server().key);
    hup(&server);
    wait_for_line(&server.stderr, "the failed reload", |lines| {
        lines.iter().find(|l| l.contains("TLS reload failed") && l.contains("does not match")).cloned()
    });
    assert_eq!(healthz(&https_client(&ca1.pem, None), &server).await.unwrap(), StatusCode::OK);
    assert!(healthz(&https_client(&ca2.pem, None), &server).await.is_err());

    // Without a signal nothing changes, even with good files in place.
    write(dir.path(), "server.key", &leaf2.key);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(healthz(&https_client(&ca2.pem, None), &server).await.is_err(), "no reload without SIGHUP");
    hup(&server);
    wait_until_served_by(&ca2.pem, &server).await;
    assert!(healthz(&https_client(&ca1.pem, None), &server).await.is_err());
    server.terminate();
}

#[tokio::test]
async fn tls_mtls_rejects_a_client_without_a_certificate_and_the_cn_authenticates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("server ca");
    let client_ca = Ca::new("client ca");
    let client_ca_path = write(dir.path(), "client-ca.pem", &client_ca.pem);
    let (server, _, _) =
        start_tls(dir.path(), &ca.server(), &["--tls-client-ca", client_ca_path.to_str().unwrap()]);
    let token = server.printed_token().expect("token");

    let anonymous = https_client(&ca.pem, None);
    assert!(healthz(&anonymous, &server).await.is_err(), "mTLS: no client certificate, no connection");
    let foreign = Ca::new("foreign").client("svc-orders");
    assert!(
        healthz(&https_client(&ca.pem, Some(&foreign)), &server).await.is_err(),
        "a client certificate from another CA is refused"
    );

    let identity = client_ca.client("svc-orders");
    let client = https_client(&ca.pem, Some(&identity));
    assert_eq!(healthz(&client, &server).await.unwrap(), StatusCode::OK);
    // A certificate's CN acts as the service account of that name: none yet, so refused...
    let put = client.put(server.url("/api/v1/kv/m/a")).body("v").send().await.unwrap();
    assert_eq!(put.status(), StatusCode::UNAUTHORIZED, "an unknown CN is no one");
    // ...and once the account exists, it may do what its role bindings allow.
    let admin = |method: reqwest::Method, path: &str, body: serde_json::Value| {
        client
            .request(method, server.url(path))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let created = admin(
        reqwest::Method::POST,
        "/api/v1/auth/service-accounts",
        serde_json::json!({"name": "svc-orders"}),
    )
    .await
    .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let put = client.put(server.url("/api/v1/kv/m/a")).body("v").send().await.unwrap();
    assert_eq!(put.status(), StatusCode::FORBIDDEN, "an account with no binding may do nothing");
    let role = serde_json::json!({"permissions": [{"kind": "kv", "action": "*"}]});
    assert!(admin(reqwest::Method::PUT, "/api/v1/auth/roles/kv-writer", role)
        .await
        .unwrap()
        .status()
        .is_success());
    let binding = serde_json::json!({"service_account": "svc-orders", "role": "kv-writer", "namespace": "*"});
    assert!(admin(reqwest::Method::POST, "/api/v1/auth/bindings", binding)
        .await
        .unwrap()
        .status()
        .is_success());
    // The certificate's CN authenticates a request without a token...
    let put = client.put(server.url("/api/v1/kv/m/a")).body("v").send().await.unwrap();
    assert_eq!(put.status(), StatusCode::OK, "{}", put.text().await.unwrap());
    // ...and bearer tokens keep working (a wrong one is still refused).
    let get = client.get(server.url("/api/v1/kv/m/a")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(get.status(), StatusCode::OK);
    let bad =
        client.get(server.url("/api/v1/kv/m/a")).bearer_auth("sbt_not-a-real-token").send().await.unwrap();
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);

    // The CLI with --cacert, --cert and --key.
    let cli = |extra: &[&Path]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        cmd.args([
            "kv",
            "get",
            "m/a",
            "-o",
            "json",
            "--endpoint",
            &server.base,
            "--token",
            &token,
            "--cacert",
        ])
        .arg(write(dir.path(), "ca.pem", &ca.pem));
        if let [cert, key] = extra {
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        cmd.output().unwrap()
    };
    let cert = write(dir.path(), "client.crt", &identity.cert);
    let key = write(dir.path(), "client.key", &identity.key);
    let out = cli(&[&cert, &key]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cli(&[]);
    assert!(!out.status.success(), "the CLI without --cert is refused by an mTLS server");
    server.terminate();
}

/// Starts `serve` with the given certificate files; it must fail, and its error is returned.
fn start_error(dir: &Path, cert: &Path, key: &Path) -> String {
    let out = switchboard()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"))
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "serve must refuse to start");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn tls_bad_certificates_at_start_are_clear_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let expired = ca.leaf("old", &["localhost"], ExtendedKeyUsagePurpose::ServerAuth, true);
    let cert = write(dir.path(), "expired.crt", &expired.cert);
    let key = write(dir.path(), "expired.key", &expired.key);
    let error = start_error(dir.path(), &cert, &key);
    assert!(error.contains(cert.to_str().unwrap()) && error.contains("expired"), "{error}");

    let good = ca.server();
    let cert = write(dir.path(), "good.crt", &good.cert);
    let other_key = write(dir.path(), "other.key", &ca.server().key);
    let error = start_error(dir.path(), &cert, &other_key);
    assert!(error.contains(other_key.to_str().unwrap()) && error.contains("does not match"), "{error}");

    let missing = dir.path().join("missing.key");
    let error = start_error(dir.path(), &cert, &missing);
    assert!(error.contains(missing.to_str().unwrap()) && error.contains("--tls-key"), "{error}");

    let garbage = write(dir.path(), "garbage.crt", "not a certificate");
    let key = write(dir.path(), "good.key", &good.key);
    let error = start_error(dir.path(), &garbage, &key);
    assert!(error.contains(garbage.to_str().unwrap()) && error.contains("no PEM certificate"), "{error}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An etcd of its own, started with client TLS and client-certificate auth; the node reaches
/// it with --etcd-cacert/--etcd-cert/--etcd-key, writes a key and reads it back.
#[tokio::test]
async fn etcd_tls_store_connection_with_client_certificates() {
    let etcd_bin = std::env::var("SB_TEST_ETCD_BIN")
        .expect("SB_TEST_ETCD_BIN is not set: run scripts/test, which sets it to the etcd binary");
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("etcd ca");
    let server_leaf = ca.server();
    let client_leaf = ca.client("switchboard");
    let ca_path = write(dir.path(), "etcd-ca.pem", &ca.pem);
    let server_cert = write(dir.path(), "etcd.crt", &server_leaf.cert);
    let server_key = write(dir.path(), "etcd.key", &server_leaf.key);
    let client_cert = write(dir.path(), "client.crt", &client_leaf.cert);
    let client_key = write(dir.path(), "client.key", &client_leaf.key);
    let (client_port, peer_port) = (free_port(), free_port());
    let client_url = format!("https://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let mut etcd = Command::new(etcd_bin)
        .arg("--data-dir")
        .arg(dir.path().join("etcd"))
        .args(["--name", "tls", "--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("tls={peer_url}")])
        .arg("--cert-file")
        .arg(&server_cert)
        .arg("--key-file")
        .arg(&server_key)
        .arg("--trusted-ca-file")
        .arg(&ca_path)
        .arg("--client-cert-auth")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd starts");
    let mut up = false;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", client_port)).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(up, "etcd did not listen within 10 s");
    let server = Server::start(&dir.path().join("data"), |cmd| {
        cmd.args(["--store", &format!("etcd://127.0.0.1:{client_port}"), "--root-prefix", "/t-etcd-tls/"])
            .arg("--etcd-cacert")
            .arg(&ca_path)
            .arg("--etcd-cert")
            .arg(&client_cert)
            .arg("--etcd-key")
            .arg(&client_key);
    });
    let token = server.printed_token().expect("token");
    let http = reqwest::Client::new();
    let put =
        http.put(server.url("/api/v1/kv/over/tls")).bearer_auth(&token).body("yes").send().await.unwrap();
    assert_eq!(put.status(), StatusCode::OK, "{}", put.text().await.unwrap());
    let get = http.get(server.url("/api/v1/kv/over/tls")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(get.status(), StatusCode::OK);
    assert!(get.text().await.unwrap().contains("yes"));
    server.terminate();
    let _ = etcd.kill();
    let _ = etcd.wait();
}
