//! Bearer-token authentication: a token resolves to a [`Subject`].
//!
//! Tokens are long random strings, so the store keeps only their SHA-256
//! (`auth/tokens/{sha256-hex}`); argon2 is for passwords. Lookups read a view, never the
//! store. Users, roles and permissions (the access-control issue) slot in behind
//! [`Subject`] without changing the middleware.

use std::sync::Arc;

use sb_store::codec::StoredValue;
use sb_store::view::DecodedMap;
use sb_store::View;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where token hashes live.
pub const TOKENS_PREFIX: &str = "auth/tokens/";
/// Written once, with the first admin token, so bootstrap happens once per store.
pub const BOOTSTRAP_KEY: &str = "auth/bootstrap";
/// Shorter tokens are refused (for example in `SWITCHBOARD_ADMIN_TOKEN`).
pub const MIN_TOKEN_CHARS: usize = 32;

/// What the store keeps for a token: never the token itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Who the token acts as.
    pub subject: String,
    pub roles: Vec<String>,
    pub created_at_ms: u64,
    pub description: String,
}

impl StoredValue for TokenRecord {
    const KIND: &'static str = "token";
    const FORMAT_VERSION: u32 = 1;
}

/// The marker that the store has been bootstrapped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapRecord {
    pub node: String,
    pub created_at_ms: u64,
}

impl StoredValue for BootstrapRecord {
    const KIND: &'static str = "bootstrap";
    const FORMAT_VERSION: u32 = 1;
}

/// The common name of the client certificate a TLS connection presented (verified against
/// `--tls-client-ca`), attached to each of its requests by the listener. A request with no
/// token acts as this name (a service account); a token, when sent, takes precedence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCertSubject(pub Arc<str>);

/// Who a request acts as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    pub name: String,
    pub roles: Arc<[String]>,
}

pub type TokenView = View<DecodedMap<TokenRecord>>;

/// The store key of a token: its SHA-256 in hex under [`TOKENS_PREFIX`].
pub fn token_key(token: &str) -> String {
    String::from_utf8_lossy(&token_key_bytes(token)).into_owned()
}

/// The store key of a token, built without per-character formatting: it runs on every
/// authenticated request.
fn token_key_bytes(token: &str) -> Vec<u8> {
    let mut hex_digest = [0u8; 64];
    // 32 digest bytes always fill 64 hex characters, so this cannot fail.
    let _ = hex::encode_to_slice(Sha256::digest(token.as_bytes()), &mut hex_digest);
    let mut key = Vec::with_capacity(TOKENS_PREFIX.len() + hex_digest.len());
    key.extend_from_slice(TOKENS_PREFIX.as_bytes());
    key.extend_from_slice(&hex_digest);
    key
}

/// A fresh admin token: 32 random bytes, hex, with a recognisable prefix.
pub fn generate_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("sbt_{}", hex::encode(bytes))
}

/// Resolves a bearer token through the token view.
pub fn resolve(tokens: &TokenView, token: &str) -> Option<Subject> {
    let snapshot = tokens.snapshot();
    let entry = snapshot.entries.get(&token_key_bytes(token))?;
    Some(Subject { name: entry.value.subject.clone(), roles: entry.value.roles.clone().into() })
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(header: Option<&axum::http::HeaderValue>) -> Option<&str> {
    let value = header?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_long_and_distinct() {
        let (a, b) = (generate_token(), generate_token());
        assert!(a.len() >= MIN_TOKEN_CHARS && a != b);
        assert_ne!(token_key(&a), token_key(&b));
        assert!(!token_key(&a).contains(&a), "the key never contains the token");
    }

    #[test]
    fn bearer_header_is_parsed() {
        let value = axum::http::HeaderValue::from_static("Bearer abc");
        assert_eq!(bearer(Some(&value)), Some("abc"));
        let value = axum::http::HeaderValue::from_static("Basic abc");
        assert_eq!(bearer(Some(&value)), None);
        assert_eq!(bearer(None), None);
    }
}
