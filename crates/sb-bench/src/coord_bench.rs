//! Locks against the store floor they are built on, in one run, on the embedded store and
//! on etcd (both through the port, as the server uses them):
//! - `uncontended`: acquire + release of a free lock (two transactions on the critical path:
//!   the enqueue on a pooled lease, the owner-checked delete) against one durable commit;
//!   the target is p99 ≤ 3×;
//! - `handoff`: a holder releases while a waiter is queued; the time from the release call
//!   to the waiter's acquire returning, against a watch notification (write call to event
//!   delivery) on the same store; the target is p99 ≤ 2×. A handoff's holder pauses 2 ms
//!   once its waiter is queued (so the waiter is watching, not still setting up), and each
//!   floor write pauses as long first: a write after an idle pause pays a wake-up (on this
//!   VM, about 200 µs at p50 on etcd) that back-to-back writes do not.
//!
//! A commit is measured two ways, and both ratios are printed: a plain put, and a
//! one-operation conditional transaction (compare, then put), the store's commit as every
//! recipe uses it. On the embedded store the two are the same path; on etcd a `Txn` RPC
//! takes a slower path than a `Put` RPC of the same key and value (its p99 is a third to a
//! half higher), and both lock steps are transactions. Each scenario runs A B C A B C; a
//! ratio is of the mean p99s.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sb_coord::{Coord, QueueKind, QueueName};
use sb_store::{Compare, CompareOp, CompareTarget, KeyRange, SharedStore, Txn, TxnOp, WatchRequest};
use tokio::time::Instant;

use crate::report::{run_clients, Outcome, PeerArgs, Samples};

#[derive(clap::Args)]
pub struct CoordArgs {
    #[command(flatten)]
    peer: PeerArgs,
    /// Concurrent clients in `uncontended` (each on its own lock).
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Which scenarios: uncontended, handoff (comma-separated; all by default).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Skip the etcd runs (the embedded store only).
    #[arg(long)]
    embedded_only: bool,
}

pub async fn run(args: CoordArgs) -> anyhow::Result<()> {
    let scratch = args.peer.scratch()?;
    let secs = Duration::from_secs(args.peer.secs);
    println!(
        "sb-bench coord: {} s per run, {} uncontended client(s), A B A B, nproc {}",
        args.peer.secs,
        args.clients,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let embedded: SharedStore = sb_store_embedded::EmbeddedStore::open(
        sb_store_embedded::EmbeddedOptions::new(scratch.path().join("coord.redb")),
    )
    .await
    .context("opening the embedded store")?;
    let mut stores = vec![("embedded", embedded)];
    if !args.embedded_only {
        let namespace = format!("/sb-bench-coord/{}/", std::process::id());
        let options = sb_store_etcd::EtcdOptions::new(vec![args.peer.etcd.clone()])
            .with_namespace(namespace.into_bytes());
        let etcd: SharedStore = sb_store_etcd::EtcdStore::connect(options)
            .await
            .with_context(|| format!("connecting to etcd at {}", args.peer.etcd))?;
        stores.push(("etcd", etcd));
    }
    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    for (name, store) in stores {
        let coord = Coord::new(store.clone());
        if wanted("uncontended") {
            p99_ratios(
                &format!("uncontended/{name}"),
                ["lock", "commit"],
                3.0,
                || uncontended(coord.clone(), args.clients, secs),
                |commit| single_commits(store.clone(), args.clients, secs, commit),
            )
            .await?;
        }
        if wanted("handoff") {
            p99_ratios(
                &format!("handoff/{name}"),
                ["handoff", "watch"],
                2.0,
                || handoff(coord.clone(), secs),
                |commit| watch_notifications(store.clone(), secs, commit),
            )
            .await?;
        }
        store.delete(KeyRange::prefix("bench/")).await.ok();
    }
    Ok(())
}

/// How a floor commits: a plain put, or a conditional one-operation transaction.
#[derive(Clone, Copy)]
enum Commit {
    Put,
    Txn,
}

impl Commit {
    const ALL: [Commit; 2] = [Commit::Put, Commit::Txn];

    fn label(self) -> &'static str {
        match self {
            Commit::Put => "put",
            Commit::Txn => "txn",
        }
    }

    async fn write(self, store: &SharedStore, key: &[u8]) -> anyhow::Result<()> {
        match self {
            Commit::Put => {
                store.put(key, b"v", None).await?;
            }
            Commit::Txn => {
                // Any version, absent included: the compare always holds, as a recipe's does.
                let txn = Txn::new()
                    .when([Compare::new(key.to_vec(), CompareOp::Greater, CompareTarget::Version(-1))])
                    .and_then([TxnOp::put(key.to_vec(), b"v".to_vec())]);
                anyhow::ensure!(store.txn(txn).await?.succeeded, "the floor's compare failed");
            }
        }
        Ok(())
    }
}

/// Runs `a`, then `b` with each way to commit, twice (A B C A B C), and prints the ratio
/// of `a`'s mean p99 to each floor's against `target`.
async fn p99_ratios<FA, FutA, FB, FutB>(
    scenario: &str,
    names: [&str; 2],
    target: f64,
    mut a: FA,
    mut b: FB,
) -> anyhow::Result<()>
where
    FA: FnMut() -> FutA,
    FutA: std::future::Future<Output = anyhow::Result<Outcome>>,
    FB: FnMut(Commit) -> FutB,
    FutB: std::future::Future<Output = anyhow::Result<Outcome>>,
{
    let mut p99 = [0f64; 1 + Commit::ALL.len()];
    for _round in 0..2 {
        let outcome = a().await?;
        outcome.print(scenario, names[0]);
        p99[0] += outcome.p99_us as f64;
        for (i, commit) in Commit::ALL.into_iter().enumerate() {
            let outcome = b(commit).await?;
            outcome.print(scenario, &format!("{}/{}", names[1], commit.label()));
            p99[1 + i] += outcome.p99_us as f64;
        }
    }
    for (i, commit) in Commit::ALL.into_iter().enumerate() {
        let ratio = p99[0] / p99[1 + i].max(1.0);
        let floor = format!("{}/{}", names[1], commit.label());
        println!("{scenario:<14} ratio     p99 {}/{floor} = {ratio:.2}x (target <= {target}x)", names[0]);
    }
    println!();
    Ok(())
}

fn lock(name: String) -> anyhow::Result<QueueName> {
    Ok(QueueName::new(QueueKind::Lock, Some("bench"), &name)?)
}

/// Acquire + release of a lock nobody else wants, back to back.
async fn uncontended(coord: Arc<Coord>, clients: usize, secs: Duration) -> anyhow::Result<Outcome> {
    let states = (0..clients).map(|task| lock(format!("free-{task}"))).collect::<anyhow::Result<Vec<_>>>()?;
    let coord = coord.clone();
    run_clients(states, secs, move |name, _task, _i| {
        let coord = coord.clone();
        async move {
            let result = async {
                let grant = coord.acquire(&name, "bench", 30, 0, String::new()).await?;
                coord.release(&name, "bench", &grant.owner).await?;
                Ok(())
            }
            .await;
            (name, result)
        }
    })
    .await
}

/// One durable commit per call: the store's single commit.
async fn single_commits(
    store: SharedStore,
    clients: usize,
    secs: Duration,
    commit: Commit,
) -> anyhow::Result<Outcome> {
    run_clients(vec![store; clients], secs, move |store, task, i| async move {
        let key = format!("bench/commit/{task}/{}", i % 100);
        let result = commit.write(&store, key.as_bytes()).await;
        (store, result)
    })
    .await
}

/// How long a handoff's holder waits, after its waiter's key shows, before releasing.
const HANDOFF_PAUSE: Duration = Duration::from_millis(2);

/// A holder releases while one waiter is queued: release call to the waiter's grant.
async fn handoff(coord: Arc<Coord>, secs: Duration) -> anyhow::Result<Outcome> {
    let name = lock(format!("handoff-{}", std::process::id()))?;
    let wait = |coord: Arc<Coord>, name: QueueName| {
        tokio::spawn(async move { coord.acquire(&name, "bench", 30, 60_000, String::new()).await })
    };
    let mut holder = coord.acquire(&name, "bench", 30, 0, String::new()).await?;
    let mut waiter = wait(coord.clone(), name.clone());
    let mut samples = Samples::default();
    let start = Instant::now();
    while start.elapsed() < secs {
        // The waiter must be queued (its key written) before the release, and waiting: its
        // predecessor watch is established a round trip after its key shows, and a release
        // before that would time the waiter's set-up (a watch, then a read), not a handoff.
        while coord.status(&name).await?.waiters == 0 {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        tokio::time::sleep(HANDOFF_PAUSE).await;
        let released_at = Instant::now();
        coord.release(&name, "bench", &holder.owner).await?;
        holder = waiter.await??;
        samples.record(released_at.elapsed());
        waiter = wait(coord.clone(), name.clone());
    }
    let elapsed = start.elapsed();
    coord.release(&name, "bench", &holder.owner).await?;
    let last = waiter.await??;
    coord.release(&name, "bench", &last.owner).await?;
    Ok(Outcome::from_samples(samples, elapsed))
}

/// A commit to a watched key: write call to event delivery.
async fn watch_notifications(store: SharedStore, secs: Duration, commit: Commit) -> anyhow::Result<Outcome> {
    let key = format!("bench/watched/{}", std::process::id()).into_bytes();
    let mut stream = store.watch(WatchRequest::new(KeyRange::key(key.clone()))).await?;
    let mut samples = Samples::default();
    let start = Instant::now();
    while start.elapsed() < secs {
        // The pause a handoff has before its release (see `handoff`), so that both pay the
        // same wake-up from idle.
        tokio::time::sleep(HANDOFF_PAUSE).await;
        let put_at = Instant::now();
        commit.write(&store, &key).await?;
        loop {
            let batch = stream.next().await.context("the watch ended")??;
            if !batch.events.is_empty() {
                break;
            }
        }
        samples.record(put_at.elapsed());
    }
    Ok(Outcome::from_samples(samples, start.elapsed()))
}
