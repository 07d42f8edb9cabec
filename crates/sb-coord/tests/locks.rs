//! The lock and election recipe on the embedded store: FIFO handoff, fencing tokens,
//! owner tokens, timeouts, abandoned waiters, lease re-checks, guarded writes, elections.

use std::sync::Arc;
use std::time::Duration;

use sb_coord::{Coord, CoordError, QueueKind, QueueName};
use sb_store::{RangeRequest, SharedStore};
use sb_store_embedded::{EmbeddedOptions, EmbeddedStore};

async fn open() -> (tempfile::TempDir, SharedStore, Arc<Coord>) {
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore =
        EmbeddedStore::open(EmbeddedOptions::new(dir.path().join("store.redb"))).await.unwrap();
    let coord = Coord::new(store.clone());
    (dir, store, coord)
}

fn lock(name: &str) -> QueueName {
    QueueName::new(QueueKind::Lock, None, name).unwrap()
}

async fn waiters(coord: &Coord, name: &QueueName) -> u64 {
    coord.status(name).await.unwrap().waiters
}

/// Polls until `cond` holds (5 s at most).
async fn eventually(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    for _ in 0..100 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_served_in_order_with_increasing_tokens() {
    let (_dir, _store, coord) = open().await;
    let name = lock("jobs");
    let first = coord.acquire(&name, "alice", 30, 0, String::new()).await.unwrap();
    assert!(!first.waited);
    let mut handles = Vec::new();
    for i in 0..3 {
        let (task_coord, task_name) = (coord.clone(), name.clone());
        handles.push(tokio::spawn(async move {
            let grant = task_coord.acquire(&task_name, "alice", 30, 10_000, String::new()).await.unwrap();
            task_coord.release(&task_name, "alice", &grant.owner).await.unwrap();
            grant.fencing_token
        }));
        // Queue them one after the other.
        let expected = i + 1;
        eventually("the waiter queues", async || waiters(&coord, &name).await == expected).await;
    }
    let status = coord.status(&name).await.unwrap();
    assert_eq!(status.holder.unwrap().fencing_token, first.fencing_token);
    assert_eq!(status.waiters, 3);
    coord.release(&name, "alice", &first.owner).await.unwrap();
    let mut tokens = Vec::new();
    for handle in handles {
        tokens.push(handle.await.unwrap());
    }
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "FIFO order, increasing tokens: {tokens:?}");
    assert!(tokens[0] > first.fencing_token);
    assert!(coord.status(&name).await.unwrap().holder.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_token_of_the_caller_releases() {
    let (_dir, _store, coord) = open().await;
    let name = lock("owner");
    let grant = coord.acquire(&name, "alice", 30, 0, String::new()).await.unwrap();
    // The same lease part, a different secret (the last hex digit changed).
    let last = if grant.owner.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}", &grant.owner[..grant.owner.len() - 1]);
    assert_ne!(forged, grant.owner);
    for (subject, owner) in [("alice", "nonsense"), ("alice", forged.as_str()), ("bob", grant.owner.as_str())]
    {
        let error = coord.release(&name, subject, owner).await.unwrap_err();
        assert!(matches!(error, CoordError::WrongOwner { .. }), "{subject} {owner}: {error}");
        let error = coord.renew(&name, subject, owner).await.unwrap_err();
        assert!(matches!(error, CoordError::WrongOwner { .. }), "{error}");
    }
    assert_eq!(coord.status(&name).await.unwrap().holder.unwrap().fencing_token, grant.fencing_token);
    assert_eq!(coord.renew(&name, "alice", &grant.owner).await.unwrap(), 30);
    let released = coord.release(&name, "alice", &grant.owner).await.unwrap();
    assert_eq!(released.fencing_token, grant.fencing_token);
    // A retried release after success frees nothing, and says the lock is not held.
    let error = coord.release(&name, "alice", &grant.owner).await.unwrap_err();
    assert!(matches!(error, CoordError::NotHeld { .. }), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_release_never_frees_the_next_holder() {
    let (_dir, store, coord) = open().await;
    let name = lock("late");
    let old = coord.acquire(&name, "alice", 2, 0, String::new()).await.unwrap();
    // The old holder's lease ends (as if it expired), and someone else takes the lock.
    store.lease_revoke(old.lease).await.unwrap();
    let new = coord.acquire(&name, "alice", 30, 0, String::new()).await.unwrap();
    assert!(new.fencing_token > old.fencing_token);
    let error = coord.release(&name, "alice", &old.owner).await.unwrap_err();
    assert!(matches!(error, CoordError::WrongOwner { .. }), "{error}");
    let error = coord
        .guarded_put(&name, "alice", &old.owner, b"kv/x", b"stale", &sb_audit::Audit::system("test"))
        .await
        .unwrap_err();
    assert!(matches!(error, CoordError::WrongOwner { .. }), "{error}");
    assert_eq!(coord.status(&name).await.unwrap().holder.unwrap().fencing_token, new.fencing_token);
    let (token, revision) = coord
        .guarded_put(&name, "alice", &new.owner, b"kv/x", b"fresh", &sb_audit::Audit::system("test"))
        .await
        .unwrap();
    assert_eq!(token, new.fencing_token);
    let kv = store.get(b"kv/x").await.unwrap().unwrap();
    assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"fresh"[..], revision));
    let error = coord
        .guarded_put(&name, "alice", &new.owner, b"locks/x", b"no", &sb_audit::Audit::system("test"))
        .await
        .unwrap_err();
    assert!(matches!(error, CoordError::InvalidArgument { field: "key", .. }), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_or_abandoned_waiter_leaves_no_key() {
    let (_dir, store, coord) = open().await;
    let name = lock("busy");
    let holder = coord.acquire(&name, "alice", 30, 0, String::new()).await.unwrap();
    let error = coord.acquire(&name, "bob", 30, 0, String::new()).await.unwrap_err();
    assert!(matches!(error, CoordError::Timeout { .. }), "try-lock on a held lock: {error}");
    let error = coord.acquire(&name, "bob", 30, 300, String::new()).await.unwrap_err();
    assert!(matches!(error, CoordError::Timeout { .. }), "{error}");
    assert_eq!(waiters(&coord, &name).await, 0, "a timed-out waiter is removed at once");

    // A waiter whose caller goes away (the future is dropped) is removed too.
    let abandoned = {
        let coord = coord.clone();
        let name = name.clone();
        tokio::spawn(async move { coord.acquire(&name, "bob", 30, 60_000, String::new()).await })
    };
    eventually("the waiter queues", async || waiters(&coord, &name).await == 1).await;
    abandoned.abort();
    eventually("the abandoned waiter is removed", async || waiters(&coord, &name).await == 0).await;
    let keys = store.range(RangeRequest::prefix("locks/")).await.unwrap();
    assert_eq!(keys.count, 1, "only the holder's key is left");
    coord.release(&name, "alice", &holder.owner).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_lease_ended_while_waiting_claims_nothing() {
    let (_dir, store, coord) = open().await;
    let name = lock("recheck");
    let holder = coord.acquire(&name, "alice", 30, 0, String::new()).await.unwrap();
    let waiter = {
        let coord = coord.clone();
        let name = name.clone();
        tokio::spawn(async move { coord.acquire(&name, "bob", 30, 30_000, String::new()).await })
    };
    eventually("the waiter queues", async || waiters(&coord, &name).await == 1).await;
    // The waiter's lease goes away while it waits (a pause longer than its TTL).
    let keys = store.range(RangeRequest::prefix(name.prefix())).await.unwrap();
    let waiter_lease = keys.kvs.iter().filter_map(|kv| kv.lease).find(|l| *l != holder.lease).unwrap();
    store.lease_revoke(waiter_lease).await.unwrap();
    coord.release(&name, "alice", &holder.owner).await.unwrap();
    let error = waiter.await.unwrap().unwrap_err();
    assert!(matches!(error, CoordError::LeaseLost { .. }), "{error}");
    assert!(coord.status(&name).await.unwrap().holder.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_the_limit() {
    let (_dir, _store, coord) = open().await;
    let name = lock("input");
    for (ttl, wait, field) in
        [(0, 0, "ttl_secs"), (86_401, 0, "ttl_secs"), (10, -1, "wait_ms"), (10, 300_001, "wait_ms")]
    {
        match coord.acquire(&name, "alice", ttl, wait, String::new()).await.unwrap_err() {
            CoordError::InvalidArgument { field: got, message } => {
                assert_eq!(got, field);
                assert!(
                    message.contains(&ttl.to_string()) || message.contains(&wait.to_string()),
                    "{message}"
                );
            }
            other => panic!("{other}"),
        }
    }
    let error = coord.release(&name, "alice", "sbo_x").await.unwrap_err();
    assert!(matches!(error, CoordError::NotHeld { .. }), "an unknown lock: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elections_campaign_proclaim_observe_and_resign() {
    let (_dir, _store, coord) = open().await;
    let name = QueueName::new(QueueKind::Election, Some("prod"), "primary").unwrap();
    let mut observer = coord.observe(&name);
    assert_eq!(observer.next().await.unwrap(), None, "no leader yet");
    let a = coord.acquire(&name, "alice", 30, 0, "node-a".into()).await.unwrap();
    let leader = observer.next().await.unwrap().unwrap();
    assert_eq!((leader.value.as_str(), leader.fencing_token), ("node-a", a.fencing_token));
    let b = {
        let coord = coord.clone();
        let name = name.clone();
        tokio::spawn(async move { coord.acquire(&name, "bob", 30, 10_000, "node-b".into()).await })
    };
    eventually("b queues", async || waiters(&coord, &name).await == 1).await;
    coord.proclaim(&name, "alice", &a.owner, "node-a v2", &sb_audit::Audit::system("test")).await.unwrap();
    assert_eq!(observer.next().await.unwrap().unwrap().value, "node-a v2");
    let error =
        coord.proclaim(&name, "bob", &a.owner, "stolen", &sb_audit::Audit::system("test")).await.unwrap_err();
    assert!(matches!(error, CoordError::WrongOwner { .. }), "{error}");
    coord.release(&name, "alice", &a.owner).await.unwrap();
    let b = b.await.unwrap().unwrap();
    let leader = observer.next().await.unwrap().unwrap();
    assert_eq!((leader.value.as_str(), leader.subject.as_str()), ("node-b", "bob"));
    assert!(b.fencing_token > a.fencing_token);
    coord.release(&name, "bob", &b.owner).await.unwrap();
    assert_eq!(observer.next().await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_behind_one_that_gives_up_waits_for_the_holder() {
    let (_dir, _store, coord) = open().await;
    let name = lock("chain");
    let holder = coord.acquire(&name, "alice", 30, 0, String::new()).await.unwrap();
    let spawn = |who: &'static str, wait_ms: i64| {
        let (coord, name) = (coord.clone(), name.clone());
        tokio::spawn(async move { coord.acquire(&name, who, 30, wait_ms, String::new()).await })
    };
    let impatient = spawn("bob", 400);
    eventually("bob queues", async || waiters(&coord, &name).await == 1).await;
    let patient = spawn("carol", 20_000);
    eventually("carol queues", async || waiters(&coord, &name).await == 2).await;
    // Bob, carol's predecessor, gives up: carol must go on waiting for alice.
    let error = impatient.await.unwrap().unwrap_err();
    assert!(matches!(error, CoordError::Timeout { .. }), "{error}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!patient.is_finished(), "carol was granted while alice held the lock");
    let status = coord.status(&name).await.unwrap();
    assert_eq!((status.holder.unwrap().fencing_token, status.waiters), (holder.fencing_token, 1));
    coord.release(&name, "alice", &holder.owner).await.unwrap();
    let grant = patient.await.unwrap().unwrap();
    assert!(grant.waited && grant.fencing_token > holder.fencing_token);
    coord.release(&name, "carol", &grant.owner).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_owner_tokens_are_dead_when_their_lease_is_reused() {
    let (_dir, store, coord) = open().await;
    let name = lock("reuse");
    // The lease of a release goes back to the pool: find an acquire that reuses it, on
    // the same name, so the new holder's key is the old key written again.
    let old = coord.acquire(&name, "alice", 30, 0, String::new()).await.unwrap();
    coord.release(&name, "alice", &old.owner).await.unwrap();
    let mut new = coord.acquire(&name, "alice", 30, 0, String::new()).await.unwrap();
    for _ in 0..10 {
        if new.lease == old.lease {
            break;
        }
        coord.release(&name, "alice", &new.owner).await.unwrap();
        new = coord.acquire(&name, "alice", 30, 0, String::new()).await.unwrap();
    }
    assert_eq!(new.lease, old.lease, "a released lease is reused");
    assert!(new.fencing_token > old.fencing_token);
    // The old token (and its form without a revision) releases, renews and writes nothing.
    let secret = &old.owner[old.owner.len() - 64..];
    let earlier_form = format!("sbo_{:016x}_{secret}", old.lease.0);
    for stale in [old.owner.as_str(), earlier_form.as_str()] {
        let error = coord.release(&name, "alice", stale).await.unwrap_err();
        assert!(matches!(error, CoordError::WrongOwner { .. }), "{error}");
        let error = coord.renew(&name, "alice", stale).await.unwrap_err();
        assert!(matches!(error, CoordError::WrongOwner { .. }), "{error}");
        let error = coord
            .guarded_put(&name, "alice", stale, b"kv/x", b"stale", &sb_audit::Audit::system("test"))
            .await
            .unwrap_err();
        assert!(matches!(error, CoordError::WrongOwner { .. }), "{error}");
    }
    // A token whose revision was edited to the new holder's is still not the holder's.
    let forged = format!("sbo_{:016x}_{:016x}_{secret}", old.lease.0, new.fencing_token);
    let error = coord.release(&name, "alice", &forged).await.unwrap_err();
    assert!(matches!(error, CoordError::WrongOwner { .. }), "{error}");
    assert_eq!(coord.status(&name).await.unwrap().holder.unwrap().fencing_token, new.fencing_token);
    assert!(store.get(b"kv/x").await.unwrap().is_none());
    coord
        .guarded_put(&name, "alice", &new.owner, b"kv/x", b"fresh", &sb_audit::Audit::system("test"))
        .await
        .unwrap();
    coord.release(&name, "alice", &new.owner).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_election_metrics_move() {
    let (_dir, store, coord) = open().await;
    let mut registry = prometheus_client::registry::Registry::default();
    coord.register_metrics(&mut registry);
    let metric = |registry: &prometheus_client::registry::Registry, line: &str| -> f64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(line).and_then(|rest| rest.trim().parse().ok()))
            .unwrap_or(0.0)
    };
    let name = lock("metered");
    let holder = coord.acquire(&name, "alice", 30, 0, String::new()).await.unwrap();
    assert_eq!(metric(&registry, r#"switchboard_locks_held{kind="lock"}"#), 1.0);
    // A try-lock that times out, a release with a wrong owner token, a handoff.
    coord.acquire(&name, "bob", 30, 0, String::new()).await.unwrap_err();
    coord.release(&name, "bob", &holder.owner).await.unwrap_err();
    let waiter = {
        let (coord, name) = (coord.clone(), name.clone());
        tokio::spawn(async move { coord.acquire(&name, "bob", 30, 10_000, String::new()).await })
    };
    eventually("bob queues", async || waiters(&coord, &name).await == 1).await;
    coord.release(&name, "alice", &holder.owner).await.unwrap();
    let bob = waiter.await.unwrap().unwrap();
    // A waiter whose lease ends while it waits.
    let lost = {
        let (coord, name) = (coord.clone(), name.clone());
        tokio::spawn(async move { coord.acquire(&name, "carol", 30, 10_000, String::new()).await })
    };
    eventually("carol queues", async || waiters(&coord, &name).await == 1).await;
    let keys = store.range(RangeRequest::prefix(name.prefix())).await.unwrap();
    let carol = keys.kvs.iter().filter_map(|kv| kv.lease).find(|l| *l != bob.lease).unwrap();
    store.lease_revoke(carol).await.unwrap();
    coord.release(&name, "bob", &bob.owner).await.unwrap();
    lost.await.unwrap().unwrap_err();
    // An election won.
    let election = QueueName::new(QueueKind::Election, None, "metered").unwrap();
    let leader = coord.acquire(&election, "alice", 30, 0, "a".into()).await.unwrap();

    let acquires = r#"switchboard_lock_acquires_total{kind="lock",outcome="#;
    assert_eq!(metric(&registry, &format!(r#"{acquires}"acquired"}}"#)), 2.0);
    assert_eq!(metric(&registry, &format!(r#"{acquires}"timeout"}}"#)), 1.0);
    assert_eq!(metric(&registry, &format!(r#"{acquires}"lease_lost"}}"#)), 1.0);
    assert_eq!(metric(&registry, r#"switchboard_lock_wait_seconds_count{kind="lock"}"#), 2.0);
    assert_eq!(metric(&registry, r#"switchboard_lock_handoffs_total{kind="lock"}"#), 1.0);
    assert_eq!(metric(&registry, r#"switchboard_lock_lease_losses_total{kind="lock"}"#), 1.0);
    assert_eq!(metric(&registry, r#"switchboard_lock_releases_rejected_total{kind="lock"}"#), 1.0);
    assert_eq!(metric(&registry, r#"switchboard_locks_held{kind="lock"}"#), 0.0);
    assert_eq!(metric(&registry, r#"switchboard_locks_held{kind="election"}"#), 1.0);
    assert_eq!(metric(&registry, "switchboard_election_campaigns_total"), 1.0);
    assert_eq!(metric(&registry, "switchboard_election_leader_changes_total"), 1.0);
    coord.release(&election, "alice", &leader.owner).await.unwrap();
    assert_eq!(metric(&registry, r#"switchboard_locks_held{kind="election"}"#), 0.0);
}
