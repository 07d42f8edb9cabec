//! Prometheus metrics of locks and elections on this node, registered by the composition
//! root into the registry `/metrics` serves. Labels are the kind (`lock`, `election`) and
//! fixed outcome names, never lock names or subjects (unbounded).

use std::sync::{Arc, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::error::CoordError;
use crate::lease_pool::LeasePool;
use crate::names::QueueKind;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub kind: &'static str,
    pub outcome: &'static str,
}

fn kind(kind: QueueKind) -> KindLabels {
    KindLabels {
        kind: match kind {
            QueueKind::Lock => "lock",
            QueueKind::Election => "election",
        },
    }
}

fn wait_histogram() -> Histogram {
    // 0.1 ms .. ~6.5 s, then +Inf (waits run up to five minutes).
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// What an acquire (or campaign) ended with, as a label.
pub(crate) fn outcome(result: &Result<(), &CoordError>) -> &'static str {
    match result {
        Ok(()) => "acquired",
        Err(CoordError::Timeout { .. }) => "timeout",
        Err(CoordError::LeaseLost { .. }) => "lease_lost",
        Err(CoordError::InvalidArgument { .. }) => "invalid",
        Err(_) => "error",
    }
}

/// The counters and histograms; the held gauge is computed from the lease pool at scrape.
#[derive(Clone)]
pub(crate) struct CoordMetrics {
    pub acquires: Family<OutcomeLabels, Counter>,
    pub wait: Family<KindLabels, Histogram, fn() -> Histogram>,
    pub handoffs: Family<KindLabels, Counter>,
    pub lease_losses: Family<KindLabels, Counter>,
    pub releases_rejected: Family<KindLabels, Counter>,
    pub campaigns: Counter,
    pub leader_changes: Counter,
}

impl Default for CoordMetrics {
    fn default() -> Self {
        CoordMetrics {
            acquires: Family::default(),
            wait: Family::new_with_constructor(wait_histogram),
            handoffs: Family::default(),
            lease_losses: Family::default(),
            releases_rejected: Family::default(),
            campaigns: Counter::default(),
            leader_changes: Counter::default(),
        }
    }
}

impl CoordMetrics {
    pub fn acquired(&self, queue: QueueKind, result: Result<(), &CoordError>, waited: bool, seconds: f64) {
        let labels = kind(queue);
        self.acquires.get_or_create(&OutcomeLabels { kind: labels.kind, outcome: outcome(&result) }).inc();
        if queue == QueueKind::Election {
            self.campaigns.inc();
        }
        match result {
            Ok(()) => {
                self.wait.get_or_create(&labels).observe(seconds);
                if waited {
                    self.handoffs.get_or_create(&labels).inc();
                }
                if queue == QueueKind::Election {
                    self.leader_changes.inc();
                }
            }
            Err(CoordError::LeaseLost { .. }) => self.lease_lost(queue),
            Err(_) => {}
        }
    }

    /// An acquire whose caller went away while it waited (its waiter key is removed).
    pub fn abandoned(&self, queue: QueueKind) {
        self.acquires.get_or_create(&OutcomeLabels { kind: kind(queue).kind, outcome: "abandoned" }).inc();
        if queue == QueueKind::Election {
            self.campaigns.inc();
        }
    }

    pub fn lease_lost(&self, queue: QueueKind) {
        self.lease_losses.get_or_create(&kind(queue)).inc();
    }

    pub fn rejected(&self, queue: QueueKind) {
        self.releases_rejected.get_or_create(&kind(queue)).inc();
    }

    pub fn register(&self, registry: &mut Registry, pool: &Arc<LeasePool>) {
        registry.register(
            "switchboard_lock_acquires",
            "Lock acquires and election campaigns through this node, by kind and outcome \
             (acquired, timeout, lease_lost, abandoned, invalid, error)",
            self.acquires.clone(),
        );
        registry.register(
            "switchboard_lock_wait_seconds",
            "Time from an acquire or campaign to its grant, by kind",
            self.wait.clone(),
        );
        registry.register(
            "switchboard_lock_handoffs",
            "Grants to a contender that queued behind another holder, by kind",
            self.handoffs.clone(),
        );
        registry.register(
            "switchboard_lock_lease_losses",
            "Contenders or holders found without their lease (expired while waiting, or at renewal)",
            self.lease_losses.clone(),
        );
        registry.register(
            "switchboard_lock_releases_rejected",
            "Releases and resigns refused because the owner token does not hold the name",
            self.releases_rejected.clone(),
        );
        registry.register(
            "switchboard_election_campaigns",
            "Election campaigns through this node",
            self.campaigns.clone(),
        );
        registry.register(
            "switchboard_election_leader_changes",
            "Campaigns through this node that became leader (a new leader each)",
            self.leader_changes.clone(),
        );
        registry.register_collector(Box::new(Held { pool: Arc::downgrade(pool) }));
    }
}

/// `switchboard_locks_held`, computed from the lease pool at each scrape.
#[derive(Debug)]
struct Held {
    pool: Weak<LeasePool>,
}

impl std::fmt::Debug for LeasePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LeasePool")
    }
}

impl Collector for Held {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(pool) = self.pool.upgrade() else { return Ok(()) };
        let held = [QueueKind::Lock, QueueKind::Election].map(|queue| (kind(queue), pool.held(queue)));
        let mut family = encoder.encode_descriptor(
            "switchboard_locks_held",
            "Locks held and elections led through this node (grants it issued, not released \
             through it, whose lease has not certainly expired), by kind",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (labels, count) in &held {
            ConstGauge::new(*count).encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }
}
