//! The sample request of every audited route (and of a few mutations that must not
//! record), keyed by [`RouteId`], with the record each must write: its action, resource and
//! where the change's revision is in the answer. Setup calls run first.

use reqwest::Method;
use sb_api::routes::RouteId;
use serde_json::{json, Value};

use super::{revision_of, Harness};

pub enum Body {
    None,
    Json(Value),
    Text(String),
}

/// Where the change's revision is in the answer.
pub enum Rev {
    /// A JSON pointer into the answer (a number, or a decimal string).
    At(&'static str),
    /// The answer carries none (Nacos's plain answers, a backup file): the record's revision
    /// must still be newer than every earlier record's.
    Newer,
}

pub struct Sample {
    pub method: Method,
    pub path: String,
    pub body: Body,
    pub action: &'static str,
    /// The record's resource; one ending in `/` is a prefix (a key chosen by the server).
    pub resource: String,
    pub revision: Rev,
}

pub fn sample(
    method: Method,
    path: impl Into<String>,
    body: Body,
    action: &'static str,
    resource: impl Into<String>,
    revision: Rev,
) -> Sample {
    Sample { method, path: path.into(), body, action, resource: resource.into(), revision }
}

pub const SVC: &str = "/api/v1/namespaces/public/services";
pub const CFG: &str = "/api/v1/namespaces/public/configs/G";
pub const INSTANCES: &str = "registry/instances/public/DEFAULT_GROUP";

pub async fn register(h: &Harness, service: &str, ip: &str, ephemeral: bool) {
    let body = json!({"ip": ip, "port": 80, "ephemeral": ephemeral});
    h.call(Method::POST, &format!("{SVC}/{service}/instances"), Body::Json(body)).await;
}

pub const PASSWORD: &str = "correct-horse-battery-staple";

pub async fn create_user(h: &Harness, name: &str) {
    h.call(Method::POST, "/api/v1/auth/users", Body::Json(json!({"name": name, "password": PASSWORD}))).await;
}

pub async fn publish(h: &Harness, data_id: &str, content: &str) -> i64 {
    let answer =
        h.call(Method::PUT, &format!("{CFG}/{data_id}"), Body::Json(json!({"content": content}))).await;
    revision_of(&answer["version"]).expect("a publish answers its version")
}

/// The sample request of a route, after its setup; `None` for a route without one.
pub async fn sample_for(h: &Harness, id: RouteId) -> Option<Sample> {
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
        RouteId::InstanceHealthPut => {
            // Registered natively, so nothing probes it: its health may be set by hand.
            register(h, "audit-svc", "10.1.0.7", false).await;
            sample(
                Method::PUT,
                format!("{SVC}/audit-svc/instances/10.1.0.7:80/health"),
                J(json!({"healthy": false})),
                "instance.health",
                format!("{INSTANCES}/audit-svc/DEFAULT/10.1.0.7:80"),
                At("/revision"),
            )
        }
        RouteId::NacosHealthUpdate | RouteId::NacosHealthUpdateShort => {
            let (ip, path) = match id {
                RouteId::NacosHealthUpdate => ("10.1.0.8", "/nacos/v1/ns/health/instance"),
                _ => ("10.1.0.9", "/nacos/v1/ns/health"),
            };
            register(h, "audit-svc", ip, false).await;
            sample(
                Method::PUT,
                format!("{path}?serviceName=audit-svc&ip={ip}&port=80&healthy=false"),
                Empty,
                "instance.health",
                format!("{INSTANCES}/audit-svc/DEFAULT/{ip}:80"),
                Newer,
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

pub fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
