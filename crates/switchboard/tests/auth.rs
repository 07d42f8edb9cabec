//! Access control end to end against the real binary: a Nacos SDK with a username and
//! password, the attacks of the access-control issue, login backoff under a flood, and
//! that no secret reaches the logs.

mod common;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use common::{client, start_with, Server};

async fn call(
    server: &Server,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = client().request(method, server.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.header("content-type", "application/json").body(body.to_string());
    }
    request.send().await.expect("request")
}

/// A JSON call that must succeed; its body.
async fn ok(server: &Server, method: Method, path: &str, token: &str, body: Value) -> Value {
    let response = call(server, method, path, Some(token), Some(body)).await;
    let (status, value) = common::json_of(response).await;
    assert!(status.is_success(), "{path}: {status} {value}");
    value
}

async fn create_user(server: &Server, admin: &str, name: &str, password: &str, bindings: Value) {
    let body = json!({"name": name, "password": password, "bindings": bindings});
    ok(server, Method::POST, "/api/v1/auth/users", admin, body).await;
}

async fn status_and_text(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    (status, response.text().await.expect("body"))
}

#[tokio::test]
async fn nacos_sdk_with_username_and_password_does_naming_and_config() {
    let (dir, server, admin) = start_with(&[]);
    let password = "orders-App-pass-7731";
    let bindings = json!([
        {"role": "editor", "namespace": "dev"},
        {"role": "publisher", "namespace": "dev"},
    ]);
    create_user(&server, &admin, "orders-app", password, bindings).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/nacos/auth_sdk.py");
    let addr = server.base.trim_start_matches("http://").to_owned();
    let work = dir.path().join("sdk");
    std::fs::create_dir_all(&work).unwrap();
    let output = std::process::Command::new(common::nacos_python())
        .arg(script)
        .args([&addr, "orders-app", password, "dev", "prod"])
        .arg(&work)
        .output()
        .expect("the Nacos SDK script runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("OK"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    server.terminate();
}

/// A JWT with the given header, claims and signature bytes.
fn jwt(header: Value, claims: Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let head = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    format!("{head}.{}", URL_SAFE_NO_PAD.encode(sign(head.as_bytes())))
}

/// HMAC-SHA256 (RFC 2104), enough to forge what a Nacos server with its default key accepts.
fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let inner: Vec<u8> = block.iter().map(|b| b ^ 0x36).chain(message.iter().copied()).collect();
    let inner = Sha256::digest(&inner);
    let outer: Vec<u8> = block.iter().map(|b| b ^ 0x5c).chain(inner.iter().copied()).collect();
    Sha256::digest(&outer).to_vec()
}

/// Nacos's well-known default `token.secret.key` (alibaba/nacos#10060).
const NACOS_DEFAULT_KEY: &str = "SecretKey012345678901234567890123456789012345678901234567890123456789";

#[tokio::test]
async fn attacks_get_401_or_403_and_never_learn_whether_a_resource_exists() {
    let (_dir, server, admin) = start_with(&[]);
    // A config that exists in prod, and a user who may only read dev.
    let publish = client()
        .put(server.url("/api/v1/namespaces/prod/configs/DEFAULT_GROUP/db.yaml"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body(json!({"content": "password: hunter2", "format": "yaml"}).to_string())
        .send()
        .await
        .unwrap();
    assert!(publish.status().is_success(), "{}", publish.text().await.unwrap());
    create_user(
        &server,
        &admin,
        "dev-reader",
        "dev-Reader-pass-42",
        json!([{"role": "viewer", "namespace": "dev"}]),
    )
    .await;
    let minted =
        ok(&server, Method::POST, "/api/v1/auth/tokens", &admin, json!({"user": "dev-reader"})).await;
    let reader = minted["token"].as_str().unwrap().to_owned();

    let native = |name: &str| format!("/api/v1/namespaces/prod/configs/DEFAULT_GROUP/{name}");
    let nacos = |name: &str| format!("/nacos/v1/cs/configs?dataId={name}&group=DEFAULT_GROUP&tenant=prod");
    // The same answer for a config that exists and one that does not.
    let same_answer = |a: (StatusCode, String), b: (StatusCode, String), want: StatusCode, what: &str| {
        assert_eq!(a.0, want, "{what}: {}", a.1);
        assert_eq!(a, b, "{what}: the answer must not tell whether the config exists");
    };

    // No credentials.
    let exists = status_and_text(call(&server, Method::GET, &native("db.yaml"), None, None).await).await;
    let missing = status_and_text(call(&server, Method::GET, &native("nope.yaml"), None, None).await).await;
    same_answer(exists, missing, StatusCode::UNAUTHORIZED, "no credentials, native");
    let exists = status_and_text(call(&server, Method::GET, &nacos("db.yaml"), None, None).await).await;
    let missing = status_and_text(call(&server, Method::GET, &nacos("nope.yaml"), None, None).await).await;
    assert_eq!(exists.1, "unknown user!");
    same_answer(exists, missing, StatusCode::FORBIDDEN, "no credentials, Nacos");

    // A valid token for another namespace.
    let exists =
        status_and_text(call(&server, Method::GET, &native("db.yaml"), Some(&reader), None).await).await;
    let missing =
        status_and_text(call(&server, Method::GET, &native("nope.yaml"), Some(&reader), None).await).await;
    same_answer(exists, missing, StatusCode::FORBIDDEN, "another namespace's token, native");
    let with_token = |name: &str| format!("{}&accessToken={reader}", nacos(name));
    let exists = status_and_text(call(&server, Method::GET, &with_token("db.yaml"), None, None).await).await;
    let missing =
        status_and_text(call(&server, Method::GET, &with_token("nope.yaml"), None, None).await).await;
    assert_eq!(exists.1, "authorization failed!");
    same_answer(exists, missing, StatusCode::FORBIDDEN, "another namespace's token, Nacos");
    // ...while its own namespace answers.
    let own = call(&server, Method::GET, "/api/v1/namespaces/dev/configs", Some(&reader), None).await;
    assert_eq!(own.status(), StatusCode::OK);

    // Nacos's bypasses: the server User-Agent and forged serverIdentity headers.
    for (name, value) in
        [("user-agent", "Nacos-Server"), ("serverIdentity", "security"), ("nacos-server-identity", "x")]
    {
        let response = client().get(server.url(&nacos("db.yaml"))).header(name, value).send().await.unwrap();
        assert_eq!(
            status_and_text(response).await,
            (StatusCode::FORBIDDEN, "unknown user!".into()),
            "{name}"
        );
        let response = client().get(server.url(&native("db.yaml"))).header(name, value).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{name}");
    }

    // JWTs: alg none, and HS256 with Nacos's default key (raw and base64-decoded, as
    // Nacos uses it).
    let claims = json!({"sub": "nacos", "exp": 4_102_444_800u64});
    let none = jwt(json!({"alg": "none", "typ": "JWT"}), claims.clone(), |_| Vec::new());
    // Nacos base64-decodes the key; its 69 characters decode as their first 68.
    let decoded_key = base64::engine::general_purpose::STANDARD.decode(&NACOS_DEFAULT_KEY[..68]).unwrap();
    let forged = [
        none,
        jwt(json!({"alg": "HS256", "typ": "JWT"}), claims.clone(), |m| {
            hmac_sha256(NACOS_DEFAULT_KEY.as_bytes(), m)
        }),
        jwt(json!({"alg": "HS256"}), claims, |m| hmac_sha256(&decoded_key, m)),
    ];
    for token in &forged {
        let response = call(&server, Method::GET, &native("db.yaml"), Some(token), None).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let url = format!("{}&accessToken={token}", nacos("db.yaml"));
        let response = call(&server, Method::GET, &url, None, None).await;
        assert_eq!(status_and_text(response).await, (StatusCode::FORBIDDEN, "unknown user!".into()));
    }

    // An expired token.
    let short = ok(
        &server,
        Method::POST,
        "/api/v1/auth/tokens",
        &admin,
        json!({"user": "dev-reader", "ttl_secs": 1}),
    )
    .await;
    let short = short["token"].as_str().unwrap().to_owned();
    let dev_list = "/api/v1/namespaces/dev/configs";
    assert_eq!(call(&server, Method::GET, dev_list, Some(&short), None).await.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        call(&server, Method::GET, dev_list, Some(&short), None).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // A token replayed after its revoke: refused at once, native and Nacos.
    let id = minted["id"].as_str().unwrap();
    ok(&server, Method::DELETE, &format!("/api/v1/auth/tokens/{id}"), &admin, json!({})).await;
    assert_eq!(
        call(&server, Method::GET, dev_list, Some(&reader), None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let replay = format!("/nacos/v1/cs/configs?dataId=a&group=DEFAULT_GROUP&tenant=dev&accessToken={reader}");
    let response = call(&server, Method::GET, &replay, None, None).await;
    assert_eq!(status_and_text(response).await, (StatusCode::FORBIDDEN, "unknown user!".into()));

    // A login's session token, revoked by an admin.
    let login = json!({"username": "dev-reader", "password": "dev-Reader-pass-42"});
    let (status, session) =
        common::json_of(call(&server, Method::POST, "/api/v1/auth/login", None, Some(login)).await).await;
    assert_eq!(status, StatusCode::OK, "{session}");
    let session_token = session["token"].as_str().unwrap();
    assert_eq!(
        call(&server, Method::GET, dev_list, Some(session_token), None).await.status(),
        StatusCode::OK
    );
    let path = format!("/api/v1/auth/tokens/{}", session["token_id"].as_str().unwrap());
    ok(&server, Method::DELETE, &path, &admin, json!({})).await;
    assert_eq!(
        call(&server, Method::GET, dev_list, Some(session_token), None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    server.terminate();
}

/// A login from `address` (the server believes X-Forwarded-For from 127.0.0.1).
async fn login_from(server: &Server, address: &str, user: &str, password: &str) -> reqwest::Response {
    client()
        .post(server.url("/api/v1/auth/login"))
        .header("x-forwarded-for", address)
        .header("content-type", "application/json")
        .body(json!({"username": user, "password": password}).to_string())
        .send()
        .await
        .expect("login request")
}

fn rss_kib(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test]
async fn a_thousand_wrong_passwords_keep_the_server_responsive_and_never_lock_the_user_out() {
    let (dir, server, admin) = start_with(&[
        "--trusted-proxies",
        "127.0.0.1",
        "--login-backoff-base-ms",
        "50",
        "--login-backoff-max-ms",
        "2000",
        "--login-free-failures",
        "3",
        "--login-free-failures-per-address",
        "10",
    ]);
    let password =
        std::fs::read_to_string(dir.path().join("admin-password")).expect("admin-password").trim().to_owned();
    let attacker = "203.0.113.66";
    let before = rss_kib(&server);
    let (mut refused_early, mut wrong) = (0, 0);
    for batch in 0..20 {
        let logins = (0..50)
            .map(|i| login_from(&server, attacker, "admin", if i % 2 == 0 { "wrong-1" } else { "guess-2" }));
        for response in futures::future::join_all(logins).await {
            match response.status() {
                StatusCode::TOO_MANY_REQUESTS => {
                    assert!(response.headers().contains_key("retry-after"));
                    refused_early += 1;
                }
                StatusCode::UNAUTHORIZED => wrong += 1,
                other => panic!("a wrong password answered {other}"),
            }
        }
        // The server stays responsive during the flood.
        let health = client().get(server.url("/healthz")).send().await.unwrap();
        assert_eq!(health.status(), StatusCode::OK, "batch {batch}");
    }
    assert_eq!(refused_early + wrong, 1000);
    assert!(refused_early > 900, "the backoff refuses most attempts before hashing: {refused_early} of 1000");
    let after = rss_kib(&server);
    assert!(after < before + 100 * 1024, "memory stays bounded: {before} KiB before, {after} KiB after");

    // From the flooding address even the right password waits: once one more wrong guess
    // is let through (and hashed), the longest wait (2 s) starts again...
    loop {
        match login_from(&server, attacker, "admin", "wrong-4").await.status() {
            StatusCode::UNAUTHORIZED => break,
            StatusCode::TOO_MANY_REQUESTS => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("a wrong password answered {other}"),
        }
    }
    let early = login_from(&server, attacker, "admin", &password).await;
    assert_eq!(early.status(), StatusCode::TOO_MANY_REQUESTS);
    // ...while the owner, from another address, logs in at once: never a lockout per user.
    let owner = login_from(&server, "198.51.100.7", "admin", &password).await;
    assert_eq!(owner.status(), StatusCode::OK);
    // Once the wait passes, the right password works from the flooding address too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let response = login_from(&server, attacker, "admin", &password).await;
        if response.status() == StatusCode::OK {
            break;
        }
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(tokio::time::Instant::now() < deadline, "the right password works once the backoff passes");
    }

    // Admins see the backoff and clear it.
    for _ in 0..6 {
        login_from(&server, "192.0.2.9", "admin", "wrong-3").await;
    }
    let (_, listed) =
        common::json_of(call(&server, Method::GET, "/api/v1/auth/backoff", Some(&admin), None).await).await;
    let entries = listed["entries"].as_array().unwrap();
    assert!(entries.len() <= 6, "bounded: one entry per pair and per address: {listed}");
    assert!(entries.iter().any(|e| e["address"] == "192.0.2.9"), "{listed}");
    assert_eq!(
        login_from(&server, "192.0.2.9", "admin", &password).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let cleared = client()
        .delete(server.url("/api/v1/auth/backoff?address=192.0.2.9"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(cleared.status(), StatusCode::OK);
    assert_eq!(login_from(&server, "192.0.2.9", "admin", &password).await.status(), StatusCode::OK);
    server.terminate();
}

#[tokio::test]
async fn no_password_or_token_reaches_the_logs_metrics_or_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Every module at debug: the widest log a node can write.
    let server = Server::start(dir.path(), |cmd| {
        cmd.env("SWITCHBOARD_LOG", "debug").args(["--login-free-failures", "1"]);
    });
    let admin = std::fs::read_to_string(dir.path().join("admin-token")).unwrap().trim().to_owned();
    let admin_password =
        std::fs::read_to_string(dir.path().join("admin-password")).unwrap().trim().to_owned();
    let user_password = "logs-Check-pass-8812";
    create_user(&server, &admin, "logger", user_password, json!([{"role": "editor", "namespace": "public"}]))
        .await;
    let minted = ok(&server, Method::POST, "/api/v1/auth/tokens", &admin, json!({"user": "logger"})).await;
    let api_token = minted["token"].as_str().unwrap().to_owned();
    let login = json!({"username": "logger", "password": user_password});
    let (_, session) =
        common::json_of(call(&server, Method::POST, "/api/v1/auth/login", None, Some(login)).await).await;
    let session_token = session["token"].as_str().unwrap().to_owned();
    let (_, nacos) = common::json_of(
        client()
            .post(server.url(&format!("/nacos/v1/auth/login?username=admin&password={admin_password}")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let nacos_token = nacos["accessToken"].as_str().unwrap().to_owned();
    let mut errors = Vec::new();
    // Successes and failures, with secrets in queries, forms, headers and bodies.
    let paths = [
        format!("/nacos/v1/cs/configs?dataId=a&group=g&accessToken={nacos_token}"),
        format!("/nacos/v1/cs/configs?dataId=a&group=g&username=logger&password={user_password}"),
        format!("/nacos/v1/cs/configs?dataId=a&group=g&username=logger&password={user_password}x"),
        format!("/nacos/v1/cs/configs?dataId=a&group=g&tenant=other&accessToken={session_token}"),
        format!("/nacos/v1/ns/nope?accessToken={api_token}"),
    ];
    for path in &paths {
        errors.push(client().get(server.url(path)).send().await.unwrap().text().await.unwrap());
    }
    let form = format!("dataId=b&group=g&content=x&username=logger&password={user_password}");
    let published = client()
        .post(server.url("/nacos/v1/cs/configs"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    errors.push(published.text().await.unwrap());
    for password in [user_password, "wrong-Password-123", "wrong-Password-123"] {
        let body = json!({"username": "logger", "password": password});
        errors.push(
            call(&server, Method::POST, "/api/v1/auth/login", None, Some(body)).await.text().await.unwrap(),
        );
    }
    let weak = json!({"name": "weakling", "password": "short1"});
    errors.push(
        call(&server, Method::POST, "/api/v1/auth/users", Some(&admin), Some(weak))
            .await
            .text()
            .await
            .unwrap(),
    );
    errors.push(
        call(&server, Method::GET, "/api/v1/kv/x", Some(&format!("{api_token}x")), None)
            .await
            .text()
            .await
            .unwrap(),
    );
    let metrics = client().get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let backup = client().get(server.url("/api/v1/admin/backup")).bearer_auth(&admin).send().await.unwrap();
    let backup = backup.text().await.unwrap();
    let pid = server.child.id();
    let stderr = server.stderr.clone();
    server.terminate();
    let logs = stderr.lock().unwrap().join("\n");
    assert!(logs.contains("login failed"), "the scenario ran with its logs captured (pid {pid})");
    let secrets = [
        admin.as_str(),
        admin_password.as_str(),
        user_password,
        api_token.as_str(),
        session_token.as_str(),
        nacos_token.as_str(),
    ];
    for secret in secrets {
        let short = &secret[..secret.len().min(12)];
        assert!(!logs.contains(secret), "a secret starting {short:?} is in the log");
        assert!(!metrics.contains(secret), "a secret starting {short:?} is in the metrics");
        assert!(!backup.contains(secret), "a secret starting {short:?} is in a backup");
        for error in &errors {
            assert!(!error.contains(secret), "a secret starting {short:?} is in an answer: {error}");
        }
    }
}

/// `switchboard <args>` with `stdin` piped in; its stdout, and the run must succeed.
fn cli_with_stdin(server: &Server, token: &str, args: &[&str], stdin: &str) -> String {
    use std::io::Write;
    let mut child = common::switchboard()
        .env("SWITCHBOARD_ENDPOINT", &server.base)
        .env("SWITCHBOARD_TOKEN", token)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary runs");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{args:?}: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

#[test]
fn the_cli_manages_users_roles_tokens_and_namespaces() {
    let (_dir, server, admin) = start_with(&[]);
    let cli = |args: &[&str]| common::cli_ok(&server.base, &admin, args);
    let password = "cli-User-pass-5521\n";
    cli_with_stdin(&server, &admin, &["auth", "user", "create", "carol", "--password-stdin"], password);
    let granted = cli(&["auth", "role", "grant", "editor", "--user", "carol", "-n", "dev"]);
    assert!(granted.contains("editor@dev"), "{granted}");
    assert!(cli(&["auth", "user", "ls"]).contains("editor@dev"));

    // Log in as carol and act as her.
    let session =
        cli_with_stdin(&server, "", &["auth", "login", "--user", "carol", "--password-stdin"], password);
    let session = session.trim().to_owned();
    assert!(session.starts_with("sbt_"), "{session}");
    let whoami = common::cli_ok(&server.base, &session, &["auth", "whoami", "-o", "json"]);
    let whoami: Value = serde_json::from_str(&whoami).unwrap();
    assert_eq!(whoami["name"], "carol");
    assert_eq!(whoami["global_admin"], false);

    // Custom roles, service accounts and their tokens.
    cli(&["auth", "role", "put", "lockers", "--perm", "lock:*", "--perm", "id:write:team-*"]);
    let roles = cli(&["auth", "role", "ls"]);
    assert!(roles.contains("lockers") && roles.contains("id:write:team-*"), "{roles}");
    cli(&["auth", "sa", "create", "batch-job"]);
    cli(&["auth", "role", "grant", "lockers", "--sa", "batch-job", "-n", "*"]);
    let minted = cli(&["auth", "token", "create", "--sa", "batch-job", "-o", "json"]);
    let minted: Value = serde_json::from_str(&minted).unwrap();
    let token = minted["token"].as_str().unwrap();
    let id = minted["id"].as_str().unwrap();
    let whoami = common::cli_ok(&server.base, token, &["auth", "whoami", "-o", "json"]);
    assert!(whoami.contains("batch-job") && whoami.contains("service_account"), "{whoami}");
    assert!(cli(&["auth", "token", "ls"]).contains(id));
    cli(&["auth", "token", "revoke", id]);
    let refused = common::switchboard()
        .env("SWITCHBOARD_ENDPOINT", &server.base)
        .env("SWITCHBOARD_TOKEN", token)
        .args(["auth", "whoami"])
        .output()
        .unwrap();
    assert!(!refused.status.success(), "a revoked token is refused");

    // Namespaces.
    cli(&["ns", "create", "team-a", "--display-name", "Team A", "--description", "the A team"]);
    let listed = cli(&["ns", "ls"]);
    assert!(listed.contains("team-a") && listed.contains("Team A") && listed.contains("public"), "{listed}");
    cli(&["ns", "rm", "team-a"]);
    assert!(!cli(&["ns", "ls"]).contains("team-a"));
    assert!(cli(&["auth", "backoff", "ls"]).contains("ADDRESS"));
    server.terminate();
}

/// Polls `check` every 50 ms until it holds, for at most 10 s.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what} did not happen within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn two_etcd_nodes_bootstrap_once_share_users_and_a_revoke_reaches_the_other_node() {
    let store = format!("etcd://{}", common::etcd_endpoint());
    let prefix = format!(
        "/t-auth-two-etcd-{}/",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    );
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let args = |node: &'static str| {
        let (store, prefix) = (store.clone(), prefix.clone());
        move |cmd: &mut std::process::Command| {
            cmd.args(["--store", &store, "--root-prefix", &prefix, "--node-id", node]);
        }
    };
    // Both start at once on an empty prefix: exactly one bootstraps.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Server::start(dir_a.path(), args("node-a")));
        let b = s.spawn(|| Server::start(dir_b.path(), args("node-b")));
        (a.join().unwrap(), b.join().unwrap())
    });
    let files: Vec<_> =
        [dir_a.path(), dir_b.path()].iter().filter(|d| d.join("admin-token").exists()).cloned().collect();
    assert_eq!(files.len(), 1, "exactly one node bootstraps the shared store");
    let admin = std::fs::read_to_string(files[0].join("admin-token")).unwrap().trim().to_owned();
    let password = std::fs::read_to_string(files[0].join("admin-password")).unwrap().trim().to_owned();
    // The node that did not bootstrap learns the admin token through its view, a moment later.
    for (name, node) in [("A", &a), ("B", &b)] {
        eventually(&format!("node {name} to accept the admin token"), async || {
            call(node, Method::GET, "/api/v1/auth/whoami", Some(&admin), None).await.status()
                == StatusCode::OK
        })
        .await;
    }

    // A user created through A logs in through B.
    create_user(&a, &admin, "shared", "shared-User-pass-31", json!([{"role": "viewer", "namespace": "*"}]))
        .await;
    let login = json!({"username": "shared", "password": "shared-User-pass-31"});
    eventually("node B to know the user", async || {
        call(&b, Method::POST, "/api/v1/auth/login", None, Some(login.clone())).await.status()
            == StatusCode::OK
    })
    .await;
    let admin_login = json!({"username": "admin", "password": password});
    assert_eq!(
        call(&b, Method::POST, "/api/v1/auth/login", None, Some(admin_login)).await.status(),
        StatusCode::OK
    );

    // A token minted on A works on B; revoked on A, refused at once on A and soon on B.
    let minted = ok(&a, Method::POST, "/api/v1/auth/tokens", &admin, json!({"user": "shared"})).await;
    let token = minted["token"].as_str().unwrap().to_owned();
    let whoami = "/api/v1/auth/whoami";
    eventually("node B to accept the token", async || {
        call(&b, Method::GET, whoami, Some(&token), None).await.status() == StatusCode::OK
    })
    .await;
    let path = format!("/api/v1/auth/tokens/{}", minted["id"].as_str().unwrap());
    ok(&a, Method::DELETE, &path, &admin, json!({})).await;
    assert_eq!(call(&a, Method::GET, whoami, Some(&token), None).await.status(), StatusCode::UNAUTHORIZED);
    eventually("node B to refuse the revoked token", async || {
        call(&b, Method::GET, whoami, Some(&token), None).await.status() == StatusCode::UNAUTHORIZED
    })
    .await;
    a.terminate();
    b.terminate();
}

#[tokio::test]
async fn nacos_console_namespaces_and_implicit_namespaces() {
    let (_dir, server, admin) = start_with(&[]);
    let nacos = |method: Method, query: &str| {
        client()
            .request(method, server.url(&format!("/nacos/v1/console/namespaces?{query}")))
            .bearer_auth(&admin)
            .send()
    };
    let created =
        nacos(Method::POST, "customNamespaceId=team-b&namespaceName=Team%20B&namespaceDesc=b").await.unwrap();
    assert_eq!(status_and_text(created).await, (StatusCode::OK, "true".into()));
    let again = nacos(Method::POST, "customNamespaceId=team-b&namespaceName=x").await.unwrap();
    assert_eq!(again.status(), StatusCode::CONFLICT, "an id is created once");
    let updated =
        nacos(Method::PUT, "namespace=team-b&namespaceShowName=Team%20Bee&namespaceDesc=bee").await.unwrap();
    assert_eq!(status_and_text(updated).await, (StatusCode::OK, "true".into()));
    let (_, listed) = common::json_of(nacos(Method::GET, "").await.unwrap()).await;
    let data = listed["data"].as_array().unwrap();
    assert_eq!(data[0]["namespace"], "", "public comes first, as Nacos's empty id");
    let team = data.iter().find(|n| n["namespace"] == "team-b").expect("listed");
    assert_eq!((team["namespaceShowName"].as_str(), team["type"].as_i64()), (Some("Team Bee"), Some(2)));
    // A namespace never created is still usable through Nacos paths (implicit on first use).
    let publish = client()
        .post(server.url("/nacos/v1/cs/configs"))
        .bearer_auth(&admin)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("dataId=a.properties&group=DEFAULT_GROUP&tenant=never-created&content=k%3Dv")
        .send()
        .await
        .unwrap();
    assert_eq!(status_and_text(publish).await, (StatusCode::OK, "true".into()));
    let (_, described) =
        common::json_of(nacos(Method::GET, "show=all&namespaceId=team-b").await.unwrap()).await;
    assert_eq!(
        (described["namespace"].as_str(), described["namespaceDesc"].as_str()),
        (Some("team-b"), Some("bee"))
    );
    let deleted = nacos(Method::DELETE, "namespaceId=team-b").await.unwrap();
    assert_eq!(status_and_text(deleted).await, (StatusCode::OK, "true".into()));
    let (_, listed) = common::json_of(nacos(Method::GET, "").await.unwrap()).await;
    assert!(listed["data"].as_array().unwrap().iter().all(|n| n["namespace"] != "team-b"));
    // Without credentials: Nacos's 403.
    let anonymous = client().get(server.url("/nacos/v1/console/namespaces")).send().await.unwrap();
    assert_eq!(status_and_text(anonymous).await, (StatusCode::FORBIDDEN, "unknown user!".into()));
    server.terminate();
}

#[tokio::test]
async fn roles_split_edit_publish_and_register_through_every_kind_of_namespace_parameter() {
    let (_dir, server, admin) = start_with(&[]);
    let mut tokens = std::collections::HashMap::new();
    for (name, role) in [("ed", "editor"), ("pub", "publisher"), ("reg", "registrar"), ("view", "viewer")] {
        let password = format!("{name}-Role-pass-4410");
        create_user(&server, &admin, name, &password, json!([{"role": role, "namespace": "dev"}])).await;
        let minted = ok(&server, Method::POST, "/api/v1/auth/tokens", &admin, json!({"user": name})).await;
        tokens.insert(name, minted["token"].as_str().unwrap().to_owned());
    }
    let item = "/api/v1/namespaces/dev/configs/DEFAULT_GROUP/app.yaml";
    let publish = json!({"content": "v: 1\n", "format": "yaml"});
    let gray = json!({"content": "v: 2\n", "ips": ["10.9.9.9"]});
    let status = async |method: Method, path: &str, who: &str, body: Option<Value>| {
        call(&server, method, path, Some(tokens[who].as_str()), body).await.status()
    };
    // Publishing to everyone is the publisher's; a canary to selected clients is the editor's.
    assert_eq!(status(Method::PUT, item, "ed", Some(publish.clone())).await, StatusCode::FORBIDDEN);
    assert_eq!(status(Method::PUT, item, "pub", Some(publish)).await, StatusCode::OK);
    let gray_path = format!("{item}/gray");
    assert_eq!(status(Method::PUT, &gray_path, "pub", Some(gray.clone())).await, StatusCode::FORBIDDEN);
    assert_eq!(status(Method::PUT, &gray_path, "ed", Some(gray)).await, StatusCode::OK);
    let promote = format!("{item}/promote");
    assert_eq!(status(Method::POST, &promote, "ed", None).await, StatusCode::FORBIDDEN);
    assert_eq!(status(Method::POST, &promote, "pub", None).await, StatusCode::OK);
    assert_eq!(status(Method::GET, item, "view", None).await, StatusCode::OK);
    assert_eq!(
        status(Method::GET, item, "reg", None).await,
        StatusCode::FORBIDDEN,
        "a registrar reads no config"
    );
    // The same item in another namespace: nobody.
    let prod = "/api/v1/namespaces/prod/configs/DEFAULT_GROUP/app.yaml";
    for who in ["ed", "pub", "view"] {
        assert_eq!(status(Method::GET, prod, who, None).await, StatusCode::FORBIDDEN, "{who}");
    }

    // Registration, by Nacos form fields (namespaceId in the body).
    let register = |who: &str, namespace: &str| {
        client()
            .post(server.url("/nacos/v1/ns/instance"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("serviceName=orders&ip=10.0.0.7&port=80&ephemeral=false&namespaceId={namespace}&accessToken={}", tokens[who]))
            .send()
    };
    assert_eq!(status_and_text(register("reg", "dev").await.unwrap()).await, (StatusCode::OK, "ok".into()));
    assert_eq!(register("reg", "prod").await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(register("view", "dev").await.unwrap().status(), StatusCode::FORBIDDEN);
    // A query namespace and a form namespace that disagree: both are checked.
    let smuggled = client()
        .post(server.url("/nacos/v1/ns/instance?namespaceId=dev"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "serviceName=orders&ip=10.0.0.8&port=80&namespaceId=prod&accessToken={}",
            tokens["reg"]
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(smuggled.status(), StatusCode::FORBIDDEN);
    // A Nacos listener naming another namespace's item in Listening-Configs.
    let listen = |tenant: &str| {
        let probe = format!("app.yaml\u{2}DEFAULT_GROUP\u{2}\u{2}{tenant}\u{1}");
        client()
            .post(server.url(&format!("/nacos/v1/cs/configs/listener?accessToken={}", tokens["view"])))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("Long-Pulling-Timeout", "500")
            .body(format!("Listening-Configs={}", form_encode(&probe)))
            .send()
    };
    assert_eq!(listen("dev").await.unwrap().status(), StatusCode::OK, "its own namespace");
    assert_eq!(listen("prod").await.unwrap().status(), StatusCode::FORBIDDEN);

    // Coordination by ?namespace=: locks are the editor's in dev only.
    let lock = |namespace: &str| format!("/api/v1/locks/job/acquire?namespace={namespace}");
    let acquire = json!({"ttl_secs": 10, "wait_ms": 0});
    assert_eq!(status(Method::POST, &lock("dev"), "ed", Some(acquire.clone())).await, StatusCode::OK);
    assert_eq!(status(Method::POST, &lock("prod"), "ed", Some(acquire.clone())).await, StatusCode::FORBIDDEN);
    assert_eq!(status(Method::POST, &lock("dev"), "view", Some(acquire)).await, StatusCode::FORBIDDEN);
    server.terminate();
}

fn form_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}
