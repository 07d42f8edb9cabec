//! Owner tokens: `sbo_{lease:016x}_{create revision:016x}_{64 hex}`. The random part makes a
//! token unguessable; the lease part names the contender's key and the create revision
//! pins its incarnation, so a release is one transaction that compares on the key's create
//! revision and its value (which carries the token's hash), with no read before it.
//!
//! The store keeps only the SHA-256 of the token's identity, `sbo_{lease}_{64 hex}` (the
//! token without its revision, which is only known after the key is written), next to the
//! subject it is bound to. Tokens of the earlier form `sbo_{lease}_{64 hex}` (issued before
//! the revision was added) are still accepted: their release reads the key first.

use sb_store::{LeaseId, Revision};
use sha2::{Digest, Sha256};

const PREFIX: &str = "sbo_";

/// The random part of a token, drawn before its key is written.
#[derive(Clone, Debug)]
pub(crate) struct Secret {
    lease: LeaseId,
    hex: String,
}

impl Secret {
    pub fn new(lease: LeaseId) -> Self {
        let secret: [u8; 32] = rand::random();
        Secret { lease, hex: hex::encode(secret) }
    }

    /// The hash the store keeps.
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(self.identity().as_bytes()))
    }

    fn identity(&self) -> String {
        format!("{PREFIX}{:016x}_{}", self.lease.0, self.hex)
    }

    /// The token the caller gets, once the key's create revision is known.
    pub fn token(&self, create_revision: Revision) -> String {
        format!("{PREFIX}{:016x}_{:016x}_{}", self.lease.0, create_revision, self.hex)
    }
}

/// What an owner token names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Parsed {
    pub lease: LeaseId,
    /// The key's create revision (the fencing token); `None` for the earlier token form.
    pub create_revision: Option<Revision>,
}

fn hex_i64(field: &str) -> Option<i64> {
    if field.len() != 16 {
        return None;
    }
    i64::from_str_radix(field, 16).ok().filter(|id| *id > 0)
}

/// What a token names, and the identity its hash is of; `None` for anything that is not
/// an owner token.
fn split(token: &str) -> Option<(Parsed, String)> {
    let rest = token.strip_prefix(PREFIX)?;
    let parts: Vec<&str> = rest.split('_').collect();
    let (lease, revision, secret) = match parts.as_slice() {
        [lease, secret] => (*lease, None, *secret),
        [lease, revision, secret] => (*lease, Some(hex_i64(revision)?), *secret),
        _ => return None,
    };
    if secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let lease = LeaseId(hex_i64(lease)?);
    let identity = format!("{PREFIX}{:016x}_{secret}", lease.0);
    Some((Parsed { lease, create_revision: revision }, identity))
}

pub(crate) fn parse(token: &str) -> Option<Parsed> {
    split(token).map(|(parsed, _)| parsed)
}

/// The hash stored for `token`; anything that is not a token hashes as given (and so
/// matches no key).
pub(crate) fn digest(token: &str) -> String {
    let identity = split(token).map_or_else(|| token.to_owned(), |(_, identity)| identity);
    hex::encode(Sha256::digest(identity.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_lease_and_revision_and_differ() {
        let (a, b) = (Secret::new(LeaseId(0x1234)), Secret::new(LeaseId(0x1234)));
        let (token_a, token_b) = (a.token(77), b.token(77));
        assert_ne!(token_a, token_b);
        assert_eq!(parse(&token_a), Some(Parsed { lease: LeaseId(0x1234), create_revision: Some(77) }));
        assert_eq!(digest(&token_a), a.digest());
        assert_ne!(digest(&token_a), digest(&token_b));
        // The earlier form (no revision) hashes the same identity.
        let earlier = format!("sbo_{:016x}_{}", 0x1234, &token_a[token_a.len() - 64..]);
        assert_eq!(parse(&earlier), Some(Parsed { lease: LeaseId(0x1234), create_revision: None }));
        assert_eq!(digest(&earlier), a.digest());
        // A token whose revision was changed hashes the same, but names another incarnation.
        assert_eq!(parse(&a.token(78)).unwrap().create_revision, Some(78));
        assert_eq!(parse("sbo_0000000000001234_short"), None);
        assert_eq!(parse("sbo_0000000000001234_0000000000000001_0000000000000002_x"), None);
        assert_eq!(parse("garbage"), None);
    }
}
