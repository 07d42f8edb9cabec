//! The lock-free hot path: one `AtomicU64` holds the last timestamp, the worker and the
//! next sequence; a batch is claimed with one compare-and-swap per millisecond it spans.
//!
//! Two more atomics bound what may be issued: the *limit* (the worker's persisted
//! high-water mark: every issued timestamp is below it) and the *lease deadline* (the
//! monotonic moment after which the worker lease could have expired unnoticed). The slow
//! path (`service.rs`) moves them; this file only obeys them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::time::Instant;

use super::layout::{Layout, MAX_TIMESTAMP, SEQUENCES_PER_MS, WORKER_BITS};
use crate::clock::WallClock;

const SEQ_FIELD_BITS: u32 = 13; // 0..=4096: 4096 means "this millisecond is used up"
const WORKER_MASK: u64 = (1 << WORKER_BITS) - 1;
const LIMIT_VALID: u64 = 1 << 63;
const LIMIT_TS_BITS: u32 = 41;

/// `(elapsed_ms, worker, next_sequence)` packed into 41 + 10 + 13 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub elapsed_ms: u64,
    pub worker: u16,
    pub next_seq: u64,
}

impl Cursor {
    fn pack(self) -> u64 {
        (self.elapsed_ms << (WORKER_BITS + SEQ_FIELD_BITS))
            | (u64::from(self.worker) << SEQ_FIELD_BITS)
            | self.next_seq
    }

    fn unpack(word: u64) -> Self {
        Cursor {
            elapsed_ms: word >> (WORKER_BITS + SEQ_FIELD_BITS),
            worker: ((word >> SEQ_FIELD_BITS) & WORKER_MASK) as u16,
            next_seq: word & ((1 << SEQ_FIELD_BITS) - 1),
        }
    }
}

/// Why a fill stopped short.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The clock is behind the last issued timestamp (or the takeover floor) by this much.
    Behind { by_ms: u64 },
    /// The next timestamp would reach the persisted high-water mark.
    LimitReached,
    /// No worker id is held.
    NoWorker,
    /// The worker lease was not confirmed recently enough.
    LeaseUnconfirmed { since_confirmed_ms: u64 },
    /// The clock is before the epoch, or past the layout's 41 bits.
    OutOfRange { now_ms: u64 },
}

pub(crate) struct Generator {
    layout: Layout,
    clock: Arc<dyn WallClock>,
    cursor: AtomicU64,
    /// `VALID | worker << 41 | limit` (elapsed ms, exclusive); 0 when no worker is held.
    limit: AtomicU64,
    /// Monotonic ms since `base` after which nothing may be issued.
    lease_deadline_ms: AtomicU64,
    base: Instant,
}

impl Generator {
    pub fn new(layout: Layout, clock: Arc<dyn WallClock>) -> Self {
        Generator {
            layout,
            clock,
            cursor: AtomicU64::new(0),
            limit: AtomicU64::new(0),
            lease_deadline_ms: AtomicU64::new(0),
            base: Instant::now(),
        }
    }

    /// Wall-clock now in elapsed ms since the epoch; `Err(now)` outside the layout.
    pub fn now_elapsed(&self) -> Result<u64, u64> {
        let now = self.clock.now_ms();
        match now.checked_sub(self.layout.epoch_ms) {
            Some(elapsed) if elapsed <= MAX_TIMESTAMP => Ok(elapsed),
            _ => Err(now),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub fn monotonic_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    pub fn cursor(&self) -> Cursor {
        Cursor::unpack(self.cursor.load(Ordering::Acquire))
    }

    /// The held worker and its limit (elapsed ms), if any.
    pub fn held(&self) -> Option<(u16, u64)> {
        let word = self.limit.load(Ordering::Acquire);
        (word & LIMIT_VALID != 0)
            .then_some((((word >> LIMIT_TS_BITS) & WORKER_MASK) as u16, word & ((1 << LIMIT_TS_BITS) - 1)))
    }

    /// Installs a worker (slow path only): issue from `floor_elapsed` on, below `limit`.
    /// The limit is stored first, so a hot path that sees the new cursor sees its limit.
    pub fn install(&self, worker: u16, floor_elapsed: u64, limit_elapsed: u64) {
        self.limit.store(Self::limit_word(worker, limit_elapsed), Ordering::Release);
        let cursor = Cursor { elapsed_ms: floor_elapsed, worker, next_seq: 0 };
        self.cursor.store(cursor.pack(), Ordering::Release);
    }

    /// Raises the limit of `worker` (after its higher mark was persisted); a no-op when
    /// another worker was installed meanwhile.
    pub fn raise_limit(&self, worker: u16, limit_elapsed: u64) {
        let _ = self.limit.fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
            let held = word & LIMIT_VALID != 0 && ((word >> LIMIT_TS_BITS) & WORKER_MASK) as u16 == worker;
            let current = word & ((1 << LIMIT_TS_BITS) - 1);
            (held && limit_elapsed > current).then(|| Self::limit_word(worker, limit_elapsed))
        });
    }

    /// Stops issuing at once (the worker is lost or released).
    pub fn revoke(&self) {
        self.limit.store(0, Ordering::Release);
    }

    pub fn confirm_lease_until(&self, monotonic_ms: u64) {
        self.lease_deadline_ms.fetch_max(monotonic_ms, Ordering::AcqRel);
    }

    pub fn reset_lease_deadline(&self) {
        self.lease_deadline_ms.store(0, Ordering::Release);
    }

    fn limit_word(worker: u16, limit_elapsed: u64) -> u64 {
        LIMIT_VALID | (u64::from(worker) << LIMIT_TS_BITS) | limit_elapsed.min(MAX_TIMESTAMP)
    }

    /// Appends IDs to `out` until it holds `want`, or says why it stopped. Lock-free: the
    /// only shared writes are compare-and-swaps on the cursor.
    pub fn fill(&self, out: &mut Vec<u64>, want: usize) -> Result<(), Stop> {
        let deadline = self.lease_deadline_ms.load(Ordering::Acquire);
        let monotonic = self.monotonic_ms();
        if monotonic >= deadline {
            return Err(Stop::LeaseUnconfirmed { since_confirmed_ms: monotonic.saturating_sub(deadline) });
        }
        while out.len() < want {
            let word = self.cursor.load(Ordering::Acquire);
            let limit_word = self.limit.load(Ordering::Acquire);
            let cursor = Cursor::unpack(word);
            if limit_word & LIMIT_VALID == 0
                || ((limit_word >> LIMIT_TS_BITS) & WORKER_MASK) as u16 != cursor.worker
            {
                return Err(Stop::NoWorker);
            }
            let limit = limit_word & ((1 << LIMIT_TS_BITS) - 1);
            let now = self.now_elapsed().map_err(|now_ms| Stop::OutOfRange { now_ms })?;
            let (elapsed, seq) = if now > cursor.elapsed_ms {
                (now, 0)
            } else if now == cursor.elapsed_ms && cursor.next_seq < SEQUENCES_PER_MS {
                (now, cursor.next_seq)
            } else if now == cursor.elapsed_ms {
                // This millisecond is used up: wait for the next one (under 1 ms), never
                // borrow a future one.
                std::hint::spin_loop();
                continue;
            } else {
                return Err(Stop::Behind { by_ms: cursor.elapsed_ms - now });
            };
            if elapsed >= limit {
                return Err(Stop::LimitReached);
            }
            let take = ((want - out.len()) as u64).min(SEQUENCES_PER_MS - seq);
            let next = Cursor { elapsed_ms: elapsed, worker: cursor.worker, next_seq: seq + take };
            if self
                .cursor
                .compare_exchange_weak(word, next.pack(), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                out.extend((seq..seq + take).map(|s| Layout::compose(elapsed, cursor.worker, s)));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::OffsetClock;

    fn generator() -> (Generator, OffsetClock) {
        let clock = OffsetClock::new();
        let generator = Generator::new(Layout::default(), Arc::new(clock.clone()));
        generator.confirm_lease_until(u64::MAX);
        (generator, clock)
    }

    #[test]
    fn nothing_is_issued_without_a_worker() {
        let (generator, _) = generator();
        assert_eq!(generator.fill(&mut Vec::new(), 1), Err(Stop::NoWorker));
    }

    #[test]
    fn batches_are_unique_and_increasing_across_milliseconds() {
        let (generator, _) = generator();
        let now = generator.now_elapsed().unwrap();
        generator.install(7, 0, now + 60_000);
        let mut out = Vec::new();
        generator.fill(&mut out, 20_000).unwrap();
        assert_eq!(out.len(), 20_000);
        assert!(out.windows(2).all(|w| w[0] < w[1]));
        assert!(out.iter().all(|id| Layout::default().decode(*id).worker == 7));
    }

    #[test]
    fn a_clock_step_back_stops_issuing_and_says_by_how_much() {
        let (generator, clock) = generator();
        let now = generator.now_elapsed().unwrap();
        generator.install(1, 0, now + 60_000);
        generator.fill(&mut Vec::new(), 1).unwrap();
        clock.set_offset_ms(-10_000);
        match generator.fill(&mut Vec::new(), 1) {
            Err(Stop::Behind { by_ms }) => assert!((9_990..=10_010).contains(&by_ms), "{by_ms}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_limit_and_the_floor_are_obeyed() {
        let (generator, _) = generator();
        let now = generator.now_elapsed().unwrap();
        generator.install(2, 0, now);
        assert_eq!(generator.fill(&mut Vec::new(), 1), Err(Stop::LimitReached));
        generator.raise_limit(3, now + 10_000);
        assert_eq!(generator.fill(&mut Vec::new(), 1), Err(Stop::LimitReached), "another worker's limit");
        generator.install(2, now + 1_000, now + 10_000);
        assert!(matches!(generator.fill(&mut Vec::new(), 1), Err(Stop::Behind { .. })), "below the floor");
    }

    #[test]
    fn an_unconfirmed_lease_stops_issuing() {
        let clock = OffsetClock::new();
        let generator = Generator::new(Layout::default(), Arc::new(clock));
        let now = generator.now_elapsed().unwrap();
        generator.install(2, 0, now + 10_000);
        assert!(matches!(generator.fill(&mut Vec::new(), 1), Err(Stop::LeaseUnconfirmed { .. })));
    }

    #[test]
    fn concurrent_fills_never_repeat_an_id() {
        let (generator, _) = generator();
        let now = generator.now_elapsed().unwrap();
        generator.install(9, 0, now + 60_000);
        let generator = Arc::new(generator);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let generator = generator.clone();
                std::thread::spawn(move || {
                    let mut all = Vec::new();
                    for _ in 0..200 {
                        let want = all.len() + 37;
                        generator.fill(&mut all, want).unwrap();
                    }
                    all
                })
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        for thread in threads {
            for id in thread.join().unwrap() {
                assert!(seen.insert(id), "duplicate {id}");
            }
        }
        assert_eq!(seen.len(), 4 * 200 * 37);
    }
}
