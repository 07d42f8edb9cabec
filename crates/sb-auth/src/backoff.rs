//! Login backoff, not lockout. Failed logins slow down per (user, source address) and per
//! source address, never per user alone: a flood of wrong passwords for `admin` from one
//! address never stops `admin` from logging in from another. The check runs before any
//! password is hashed. After a few free failures each further one doubles the wait (up to
//! a cap); a login inside the wait is refused with its remaining time (a 429 with
//! `Retry-After`). Both tables are bounded: when full, idle entries go first, then the
//! oldest. The state is per node, in memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

#[derive(Clone, Debug)]
pub struct BackoffOptions {
    /// The wait after the first counted failure; it doubles with each further one.
    pub base: Duration,
    pub max: Duration,
    /// Failures per (user, address) before any wait.
    pub free_per_pair: u32,
    /// Failures per address (all users) before any wait.
    pub free_per_address: u32,
    /// Entries per table.
    pub max_entries: usize,
}

impl Default for BackoffOptions {
    fn default() -> Self {
        BackoffOptions {
            base: Duration::from_secs(1),
            max: Duration::from_secs(300),
            free_per_pair: 3,
            free_per_address: 20,
            max_entries: 10_000,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    failures: u32,
    blocked_until: Instant,
    last_failure: Instant,
}

/// One entry as admins see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackoffEntry {
    /// `None` for a per-address entry.
    pub user: Option<String>,
    pub address: IpAddr,
    pub failures: u32,
    pub retry_after_ms: u64,
}

/// The longest user name kept as a key (longer names are cut, so memory stays bounded).
const MAX_USER_KEY_CHARS: usize = 64;

#[derive(Default)]
struct Tables {
    pairs: HashMap<(String, IpAddr), Entry>,
    addresses: HashMap<IpAddr, Entry>,
}

pub struct LoginBackoff {
    options: BackoffOptions,
    tables: Mutex<Tables>,
}

fn user_key(user: &str) -> String {
    user.chars().take(MAX_USER_KEY_CHARS).collect()
}

impl LoginBackoff {
    pub fn new(options: BackoffOptions) -> Self {
        LoginBackoff { options, tables: Mutex::new(Tables::default()) }
    }

    /// Starts a login attempt of `user` from `address`: `Err(wait)` when it must wait,
    /// else the attempt is counted as a failure *now*, before any hash, so concurrent
    /// guesses cannot all slip through one window; [`LoginBackoff::succeeded`] takes it back.
    pub fn attempt(&self, user: &str, address: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let options = &self.options;
        let mut tables = self.tables.lock();
        let key = (user_key(user), address);
        let pair = tables.pairs.get(&key).map(|e| e.blocked_until);
        let by_address = tables.addresses.get(&address).map(|e| e.blocked_until);
        if let Some(until) = pair.into_iter().chain(by_address).max().filter(|until| *until > now) {
            return Err(until - now);
        }
        bump(&mut tables.pairs, key, now, options, options.free_per_pair);
        bump(&mut tables.addresses, address, now, options, options.free_per_address);
        Ok(())
    }

    /// A successful login: the pair's failures are forgotten and the address's count gives
    /// back the attempt.
    pub fn succeeded(&self, user: &str, address: IpAddr) {
        let mut tables = self.tables.lock();
        tables.pairs.remove(&(user_key(user), address));
        if let Some(entry) = tables.addresses.get_mut(&address) {
            entry.failures = entry.failures.saturating_sub(1);
            if entry.failures == 0 {
                tables.addresses.remove(&address);
            }
        }
    }

    pub fn list(&self) -> Vec<BackoffEntry> {
        let now = Instant::now();
        let tables = self.tables.lock();
        let retry = |e: &Entry| e.blocked_until.saturating_duration_since(now).as_millis() as u64;
        let mut entries: Vec<BackoffEntry> = tables
            .pairs
            .iter()
            .map(|((user, address), e)| BackoffEntry {
                user: Some(user.clone()),
                address: *address,
                failures: e.failures,
                retry_after_ms: retry(e),
            })
            .chain(tables.addresses.iter().map(|(address, e)| BackoffEntry {
                user: None,
                address: *address,
                failures: e.failures,
                retry_after_ms: retry(e),
            }))
            .collect();
        entries.sort_by(|a, b| (a.address, &a.user).cmp(&(b.address, &b.user)));
        entries
    }

    /// Clears entries matching the filters (none: everything); returns how many went.
    pub fn clear(&self, user_opt: Option<&str>, address_opt: Option<IpAddr>) -> usize {
        let mut tables = self.tables.lock();
        let before = tables.pairs.len() + tables.addresses.len();
        let user_opt = user_opt.map(user_key);
        tables.pairs.retain(|(user, address), _| {
            !(user_opt.as_ref().is_none_or(|u| u == user) && address_opt.is_none_or(|a| a == *address))
        });
        if user_opt.is_none() {
            tables.addresses.retain(|address, _| address_opt.is_some_and(|a| a != *address));
        }
        before - (tables.pairs.len() + tables.addresses.len())
    }

    pub fn len(&self) -> usize {
        let tables = self.tables.lock();
        tables.pairs.len() + tables.addresses.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Counts a failure.
fn bump<K: std::hash::Hash + Eq + Clone>(
    table: &mut HashMap<K, Entry>,
    key: K,
    now: Instant,
    options: &BackoffOptions,
    free: u32,
) {
    if !table.contains_key(&key) && table.len() >= options.max_entries {
        // Idle entries first (waits over and quiet for a full cap), then the oldest.
        table.retain(|_, e| {
            e.blocked_until > now || now.saturating_duration_since(e.last_failure) < options.max
        });
        if table.len() >= options.max_entries {
            if let Some(oldest) = table.iter().min_by_key(|(_, e)| e.last_failure).map(|(k, _)| k.clone()) {
                table.remove(&oldest);
            }
        }
    }
    let entry = table.entry(key).or_insert(Entry { failures: 0, blocked_until: now, last_failure: now });
    // A failure long after the last one starts the count afresh.
    if now.saturating_duration_since(entry.last_failure) > options.max.saturating_mul(2) {
        entry.failures = 0;
    }
    entry.failures = entry.failures.saturating_add(1);
    entry.last_failure = now;
    if entry.failures > free {
        let doublings = (entry.failures - free - 1).min(30);
        let wait = options.base.saturating_mul(1u32 << doublings).min(options.max);
        entry.blocked_until = now + wait;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> BackoffOptions {
        BackoffOptions {
            base: Duration::from_secs(1),
            max: Duration::from_secs(8),
            free_per_pair: 2,
            free_per_address: 5,
            max_entries: 4,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waits_double_up_to_the_cap_and_then_pass() {
        let backoff = LoginBackoff::new(options());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(backoff.attempt("admin", ip).is_ok());
        assert!(backoff.attempt("admin", ip).is_ok(), "free failures");
        assert!(backoff.attempt("admin", ip).is_ok(), "the third attempt runs, and sets a wait");
        assert_eq!(backoff.attempt("admin", ip), Err(Duration::from_secs(1)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(backoff.attempt("admin", ip).is_ok());
        assert_eq!(backoff.attempt("admin", ip), Err(Duration::from_secs(2)), "doubled");
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(8)).await;
            assert!(backoff.attempt("admin", ip).is_ok());
        }
        assert_eq!(backoff.attempt("admin", ip), Err(Duration::from_secs(8)), "capped");
        tokio::time::advance(Duration::from_secs(8)).await;
        assert!(backoff.attempt("admin", ip).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_from_one_address_never_locks_the_user_out_elsewhere() {
        let backoff = LoginBackoff::new(options());
        let attacker: IpAddr = "10.0.0.66".parse().unwrap();
        let owner: IpAddr = "10.0.0.2".parse().unwrap();
        let admitted = (0..100).filter(|_| backoff.attempt("admin", attacker).is_ok()).count();
        assert_eq!(admitted, 3, "concurrent guesses do not slip through one window");
        let others = (0..100).filter(|i| backoff.attempt(&format!("user{i}"), attacker).is_ok()).count();
        assert_eq!(others, 3, "per address: every user from there waits once the address's count is up");
        assert!(backoff.attempt("admin", owner).is_ok(), "never per user alone");
        backoff.succeeded("admin", owner);
        assert!(backoff.list().iter().all(|e| e.address != owner), "a success takes its attempt back");
    }

    #[tokio::test(start_paused = true)]
    async fn tables_stay_bounded_and_admins_can_clear() {
        let backoff = LoginBackoff::new(options());
        for i in 0..50u8 {
            let _ = backoff.attempt(&format!("user{i}"), IpAddr::from([10, 0, 1, i]));
        }
        assert!(backoff.len() <= 8, "{} entries", backoff.len());
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        for _ in 0..5 {
            let _ = backoff.attempt("admin", ip);
        }
        assert!(backoff.attempt("admin", ip).is_err());
        assert!(backoff.clear(Some("admin"), Some(ip)) >= 1);
        assert!(backoff.attempt("admin", ip).is_ok());
        backoff.clear(None, None);
        assert!(backoff.is_empty());
    }
}
