//! The engine: a request names a rule and its descriptors; the engine finds the rule in
//! the view, builds the counter key, and asks the rule's tier. A `redis` rule whose tier
//! is down (or not configured) gets its failure policy instead, never an error.
//!
//! This is the in-process API the gateway calls; the HTTP handlers are thin over it.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::{Arc, Weak};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::catalog::RuleCatalog;
use crate::decision::{Decision, Limit};
use crate::error::{RateLimitError, RateLimitResult};
use crate::local::LocalTier;
use crate::rule::{validate_name, Algorithm, FailurePolicy, Rule, Tier};
use crate::tier::GlobalTier;
use sb_store::view::Entry;

/// The most hits one check may ask for, whatever the rule.
pub const MAX_HITS: i64 = 1_000_000_000;
/// What a `closed` rule tells clients to wait while the global tier is down.
const CLOSED_RETRY_AFTER_MS: u64 = 1000;
/// Separates the parts of a counter key; descriptor values may not contain it.
const KEY_SEPARATOR: char = '\u{1f}';

/// The request's descriptors, by key. Extra descriptors a rule does not name are ignored.
pub trait Descriptors {
    fn descriptor(&self, key: &str) -> Option<&str>;
}

impl Descriptors for HashMap<String, String> {
    fn descriptor(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl Descriptors for BTreeMap<String, String> {
    fn descriptor(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl Descriptors for [(&str, &str)] {
    fn descriptor(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
}

/// Who answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServedBy {
    Local,
    Redis,
    /// The global tier was down: this node's share of the limit, on its local tier.
    FallbackLocal,
    FallbackOpen,
    FallbackClosed,
    /// A descriptor had another value than the rule matches: the rule does not apply.
    NotMatched,
}

const SERVED_BY: [ServedBy; 6] = [
    ServedBy::Local,
    ServedBy::Redis,
    ServedBy::FallbackLocal,
    ServedBy::FallbackOpen,
    ServedBy::FallbackClosed,
    ServedBy::NotMatched,
];

impl ServedBy {
    fn label(self) -> &'static str {
        match self {
            ServedBy::Local => "local",
            ServedBy::Redis => "redis",
            ServedBy::FallbackLocal => "fallback_local",
            ServedBy::FallbackOpen => "fallback_open",
            ServedBy::FallbackClosed => "fallback_closed",
            ServedBy::NotMatched => "not_matched",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Answer {
    #[serde(flatten)]
    pub decision: Decision,
    pub served_by: ServedBy,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PermitAnswer {
    #[serde(flatten)]
    pub decision: Decision,
    /// Present when a permit was granted: give it to `release`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permit_id: Option<String>,
    pub permit_ttl_ms: u64,
    pub served_by: ServedBy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ReleaseAnswer {
    /// False only when the global tier is down: the permit then expires by its TTL.
    pub released: bool,
    pub served_by: ServedBy,
}

/// How many nodes share a global limit when each enforces its part (the membership view).
pub type LiveNodes = Arc<dyn Fn() -> usize + Send + Sync>;

pub struct RateLimiter {
    catalog: Arc<RuleCatalog>,
    local: Arc<LocalTier>,
    global: Option<Arc<dyn GlobalTier>>,
    live_nodes: LiveNodes,
    /// `[served_by][allowed]`, made once so a decision only increments an atomic.
    decisions: Vec<[Counter; 2]>,
    decision_family: Family<DecisionLabels, Counter>,
    local_keys: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    served_by: &'static str,
    allowed: &'static str,
}

impl RateLimiter {
    pub fn new(
        catalog: Arc<RuleCatalog>,
        global: Option<Arc<dyn GlobalTier>>,
        live_nodes: LiveNodes,
    ) -> Self {
        // The family's counters are fetched once: a decision then increments an atomic
        // instead of hashing labels.
        let decision_family = Family::<DecisionLabels, Counter>::default();
        let decisions = SERVED_BY
            .iter()
            .map(|served_by| {
                ["false", "true"].map(|allowed| {
                    decision_family
                        .get_or_create(&DecisionLabels { served_by: served_by.label(), allowed })
                        .clone()
                })
            })
            .collect();
        RateLimiter {
            catalog,
            local: Arc::new(LocalTier::new()),
            global,
            live_nodes,
            decisions,
            decision_family,
            local_keys: Gauge::default(),
        }
    }

    pub fn catalog(&self) -> &Arc<RuleCatalog> {
        &self.catalog
    }

    pub fn local(&self) -> &Arc<LocalTier> {
        &self.local
    }

    pub fn global(&self) -> Option<&Arc<dyn GlobalTier>> {
        self.global.as_ref()
    }

    /// Adds the engine's metrics (and the global tier's) to a registry.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "switchboard_ratelimit_decisions",
            "Rate-limit decisions by who answered and whether they allowed",
            self.decision_family.clone(),
        );
        registry.register(
            "switchboard_ratelimit_local_keys",
            "Counter keys held by the local tier (after the last sweep)",
            self.local_keys.clone(),
        );
        if let Some(global) = &self.global {
            global.health().register(registry);
        }
    }

    /// Forgets idle local keys every `period` until the limiter is dropped.
    pub fn spawn_sweeper(self: &Arc<Self>, period: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<RateLimiter> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(limiter) = weak.upgrade() else { return };
                limiter.local.sweep();
                limiter.local_keys.set(limiter.local.len() as i64);
            }
        })
    }

    /// A decision for `hits` on the rule's counter for these descriptors.
    pub async fn check<D: Descriptors + ?Sized>(
        &self,
        namespace: &str,
        rule_name: &str,
        descriptors: &D,
        hits: i64,
    ) -> RateLimitResult<Answer> {
        let entry = self.rule(namespace, rule_name)?;
        let (rule, revision) = (&entry.value, entry.mod_revision);
        if let Algorithm::Concurrency { .. } = rule.algorithm {
            return Err(RateLimitError::invalid(
                "rule",
                format!(
                    "rule {rule_name:?} limits concurrency: acquire and release permits instead of checking"
                ),
            ));
        }
        let max_hits = rule.algorithm.max_hits();
        if !(1..=MAX_HITS).contains(&hits) || hits as u64 > max_hits {
            return Err(RateLimitError::invalid(
                "hits",
                format!(
                    "hits is {hits}, expected 1 to {} (rule {rule_name:?} allows at most {max_hits} at once)",
                    max_hits.min(MAX_HITS as u64)
                ),
            ));
        }
        let hits = hits as u64;
        let limit = Limit::of(&rule.algorithm);
        let Some(key) = counter_key(namespace, rule, revision, descriptors)? else {
            return Ok(self.count(not_matched(limit)));
        };
        if rule.tier == Tier::Local {
            return Ok(self.count(Answer {
                decision: self.local.check(&key, limit, hits),
                served_by: ServedBy::Local,
            }));
        }
        if let Some(global) = self.global_up() {
            if let Ok(decision) = global.check(&key, limit, hits).await {
                return Ok(self.count(Answer { decision, served_by: ServedBy::Redis }));
            }
        }
        let answer = match rule.failure_policy {
            FailurePolicy::Local => Answer {
                decision: self.local.check(&key, limit.share(self.nodes()), hits),
                served_by: ServedBy::FallbackLocal,
            },
            FailurePolicy::Open => Answer { decision: allow_all(limit), served_by: ServedBy::FallbackOpen },
            FailurePolicy::Closed => Answer { decision: deny_all(), served_by: ServedBy::FallbackClosed },
        };
        Ok(self.count(answer))
    }

    /// Takes a permit on a concurrency rule's counter for these descriptors.
    pub async fn acquire<D: Descriptors + ?Sized>(
        &self,
        namespace: &str,
        rule_name: &str,
        descriptors: &D,
    ) -> RateLimitResult<PermitAnswer> {
        let entry = self.rule(namespace, rule_name)?;
        let (rule, revision) = (&entry.value, entry.mod_revision);
        let Algorithm::Concurrency { permit_ttl_ms, .. } = rule.algorithm else {
            return Err(not_a_concurrency_rule(rule_name, rule));
        };
        let limit = Limit::of(&rule.algorithm);
        let answer = |decision: Decision, permit_id: Option<String>, served_by| PermitAnswer {
            permit_id: permit_id.filter(|_| decision.allowed),
            decision,
            permit_ttl_ms,
            served_by,
        };
        let Some(key) = counter_key(namespace, rule, revision, descriptors)? else {
            let free = not_matched(limit);
            return Ok(answer(
                free.decision,
                Some(new_permit_id(PermitOrigin::Untracked)),
                ServedBy::NotMatched,
            ));
        };
        let Limit::Concurrency { ttl_ns, .. } = limit else {
            return Err(not_a_concurrency_rule(rule_name, rule));
        };
        if rule.tier == Tier::Local {
            let id = new_permit_id(PermitOrigin::Local);
            let decision = self.local.acquire(&key, limit.capacity(), ttl_ns, &id);
            self.count(Answer { decision, served_by: ServedBy::Local });
            return Ok(answer(decision, Some(id), ServedBy::Local));
        }
        if let Some(global) = self.global_up() {
            let id = new_permit_id(PermitOrigin::Global);
            if let Ok(decision) = global.acquire(&key, limit, &id).await {
                self.count(Answer { decision, served_by: ServedBy::Redis });
                return Ok(answer(decision, Some(id), ServedBy::Redis));
            }
        }
        let (decision, id, served_by) = match rule.failure_policy {
            FailurePolicy::Local => {
                let id = new_permit_id(PermitOrigin::Local);
                let share = limit.share(self.nodes()).capacity();
                (self.local.acquire(&key, share, ttl_ns, &id), Some(id), ServedBy::FallbackLocal)
            }
            FailurePolicy::Open => {
                (allow_all(limit), Some(new_permit_id(PermitOrigin::Untracked)), ServedBy::FallbackOpen)
            }
            FailurePolicy::Closed => (deny_all(), None, ServedBy::FallbackClosed),
        };
        self.count(Answer { decision, served_by });
        Ok(answer(decision, id, served_by))
    }

    /// Gives a permit back. An unknown, released or expired permit is an error
    /// ([`RateLimitError::PermitNotFound`]).
    pub async fn release<D: Descriptors + ?Sized>(
        &self,
        namespace: &str,
        rule_name: &str,
        descriptors: &D,
        permit_id: &str,
    ) -> RateLimitResult<ReleaseAnswer> {
        let entry = self.rule(namespace, rule_name)?;
        let (rule, revision) = (&entry.value, entry.mod_revision);
        if !matches!(rule.algorithm, Algorithm::Concurrency { .. }) {
            return Err(not_a_concurrency_rule(rule_name, rule));
        }
        let origin = permit_origin(permit_id)?;
        let not_found =
            || RateLimitError::PermitNotFound { rule: rule_name.to_owned(), permit_id: permit_id.to_owned() };
        let key = counter_key(namespace, rule, revision, descriptors)?;
        let (key, origin) = match (key, origin) {
            (_, PermitOrigin::Untracked) => {
                return Ok(ReleaseAnswer { released: true, served_by: ServedBy::FallbackOpen });
            }
            (None, _) => return Err(not_found()),
            (Some(key), origin) => (key, origin),
        };
        match origin {
            PermitOrigin::Local => {
                let served_by =
                    if rule.tier == Tier::Local { ServedBy::Local } else { ServedBy::FallbackLocal };
                if self.local.release(&key, permit_id) {
                    Ok(ReleaseAnswer { released: true, served_by })
                } else {
                    Err(not_found())
                }
            }
            _ => {
                if let Some(global) = self.global_up() {
                    match global.release(&key, permit_id).await {
                        Ok(true) => return Ok(ReleaseAnswer { released: true, served_by: ServedBy::Redis }),
                        Ok(false) => return Err(not_found()),
                        Err(_) => {}
                    }
                }
                // Redis holds the permit and cannot be told now: it expires by its TTL.
                Ok(ReleaseAnswer { released: false, served_by: fallback_label(rule.failure_policy) })
            }
        }
    }

    /// The rule as the view has it (shared, not copied: this is on every decision).
    fn rule(&self, namespace: &str, name: &str) -> RateLimitResult<Arc<Entry<Rule>>> {
        validate_name("namespace", namespace)?;
        validate_name("rule", name)?;
        self.catalog.lookup(namespace, name).ok_or_else(|| RateLimitError::RuleNotFound {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    fn global_up(&self) -> Option<&Arc<dyn GlobalTier>> {
        self.global.as_ref().filter(|global| global.health().is_up())
    }

    fn nodes(&self) -> u64 {
        ((self.live_nodes)()).max(1) as u64
    }

    fn count(&self, answer: Answer) -> Answer {
        let index = SERVED_BY.iter().position(|s| *s == answer.served_by).unwrap_or(0);
        self.decisions[index][answer.decision.allowed as usize].inc();
        answer
    }
}

fn fallback_label(policy: FailurePolicy) -> ServedBy {
    match policy {
        FailurePolicy::Local => ServedBy::FallbackLocal,
        FailurePolicy::Open => ServedBy::FallbackOpen,
        FailurePolicy::Closed => ServedBy::FallbackClosed,
    }
}

fn not_a_concurrency_rule(rule_name: &str, rule: &Rule) -> RateLimitError {
    RateLimitError::invalid(
        "rule",
        format!(
            "rule {rule_name:?} uses {}, not concurrency: permits belong to concurrency rules",
            rule.algorithm.name()
        ),
    )
}

fn not_matched(limit: Limit) -> Answer {
    Answer { decision: allow_all(limit), served_by: ServedBy::NotMatched }
}

fn allow_all(limit: Limit) -> Decision {
    Decision { allowed: true, remaining: limit.capacity(), reset_after_ms: 0, retry_after_ms: 0 }
}

fn deny_all() -> Decision {
    Decision {
        allowed: false,
        remaining: 0,
        reset_after_ms: CLOSED_RETRY_AFTER_MS,
        retry_after_ms: CLOSED_RETRY_AFTER_MS,
    }
}

/// `{namespace}␟{rule}␟{revision}␟{value}…` in the rule's descriptor order; `None` when a
/// descriptor's value differs from the one the rule matches. The revision makes a changed
/// rule start with fresh counters.
pub fn counter_key<D: Descriptors + ?Sized>(
    namespace: &str,
    rule: &Rule,
    revision: i64,
    descriptors: &D,
) -> RateLimitResult<Option<String>> {
    let mut key = String::with_capacity(64);
    key.push_str(namespace);
    key.push(KEY_SEPARATOR);
    key.push_str(&rule.name);
    key.push(KEY_SEPARATOR);
    let _ = write!(key, "{revision}");
    for wanted in &rule.descriptors {
        let Some(value) = descriptors.descriptor(&wanted.key) else {
            let keys: Vec<&str> = rule.descriptors.iter().map(|d| d.key.as_str()).collect();
            return Err(RateLimitError::invalid(
                "descriptors",
                format!(
                    "descriptor {:?} is missing: rule {:?} keys on {}",
                    wanted.key,
                    rule.name,
                    keys.join(", ")
                ),
            ));
        };
        crate::rule::validate_descriptor_value(&wanted.key, value)?;
        if wanted.value.as_deref().is_some_and(|v| v != value) {
            return Ok(None);
        }
        key.push(KEY_SEPARATOR);
        key.push_str(value);
    }
    Ok(Some(key))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PermitOrigin {
    Local,
    Global,
    /// Granted without a counter (an `open` fallback, or a rule that did not match).
    Untracked,
}

fn new_permit_id(origin: PermitOrigin) -> String {
    let tag = match origin {
        PermitOrigin::Local => 'l',
        PermitOrigin::Global => 'g',
        PermitOrigin::Untracked => 'u',
    };
    format!("{tag}{:032x}", rand::random::<u128>())
}

fn permit_origin(permit_id: &str) -> RateLimitResult<PermitOrigin> {
    let invalid = || {
        RateLimitError::invalid(
            "permit_id",
            format!("permit_id {permit_id:?} is not a permit id (one letter and 32 hex digits, as acquire returns)"),
        )
    };
    let mut chars = permit_id.chars();
    let origin = match chars.next() {
        Some('l') => PermitOrigin::Local,
        Some('g') => PermitOrigin::Global,
        Some('u') => PermitOrigin::Untracked,
        _ => return Err(invalid()),
    };
    let hex = chars.as_str();
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid());
    }
    Ok(origin)
}
