//! Owner tokens: `sbo_{lease:016x}_{64 hex}`. The random part makes a token unguessable;
//! the lease part names the contender's key, so a release is one read and one
//! transaction. The store keeps only the token's SHA-256, next to the subject it is bound to.

use sb_store::LeaseId;
use sha2::{Digest, Sha256};

const PREFIX: &str = "sbo_";

pub(crate) fn generate(lease: LeaseId) -> String {
    let secret: [u8; 32] = rand::random();
    format!("{PREFIX}{:016x}_{}", lease.0, hex::encode(secret))
}

/// The lease an owner token names; `None` for anything that is not one.
pub(crate) fn lease_of(token: &str) -> Option<LeaseId> {
    let rest = token.strip_prefix(PREFIX)?;
    let (lease, secret) = rest.split_once('_')?;
    if lease.len() != 16 || secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    i64::from_str_radix(lease, 16).ok().filter(|id| *id > 0).map(LeaseId)
}

pub(crate) fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_lease_and_differ() {
        let a = generate(LeaseId(0x1234));
        let b = generate(LeaseId(0x1234));
        assert_ne!(a, b);
        assert_eq!(lease_of(&a), Some(LeaseId(0x1234)));
        assert_eq!(lease_of("sbo_0000000000001234_short"), None);
        assert_eq!(lease_of("garbage"), None);
        assert_ne!(digest(&a), digest(&b));
    }
}
