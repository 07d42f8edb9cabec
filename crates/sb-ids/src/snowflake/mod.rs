//! Snowflake IDs with leased worker ids, persisted high-water marks and a clock guard.
//!
//! - `layout`: the bits of an ID, and decoding.
//! - `generator`: the lock-free hot path.
//! - `workers`: the store recipes (take a worker, renew its mark, release it).
//! - `service`: the slow path and the keeper task that tie them together.

mod generator;
mod layout;
mod service;
mod workers;

pub use layout::{
    DecodedId, Layout, DEFAULT_EPOCH_MS, MAX_WORKERS, SEQUENCES_PER_MS, SEQUENCE_BITS, TIMESTAMP_BITS,
    WORKER_BITS,
};
pub use service::{SnowflakeOptions, SnowflakeService, SnowflakeStats, MAX_CLOCK_WAIT_MS};
pub use workers::{EPOCH_KEY, WATERMARKS_PREFIX, WORKERS_PREFIX};
