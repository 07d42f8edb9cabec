//! The accuracy checker on the Redis tier, through the engine, against the shared Redis:
//! eight concurrent clients saturate a rule for `SB_RATELIMIT_CHECK_SECS` (default 10, the
//! issue's run length) of real time, since Redis's clock decides.
//!
//! - GCRA and the sliding window: allowed within ±1% of rate × time + burst (the sliding
//!   window's burst is inside its rate: see the local checker);
//! - fixed window: between rate × time and rate × time + one window's limit (±1% for a
//!   real clock's edges);
//! - permits: never more than N held at once.

mod common;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{engine, shared_redis_url, Engine};

use sb_ratelimit::ServedBy;
use tokio::time::Instant;

const CLIENTS: usize = 8;

fn run_secs() -> f64 {
    std::env::var("SB_RATELIMIT_CHECK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(10.0)
}

/// Saturates `rule` until `secs` after the start; returns the allowed count and the time
/// from the first request sent to the last allowed answer received (so a client that the
/// scheduler starts late or stalls at the end does not skew the expectation).
async fn saturate(engine: &Engine, rule: &'static str, secs: f64) -> (u64, f64) {
    let allowed = Arc::new(AtomicU64::new(0));
    let last_allowed_ns = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (limiter, allowed, last_allowed_ns) =
                (engine.limiter.clone(), allowed.clone(), last_allowed_ns.clone());
            tokio::spawn(async move {
                let descriptors = [("user", "u1")];
                while Instant::now() < deadline {
                    let answer =
                        limiter.check("public", rule, &descriptors[..], 1).await.expect("no request errors");
                    assert_eq!(answer.served_by, ServedBy::Redis);
                    if answer.decision.allowed {
                        allowed.fetch_add(1, Ordering::Relaxed);
                        last_allowed_ns.fetch_max(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    (allowed.load(Ordering::Relaxed), last_allowed_ns.load(Ordering::Relaxed) as f64 / 1e9)
}

fn assert_within(name: &str, got: u64, expected: f64, tolerance: f64) {
    let error = (got as f64 - expected).abs() / expected;
    assert!(error <= tolerance, "{name}: allowed {got}, expected {expected:.0} ± {:.1}%", tolerance * 100.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_gcra_allows_rate_times_time_plus_burst() {
    let engine = engine(&shared_redis_url(), 1).await;
    engine
        .rule(
            "gcra",
            r#"{"algorithm":"gcra","rate":500,"burst":250,"descriptors":[{"key":"user"}],"tier":"redis"}"#,
        )
        .await;
    let (allowed, secs) = saturate(&engine, "gcra", run_secs()).await;
    assert_within("redis gcra", allowed, 500.0 * secs + 250.0, 0.01);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sliding_window_allows_rate_times_time() {
    let engine = engine(&shared_redis_url(), 1).await;
    // Redis aligns windows to its own clock; the run starts on a window's edge, as the
    // local checker's does (a run that starts mid-window gets that window's whole limit
    // early, up to one limit more).
    engine
        .rule(
            "sliding",
            r#"{"algorithm":"sliding_window","limit":250,"window_ms":500,"descriptors":[{"key":"user"}],"tier":"redis"}"#,
        )
        .await;
    common::align_to_redis_window(&shared_redis_url(), 500).await;
    let (allowed, secs) = saturate(&engine, "sliding", run_secs()).await;
    assert_within("redis sliding window", allowed, 500.0 * secs, 0.01);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_fixed_window_stays_between_rate_times_time_and_one_window_more() {
    let engine = engine(&shared_redis_url(), 1).await;
    engine
        .rule(
            "fixed",
            r#"{"algorithm":"fixed_window","limit":100,"window_ms":200,"descriptors":[{"key":"user"}],"tier":"redis"}"#,
        )
        .await;
    // Windows align to Redis's clock: start on an edge, and count over the nominal run
    // (fixed windows allow in bursts, so the last allowed answer says nothing of the end).
    common::align_to_redis_window(&shared_redis_url(), 200).await;
    let secs = run_secs();
    let (allowed, _) = saturate(&engine, "fixed", secs).await;
    let floor = 500.0 * secs;
    let (low, high) = (floor * 0.99, (floor + 100.0) * 1.01);
    assert!(
        (low..=high).contains(&(allowed as f64)),
        "redis fixed window: allowed {allowed}, expected {floor} to {}",
        floor + 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_permits_are_never_held_by_more_than_n() {
    let engine = engine(&shared_redis_url(), 1).await;
    engine
        .rule("permits", r#"{"algorithm":"concurrency","max_permits":3,"permit_ttl_ms":5000,"tier":"redis"}"#)
        .await;
    let held = Arc::new(AtomicI64::new(0));
    let most = Arc::new(AtomicI64::new(0));
    let granted = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(run_secs());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (limiter, held, most, granted) =
                (engine.limiter.clone(), held.clone(), most.clone(), granted.clone());
            tokio::spawn(async move {
                let none: [(&str, &str); 0] = [];
                while Instant::now() < deadline {
                    let answer =
                        limiter.acquire("public", "permits", &none[..]).await.expect("no request errors");
                    let Some(id) = answer.permit_id else {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    };
                    let now_held = held.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now_held, Ordering::SeqCst);
                    granted.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(1 + (i as u64 % 4))).await;
                    held.fetch_sub(1, Ordering::SeqCst);
                    let released =
                        limiter.release("public", "permits", &none[..], &id).await.expect("released");
                    assert!(released.released);
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    let most = most.load(Ordering::SeqCst);
    assert!(most <= 3, "{most} permits held at once, limit 3");
    assert!(granted.load(Ordering::Relaxed) > 100, "permits kept flowing");
}
