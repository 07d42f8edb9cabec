//! The audit log end to end, against the real binary.
//!
//! `every_audited_route_writes_exactly_one_record` is generated from the route table: for
//! every route flagged `audited`, the sample below (keyed by [`RouteId`]) is sent, and
//! exactly one new record must appear, with the caller as actor, the route's action and
//! resource, the request's id, address and user agent, and the change's revision. A route
//! flagged audited without a sample fails the test, so a new route cannot skip its record.

mod common;

use common::{client, etcd_endpoint, start_with, Server};
use reqwest::Method;
use sb_api::routes::{Method as RouteMethod, RouteId, ROUTES};
use serde_json::{json, Value};

const USER_AGENT: &str = "audit-coverage/1.0";
/// The subject of the bootstrap admin token.
const ADMIN: &str = "admin";

enum Body {
    None,
    Json(Value),
    Text(String),
}

/// Where the change's revision is in the answer.
enum Rev {
    /// A JSON pointer into the answer (a number, or a decimal string).
    At(&'static str),
    /// The answer carries none (Nacos's plain answers, a backup file): the record's revision
    /// must still be newer than every earlier record's.
    Newer,
}

struct Sample {
    method: Method,
    path: String,
    body: Body,
    action: &'static str,
    /// The record's resource; one ending in `/` is a prefix (a key chosen by the server).
    resource: String,
    revision: Rev,
}

fn sample(
    method: Method,
    path: impl Into<String>,
    body: Body,
    action: &'static str,
    resource: impl Into<String>,
    revision: Rev,
) -> Sample {
    Sample { method, path: path.into(), body, action, resource: resource.into(), revision }
}

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

const SVC: &str = "/api/v1/namespaces/public/services";
const CFG: &str = "/api/v1/namespaces/public/configs/G";
const INSTANCES: &str = "registry/instances/public/DEFAULT_GROUP";

async fn register(h: &Harness, service: &str, ip: &str, ephemeral: bool) {
    let body = json!({"ip": ip, "port": 80, "ephemeral": ephemeral});
    h.call(Method::POST, &format!("{SVC}/{service}/instances"), Body::Json(body)).await;
}

const PASSWORD: &str = "correct-horse-battery-staple";

async fn create_user(h: &Harness, name: &str) {
    h.call(Method::POST, "/api/v1/auth/users", Body::Json(json!({"name": name, "password": PASSWORD}))).await;
}

async fn publish(h: &Harness, data_id: &str, content: &str) -> i64 {
    let answer =
        h.call(Method::PUT, &format!("{CFG}/{data_id}"), Body::Json(json!({"content": content}))).await;
    revision_of(&answer["version"]).expect("a publish answers its version")
}

/// The sample request of a route, after its setup; `None` for a route without one.
async fn sample_for(h: &Harness, id: RouteId) -> Option<Sample> {
    use Body::{Json as J, None as Empty, Text};
    use Rev::{At, Newer};
    Some(match id {
        RouteId::KvPut => sample(
            Method::PUT,
            "/api/v1/kv/audit/a",
            Text("v1".into()),
            "kv.put",
            "kv/audit/a",
            At("/revision"),
        ),
        RouteId::KvDelete => {
            h.call(Method::PUT, "/api/v1/kv/audit/d", Text("x".into())).await;
            sample(Method::DELETE, "/api/v1/kv/audit/d", Empty, "kv.delete", "kv/audit/d", At("/revision"))
        }
        RouteId::LeaseRevoke => {
            let lease = h.call(Method::POST, "/api/v1/leases", J(json!({"ttl_secs": 60}))).await;
            let lease = lease["id"].as_str().expect("lease id").to_owned();
            h.call(Method::PUT, &format!("/api/v1/kv/audit/leased?lease={lease}"), Text("x".into())).await;
            sample(
                Method::DELETE,
                format!("/api/v1/leases/{lease}"),
                Empty,
                "lease.revoke",
                format!("lease/{lease}"),
                Newer,
            )
        }
        RouteId::LogLevel => sample(
            Method::PUT,
            "/api/v1/admin/log-level",
            J(json!({"level": "warn"})),
            "admin.log-level",
            "admin/log-level",
            At("/revision"),
        ),
        RouteId::Backup => {
            sample(Method::GET, "/api/v1/admin/backup", Empty, "admin.backup", "admin/backup", Newer)
        }
        RouteId::SegmentTagCreate => sample(
            Method::POST,
            "/api/v1/ids/segments",
            J(json!({"tag": "audit-tag", "start": 1, "step": 100})),
            "ids.segment.create",
            "ids/segments/public/audit-tag",
            Newer,
        ),
        RouteId::LockGuardedPut => {
            let held =
                h.call(Method::POST, "/api/v1/locks/audit-lock/acquire", J(json!({"ttl_secs": 30}))).await;
            let owner = held["owner"].as_str().expect("owner token").to_owned();
            let body = J(json!({"owner": owner, "key": "audit/guarded", "value": "x"}));
            sample(
                Method::POST,
                "/api/v1/locks/audit-lock/put",
                body,
                "kv.put.guarded",
                "kv/audit/guarded",
                At("/revision"),
            )
        }
        RouteId::ElectionProclaim => {
            let elected = h
                .call(
                    Method::POST,
                    "/api/v1/elections/audit-el/campaign",
                    J(json!({"value": "a", "ttl_secs": 30})),
                )
                .await;
            let owner = elected["owner"].as_str().expect("owner token").to_owned();
            let body = J(json!({"owner": owner, "value": "b"}));
            sample(
                Method::POST,
                "/api/v1/elections/audit-el/proclaim",
                body,
                "election.proclaim",
                "elections/public/audit-el/",
                At("/revision"),
            )
        }
        RouteId::ServicePut => sample(
            Method::PUT,
            format!("{SVC}/audit-svc"),
            J(json!({"protect_threshold": 0.2})),
            "service.put",
            "registry/services/public/DEFAULT_GROUP/audit-svc",
            At("/revision"),
        ),
        RouteId::ServiceDelete => {
            h.call(Method::PUT, &format!("{SVC}/audit-gone"), J(json!({}))).await;
            sample(
                Method::DELETE,
                format!("{SVC}/audit-gone"),
                Empty,
                "service.delete",
                "registry/services/public/DEFAULT_GROUP/audit-gone",
                At("/revision"),
            )
        }
        RouteId::InstanceRegister => sample(
            Method::POST,
            format!("{SVC}/audit-svc/instances"),
            J(json!({"ip": "10.1.0.1", "port": 80})),
            "instance.register",
            format!("{INSTANCES}/audit-svc/DEFAULT/10.1.0.1:80"),
            At("/revision"),
        ),
        RouteId::InstanceUpdate => {
            register(h, "audit-svc", "10.1.0.2", true).await;
            sample(
                Method::PUT,
                format!("{SVC}/audit-svc/instances/10.1.0.2:80"),
                J(json!({"weight": 2.0})),
                "instance.update",
                format!("{INSTANCES}/audit-svc/DEFAULT/10.1.0.2:80"),
                At("/revision"),
            )
        }
        RouteId::InstanceDeregister => {
            register(h, "audit-svc", "10.1.0.3", true).await;
            sample(
                Method::DELETE,
                format!("{SVC}/audit-svc/instances/10.1.0.3:80"),
                Empty,
                "instance.deregister",
                format!("{INSTANCES}/audit-svc/DEFAULT/10.1.0.3:80"),
                At("/revision"),
            )
        }
        RouteId::InstanceDrain => {
            register(h, "audit-svc", "10.1.0.4", true).await;
            sample(
                Method::POST,
                format!("{SVC}/audit-svc/instances/10.1.0.4:80/drain"),
                J(json!({"delay_secs": 3600})),
                "instance.drain",
                format!("{INSTANCES}/audit-svc/DEFAULT/10.1.0.4:80"),
                At("/revision"),
            )
        }
        RouteId::InstanceCheckPut => {
            register(h, "audit-svc", "10.1.0.5", false).await;
            sample(
                Method::PUT,
                format!("{SVC}/audit-svc/instances/10.1.0.5:80/check"),
                J(json!({"kind": "tcp", "interval_ms": 60000})),
                "health.check.put",
                "health/checks/",
                At("/revision"),
            )
        }
        RouteId::InstanceCheckDelete => {
            register(h, "audit-svc", "10.1.0.6", false).await;
            let check = J(json!({"kind": "tcp", "interval_ms": 60000}));
            h.call(Method::PUT, &format!("{SVC}/audit-svc/instances/10.1.0.6:80/check"), check).await;
            sample(
                Method::DELETE,
                format!("{SVC}/audit-svc/instances/10.1.0.6:80/check"),
                Empty,
                "health.check.delete",
                "health/checks/",
                Newer,
            )
        }
        RouteId::NacosInstanceRegister => sample(
            Method::POST,
            "/nacos/v1/ns/instance?serviceName=audit-nacos&ip=10.2.0.1&port=80",
            Empty,
            "instance.register",
            format!("{INSTANCES}/audit-nacos/DEFAULT/10.2.0.1:80"),
            Newer,
        ),
        RouteId::NacosInstanceUpdate => {
            h.call(Method::POST, "/nacos/v1/ns/instance?serviceName=audit-nacos&ip=10.2.0.2&port=80", Empty)
                .await;
            sample(
                Method::PUT,
                "/nacos/v1/ns/instance?serviceName=audit-nacos&ip=10.2.0.2&port=80&weight=3",
                Empty,
                "instance.update",
                format!("{INSTANCES}/audit-nacos/DEFAULT/10.2.0.2:80"),
                Newer,
            )
        }
        RouteId::NacosInstanceDeregister => {
            h.call(Method::POST, "/nacos/v1/ns/instance?serviceName=audit-nacos&ip=10.2.0.3&port=80", Empty)
                .await;
            sample(
                Method::DELETE,
                "/nacos/v1/ns/instance?serviceName=audit-nacos&ip=10.2.0.3&port=80",
                Empty,
                "instance.deregister",
                format!("{INSTANCES}/audit-nacos/DEFAULT/10.2.0.3:80"),
                Newer,
            )
        }
        RouteId::NacosServiceCreate => sample(
            Method::POST,
            "/nacos/v1/ns/service?serviceName=audit-nsvc",
            Empty,
            "service.create",
            "registry/services/public/DEFAULT_GROUP/audit-nsvc",
            Newer,
        ),
        RouteId::NacosServiceUpdate => {
            h.call(Method::POST, "/nacos/v1/ns/service?serviceName=audit-nsvc2", Empty).await;
            sample(
                Method::PUT,
                "/nacos/v1/ns/service?serviceName=audit-nsvc2&protectThreshold=0.5",
                Empty,
                "service.update",
                "registry/services/public/DEFAULT_GROUP/audit-nsvc2",
                Newer,
            )
        }
        RouteId::NacosServiceDelete => {
            h.call(Method::POST, "/nacos/v1/ns/service?serviceName=audit-nsvc3", Empty).await;
            sample(
                Method::DELETE,
                "/nacos/v1/ns/service?serviceName=audit-nsvc3",
                Empty,
                "service.delete",
                "registry/services/public/DEFAULT_GROUP/audit-nsvc3",
                Newer,
            )
        }
        RouteId::ConfigPublish => sample(
            Method::PUT,
            format!("{CFG}/audit.txt"),
            J(json!({"content": "password=hunter2"})),
            "config.publish",
            "config/items/public/G/audit.txt",
            At("/version"),
        ),
        RouteId::ConfigDelete => {
            publish(h, "audit-del.txt", "x").await;
            sample(
                Method::DELETE,
                format!("{CFG}/audit-del.txt"),
                Empty,
                "config.delete",
                "config/items/public/G/audit-del.txt",
                At("/revision"),
            )
        }
        RouteId::ConfigRollback => {
            let first = publish(h, "audit-rb.txt", "one").await;
            publish(h, "audit-rb.txt", "two").await;
            sample(
                Method::POST,
                format!("{CFG}/audit-rb.txt/rollback"),
                J(json!({"version": first})),
                "config.rollback",
                "config/items/public/G/audit-rb.txt",
                At("/version"),
            )
        }
        RouteId::ConfigGrayPublish => {
            publish(h, "audit-gray.txt", "main").await;
            sample(
                Method::PUT,
                format!("{CFG}/audit-gray.txt/gray"),
                J(json!({"content": "gray", "ips": ["10.0.0.1"]})),
                "config.gray.publish",
                "config/gray/public/G/audit-gray.txt",
                At("/version"),
            )
        }
        RouteId::ConfigGrayAbort => {
            publish(h, "audit-abort.txt", "main").await;
            let gray = J(json!({"content": "gray", "ips": ["10.0.0.1"]}));
            h.call(Method::PUT, &format!("{CFG}/audit-abort.txt/gray"), gray).await;
            sample(
                Method::DELETE,
                format!("{CFG}/audit-abort.txt/gray"),
                Empty,
                "config.gray.abort",
                "config/gray/public/G/audit-abort.txt",
                At("/revision"),
            )
        }
        RouteId::ConfigGrayPromote => {
            publish(h, "audit-promote.txt", "main").await;
            let gray = J(json!({"content": "gray", "ips": ["10.0.0.1"]}));
            h.call(Method::PUT, &format!("{CFG}/audit-promote.txt/gray"), gray).await;
            sample(
                Method::POST,
                format!("{CFG}/audit-promote.txt/promote"),
                Empty,
                "config.gray.promote",
                "config/items/public/G/audit-promote.txt",
                At("/version"),
            )
        }
        RouteId::ConfigImport => {
            let doc = json!({
                "kind": "switchboard-config-export", "version": 1, "namespace": "public",
                "items": [{"group": "G", "data_id": "audit-import.txt", "format": "text", "content": "imported"}],
            });
            sample(
                Method::POST,
                "/api/v1/namespaces/public/configs-import",
                Text(doc.to_string()),
                "config.import",
                "config/items/public/G/audit-import.txt",
                At("/revision"),
            )
        }
        RouteId::NacosConfigPublish => sample(
            Method::POST,
            "/nacos/v1/cs/configs?dataId=audit-nacos.txt&group=G&content=nacos",
            Empty,
            "config.publish",
            "config/items/public/G/audit-nacos.txt",
            Newer,
        ),
        RouteId::NacosConfigDelete => {
            h.call(Method::POST, "/nacos/v1/cs/configs?dataId=audit-nacos-del.txt&group=G&content=x", Empty)
                .await;
            sample(
                Method::DELETE,
                "/nacos/v1/cs/configs?dataId=audit-nacos-del.txt&group=G",
                Empty,
                "config.delete",
                "config/items/public/G/audit-nacos-del.txt",
                Newer,
            )
        }
        RouteId::RateLimitRulePut => sample(
            Method::PUT,
            "/api/v1/ratelimit/rules/audit-rule",
            J(
                json!({"algorithm": "fixed_window", "limit": 10, "window_ms": 1000, "descriptors": [{"key": "user"}]}),
            ),
            "ratelimit.rule.put",
            "ratelimit/rules/public/audit-rule",
            At("/revision"),
        ),
        RouteId::RateLimitRuleDelete => {
            let rule = J(
                json!({"algorithm": "fixed_window", "limit": 10, "window_ms": 1000, "descriptors": [{"key": "user"}]}),
            );
            h.call(Method::PUT, "/api/v1/ratelimit/rules/audit-rule-del", rule).await;
            sample(
                Method::DELETE,
                "/api/v1/ratelimit/rules/audit-rule-del",
                Empty,
                "ratelimit.rule.delete",
                "ratelimit/rules/public/audit-rule-del",
                At("/revision"),
            )
        }
        RouteId::NacosClusterUpdate => {
            h.call(Method::POST, "/nacos/v1/ns/instance?serviceName=audit-cl&ip=10.5.0.1&port=80", Empty)
                .await;
            let checker = urlencode(r#"{"type":"TCP"}"#);
            sample(
                Method::PUT,
                format!(
                    "/nacos/v1/ns/cluster?serviceName=audit-cl&clusterName=DEFAULT&healthChecker={checker}"
                ),
                Empty,
                "health.cluster.put",
                "health/clusters/",
                Newer,
            )
        }
        RouteId::UserCreate => sample(
            Method::POST,
            "/api/v1/auth/users",
            J(json!({"name": "audit-u1", "password": PASSWORD})),
            "user.create",
            "user/audit-u1",
            At("/revision"),
        ),
        RouteId::UserPassword => {
            create_user(h, "audit-u2").await;
            sample(
                Method::PUT,
                "/api/v1/auth/users/audit-u2/password",
                J(json!({"password": "zebra-quartz-lantern-9"})),
                "user.password",
                "user/audit-u2",
                At("/revision"),
            )
        }
        RouteId::UserDelete => {
            create_user(h, "audit-u3").await;
            sample(
                Method::DELETE,
                "/api/v1/auth/users/audit-u3",
                Empty,
                "user.delete",
                "user/audit-u3",
                At("/revision"),
            )
        }
        RouteId::AccountCreate => sample(
            Method::POST,
            "/api/v1/auth/service-accounts",
            J(json!({"name": "audit-sa1"})),
            "service_account.create",
            "service-account/audit-sa1",
            At("/revision"),
        ),
        RouteId::AccountDelete => {
            h.call(Method::POST, "/api/v1/auth/service-accounts", J(json!({"name": "audit-sa2"}))).await;
            sample(
                Method::DELETE,
                "/api/v1/auth/service-accounts/audit-sa2",
                Empty,
                "service_account.delete",
                "service-account/audit-sa2",
                At("/revision"),
            )
        }
        RouteId::BindingGrant => {
            create_user(h, "audit-u4").await;
            let binding = J(json!({"user": "audit-u4", "role": "viewer", "namespace": "public"}));
            sample(
                Method::POST,
                "/api/v1/auth/bindings",
                binding,
                "binding.grant",
                "user/audit-u4",
                At("/revision"),
            )
        }
        RouteId::BindingRevoke => {
            create_user(h, "audit-u5").await;
            let binding = json!({"user": "audit-u5", "role": "viewer", "namespace": "public"});
            h.call(Method::POST, "/api/v1/auth/bindings", J(binding.clone())).await;
            sample(
                Method::DELETE,
                "/api/v1/auth/bindings",
                J(binding),
                "binding.revoke",
                "user/audit-u5",
                Newer,
            )
        }
        RouteId::RolePut => sample(
            Method::PUT,
            "/api/v1/auth/roles/audit-role",
            J(json!({"permissions": [{"kind": "config", "action": "read"}]})),
            "role.put",
            "role/audit-role",
            At("/revision"),
        ),
        RouteId::RoleDelete => {
            let role = J(json!({"permissions": [{"kind": "config", "action": "read"}]}));
            h.call(Method::PUT, "/api/v1/auth/roles/audit-role2", role).await;
            sample(
                Method::DELETE,
                "/api/v1/auth/roles/audit-role2",
                Empty,
                "role.delete",
                "role/audit-role2",
                At("/revision"),
            )
        }
        RouteId::TokenCreate => {
            h.call(Method::POST, "/api/v1/auth/service-accounts", J(json!({"name": "audit-sa3"}))).await;
            let body = J(json!({"service_account": "audit-sa3"}));
            sample(Method::POST, "/api/v1/auth/tokens", body, "token.create", "token/", Newer)
        }
        RouteId::TokenRevoke => {
            h.call(Method::POST, "/api/v1/auth/service-accounts", J(json!({"name": "audit-sa4"}))).await;
            let minted =
                h.call(Method::POST, "/api/v1/auth/tokens", J(json!({"service_account": "audit-sa4"}))).await;
            let id = minted["id"].as_str().expect("token id").to_owned();
            sample(
                Method::DELETE,
                format!("/api/v1/auth/tokens/{id}"),
                Empty,
                "token.revoke",
                format!("token/{id}"),
                Newer,
            )
        }
        RouteId::BackoffClear => sample(
            Method::DELETE,
            "/api/v1/auth/backoff?user=nobody",
            Empty,
            "backoff.clear",
            "login-backoff/nobody@*",
            Newer,
        ),
        RouteId::NamespaceCreate => sample(
            Method::POST,
            "/api/v1/namespaces",
            J(json!({"name": "audit-ns1"})),
            "namespace.create",
            "namespace/audit-ns1",
            At("/revision"),
        ),
        RouteId::NamespaceUpdate => {
            h.call(Method::POST, "/api/v1/namespaces", J(json!({"name": "audit-ns2"}))).await;
            sample(
                Method::PUT,
                "/api/v1/namespaces/audit-ns2",
                J(json!({"display_name": "Two"})),
                "namespace.update",
                "namespace/audit-ns2",
                At("/revision"),
            )
        }
        RouteId::NamespaceDelete => {
            h.call(Method::POST, "/api/v1/namespaces", J(json!({"name": "audit-ns3"}))).await;
            sample(
                Method::DELETE,
                "/api/v1/namespaces/audit-ns3",
                Empty,
                "namespace.delete",
                "namespace/audit-ns3",
                At("/revision"),
            )
        }
        RouteId::NacosNamespaceCreate => sample(
            Method::POST,
            "/nacos/v1/console/namespaces?customNamespaceId=audit-nns1&namespaceName=N1",
            Empty,
            "namespace.create",
            "namespace/audit-nns1",
            Newer,
        ),
        RouteId::NacosNamespaceUpdate => {
            h.call(
                Method::POST,
                "/nacos/v1/console/namespaces?customNamespaceId=audit-nns2&namespaceName=N2",
                Empty,
            )
            .await;
            sample(
                Method::PUT,
                "/nacos/v1/console/namespaces?namespace=audit-nns2&namespaceShowName=M2",
                Empty,
                "namespace.update",
                "namespace/audit-nns2",
                Newer,
            )
        }
        RouteId::NacosNamespaceDelete => {
            h.call(
                Method::POST,
                "/nacos/v1/console/namespaces?customNamespaceId=audit-nns3&namespaceName=N3",
                Empty,
            )
            .await;
            sample(
                Method::DELETE,
                "/nacos/v1/console/namespaces?namespaceId=audit-nns3",
                Empty,
                "namespace.delete",
                "namespace/audit-nns3",
                Newer,
            )
        }
        // Mutations that must write no record.
        RouteId::InstanceBeat => {
            register(h, "audit-beat", "10.3.0.1", true).await;
            sample(Method::POST, format!("{SVC}/audit-beat/instances/10.3.0.1:80/beat"), Empty, "", "", Newer)
        }
        RouteId::LeaseGrant => {
            sample(Method::POST, "/api/v1/leases", J(json!({"ttl_secs": 30})), "", "", Newer)
        }
        RouteId::SnowflakeNext => sample(Method::GET, "/api/v1/ids/snowflake?count=3", Empty, "", "", Newer),
        RouteId::LockAcquire => sample(
            Method::POST,
            "/api/v1/locks/audit-free/acquire",
            J(json!({"ttl_secs": 30})),
            "",
            "",
            Newer,
        ),
        RouteId::RateLimitCheck => {
            let rule = J(
                json!({"algorithm": "fixed_window", "limit": 10, "window_ms": 1000, "descriptors": [{"key": "user"}]}),
            );
            h.call(Method::PUT, "/api/v1/ratelimit/rules/audit-check", rule).await;
            let body = J(json!({"rule": "audit-check", "descriptors": {"user": "u1"}}));
            sample(Method::POST, "/api/v1/ratelimit/check", body, "", "", Newer)
        }
        _ => return None,
    })
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

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
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
