//! Rate-limit rules: what a rule is, how it is written (a [`RuleSpec`], checked into a
//! [`Rule`]) and how it is stored (`ratelimit/rules/{namespace}/{name}`, JSON with `"v"`).
//!
//! A rule names the descriptors it keys on (Envoy's idea: `user`, `ip`, `route`,
//! `header:x-tenant` or any custom key), an algorithm with its parameters, a tier and the
//! policy that applies while the global tier is unreachable.

use sb_store::codec::StoredValue;
use serde::{Deserialize, Serialize};

use crate::error::RateLimitError;

/// Where rules live in the store.
pub const RULES_PREFIX: &str = "ratelimit/rules/";
/// The namespace used when a request names none.
pub const DEFAULT_NAMESPACE: &str = "public";

/// Upper bounds that keep every computation in range (no overflow, no absurd memory).
pub const MAX_RATE: i64 = 1_000_000_000;
pub const MAX_PERIOD_MS: i64 = 86_400_000;
pub const MAX_WINDOW_MS: i64 = 86_400_000;
pub const MAX_PERMITS: i64 = 100_000;
pub const MAX_PERMIT_TTL_MS: i64 = 86_400_000;
pub const MAX_DESCRIPTORS: usize = 16;
pub const MAX_NAME_BYTES: usize = 128;
pub const MAX_DESCRIPTOR_VALUE_BYTES: usize = 256;

/// One descriptor a rule keys on. Without `value`, every distinct value gets its own
/// counter; with it, the rule applies only to requests whose descriptor has that value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DescriptorMatch {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// The algorithm and its parameters, in the form they are stored and shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "algorithm", rename_all = "snake_case")]
pub enum Algorithm {
    /// `rate` requests per `period_ms` on average, up to `burst` at once (one timestamp
    /// per key). Over a time t a saturated key gets `rate × t / period + burst`.
    Gcra { rate: u64, period_ms: u64, burst: u64 },
    /// At most `limit` per `window_ms`, counting the previous window weighted by how much
    /// of it still overlaps the sliding window.
    SlidingWindow { limit: u64, window_ms: u64 },
    /// At most `limit` per aligned `window_ms` window.
    FixedWindow { limit: u64, window_ms: u64 },
    /// At most `max_permits` held at once; a permit not released expires after
    /// `permit_ttl_ms`, so a crashed holder gives its permit back.
    Concurrency { max_permits: u64, permit_ttl_ms: u64 },
}

impl Algorithm {
    pub fn name(&self) -> &'static str {
        match self {
            Algorithm::Gcra { .. } => "gcra",
            Algorithm::SlidingWindow { .. } => "sliding_window",
            Algorithm::FixedWindow { .. } => "fixed_window",
            Algorithm::Concurrency { .. } => "concurrency",
        }
    }

    /// The most hits one check may ask for: more could never be allowed.
    pub fn max_hits(&self) -> u64 {
        match self {
            Algorithm::Gcra { burst, .. } => *burst,
            Algorithm::SlidingWindow { limit, .. } | Algorithm::FixedWindow { limit, .. } => *limit,
            Algorithm::Concurrency { .. } => 1,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// Counters in this node's memory: each node enforces the full limit.
    #[default]
    Local,
    /// Counters in Redis: one limit across every node.
    Redis,
}

/// What a `redis` rule does while Redis is unreachable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Enforce `limit ÷ live nodes` on this node's local tier.
    #[default]
    Local,
    /// Allow everything.
    Open,
    /// Deny everything.
    Closed,
}

/// A checked rule, as stored under `ratelimit/rules/{namespace}/{name}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub name: String,
    pub descriptors: Vec<DescriptorMatch>,
    #[serde(flatten)]
    pub algorithm: Algorithm,
    pub tier: Tier,
    pub failure_policy: FailurePolicy,
}

impl StoredValue for Rule {
    const KIND: &'static str = "rate-limit rule";
    const FORMAT_VERSION: u32 = 1;
}

/// A rule as a client writes it: every parameter optional and signed, so that a missing,
/// zero or negative value gets a message naming it rather than a parser's complaint.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Optional; when given it must equal the name in the path.
    #[serde(default)]
    pub name: Option<String>,
    /// Shown by reads; ignored on writes.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Shown by reads; ignored on writes.
    #[serde(default)]
    pub revision: Option<i64>,
    #[serde(default)]
    pub descriptors: Vec<DescriptorMatch>,
    pub algorithm: Option<String>,
    pub rate: Option<i64>,
    pub period_ms: Option<i64>,
    pub burst: Option<i64>,
    pub limit: Option<i64>,
    pub window_ms: Option<i64>,
    pub max_permits: Option<i64>,
    pub permit_ttl_ms: Option<i64>,
    pub tier: Option<String>,
    pub failure_policy: Option<String>,
}

const ALGORITHMS: &str = "gcra, sliding_window, fixed_window, concurrency";

impl RuleSpec {
    /// Checks every field and builds the rule; the first problem is the error.
    pub fn into_rule(self, name: &str) -> Result<Rule, RateLimitError> {
        validate_name("name", name)?;
        if let Some(given) = &self.name {
            if given != name {
                return Err(RateLimitError::invalid(
                    "name",
                    format!("body names rule {given:?} but the path names {name:?}"),
                ));
            }
        }
        let algorithm_name = self.algorithm.as_deref().ok_or_else(|| {
            RateLimitError::invalid(
                "algorithm",
                format!("algorithm is missing, expected one of {ALGORITHMS}"),
            )
        })?;
        let given: [(&'static str, Option<i64>); 7] = [
            ("rate", self.rate),
            ("period_ms", self.period_ms),
            ("burst", self.burst),
            ("limit", self.limit),
            ("window_ms", self.window_ms),
            ("max_permits", self.max_permits),
            ("permit_ttl_ms", self.permit_ttl_ms),
        ];
        let (algorithm, used): (Algorithm, &[&str]) = match algorithm_name {
            "gcra" => {
                let rate = required("rate", self.rate, 1, MAX_RATE)?;
                let period_ms = optional("period_ms", self.period_ms, 1000, 1, MAX_PERIOD_MS)?;
                let burst = optional("burst", self.burst, 1, 1, MAX_RATE)?;
                // The emission interval in nanoseconds must be at least 1.
                if period_ms.saturating_mul(1_000_000) < rate {
                    return Err(RateLimitError::invalid(
                        "rate",
                        format!("rate is {rate} per {period_ms} ms, over the limit of one per nanosecond"),
                    ));
                }
                (Algorithm::Gcra { rate, period_ms, burst }, &["rate", "period_ms", "burst"])
            }
            "sliding_window" | "fixed_window" => {
                let limit = required("limit", self.limit, 1, MAX_RATE)?;
                let window_ms = required("window_ms", self.window_ms, 1, MAX_WINDOW_MS)?;
                let algorithm = if algorithm_name == "sliding_window" {
                    Algorithm::SlidingWindow { limit, window_ms }
                } else {
                    Algorithm::FixedWindow { limit, window_ms }
                };
                (algorithm, &["limit", "window_ms"])
            }
            "concurrency" => {
                let max_permits = required("max_permits", self.max_permits, 1, MAX_PERMITS)?;
                let permit_ttl_ms =
                    optional("permit_ttl_ms", self.permit_ttl_ms, 60_000, 1, MAX_PERMIT_TTL_MS)?;
                (Algorithm::Concurrency { max_permits, permit_ttl_ms }, &["max_permits", "permit_ttl_ms"])
            }
            other => {
                return Err(RateLimitError::invalid(
                    "algorithm",
                    format!("unknown algorithm {other:?}, expected one of {ALGORITHMS}"),
                ))
            }
        };
        for (field, value) in given {
            if value.is_some() && !used.contains(&field) {
                return Err(RateLimitError::invalid(
                    field,
                    format!(
                        "{field} does not apply to algorithm {algorithm_name} (it takes {})",
                        used.join(", ")
                    ),
                ));
            }
        }
        let tier = match self.tier.as_deref() {
            None | Some("local") => Tier::Local,
            Some("redis") => Tier::Redis,
            Some(other) => {
                return Err(RateLimitError::invalid(
                    "tier",
                    format!("unknown tier {other:?}, expected local or redis"),
                ))
            }
        };
        let failure_policy = match self.failure_policy.as_deref() {
            None | Some("local") => FailurePolicy::Local,
            Some("open") => FailurePolicy::Open,
            Some("closed") => FailurePolicy::Closed,
            Some(other) => {
                return Err(RateLimitError::invalid(
                    "failure_policy",
                    format!("unknown failure_policy {other:?}, expected local, open or closed"),
                ))
            }
        };
        if self.descriptors.len() > MAX_DESCRIPTORS {
            return Err(RateLimitError::invalid(
                "descriptors",
                format!("rule has {} descriptors, limit is {MAX_DESCRIPTORS}", self.descriptors.len()),
            ));
        }
        for (i, descriptor) in self.descriptors.iter().enumerate() {
            validate_descriptor_key(&descriptor.key)?;
            if self.descriptors[..i].iter().any(|d| d.key == descriptor.key) {
                return Err(RateLimitError::invalid(
                    "descriptors",
                    format!("descriptor {:?} is listed twice", descriptor.key),
                ));
            }
            if let Some(value) = &descriptor.value {
                validate_descriptor_value(&descriptor.key, value)?;
            }
        }
        Ok(Rule { name: name.to_owned(), descriptors: self.descriptors, algorithm, tier, failure_policy })
    }
}

fn required(field: &'static str, value: Option<i64>, min: i64, max: i64) -> Result<u64, RateLimitError> {
    match value {
        None => Err(RateLimitError::invalid(field, format!("{field} is missing, expected {min} to {max}"))),
        Some(v) => in_range(field, v, min, max),
    }
}

fn optional(
    field: &'static str,
    value: Option<i64>,
    default: u64,
    min: i64,
    max: i64,
) -> Result<u64, RateLimitError> {
    value.map_or(Ok(default), |v| in_range(field, v, min, max))
}

fn in_range(field: &'static str, value: i64, min: i64, max: i64) -> Result<u64, RateLimitError> {
    if value < min || value > max {
        return Err(RateLimitError::invalid(field, format!("{field} is {value}, expected {min} to {max}")));
    }
    Ok(value as u64)
}

/// Namespaces and rule names: `[A-Za-z0-9._-]`, 1 to 128 bytes.
pub fn validate_name(field: &'static str, name: &str) -> Result<(), RateLimitError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > MAX_NAME_BYTES || !name.chars().all(ok_char) {
        return Err(RateLimitError::invalid(
            field,
            format!("{field} {name:?} is not valid: expected 1 to {MAX_NAME_BYTES} characters of A-Z a-z 0-9 . _ -"),
        ));
    }
    Ok(())
}

/// Descriptor keys: `user`, `ip`, `route`, `header:<name>` or any custom key of
/// `[A-Za-z0-9._:-]`, 1 to 128 bytes.
pub fn validate_descriptor_key(key: &str) -> Result<(), RateLimitError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':');
    if key.is_empty() || key.len() > MAX_NAME_BYTES || !key.chars().all(ok_char) {
        return Err(RateLimitError::invalid(
            "descriptors",
            format!(
                "descriptor key {key:?} is not valid: expected 1 to {MAX_NAME_BYTES} characters of A-Z a-z 0-9 . _ - :"
            ),
        ));
    }
    Ok(())
}

/// Descriptor values: up to 256 bytes, no control characters (the counter key joins
/// values with a control character, so no two descriptor sets share a counter).
pub fn validate_descriptor_value(key: &str, value: &str) -> Result<(), RateLimitError> {
    if value.len() > MAX_DESCRIPTOR_VALUE_BYTES {
        return Err(RateLimitError::invalid(
            "descriptors",
            format!(
                "descriptor {key:?} is {} bytes long, limit is {MAX_DESCRIPTOR_VALUE_BYTES}",
                value.len()
            ),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(RateLimitError::invalid(
            "descriptors",
            format!("descriptor {key:?} has a control character in its value {value:?}"),
        ));
    }
    Ok(())
}

/// The store key of a rule.
pub fn rule_key(namespace: &str, name: &str) -> Vec<u8> {
    format!("{RULES_PREFIX}{namespace}/{name}").into_bytes()
}

/// The store prefix of a namespace's rules.
pub fn namespace_prefix(namespace: &str) -> Vec<u8> {
    format!("{RULES_PREFIX}{namespace}/").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> RuleSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_gcra_rule_round_trips_through_the_stored_format() {
        let rule = spec(
            r#"{"algorithm":"gcra","rate":100,"burst":10,"descriptors":[{"key":"user"}],"tier":"redis"}"#,
        )
        .into_rule("per-user")
        .unwrap();
        assert_eq!(rule.algorithm, Algorithm::Gcra { rate: 100, period_ms: 1000, burst: 10 });
        assert_eq!(rule.failure_policy, FailurePolicy::Local);
        let bytes = sb_store::codec::encode(&rule).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["algorithm"], "gcra");
        assert_eq!(json["v"], 1);
        assert_eq!(sb_store::codec::decode::<Rule>(&bytes).unwrap(), rule);
    }

    #[test]
    fn bad_rules_name_the_field_and_the_value() {
        let cases = [
            (r#"{"algorithm":"gcra","rate":0}"#, "rate", "rate is 0"),
            (r#"{"algorithm":"gcra","rate":-5}"#, "rate", "rate is -5"),
            (r#"{"algorithm":"gcra","rate":5,"burst":0}"#, "burst", "burst is 0"),
            (r#"{"algorithm":"leaky","rate":5}"#, "algorithm", "unknown algorithm \"leaky\""),
            (r#"{"rate":5}"#, "algorithm", "algorithm is missing"),
            (r#"{"algorithm":"fixed_window","limit":5}"#, "window_ms", "window_ms is missing"),
            (r#"{"algorithm":"fixed_window","limit":5,"window_ms":10,"rate":3}"#, "rate", "does not apply"),
            (r#"{"algorithm":"concurrency","max_permits":-1}"#, "max_permits", "max_permits is -1"),
            (r#"{"algorithm":"gcra","rate":5,"tier":"memcached"}"#, "tier", "unknown tier"),
            (
                r#"{"algorithm":"gcra","rate":5,"failure_policy":"maybe"}"#,
                "failure_policy",
                "unknown failure_policy",
            ),
            (r#"{"algorithm":"gcra","rate":5,"descriptors":[{"key":"a b"}]}"#, "descriptors", "not valid"),
            (
                r#"{"algorithm":"gcra","rate":5,"descriptors":[{"key":"u"},{"key":"u"}]}"#,
                "descriptors",
                "twice",
            ),
            (r#"{"algorithm":"gcra","rate":2000000,"period_ms":1}"#, "rate", "one per nanosecond"),
        ];
        for (json, field, message) in cases {
            let error = spec(json).into_rule("r").unwrap_err();
            let RateLimitError::InvalidArgument { field: got, message: text } = &error else {
                panic!("{json}: {error:?}");
            };
            assert_eq!(*got, field, "{json}: {text}");
            assert!(text.contains(message), "{json}: {text}");
        }
        assert!(spec(r#"{"algorithm":"gcra","rate":5}"#).into_rule("bad name").is_err());
        assert!(serde_json::from_str::<RuleSpec>(r#"{"algorithm":"gcra","rat":5}"#).is_err());
    }
}
