//! The state layer's port: a revisioned key-value store with leases and watches, with
//! etcd v3 semantics, and what every node builds on it: watch-fed views, node membership,
//! the stored-value format, and backup/restore.
//!
//! Architecture invariant: this crate knows no storage engine (redb, etcd-client) and no
//! protocol (HTTP). Adapters implement [`Store`]; domain crates see only this crate.
#![forbid(unsafe_code)]

pub mod backup;
pub mod codec;
mod error;
mod limits;
pub mod membership;
mod node_id;
mod paging;
mod store;
mod types;
pub mod view;
mod watch;

pub use error::{StoreError, StoreResult};
pub use limits::{
    check_key, granted_ttl, put_request_bytes, txn_request_bytes, Limits, ETCD_MAX_REQUEST_BYTES,
    ETCD_MAX_TXN_OPS, MAX_LEASE_TTL_SECS, MIN_LEASE_TTL_SECS,
};
pub use membership::{Membership, MembershipView, NodeRecord, NODES_PREFIX};
pub use node_id::{NodeId, NODE_ID_FILE};
pub use paging::{range_all, RangePager};
pub use store::{SharedStore, Store};
pub use types::*;
pub use view::{ChangeObserver, View, ViewChange, ViewError, ViewState};
pub use watch::WatchStream;

#[cfg(feature = "conformance")]
pub mod conformance;
