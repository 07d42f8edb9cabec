//! What a tier is asked ([`Limit`]: a rule's parameters in nanoseconds) and what it
//! answers ([`Decision`]).

use serde::Serialize;

use crate::rule::Algorithm;

/// A rule's algorithm with its parameters in the units the tiers compute in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// One request every `interval_ns`, up to `burst` at once.
    Gcra {
        interval_ns: u64,
        burst: u64,
    },
    SlidingWindow {
        limit: u64,
        window_ns: u64,
    },
    FixedWindow {
        limit: u64,
        window_ns: u64,
    },
    Concurrency {
        max_permits: u64,
        ttl_ns: u64,
    },
}

const NS_PER_MS: u64 = 1_000_000;

impl Limit {
    pub fn of(algorithm: &Algorithm) -> Limit {
        match *algorithm {
            Algorithm::Gcra { rate, period_ms, burst } => {
                // Rules are checked so that the interval is at least one nanosecond.
                let interval_ns = ((period_ms as u128 * NS_PER_MS as u128) / rate.max(1) as u128) as u64;
                Limit::Gcra { interval_ns: interval_ns.max(1), burst }
            }
            Algorithm::SlidingWindow { limit, window_ms } => {
                Limit::SlidingWindow { limit, window_ns: window_ms * NS_PER_MS }
            }
            Algorithm::FixedWindow { limit, window_ms } => {
                Limit::FixedWindow { limit, window_ns: window_ms * NS_PER_MS }
            }
            Algorithm::Concurrency { max_permits, permit_ttl_ms } => {
                Limit::Concurrency { max_permits, ttl_ns: permit_ttl_ms * NS_PER_MS }
            }
        }
    }

    /// This node's share of a global limit when `nodes` nodes enforce it separately:
    /// `limit ÷ nodes`, never below one.
    pub fn share(self, nodes: u64) -> Limit {
        let nodes = nodes.max(1);
        match self {
            Limit::Gcra { interval_ns, burst } => {
                Limit::Gcra { interval_ns: interval_ns.saturating_mul(nodes), burst: (burst / nodes).max(1) }
            }
            Limit::SlidingWindow { limit, window_ns } => {
                Limit::SlidingWindow { limit: (limit / nodes).max(1), window_ns }
            }
            Limit::FixedWindow { limit, window_ns } => {
                Limit::FixedWindow { limit: (limit / nodes).max(1), window_ns }
            }
            Limit::Concurrency { max_permits, ttl_ns } => {
                Limit::Concurrency { max_permits: (max_permits / nodes).max(1), ttl_ns }
            }
        }
    }

    /// The most a saturated key may hold at once (for answers that deny or allow all).
    pub fn capacity(self) -> u64 {
        match self {
            Limit::Gcra { burst, .. } => burst,
            Limit::SlidingWindow { limit, .. } | Limit::FixedWindow { limit, .. } => limit,
            Limit::Concurrency { max_permits, .. } => max_permits,
        }
    }
}

/// The answer to a check (or a permit acquire).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub allowed: bool,
    /// How many more hits would be allowed right now.
    pub remaining: u64,
    /// When the key is back to its full allowance.
    pub reset_after_ms: u64,
    /// When a denied request may succeed (0 when allowed).
    pub retry_after_ms: u64,
}

/// Nanoseconds to milliseconds, rounded up (a client that waits that long is not early).
pub fn ceil_ms(ns: u64) -> u64 {
    ns.div_ceil(NS_PER_MS)
}
