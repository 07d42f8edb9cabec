//! The global tier's port: what the engine asks of a shared counter store (Redis today),
//! and [`TierHealth`], the one place that decides it is up or down, logs the switch once,
//! and counts it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tracing::{info, warn};

use crate::decision::{Decision, Limit};

/// The global tier could not answer; the rule's failure policy answers instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("global rate-limit tier unavailable: {0}")]
pub struct TierUnavailable(pub String);

/// A counter store shared by every node. One round trip per decision, timed by the
/// store's own clock (nodes' clocks never meet).
#[async_trait]
pub trait GlobalTier: Send + Sync + 'static {
    /// Its health: while down, the engine does not ask it at all.
    fn health(&self) -> &TierHealth;

    /// A GCRA or window decision for `hits` on `key`.
    async fn check(&self, key: &str, limit: Limit, hits: u64) -> Result<Decision, TierUnavailable>;

    /// Takes permit `permit_id` on `key` if fewer than the limit's maximum are held.
    async fn acquire(&self, key: &str, limit: Limit, permit_id: &str) -> Result<Decision, TierUnavailable>;

    /// Gives a permit back; `Ok(false)` when it is not held (unknown, released, expired).
    async fn release(&self, key: &str, permit_id: &str) -> Result<bool, TierUnavailable>;
}

/// Up or down, with the switch logged once and counted.
pub struct TierHealth {
    name: &'static str,
    up: AtomicBool,
    failovers: AtomicU64,
    recoveries: AtomicU64,
    up_gauge: Gauge,
    failover_counter: Counter,
}

impl TierHealth {
    /// A tier starts down until its first connection succeeds.
    pub fn new(name: &'static str) -> TierHealth {
        TierHealth {
            name,
            up: AtomicBool::new(false),
            failovers: AtomicU64::new(0),
            recoveries: AtomicU64::new(0),
            up_gauge: Gauge::default(),
            failover_counter: Counter::default(),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Marks the tier down; returns true (and logs one line) only on the switch.
    pub fn mark_down(&self, reason: &str) -> bool {
        let switched = self.up.swap(false, Ordering::AcqRel);
        if switched {
            self.failovers.fetch_add(1, Ordering::Relaxed);
            self.failover_counter.inc();
            self.up_gauge.set(0);
            warn!(tier = self.name, %reason, "global rate-limit tier is down: rules apply their failure policy");
        }
        switched
    }

    /// Marks the tier up; returns true (and logs one line) only on the switch.
    pub fn mark_up(&self) -> bool {
        let switched = !self.up.swap(true, Ordering::AcqRel);
        if switched {
            self.recoveries.fetch_add(1, Ordering::Relaxed);
            self.up_gauge.set(1);
            info!(tier = self.name, "global rate-limit tier is up: rules use it again");
        }
        switched
    }

    /// How many times the tier went down.
    pub fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }

    /// How many times it came up (the first connection included).
    pub fn recoveries(&self) -> u64 {
        self.recoveries.load(Ordering::Relaxed)
    }
}

impl TierHealth {
    /// Adds `switchboard_ratelimit_global_tier_up` and `…_failovers_total`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "switchboard_ratelimit_global_tier_up",
            "Whether the global rate-limit tier (Redis) answers (1) or rules apply their failure policy (0)",
            self.up_gauge.clone(),
        );
        registry.register(
            "switchboard_ratelimit_global_tier_failovers",
            "Times the global rate-limit tier went down and rules switched to their failure policy",
            self.failover_counter.clone(),
        );
    }
}
