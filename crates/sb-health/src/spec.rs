//! What a check is, and the one rule deciding which check applies to an instance.
//!
//! A check is set per instance (native API), or per cluster through Nacos's cluster
//! health-checker settings (`PUT /nacos/v1/ns/cluster`), and Nacos registrations of
//! persistent instances get Nacos's default (a TCP check on the instance's port), derived
//! from the instance's `default_check` flag rather than stored per instance.
//! [`effective_check`] orders them: an instance's own check set through the native API
//! wins; else its cluster's setting (Nacos `NONE` means "not probed"); else the Nacos default.

use std::collections::BTreeMap;

use sb_registry::InstanceRecord;
use sb_store::codec::StoredValue;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const MIN_INTERVAL_MS: u64 = 100;
pub const MAX_INTERVAL_MS: u64 = 3_600_000;
pub const MAX_THRESHOLD: u32 = 100;
pub const MAX_HEADERS: usize = 16;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum CheckKind {
    Http {
        method: String,
        path: String,
        expect_status: [u16; 2],
        /// Extra request headers (Nacos's HTTP checker `headers`).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        headers: BTreeMap<String, String>,
    },
    Tcp,
    /// `grpc.health.v1.Health/Check` over plaintext HTTP/2; an empty service asks about the
    /// server as a whole.
    Grpc {
        #[serde(default)]
        service: String,
    },
}

impl CheckKind {
    /// The kind as the API spells it.
    pub fn name(&self) -> &'static str {
        match self {
            CheckKind::Http { .. } => "http",
            CheckKind::Tcp => "tcp",
            CheckKind::Grpc { .. } => "grpc",
        }
    }
}

/// Where a check came from: it decides which check wins in [`effective_check`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckOrigin {
    /// Set on the instance through the native API.
    #[default]
    Explicit,
    /// Nacos's default for a persistent instance registered through Nacos: derived by
    /// [`own_check`] from the instance's `default_check` flag. Versions before that wrote
    /// it as a stored record per instance; such records still count, exactly as the
    /// derived one would (same precedence; the native API shows and deletes them).
    NacosDefault,
}

impl CheckOrigin {
    fn is_explicit(&self) -> bool {
        *self == CheckOrigin::Explicit
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckSpec {
    #[serde(flatten)]
    pub kind: CheckKind,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    #[serde(default, skip_serializing_if = "CheckOrigin::is_explicit")]
    pub origin: CheckOrigin,
}

impl StoredValue for CheckSpec {
    const KIND: &'static str = "health_check";
    const FORMAT_VERSION: u32 = 1;
}

/// A bad check definition, naming the field.
#[derive(Debug, Clone, PartialEq)]
pub struct InvalidCheck {
    pub field: &'static str,
    pub message: String,
}

pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> InvalidCheck {
    InvalidCheck { field, message: message.into() }
}

fn check_path(path: &str) -> Result<(), InvalidCheck> {
    if !path.starts_with('/') || path.len() > 1024 || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(invalid(
            "path",
            format!(
                "path {path:?} must start with / and have no spaces or control characters (1 KiB at most)"
            ),
        ));
    }
    Ok(())
}

fn check_headers(headers: &BTreeMap<String, String>) -> Result<(), InvalidCheck> {
    if headers.len() > MAX_HEADERS {
        return Err(invalid("headers", format!("{} headers, limit is {MAX_HEADERS}", headers.len())));
    }
    for (name, value) in headers {
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || name.len() > 256 || !name.bytes().all(token) {
            return Err(invalid(
                "headers",
                format!("header name {name:?} is not an HTTP token (256 bytes at most)"),
            ));
        }
        if value.len() > 1024 || value.bytes().any(|b| b < b' ' || b == 0x7f) {
            return Err(invalid(
                "headers",
                format!("header {name} has a value with control characters or over 1 KiB"),
            ));
        }
    }
    Ok(())
}

impl CheckSpec {
    /// Reads a check from its JSON definition (defaults: interval 5000 ms, timeout 2000 ms or
    /// the interval if shorter, thresholds 2 and 3, HTTP `GET /` expecting 200 to 399, gRPC
    /// for the whole server).
    pub fn from_json(value: &Value) -> Result<CheckSpec, InvalidCheck> {
        let object = value.as_object().ok_or_else(|| invalid("body", "a check is a JSON object"))?;
        let number = |field: &'static str, default: u64| -> Result<u64, InvalidCheck> {
            match object.get(field) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v.as_u64().ok_or_else(|| {
                    invalid(field, format!("{field} is {v}, expected a non-negative integer"))
                }),
            }
        };
        let text = |field: &'static str, default: &str| -> Result<String, InvalidCheck> {
            match object.get(field) {
                None | Some(Value::Null) => Ok(default.to_owned()),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(v) => Err(invalid(field, format!("{field} is {v}, expected a string"))),
            }
        };
        let interval_ms = number("interval_ms", 5000)?;
        let timeout_ms = number("timeout_ms", interval_ms.min(2000))?;
        let threshold = |field: &'static str, default: u64| -> Result<u32, InvalidCheck> {
            let n = number(field, default)?;
            if !(1..=u64::from(MAX_THRESHOLD)).contains(&n) {
                return Err(invalid(field, format!("{field} is {n}, expected 1 to {MAX_THRESHOLD}")));
            }
            Ok(n as u32)
        };
        let healthy_threshold = threshold("healthy_threshold", 2)?;
        let unhealthy_threshold = threshold("unhealthy_threshold", 3)?;
        let kind = match text("kind", "")?.as_str() {
            "http" => {
                let method = text("method", "GET")?.to_ascii_uppercase();
                if !matches!(method.as_str(), "GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "OPTIONS") {
                    return Err(invalid(
                        "method",
                        format!("method is {method:?}, expected GET, HEAD, POST, PUT, DELETE or OPTIONS"),
                    ));
                }
                let path = text("path", "/")?;
                let expect_status = match object.get("expect_status") {
                    None | Some(Value::Null) => [200, 399],
                    Some(v) => {
                        let pair: Option<[u16; 2]> = serde_json::from_value(v.clone()).ok();
                        match pair {
                            Some([lo, hi]) if (100..=599).contains(&lo) && lo <= hi && hi <= 599 => [lo, hi],
                            _ => {
                                return Err(invalid(
                                    "expect_status",
                                    format!("expect_status is {v}, expected [low, high] within 100 to 599"),
                                ))
                            }
                        }
                    }
                };
                let headers = match object.get("headers") {
                    None | Some(Value::Null) => BTreeMap::new(),
                    Some(v) => serde_json::from_value(v.clone()).map_err(|_| {
                        invalid("headers", format!("headers is {v}, expected an object of strings"))
                    })?,
                };
                CheckKind::Http { method, path, expect_status, headers }
            }
            "tcp" => CheckKind::Tcp,
            "grpc" => CheckKind::Grpc { service: text("service", "")? },
            other => {
                return Err(invalid("kind", format!("kind is {other:?}, expected http, tcp or grpc")));
            }
        };
        let spec = CheckSpec {
            kind,
            interval_ms,
            timeout_ms,
            healthy_threshold,
            unhealthy_threshold,
            origin: CheckOrigin::Explicit,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// The limits every check meets, however it was set.
    pub fn validate(&self) -> Result<(), InvalidCheck> {
        let interval_ms = self.interval_ms;
        if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&interval_ms) {
            return Err(invalid(
                "interval_ms",
                format!("interval_ms is {interval_ms}, expected {MIN_INTERVAL_MS} to {MAX_INTERVAL_MS}"),
            ));
        }
        if self.timeout_ms == 0 || self.timeout_ms > interval_ms {
            return Err(invalid(
                "timeout_ms",
                format!("timeout_ms is {}, expected 1 to the interval ({interval_ms} ms)", self.timeout_ms),
            ));
        }
        match &self.kind {
            CheckKind::Http { path, headers, .. } => {
                check_path(path)?;
                check_headers(headers)?;
            }
            CheckKind::Grpc { service } => {
                if service.len() > 256 || service.bytes().any(|b| b <= b' ' || b == 0x7f) {
                    return Err(invalid(
                        "service",
                        format!("service {service:?} has spaces or control characters, or is over 256 bytes"),
                    ));
                }
            }
            CheckKind::Tcp => {}
        }
        Ok(())
    }

    /// Nacos's default for a persistent instance: TCP connect on its port, every `interval_ms`.
    pub fn nacos_default(interval_ms: u64) -> CheckSpec {
        let mut spec = CheckSpec::nacos_timing(CheckKind::Tcp, interval_ms);
        spec.origin = CheckOrigin::NacosDefault;
        spec
    }

    /// The timing of checks set through Nacos, which has no settings for it.
    fn nacos_timing(kind: CheckKind, interval_ms: u64) -> CheckSpec {
        let interval_ms = interval_ms.clamp(MIN_INTERVAL_MS, MAX_INTERVAL_MS);
        CheckSpec {
            kind,
            interval_ms,
            timeout_ms: interval_ms.min(2000),
            healthy_threshold: 1,
            unhealthy_threshold: 3,
            origin: CheckOrigin::Explicit,
        }
    }
}

/// A cluster's health-checker settings, as Nacos 1.x sets them (`PUT /nacos/v1/ns/cluster`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterCheck {
    /// `None` is Nacos's `NONE`: the cluster's persistent instances are not probed.
    pub check: Option<CheckSpec>,
    /// The port probed when `use_instance_port` is false.
    pub check_port: u16,
    pub use_instance_port: bool,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl StoredValue for ClusterCheck {
    const KIND: &'static str = "health_cluster_check";
    const FORMAT_VERSION: u32 = 1;
}

impl ClusterCheck {
    /// Maps Nacos's `healthChecker` JSON (`{"type":"TCP"}`, `{"type":"HTTP","path":"/health",
    /// "headers":"k:v|k2:v2","expectedResponseCode":200}`, `{"type":"NONE"}`) onto a check
    /// with Nacos's timing (`interval_ms`, the node's Nacos check interval).
    pub fn from_nacos(
        health_checker: &str,
        check_port: Option<i64>,
        use_instance_port: Option<bool>,
        metadata: BTreeMap<String, String>,
        interval_ms: u64,
    ) -> Result<ClusterCheck, InvalidCheck> {
        let value: Value = serde_json::from_str(health_checker).map_err(|e| {
            invalid("healthChecker", format!("healthChecker is not JSON ({e}): {health_checker:?}"))
        })?;
        let object = value
            .as_object()
            .ok_or_else(|| invalid("healthChecker", "healthChecker is a JSON object with a type"))?;
        let kind_name = object.get("type").and_then(Value::as_str).unwrap_or_default();
        let kind = match kind_name.to_ascii_uppercase().as_str() {
            "NONE" => None,
            "TCP" => Some(CheckKind::Tcp),
            "HTTP" => {
                let path = match object.get("path") {
                    None | Some(Value::Null) => "/".to_owned(),
                    Some(Value::String(p)) if p.is_empty() => "/".to_owned(),
                    Some(Value::String(p)) if !p.starts_with('/') => format!("/{p}"),
                    Some(Value::String(p)) => p.clone(),
                    Some(v) => return Err(invalid("path", format!("path is {v}, expected a string"))),
                };
                let code = match object.get("expectedResponseCode") {
                    None | Some(Value::Null) => 200,
                    Some(v) => v
                        .as_u64()
                        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                        .filter(|c| (100..=599).contains(c))
                        .ok_or_else(|| {
                            invalid(
                                "expectedResponseCode",
                                format!("expectedResponseCode is {v}, expected 100 to 599"),
                            )
                        })? as u16,
                };
                let headers = match object.get("headers") {
                    None | Some(Value::Null) => BTreeMap::new(),
                    Some(Value::String(text)) => parse_nacos_headers(text)?,
                    Some(v) => {
                        return Err(invalid("headers", format!("headers is {v}, expected \"k:v|k2:v2\"")))
                    }
                };
                Some(CheckKind::Http { method: "GET".into(), path, expect_status: [code, code], headers })
            }
            other => {
                return Err(invalid(
                    "healthChecker",
                    format!("healthChecker type {other:?} is not supported, expected TCP, HTTP or NONE"),
                ))
            }
        };
        let check_port = check_port.unwrap_or(80);
        if !(0..=65535).contains(&check_port) {
            return Err(invalid("checkPort", format!("checkPort is {check_port}, expected 0 to 65535")));
        }
        let use_instance_port = use_instance_port.unwrap_or(true);
        if !use_instance_port && check_port == 0 {
            return Err(invalid("checkPort", "checkPort is 0 with useInstancePort4Check=false"));
        }
        let check = kind.map(|kind| CheckSpec::nacos_timing(kind, interval_ms));
        if let Some(check) = &check {
            check.validate()?;
        }
        Ok(ClusterCheck { check, check_port: check_port as u16, use_instance_port, metadata })
    }

    /// The `healthChecker` object of Nacos's service detail.
    pub fn nacos_health_checker(&self) -> Value {
        match self.check.as_ref().map(|c| &c.kind) {
            None => serde_json::json!({"type": "NONE"}),
            Some(CheckKind::Tcp) => serde_json::json!({"type": "TCP"}),
            Some(CheckKind::Http { path, expect_status, headers, .. }) => {
                let headers: Vec<String> = headers.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                serde_json::json!({
                    "type": "HTTP",
                    "path": path,
                    "headers": headers.join("|"),
                    "expectedResponseCode": expect_status[0],
                })
            }
            Some(CheckKind::Grpc { service }) => serde_json::json!({"type": "GRPC", "service": service}),
        }
    }

    /// The port probed for an instance on `instance_port`.
    pub fn port_for(&self, instance_port: u16) -> u16 {
        if self.use_instance_port {
            instance_port
        } else {
            self.check_port
        }
    }
}

/// Nacos's HTTP checker headers: `name:value` pairs separated by `|`.
fn parse_nacos_headers(text: &str) -> Result<BTreeMap<String, String>, InvalidCheck> {
    let mut headers = BTreeMap::new();
    for pair in text.split('|').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = pair
            .split_once(':')
            .ok_or_else(|| invalid("headers", format!("header {pair:?} is not name:value")))?;
        headers.insert(name.trim().to_owned(), value.trim().to_owned());
    }
    check_headers(&headers)?;
    Ok(headers)
}

/// An instance's own check: the one stored for it, else Nacos's default if the instance
/// takes it (`InstanceRecord::default_check`, set by a Nacos registration of a persistent
/// instance).
pub fn own_check(
    instance: &InstanceRecord,
    stored: Option<&CheckSpec>,
    nacos_interval_ms: u64,
) -> Option<CheckSpec> {
    match stored {
        Some(stored) => Some(stored.clone()),
        None => instance.default_check.then(|| CheckSpec::nacos_default(nacos_interval_ms)),
    }
}

/// THE rule of which check probes an instance, and on which port: none for an ephemeral
/// instance (its beats tell its health); its own check set through the native API; else its
/// cluster's Nacos setting (`NONE`: none); else the Nacos default, if it takes it
/// ([`own_check`]).
pub fn effective_check(
    instance: &InstanceRecord,
    stored: Option<&CheckSpec>,
    cluster: Option<&ClusterCheck>,
    instance_port: u16,
    nacos_interval_ms: u64,
) -> Option<(CheckSpec, u16)> {
    if instance.ephemeral {
        return None;
    }
    match (own_check(instance, stored, nacos_interval_ms), cluster) {
        (Some(own), _) if own.origin == CheckOrigin::Explicit => Some((own, instance_port)),
        (_, Some(cluster)) => cluster.check.clone().map(|check| (check, cluster.port_for(instance_port))),
        (own, None) => own.map(|own| (own, instance_port)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bad_definitions_name_the_field() {
        let field = |v: Value| CheckSpec::from_json(&v).unwrap_err().field;
        assert_eq!(field(json!({"kind": "http", "interval_ms": 0})), "interval_ms");
        assert_eq!(field(json!({"kind": "http", "interval_ms": 1000, "timeout_ms": 2000})), "timeout_ms");
        assert_eq!(field(json!({"kind": "icmp"})), "kind");
        assert_eq!(field(json!({"kind": "http", "expect_status": [500, 200]})), "expect_status");
        assert_eq!(field(json!({"kind": "tcp", "healthy_threshold": 0})), "healthy_threshold");
        assert_eq!(field(json!({"kind": "grpc", "service": "a b"})), "service");
        assert_eq!(field(json!({"kind": "http", "headers": {"a b": "x"}})), "headers");
        let spec = CheckSpec::from_json(&json!({"kind": "http", "path": "/health"})).unwrap();
        assert_eq!(
            spec.kind,
            CheckKind::Http {
                method: "GET".into(),
                path: "/health".into(),
                expect_status: [200, 399],
                headers: BTreeMap::new()
            }
        );
        let grpc = CheckSpec::from_json(&json!({"kind": "grpc", "service": "pkg.Orders"})).unwrap();
        assert_eq!(grpc.kind, CheckKind::Grpc { service: "pkg.Orders".into() });
        for spec in [spec, grpc, CheckSpec::nacos_default(5000)] {
            let stored = sb_store::codec::encode(&spec).unwrap();
            assert_eq!(sb_store::codec::decode::<CheckSpec>(&stored).unwrap(), spec);
        }
    }

    #[test]
    fn nacos_health_checkers_map_onto_checks_and_back() {
        let none = BTreeMap::new;
        let tcp = ClusterCheck::from_nacos(r#"{"type":"TCP"}"#, Some(80), Some(true), none(), 5000).unwrap();
        assert_eq!(tcp.check.as_ref().unwrap().kind, CheckKind::Tcp);
        assert_eq!(tcp.nacos_health_checker(), json!({"type": "TCP"}));
        let http = ClusterCheck::from_nacos(
            r#"{"type":"HTTP","path":"/health","headers":"X-A:1|X-B: two","expectedResponseCode":204}"#,
            Some(8081),
            Some(false),
            none(),
            2000,
        )
        .unwrap();
        let check = http.check.as_ref().unwrap();
        assert_eq!(check.interval_ms, 2000);
        assert!(
            matches!(&check.kind, CheckKind::Http { expect_status: [204, 204], headers, .. } if headers["X-B"] == "two")
        );
        assert_eq!(
            http.nacos_health_checker(),
            json!({"type": "HTTP", "path": "/health", "headers": "X-A:1|X-B:two", "expectedResponseCode": 204})
        );
        assert_eq!(http.port_for(9000), 8081);
        let off = ClusterCheck::from_nacos(r#"{"type":"NONE"}"#, None, None, none(), 5000).unwrap();
        assert_eq!(off.check, None);
        assert_eq!(off.nacos_health_checker(), json!({"type": "NONE"}));
        let field = |checker: &str, port: Option<i64>| {
            ClusterCheck::from_nacos(checker, port, Some(true), none(), 5000).unwrap_err().field
        };
        assert_eq!(field(r#"{"type":"MYSQL"}"#, None), "healthChecker");
        assert_eq!(field("not json", None), "healthChecker");
        assert_eq!(field(r#"{"type":"HTTP","expectedResponseCode":999}"#, None), "expectedResponseCode");
        assert_eq!(field(r#"{"type":"TCP"}"#, Some(70000)), "checkPort");
    }

    #[test]
    fn the_native_check_wins_then_the_cluster_then_the_nacos_default() {
        let native = CheckSpec::from_json(&json!({"kind": "grpc"})).unwrap();
        let default = CheckSpec::nacos_default(5000);
        let http =
            ClusterCheck::from_nacos(r#"{"type":"HTTP"}"#, Some(81), Some(false), BTreeMap::new(), 5000)
                .unwrap();
        let off = ClusterCheck::from_nacos(r#"{"type":"NONE"}"#, None, None, BTreeMap::new(), 5000).unwrap();
        let instance = |ephemeral: bool, default_check: bool| InstanceRecord {
            weight: 1.0,
            enabled: true,
            healthy: true,
            ephemeral,
            metadata: Default::default(),
            owner: "n".into(),
            default_check,
        };
        let (nacos, native_only) = (instance(false, true), instance(false, false));
        let rule = |i: &InstanceRecord, own: Option<&CheckSpec>, cluster: Option<&ClusterCheck>| {
            effective_check(i, own, cluster, 9000, 5000)
        };
        // The native check wins over the cluster, whatever the instance's origin.
        assert_eq!(rule(&nacos, Some(&native), Some(&http)), Some((native.clone(), 9000)));
        assert_eq!(rule(&native_only, Some(&native), Some(&off)), Some((native.clone(), 9000)));
        // The derived default and a stored default (written by older versions) are the
        // same: below the cluster's settings, above nothing.
        for (i, stored) in [(&nacos, None), (&native_only, Some(&default)), (&nacos, Some(&default))] {
            assert_eq!(rule(i, stored, Some(&http)), Some((http.check.clone().unwrap(), 81)));
            assert_eq!(rule(i, stored, Some(&off)), None);
            assert_eq!(rule(i, stored, None), Some((default.clone(), 9000)));
            assert_eq!(own_check(i, stored, 5000), Some(default.clone()));
        }
        // The derived default takes the node's Nacos interval.
        assert_eq!(effective_check(&nacos, None, None, 9000, 250).unwrap().0.interval_ms, 250);
        // No default for an instance registered through the native API.
        assert_eq!(rule(&native_only, None, None), None);
        assert_eq!(own_check(&native_only, None, 5000), None);
        assert_eq!(rule(&native_only, None, Some(&http)).map(|(_, p)| p), Some(81));
        // Ephemeral instances are never probed.
        for i in [instance(true, true), instance(true, false)] {
            assert_eq!(rule(&i, None, None), None);
            assert_eq!(rule(&i, Some(&native), Some(&http)), None);
        }
    }
}
