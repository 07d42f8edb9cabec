//! The embedded store in-process vs. a single-member etcd through raw `etcd-client`:
//! durable puts (1 and 64 writers), point gets, prefix ranges and watch fan-out.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use etcd_client::{GetOptions, WatchOptions};
use sb_store::{KeyRange, RangeRequest, Store, WatchRequest};
use sb_store_embedded::{EmbeddedOptions, EmbeddedStore};
use tokio::time::Instant;

use crate::report::{compare_ab, peak_rss_kib, run_clients, Outcome, PeerArgs, Samples};

#[derive(clap::Args)]
pub struct StoreArgs {
    #[command(flatten)]
    peer: PeerArgs,
    /// Watchers in the fan-out scenario.
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Only these scenarios (comma-separated): put-1, put-64, get, range, watch.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

#[derive(Clone)]
enum Target {
    Embedded(Arc<EmbeddedStore>),
    Etcd(Box<etcd_client::Client>),
}

impl Target {
    fn name(&self) -> &'static str {
        match self {
            Target::Embedded(_) => "embedded",
            Target::Etcd(_) => "etcd",
        }
    }

    async fn put(&self, key: String, value: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Target::Embedded(store) => {
                store.put(key.as_bytes(), &value, None).await?;
            }
            Target::Etcd(client) => {
                client.kv_client().put(key, value, None).await?;
            }
        }
        Ok(())
    }

    async fn get(&self, key: String) -> anyhow::Result<usize> {
        Ok(match self {
            Target::Embedded(store) => store.get(key.as_bytes()).await?.map_or(0, |kv| kv.value.len()),
            Target::Etcd(client) => client.kv_client().get(key, None).await?.kvs().len(),
        })
    }

    async fn range(&self, prefix: String) -> anyhow::Result<usize> {
        Ok(match self {
            Target::Embedded(store) => store.range(RangeRequest::prefix(prefix)).await?.kvs.len(),
            Target::Etcd(client) => {
                client.kv_client().get(prefix, Some(GetOptions::new().with_prefix())).await?.kvs().len()
            }
        })
    }
}

pub async fn run(args: StoreArgs) -> anyhow::Result<()> {
    let scratch = args.peer.scratch()?;
    let embedded = EmbeddedStore::open(EmbeddedOptions::new(scratch.path().join("bench.redb")))
        .await
        .context("opening the embedded store")?;
    let etcd = etcd_client::Client::connect([args.peer.etcd.as_str()], None)
        .await
        .with_context(|| format!("connecting to etcd at {}", args.peer.etcd))?;
    let version = etcd.clone().status().await.map(|s| s.version().to_owned()).unwrap_or_default();
    println!(
        "sb-bench store: value {} B, {} s per run, A B A B, nproc {}, etcd {version}",
        args.peer.value_bytes,
        args.peer.secs,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let targets = [Target::Embedded(embedded), Target::Etcd(Box::new(etcd))];
    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    let value = vec![b'x'; args.peer.value_bytes];
    let secs = Duration::from_secs(args.peer.secs);

    for target in &targets {
        seed(target, &value).await?;
    }
    if wanted("put-1") {
        compare("put-1", &targets, |t| put_load(t, 1, secs, value.clone())).await?;
    }
    if wanted("put-64") {
        compare("put-64", &targets, |t| put_load(t, 64, secs, value.clone())).await?;
    }
    if wanted("get") {
        compare("get-16", &targets, |t| {
            load(t, 16, secs, |t, task, i| async move {
                t.get(format!("bench/seed/{:04}", (task * 7919 + i) % 1000)).await.map(|_| ())
            })
        })
        .await?;
    }
    if wanted("range") {
        compare("range100-16", &targets, |t| {
            load(t, 16, secs, |t, task, i| async move {
                t.range(format!("bench/seed/{:02}", (task + i) % 10)).await.map(|_| ())
            })
        })
        .await?;
    }
    if wanted("watch") {
        let watchers = args.watchers;
        compare(&format!("watch-{watchers}"), &targets, |t| watch_fan_out(t, watchers, 2000, value.clone()))
            .await?;
    }
    if let Some(kib) = peak_rss_kib() {
        println!("peak RSS of the bench process (embedded store in-process): {} MiB", kib / 1024);
    }
    Ok(())
}

/// 1,000 keys under `bench/seed/`, for the read scenarios.
async fn seed(target: &Target, value: &[u8]) -> anyhow::Result<()> {
    for i in 0..1000 {
        target.put(format!("bench/seed/{i:04}"), value.to_vec()).await?;
    }
    Ok(())
}

/// Runs a scenario A B A B on the embedded store and etcd; the embedded runs also report
/// their group-commit batch sizes.
async fn compare<F, Fut>(scenario: &str, targets: &[Target; 2], run: F) -> anyhow::Result<()>
where
    F: Fn(Target) -> Fut,
    Fut: Future<Output = anyhow::Result<Outcome>>,
{
    let [embedded, etcd] = targets;
    let run = &run;
    let with_batches = || async move {
        let before = embedded_metrics(embedded);
        let mut outcome = run(embedded.clone()).await?;
        if let (Some(before), Some(after)) = (before, embedded_metrics(embedded)) {
            let commits = after.commits - before.commits;
            if commits > 0 {
                outcome.note = Some(format!(
                    "group commits {commits}, mean batch {:.1} txns, last commit {} us",
                    (after.batched_txns - before.batched_txns) as f64 / commits as f64,
                    after.last_commit_latency.as_micros()
                ));
            }
        }
        Ok(outcome)
    };
    compare_ab(scenario, [embedded.name(), etcd.name()], with_batches, || run(etcd.clone())).await?;
    Ok(())
}

fn embedded_metrics(target: &Target) -> Option<sb_store_embedded::EmbeddedMetrics> {
    match target {
        Target::Embedded(store) => Some(store.metrics()),
        Target::Etcd(_) => None,
    }
}

async fn put_load(target: Target, writers: usize, secs: Duration, value: Vec<u8>) -> anyhow::Result<Outcome> {
    load(target, writers, secs, move |t, task, i| {
        let value = value.clone();
        async move { t.put(format!("bench/put/{task:02}/{:04}", i % 1000), value).await }
    })
    .await
}

/// `tasks` concurrent loops of `op` for `secs`.
async fn load<F, Fut>(target: Target, tasks: usize, secs: Duration, op: F) -> anyhow::Result<Outcome>
where
    F: Fn(Target, usize, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let targets = vec![target; tasks];
    run_clients(targets, secs, move |target: Target, task, i| {
        let op = op.clone();
        async move {
            let result = op(target.clone(), task, i).await;
            (target, result)
        }
    })
    .await
}

/// One writer puts `puts` keys; `watchers` watches on the prefix each receive every event.
/// Latency is put-to-delivery per event; ops are events delivered.
async fn watch_fan_out(
    target: Target,
    watchers: usize,
    puts: usize,
    value: Vec<u8>,
) -> anyhow::Result<Outcome> {
    let prefix = format!("bench/watch/{}/", rand_suffix());
    let base = Instant::now();
    let mut handles = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(watchers);
    for _ in 0..watchers {
        let (target, prefix, ready) = (target.clone(), prefix.clone(), ready_tx.clone());
        handles.push(tokio::spawn(async move { receive(target, prefix, puts, base, ready).await }));
    }
    for _ in 0..watchers {
        ready_rx.recv().await.context("a watcher failed to start")?;
    }
    let start = Instant::now();
    for i in 0..puts {
        let mut stamped = (base.elapsed().as_nanos() as u64).to_be_bytes().to_vec();
        stamped.extend_from_slice(&value[8.min(value.len())..]);
        target.put(format!("{prefix}{i:05}"), stamped).await?;
    }
    let mut all = Samples::default();
    for handle in handles {
        all.merge(handle.await??);
    }
    Ok(Outcome::from_samples(all, start.elapsed()))
}

async fn receive(
    target: Target,
    prefix: String,
    expected: usize,
    base: Instant,
    ready: tokio::sync::mpsc::Sender<()>,
) -> anyhow::Result<Samples> {
    let mut samples = Samples::default();
    let stamp = |value: &[u8]| {
        let nanos = u64::from_be_bytes(value[..8].try_into().unwrap_or_default());
        base.elapsed().saturating_sub(Duration::from_nanos(nanos))
    };
    match target {
        Target::Embedded(store) => {
            let mut stream = store.watch(WatchRequest::new(KeyRange::prefix(prefix))).await?;
            ready.send(()).await?;
            while samples.latencies_us.len() < expected {
                let batch = stream.next().await.context("watch ended")??;
                for event in batch.events {
                    samples.record(stamp(&event.kv.value));
                }
            }
        }
        Target::Etcd(client) => {
            let mut stream =
                client.watch_client().watch(prefix, Some(WatchOptions::new().with_prefix())).await?;
            ready.send(()).await?;
            while samples.latencies_us.len() < expected {
                let response = stream.message().await?.context("watch ended")?;
                for event in response.events() {
                    if let Some(kv) = event.kv() {
                        samples.record(stamp(kv.value()));
                    }
                }
            }
        }
    }
    Ok(samples)
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}
