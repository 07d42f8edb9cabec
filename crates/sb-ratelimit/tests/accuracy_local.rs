//! The accuracy checker on the local tier, over a 10 s run in tokio's paused time (so it
//! costs milliseconds): a saturating load, one check every 100 µs, against each algorithm.
//!
//! - GCRA and the sliding window: allowed within ±1% of rate × time + burst (the sliding
//!   window's "burst" is inside its rate: its first window is spent at once, and no
//!   window ever passes its limit, so it is rate × time);
//! - fixed window: between rate × time and rate × time + one window's limit;
//! - permits: never more than N held at once, with holders that release and holders that
//!   crash (their permits expire).
//!
//! `SB_RATELIMIT_CHECK_SECS` sets the simulated run length.

use std::time::Duration;

use sb_ratelimit::{Limit, LocalTier, RuleSpec};

fn run_secs() -> u64 {
    std::env::var("SB_RATELIMIT_CHECK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(10)
}

fn limit(json: &str) -> Limit {
    let spec: RuleSpec = serde_json::from_str(json).unwrap();
    Limit::of(&spec.into_rule("checker").unwrap().algorithm)
}

/// Checks every `step` for `secs` of paused time; returns the allowed count.
async fn saturate(tier: &LocalTier, key: &str, limit: Limit, secs: u64) -> u64 {
    let step = Duration::from_micros(100);
    let steps = secs * 10_000;
    let mut allowed = 0;
    for _ in 0..steps {
        if tier.check(key, limit, 1).allowed {
            allowed += 1;
        }
        tokio::time::advance(step).await;
    }
    allowed
}

fn assert_within(name: &str, got: u64, expected: f64, tolerance: f64) {
    let error = (got as f64 - expected).abs() / expected;
    assert!(error <= tolerance, "{name}: allowed {got}, expected {expected:.0} ± {:.1}%", tolerance * 100.0);
}

#[tokio::test(start_paused = true)]
async fn gcra_allows_rate_times_time_plus_burst() {
    let secs = run_secs();
    let tier = LocalTier::with_tokio_clock();
    let allowed = saturate(&tier, "gcra", limit(r#"{"algorithm":"gcra","rate":500,"burst":50}"#), secs).await;
    assert_within("gcra", allowed, 500.0 * secs as f64 + 50.0, 0.01);
}

#[tokio::test(start_paused = true)]
async fn sliding_window_allows_rate_times_time() {
    let secs = run_secs();
    let tier = LocalTier::with_tokio_clock();
    let rule = r#"{"algorithm":"sliding_window","limit":100,"window_ms":200}"#;
    let allowed = saturate(&tier, "sliding", limit(rule), secs).await;
    assert_within("sliding window", allowed, 500.0 * secs as f64, 0.01);
}

#[tokio::test(start_paused = true)]
async fn fixed_window_stays_between_rate_times_time_and_one_window_more() {
    let secs = run_secs();
    let tier = LocalTier::with_tokio_clock();
    // Start mid-window, as a real client would.
    tokio::time::advance(Duration::from_millis(70)).await;
    let rule = r#"{"algorithm":"fixed_window","limit":100,"window_ms":200}"#;
    let allowed = saturate(&tier, "fixed", limit(rule), secs).await;
    let floor = 500 * secs;
    assert!(
        (floor..=floor + 100).contains(&allowed),
        "fixed window: allowed {allowed}, expected {floor} to {}",
        floor + 100
    );
}

#[tokio::test(start_paused = true)]
async fn permits_are_never_held_by_more_than_n() {
    let secs = run_secs();
    let tier = LocalTier::with_tokio_clock();
    let Limit::Concurrency { max_permits, ttl_ns } =
        limit(r#"{"algorithm":"concurrency","max_permits":5,"permit_ttl_ms":300}"#)
    else {
        unreachable!()
    };
    // Holders: (permit id, release at, crashed). A crashed holder never releases; its
    // permit counts as held until it expires.
    let mut holders: Vec<(String, tokio::time::Instant, bool)> = Vec::new();
    let mut granted = 0u64;
    let step = Duration::from_millis(1);
    for i in 0..secs * 1000 {
        let now = tokio::time::Instant::now();
        holders.retain(|(id, until, crashed)| {
            if *until > now {
                return true;
            }
            if !crashed {
                assert!(tier.release("p", id), "a live holder's permit {id} is held until released");
            }
            false
        });
        let id = format!("p{i}");
        let decision = tier.acquire("p", max_permits, ttl_ns, &id);
        if decision.allowed {
            granted += 1;
            let crashed = i % 7 == 0;
            // A crashed holder "holds" until its TTL; the others for 20 to 80 ms.
            let hold =
                if crashed { Duration::from_nanos(ttl_ns) } else { Duration::from_millis(20 + (i % 61)) };
            holders.push((id, now + hold, crashed));
        }
        assert!(
            holders.len() as u64 <= max_permits,
            "{} permits held at once, limit {max_permits}",
            holders.len()
        );
        tokio::time::advance(step).await;
    }
    assert!(granted > 10 * secs, "permits kept flowing ({granted} granted)");
}
