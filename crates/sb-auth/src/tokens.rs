//! API and session tokens: `sbt_` and 64 random hex digits. The store keeps only the
//! SHA-256; the token's id is the first 16 hex digits of that digest, so a presented token
//! finds its record with one lookup in the view, and the whole digest is then compared.

use sha2::{Digest, Sha256};

/// Shorter tokens are refused (for example in `SWITCHBOARD_ADMIN_TOKEN`).
pub const MIN_TOKEN_CHARS: usize = 32;
/// Longer presented tokens are not even hashed.
pub const MAX_TOKEN_CHARS: usize = 512;
pub const TOKEN_ID_CHARS: usize = 16;

/// A fresh token: 32 random bytes, hex, with a recognisable prefix.
pub fn generate_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("sbt_{}", hex::encode(bytes))
}

/// A random id for a principal's `uid`.
pub fn generate_uid() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

/// The token's id and the hex SHA-256 of the whole token.
pub fn token_id_and_digest(token: &str) -> (String, String) {
    let digest = hex::encode(Sha256::digest(token.as_bytes()));
    (digest[..TOKEN_ID_CHARS].to_owned(), digest)
}

/// Compares two digests in time independent of where they differ.
pub fn digests_equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_distinct_and_never_their_own_key() {
        let (a, b) = (generate_token(), generate_token());
        assert!(a.len() >= MIN_TOKEN_CHARS && a != b);
        let (id, digest) = token_id_and_digest(&a);
        assert_eq!(id.len(), TOKEN_ID_CHARS);
        assert!(digest.starts_with(&id) && !digest.contains(&a[4..]));
        assert!(digests_equal(&digest, &digest.clone()));
        assert!(!digests_equal(&digest, &token_id_and_digest(&b).1));
    }
}
