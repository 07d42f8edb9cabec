//! Latency recording and the one report line every scenario prints.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Latencies of one scenario run, in microseconds.
#[derive(Default)]
pub struct Samples {
    pub latencies_us: Vec<u32>,
    pub errors: u64,
}

impl Samples {
    pub fn record(&mut self, latency: Duration) {
        self.latencies_us.push(latency.as_micros().min(u32::MAX as u128) as u32);
    }

    pub fn merge(&mut self, other: Samples) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
    }
}

/// The measured result of one scenario on one target.
pub struct Outcome {
    pub ops: u64,
    pub elapsed: Duration,
    pub p50_us: u32,
    pub p99_us: u32,
    pub p999_us: u32,
    pub errors: u64,
    /// One more line printed under the result (for example group-commit batch sizes).
    pub note: Option<String>,
}

impl Outcome {
    pub fn from_samples(mut samples: Samples, elapsed: Duration) -> Outcome {
        samples.latencies_us.sort_unstable();
        let pct = |p: f64| -> u32 {
            let v = &samples.latencies_us;
            if v.is_empty() {
                return 0;
            }
            v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
        };
        Outcome {
            ops: samples.latencies_us.len() as u64,
            elapsed,
            p50_us: pct(0.50),
            p99_us: pct(0.99),
            p999_us: pct(0.999),
            errors: samples.errors,
            note: None,
        }
    }

    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn print(&self, scenario: &str, target: &str) {
        println!(
            "{scenario:<14} {target:<9} {:>12.0} ops/s  p50 {:>7} us  p99 {:>7} us  p999 {:>7} us  errors {}",
            self.ops_per_sec(),
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.errors
        );
        if let Some(note) = &self.note {
            println!("{:<24} {note}", "");
        }
    }
}

/// The common shape of every comparison: `a` and `b` run A B A B, each run is printed, and
/// the ratio of their mean throughputs closes the scenario.
pub async fn compare_ab<FA, FutA, FB, FutB>(
    scenario: &str,
    names: [&str; 2],
    a: FA,
    b: FB,
) -> anyhow::Result<f64>
where
    FA: FnMut() -> FutA,
    FutA: std::future::Future<Output = anyhow::Result<Outcome>>,
    FB: FnMut() -> FutB,
    FutB: std::future::Future<Output = anyhow::Result<Outcome>>,
{
    compare_ab_isolated(scenario, names, [None, None], a, b).await
}

/// A stopped process (SIGSTOP), continued (SIGCONT) when dropped.
pub struct Paused(Vec<u32>);

impl Paused {
    pub fn new(pids: impl IntoIterator<Item = u32>) -> Paused {
        let pids: Vec<u32> = pids.into_iter().collect();
        for pid in &pids {
            signal(*pid, "STOP");
        }
        Paused(pids)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        for pid in &self.0 {
            signal(*pid, "CONT");
        }
    }
}

fn signal(pid: u32, name: &str) {
    let sent = std::process::Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status();
    if !sent.is_ok_and(|status| status.success()) {
        eprintln!("sb-bench: could not send SIG{name} to {pid}");
    }
}

/// [`compare_ab`] where each side's server, if its pid is given, is stopped while the other
/// side runs: neither's background work (compaction, expiries, health checks, whatever the
/// previous run left behind) then loads the other's measurement. Each still does its own
/// background work, inside its own runs.
pub async fn compare_ab_isolated<FA, FutA, FB, FutB>(
    scenario: &str,
    names: [&str; 2],
    pids: [Option<u32>; 2],
    mut a: FA,
    mut b: FB,
) -> anyhow::Result<f64>
where
    FA: FnMut() -> FutA,
    FutA: std::future::Future<Output = anyhow::Result<Outcome>>,
    FB: FnMut() -> FutB,
    FutB: std::future::Future<Output = anyhow::Result<Outcome>>,
{
    let mut totals = [0.0f64; 2];
    for _round in 0..2 {
        let paused = Paused::new(pids[1]);
        let outcome = a().await?;
        drop(paused);
        outcome.print(scenario, names[0]);
        totals[0] += outcome.ops_per_sec();
        let paused = Paused::new(pids[0]);
        let outcome = b().await?;
        drop(paused);
        outcome.print(scenario, names[1]);
        totals[1] += outcome.ops_per_sec();
    }
    let ratio = totals[0] / totals[1].max(1e-9);
    println!("{scenario:<14} ratio     {}/{} = {ratio:.2}x\n", names[0], names[1]);
    Ok(ratio)
}

/// Peak resident memory of this process (VmHWM), in KiB.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs one loop per client state for `secs`, each calling `op(state, task, i)` back to
/// back, and measures every call. The state (a connection, a client) is handed to `op` and
/// given back with the result, so each loop keeps its own.
pub async fn run_clients<S, F, Fut>(
    states: Vec<S>,
    secs: std::time::Duration,
    op: F,
) -> anyhow::Result<Outcome>
where
    S: Send + 'static,
    F: Fn(S, usize, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = (S, anyhow::Result<()>)> + Send,
{
    let record = |samples: &mut Samples, result: anyhow::Result<()>, took| match result {
        Ok(()) => samples.record(took),
        Err(_) => samples.errors += 1,
    };
    let (samples, elapsed) = run_loops(states, secs, usize::MAX, op, record, Samples::merge).await?;
    Ok(Outcome::from_samples(samples, elapsed))
}

/// The loops behind [`run_clients`] and [`run_notify_clients`]: one per client state until
/// `secs` pass (or it made `max_per_client` calls), each folding every call's result and
/// duration into its own `A` with `record`; the loops' `A`s are then merged.
async fn run_loops<S, F, Fut, T, A>(
    states: Vec<S>,
    secs: Duration,
    max_per_client: usize,
    op: F,
    record: fn(&mut A, anyhow::Result<T>, Duration),
    merge: fn(&mut A, A),
) -> anyhow::Result<(A, Duration)>
where
    S: Send + 'static,
    F: Fn(S, usize, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = (S, anyhow::Result<T>)> + Send,
    T: Send + 'static,
    A: Default + Send + 'static,
{
    let start = tokio::time::Instant::now();
    let deadline = start + secs;
    let mut handles = Vec::new();
    for (task, state) in states.into_iter().enumerate() {
        let op = op.clone();
        handles.push(tokio::spawn(async move {
            let mut acc = A::default();
            let mut state = Some(state);
            let mut i = 0;
            while tokio::time::Instant::now() < deadline && i < max_per_client {
                let Some(current) = state.take() else { break };
                let began = tokio::time::Instant::now();
                let (back, result) = op(current, task, i).await;
                record(&mut acc, result, began.elapsed());
                state = Some(back);
                i += 1;
            }
            acc
        }));
    }
    let mut all = A::default();
    for handle in handles {
        merge(&mut all, handle.await?);
    }
    Ok((all, start.elapsed()))
}

/// What every scenario against etcd takes: the peer, where data goes, how long and how big.
#[derive(clap::Args)]
pub struct PeerArgs {
    /// A running single-member etcd to compare against (scripts/bench starts one).
    #[arg(long, env = "SB_BENCH_ETCD")]
    pub etcd: String,
    /// Where temp data dirs go; use the same disk as etcd's data dir.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Seconds per run.
    #[arg(long, default_value_t = 5)]
    pub secs: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub value_bytes: usize,
}

impl PeerArgs {
    /// A temp dir under `--data-dir` (or the system's), removed when dropped.
    pub fn scratch(&self) -> std::io::Result<tempfile::TempDir> {
        match &self.data_dir {
            Some(dir) => tempfile::tempdir_in(dir),
            None => tempfile::tempdir(),
        }
    }
}

/// One write → notified measurement: from the write's request, and from its answer (zero
/// when the notification came first).
pub struct Notified {
    pub from_request: Duration,
    pub from_answer: Duration,
}

/// Runs one write → notified loop per client state until `secs` pass (or each client has
/// `max_per_client` samples); returns the latencies from the request and from the answer.
pub async fn run_notify_clients<S, F, Fut>(
    states: Vec<S>,
    secs: Duration,
    max_per_client: usize,
    op: F,
) -> anyhow::Result<[Outcome; 2]>
where
    S: Send + 'static,
    F: Fn(S, usize, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = (S, anyhow::Result<Notified>)> + Send,
{
    type Both = (Samples, Samples);
    let record =
        |(from_request, from_answer): &mut Both, result: anyhow::Result<Notified>, _took| match result {
            Ok(notified) => {
                from_request.record(notified.from_request);
                from_answer.record(notified.from_answer);
            }
            Err(_) => {
                from_request.errors += 1;
                from_answer.errors += 1;
            }
        };
    let merge = |(from_request, from_answer): &mut Both, (request, answer): Both| {
        from_request.merge(request);
        from_answer.merge(answer);
    };
    let ((from_request, from_answer), elapsed) =
        run_loops(states, secs, max_per_client, op, record, merge).await?;
    Ok([Outcome::from_samples(from_request, elapsed), Outcome::from_samples(from_answer, elapsed)])
}

/// The levels of a write → notified scenario, as `(clients, most loops)`: one client for at
/// most `samples` loops, then `clients` (if more than one) for the whole run.
pub fn notified_levels(samples: usize, clients: usize) -> Vec<(usize, usize)> {
    let mut levels = vec![(1, samples)];
    if clients > 1 {
        levels.push((clients, usize::MAX));
    }
    levels
}

/// The processes [`notified_level`] stops while another runs: each target's server (in
/// the order of its names) and the floor's; none when a pid is `None`.
#[derive(Clone, Copy)]
pub struct Isolate<'a> {
    pub targets: &'a [Option<u32>],
    pub floor: Option<u32>,
}

/// How many 4 KiB writes [`disk_sync_floor`] times.
pub const DISK_SYNC_SAMPLES: usize = 2000;

/// The least a durable write costs on the disk under `dir`: `samples` times, one after the
/// other, a 4 KiB `pwrite` at the start of a scratch file there and its `fdatasync`, the
/// one flush a durable commit cannot skip. A write → notified time measured from the
/// write's request includes at least this.
pub fn disk_sync_floor(dir: &Path, samples: usize) -> anyhow::Result<Outcome> {
    use std::os::unix::fs::FileExt;
    let scratch = tempfile::NamedTempFile::new_in(dir)?;
    let file = scratch.as_file();
    let page = [0x5a_u8; 4096];
    // The first write allocates the block; the timed ones overwrite it, the cheapest case.
    file.write_all_at(&page, 0)?;
    file.sync_all()?;
    let mut latencies = Samples::default();
    let started = tokio::time::Instant::now();
    for _ in 0..samples {
        let began = tokio::time::Instant::now();
        file.write_all_at(&page, 0)?;
        file.sync_data()?;
        latencies.record(began.elapsed());
    }
    Ok(Outcome::from_samples(latencies, started.elapsed()))
}

/// One level of a write → notified scenario: A B A B of the bare-hyper floor at the level's
/// concurrency (`floor`) and each target's loop (`load(target index, run tag)`, giving the
/// times from the write's request and from its answer), each printed under `label`, then
/// each target's p99 ratio to the floor (target ≤ 2×). With `disk`, a one-client level
/// also times the disk's flush there ([`disk_sync_floor`]) and prints its p99 against the
/// same floor: what a durable write adds before anyone can be notified of it.
pub async fn notified_level<FF, FutF, FL, FutL>(
    label: &str,
    names: &[&str],
    round: usize,
    disk: Option<&Path>,
    isolate: Isolate<'_>,
    mut floor: FF,
    mut load: FL,
) -> anyhow::Result<()>
where
    FF: FnMut() -> FutF,
    FutF: std::future::Future<Output = anyhow::Result<Outcome>>,
    FL: FnMut(usize, String) -> FutL,
    FutL: std::future::Future<Output = anyhow::Result<[Outcome; 2]>>,
{
    let mut floors = Vec::new();
    let mut runs: Vec<Vec<Outcome>> = names.iter().map(|_| Vec::new()).collect();
    for ab_round in 0..2 {
        let paused = Paused::new(isolate.targets.iter().flatten().copied());
        let outcome = floor().await?;
        drop(paused);
        outcome.print(label, "hyper-rtt");
        floors.push(outcome);
        for (index, name) in names.iter().enumerate() {
            let others = isolate.targets.iter().enumerate().filter(|(i, _)| *i != index);
            let paused = Paused::new(others.filter_map(|(_, pid)| *pid).chain(isolate.floor));
            let [total, after_answer] = load(index, format!("{round}.{ab_round}")).await?;
            drop(paused);
            total.print(label, name);
            after_answer.print(&format!("{label}-ack"), name);
            runs[index].push(total);
        }
    }
    for (name, runs) in names.iter().zip(&runs) {
        print_p99_ratio(label, name, runs, &floors, 2.0);
    }
    if let Some(dir) = disk {
        let sync = disk_sync_floor(dir, DISK_SYNC_SAMPLES)?;
        sync.print(label, "disk-sync");
        let rtt = mean_p99(&floors).max(1.0);
        let least = rtt + f64::from(sync.p50_us);
        println!(
            "{label:<14} floor     hyper-rtt p99 + disk-sync p50 = {least:.0} us = {:.2}x hyper-rtt p99 (disk-sync: a 4 KiB \
             pwrite + fdatasync under {}; one round trip and one flush, the least a durable write → notified takes \
             from the request)",
            least / rtt,
            dir.display()
        );
    }
    println!();
    Ok(())
}

fn mean_p99(outcomes: &[Outcome]) -> f64 {
    outcomes.iter().map(|o| f64::from(o.p99_us)).sum::<f64>() / outcomes.len().max(1) as f64
}

/// The closing line of a write → notified scenario: the mean p99 of the target's runs over
/// the mean p99 of the floor's runs (a bare-hyper round trip at the same concurrency).
pub fn print_p99_ratio(scenario: &str, target: &str, runs: &[Outcome], floors: &[Outcome], limit: f64) {
    if runs.iter().all(|o| o.ops == 0) {
        println!("{scenario:<14} ratio     p99 {target}/hyper-rtt: no notification arrived");
        return;
    }
    let ratio = mean_p99(runs) / mean_p99(floors).max(1.0);
    println!("{scenario:<14} ratio     p99 {target}/hyper-rtt = {ratio:.2}x (target <= {limit:.1}x)");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_disk_floor_times_every_flush_and_leaves_no_file_behind() {
        let dir = tempfile::tempdir().unwrap();
        let outcome = disk_sync_floor(dir.path(), 20).unwrap();
        assert_eq!((outcome.ops, outcome.errors), (20, 0));
        assert!(outcome.p50_us <= outcome.p99_us && outcome.p99_us <= outcome.p999_us);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the scratch file is removed");
        assert!(disk_sync_floor(&dir.path().join("absent"), 1).is_err());
    }
}
