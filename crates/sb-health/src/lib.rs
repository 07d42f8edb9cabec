//! Active health checks of persistent instances: HTTP (method, path, expected status range)
//! and TCP connect, with per-check interval, timeout and healthy/unhealthy thresholds,
//! jittered schedules and bounded concurrency. Checks are sharded across the live nodes by
//! rendezvous hashing over the membership view, so each instance is probed by one node; when
//! a node leaves the view its share moves on the next reconcile. Only status changes are
//! written (through `Registry::set_health`, compared on the instance's mod revision).
//!
//! Checks live at `health/checks/{ns}/{group}/{service}/{cluster}/{ip}:{port}`.
//!
//! Architecture invariant: this crate sees only the store port, the registry and the
//! membership view; it knows nothing of redb, etcd or HTTP servers (its HTTP probe is a
//! minimal HTTP/1.1 request over a TCP stream).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sb_registry::names::{parse_key, RegistryKey};
use sb_registry::{InstanceAddr, Registry, RegistryError, RegistryResult, ServiceId};
use sb_store::codec::{encode, StoredValue};
use sb_store::view::DecodedMap;
use sb_store::{KeyRange, Membership, SharedStore, StoreResult, Txn, TxnOp, View};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

pub const CHECKS_PREFIX: &str = "health/checks/";
const INSTANCES_PREFIX: &str = "registry/instances/";
pub const MIN_INTERVAL_MS: u64 = 100;
pub const MAX_INTERVAL_MS: u64 = 3_600_000;
pub const MAX_THRESHOLD: u32 = 100;
/// How many probes run at once on one node; a slow target holds one permit at most for
/// its timeout.
pub const MAX_CONCURRENT_PROBES: usize = 512;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum CheckKind {
    Http { method: String, path: String, expect_status: [u16; 2] },
    Tcp,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckSpec {
    #[serde(flatten)]
    pub kind: CheckKind,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
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

fn invalid(field: &'static str, message: impl Into<String>) -> InvalidCheck {
    InvalidCheck { field, message: message.into() }
}

impl CheckSpec {
    /// Reads a check from its JSON definition (defaults: interval 5000 ms, timeout 2000 ms or
    /// the interval if shorter, thresholds 2 and 3, HTTP `GET /` expecting 200 to 399).
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
        if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&interval_ms) {
            return Err(invalid(
                "interval_ms",
                format!("interval_ms is {interval_ms}, expected {MIN_INTERVAL_MS} to {MAX_INTERVAL_MS}"),
            ));
        }
        let timeout_ms = number("timeout_ms", interval_ms.min(2000))?;
        if timeout_ms == 0 || timeout_ms > interval_ms {
            return Err(invalid(
                "timeout_ms",
                format!("timeout_ms is {timeout_ms}, expected 1 to the interval ({interval_ms} ms)"),
            ));
        }
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
                if !path.starts_with('/') || path.len() > 1024 || path.bytes().any(|b| b <= b' ' || b == 0x7f)
                {
                    return Err(invalid("path", format!("path {path:?} must start with / and have no spaces or control characters (1 KiB at most)")));
                }
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
                CheckKind::Http { method, path, expect_status }
            }
            "tcp" => CheckKind::Tcp,
            other => {
                return Err(invalid(
                    "kind",
                    format!("kind is {other:?}, expected http or tcp (grpc is not supported yet)"),
                ))
            }
        };
        Ok(CheckSpec { kind, interval_ms, timeout_ms, healthy_threshold, unhealthy_threshold })
    }

    /// Nacos's default for a persistent instance: TCP connect on its port.
    pub fn tcp_default() -> CheckSpec {
        CheckSpec {
            kind: CheckKind::Tcp,
            interval_ms: 5000,
            timeout_ms: 2000,
            healthy_threshold: 1,
            unhealthy_threshold: 3,
        }
    }
}

pub fn check_key(id: &ServiceId, addr: &InstanceAddr) -> Vec<u8> {
    let key = id.instance_key(addr);
    let mut out = CHECKS_PREFIX.as_bytes().to_vec();
    out.extend_from_slice(&key[INSTANCES_PREFIX.len()..]);
    out
}

fn parse_check_key(key: &[u8]) -> Option<(ServiceId, InstanceAddr)> {
    let rest = key.strip_prefix(CHECKS_PREFIX.as_bytes())?;
    let mut full = INSTANCES_PREFIX.as_bytes().to_vec();
    full.extend_from_slice(rest);
    match parse_key(&full)? {
        RegistryKey::Instance(id, addr) => Some((id, addr)),
        RegistryKey::Service(_) => None,
    }
}

/// Rendezvous hashing: the live node with the highest hash of (node, key) probes it.
pub fn owner<'a>(nodes: impl IntoIterator<Item = &'a str>, key: &[u8]) -> Option<&'a str> {
    nodes.into_iter().max_by_key(|node| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        node.hash(&mut hasher);
        key.hash(&mut hasher);
        (hasher.finish(), *node)
    })
}

/// One probe: `Ok(())` when the target is healthy.
pub async fn probe(addr: std::net::SocketAddr, spec: &CheckSpec, node_id: &str) -> Result<(), String> {
    let timeout = Duration::from_millis(spec.timeout_ms);
    let work = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let CheckKind::Http { method, path, expect_status } = &spec.kind else { return Ok(()) };
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: switchboard-health/{node_id}\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
        let mut head = Vec::with_capacity(256);
        let mut buf = [0u8; 256];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 1024 {
            let n = stream.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&head);
        let status: u16 =
            line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| {
                format!("no HTTP status line: {:?}", line.lines().next().unwrap_or_default())
            })?;
        if (expect_status[0]..=expect_status[1]).contains(&status) {
            Ok(())
        } else {
            Err(format!("status {status}"))
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("no answer within {} ms", spec.timeout_ms))?
}

type CheckView = View<DecodedMap<CheckSpec>>;

/// The checks' service: definitions (writes) and this node's share of the probing.
pub struct HealthChecks {
    store: SharedStore,
    registry: Arc<Registry>,
    view: Arc<CheckView>,
    reconciler: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        if let Some(task) = self.reconciler.lock().take() {
            task.abort();
        }
    }
}

struct Running {
    revision: sb_store::Revision,
    task: JoinHandle<()>,
}

impl HealthChecks {
    /// Loads the checks' view and starts probing this node's share every `reconcile`.
    pub async fn start(
        store: SharedStore,
        registry: Arc<Registry>,
        membership: Arc<Membership>,
        node_id: String,
        reconcile: Duration,
    ) -> StoreResult<HealthChecks> {
        let view =
            Arc::new(View::start(store.clone(), KeyRange::prefix(CHECKS_PREFIX), "health checks").await?);
        let task =
            tokio::spawn(reconcile_loop(view.clone(), registry.clone(), membership, node_id, reconcile));
        Ok(HealthChecks { store, registry, view, reconciler: Mutex::new(Some(task)) })
    }

    pub fn get(&self, id: &ServiceId, addr: &InstanceAddr) -> Option<CheckSpec> {
        self.view.snapshot().entries.get(&check_key(id, addr)).map(|e| e.value.clone())
    }

    /// Sets the check of a registered persistent instance; an ephemeral instance's beats
    /// tell its health, so it takes no check.
    pub async fn put(
        &self,
        id: &ServiceId,
        addr: &InstanceAddr,
        spec: &CheckSpec,
    ) -> RegistryResult<sb_store::Revision> {
        let snapshot = self.registry.snapshot();
        let Some(instance) = snapshot.instance(id, addr) else {
            return Err(RegistryError::NotFound(format!(
                "instance {} of service {id} is not registered",
                addr.socket()
            )));
        };
        if instance.record.ephemeral {
            return Err(RegistryError::invalid(
                "instance",
                format!(
                    "instance {} is ephemeral: its heartbeats tell its health; checks are for persistent instances",
                    addr.socket()
                ),
            ));
        }
        let value = encode(spec)
            .map_err(|e| sb_store::StoreError::InvalidArgument(format!("encoding a check: {e}")))?;
        let response = self.store.txn(Txn::new().and_then([TxnOp::put(check_key(id, addr), value)])).await?;
        let _ = self.view.wait_for(response.revision, Duration::from_secs(5)).await;
        Ok(response.revision)
    }

    /// `true` when there was a check to delete.
    pub async fn delete(&self, id: &ServiceId, addr: &InstanceAddr) -> StoreResult<bool> {
        let existed = self.get(id, addr).is_some();
        let response = self.store.txn(Txn::new().and_then([TxnOp::delete(check_key(id, addr))])).await?;
        let _ = self.view.wait_for(response.revision, Duration::from_secs(5)).await;
        Ok(existed)
    }
}

async fn reconcile_loop(
    view: Arc<CheckView>,
    registry: Arc<Registry>,
    membership: Arc<Membership>,
    node_id: String,
    every: Duration,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_PROBES));
    let mut running: HashMap<Vec<u8>, Running> = HashMap::new();
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let checks = view.snapshot();
        let nodes = membership.live_nodes();
        let registry_state = registry.snapshot();
        let mut wanted: HashMap<&Vec<u8>, (sb_store::Revision, ServiceId, InstanceAddr, CheckSpec)> =
            HashMap::new();
        for (key, entry) in &checks.entries {
            if owner(nodes.iter().map(|n| n.id.as_str()), key) != Some(node_id.as_str()) {
                continue;
            }
            let Some((id, addr)) = parse_check_key(key) else { continue };
            match registry_state.instance(&id, &addr) {
                Some(instance) if !instance.record.ephemeral => {
                    wanted.insert(key, (entry.mod_revision, id, addr, entry.value.clone()));
                }
                _ => {}
            }
        }
        running.retain(|key, run| {
            let keep = wanted.get(key).is_some_and(|w| w.0 == run.revision) && !run.task.is_finished();
            if !keep {
                run.task.abort();
            }
            keep
        });
        for (key, (revision, id, addr, spec)) in wanted {
            if running.contains_key(key) {
                continue;
            }
            debug!(service = %id, instance = %addr.socket(), "probing");
            let task =
                tokio::spawn(run_check(registry.clone(), permits.clone(), id, addr, spec, node_id.clone()));
            running.insert(key.clone(), Running { revision, task });
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run_check(
    registry: Arc<Registry>,
    permits: Arc<Semaphore>,
    id: ServiceId,
    addr: InstanceAddr,
    spec: CheckSpec,
    node_id: String,
) {
    let interval = Duration::from_millis(spec.interval_ms);
    // A random start within one interval spreads the probes of many checks.
    tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % spec.interval_ms)).await;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut passes, mut failures) = (0u32, 0u32);
    let target = std::net::SocketAddr::new(addr.ip, addr.port);
    loop {
        tick.tick().await;
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let result = probe(target, &spec, &node_id).await;
        drop(permit);
        match &result {
            Ok(()) => {
                passes = passes.saturating_add(1);
                failures = 0;
            }
            Err(_) => {
                failures = failures.saturating_add(1);
                passes = 0;
            }
        }
        let Some(current) = registry.snapshot().instance(&id, &addr).map(|i| i.record.healthy) else {
            return;
        };
        let verdict = if !current && passes >= spec.healthy_threshold {
            Some(true)
        } else if current && failures >= spec.unhealthy_threshold {
            Some(false)
        } else {
            None
        };
        if let Some(healthy) = verdict {
            match registry.set_health(&id, &addr, healthy).await {
                Ok(Some(_)) => {
                    info!(service = %id, instance = %addr.socket(), healthy, reason = ?result.err(), "health check changed the instance's health")
                }
                Ok(None) => {}
                Err(error) => {
                    warn!(service = %id, instance = %addr.socket(), %error, "writing a health change failed; the next probe retries")
                }
            }
        }
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
        let spec = CheckSpec::from_json(&json!({"kind": "http", "path": "/health"})).unwrap();
        assert_eq!(
            spec.kind,
            CheckKind::Http { method: "GET".into(), path: "/health".into(), expect_status: [200, 399] }
        );
        let stored = encode(&spec).unwrap();
        assert_eq!(sb_store::codec::decode::<CheckSpec>(&stored).unwrap(), spec);
    }

    #[test]
    fn keys_round_trip_and_owners_split() {
        let id = ServiceId::new("public", "g", "s").unwrap();
        let addr = InstanceAddr::parse("c", "10.0.0.1", 80).unwrap();
        assert_eq!(parse_check_key(&check_key(&id, &addr)), Some((id, addr)));
        let nodes = ["a", "b", "c"];
        let mut counts = HashMap::new();
        for n in 0..300 {
            *counts.entry(owner(nodes, format!("k{n}").as_bytes()).unwrap()).or_insert(0) += 1;
        }
        assert!(counts.values().all(|c| *c > 50), "{counts:?}");
        // Removing a node moves only its keys.
        for n in 0..300 {
            let key = format!("k{n}");
            let before = owner(nodes, key.as_bytes()).unwrap();
            if before != "c" {
                assert_eq!(owner(["a", "b"], key.as_bytes()), Some(before));
            }
        }
    }
}
