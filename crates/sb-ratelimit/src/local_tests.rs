use std::sync::Arc;
use std::time::Duration;

use super::*;

const MS: u64 = 1_000_000;

fn gcra_limit(rate_per_sec: u64, burst: u64) -> Limit {
    Limit::Gcra { interval_ns: 1_000_000_000 / rate_per_sec, burst }
}

#[test]
fn gcra_allows_the_burst_at_once_then_one_per_interval() {
    let tier = LocalTier::new();
    let limit = gcra_limit(10, 3); // one per 100 ms, three at once
    let now = 1_000 * MS;
    let answers: Vec<Decision> = (0..4).map(|_| tier.check_at("k", limit, 1, now)).collect();
    assert!(answers[..3].iter().all(|d| d.allowed));
    assert_eq!([answers[0].remaining, answers[1].remaining, answers[2].remaining], [2, 1, 0]);
    let denied = answers[3];
    assert!(!denied.allowed);
    assert_eq!(denied.retry_after_ms, 100);
    assert_eq!(denied.reset_after_ms, 300);
    assert!(!tier.check_at("k", limit, 1, now + 99 * MS).allowed);
    assert!(tier.check_at("k", limit, 1, now + 100 * MS).allowed);
    // Another key has its own allowance.
    assert!(tier.check_at("other", limit, 3, now).allowed);
}

#[test]
fn gcra_hits_count_as_that_many_requests() {
    let tier = LocalTier::new();
    let limit = gcra_limit(10, 5);
    let now = 1_000 * MS;
    assert!(tier.check_at("k", limit, 4, now).allowed);
    let denied = tier.check_at("k", limit, 2, now);
    assert!(!denied.allowed);
    assert_eq!(denied.remaining, 1, "one more hit would fit");
    assert!(tier.check_at("k", limit, 1, now).allowed);
}

#[test]
fn fixed_window_counts_per_aligned_window() {
    let tier = LocalTier::new();
    let limit = Limit::FixedWindow { limit: 3, window_ns: 1000 * MS };
    let start = 5_000 * MS;
    for i in 0..3 {
        assert!(tier.check_at("k", limit, 1, start + i * MS).allowed);
    }
    let denied = tier.check_at("k", limit, 1, start + 400 * MS);
    assert!(!denied.allowed);
    assert_eq!(denied.retry_after_ms, 600);
    assert!(tier.check_at("k", limit, 1, start + 1000 * MS).allowed, "a new window");
}

#[test]
fn sliding_window_weights_the_previous_window() {
    let tier = LocalTier::new();
    let limit = Limit::SlidingWindow { limit: 10, window_ns: 1000 * MS };
    let start = 10_000 * MS;
    assert!(tier.check_at("k", limit, 10, start).allowed);
    // A quarter into the next window, 75% of the previous one still counts: 7.5 + 2 <= 10.
    assert!(tier.check_at("k", limit, 2, start + 1250 * MS).allowed);
    let denied = tier.check_at("k", limit, 1, start + 1250 * MS);
    assert!(!denied.allowed, "7.5 + 2 + 1 > 10");
    assert!(denied.retry_after_ms > 0 && denied.retry_after_ms <= 750, "{denied:?}");
    let later = start + 1250 * MS + denied.retry_after_ms * MS;
    assert!(tier.check_at("k", limit, 1, later).allowed, "allowed after retry_after");
}

#[test]
fn permits_are_bounded_released_and_expire() {
    let tier = LocalTier::new();
    let ttl = 60_000 * MS;
    assert!(tier.acquire("k", 2, ttl, "a").allowed);
    assert!(tier.acquire("k", 2, ttl, "b").allowed);
    assert!(!tier.acquire("k", 2, ttl, "c").allowed);
    assert!(tier.release("k", "a"));
    assert!(!tier.release("k", "a"), "a permit is released once");
    assert!(!tier.release("k", "nope"));
    assert!(tier.acquire("k", 2, ttl, "c").allowed);
}

#[tokio::test(start_paused = true)]
async fn a_crashed_holders_permit_expires_with_its_ttl() {
    let tier = LocalTier::with_tokio_clock();
    assert!(tier.acquire("k", 1, 500 * MS, "crashed").allowed);
    let denied = tier.acquire("k", 1, 500 * MS, "next");
    assert!(!denied.allowed);
    assert_eq!(denied.retry_after_ms, 500);
    tokio::time::advance(Duration::from_millis(501)).await;
    assert!(tier.acquire("k", 1, 500 * MS, "next").allowed);
    assert!(!tier.release("k", "crashed"), "an expired permit is not held");
}

#[tokio::test(start_paused = true)]
async fn idle_keys_are_swept() {
    let tier = LocalTier::with_tokio_clock();
    tier.check("gcra", gcra_limit(10, 1), 1);
    tier.check("window", Limit::FixedWindow { limit: 5, window_ns: 100 * MS }, 1);
    tier.acquire("permits", 1, 100 * MS, "p");
    assert_eq!(tier.sweep(), 0, "every key still matters");
    assert_eq!(tier.len(), 3);
    tokio::time::advance(Duration::from_millis(250)).await;
    assert_eq!(tier.sweep(), 3);
    assert!(tier.is_empty());
}

#[test]
fn concurrent_gcra_checks_never_over_allow() {
    let tier = Arc::new(LocalTier::new());
    // A rate so low that nothing refills during the test: exactly the burst is allowed.
    let limit = gcra_limit(1, 1000);
    let now = 10 * 1_000_000_000;
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let tier = tier.clone();
            std::thread::spawn(move || {
                (0..5000).filter(|_| tier.check_at("hot", limit, 1, now).allowed).count()
            })
        })
        .collect();
    let allowed: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(allowed, 1000);
}
