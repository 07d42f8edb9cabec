//! The engine over an embedded store, without a global tier: rules through the view,
//! counters per descriptor set, failure policies for `redis` rules while no Redis answers,
//! permits, and bad input.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sb_ratelimit::{RateLimitError, RateLimiter, RuleCatalog, RuleSpec, ServedBy};
use sb_store_embedded::{EmbeddedOptions, EmbeddedStore};

async fn limiter(live_nodes: usize) -> (Arc<RateLimiter>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(EmbeddedOptions::new(dir.path().join("store.redb"))).await.unwrap();
    let catalog = RuleCatalog::start(store, Duration::from_secs(5)).await.unwrap();
    (Arc::new(RateLimiter::new(Arc::new(catalog), None, Arc::new(move || live_nodes))), dir)
}

async fn rule(limiter: &RateLimiter, ns: &str, name: &str, json: &str) {
    let spec: RuleSpec = serde_json::from_str(json).unwrap();
    limiter.catalog().put(ns, name, spec, &sb_audit::Audit::system("test")).await.unwrap();
}

fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// No refill during a test: exactly the burst is allowed.
const STILL: &str = r#""rate":1,"period_ms":3600000"#;

#[tokio::test]
async fn each_descriptor_set_has_its_own_counter_and_a_rule_change_starts_afresh() {
    let (limiter, _dir) = limiter(1).await;
    rule(
        &limiter,
        "public",
        "r",
        &format!(
            r#"{{"algorithm":"gcra",{STILL},"burst":2,"descriptors":[{{"key":"user"}},{{"key":"ip"}}]}}"#
        ),
    )
    .await;
    let a = [("user", "u1"), ("ip", "10.0.0.1")];
    let allowed = |n: &[bool]| n.to_vec();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(limiter.check("public", "r", &a[..], 1).await.unwrap().decision.allowed);
    }
    assert_eq!(got, allowed(&[true, true, false]));
    let b = [("user", "u1"), ("ip", "10.0.0.2"), ("route", "/extra-is-ignored")];
    assert!(limiter.check("public", "r", &b[..], 2).await.unwrap().decision.allowed);
    // The same name in another namespace is another rule.
    assert!(matches!(limiter.check("dev", "r", &a[..], 1).await, Err(RateLimitError::RuleNotFound { .. })));
    // Rewriting the rule resets its counters.
    rule(
        &limiter,
        "public",
        "r",
        &format!(
            r#"{{"algorithm":"gcra",{STILL},"burst":2,"descriptors":[{{"key":"user"}},{{"key":"ip"}}]}}"#
        ),
    )
    .await;
    assert!(limiter.check("public", "r", &a[..], 1).await.unwrap().decision.allowed);
}

#[tokio::test]
async fn redis_rules_without_redis_apply_their_failure_policy() {
    // Four live nodes: the local policy enforces a quarter of the limit here.
    let (limiter, _dir) = limiter(4).await;
    for policy in ["local", "open", "closed"] {
        let json = format!(
            r#"{{"algorithm":"gcra",{STILL},"burst":20,"tier":"redis","failure_policy":"{policy}"}}"#
        );
        rule(&limiter, "public", policy, &json).await;
    }
    let none: [(&str, &str); 0] = [];
    let mut local = Vec::new();
    for _ in 0..10 {
        let answer = limiter.check("public", "local", &none[..], 1).await.unwrap();
        assert_eq!(answer.served_by, ServedBy::FallbackLocal);
        local.push(answer.decision.allowed);
    }
    assert_eq!(local.iter().filter(|a| **a).count(), 5, "20 ÷ 4 live nodes");
    let open = limiter.check("public", "open", &none[..], 20).await.unwrap();
    assert_eq!((open.served_by, open.decision.allowed), (ServedBy::FallbackOpen, true));
    let closed = limiter.check("public", "closed", &none[..], 1).await.unwrap();
    assert_eq!((closed.served_by, closed.decision.allowed), (ServedBy::FallbackClosed, false));
    assert!(closed.decision.retry_after_ms > 0);
}

#[tokio::test]
async fn permits_go_back_where_they_came_from() {
    let (limiter, _dir) = limiter(2).await;
    rule(&limiter, "public", "local", r#"{"algorithm":"concurrency","max_permits":1}"#).await;
    rule(&limiter, "public", "global", r#"{"algorithm":"concurrency","max_permits":2,"tier":"redis"}"#).await;
    let user = map(&[("user", "u1")]);
    let first = limiter.acquire("public", "local", &user).await.unwrap();
    let id = first.permit_id.clone().expect("granted");
    assert!(!limiter.acquire("public", "local", &user).await.unwrap().decision.allowed);
    assert!(limiter.release("public", "local", &user, &id).await.unwrap().released);
    assert!(matches!(
        limiter.release("public", "local", &user, &id).await,
        Err(RateLimitError::PermitNotFound { .. })
    ));
    // A redis rule without Redis: this node's share (2 ÷ 2 live nodes = 1), on the local tier.
    let granted = limiter.acquire("public", "global", &user).await.unwrap();
    assert_eq!(granted.served_by, ServedBy::FallbackLocal);
    assert!(!limiter.acquire("public", "global", &user).await.unwrap().decision.allowed);
    let id = granted.permit_id.unwrap();
    assert!(limiter.release("public", "global", &user, &id).await.unwrap().released);
}

#[tokio::test]
async fn bad_input_is_refused_by_name() {
    let (limiter, _dir) = limiter(1).await;
    rule(
        &limiter,
        "public",
        "r",
        &format!(r#"{{"algorithm":"gcra",{STILL},"burst":5,"descriptors":[{{"key":"user"}}]}}"#),
    )
    .await;
    rule(&limiter, "public", "c", r#"{"algorithm":"concurrency","max_permits":1}"#).await;
    let user = [("user", "u1")];
    let field = |result: Result<sb_ratelimit::Answer, RateLimitError>| match result {
        Err(RateLimitError::InvalidArgument { field, .. }) => field,
        other => panic!("expected an invalid argument, got {other:?}"),
    };
    assert_eq!(field(limiter.check("public", "r", &user[..], 0).await), "hits");
    assert_eq!(field(limiter.check("public", "r", &user[..], -1).await), "hits");
    assert_eq!(field(limiter.check("public", "r", &user[..], 6).await), "hits", "more than the burst");
    assert_eq!(field(limiter.check("public", "r", &user[..], i64::MAX).await), "hits");
    let none: [(&str, &str); 0] = [];
    assert_eq!(field(limiter.check("public", "r", &none[..], 1).await), "descriptors");
    assert_eq!(field(limiter.check("public", "r", &[("user", "a\u{1f}b")][..], 1).await), "descriptors");
    assert_eq!(field(limiter.check("public", "c", &none[..], 1).await), "rule");
    assert_eq!(field(limiter.check("a/b", "r", &user[..], 1).await), "namespace");
    assert!(matches!(
        limiter.release("public", "c", &none[..], "not-a-permit").await,
        Err(RateLimitError::InvalidArgument { field: "permit_id", .. })
    ));
    assert!(matches!(
        limiter.acquire("public", "r", &user[..]).await,
        Err(RateLimitError::InvalidArgument { .. })
    ));
    assert!(matches!(
        limiter.catalog().delete("public", "nope", &sb_audit::Audit::system("test")).await,
        Err(RateLimitError::RuleNotFound { .. })
    ));
}
