//! Locks against the store floor they are built on, in one run, on the embedded store and
//! on etcd (both through the port, as the server uses them):
//! - `uncontended`: acquire + release of a free lock (two transactions on the critical path:
//!   the enqueue on a pooled lease, the owner-checked delete) against one durable put (a
//!   single commit); the target is p99 ≤ 3×;
//! - `handoff`: a holder releases while a waiter is queued; the time from the release call
//!   to the waiter's acquire returning, against a watch notification (put call to event
//!   delivery) on the same store; the target is p99 ≤ 2×.
//!
//! Each pair runs A B A B; the ratio is of the mean p99s.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sb_coord::{Coord, QueueKind, QueueName};
use sb_store::{KeyRange, SharedStore, WatchRequest};
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
            p99_ratio(
                &format!("uncontended/{name}"),
                ["lock", "commit"],
                3.0,
                || uncontended(coord.clone(), args.clients, secs),
                || single_commits(store.clone(), args.clients, secs),
            )
            .await?;
        }
        if wanted("handoff") {
            p99_ratio(
                &format!("handoff/{name}"),
                ["handoff", "watch"],
                2.0,
                || handoff(coord.clone(), secs),
                || watch_notifications(store.clone(), secs),
            )
            .await?;
        }
        store.delete(KeyRange::prefix("bench/")).await.ok();
    }
    Ok(())
}

/// Runs `a` and `b` A B A B and prints the ratio of their mean p99s against `target`.
async fn p99_ratio<FA, FutA, FB, FutB>(
    scenario: &str,
    names: [&str; 2],
    target: f64,
    mut a: FA,
    mut b: FB,
) -> anyhow::Result<()>
where
    FA: FnMut() -> FutA,
    FutA: std::future::Future<Output = anyhow::Result<Outcome>>,
    FB: FnMut() -> FutB,
    FutB: std::future::Future<Output = anyhow::Result<Outcome>>,
{
    let mut p99 = [0f64; 2];
    for _round in 0..2 {
        let outcome = a().await?;
        outcome.print(scenario, names[0]);
        p99[0] += outcome.p99_us as f64;
        let outcome = b().await?;
        outcome.print(scenario, names[1]);
        p99[1] += outcome.p99_us as f64;
    }
    let ratio = p99[0] / p99[1].max(1.0);
    println!("{scenario:<14} ratio     p99 {}/{} = {ratio:.2}x (target <= {target}x)\n", names[0], names[1]);
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

/// One durable put per call: the store's single commit.
async fn single_commits(store: SharedStore, clients: usize, secs: Duration) -> anyhow::Result<Outcome> {
    run_clients(vec![store; clients], secs, |store, task, i| async move {
        let key = format!("bench/commit/{task}/{}", i % 100);
        let result = store.put(key.as_bytes(), b"v", None).await.map(|_| ()).map_err(anyhow::Error::from);
        (store, result)
    })
    .await
}

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
        // The waiter must be queued (its key written) before the release.
        while coord.status(&name).await?.waiters == 0 {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
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

/// A put to a watched key: put call to event delivery.
async fn watch_notifications(store: SharedStore, secs: Duration) -> anyhow::Result<Outcome> {
    let key = format!("bench/watched/{}", std::process::id()).into_bytes();
    let mut stream = store.watch(WatchRequest::new(KeyRange::key(key.clone()))).await?;
    let mut samples = Samples::default();
    let start = Instant::now();
    while start.elapsed() < secs {
        let put_at = Instant::now();
        store.put(&key, b"v", None).await?;
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
