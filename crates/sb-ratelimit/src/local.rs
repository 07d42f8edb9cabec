//! The local tier: counters in this node's memory.
//!
//! Keys hash once (foldhash) into one of many shards; each shard is a hash table behind a
//! reader-writer lock that is taken for writing only to add or sweep keys. A GCRA decision
//! is one compare-and-swap on the key's timestamp under a shared read lock; windows and
//! permits take a per-key mutex, so two keys never wait on each other. Idle keys are swept
//! (see [`LocalTier::sweep`]), so memory follows the keys in use, not every key ever seen.
//!
//! Time is nanoseconds since the tier's creation, read from the TSC through `quanta` (a
//! monotonic clock read costs more than the rest of a decision); a tier made with
//! [`LocalTier::with_tokio_clock`] reads `tokio::time::Instant` instead, so paused-time
//! tests drive it.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use hashbrown::HashTable;
use parking_lot::{Mutex, RwLock};
use tokio::time::Instant;

use crate::decision::{ceil_ms, Decision, Limit};

const SHARDS: usize = 64;

pub struct LocalTier {
    shards: Box<[RwLock<HashTable<Slot>>]>,
    hasher: foldhash::fast::RandomState,
    clock: TierClock,
}

enum TierClock {
    /// The fastest stable clock (`quanta`): raw readings since `start`, scaled to ns.
    Fast { clock: quanta::Clock, start: u64 },
    /// tokio's clock, which paused-time tests control.
    Tokio(Instant),
}

struct Slot {
    hash: u64,
    key: Box<str>,
    cell: Cell,
}

enum Cell {
    /// The theoretical arrival time, in nanoseconds since the epoch.
    Gcra(AtomicU64),
    Window {
        window_ns: u64,
        state: Mutex<WindowState>,
    },
    Permits(Mutex<HashMap<String, u64>>),
}

#[derive(Default)]
struct WindowState {
    index: u64,
    prev: u64,
    cur: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gcra,
    Window(u64),
    Permits,
}

impl Cell {
    fn new(kind: Kind) -> Cell {
        match kind {
            Kind::Gcra => Cell::Gcra(AtomicU64::new(0)),
            Kind::Window(window_ns) => Cell::Window { window_ns, state: Mutex::new(WindowState::default()) },
            Kind::Permits => Cell::Permits(Mutex::new(HashMap::new())),
        }
    }

    fn is(&self, kind: Kind) -> bool {
        match (self, kind) {
            (Cell::Gcra(_), Kind::Gcra) | (Cell::Permits(_), Kind::Permits) => true,
            (Cell::Window { window_ns, .. }, Kind::Window(w)) => *window_ns == w,
            _ => false,
        }
    }

    /// Whether forgetting the key changes no future answer.
    fn is_idle(&self, now: u64) -> bool {
        match self {
            Cell::Gcra(tat) => tat.load(Ordering::Relaxed) <= now,
            Cell::Window { window_ns, state } => {
                let state = state.lock();
                (state.prev == 0 && state.cur == 0) || now / window_ns > state.index + 1
            }
            Cell::Permits(held) => {
                let mut held = held.lock();
                held.retain(|_, expires| *expires > now);
                held.is_empty()
            }
        }
    }
}

impl Default for LocalTier {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalTier {
    pub fn new() -> LocalTier {
        let clock = quanta::Clock::new();
        let start = clock.raw();
        Self::with_clock(TierClock::Fast { clock, start })
    }

    /// A tier on tokio's clock (for tests in paused time).
    pub fn with_tokio_clock() -> LocalTier {
        Self::with_clock(TierClock::Tokio(Instant::now()))
    }

    fn with_clock(clock: TierClock) -> LocalTier {
        LocalTier {
            shards: (0..SHARDS).map(|_| RwLock::new(HashTable::new())).collect(),
            hasher: foldhash::fast::RandomState::default(),
            clock,
        }
    }

    /// The tier's clock: nanoseconds since it was created.
    pub fn now_ns(&self) -> u64 {
        match &self.clock {
            TierClock::Fast { clock, start } => clock.delta_as_nanos(*start, clock.raw()),
            TierClock::Tokio(epoch) => epoch.elapsed().as_nanos() as u64,
        }
    }

    /// A decision for `hits` on `key` (GCRA or a window; a concurrency limit is asked
    /// through [`LocalTier::acquire`] and answers a denial here).
    pub fn check(&self, key: &str, limit: Limit, hits: u64) -> Decision {
        self.check_at(key, limit, hits, self.now_ns())
    }

    /// [`LocalTier::check`] at a given time (for callers that read the clock once per batch).
    pub fn check_at(&self, key: &str, limit: Limit, hits: u64, now: u64) -> Decision {
        match limit {
            Limit::Gcra { interval_ns, burst } => self.with_cell(key, Kind::Gcra, |cell| match cell {
                Cell::Gcra(tat) => gcra(tat, now, interval_ns, burst, hits),
                _ => unreachable_kind(),
            }),
            Limit::SlidingWindow { limit, window_ns } => {
                self.with_cell(key, Kind::Window(window_ns), |cell| match cell {
                    Cell::Window { state, .. } => {
                        window(&mut state.lock(), true, limit, window_ns, hits, now)
                    }
                    _ => unreachable_kind(),
                })
            }
            Limit::FixedWindow { limit, window_ns } => {
                self.with_cell(key, Kind::Window(window_ns), |cell| match cell {
                    Cell::Window { state, .. } => {
                        window(&mut state.lock(), false, limit, window_ns, hits, now)
                    }
                    _ => unreachable_kind(),
                })
            }
            // Permits are taken with `acquire`; a plain check of one never allows.
            Limit::Concurrency { .. } => Decision::default(),
        }
    }

    /// Takes a permit `permit_id` for `ttl_ns` if fewer than `max_permits` are held.
    pub fn acquire(&self, key: &str, max_permits: u64, ttl_ns: u64, permit_id: &str) -> Decision {
        let now = self.now_ns();
        self.with_cell(key, Kind::Permits, |cell| match cell {
            Cell::Permits(held) => {
                let mut held = held.lock();
                held.retain(|_, expires| *expires > now);
                let count = held.len() as u64;
                if count < max_permits {
                    held.insert(permit_id.to_owned(), now + ttl_ns);
                    Decision {
                        allowed: true,
                        remaining: max_permits - count - 1,
                        reset_after_ms: ceil_ms(ttl_ns),
                        retry_after_ms: 0,
                    }
                } else {
                    let first = held.values().min().copied().unwrap_or(now);
                    let last = held.values().max().copied().unwrap_or(now);
                    Decision {
                        allowed: false,
                        remaining: 0,
                        reset_after_ms: ceil_ms(last.saturating_sub(now)),
                        retry_after_ms: ceil_ms(first.saturating_sub(now)).max(1),
                    }
                }
            }
            _ => unreachable_kind(),
        })
    }

    /// Gives a permit back; false when it is not held (unknown, released or expired).
    pub fn release(&self, key: &str, permit_id: &str) -> bool {
        let now = self.now_ns();
        let hash = self.hasher.hash_one(key);
        let shard = self.shards[shard_of(hash)].read();
        let Some(slot) = shard.find(hash, |slot| &*slot.key == key) else {
            return false;
        };
        match &slot.cell {
            Cell::Permits(held) => {
                let mut held = held.lock();
                held.retain(|_, expires| *expires > now);
                held.remove(permit_id).is_some()
            }
            _ => false,
        }
    }

    /// Forgets keys whose state no longer changes an answer; returns how many.
    pub fn sweep(&self) -> usize {
        let now = self.now_ns();
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.write();
            let before = shard.len();
            shard.retain(|slot| !slot.cell.is_idle(now));
            removed += before - shard.len();
        }
        removed
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.read().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `f` on the key's cell, creating it (or replacing one of another kind) first.
    fn with_cell<R>(&self, key: &str, kind: Kind, f: impl Fn(&Cell) -> R) -> R {
        let hash = self.hasher.hash_one(key);
        let shard = &self.shards[shard_of(hash)];
        {
            let table = shard.read();
            if let Some(slot) = table.find(hash, |slot| &*slot.key == key) {
                if slot.cell.is(kind) {
                    return f(&slot.cell);
                }
            }
        }
        let mut table = shard.write();
        match table.find_mut(hash, |slot| &*slot.key == key) {
            Some(slot) if slot.cell.is(kind) => {}
            Some(slot) => slot.cell = Cell::new(kind),
            None => {
                table.insert_unique(hash, Slot { hash, key: key.into(), cell: Cell::new(kind) }, |slot| {
                    slot.hash
                });
            }
        }
        let table = parking_lot::RwLockWriteGuard::downgrade(table);
        let slot = table.find(hash, |slot| &*slot.key == key);
        match slot {
            Some(slot) => f(&slot.cell),
            None => unreachable_kind(),
        }
    }
}

fn shard_of(hash: u64) -> usize {
    // The table uses the low bits for buckets and the top 7 for tags: take the shard from
    // bits in between.
    ((hash >> 40) as usize) & (SHARDS - 1)
}

#[cold]
fn unreachable_kind() -> ! {
    // `with_cell` creates the cell of the kind it was asked for, under the write lock.
    panic!("invariant: with_cell hands out a cell of the kind it was asked for")
}

/// GCRA: allow when the theoretical arrival time, pushed by `hits` intervals, is no more
/// than `burst` intervals ahead of now; one compare-and-swap per decision.
fn gcra(tat_cell: &AtomicU64, now: u64, interval: u64, burst: u64, hits: u64) -> Decision {
    let burst_offset = interval.saturating_mul(burst);
    let increment = interval.saturating_mul(hits);
    let mut tat = tat_cell.load(Ordering::Acquire);
    loop {
        let base = tat.max(now);
        let new_tat = base.saturating_add(increment);
        let allow_at = new_tat.saturating_sub(burst_offset);
        if now < allow_at {
            let room = (now + burst_offset).saturating_sub(base);
            return Decision {
                allowed: false,
                remaining: room / interval,
                reset_after_ms: ceil_ms(base - now),
                retry_after_ms: ceil_ms(allow_at - now).max(1),
            };
        }
        match tat_cell.compare_exchange_weak(tat, new_tat, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                return Decision {
                    allowed: true,
                    remaining: (now + burst_offset - new_tat) / interval,
                    reset_after_ms: ceil_ms(new_tat - now),
                    retry_after_ms: 0,
                }
            }
            Err(actual) => tat = actual,
        }
    }
}

/// A fixed window, or a sliding-window counter: the previous window's count weighted by
/// how much of it the sliding window still covers, plus the current window's.
fn window(
    state: &mut WindowState,
    sliding: bool,
    limit: u64,
    window_ns: u64,
    hits: u64,
    now: u64,
) -> Decision {
    let index = now / window_ns;
    if index != state.index {
        state.prev = if index == state.index + 1 { state.cur } else { 0 };
        state.cur = 0;
        state.index = index;
    }
    let start = index * window_ns;
    let end = start + window_ns;
    if !sliding {
        let allowed = state.cur + hits <= limit;
        if allowed {
            state.cur += hits;
        }
        return Decision {
            allowed,
            remaining: limit.saturating_sub(state.cur),
            reset_after_ms: ceil_ms(end - now),
            retry_after_ms: if allowed { 0 } else { ceil_ms(end - now).max(1) },
        };
    }
    let weight = (end - now) as f64 / window_ns as f64;
    let estimate = state.prev as f64 * weight + state.cur as f64;
    let allowed = estimate + hits as f64 <= limit as f64;
    let estimate = if allowed {
        state.cur += hits;
        estimate + hits as f64
    } else {
        estimate
    };
    let reset_after_ns = if state.cur > 0 {
        end + window_ns - now
    } else if state.prev > 0 {
        end - now
    } else {
        0
    };
    let retry_after_ns = if allowed {
        0
    } else if state.cur + hits > limit {
        // Only the next window can make room: there the current count becomes the
        // previous one, and must fade enough.
        let needed = 1.0 - (limit - hits.min(limit)) as f64 / state.cur.max(1) as f64;
        (end - now) + (needed.max(0.0) * window_ns as f64).ceil() as u64
    } else {
        let needed = 1.0 - (limit - state.cur - hits) as f64 / state.prev.max(1) as f64;
        (start + (needed.max(0.0) * window_ns as f64).ceil() as u64).saturating_sub(now)
    };
    Decision {
        allowed,
        remaining: (limit as f64 - estimate).max(0.0).floor() as u64,
        reset_after_ms: ceil_ms(reset_after_ns),
        retry_after_ms: if allowed { 0 } else { ceil_ms(retry_after_ns).max(1) },
    }
}

#[cfg(test)]
#[path = "local_tests.rs"]
mod tests;
