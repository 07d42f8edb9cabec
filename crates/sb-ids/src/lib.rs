//! Unique IDs, as recipes over the store port.
//!
//! - [`snowflake`]: 64-bit time-ordered IDs (41 bits of milliseconds since an epoch, 10
//!   worker bits, 12 sequence bits). Worker ids are *leased* (`ids/workers/{n}`), so a dead
//!   node's id is reclaimed; a per-worker high-water mark (`ids/watermarks/{n}`, not leased)
//!   is persisted ahead of use, so neither a restart, a takeover nor a clock step backwards
//!   can repeat an ID. The hot path is lock-free.
//! - [`segment`]: Leaf's segment mode: per namespace and tag, ranges `[max, max+step)` are
//!   allocated with a compare-and-swap transaction and served from two in-memory buffers,
//!   so IDs keep flowing while the store is briefly unreachable.
//!
//! Architecture invariant: this crate sees only the `sb_store` port. It knows nothing about
//! redb, etcd-client or HTTP; the protocol layer (`sb-api`) is a thin translator over it.
#![forbid(unsafe_code)]

pub mod clock;
mod error;
mod names;
pub mod segment;
pub mod snowflake;
#[cfg(test)]
mod test_store;

pub use clock::{OffsetClock, SystemClock, WallClock};
pub use error::{IdError, IdResult};
pub use names::{check_count, check_name, DEFAULT_NAMESPACE, MAX_COUNT, MAX_NAME_LEN};
pub use segment::{SegmentOptions, SegmentService, SegmentStats, TagStatus};
pub use snowflake::{DecodedId, Layout, SnowflakeOptions, SnowflakeService, SnowflakeStats};

/// Where every key of this crate lives, below the root prefix.
pub const IDS_PREFIX: &str = "ids/";
