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
