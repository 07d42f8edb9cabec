//! Access control: users (argon2id passwords), service accounts, API and session tokens,
//! roles and role bindings, namespaces as resources, login backoff, and the one policy
//! check ([`authorize`]).
//!
//! Architecture invariant: this crate sees the store only through `sb_store`'s port and
//! views. It knows no HTTP framework, no redb and no etcd-client; the protocol layers
//! (`sb-api`) translate requests into (subject, action, resource) and ask it.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod bootstrap;
mod error;
pub mod model;
pub mod password;
mod policy;
mod service;
mod state;
pub mod tokens;

pub use backoff::{BackoffEntry, BackoffOptions, LoginBackoff};
pub use error::{AuthError, AuthResult};
pub use model::{
    Action, Binding, Kind, Permission, PrincipalKind, PrincipalRef, Resource, DEFAULT_NAMESPACE,
};
pub use policy::{authorize, builtin_allows, is_global_admin, Subject, BUILTIN_ROLES};
pub use service::{now_ms, AuthOptions, AuthService, MintedToken, Session};
pub use state::AuthState;

#[cfg(test)]
mod tests;
