//! Wall-clock time for the ID generators, behind a trait so a test can step it.
//!
//! Production uses [`SystemClock`]. [`OffsetClock`] adds an adjustable offset to it; the
//! composition root enables it only in debug builds, through a hidden environment variable
//! (see ARCHITECTURE.md), so the uniqueness checker can step a real process's clock
//! backwards. Monotonic time (lease deadlines) never goes through this trait.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, as the machine's wall clock says (it may step
/// backwards: NTP, a VM migration, an operator).
pub trait WallClock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }
}

/// The system clock plus an offset that can change at any time (a test-only clock).
#[derive(Clone, Debug, Default)]
pub struct OffsetClock {
    offset_ms: Arc<AtomicI64>,
}

impl OffsetClock {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set_offset_ms(&self, offset_ms: i64) {
        self.offset_ms.store(offset_ms, Ordering::Release);
    }

    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Acquire)
    }
}

impl WallClock for OffsetClock {
    fn now_ms(&self) -> u64 {
        let now = SystemClock.now_ms() as i64 + self.offset_ms();
        now.max(0) as u64
    }
}
