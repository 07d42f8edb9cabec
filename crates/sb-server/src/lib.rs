//! The composition root of a Switchboard node: configuration (flags, `SWITCHBOARD_*`
//! variables, a TOML file), wiring (store, membership, views, the API) and lifecycle
//! (bootstrap, serve, graceful stop).
//!
//! This is the one crate that knows every adapter; everything it wires sees only ports.
#![forbid(unsafe_code)]

mod bootstrap;
mod config;
mod error;
mod ids;
pub mod logging;
mod node_metrics;
mod serve;
mod store_args;
pub mod tls;

pub use bootstrap::{ADMIN_TOKEN_ENV, ADMIN_TOKEN_FILE};
pub use config::{config_file_args, IdArgs, ServeArgs};
pub use error::{ServerError, ServerResult};
pub use serve::run;
pub use store_args::{OpenStore, StoreArgs, EMBEDDED_FILE};
