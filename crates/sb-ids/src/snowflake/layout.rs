//! The bit layout: 1 sign bit (always 0), 41 bits of milliseconds since the epoch, 10
//! worker bits, 12 sequence bits. One worker issues at most 4,096 IDs per millisecond.

use serde::Serialize;

use crate::error::{IdError, IdResult};

pub const TIMESTAMP_BITS: u32 = 41;
pub const WORKER_BITS: u32 = 10;
pub const SEQUENCE_BITS: u32 = 12;
/// Worker ids are `0..MAX_WORKERS`.
pub const MAX_WORKERS: u16 = 1 << WORKER_BITS;
/// IDs one worker can issue in one millisecond.
pub const SEQUENCES_PER_MS: u64 = 1 << SEQUENCE_BITS;
pub const MAX_TIMESTAMP: u64 = (1 << TIMESTAMP_BITS) - 1;
/// 2024-01-01T00:00:00Z: 41 bits of milliseconds last until 2093.
pub const DEFAULT_EPOCH_MS: u64 = 1_704_067_200_000;

/// The layout with its epoch (Unix milliseconds). Every node of a fleet must use the same
/// epoch; the service records it in the store and refuses to start with another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub epoch_ms: u64,
}

/// What an ID says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DecodedId {
    /// The ID as a decimal string (JavaScript loses precision above 2^53).
    pub id: String,
    /// When it was issued, in Unix milliseconds.
    pub timestamp_ms: u64,
    /// Milliseconds since the epoch, as stored in the ID.
    pub elapsed_ms: u64,
    pub epoch_ms: u64,
    pub worker: u16,
    pub sequence: u16,
}

impl Default for Layout {
    fn default() -> Self {
        Layout { epoch_ms: DEFAULT_EPOCH_MS }
    }
}

impl Layout {
    #[inline]
    pub fn compose(elapsed_ms: u64, worker: u16, sequence: u64) -> u64 {
        debug_assert!(elapsed_ms <= MAX_TIMESTAMP && worker < MAX_WORKERS && sequence < SEQUENCES_PER_MS);
        (elapsed_ms << (WORKER_BITS + SEQUENCE_BITS)) | (u64::from(worker) << SEQUENCE_BITS) | sequence
    }

    pub fn decode(&self, id: u64) -> DecodedId {
        let elapsed_ms = id >> (WORKER_BITS + SEQUENCE_BITS);
        DecodedId {
            id: id.to_string(),
            timestamp_ms: self.epoch_ms + elapsed_ms,
            elapsed_ms,
            epoch_ms: self.epoch_ms,
            worker: ((id >> SEQUENCE_BITS) & u64::from(MAX_WORKERS - 1)) as u16,
            sequence: (id & (SEQUENCES_PER_MS - 1)) as u16,
        }
    }

    /// Parses and decodes an ID as a client sent it (a decimal string).
    pub fn decode_str(&self, text: &str) -> IdResult<DecodedId> {
        let bad = |why: &str| IdError::invalid("id", format!("id {text:?} is not a Snowflake ID: {why}"));
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("expected a decimal number from 0 to 9223372036854775807"));
        }
        let id: u64 =
            text.parse().map_err(|_| bad("it is over 9223372036854775807 (the sign bit is always 0)"))?;
        if id > i64::MAX as u64 {
            return Err(bad("it is over 9223372036854775807 (the sign bit is always 0)"));
        }
        Ok(self.decode(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compose_and_decode_roundtrip() {
        let layout = Layout::default();
        let id = Layout::compose(123_456, 1023, 4095);
        let decoded = layout.decode(id);
        assert_eq!((decoded.elapsed_ms, decoded.worker, decoded.sequence), (123_456, 1023, 4095));
        assert_eq!(decoded.timestamp_ms, DEFAULT_EPOCH_MS + 123_456);
        assert!(Layout::compose(MAX_TIMESTAMP, 1023, 4095) <= i64::MAX as u64);
    }

    #[test]
    fn malformed_ids_are_refused_with_a_reason() {
        let layout = Layout::default();
        for bad in ["", "-1", "abc", "12a", "9223372036854775808", "99999999999999999999999"] {
            let err = layout.decode_str(bad).unwrap_err().to_string();
            assert!(err.contains("not a Snowflake ID"), "{bad}: {err}");
        }
        assert_eq!(layout.decode_str("4097").unwrap().worker, 1);
    }
}
