//! Rate limiting: rules stored under a namespace and read through a view; GCRA,
//! sliding-window, fixed-window and concurrency-permit algorithms; a local tier in this
//! node's memory and a global tier behind the [`GlobalTier`] port (Redis, in
//! `sb-ratelimit-redis`), with a per-rule failure policy while the global tier is down.
//!
//! Architecture invariant: this crate sees the store only through the `sb-store` port
//! and knows no Redis client, no HTTP framework and no storage engine. Counters never go
//! to the store: they live in memory (local) or in the global tier.
#![forbid(unsafe_code)]

mod catalog;
mod decision;
mod engine;
mod error;
mod local;
mod rule;
mod tier;

pub use catalog::{RuleCatalog, RuleView, StoredRule};
pub use decision::{ceil_ms, Decision, Limit};
pub use engine::{
    counter_key, Answer, Descriptors, LiveNodes, PermitAnswer, RateLimiter, ReleaseAnswer, ServedBy, MAX_HITS,
};
pub use error::{RateLimitError, RateLimitResult};
pub use local::LocalTier;
pub use rule::{
    rule_key, validate_name, Algorithm, DescriptorMatch, FailurePolicy, Rule, RuleSpec, Tier,
    DEFAULT_NAMESPACE, RULES_PREFIX,
};
pub use tier::{GlobalTier, TierHealth, TierUnavailable};
