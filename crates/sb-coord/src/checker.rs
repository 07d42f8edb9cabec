//! The lock-safety checker (feature `checker`): N clients take one lock over and over,
//! pause at random (sometimes past their TTL, so leases expire while they "work"), write
//! to a fenced resource, send duplicated and delayed releases, and every step is recorded.
//! [`run`] then checks the history:
//!
//! 1. the fenced resource never accepted a token below one it had accepted before, and a
//!    client it fenced off never got a later guarded write through;
//! 2. fencing tokens are unique, and an acquire that started after another returned got a
//!    higher token;
//! 3. a guarded write never succeeds for a non-holder: never after the writer's lease had
//!    certainly expired, and never inside another holder's enter..exit revision window;
//! 4. a stale or duplicated release never frees a newer holder: it is refused, and every
//!    holder whose lease is certainly alive still gets its guarded writes through.
//!
//! It drives any [`LockClient`]: the domain service in-process (embedded store, etcd) or
//! the HTTP API of several nodes. Sizes come from [`CheckerConfig::from_env`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use std::sync::Mutex;

use rand::{Rng, SeedableRng};
use sb_store::Revision;
use tokio::time::Instant;

use crate::{Coord, CoordError, QueueKind, QueueName};

/// A lock as one checker client sees it.
pub trait LockClient: Send + Sync + 'static {
    fn acquire(&self, ttl_secs: i64, wait_ms: i64) -> impl Future<Output = Result<Acquired, Refusal>> + Send;
    fn release(&self, owner: &str) -> impl Future<Output = Result<(), Refusal>> + Send;
    /// Puts the KV key `key` (without `kv/`) while `owner` holds the lock.
    fn guarded_write(
        &self,
        owner: &str,
        key: &str,
        value: &str,
    ) -> impl Future<Output = Result<Revision, Refusal>> + Send;
}

pub struct Acquired {
    pub token: Revision,
    pub owner: String,
    /// No later than the lease's last renewal: it lives at least until this + TTL. (The
    /// checker takes the moment the acquire returned as the latest the renewal can be.)
    pub renewed_at: Instant,
}

/// Why a call did not succeed.
#[derive(Debug)]
pub enum Refusal {
    /// The wait ended (409 on acquire).
    Timeout,
    /// The caller does not hold the lock (403, 404, or a lease lost while waiting).
    NotHolder(String),
    /// Anything else: the checker reports it.
    Other(String),
}

#[derive(Clone, Debug)]
pub struct CheckerConfig {
    pub clients: usize,
    /// How long clients keep starting new rounds.
    pub duration: Duration,
    pub ttl_secs: i64,
    pub wait_ms: i64,
    /// How much later than its TTL a lease may still be seen alive (etcd checks expiry
    /// every 500 ms and revokes through raft).
    pub expiry_slack: Duration,
    pub seed: u64,
    /// The KV key the guarded writes go to (unique per run).
    pub resource_key: String,
}

impl CheckerConfig {
    /// CI-sized defaults; `SB_LOCK_CHECKER_SECS`, `SB_LOCK_CHECKER_CLIENTS` and
    /// `SB_LOCK_CHECKER_SEED` make long or replayed runs.
    pub fn from_env(resource_key: impl Into<String>) -> Self {
        let number = |name: &str, default: u64| {
            std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(default)
        };
        CheckerConfig {
            clients: number("SB_LOCK_CHECKER_CLIENTS", 5) as usize,
            duration: Duration::from_secs(number("SB_LOCK_CHECKER_SECS", 8)),
            ttl_secs: 2,
            wait_ms: 3_000,
            expiry_slack: Duration::from_millis(2_000),
            seed: number("SB_LOCK_CHECKER_SEED", rand::random::<u32>() as u64),
            resource_key: resource_key.into(),
        }
    }
}

/// A resource that refuses any token below the highest it has accepted.
#[derive(Default)]
struct FencedResource {
    highest: Revision,
    accepted: Vec<Revision>,
}

impl FencedResource {
    fn write(&mut self, token: Revision) -> bool {
        if token < self.highest {
            return false;
        }
        self.highest = token;
        self.accepted.push(token);
        true
    }
}

#[derive(Clone, Debug)]
struct Acquisition {
    client: usize,
    token: Revision,
    started: Instant,
    returned: Instant,
}

#[derive(Clone, Debug)]
struct GuardedWrite {
    client: usize,
    token: Revision,
    sent: Instant,
    returned: Instant,
    /// The lease lives at least until `renewed_at + TTL`...
    renewed_at: Instant,
    /// ...and at most until `acquired_at + TTL + slack` (it is never renewed after).
    acquired_at: Instant,
    /// Whether this client's lease had been fenced off by the resource before it was sent.
    fenced_off: bool,
    /// Whether the client had already released (or sent a release for) this acquisition.
    released: bool,
    result: Result<Revision, String>,
    phase: &'static str,
}

#[derive(Clone, Debug)]
struct ReleaseAttempt {
    client: usize,
    token: Revision,
    kind: &'static str,
    /// The lease had certainly expired when the release was sent.
    certainly_expired: bool,
    result: Result<(), String>,
}

#[derive(Default)]
struct History {
    acquisitions: Vec<Acquisition>,
    writes: Vec<GuardedWrite>,
    releases: Vec<ReleaseAttempt>,
    timeouts: u64,
    not_holder_acquires: u64,
    errors: Vec<String>,
}

/// What a run did and what it found wrong (`violations` must be empty).
#[derive(Debug)]
pub struct CheckerReport {
    pub seed: u64,
    pub acquisitions: usize,
    pub timeouts: u64,
    pub long_pauses: u64,
    pub guarded_ok: usize,
    pub guarded_refused: usize,
    pub fenced_rejections: u64,
    pub stale_releases_refused: usize,
    pub violations: Vec<String>,
}

pub async fn run<C: LockClient>(clients: Vec<Arc<C>>, config: CheckerConfig) -> CheckerReport {
    let history = Arc::new(Mutex::new(History::default()));
    let resource = Arc::new(Mutex::new(FencedResource::default()));
    let long_pauses = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let fenced = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let end = Instant::now() + config.duration;
    let mut tasks = Vec::new();
    for (index, client) in clients.into_iter().enumerate() {
        let config = config.clone();
        let (history, resource) = (history.clone(), resource.clone());
        let (long_pauses, fenced) = (long_pauses.clone(), fenced.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed.wrapping_add(index as u64));
            let mut round = 0u64;
            let mut late_releases = Vec::new();
            while Instant::now() < end {
                round += 1;
                let started = Instant::now();
                let acquired = match client.acquire(config.ttl_secs, config.wait_ms).await {
                    Ok(acquired) => acquired,
                    Err(Refusal::Timeout) => {
                        history.lock().unwrap().timeouts += 1;
                        continue;
                    }
                    Err(Refusal::NotHolder(_)) => {
                        history.lock().unwrap().not_holder_acquires += 1;
                        continue;
                    }
                    Err(Refusal::Other(error)) => {
                        history.lock().unwrap().errors.push(format!("client {index} acquire: {error}"));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let token = acquired.token;
                let acquired_at = Instant::now();
                history.lock().unwrap().acquisitions.push(Acquisition {
                    client: index,
                    token,
                    started,
                    returned: acquired_at,
                });
                let ttl = Duration::from_secs(config.ttl_secs as u64);
                let write = |phase: &'static str, fenced_off: bool, released: bool| {
                    let client = client.clone();
                    let owner = acquired.owner.clone();
                    let key = config.resource_key.clone();
                    let history = history.clone();
                    let renewed_at = acquired.renewed_at;
                    async move {
                        let sent = Instant::now();
                        let value = format!("client {index} token {token} {phase}");
                        let result = match client.guarded_write(&owner, &key, &value).await {
                            Ok(revision) => Ok(revision),
                            Err(Refusal::NotHolder(why)) => Err(why),
                            Err(other) => {
                                history
                                    .lock()
                                    .unwrap()
                                    .errors
                                    .push(format!("client {index} write: {other:?}"));
                                return;
                            }
                        };
                        history.lock().unwrap().writes.push(GuardedWrite {
                            client: index,
                            token,
                            sent,
                            returned: Instant::now(),
                            renewed_at,
                            acquired_at,
                            fenced_off,
                            released,
                            result,
                            phase,
                        });
                    }
                };
                write("enter", false, false).await;
                // Work: mostly short, sometimes past the TTL (the first round of client
                // 0 always, so every run has at least one expired holder).
                let long = (index == 0 && round == 1) || rng.random_bool(0.2);
                let pause = if long {
                    long_pauses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    ttl + config.expiry_slack + Duration::from_millis(rng.random_range(200..800))
                } else {
                    Duration::from_millis(rng.random_range(0..150))
                };
                tokio::time::sleep(pause).await;
                let accepted = resource.lock().unwrap().write(token);
                if !accepted {
                    fenced.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                write("exit", !accepted, false).await;
                // Releases: on time, duplicated, delayed, or never (the lease expires).
                let expires_for_sure = acquired_at + ttl + config.expiry_slack;
                let choice = rng.random_range(0..10);
                let release = |kind: &'static str| {
                    let client = client.clone();
                    let owner = acquired.owner.clone();
                    let history = history.clone();
                    async move {
                        let sent = Instant::now();
                        let result = match client.release(&owner).await {
                            Ok(()) => Ok(()),
                            Err(Refusal::NotHolder(why)) => Err(why),
                            Err(other) => {
                                history
                                    .lock()
                                    .unwrap()
                                    .errors
                                    .push(format!("client {index} release: {other:?}"));
                                return;
                            }
                        };
                        history.lock().unwrap().releases.push(ReleaseAttempt {
                            client: index,
                            token,
                            kind,
                            certainly_expired: sent > expires_for_sure,
                            result,
                        });
                    }
                };
                match choice {
                    0 => {} // never released: the lease expires
                    1..=3 => {
                        release("first").await;
                        // The duplicate arrives late, maybe after a newer holder took over.
                        let delay = Duration::from_millis(rng.random_range(0..1_500));
                        let duplicate = release("duplicate");
                        late_releases.push(tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            duplicate.await;
                        }));
                    }
                    4 | 5 => {
                        // Delayed past the TTL: by then it is stale.
                        let delay =
                            ttl + config.expiry_slack + Duration::from_millis(rng.random_range(0..500));
                        let late = release("late");
                        late_releases.push(tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            late.await;
                        }));
                    }
                    _ => release("first").await,
                }
                // A write after the release must not go through either.
                if (1..=3).contains(&choice) {
                    write("after-release", !accepted, true).await;
                }
            }
            for late in late_releases {
                let _ = late.await;
            }
        }));
    }
    for task in tasks {
        if let Err(error) = task.await {
            history.lock().unwrap().errors.push(format!("a checker client panicked: {error}"));
        }
    }
    let history = std::mem::take(&mut *history.lock().unwrap());
    let resource = std::mem::take(&mut *resource.lock().unwrap());
    let mut report = check(&config, &history, &resource);
    report.long_pauses = long_pauses.load(std::sync::atomic::Ordering::Relaxed);
    report.fenced_rejections = fenced.load(std::sync::atomic::Ordering::Relaxed);
    report
}

fn check(config: &CheckerConfig, history: &History, resource: &FencedResource) -> CheckerReport {
    let mut violations: Vec<String> = history.errors.clone();
    let ttl = Duration::from_secs(config.ttl_secs as u64);
    // 1. The fenced resource.
    for pair in resource.accepted.windows(2) {
        if pair[1] < pair[0] {
            violations.push(format!("the resource accepted token {} after {}", pair[1], pair[0]));
        }
    }
    for write in &history.writes {
        if write.fenced_off && write.result.is_ok() {
            violations.push(format!(
                "client {} (token {}) was fenced off by a higher token, yet its {} guarded write went through",
                write.client, write.token, write.phase
            ));
        }
    }
    // 2. Tokens.
    let acquisitions = &history.acquisitions;
    let mut tokens: Vec<Revision> = acquisitions.iter().map(|a| a.token).collect();
    tokens.sort_unstable();
    for pair in tokens.windows(2) {
        if pair[0] == pair[1] {
            violations.push(format!("fencing token {} was granted twice", pair[0]));
        }
    }
    for a in acquisitions {
        for b in acquisitions {
            if b.started > a.returned && b.token <= a.token {
                violations.push(format!(
                    "client {} acquired token {} after client {} had returned with token {}",
                    b.client, b.token, a.client, a.token
                ));
            }
        }
    }
    // 3. Guarded writes: never after a certain expiry, never after the release, never
    // inside another holder's window.
    for write in &history.writes {
        let certainly_expired = write.sent > write.acquired_at + ttl + config.expiry_slack;
        let certainly_alive = write.returned + Duration::from_millis(200) < write.renewed_at + ttl;
        match &write.result {
            Ok(revision) if certainly_expired => violations.push(format!(
                "client {} (token {}) wrote at revision {revision} ({}) after its lease had certainly expired",
                write.client, write.token, write.phase
            )),
            Ok(revision) if write.released => violations.push(format!(
                "client {} (token {}) wrote at revision {revision} after releasing",
                write.client, write.token
            )),
            Err(why) if certainly_alive && !write.fenced_off && !write.released => violations.push(format!(
                "client {} (token {}) holds a live lease, yet its {} guarded write was refused: {why} \
                 (was it freed by a stale release?)",
                write.client, write.token, write.phase
            )),
            _ => {}
        }
    }
    let windows: Vec<(Revision, Revision, Revision)> = history
        .writes
        .iter()
        .filter(|w| w.phase == "enter")
        .filter_map(|enter| {
            let exit = history.writes.iter().find(|w| w.token == enter.token && w.phase == "exit")?;
            Some((enter.token, *enter.result.as_ref().ok()?, *exit.result.as_ref().ok()?))
        })
        .collect();
    for write in &history.writes {
        let Ok(revision) = write.result else { continue };
        for (token, from, to) in &windows {
            if *token != write.token && *from < revision && revision < *to {
                violations.push(format!(
                    "client {} (token {}) wrote at revision {revision} while token {token} held the lock \
                     (revisions {from}..{to})",
                    write.client, write.token
                ));
            }
        }
    }
    // 4. Releases.
    let mut stale_refused = 0;
    for release in &history.releases {
        let stale = release.kind == "duplicate" || release.certainly_expired;
        match (&release.result, stale) {
            (Ok(()), true) => violations.push(format!(
                "a stale {} release of client {} (token {}) freed the lock",
                release.kind, release.client, release.token
            )),
            (Err(_), true) => stale_refused += 1,
            _ => {}
        }
    }
    if acquisitions.len() < 3 {
        violations.push(format!("only {} acquisitions: the run proves nothing", acquisitions.len()));
    }
    CheckerReport {
        seed: config.seed,
        acquisitions: acquisitions.len(),
        timeouts: history.timeouts,
        long_pauses: 0,
        guarded_ok: history.writes.iter().filter(|w| w.result.is_ok()).count(),
        guarded_refused: history.writes.iter().filter(|w| w.result.is_err()).count(),
        fenced_rejections: 0,
        stale_releases_refused: stale_refused,
        violations,
    }
}

/// The domain service in-process, as one subject.
pub struct InProcessClient {
    pub coord: Arc<Coord>,
    pub name: QueueName,
    pub subject: String,
}

impl InProcessClient {
    pub fn new(coord: Arc<Coord>, lock: &str, subject: &str) -> Self {
        let name = QueueName::new(QueueKind::Lock, None, lock).expect("a valid lock name");
        InProcessClient { coord, name, subject: subject.to_owned() }
    }
}

fn refusal(error: CoordError) -> Refusal {
    match error {
        CoordError::Timeout { .. } => Refusal::Timeout,
        CoordError::NotHeld { .. } | CoordError::WrongOwner { .. } | CoordError::LeaseLost { .. } => {
            Refusal::NotHolder(error.to_string())
        }
        other => Refusal::Other(other.to_string()),
    }
}

impl LockClient for InProcessClient {
    async fn acquire(&self, ttl_secs: i64, wait_ms: i64) -> Result<Acquired, Refusal> {
        let grant = self
            .coord
            .acquire(&self.name, &self.subject, ttl_secs, wait_ms, String::new())
            .await
            .map_err(refusal)?;
        Ok(Acquired { token: grant.fencing_token, owner: grant.owner, renewed_at: grant.renewed_at })
    }

    async fn release(&self, owner: &str) -> Result<(), Refusal> {
        self.coord.release(&self.name, &self.subject, owner).await.map(|_| ()).map_err(refusal)
    }

    async fn guarded_write(&self, owner: &str, key: &str, value: &str) -> Result<Revision, Refusal> {
        let store_key = format!("kv/{key}");
        self.coord
            .guarded_put(
                &self.name,
                &self.subject,
                owner,
                store_key.as_bytes(),
                value.as_bytes(),
                &sb_audit::Audit::system(self.subject.clone()),
            )
            .await
            .map(|(_, revision)| revision)
            .map_err(refusal)
    }
}
