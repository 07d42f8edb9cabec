//! Prometheus metrics of the API, in one registry that the composition root extends.
//!
//! Names start `switchboard_`. Labels carry route templates, methods and status classes,
//! never user data (keys, tokens, addresses are unbounded or secret).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    /// A static string: labels are built on every request, so only the route allocates.
    pub method: &'static str,
    pub status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreOpLabels {
    pub op: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.1 ms .. ~6.5 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// Runs before each scrape, to set gauges read from views.
pub type ScrapeHook = Box<dyn Fn() + Send + Sync>;

pub struct ApiMetrics {
    registry: Registry,
    hooks: Vec<ScrapeHook>,
    pub requests: Family<RouteLabels, Counter>,
    pub request_duration: HistogramFamily<RouteLabels>,
    pub store_op_duration: HistogramFamily<StoreOpLabels>,
    pub sse_streams: Gauge,
    /// Set from the KV view at each scrape.
    pub kv_keys: Gauge,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ApiMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RouteLabels, Counter>::default();
        registry.register(
            "switchboard_http_requests",
            "HTTP requests by route template and status class",
            requests.clone(),
        );
        let request_duration: HistogramFamily<RouteLabels> = Family::new_with_constructor(latency_histogram);
        registry.register(
            "switchboard_http_request_duration_seconds",
            "HTTP request latency until the response head, by route template and status class",
            request_duration.clone(),
        );
        let store_op_duration: HistogramFamily<StoreOpLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "switchboard_store_op_duration_seconds",
            "Store operations made by the API (a write includes its durable commit)",
            store_op_duration.clone(),
        );
        let sse_streams = Gauge::default();
        registry.register(
            "switchboard_watch_streams",
            "Open watch streams (Server-Sent Events)",
            sse_streams.clone(),
        );
        let kv_keys = Gauge::default();
        registry.register("switchboard_kv_keys", "Keys in the operator KV", kv_keys.clone());
        ApiMetrics {
            registry,
            hooks: Vec::new(),
            requests,
            request_duration,
            store_op_duration,
            sse_streams,
            kv_keys,
        }
    }

    /// For the composition root to add its own metrics before serving.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    pub fn add_scrape_hook(&mut self, hook: ScrapeHook) {
        self.hooks.push(hook);
    }

    pub fn observe_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let labels = RouteLabels {
            route: route.to_owned(),
            method: method_label(method),
            status_class: status_class(status),
        };
        self.requests.get_or_create(&labels).inc();
        self.request_duration.get_or_create(&labels).observe(seconds);
    }

    pub fn observe_store_op(&self, op: &'static str, seconds: f64) {
        self.store_op_duration.get_or_create(&StoreOpLabels { op: op.to_owned() }).observe(seconds);
    }

    /// The text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        for hook in &self.hooks {
            hook();
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// The method as a label; anything outside the methods the API routes is `other`, so a
/// client cannot grow the label set.
fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "PUT" => "PUT",
        "POST" => "POST",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}
