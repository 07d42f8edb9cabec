//! Coordination recipes over the store port: distributed locks with fencing tokens, and
//! leader elections. Both are one recipe (etcd's `concurrency` package), in [`queue`]:
//!
//! - every contender puts a key `{locks|elections}/{ns}/{name}/{lease}` on a lease of its
//!   own; the key with the **lowest create revision** holds;
//! - each waiter watches **only its predecessor** (the next lower create revision), so a
//!   release wakes one waiter, not the herd;
//! - after every wait the waiter **re-checks its lease** (a keep-alive and a read of its
//!   key) before it claims anything: a lease that expired during the wait means the key is
//!   gone and the waiter holds nothing (the Jepsen etcd finding);
//! - the **fencing token** is the holder key's create revision: strictly increasing per
//!   name, and never reused, because revisions never are;
//! - the **owner token** is a random string bound to the caller's subject; the store keeps
//!   only its SHA-256. Release, renew, proclaim and the guarded write compare on the key's
//!   create revision **and** its value (which carries the owner hash) in one transaction,
//!   so a retried or late release never frees a newer holder (etcd-io/etcd#22082).
//!
//! Architecture invariant: this crate sees only the `sb_store` port. It knows nothing
//! about redb, etcd-client or HTTP; `sb-api` translates its calls and errors.
#![forbid(unsafe_code)]

mod error;
mod lease_pool;
mod names;
mod owner;
mod queue;
mod service;

#[cfg(feature = "checker")]
pub mod checker;

pub use error::{CoordError, CoordResult};
pub use names::{QueueKind, QueueName, DEFAULT_NAMESPACE, ELECTIONS_PREFIX, LOCKS_PREFIX, MAX_NAME_CHARS};
pub use queue::{Grant, Holder, QueueStatus, Released};
pub use service::{Coord, CoordLimits, LeaderStream, MAX_TTL_SECS, MAX_VALUE_BYTES, MAX_WAIT_MS};
