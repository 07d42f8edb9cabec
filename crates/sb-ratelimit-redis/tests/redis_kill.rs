//! The Redis-kill phase of the accuracy checker, on a Redis of the test's own: clients
//! saturate rules while Redis is SIGKILLed mid-run and later restarted. No request ever
//! errors; while Redis is down each rule applies its failure policy (`local`: this node's
//! share, limit ÷ live nodes; `open`; `closed`); when Redis is back, the global limit is.
//! How fast the switch happens is the bench tool's business, not asserted here.

mod common;

use std::time::Duration;

use common::{engine, Engine, OwnRedis};
use sb_ratelimit::{GlobalTier, ServedBy};
use tokio::time::Instant;

/// Checks `rule` as fast as one client can for `secs`; returns every answer's
/// (served_by, allowed), in order.
async fn hammer(engine: &Engine, rule: &str, secs: f64) -> Vec<(ServedBy, bool)> {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut answers = Vec::new();
    let none: [(&str, &str); 0] = [];
    while Instant::now() < deadline {
        let answer = engine.limiter.check("public", rule, &none[..], 1).await.expect("no request errors");
        answers.push((answer.served_by, answer.decision.allowed));
        // A steady offered load, well above every rule's rate.
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    answers
}

fn allowed(answers: &[(ServedBy, bool)], by: ServedBy) -> usize {
    answers.iter().filter(|(served_by, allowed)| *served_by == by && *allowed).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_switches_to_the_failure_policy_and_back() {
    let mut redis = OwnRedis::start();
    // Two live nodes: the local policy enforces half the limit on this node.
    let engine = engine(&redis.url(), 2).await;
    assert!(engine.tier.health().is_up());
    let gcra = |policy: &str| {
        format!(r#"{{"algorithm":"gcra","rate":200,"burst":20,"tier":"redis","failure_policy":"{policy}"}}"#)
    };
    engine.rule("share", &gcra("local")).await;
    engine.rule("open", &gcra("open")).await;
    engine.rule("closed", &gcra("closed")).await;

    // Up: Redis answers, and enforces the whole limit.
    let up = hammer(&engine, "share", 1.0).await;
    assert!(up.iter().all(|(by, _)| *by == ServedBy::Redis), "Redis answers while it is up");
    let got = allowed(&up, ServedBy::Redis);
    assert!((180..=240).contains(&got), "allowed {got} in 1 s, expected about 200 + 20");

    // Killed mid-run: the same clients keep going, and never see an error.
    redis.kill();
    let down = hammer(&engine, "share", 1.5).await;
    let first_fallback = down
        .iter()
        .position(|(by, _)| *by == ServedBy::FallbackLocal)
        .expect("the rule switched to its failure policy");
    assert!(
        down[first_fallback..].iter().all(|(by, _)| *by == ServedBy::FallbackLocal),
        "once switched, the rule stays on its policy while Redis is down"
    );
    assert!(!engine.tier.health().is_up());
    assert_eq!(engine.tier.health().failovers(), 1, "one switch, counted once");
    // This node's share: 100/s and a burst of 10, over at most 1.5 s (the upper bound is
    // the point; the lower one only says the share was not zero).
    let share = allowed(&down, ServedBy::FallbackLocal);
    assert!(
        (80..=170).contains(&share),
        "allowed {share} on the local share in 1.5 s, expected about 100 × t + 10"
    );
    let open = hammer(&engine, "open", 0.2).await;
    assert!(open.iter().all(|answer| *answer == (ServedBy::FallbackOpen, true)), "open allows everything");
    let closed = hammer(&engine, "closed", 0.2).await;
    assert!(
        closed.iter().all(|answer| *answer == (ServedBy::FallbackClosed, false)),
        "closed denies everything"
    );

    // Restarted: the global limit returns by itself.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let back = hammer(&engine, "share", 0.05).await;
        if back.iter().any(|(by, _)| *by == ServedBy::Redis) {
            break;
        }
        assert!(Instant::now() < deadline, "Redis answered again within 10 s of its restart");
    }
    assert!(engine.tier.health().is_up());
    let again = hammer(&engine, "share", 1.0).await;
    assert!(again.iter().all(|(by, _)| *by == ServedBy::Redis), "Redis answers again");
    // A restarted Redis lost its counters: a fresh allowance of about 200 + 20.
    let got = allowed(&again, ServedBy::Redis);
    assert!((180..=240).contains(&got), "allowed {got} in 1 s after the restart, expected about 200 + 20");
}
