//! The native REST protocol (`/api/v1`): thin handlers over the store port and views.
//!
//! Every route is declared once in [`routes::ROUTES`]; the router and the OpenAPI document
//! are generated from that table. Errors become HTTP answers in one place
//! ([`error::ErrorKind`]). Read paths read views; writes go to the store and answer once
//! the local view has applied their revision (read-your-writes).
//!
//! Architecture invariant: this crate never touches redb or etcd-client; it sees the store
//! only through `sb_store`'s port and views. Domain logic does not live here.
#![forbid(unsafe_code)]

pub mod audit;
pub mod auth;
mod auth_api;
mod backup;
mod config;
mod elections;
pub mod error;
mod extract;
mod health;
pub mod ids;
mod kv;
mod leases;
mod locks;
pub mod metrics;
pub mod middleware;
pub mod nacos;
mod nacos_config;
pub mod nacos_list_cache;
pub mod nacos_naming;
pub mod nacos_push;
mod namespaces;
mod openapi;
mod ops;
#[cfg(test)]
mod permission_matrix;
mod prometheus_sd;
mod ratelimit;
mod registry;
pub mod routes;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use sb_config::ConfigService;
use sb_store::view::RawMap;
use sb_store::{SharedStore, View};

pub use auth::Subject;
pub use error::{ApiError, ErrorKind};
pub use ids::IdServices;
pub use leases::SystemLeases;
pub use metrics::ApiMetrics;
pub use middleware::RequestContext;
pub use routes::{router, Route, ROUTES};

/// Where the operator KV API lives in the store, and the only prefix it can touch.
pub const KV_PREFIX: &str = "kv/";

pub type KvView = View<RawMap>;

/// Changes the log filter at runtime (`PUT /api/v1/admin/log-level`). The composition
/// root owns the subscriber; this crate only asks.
pub trait LogLevelControl: Send + Sync {
    /// Applies an `EnvFilter`-style directive such as `info` or `info,sb_api=debug`.
    fn set(&self, directive: &str) -> Result<(), String>;
    fn current(&self) -> String;
}

/// Limits and settings of the API.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub max_value_bytes: usize,
    pub max_key_bytes: usize,
    /// How long a write waits for the local view to apply its revision.
    pub read_your_writes_timeout: Duration,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_value_bytes: 1024 * 1024,
            max_key_bytes: 1024,
            read_your_writes_timeout: Duration::from_secs(5),
            trusted_proxies: Vec::new(),
        }
    }
}

/// Everything a handler can reach.
pub struct Api {
    pub config: ApiConfig,
    pub store: SharedStore,
    pub kv: KvView,
    /// The config center: its service and, through it, the config view.
    pub configs: Arc<ConfigService>,
    /// Access control: identities, tokens, roles, namespaces and the one policy check.
    pub auth: Arc<sb_auth::AuthService>,
    pub system_leases: Arc<SystemLeases>,
    /// Locks and elections (always the store, never a view).
    pub coord: Arc<sb_coord::Coord>,
    /// The service registry (native and Nacos naming APIs).
    pub registry: Arc<sb_registry::Registry>,
    /// Active health checks of persistent instances.
    pub health: Arc<sb_health::HealthChecks>,
    /// Nacos 1.x UDP pushes to subscribers.
    pub naming_push: Arc<nacos_push::NamingPush>,
    /// Rendered Nacos `instance/list` answers, one per service revision and query.
    pub nacos_lists: Arc<nacos_list_cache::NacosListCache>,
    pub metrics: ApiMetrics,
    /// Snowflake and segment IDs.
    pub ids: IdServices,
    /// Rate-limit rules, checks and permits.
    pub ratelimit: Arc<sb_ratelimit::RateLimiter>,
    pub log_level: Option<Arc<dyn LogLevelControl>>,
    /// Turns true when the server stops; long-lived streams end on it.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

pub type ApiState = Arc<Api>;
