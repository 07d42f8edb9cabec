//! The audit log end to end, against the real binary.
//!
//! `every_audited_route_writes_exactly_one_record` is generated from the route table: for
//! every route flagged `audited`, its sample (`audit_support/samples.rs`, keyed by `RouteId`) is sent, and
//! exactly one new record must appear, with the caller as actor, the route's action and
//! resource, the request's id, address and user agent, and the change's revision. A route
//! flagged audited without a sample fails the test, so a new route cannot skip its record.

mod common;
#[path = "audit_support/samples.rs"]
mod samples;

use common::{client, etcd_endpoint, start_with, Server};
use reqwest::Method;
use samples::{publish, sample_for, urlencode, Body, Rev, CFG, INSTANCES};
use sb_api::routes::{Method as RouteMethod, RouteId, ROUTES};
use serde_json::{json, Value};

const USER_AGENT: &str = "audit-coverage/1.0";
/// The subject of the bootstrap admin token.
const ADMIN: &str = "admin";

struct Harness {
    http: reqwest::Client,
    server: Server,
    token: String,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn request(&self, method: Method, path: &str, body: &Body, request_id: &str) -> reqwest::RequestBuilder {
        let builder = self
            .http
            .request(method, self.server.url(path))
            .bearer_auth(&self.token)
            .header("user-agent", USER_AGENT)
            .header("x-request-id", request_id);
        match body {
            Body::None => builder,
            Body::Json(value) => builder.header("content-type", "application/json").body(value.to_string()),
            Body::Text(text) => builder.body(text.clone()),
        }
    }

    /// A setup call; it must succeed. Answers its JSON (or Null for a plain answer).
    async fn call(&self, method: Method, path: &str, body: Body) -> Value {
        let response = self.request(method.clone(), path, &body, "setup").send().await.expect("request");
        let status = response.status();
        let text = response.text().await.expect("body");
        assert!(status.is_success(), "setup {method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// Every record after `after` (all of them without), following pages.
    async fn records_after(&self, after: Option<&str>) -> Vec<Value> {
        let mut records = Vec::new();
        let mut next = after.map(str::to_owned);
        loop {
            let mut path = "/api/v1/audit?limit=7".to_owned();
            if let Some(after) = &next {
                path.push_str(&format!("&after={after}"));
            }
            let page = self.call(Method::GET, &path, Body::None).await;
            records.extend(page["records"].as_array().expect("records").iter().cloned());
            match page["next"].as_str() {
                Some(token) => next = Some(token.to_owned()),
                None => return records,
            }
        }
    }

    async fn last_record(&self) -> Option<Value> {
        self.records_after(None).await.pop()
    }
}

fn start(args: &[&str]) -> Harness {
    let (dir, server, token) = start_with(args);
    Harness { http: client(), server, token, _dir: dir }
}

fn revision_of(value: &Value) -> Option<i64> {
    value.as_i64().or_else(|| value.as_str().and_then(|s| s.parse().ok()))
}

/// Whether a concrete path matches an axum template (`{x}` one segment, `{*x}` the rest).
fn matches_template(template: &str, path: &str) -> bool {
    let path = path.split('?').next().unwrap_or_default();
    let mut concrete = path.split('/');
    for part in template.split('/') {
        if part.starts_with("{*") {
            return concrete.next().is_some_and(|s| !s.is_empty());
        }
        match concrete.next() {
            Some(segment) if part.starts_with('{') => {
                if segment.is_empty() {
                    return false;
                }
            }
            Some(segment) if segment == part => {}
            _ => return false,
        }
    }
    concrete.next().is_none()
}

/// Sends a route's sample and checks the records it wrote: exactly one for an audited
/// route, none for an unaudited one.
async fn check_route(h: &Harness, id: RouteId, audited: bool) {
    let route = ROUTES.iter().find(|r| r.id == id).expect("a declared route");
    let Some(sample) = sample_for(h, id).await else {
        assert!(!audited, "{id:?} is audited but has no sample in tests/audit.rs: add one");
        return;
    };
    let method_matches = match route.method {
        RouteMethod::Get => sample.method == Method::GET,
        RouteMethod::Put => sample.method == Method::PUT,
        RouteMethod::Post => sample.method == Method::POST,
        RouteMethod::Delete => sample.method == Method::DELETE,
    };
    assert!(
        method_matches && matches_template(route.path, &sample.path),
        "the sample of {id:?} is not its route"
    );
    let before = h.last_record().await;
    let request_id = format!("audit-{id:?}");
    let response = h
        .request(sample.method.clone(), &sample.path, &sample.body, &request_id)
        .send()
        .await
        .expect("request");
    let status = response.status();
    let text = response.text().await.expect("body");
    assert!(status.is_success(), "{id:?}: {status} {text}");
    let before_id = before.as_ref().and_then(|r| r["id"].as_str());
    let new = h.records_after(before_id).await;
    if !audited {
        assert!(new.is_empty(), "{id:?} is not audited but wrote {new:#?}");
        return;
    }
    assert_eq!(new.len(), 1, "{id:?} must write exactly one record, wrote {new:#?}");
    let record = &new[0];
    assert_eq!(record["actor"], ADMIN, "{id:?}: {record}");
    assert_eq!(record["action"], sample.action, "{id:?}: {record}");
    let resource = record["resource"].as_str().unwrap_or_default();
    let resource_ok = if sample.resource.ends_with('/') {
        resource.starts_with(&sample.resource) && resource.len() > sample.resource.len()
    } else {
        resource == sample.resource
    };
    assert!(resource_ok, "{id:?}: resource {resource:?}, expected {:?}", sample.resource);
    assert_eq!(record["source_ip"], "127.0.0.1", "{id:?}: {record}");
    assert_eq!(record["user_agent"], USER_AGENT, "{id:?}: {record}");
    assert_eq!(record["request_id"], request_id.as_str(), "{id:?}: {record}");
    let revision = record["revision"].as_i64().expect("a record has a revision");
    let previous = before.as_ref().and_then(|r| r["revision"].as_i64()).unwrap_or(0);
    assert!(revision > previous, "{id:?}: revision {revision} is not after the last record's {previous}");
    if let Rev::At(pointer) = sample.revision {
        let answer: Value = serde_json::from_str(&text).expect("a JSON answer");
        let changed = answer.pointer(pointer).and_then(revision_of);
        assert_eq!(changed, Some(revision), "{id:?}: the record's revision is the change's: {answer}");
    }
    assert!(!record.to_string().contains("hunter2"), "a record carries no content: {record}");
}

#[tokio::test]
async fn every_audited_route_writes_exactly_one_record() {
    let h = start(&[]);
    let mut audited = 0;
    for route in ROUTES {
        check_route(&h, route.id, route.audited).await;
        audited += usize::from(route.audited);
    }
    assert!(audited >= 30, "the table flags {audited} routes as audited");

    // A Nacos full beat of an unknown instance registers it: one record. A light beat
    // that follows is a beat: none.
    let before = h.last_record().await.expect("records so far");
    let beat = json!({"ip": "10.4.0.1", "port": 80, "serviceName": "audit-beats", "cluster": "DEFAULT"});
    let path =
        format!("/nacos/v1/ns/instance/beat?serviceName=audit-beats&beat={}", urlencode(&beat.to_string()));
    h.call(Method::PUT, &path, Body::None).await;
    h.call(Method::PUT, "/nacos/v1/ns/instance/beat?serviceName=audit-beats&ip=10.4.0.1&port=80", Body::None)
        .await;
    let new = h.records_after(before["id"].as_str()).await;
    assert_eq!(new.len(), 1, "{new:#?}");
    assert_eq!(new[0]["action"], "instance.register");
    assert_eq!(new[0]["resource"], format!("{INSTANCES}/audit-beats/DEFAULT/10.4.0.1:80"));
}

#[tokio::test]
async fn queries_filter_page_and_refuse_a_bad_range() {
    let h = start(&[]);
    // The bootstrap's own records (the admin user) come first.
    let bootstrap = h.last_record().await;
    for n in 0..5 {
        h.call(Method::PUT, &format!("/api/v1/kv/q/{n}"), Body::Text("x".into())).await;
    }
    publish(&h, "q.txt", "x").await;
    let all = h.records_after(bootstrap.as_ref().and_then(|r| r["id"].as_str())).await;
    assert_eq!(all.len(), 6);
    let page = h.call(Method::GET, "/api/v1/audit?limit=2&resource=kv/q/", Body::None).await;
    assert_eq!(page["records"].as_array().unwrap().len(), 2);
    let next = page["next"].as_str().expect("a next token").to_owned();
    let rest =
        h.call(Method::GET, &format!("/api/v1/audit?limit=10&resource=kv/q/&after={next}"), Body::None).await;
    let resources: Vec<&str> =
        rest["records"].as_array().unwrap().iter().filter_map(|r| r["resource"].as_str()).collect();
    assert_eq!(resources, ["kv/q/2", "kv/q/3", "kv/q/4"]);
    assert!(rest["next"].is_null());
    let publishes = h.call(Method::GET, "/api/v1/audit?action=config.publish&actor=admin", Body::None).await;
    assert_eq!(publishes["records"].as_array().unwrap().len(), 1);
    let at = all[0]["at_ms"].as_u64().unwrap();
    let later = h.call(Method::GET, &format!("/api/v1/audit?from={}", at + 3_600_000), Body::None).await;
    assert!(later["records"].as_array().unwrap().is_empty());
    let window = format!("/api/v1/audit?from={}&to={}&resource=kv/q/", at - 1, at + 3_600_000);
    assert_eq!(h.call(Method::GET, &window, Body::None).await["records"].as_array().unwrap().len(), 5);
    let before = format!("/api/v1/audit?to={}&resource=kv/q/", at.saturating_sub(1));
    assert!(h.call(Method::GET, &before, Body::None).await["records"].as_array().unwrap().is_empty());

    // A secret config's records carry digests, never its plaintext.
    let secret_path = format!("{CFG}/db.properties");
    let marker = "s3cret-marker-4417";
    let sealed = json!({"content": format!("password={marker}"), "secret": true});
    h.call(Method::PUT, &secret_path, Body::Json(sealed)).await;
    h.call(Method::PUT, &secret_path, Body::Json(json!({"content": format!("password={marker}-2")}))).await;
    let page =
        h.call(Method::GET, "/api/v1/audit?resource=config/items/public/G/db.properties", Body::None).await;
    let secret_records = page["records"].as_array().unwrap();
    assert_eq!(secret_records.len(), 2, "{secret_records:#?}");
    assert!(secret_records.iter().all(|r| r["before"].is_string() || r["after"].is_string()));
    assert!(!page.to_string().contains(marker), "{page}");

    for (query, field) in
        [("from=10&to=5", "from"), ("limit=0", "limit"), ("from=yesterday", "from"), ("after=../x", "after")]
    {
        let response = h
            .request(Method::GET, &format!("/api/v1/audit?{query}"), &Body::None, "bad")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{query}");
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(body["error"]["code"], "invalid_argument", "{query}: {body}");
        assert_eq!(body["error"]["field"], field, "{query}: {body}");
    }
    let anonymous = h.http.get(h.server.url("/api/v1/audit")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);

    // The CLI reads the same log.
    let output = common::switchboard()
        .args([
            "audit",
            "ls",
            "--resource",
            "kv/q/",
            "-o",
            "json",
            "--endpoint",
            &h.server.base,
            "--token",
            &h.token,
        ])
        .output()
        .expect("the CLI runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let page: Value = serde_json::from_slice(&output.stdout).expect("one JSON page");
    assert_eq!(page["records"].as_array().unwrap().len(), 5);
    let output = common::switchboard()
        .args([
            "audit",
            "ls",
            "--action",
            "config.publish",
            "--from",
            "1h",
            "--endpoint",
            &h.server.base,
            "--token",
            &h.token,
        ])
        .output()
        .expect("the CLI runs");
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && table.contains("config/items/public/G/q.txt"), "{table}");
    assert!(table.lines().next().unwrap_or_default().starts_with("TIME"), "{table}");
}

/// Behind a trusted proxy, the record's source is the forwarded client; from anyone else,
/// a forged `X-Forwarded-For` is ignored.
#[tokio::test]
async fn the_source_address_respects_trusted_proxies() {
    let trusting = start(&["--trusted-proxies", "127.0.0.1"]);
    let doubting = start(&[]);
    for (h, expected) in [(&trusting, "203.0.113.9"), (&doubting, "127.0.0.1")] {
        let response = h
            .http
            .put(h.server.url("/api/v1/kv/proxied"))
            .bearer_auth(&h.token)
            .header("x-forwarded-for", "203.0.113.9")
            .body("x")
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
        let record = h.last_record().await.expect("a record");
        assert_eq!(record["resource"], "kv/proxied");
        assert_eq!(record["source_ip"], expected, "{record}");
    }
}

#[tokio::test]
async fn retention_keeps_the_newest_records() {
    let h = start(&["--audit-max-records", "3", "--audit-sweep-secs", "1"]);
    for n in 0..8 {
        h.call(Method::PUT, &format!("/api/v1/kv/r/{n}"), Body::Text("x".into())).await;
    }
    let mut left = Vec::new();
    for _ in 0..100 {
        left = h.records_after(None).await;
        if left.len() == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let resources: Vec<&str> = left.iter().filter_map(|r| r["resource"].as_str()).collect();
    assert_eq!(resources, ["kv/r/5", "kv/r/6", "kv/r/7"]);
}

/// The same records on etcd (its own root prefix), for a few routes of each domain.
#[tokio::test]
async fn audit_records_on_etcd() {
    let prefix = format!("/t-audit-etcd-{}/", rand::random::<u32>());
    let store = format!("etcd://{}", etcd_endpoint());
    let h = start(&["--store", &store, "--root-prefix", &prefix]);
    for id in [
        RouteId::KvPut,
        RouteId::KvDelete,
        RouteId::ConfigPublish,
        RouteId::ConfigImport,
        RouteId::InstanceRegister,
        RouteId::NacosInstanceRegister,
        RouteId::RateLimitRulePut,
        RouteId::LeaseRevoke,
        RouteId::InstanceBeat,
    ] {
        let audited = ROUTES.iter().any(|r| r.id == id && r.audited);
        check_route(&h, id, audited).await;
    }
    let records = h.records_after(None).await;
    assert!(records.len() >= 8, "{records:#?}");
}
