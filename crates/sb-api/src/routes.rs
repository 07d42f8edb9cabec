//! The one route table. Every route is declared here once, with its method, path
//! template, resource kind, action and audit flag; the router ([`router`]) and the OpenAPI
//! document are generated from it (axum cannot list its own routes). The permission matrix
//! and the audit coverage test will be generated from it too.

use std::collections::BTreeMap;

use axum::middleware::from_fn_with_state;
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Router;

use crate::error::{ApiError, ErrorKind};
use crate::{
    audit, auth_api, backup, config, elections, health, ids, kv, leases, locks, middleware, nacos_config,
    nacos_naming, namespaces, ops, prometheus_sd, ratelimit, registry, watch, ApiState,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
    Post,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Post => "POST",
            Method::Delete => "DELETE",
        }
    }

    fn filter(self) -> MethodFilter {
        match self {
            Method::Get => MethodFilter::GET,
            Method::Put => MethodFilter::PUT,
            Method::Post => MethodFilter::POST,
            Method::Delete => MethodFilter::DELETE,
        }
    }
}

/// What a route does to its resource: `read`, `write` (changes that reach selected clients
/// or none), `publish` (changes every client sees) or `admin`. The policy check's action.
pub use sb_auth::Action;

/// How a route is authorized, derived from its `resource`: `session` routes are open to
/// any authenticated subject (whoami, this document, Nacos SDK health checks); any other
/// resource names an `sb_auth::Kind` checked with the route's action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Session,
    Check(sb_auth::Kind),
}

impl Route {
    /// The route's policy; `None` when its resource names no kind (such a route denies
    /// every request, and the permission-matrix test fails).
    pub fn policy(&self) -> Option<Policy> {
        match self.resource {
            "session" => Some(Policy::Session),
            other => sb_auth::Kind::parse(other).map(Policy::Check),
        }
    }
}

/// Names the handler of a route; [`handler`] maps each to its function, exhaustively.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteId {
    Healthz,
    Readyz,
    Metrics,
    OpenApi,
    KvList,
    KvGet,
    KvPut,
    KvDelete,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseRevoke,
    Watch,
    LogLevel,
    Backup,
    SnowflakeNext,
    SnowflakeDecode,
    SegmentNext,
    SegmentTagCreate,
    SegmentTagList,
    LockAcquire,
    LockRelease,
    LockRenew,
    LockStatus,
    LockGuardedPut,
    ElectionCampaign,
    ElectionProclaim,
    ElectionLeader,
    ElectionObserve,
    ElectionResign,
    ElectionRenew,
    PrometheusSd,
    ServicesList,
    ServiceGet,
    ServicePut,
    ServiceDelete,
    ServiceWatch,
    InstancesList,
    InstanceRegister,
    InstanceUpdate,
    InstanceDeregister,
    InstanceBeat,
    InstanceDrain,
    InstanceCheckGet,
    InstanceCheckPut,
    InstanceCheckDelete,
    InstanceHealthPut,
    NacosInstanceRegister,
    NacosInstanceUpdate,
    NacosInstanceDeregister,
    NacosInstanceGet,
    NacosInstanceList,
    NacosInstanceBeat,
    NacosServiceCreate,
    NacosServiceUpdate,
    NacosServiceDelete,
    NacosServiceGet,
    NacosServiceList,
    NacosClusterUpdate,
    NacosSwitches,
    NacosMetrics,
    NacosHealthUpdate,
    NacosHealthUpdateShort,
    ConfigList,
    ConfigGet,
    ConfigPublish,
    ConfigDelete,
    ConfigHistory,
    ConfigHistoryEntry,
    ConfigDiff,
    ConfigRollback,
    ConfigWatch,
    ConfigGrayGet,
    ConfigGrayPublish,
    ConfigGrayAbort,
    ConfigGrayPromote,
    ConfigExport,
    ConfigKeys,
    ConfigImport,
    NacosConfigGet,
    NacosConfigPublish,
    NacosConfigDelete,
    NacosConfigListener,
    NacosConfigHistory,
    NacosConfigHistoryPrevious,
    RateLimitRuleList,
    RateLimitRuleGet,
    RateLimitRulePut,
    RateLimitRuleDelete,
    RateLimitCheck,
    RateLimitPermitAcquire,
    RateLimitPermitRelease,
    AuthLogin,
    AuthWhoami,
    UserList,
    UserCreate,
    UserGet,
    UserDelete,
    UserPassword,
    AccountList,
    AccountCreate,
    AccountDelete,
    BindingGrant,
    BindingRevoke,
    RoleList,
    RolePut,
    RoleDelete,
    TokenList,
    TokenCreate,
    TokenRevoke,
    BackoffList,
    BackoffClear,
    NamespaceList,
    NamespaceCreate,
    NamespaceGet,
    NamespaceUpdate,
    NamespaceDelete,
    NacosLogin,
    NacosUsersLogin,
    NacosNamespaceList,
    NacosNamespaceCreate,
    NacosNamespaceUpdate,
    NacosNamespaceDelete,
    AuditList,
}

#[derive(Debug)]
pub struct Route {
    pub id: RouteId,
    pub method: Method,
    /// axum's template: `{name}` for a segment, `{*name}` for the rest of the path.
    pub path: &'static str,
    pub resource: &'static str,
    pub action: Action,
    /// Whether the route's successful calls are audited (mutations are).
    pub audited: bool,
    /// Whether credentials are required (everything but the probes, metrics and logins).
    pub authenticated: bool,
    pub summary: &'static str,
}

const fn route(
    id: RouteId,
    method: Method,
    path: &'static str,
    resource: &'static str,
    action: Action,
    audited: bool,
    summary: &'static str,
) -> Route {
    Route { id, method, path, resource, action, audited, authenticated: true, summary }
}

const fn public(id: RouteId, path: &'static str, summary: &'static str) -> Route {
    Route {
        id,
        method: Method::Get,
        path,
        resource: "system",
        action: Action::Read,
        audited: false,
        authenticated: false,
        summary,
    }
}

/// A login: open to everyone (it is how credentials are obtained), slowed by the backoff.
const fn login(id: RouteId, path: &'static str, summary: &'static str) -> Route {
    Route {
        id,
        method: Method::Post,
        path,
        resource: "session",
        action: Action::Write,
        audited: false,
        authenticated: false,
        summary,
    }
}

use Action as A;
use Method as M;

pub static ROUTES: &[Route] = &[
    public(RouteId::Healthz, "/healthz", "Liveness: the process answers"),
    public(RouteId::Readyz, "/readyz", "Readiness: the store answers and the views are loaded"),
    public(RouteId::Metrics, "/metrics", "Prometheus metrics"),
    route(
        RouteId::OpenApi,
        M::Get,
        "/api/v1/openapi.json",
        "session",
        A::Read,
        false,
        "This OpenAPI document",
    ),
    route(
        RouteId::KvList,
        M::Get,
        "/api/v1/kv",
        "kv",
        A::Read,
        false,
        "List every key (same parameters as a prefix get)",
    ),
    route(RouteId::KvGet, M::Get, "/api/v1/kv/{*key}", "kv", A::Read, false, "Get a key, or keys by prefix"),
    route(
        RouteId::KvPut,
        M::Put,
        "/api/v1/kv/{*key}",
        "kv",
        A::Write,
        true,
        "Put a key; the raw body is the value",
    ),
    route(
        RouteId::KvDelete,
        M::Delete,
        "/api/v1/kv/{*key}",
        "kv",
        A::Write,
        true,
        "Delete a key, or keys by prefix",
    ),
    // A grant changes no key (the puts on the lease are audited); a revoke deletes keys.
    route(RouteId::LeaseGrant, M::Post, "/api/v1/leases", "kv", A::Write, false, "Grant a lease"),
    route(
        RouteId::LeaseKeepAlive,
        M::Post,
        "/api/v1/leases/{id}/keepalive",
        "kv",
        A::Write,
        false,
        "Renew a lease to its full TTL",
    ),
    route(
        RouteId::LeaseRevoke,
        M::Delete,
        "/api/v1/leases/{id}",
        "kv",
        A::Write,
        true,
        "Revoke a lease and delete its keys",
    ),
    route(
        RouteId::Watch,
        M::Get,
        "/api/v1/watch",
        "kv",
        A::Read,
        false,
        "Watch a key or prefix (Server-Sent Events)",
    ),
    route(
        RouteId::LogLevel,
        M::Put,
        "/api/v1/admin/log-level",
        "system",
        A::Admin,
        true,
        "Change the log filter at runtime",
    ),
    route(
        RouteId::Backup,
        M::Get,
        "/api/v1/admin/backup",
        "system",
        A::Admin,
        true,
        "Stream a backup of every key not on a lease (the `switchboard backup` file format)",
    ),
    // ID allocation is a GET (as Leaf's), not audited: it is a metric, not a change.
    route(
        RouteId::SnowflakeNext,
        M::Get,
        "/api/v1/ids/snowflake",
        "id",
        A::Write,
        false,
        "Allocate `count` (1 to 10000) Snowflake IDs, as decimal strings",
    ),
    route(
        RouteId::SnowflakeDecode,
        M::Get,
        "/api/v1/ids/snowflake/{id}/decode",
        "id",
        A::Read,
        false,
        "Decode a Snowflake ID into its timestamp, worker and sequence",
    ),
    route(
        RouteId::SegmentNext,
        M::Get,
        "/api/v1/ids/segment/{tag}",
        "id",
        A::Write,
        false,
        "Allocate `count` (1 to 10000) IDs of a segment tag in `namespace` (default public)",
    ),
    route(
        RouteId::SegmentTagCreate,
        M::Post,
        "/api/v1/ids/segments",
        "id",
        A::Write,
        true,
        "Create a segment tag in `namespace` with its first ID (start) and step",
    ),
    route(
        RouteId::SegmentTagList,
        M::Get,
        "/api/v1/ids/segments",
        "id",
        A::Read,
        false,
        "List the segment tags of `namespace`, with this node's buffers",
    ),
    route(
        RouteId::LockAcquire,
        M::Post,
        "/api/v1/locks/{name}/acquire",
        "lock",
        A::Write,
        false,
        "Acquire a lock (long-poll up to wait_ms); answers the fencing token and the owner token",
    ),
    route(
        RouteId::LockRelease,
        M::Post,
        "/api/v1/locks/{name}/release",
        "lock",
        A::Write,
        false,
        "Release a lock with its owner token",
    ),
    route(
        RouteId::LockRenew,
        M::Post,
        "/api/v1/locks/{name}/renew",
        "lock",
        A::Write,
        false,
        "Renew a held lock's lease with its owner token",
    ),
    route(
        RouteId::LockStatus,
        M::Get,
        "/api/v1/locks/{name}",
        "lock",
        A::Read,
        false,
        "A lock's holder and queue length",
    ),
    route(
        RouteId::LockGuardedPut,
        M::Post,
        "/api/v1/locks/{name}/put",
        "kv",
        A::Write,
        true,
        "Put a KV key only while the owner token still holds the lock (one transaction)",
    ),
    route(
        RouteId::ElectionCampaign,
        M::Post,
        "/api/v1/elections/{name}/campaign",
        "lock",
        A::Write,
        false,
        "Campaign for leadership (long-poll up to wait_ms); answers the owner token when elected",
    ),
    route(
        RouteId::ElectionProclaim,
        M::Post,
        "/api/v1/elections/{name}/proclaim",
        "lock",
        A::Write,
        true,
        "Change the leader's value (leader's owner token only)",
    ),
    route(
        RouteId::ElectionLeader,
        M::Get,
        "/api/v1/elections/{name}",
        "lock",
        A::Read,
        false,
        "The current leader and the number of candidates waiting",
    ),
    route(
        RouteId::ElectionObserve,
        M::Get,
        "/api/v1/elections/{name}/observe",
        "lock",
        A::Read,
        false,
        "The leader now and at every change (Server-Sent Events)",
    ),
    route(
        RouteId::ElectionResign,
        M::Post,
        "/api/v1/elections/{name}/resign",
        "lock",
        A::Write,
        false,
        "Give up leadership with the owner token",
    ),
    route(
        RouteId::ElectionRenew,
        M::Post,
        "/api/v1/elections/{name}/renew",
        "lock",
        A::Write,
        false,
        "Renew the leader's lease with its owner token",
    ),
    route(
        RouteId::PrometheusSd,
        M::Get,
        "/api/v1/prometheus/sd",
        "instance",
        A::Read,
        false,
        "Prometheus HTTP service discovery: enabled instances as `http_sd` target groups (`namespace`, `group`, `service` filters)",
    ),
    route(
        RouteId::ServicesList,
        M::Get,
        "/api/v1/namespaces/{ns}/services",
        "service",
        A::Read,
        false,
        "List the services of a namespace (`group`, `page`, `page_size`)",
    ),
    route(
        RouteId::ServiceGet,
        M::Get,
        "/api/v1/namespaces/{ns}/services/{service}",
        "service",
        A::Read,
        false,
        "A service's settings and health summary (`group`)",
    ),
    route(
        RouteId::ServicePut,
        M::Put,
        "/api/v1/namespaces/{ns}/services/{service}",
        "service",
        A::Write,
        true,
        "Create or replace a service's settings: protect_threshold, metadata",
    ),
    route(
        RouteId::ServiceDelete,
        M::Delete,
        "/api/v1/namespaces/{ns}/services/{service}",
        "service",
        A::Write,
        true,
        "Delete a service that has no instances",
    ),
    route(
        RouteId::ServiceWatch,
        M::Get,
        "/api/v1/namespaces/{ns}/services/{service}/watch",
        "instance",
        A::Read,
        false,
        "Server-Sent Events: the instance list now and after every change",
    ),
    route(
        RouteId::InstancesList,
        M::Get,
        "/api/v1/namespaces/{ns}/services/{service}/instances",
        "instance",
        A::Read,
        false,
        "List instances (`clusters`, `healthy_only`); `wait_secs` + `since_revision` long-polls",
    ),
    route(
        RouteId::InstanceRegister,
        M::Post,
        "/api/v1/namespaces/{ns}/services/{service}/instances",
        "instance",
        A::Write,
        true,
        "Register an instance (ephemeral by default)",
    ),
    route(
        RouteId::InstanceUpdate,
        M::Put,
        "/api/v1/namespaces/{ns}/services/{service}/instances/{instance}",
        "instance",
        A::Write,
        true,
        "Change an instance's weight, enabled flag or metadata (`cluster`)",
    ),
    route(
        RouteId::InstanceDeregister,
        M::Delete,
        "/api/v1/namespaces/{ns}/services/{service}/instances/{instance}",
        "instance",
        A::Write,
        true,
        "Deregister an instance (`cluster`)",
    ),
    route(
        RouteId::InstanceBeat,
        M::Post,
        "/api/v1/namespaces/{ns}/services/{service}/instances/{instance}/beat",
        "instance",
        A::Write,
        false,
        "Heartbeat of an ephemeral instance (memory only; 404 when unknown: register again)",
    ),
    route(
        RouteId::InstanceDrain,
        M::Post,
        "/api/v1/namespaces/{ns}/services/{service}/instances/{instance}/drain",
        "instance",
        A::Write,
        true,
        "Disable an instance now and delete it after `delay_secs`",
    ),
    route(
        RouteId::InstanceCheckGet,
        M::Get,
        "/api/v1/namespaces/{ns}/services/{service}/instances/{instance}/check",
        "instance",
        A::Read,
        false,
        "A persistent instance's active health check (`group`, `cluster`)",
    ),
    route(
        RouteId::InstanceCheckPut,
        M::Put,
        "/api/v1/namespaces/{ns}/services/{service}/instances/{instance}/check",
        "instance",
        A::Write,
        true,
        "Set a persistent instance's active health check: http (method, path, expect_status, headers), tcp or grpc (service), interval_ms, timeout_ms, healthy_threshold, unhealthy_threshold",
    ),
    route(
        RouteId::InstanceCheckDelete,
        M::Delete,
        "/api/v1/namespaces/{ns}/services/{service}/instances/{instance}/check",
        "instance",
        A::Write,
        true,
        "Remove a persistent instance's active health check",
    ),
    route(
        RouteId::InstanceHealthPut,
        M::Put,
        "/api/v1/namespaces/{ns}/services/{service}/instances/{instance}/health",
        "instance",
        A::Write,
        true,
        "Set a persistent instance's health by hand (`{\"healthy\": bool}`), only while no check probes it",
    ),
    route(
        RouteId::NacosInstanceRegister,
        M::Post,
        "/nacos/v1/ns/instance",
        "instance",
        A::Write,
        true,
        "Nacos 1.x: register an instance",
    ),
    route(
        RouteId::NacosInstanceUpdate,
        M::Put,
        "/nacos/v1/ns/instance",
        "instance",
        A::Write,
        true,
        "Nacos 1.x: update an instance",
    ),
    route(
        RouteId::NacosInstanceDeregister,
        M::Delete,
        "/nacos/v1/ns/instance",
        "instance",
        A::Write,
        true,
        "Nacos 1.x: deregister an instance",
    ),
    route(
        RouteId::NacosInstanceGet,
        M::Get,
        "/nacos/v1/ns/instance",
        "instance",
        A::Read,
        false,
        "Nacos 1.x: one instance",
    ),
    route(
        RouteId::NacosInstanceList,
        M::Get,
        "/nacos/v1/ns/instance/list",
        "instance",
        A::Read,
        false,
        "Nacos 1.x: list instances (UDP push with clientIP + udpPort)",
    ),
    route(
        RouteId::NacosInstanceBeat,
        M::Put,
        "/nacos/v1/ns/instance/beat",
        "instance",
        A::Write,
        false,
        "Nacos 1.x: heartbeat (full or light)",
    ),
    route(
        RouteId::NacosServiceCreate,
        M::Post,
        "/nacos/v1/ns/service",
        "service",
        A::Write,
        true,
        "Nacos 1.x: create a service",
    ),
    route(
        RouteId::NacosServiceUpdate,
        M::Put,
        "/nacos/v1/ns/service",
        "service",
        A::Write,
        true,
        "Nacos 1.x: update a service",
    ),
    route(
        RouteId::NacosServiceDelete,
        M::Delete,
        "/nacos/v1/ns/service",
        "service",
        A::Write,
        true,
        "Nacos 1.x: delete a service",
    ),
    route(
        RouteId::NacosServiceGet,
        M::Get,
        "/nacos/v1/ns/service",
        "service",
        A::Read,
        false,
        "Nacos 1.x: one service",
    ),
    route(
        RouteId::NacosServiceList,
        M::Get,
        "/nacos/v1/ns/service/list",
        "service",
        A::Read,
        false,
        "Nacos 1.x: a page of service names",
    ),
    route(
        RouteId::NacosClusterUpdate,
        M::Put,
        "/nacos/v1/ns/cluster",
        "service",
        A::Write,
        true,
        "Nacos 1.x: a cluster's health checker (healthChecker TCP/HTTP/NONE, checkPort, useInstancePort4Check, metadata)",
    ),
    route(
        RouteId::NacosSwitches,
        M::Get,
        "/nacos/v1/ns/operator/switches",
        "session",
        A::Read,
        false,
        "Nacos 1.x: naming switches",
    ),
    route(
        RouteId::NacosMetrics,
        M::Get,
        "/nacos/v1/ns/operator/metrics",
        "session",
        A::Read,
        false,
        "Nacos 1.x: naming status (the SDKs' health check)",
    ),
    route(
        RouteId::NacosHealthUpdate,
        M::Put,
        "/nacos/v1/ns/health/instance",
        "instance",
        A::Write,
        true,
        "Nacos 1.x: set a persistent instance's health (`healthy`), only while its cluster's checker is NONE",
    ),
    route(
        RouteId::NacosHealthUpdateShort,
        M::Put,
        "/nacos/v1/ns/health",
        "instance",
        A::Write,
        true,
        "Nacos 1.x: the same as `PUT /nacos/v1/ns/health/instance`",
    ),
    route(
        RouteId::ConfigList,
        M::Get,
        "/api/v1/namespaces/{ns}/configs",
        "config",
        A::Read,
        false,
        "List a namespace's configs (metadata, no content; ?group= filters)",
    ),
    route(
        RouteId::ConfigGet,
        M::Get,
        "/api/v1/namespaces/{ns}/configs/{group}/{data_id}",
        "config",
        A::Read,
        false,
        "Get a config's current content and version (ETag)",
    ),
    route(
        RouteId::ConfigPublish,
        M::Put,
        "/api/v1/namespaces/{ns}/configs/{group}/{data_id}",
        "config",
        A::Publish,
        true,
        "Publish a config: validated in its format (and JSON Schema); If-Match: <version>",
    ),
    route(
        RouteId::ConfigDelete,
        M::Delete,
        "/api/v1/namespaces/{ns}/configs/{group}/{data_id}",
        "config",
        A::Publish,
        true,
        "Delete a config (recorded in its history); If-Match: <version>",
    ),
    route(
        RouteId::ConfigHistory,
        M::Get,
        "/api/v1/namespaces/{ns}/configs/{group}/{data_id}/history",
        "config",
        A::Read,
        false,
        "A config's history, newest first (?page=&page_size=)",
    ),
    route(
        RouteId::ConfigHistoryEntry,
        M::Get,
        "/api/v1/namespaces/{ns}/configs/{group}/{data_id}/history/{version}",
        "config",
        A::Read,
        false,
        "One version of a config, with its content",
    ),
    route(
        RouteId::ConfigDiff,
        M::Get,
        "/api/v1/namespaces/{ns}/configs/{group}/{data_id}/diff",
        "config",
        A::Read,
        false,
        "A unified diff between two versions (?from=&to=; to defaults to the current one)",
    ),
    route(
        RouteId::ConfigRollback,
        M::Post,
        "/api/v1/namespaces/{ns}/configs/{group}/{data_id}/rollback",
        "config",
        A::Publish,
        true,
        "Roll back to a version: a new publish of that version's content",
    ),
    route(
        RouteId::ConfigWatch,
        M::Get,
        "/api/v1/namespaces/{ns}/configs/{group}/{data_id}/watch",
        "config",
        A::Read,
        false,
        "Watch a config (Server-Sent Events: publish, delete)",
    ),
    route(
        RouteId::ConfigGrayGet,
        M::Get,
        "/api/v1/namespaces/{ns}/configs/{group}/{data_id}/gray",
        "config",
        A::Read,
        false,
        "A config's gray version: selector, version and content",
    ),
    route(
        RouteId::ConfigGrayPublish,
        M::Put,
        "/api/v1/namespaces/{ns}/configs/{group}/{data_id}/gray",
        "config",
        A::Write,
        true,
        "Publish a gray version to a selector (client IPs, or labels from X-Switchboard-Labels)",
    ),
    route(
        RouteId::ConfigGrayAbort,
        M::Delete,
        "/api/v1/namespaces/{ns}/configs/{group}/{data_id}/gray",
        "config",
        A::Write,
        true,
        "Abort a gray release: everyone reads the main version again (409 if there is none)",
    ),
    route(
        RouteId::ConfigGrayPromote,
        M::Post,
        "/api/v1/namespaces/{ns}/configs/{group}/{data_id}/promote",
        "config",
        A::Publish,
        true,
        "Promote the gray version: a new publish of its content (409 if there is none)",
    ),
    route(
        RouteId::ConfigExport,
        M::Get,
        "/api/v1/namespaces/{ns}/configs-export",
        "config",
        A::Read,
        false,
        "Export a namespace's configs (?group= for one group) as one YAML file with metadata; \
         ?format=zip for a Nacos console zip; ?plaintext=true exports secrets in the clear",
    ),
    route(
        RouteId::ConfigKeys,
        M::Get,
        "/api/v1/config-keys",
        "config-secret",
        A::Read,
        false,
        "The master key secrets are sealed with, and how many history entries each key still seals",
    ),
    route(
        RouteId::ConfigImport,
        M::Post,
        "/api/v1/namespaces/{ns}/configs-import",
        "config",
        A::Publish,
        true,
        "Import an export file (?policy=skip|overwrite|abort): validated before any write, batched, with a report",
    ),
    route(
        RouteId::NacosConfigGet,
        M::Get,
        "/nacos/v1/cs/configs",
        "config",
        A::Read,
        false,
        "Nacos 1.x: get a config's content",
    ),
    route(
        RouteId::NacosConfigPublish,
        M::Post,
        "/nacos/v1/cs/configs",
        "config",
        A::Publish,
        true,
        "Nacos 1.x: publish a config (content that does not parse as its type is a 400)",
    ),
    route(
        RouteId::NacosConfigDelete,
        M::Delete,
        "/nacos/v1/cs/configs",
        "config",
        A::Publish,
        true,
        "Nacos 1.x: delete a config",
    ),
    route(
        RouteId::NacosConfigListener,
        M::Post,
        "/nacos/v1/cs/configs/listener",
        "config",
        A::Read,
        false,
        "Nacos 1.x: long-poll for changes (Listening-Configs, Long-Pulling-Timeout)",
    ),
    route(
        RouteId::NacosConfigHistory,
        M::Get,
        "/nacos/v1/cs/history",
        "config",
        A::Read,
        false,
        "Nacos 1.x: a config's history (search=accurate) or one entry (nid)",
    ),
    route(
        RouteId::NacosConfigHistoryPrevious,
        M::Get,
        "/nacos/v1/cs/history/previous",
        "config",
        A::Read,
        false,
        "Nacos 1.x: the history entry before a version",
    ),
    route(
        RouteId::RateLimitRuleList,
        M::Get,
        "/api/v1/ratelimit/rules",
        "ratelimit",
        A::Read,
        false,
        "List the rate-limit rules of a namespace (?namespace=, default public)",
    ),
    route(
        RouteId::RateLimitRuleGet,
        M::Get,
        "/api/v1/ratelimit/rules/{name}",
        "ratelimit",
        A::Read,
        false,
        "Get a rate-limit rule",
    ),
    route(
        RouteId::RateLimitRulePut,
        M::Put,
        "/api/v1/ratelimit/rules/{name}",
        "ratelimit",
        A::Write,
        true,
        "Create or replace a rate-limit rule (its counters start afresh)",
    ),
    route(
        RouteId::RateLimitRuleDelete,
        M::Delete,
        "/api/v1/ratelimit/rules/{name}",
        "ratelimit",
        A::Write,
        true,
        "Delete a rate-limit rule",
    ),
    route(
        RouteId::RateLimitCheck,
        M::Post,
        "/api/v1/ratelimit/check",
        "ratelimit",
        A::Write,
        false,
        "Count hits against a rule for a set of descriptors: allowed, remaining, reset and retry times",
    ),
    route(
        RouteId::RateLimitPermitAcquire,
        M::Post,
        "/api/v1/ratelimit/permits/acquire",
        "ratelimit",
        A::Write,
        false,
        "Take a concurrency permit (it expires after the rule's TTL unless released)",
    ),
    route(
        RouteId::RateLimitPermitRelease,
        M::Post,
        "/api/v1/ratelimit/permits/release",
        "ratelimit",
        A::Write,
        false,
        "Give a concurrency permit back",
    ),
    login(
        RouteId::AuthLogin,
        "/api/v1/auth/login",
        "Log in with username and password (JSON); answers a session token and its TTL (ttl_secs)",
    ),
    route(RouteId::AuthWhoami, M::Get, "/api/v1/auth/whoami", "session", A::Read, false, "Who the credential acts as, and its role bindings"),
    route(RouteId::UserList, M::Get, "/api/v1/auth/users", "user", A::Admin, false, "List users and their role bindings"),
    route(RouteId::UserCreate, M::Post, "/api/v1/auth/users", "user", A::Admin, true, "Create a user: name, password, description, bindings"),
    route(RouteId::UserGet, M::Get, "/api/v1/auth/users/{name}", "user", A::Admin, false, "A user and its role bindings"),
    route(RouteId::UserDelete, M::Delete, "/api/v1/auth/users/{name}", "user", A::Admin, true, "Delete a user; its tokens stop working at once"),
    route(RouteId::UserPassword, M::Put, "/api/v1/auth/users/{name}/password", "user", A::Admin, true, "Set a user's password"),
    route(RouteId::AccountList, M::Get, "/api/v1/auth/service-accounts", "user", A::Admin, false, "List service accounts"),
    route(RouteId::AccountCreate, M::Post, "/api/v1/auth/service-accounts", "user", A::Admin, true, "Create a service account (a TLS client certificate's CN acts as the account of that name)"),
    route(RouteId::AccountDelete, M::Delete, "/api/v1/auth/service-accounts/{name}", "user", A::Admin, true, "Delete a service account; its tokens stop working at once"),
    route(RouteId::BindingGrant, M::Post, "/api/v1/auth/bindings", "role", A::Admin, true, "Grant a role on a namespace pattern to a user or service account"),
    route(RouteId::BindingRevoke, M::Delete, "/api/v1/auth/bindings", "role", A::Admin, true, "Remove a role binding"),
    route(RouteId::RoleList, M::Get, "/api/v1/auth/roles", "role", A::Admin, false, "The built-in and custom roles with their permissions"),
    route(RouteId::RolePut, M::Put, "/api/v1/auth/roles/{name}", "role", A::Admin, true, "Create or replace a custom role: permissions (kind, action, namespace)"),
    route(RouteId::RoleDelete, M::Delete, "/api/v1/auth/roles/{name}", "role", A::Admin, true, "Delete a custom role"),
    route(RouteId::TokenList, M::Get, "/api/v1/auth/tokens", "user", A::Admin, false, "List tokens (ids and owners, never the tokens)"),
    route(RouteId::TokenCreate, M::Post, "/api/v1/auth/tokens", "user", A::Admin, true, "Create an API token for a user or service account (shown once), optional ttl_secs"),
    route(RouteId::TokenRevoke, M::Delete, "/api/v1/auth/tokens/{id}", "user", A::Admin, true, "Revoke a token by id: refused at once on this node"),
    route(RouteId::BackoffList, M::Get, "/api/v1/auth/backoff", "user", A::Admin, false, "This node's login backoff entries"),
    route(RouteId::BackoffClear, M::Delete, "/api/v1/auth/backoff", "user", A::Admin, true, "Clear login backoff entries (?user=, ?address=)"),
    route(RouteId::NamespaceList, M::Get, "/api/v1/namespaces", "namespace", A::Read, false, "List namespaces (public and the created ones)"),
    route(RouteId::NamespaceCreate, M::Post, "/api/v1/namespaces", "namespace", A::Admin, true, "Create a namespace: name, display_name, description"),
    route(RouteId::NamespaceGet, M::Get, "/api/v1/namespaces/{ns}", "namespace", A::Read, false, "A namespace's display name and description"),
    route(RouteId::NamespaceUpdate, M::Put, "/api/v1/namespaces/{ns}", "namespace", A::Admin, true, "Change a namespace's display name and description"),
    route(RouteId::NamespaceDelete, M::Delete, "/api/v1/namespaces/{ns}", "namespace", A::Admin, true, "Delete a namespace's record (its contents stay)"),
    login(RouteId::NacosLogin, "/nacos/v1/auth/login", "Nacos 1.x: log in (username, password) → accessToken, tokenTtl, globalAdmin"),
    login(RouteId::NacosUsersLogin, "/nacos/v1/auth/users/login", "Nacos 1.x: log in (the console's path)"),
    route(RouteId::NacosNamespaceList, M::Get, "/nacos/v1/console/namespaces", "namespace", A::Read, false, "Nacos 1.x: list namespaces"),
    route(RouteId::NacosNamespaceCreate, M::Post, "/nacos/v1/console/namespaces", "namespace", A::Admin, true, "Nacos 1.x: create a namespace (customNamespaceId, namespaceName, namespaceDesc)"),
    route(RouteId::NacosNamespaceUpdate, M::Put, "/nacos/v1/console/namespaces", "namespace", A::Admin, true, "Nacos 1.x: edit a namespace (namespace, namespaceShowName, namespaceDesc)"),
    route(RouteId::NacosNamespaceDelete, M::Delete, "/nacos/v1/console/namespaces", "namespace", A::Admin, true, "Nacos 1.x: delete a namespace (namespaceId)"),
    route(
        RouteId::AuditList,
        M::Get,
        "/api/v1/audit",
        "audit",
        A::Read,
        false,
        "Audit records, oldest first: `from`/`to` (Unix ms), `actor`, `resource` (prefix), `action`, `limit` (1 to 1000, default 100), `after` (the previous page's `next`)",
    ),
];

/// The handler of each route, exhaustively, so a route without a handler cannot compile.
fn handler(route: &Route) -> MethodRouter<ApiState> {
    let filter = route.method.filter();
    match route.id {
        RouteId::Healthz => on(filter, ops::healthz),
        RouteId::Readyz => on(filter, ops::readyz),
        RouteId::Metrics => on(filter, ops::metrics),
        RouteId::OpenApi => on(filter, ops::openapi),
        RouteId::KvList => on(filter, kv::list_all),
        RouteId::KvGet => on(filter, kv::get),
        RouteId::KvPut => on(filter, kv::put),
        RouteId::KvDelete => on(filter, kv::delete),
        RouteId::LeaseGrant => on(filter, leases::grant),
        RouteId::LeaseKeepAlive => on(filter, leases::keep_alive),
        RouteId::LeaseRevoke => on(filter, leases::revoke),
        RouteId::Watch => on(filter, watch::watch),
        RouteId::LogLevel => on(filter, ops::set_log_level),
        RouteId::Backup => on(filter, backup::backup),
        RouteId::SnowflakeNext => on(filter, ids::snowflake_next),
        RouteId::SnowflakeDecode => on(filter, ids::snowflake_decode),
        RouteId::SegmentNext => on(filter, ids::segment_next),
        RouteId::SegmentTagCreate => on(filter, ids::segment_create),
        RouteId::SegmentTagList => on(filter, ids::segment_list),
        RouteId::LockAcquire => on(filter, locks::acquire),
        RouteId::LockRelease => on(filter, locks::release),
        RouteId::LockRenew => on(filter, locks::renew),
        RouteId::LockStatus => on(filter, locks::status),
        RouteId::LockGuardedPut => on(filter, locks::guarded_put),
        RouteId::ElectionCampaign => on(filter, elections::campaign),
        RouteId::ElectionProclaim => on(filter, elections::proclaim),
        RouteId::ElectionLeader => on(filter, elections::leader),
        RouteId::ElectionObserve => on(filter, elections::observe),
        RouteId::ElectionResign => on(filter, elections::resign),
        RouteId::ElectionRenew => on(filter, elections::renew),
        RouteId::PrometheusSd => on(filter, prometheus_sd::sd),
        RouteId::ServicesList => on(filter, registry::list_services),
        RouteId::ServiceGet => on(filter, registry::get_service),
        RouteId::ServicePut => on(filter, registry::put_service),
        RouteId::ServiceDelete => on(filter, registry::delete_service),
        RouteId::ServiceWatch => on(filter, registry::watch),
        RouteId::InstancesList => on(filter, registry::list_instances),
        RouteId::InstanceRegister => on(filter, registry::register),
        RouteId::InstanceUpdate => on(filter, registry::update_instance),
        RouteId::InstanceDeregister => on(filter, registry::deregister),
        RouteId::InstanceBeat => on(filter, registry::beat),
        RouteId::InstanceDrain => on(filter, registry::drain),
        RouteId::InstanceCheckGet => on(filter, health::get_check),
        RouteId::InstanceCheckPut => on(filter, health::put_check),
        RouteId::InstanceCheckDelete => on(filter, health::delete_check),
        RouteId::InstanceHealthPut => on(filter, health::put_health),
        RouteId::NacosInstanceRegister => on(filter, nacos_naming::register),
        RouteId::NacosInstanceUpdate => on(filter, nacos_naming::update),
        RouteId::NacosInstanceDeregister => on(filter, nacos_naming::deregister),
        RouteId::NacosInstanceGet => on(filter, nacos_naming::get),
        RouteId::NacosInstanceList => on(filter, nacos_naming::list),
        RouteId::NacosInstanceBeat => on(filter, nacos_naming::beat),
        RouteId::NacosServiceCreate => on(filter, nacos_naming::create_service),
        RouteId::NacosServiceUpdate => on(filter, nacos_naming::update_service),
        RouteId::NacosServiceDelete => on(filter, nacos_naming::delete_service),
        RouteId::NacosServiceGet => on(filter, nacos_naming::get_service),
        RouteId::NacosClusterUpdate => on(filter, nacos_naming::update_cluster),
        RouteId::NacosServiceList => on(filter, nacos_naming::list_services),
        RouteId::NacosSwitches => on(filter, nacos_naming::switches),
        RouteId::NacosMetrics => on(filter, nacos_naming::metrics),
        RouteId::NacosHealthUpdate | RouteId::NacosHealthUpdateShort => {
            on(filter, nacos_naming::update_health)
        }
        RouteId::ConfigList => on(filter, config::list),
        RouteId::ConfigGet => on(filter, config::get),
        RouteId::ConfigPublish => on(filter, config::publish),
        RouteId::ConfigDelete => on(filter, config::delete),
        RouteId::ConfigHistory => on(filter, config::history),
        RouteId::ConfigHistoryEntry => on(filter, config::history_entry),
        RouteId::ConfigDiff => on(filter, config::diff),
        RouteId::ConfigRollback => on(filter, config::rollback),
        RouteId::ConfigWatch => on(filter, config::watch),
        RouteId::ConfigGrayGet => on(filter, config::gray_get),
        RouteId::ConfigGrayPublish => on(filter, config::gray_publish),
        RouteId::ConfigGrayAbort => on(filter, config::gray_abort),
        RouteId::ConfigGrayPromote => on(filter, config::gray_promote),
        RouteId::ConfigExport => on(filter, config::export),
        RouteId::ConfigKeys => on(filter, config::keys),
        RouteId::ConfigImport => on(filter, config::import),
        RouteId::NacosConfigGet => on(filter, nacos_config::get),
        RouteId::NacosConfigPublish => on(filter, nacos_config::publish),
        RouteId::NacosConfigDelete => on(filter, nacos_config::delete),
        RouteId::NacosConfigListener => on(filter, nacos_config::listener),
        RouteId::NacosConfigHistory => on(filter, nacos_config::history),
        RouteId::NacosConfigHistoryPrevious => on(filter, nacos_config::history_previous),
        RouteId::RateLimitRuleList => on(filter, ratelimit::list_rules),
        RouteId::RateLimitRuleGet => on(filter, ratelimit::get_rule),
        RouteId::RateLimitRulePut => on(filter, ratelimit::put_rule),
        RouteId::RateLimitRuleDelete => on(filter, ratelimit::delete_rule),
        RouteId::RateLimitCheck => on(filter, ratelimit::check),
        RouteId::RateLimitPermitAcquire => on(filter, ratelimit::acquire),
        RouteId::RateLimitPermitRelease => on(filter, ratelimit::release),
        RouteId::AuthLogin => on(filter, auth_api::login),
        RouteId::AuthWhoami => on(filter, auth_api::whoami),
        RouteId::UserList => on(filter, auth_api::list_users),
        RouteId::UserCreate => on(filter, auth_api::create_user),
        RouteId::UserGet => on(filter, auth_api::get_user),
        RouteId::UserDelete => on(filter, auth_api::delete_user),
        RouteId::UserPassword => on(filter, auth_api::set_password),
        RouteId::AccountList => on(filter, auth_api::list_accounts),
        RouteId::AccountCreate => on(filter, auth_api::create_account),
        RouteId::AccountDelete => on(filter, auth_api::delete_account),
        RouteId::BindingGrant => on(filter, auth_api::grant),
        RouteId::BindingRevoke => on(filter, auth_api::ungrant),
        RouteId::RoleList => on(filter, auth_api::list_roles),
        RouteId::RolePut => on(filter, auth_api::put_role),
        RouteId::RoleDelete => on(filter, auth_api::delete_role),
        RouteId::TokenList => on(filter, auth_api::list_tokens),
        RouteId::TokenCreate => on(filter, auth_api::create_token),
        RouteId::TokenRevoke => on(filter, auth_api::revoke_token),
        RouteId::BackoffList => on(filter, auth_api::list_backoff),
        RouteId::BackoffClear => on(filter, auth_api::clear_backoff),
        RouteId::NamespaceList => on(filter, namespaces::list),
        RouteId::NamespaceCreate => on(filter, namespaces::create),
        RouteId::NamespaceGet => on(filter, namespaces::get),
        RouteId::NamespaceUpdate => on(filter, namespaces::update),
        RouteId::NamespaceDelete => on(filter, namespaces::delete),
        RouteId::NacosLogin | RouteId::NacosUsersLogin => on(filter, auth_api::nacos_login),
        RouteId::NacosNamespaceList => on(filter, namespaces::nacos_list),
        RouteId::NacosNamespaceCreate => on(filter, namespaces::nacos_create),
        RouteId::NacosNamespaceUpdate => on(filter, namespaces::nacos_update),
        RouteId::NacosNamespaceDelete => on(filter, namespaces::nacos_delete),
        RouteId::AuditList => on(filter, audit::list),
    }
}

/// Builds the router from [`ROUTES`].
pub fn router(state: ApiState) -> Router {
    let mut by_path: BTreeMap<&'static str, MethodRouter<ApiState>> = BTreeMap::new();
    for route in ROUTES {
        // Each route gets its own metadata-aware layer: authentication now, permissions
        // (from `resource` and `action`) and audit later.
        let layered = handler(route).layer(from_fn_with_state(
            middleware::RouteContext { route, policy: route.policy(), state: state.clone() },
            middleware::per_route,
        ));
        let merged = match by_path.remove(route.path) {
            Some(existing) => existing.merge(layered),
            None => layered,
        };
        by_path.insert(route.path, merged);
    }
    let mut router = Router::new();
    for (path, methods) in by_path {
        router = router.route(path, methods.fallback(method_not_allowed));
    }
    router
        .fallback(not_found)
        // Outermost: request id, client address, metrics and the access log for everything.
        .layer(from_fn_with_state(state.clone(), middleware::per_request))
        .with_state(state)
}

/// Paths under `/nacos/` answer as Nacos 1.x does (plain text; a missing or unknown
/// `accessToken` is a 403), everything else with the JSON error body.
async fn not_found(
    axum::extract::State(state): axum::extract::State<ApiState>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if !uri.path().starts_with("/nacos/") {
        return ApiError::not_found(format!("no route for {}", uri.path())).into_response();
    }
    let token = crate::middleware::nacos_token_from(uri.query(), &headers)
        .or_else(|| crate::auth::bearer(headers.get(axum::http::header::AUTHORIZATION)).map(str::to_owned));
    let known = token.is_some_and(|token| state.auth.resolve_token(&token).is_some());
    let error = if known {
        ApiError::not_found(format!("no such api: {}", uri.path()))
    } else {
        ApiError::new(ErrorKind::Unauthenticated, "unknown user!")
    };
    error.into_nacos_response()
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(ErrorKind::MethodNotAllowed, format!("{} is not allowed on {}", method, uri.path()))
}

/// The table entry that a matched path template and method name.
pub fn find(path: &str, method: &str) -> Option<&'static Route> {
    ROUTES.iter().find(|r| r.path == path && r.method.as_str() == method)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_declared_once() {
        let mut seen = std::collections::HashSet::new();
        for route in ROUTES {
            assert!(seen.insert((route.method.as_str(), route.path)), "{route:?} is declared twice");
        }
    }

    #[test]
    fn only_probes_metrics_and_logins_are_public() {
        let public: Vec<_> = ROUTES.iter().filter(|r| !r.authenticated).map(|r| r.path).collect();
        assert_eq!(
            public,
            [
                "/healthz",
                "/readyz",
                "/metrics",
                "/api/v1/auth/login",
                "/nacos/v1/auth/login",
                "/nacos/v1/auth/users/login"
            ]
        );
    }

    /// Mutating routes that are not audited, as the audit issue scopes them: keep-alives,
    /// beats, ID allocation, rate checks, and lock acquire and release are metrics, not
    /// changes an operator investigates. Reads sent as POST (for example Nacos's
    /// listener long-poll) belong here too. Everything else that mutates is audited.
    const UNAUDITED_MUTATIONS: &[RouteId] = &[
        // A grant changes no key; the keys put on the lease and its revoke are audited.
        RouteId::LeaseGrant,
        RouteId::LeaseKeepAlive,
        RouteId::InstanceBeat,
        RouteId::NacosInstanceBeat,
        RouteId::LockAcquire,
        RouteId::LockRelease,
        RouteId::LockRenew,
        // Campaign, resign and renew are an election's acquire, release and keep-alive;
        // proclaim changes what every observer sees, so it is audited.
        RouteId::ElectionCampaign,
        RouteId::ElectionResign,
        RouteId::ElectionRenew,
        // A Nacos config long-poll is a read sent as POST.
        RouteId::NacosConfigListener,
        RouteId::RateLimitCheck,
        RouteId::RateLimitPermitAcquire,
        RouteId::RateLimitPermitRelease,
        // A login mints a session token on a lease; failures feed the backoff and the log.
        RouteId::AuthLogin,
        RouteId::NacosLogin,
        RouteId::NacosUsersLogin,
    ];

    /// Reads that are audited: a backup reads everything, token hashes included, so who
    /// took one is recorded. Other reads (listing users, roles or tokens included) change
    /// nothing an operator investigates.
    const AUDITED_READS: &[RouteId] = &[RouteId::Backup];

    #[test]
    fn every_mutation_is_audited_unless_listed() {
        for route in ROUTES {
            let mutation = route.method != Method::Get;
            let expected =
                (mutation && !UNAUDITED_MUTATIONS.contains(&route.id)) || AUDITED_READS.contains(&route.id);
            assert_eq!(route.audited, expected, "{route:?}");
        }
    }
}
