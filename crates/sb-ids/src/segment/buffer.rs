//! One tag's two buffers on this node: the current segment and the next one, fetched in
//! the background once 10% of the current one is used. A short mutex guards them; no
//! await happens under it.

use parking_lot::Mutex;
#[cfg(test)]
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::BufferStatus;
use crate::error::{IdError, IdResult};

/// `[next, end)` of an allocated range.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Segment {
    next: u64,
    end: u64,
    len: u64,
}

impl Segment {
    pub fn new(start: u64, end: u64) -> Self {
        Segment { next: start, end, len: end - start }
    }

    fn remaining(&self) -> u64 {
        self.end - self.next
    }
}

/// What a take did.
pub(crate) struct Take {
    /// `out` holds what was asked for.
    pub done: bool,
    /// The caller must start a fetch of the next segment.
    pub prefetch: bool,
    /// Both buffers are empty and the last fetch failed with this.
    pub failed: Option<IdError>,
}

struct State {
    current: Segment,
    current_since: Instant,
    next: Option<Segment>,
    fetching: bool,
    failed: Option<IdError>,
    base_step: u64,
    step: u64,
    rate_window_start: Instant,
    rate_window_count: u64,
    rate_per_sec: f64,
}

pub(crate) struct TagBuffer {
    pub namespace: String,
    pub tag: String,
    state: Mutex<State>,
    /// Woken when a fetch ends (with a segment or an error).
    pub refilled: Notify,
}

impl TagBuffer {
    pub fn new(namespace: &str, tag: &str, (segment, base_step): (Segment, u64)) -> Self {
        let now = Instant::now();
        TagBuffer {
            namespace: namespace.into(),
            tag: tag.into(),
            state: Mutex::new(State {
                current: segment,
                current_since: now,
                next: None,
                fetching: false,
                failed: None,
                base_step,
                step: segment.len.max(base_step),
                rate_window_start: now,
                rate_window_count: 0,
                rate_per_sec: 0.0,
            }),
            refilled: Notify::new(),
        }
    }

    pub fn wanted_step(&self) -> u64 {
        self.state.lock().step
    }

    /// Moves IDs into `out` until it holds `want`, switching to the next segment when the
    /// current one runs out.
    pub fn take(&self, out: &mut Vec<u64>, want: usize, max_step: u64, target_ms: u64) -> Take {
        let mut state = self.state.lock();
        let before = out.len();
        loop {
            let k = state.current.remaining().min((want - out.len()) as u64);
            let start = state.current.next;
            out.extend(start..start + k);
            state.current.next += k;
            if out.len() == want {
                break;
            }
            let Some(next) = state.next.take() else { break };
            // Adapt the step to how long the finished segment lasted.
            let lasted_ms = state.current_since.elapsed().as_millis() as u64;
            if lasted_ms < target_ms / 2 {
                state.step = (state.step.saturating_mul(2)).min(max_step.max(state.base_step));
            } else if lasted_ms > target_ms.saturating_mul(2) {
                state.step = (state.step / 2).max(state.base_step);
            }
            state.current = next;
            state.current_since = Instant::now();
        }
        let taken = (out.len() - before) as u64;
        state.rate_window_count += taken;
        let window = state.rate_window_start.elapsed().as_secs_f64();
        if window >= 1.0 {
            let measured = state.rate_window_count as f64 / window;
            state.rate_per_sec =
                if state.rate_per_sec == 0.0 { measured } else { 0.5 * state.rate_per_sec + 0.5 * measured };
            state.rate_window_start = Instant::now();
            state.rate_window_count = 0;
        }
        let done = out.len() == want;
        if !done && !state.fetching && state.failed.is_some() {
            // Both buffers are empty and the last fetch failed: say so (once), rather
            // than fetching in a loop.
            return Take { done, prefetch: false, failed: state.failed.take() };
        }
        let used = state.current.len - state.current.remaining();
        let prefetch =
            state.next.is_none() && !state.fetching && used.saturating_mul(10) >= state.current.len;
        if prefetch {
            state.fetching = true;
            state.failed = None;
        }
        Take { done, prefetch, failed: None }
    }

    /// The end of a fetch: the next segment, or the error a waiting request reports.
    pub fn refill(&self, result: IdResult<(Segment, u64)>) {
        {
            let mut state = self.state.lock();
            state.fetching = false;
            match result {
                Ok((segment, base_step)) => {
                    debug_assert!(segment.next >= state.current.end, "segments of one node only grow");
                    state.base_step = base_step;
                    state.step = state.step.max(base_step);
                    state.next = Some(segment);
                    state.failed = None;
                }
                Err(error) => state.failed = Some(error),
            }
        }
        self.refilled.notify_waiters();
    }

    pub fn status(&self) -> BufferStatus {
        let state = self.state.lock();
        let remaining = state.current.remaining() + state.next.map_or(0, |n| n.remaining());
        BufferStatus {
            remaining,
            current_step: state.step,
            next_segment_ready: state.next.is_some(),
            rate_per_sec: state.rate_per_sec,
            seconds_left: (state.rate_per_sec > 0.0).then(|| remaining as f64 / state.rate_per_sec),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_status_says_how_long_the_buffers_last_at_the_measured_rate() {
        let buffer = TagBuffer::new("public", "t", (Segment::new(1, 10_001), 10_000));
        let mut out = Vec::new();
        let take = buffer.take(&mut out, 500, 1_000_000, 60_000);
        assert!(take.done && !take.prefetch, "under 10% used");
        assert_eq!(buffer.status().seconds_left, None, "no rate measured yet");
        tokio::time::advance(Duration::from_secs(1)).await;
        let take = buffer.take(&mut out, 1_000, 1_000_000, 60_000);
        assert!(take.done && take.prefetch, "10% used: fetch the next segment");
        buffer.refill(Ok((Segment::new(20_001, 30_001), 10_000)));
        let status = buffer.status();
        assert!((status.rate_per_sec - 1_000.0).abs() < 1.0, "{status:?}");
        assert_eq!(status.remaining, 9_000 + 10_000);
        assert!((status.seconds_left.unwrap() - 19.0).abs() < 0.1, "{status:?}");
        // The next take runs into the second segment, strictly increasing.
        let mut more = Vec::new();
        assert!(buffer.take(&mut more, 10_000, 1_000_000, 60_000).done);
        assert_eq!((more[8_999], more[9_000]), (10_000, 20_001));
    }
}
