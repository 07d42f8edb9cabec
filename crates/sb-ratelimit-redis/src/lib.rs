//! The global rate-limit tier on Redis: every decision is one `EVALSHA` of one Lua script
//! (`decide.lua`) that reads Redis's own clock (`TIME`), so one limit holds across nodes
//! whose clocks differ.
//!
//! One multiplexed connection carries every request (pipelined, so throughput follows
//! concurrency). A supervisor task pings it and reconnects: a request that fails on the
//! connection or times out (`timeout`) marks the tier down at once, the engine then
//! answers by each rule's failure policy without asking Redis, and the supervisor brings
//! the tier back up when Redis answers again.
//!
//! Architecture invariant: this crate knows Redis and the `sb-ratelimit` tier port, and
//! nothing about stores or HTTP. No TLS stack (and never OpenSSL).
#![forbid(unsafe_code)]

use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError, Script};
use sb_ratelimit::{ceil_ms, Decision, GlobalTier, Limit, TierHealth, TierUnavailable};
use tracing::warn;

/// The decision script; loaded once per connection, then called by its SHA.
pub const DECIDE_SCRIPT: &str = include_str!("decide.lua");

#[derive(Clone, Debug)]
pub struct RedisTierOptions {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// How long a decision waits for Redis before the rule's failure policy answers.
    pub timeout: Duration,
    /// Prepended to every counter key.
    pub key_prefix: String,
    /// How often the supervisor pings a live connection or retries a lost one.
    pub probe_interval: Duration,
}

impl RedisTierOptions {
    pub fn new(url: impl Into<String>) -> Self {
        RedisTierOptions {
            url: url.into(),
            timeout: Duration::from_millis(250),
            key_prefix: "switchboard:rl:".into(),
            probe_interval: Duration::from_millis(250),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RedisTierError {
    #[error("--redis {url:?} is not a Redis URL (expected redis://host:port): {reason}")]
    InvalidUrl { url: String, reason: String },
}

pub struct RedisTier {
    client: Client,
    options: RedisTierOptions,
    script: Script,
    connection: ArcSwapOption<MultiplexedConnection>,
    health: TierHealth,
    supervisor: TaskSlot,
}

/// The supervisor task's handle, aborted when the tier is dropped.
#[derive(Default)]
struct TaskSlot(std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>);

impl Drop for TaskSlot {
    fn drop(&mut self) {
        if let Ok(mut slot) = self.0.lock() {
            if let Some(task) = slot.take() {
                task.abort();
            }
        }
    }
}

impl RedisTier {
    /// Connects (or, if Redis does not answer yet, starts down and keeps trying) and
    /// starts the supervisor. Only a malformed URL is an error.
    pub async fn start(options: RedisTierOptions) -> Result<Arc<RedisTier>, RedisTierError> {
        let client = Client::open(options.url.as_str())
            .map_err(|e| RedisTierError::InvalidUrl { url: options.url.clone(), reason: e.to_string() })?;
        let tier = Arc::new(RedisTier {
            client,
            options,
            script: Script::new(DECIDE_SCRIPT),
            connection: ArcSwapOption::empty(),
            health: TierHealth::new("redis"),
            supervisor: Default::default(),
        });
        if let Err(error) = tier.connect().await {
            warn!(%error, "redis is not reachable at start: redis rules apply their failure policy until it is");
        }
        let task = tokio::spawn(supervise(Arc::downgrade(&tier)));
        if let Ok(mut slot) = tier.supervisor.0.lock() {
            *slot = Some(task);
        }
        Ok(tier)
    }

    /// The script's SHA1, as `EVALSHA` names it (for `redis-benchmark`).
    pub fn script_sha(&self) -> &str {
        self.script.get_hash()
    }

    /// The full Redis key of a counter key.
    pub fn redis_key(&self, key: &str) -> String {
        let mut full = String::with_capacity(self.options.key_prefix.len() + key.len());
        full.push_str(&self.options.key_prefix);
        full.push_str(key);
        full
    }

    async fn connect(&self) -> Result<(), RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.options.timeout.max(Duration::from_millis(100))))
            .set_response_timeout(Some(self.options.timeout));
        let mut connection = self.client.get_multiplexed_async_connection_with_config(&config).await?;
        self.script.prepare_invoke().load_async(&mut connection).await?;
        self.connection.store(Some(Arc::new(connection)));
        self.health.mark_up();
        Ok(())
    }

    fn lose_connection(&self, reason: &str) {
        self.connection.store(None);
        self.health.mark_down(reason);
    }

    /// One script call; `[allowed, remaining, reset_after_us, retry_after_us]`.
    async fn call(&self, key: &str, args: &[String]) -> Result<[i64; 4], TierUnavailable> {
        let Some(connection) = self.connection.load_full() else {
            return Err(TierUnavailable("no connection to redis".into()));
        };
        let mut connection = MultiplexedConnection::clone(&connection);
        let mut invocation = self.script.key(self.redis_key(key));
        for arg in args {
            invocation.arg(arg.as_str());
        }
        let result =
            tokio::time::timeout(self.options.timeout, invocation.invoke_async::<Vec<i64>>(&mut connection))
                .await;
        match result {
            Ok(Ok(values)) => match values.as_slice() {
                [a, b, c, d] => Ok([*a, *b, *c, *d]),
                other => {
                    Err(TierUnavailable(format!("the script answered {other:?}, expected four numbers")))
                }
            },
            Ok(Err(error)) => {
                let reason = error.to_string();
                if connection_failed(&error) {
                    self.lose_connection(&reason);
                }
                Err(TierUnavailable(reason))
            }
            Err(_) => {
                let reason = format!("no answer within {} ms", self.options.timeout.as_millis());
                self.lose_connection(&reason);
                Err(TierUnavailable(reason))
            }
        }
    }
}

/// Errors that say the connection is gone (as opposed to a script or data error).
fn connection_failed(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || error.is_unrecoverable_error()
}

fn us(ns: u64) -> String {
    // Microseconds with three decimals: a GCRA interval may be under a microsecond.
    format!("{}.{:03}", ns / 1000, ns % 1000)
}

fn decision(values: [i64; 4]) -> Decision {
    let ms = |v: i64| ceil_ms(v.max(0) as u64 * 1000);
    Decision {
        allowed: values[0] == 1,
        remaining: values[1].max(0) as u64,
        reset_after_ms: ms(values[2]),
        retry_after_ms: ms(values[3]),
    }
}

#[async_trait]
impl GlobalTier for RedisTier {
    fn health(&self) -> &TierHealth {
        &self.health
    }

    async fn check(&self, key: &str, limit: Limit, hits: u64) -> Result<Decision, TierUnavailable> {
        let args = match limit {
            Limit::Gcra { interval_ns, burst } => {
                vec!["gcra".to_owned(), us(interval_ns), burst.to_string(), hits.to_string()]
            }
            Limit::SlidingWindow { limit, window_ns } => {
                vec!["sliding".to_owned(), us(window_ns), limit.to_string(), hits.to_string()]
            }
            Limit::FixedWindow { limit, window_ns } => {
                vec!["fixed".to_owned(), us(window_ns), limit.to_string(), hits.to_string()]
            }
            Limit::Concurrency { .. } => return Ok(Decision::default()),
        };
        self.call(key, &args).await.map(decision)
    }

    async fn acquire(&self, key: &str, limit: Limit, permit_id: &str) -> Result<Decision, TierUnavailable> {
        let Limit::Concurrency { max_permits, ttl_ns } = limit else {
            return Ok(Decision::default());
        };
        let args = ["acquire".to_owned(), us(ttl_ns), max_permits.to_string(), permit_id.to_owned()];
        self.call(key, &args).await.map(decision)
    }

    async fn release(&self, key: &str, permit_id: &str) -> Result<bool, TierUnavailable> {
        let args = ["release".to_owned(), permit_id.to_owned()];
        self.call(key, &args).await.map(|values| values[0] == 1)
    }
}

/// Pings a live connection and reconnects a lost one, every `probe_interval`, until the
/// tier is dropped.
async fn supervise(tier: Weak<RedisTier>) {
    let Some(interval) = tier.upgrade().map(|t| t.options.probe_interval) else { return };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(tier) = tier.upgrade() else { return };
        match tier.connection.load_full() {
            Some(connection) => {
                let mut connection = MultiplexedConnection::clone(&connection);
                let ping_cmd = redis::cmd("PING");
                let ping = ping_cmd.query_async::<String>(&mut connection);
                match tokio::time::timeout(tier.options.timeout, ping).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => tier.lose_connection(&error.to_string()),
                    Err(_) => tier.lose_connection("ping got no answer in time"),
                }
            }
            None => {
                // Down: try again; `connect` marks the tier up (and logs once) on success.
                let _ = tier.connect().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_go_to_the_script_in_microseconds_with_their_fraction() {
        assert_eq!(us(1_500), "1.500");
        assert_eq!(us(333_333_333), "333333.333");
        assert_eq!(us(7), "0.007");
    }

    #[test]
    fn answers_become_milliseconds_rounded_up() {
        let d = decision([0, 3, 1_500, 1]);
        assert_eq!(d, Decision { allowed: false, remaining: 3, reset_after_ms: 2, retry_after_ms: 1 });
    }
}
