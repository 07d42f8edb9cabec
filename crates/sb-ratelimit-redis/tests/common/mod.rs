//! The engine on an embedded store with the Redis tier, and a Redis of a test's own (for
//! tests that kill it; never the shared one).
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use sb_ratelimit::{GlobalTier, RateLimiter, RuleCatalog, RuleSpec};
use sb_ratelimit_redis::{RedisTier, RedisTierOptions};
use sb_store_embedded::{EmbeddedOptions, EmbeddedStore};

/// The Redis `scripts/test` starts.
pub fn shared_redis_url() -> String {
    std::env::var("SB_TEST_REDIS_URL")
        .expect("SB_TEST_REDIS_URL is not set: run scripts/test, which starts Redis and sets it")
}

pub struct Engine {
    pub limiter: Arc<RateLimiter>,
    pub tier: Arc<RedisTier>,
    _dir: tempfile::TempDir,
}

/// A limiter whose `local` failure policy divides by `live_nodes`, with its own key prefix.
pub async fn engine(redis_url: &str, live_nodes: usize) -> Engine {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(EmbeddedOptions::new(dir.path().join("store.redb"))).await.unwrap();
    let catalog = RuleCatalog::start(store, Duration::from_secs(5)).await.unwrap();
    let mut options = RedisTierOptions::new(redis_url);
    options.key_prefix = format!("sbtest:{:016x}:", rand_u64());
    let tier = RedisTier::start(options).await.unwrap();
    let global: Arc<dyn GlobalTier> = tier.clone();
    let limiter = Arc::new(RateLimiter::new(Arc::new(catalog), Some(global), Arc::new(move || live_nodes)));
    Engine { limiter, tier, _dir: dir }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(std::process::id() as u64);
    hasher.finish()
}

impl Engine {
    pub async fn rule(&self, name: &str, json: &str) {
        let spec: RuleSpec = serde_json::from_str(json).unwrap();
        self.limiter.catalog().put("public", name, spec, &sb_audit::Audit::system("test")).await.unwrap();
    }
}

/// A redis-server of the test's own on a free port, killed when dropped.
pub struct OwnRedis {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl OwnRedis {
    pub fn start() -> OwnRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut redis = OwnRedis { port, child: None, dir: tempfile::tempdir().unwrap() };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on the same port and waits until it accepts connections.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is in PATH (scripts/test installs it)");
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server on port {} did not accept connections within 5 s", self.port);
    }

    /// SIGKILL: a crash, not a shutdown.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sleeps until Redis's clock is at the start of a `window_ms` window (Redis aligns
/// windows to its own clock).
pub async fn align_to_redis_window(redis_url: &str, window_ms: u64) {
    let client = redis::Client::open(redis_url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut connection).await.unwrap();
    let now_us = secs * 1_000_000 + micros;
    let window_us = window_ms * 1000;
    let wait_us = window_us - now_us % window_us;
    tokio::time::sleep(Duration::from_micros(wait_us)).await;
}
