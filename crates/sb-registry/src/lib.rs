//! The service registry: namespaces → groups → services → clusters → instances, with
//! ephemeral instances kept alive by heartbeats, persistent ones kept until deregistered,
//! Nacos 1.x's protection threshold, and subscriptions, all as a recipe over the store
//! port and a watch-fed view.
//!
//! Architecture invariant: this crate knows nothing about redb, etcd or HTTP. It sees the
//! store only through `sb_store`'s port; the native API and the Nacos compat layer are
//! thin translators over [`Registry`], and no rule of the registry lives in them.
#![forbid(unsafe_code)]

mod error;
mod heartbeat;
mod liveness;
pub mod model;
pub mod names;
pub mod query;
mod registry;
pub mod state;

pub use error::{RegistryError, RegistryResult};
pub use heartbeat::HeartbeatTable;
pub use model::{BeatTimeouts, InstanceRecord, InstanceSpec, Metadata, ServiceRecord};
pub use names::{InstanceAddr, ServiceId, DEFAULT_CLUSTER, DEFAULT_GROUP, DEFAULT_NAMESPACE};
pub use query::{InstanceQuery, SelectedInstance, Selection};
pub use registry::{InstancePatch, Registry, RegistryOptions, RegistryView};
pub use state::{InstanceEntry, RegistryState, ServiceEntry};

#[cfg(test)]
mod tests;
