//! The node's own metrics, added to the API's registry and read at each scrape: the
//! membership view, and the embedded store's counters (group commits, batch sizes, commit
//! latency, watchers, leases, revisions). On etcd, the API's
//! `switchboard_store_op_duration_seconds` is the store latency there is.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Weak};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use sb_api::ApiMetrics;
use sb_store::Membership;
use sb_store_embedded::EmbeddedStore;

pub fn register(
    metrics: &mut ApiMetrics,
    membership: Weak<Membership>,
    embedded: Option<Arc<EmbeddedStore>>,
) {
    let nodes = Gauge::<i64>::default();
    metrics.registry_mut().register(
        "switchboard_membership_nodes",
        "Live nodes in the membership view",
        nodes.clone(),
    );
    metrics.add_scrape_hook(Box::new(move || {
        if let Some(membership) = membership.upgrade() {
            nodes.set(membership.view().snapshot().entries.len() as i64);
        }
    }));
    let Some(embedded) = embedded else {
        return;
    };
    let registry = metrics.registry_mut();
    let commits = Counter::<u64>::default();
    registry.register(
        "switchboard_store_group_commits",
        "Durable group commits of the embedded store",
        commits.clone(),
    );
    let batched = Counter::<u64>::default();
    registry.register(
        "switchboard_store_group_commit_txns",
        "Transactions evaluated in group commits (divide by group commits for the mean batch size)",
        batched.clone(),
    );
    let written = Counter::<u64>::default();
    registry.register(
        "switchboard_store_txns_committed",
        "Transactions that wrote a revision",
        written.clone(),
    );
    let last_commit = Gauge::<f64, AtomicU64>::default();
    registry.register(
        "switchboard_store_last_commit_duration_seconds",
        "How long the last group commit took, from evaluation to a durable commit",
        last_commit.clone(),
    );
    let watchers = Gauge::<i64>::default();
    registry.register("switchboard_store_watchers", "Live store watches", watchers.clone());
    let leases = Gauge::<i64>::default();
    registry.register("switchboard_store_leases", "Live leases", leases.clone());
    let revision = Gauge::<i64>::default();
    registry.register("switchboard_store_revision", "The store's current revision", revision.clone());
    let compacted = Gauge::<i64>::default();
    registry.register(
        "switchboard_store_compacted_revision",
        "The store's compacted revision",
        compacted.clone(),
    );
    let store = Arc::downgrade(&embedded);
    metrics.add_scrape_hook(Box::new(move || {
        let Some(store) = store.upgrade() else { return };
        let now = store.metrics();
        // The store's counters only grow; the exported counters follow them.
        for (counter, value) in
            [(&commits, now.commits), (&batched, now.batched_txns), (&written, now.txns_committed)]
        {
            counter.inc_by(value.saturating_sub(counter.get()));
        }
        last_commit.set(now.last_commit_latency.as_secs_f64());
        watchers.set(now.watchers as i64);
        leases.set(now.leases as i64);
        revision.set(now.current_revision);
        compacted.set(now.compacted_revision);
    }));
}

/// The registry's gauges, read from its view at each scrape (labels carry no service names:
/// they are unbounded).
pub fn register_registry(
    metrics: &mut ApiMetrics,
    registry: Weak<sb_registry::Registry>,
    push: Weak<sb_api::nacos_push::NamingPush>,
) {
    let gauge = |metrics: &mut ApiMetrics, name: &str, help: &str| {
        let gauge = Gauge::<i64>::default();
        metrics.registry_mut().register(name, help, gauge.clone());
        gauge
    };
    let services = gauge(metrics, "switchboard_registry_services", "Services in the registry view");
    let instances = gauge(metrics, "switchboard_registry_instances", "Instances in the registry view");
    let healthy =
        gauge(metrics, "switchboard_registry_healthy_instances", "Healthy instances in the registry view");
    let beats = gauge(
        metrics,
        "switchboard_registry_tracked_beats",
        "Ephemeral instances whose beats this node tracks (memory only)",
    );
    let subscribers =
        gauge(metrics, "switchboard_registry_push_subscribers", "Nacos UDP push subscribers of this node");
    let pushes = Counter::<u64>::default();
    metrics.registry_mut().register(
        "switchboard_registry_udp_pushes",
        "Nacos UDP pushes sent",
        pushes.clone(),
    );
    let writes = Counter::<u64>::default();
    metrics.registry_mut().register(
        "switchboard_registry_store_writes",
        "Store transactions the registry committed (registrations, updates, health changes, expiries; never a beat)",
        writes.clone(),
    );
    let acks = Counter::<u64>::default();
    metrics.registry_mut().register(
        "switchboard_registry_udp_push_acks",
        "Nacos UDP pushes acknowledged by their subscriber",
        acks.clone(),
    );
    metrics.add_scrape_hook(Box::new(move || {
        if let Some(registry) = registry.upgrade() {
            let snapshot = registry.snapshot();
            services.set(snapshot.services.len() as i64);
            instances.set(snapshot.instance_count as i64);
            let healthy_count: usize = snapshot
                .services
                .values()
                .map(|s| s.instances.values().filter(|i| i.record.healthy).count())
                .sum();
            healthy.set(healthy_count as i64);
            beats.set(registry.tracked_beats() as i64);
            writes.inc_by(registry.store_writes().saturating_sub(writes.get()));
        }
        if let Some(push) = push.upgrade() {
            subscribers.set(push.subscriber_count() as i64);
            let (sent, acked) = push.counts();
            pushes.inc_by(sent.saturating_sub(pushes.get()));
            acks.inc_by(acked.saturating_sub(acks.get()));
        }
    }));
}

/// The config center's gauges, read from its view at each scrape.
pub fn register_config(metrics: &mut ApiMetrics, configs: Weak<sb_config::ConfigService>) {
    let gauge = |metrics: &mut ApiMetrics, name: &str, help: &str| {
        let gauge = Gauge::<i64>::default();
        metrics.registry_mut().register(name, help, gauge.clone());
        gauge
    };
    let items = gauge(metrics, "switchboard_config_items", "Configs in the config view");
    let listeners =
        gauge(metrics, "switchboard_config_long_polls", "Nacos config long-polls held by this node");
    let undecodable = gauge(
        metrics,
        "switchboard_config_undecodable_values",
        "Stored config values the view skipped because they did not decode",
    );
    metrics.add_scrape_hook(Box::new(move || {
        if let Some(configs) = configs.upgrade() {
            let state = configs.view().snapshot();
            items.set(state.len() as i64);
            undecodable.set(state.undecodable() as i64);
            listeners.set(configs.view().listening() as i64);
        }
    }));
}

/// The registry's edges: the DNS interface's counters and this node's health probing.
pub fn register_edges(
    metrics: &mut ApiMetrics,
    dns: Arc<sb_dns::DnsStats>,
    health: Weak<sb_health::ProbeStats>,
) {
    let mut counter = |name: &str, help: &str| {
        let counter = Counter::<u64>::default();
        metrics.registry_mut().register(name, help, counter.clone());
        counter
    };
    let answered = counter("switchboard_dns_queries_answered", "DNS queries answered (UDP and TCP)");
    let limited = counter(
        "switchboard_dns_queries_rate_limited",
        "DNS queries over their source's rate (--dns-per-source-qps): dropped on UDP, refused on TCP",
    );
    let refused =
        counter("switchboard_dns_queries_refused", "DNS queries refused: the source is outside --dns-allow");
    let probes = counter("switchboard_health_probes", "Active health probes this node ran");
    let failures = counter("switchboard_health_probe_failures", "Active health probes that failed");
    let overdue = counter(
        "switchboard_health_probes_overdue",
        "Active health probes that started more than one interval after they were due",
    );
    let running = Gauge::<i64>::default();
    metrics.registry_mut().register(
        "switchboard_health_checks_running",
        "Active health checks this node runs (its share)",
        running.clone(),
    );
    metrics.add_scrape_hook(Box::new(move || {
        use std::sync::atomic::Ordering::Relaxed;
        let follow = |counter: &Counter<u64>, value: &AtomicU64| {
            counter.inc_by(value.load(Relaxed).saturating_sub(counter.get()));
        };
        follow(&answered, &dns.answered);
        follow(&limited, &dns.rate_limited);
        follow(&refused, &dns.refused);
        if let Some(health) = health.upgrade() {
            follow(&probes, &health.probes);
            follow(&failures, &health.failures);
            follow(&overdue, &health.overdue);
            running.set(health.running.load(Relaxed) as i64);
        }
    }));
}
