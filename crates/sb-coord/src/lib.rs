//! Coordination recipes over the store port: distributed locks with fencing tokens, and
//! leader elections. Both are one recipe (etcd's `concurrency` package), in [`queue`]:
//!
//! - every contender puts a key `{locks|elections}/{ns}/{name}/{lease}` on a lease of its
//!   own; the key with the **lowest create revision** holds;
//! - each waiter watches **only its predecessor** (the next lower create revision), so a
//!   release wakes one waiter, not the herd. The enqueue transaction's read already holds
//!   every key that can ever be ahead of it (later keys have higher create revisions), so
//!   a waiter reacts to its predecessor's delete event directly, with no read or poll;
//! - after every wait the waiter **re-checks its lease** with a keep-alive before it
//!   claims anything: a lease that expired during the wait took the key with it, and the
//!   waiter holds nothing (the Jepsen etcd finding). A live lease still has the key: only
//!   the owner token's release deletes it otherwise. An acquire that did not wait has
//!   nothing to re-check;
//! - the **fencing token** is the holder key's create revision: strictly increasing per
//!   name, and never reused, because revisions never are;
//! - the **owner token** is a random string bound to the caller's subject, naming the
//!   key's lease and create revision; the store keeps only its SHA-256. Release, renew,
//!   proclaim and the guarded write compare on the key's create revision **and** its value
//!   (which carries the owner hash) in one transaction, so a retried or late release never
//!   frees a newer holder (etcd-io/etcd#22082). A lock's release needs no read first: its
//!   value follows from the subject and the token;
//! - leases come from a small pool (granted ahead, or handed back by a release on this
//!   node), so an uncontended acquire + release is two transactions and nothing else.
//!
//! Round trips (pinned by `tests/roundtrips.rs` on both adapters): an uncontended acquire
//! is one transaction (put the key, read the queue), a release one transaction (compare,
//! delete); a handoff is the release's transaction, the delete event, and the waiter's
//! keep-alive.
//!
//! Architecture invariant: this crate sees only the `sb_store` port. It knows nothing
//! about redb, etcd-client or HTTP; `sb-api` translates its calls and errors.
#![forbid(unsafe_code)]

mod error;
mod lease_pool;
mod metrics;
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
