//! Password hashing: argon2id with the crate's defaults (19 MiB, 2 passes, 1 lane). A hash
//! costs about 19 MiB and tens of milliseconds, so it runs on the blocking pool behind a
//! semaphore: at most `max_concurrent` hashes at a time, whatever the login rate. Each hash
//! gets its memory as a mapping of its own, returned to the system when it ends
//! ([`hashing_memory`]), so hashing memory is resident only while hashes run: an idle node
//! keeps none of it (a pool of reused blocks kept 19 MiB resident for good after the
//! bootstrap's one hash, and fresh blocks below malloc's mmap threshold stayed behind in
//! malloc arenas).

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{Output, ParamsString, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};
use tokio::sync::Semaphore;

use crate::error::{AuthError, AuthResult};

/// The shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// The longest password accepted (argon2 takes any length; a bound keeps requests small).
pub const MAX_PASSWORD_CHARS: usize = 256;
/// Stored hashes asking for more memory than this (KiB) are refused, not computed.
const MAX_M_COST_KIB: u32 = 256 * 1024;

/// Passwords that are refused whatever their length (defaults of well-known products and
/// the obvious ones).
const COMMON: &[&str] =
    &["password", "nacos", "admin", "switchboard", "123456", "qwerty", "letmein", "secret"];

#[derive(Clone)]
pub struct PasswordHasher {
    slots: Arc<Semaphore>,
    wait: Duration,
}

/// glibc's malloc serves an allocation above its mmap threshold with a mapping of its own
/// and unmaps it when it is freed. The threshold moves up after such a free, but never past
/// 32 MiB on 64-bit systems (`DEFAULT_MMAP_THRESHOLD_MAX`, see mallopt(3)). Reserving more
/// than that makes a hash's memory its own mapping every time, whatever hashed before.
const OWN_MAPPING_BYTES: usize = 33 << 20;

/// `blocks` zeroed argon2 blocks in a reservation of at least [`OWN_MAPPING_BYTES`]: only
/// the pages of the blocks used become resident, and every one goes back to the system
/// when the memory is dropped.
fn hashing_memory(blocks: usize) -> Vec<Block> {
    let capacity = blocks.max(OWN_MAPPING_BYTES / std::mem::size_of::<Block>() + 1);
    let mut memory = Vec::with_capacity(capacity);
    memory.resize(blocks, Block::new());
    memory
}

/// Computes one argon2 output into `out`, with memory of its own for this hash.
fn compute(
    algorithm: Algorithm,
    version: Version,
    params: &Params,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<(), argon2::Error> {
    let mut memory = hashing_memory(params.block_count());
    Argon2::new(algorithm, version, params.clone()).hash_password_into_with_memory(
        password,
        salt,
        out,
        &mut memory,
    )
}

impl PasswordHasher {
    /// At most `max_concurrent` hashes at once; a caller waits at most `wait` for a slot.
    pub fn new(max_concurrent: usize, wait: Duration) -> Self {
        PasswordHasher { slots: Arc::new(Semaphore::new(max_concurrent.max(1))), wait }
    }

    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> AuthResult<T> {
        let permit = tokio::time::timeout(self.wait, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| AuthError::Busy)?
            .map_err(|_| AuthError::Busy)?;
        let result = tokio::task::spawn_blocking(move || {
            let result = work();
            drop(permit);
            result
        })
        .await
        .map_err(|_| AuthError::Busy)?;
        Ok(result)
    }

    /// A new argon2id hash (PHC string) with a random salt.
    pub async fn hash(&self, password: &str) -> AuthResult<String> {
        let password = password.to_owned();
        self.run(move || {
            let invalid = |e: &dyn std::fmt::Display| {
                AuthError::invalid("password", format!("the password cannot be hashed: {e}"))
            };
            let salt_bytes: [u8; 16] = rand::random();
            let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| invalid(&e))?;
            let params = Params::default();
            let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
            compute(Algorithm::Argon2id, Version::V0x13, &params, password.as_bytes(), &salt_bytes, &mut out)
                .map_err(|e| invalid(&e))?;
            let hash = PasswordHash {
                algorithm: Algorithm::Argon2id.ident(),
                version: Some(Version::V0x13.into()),
                params: ParamsString::try_from(&params).map_err(|e| invalid(&e))?,
                salt: Some(salt.as_salt()),
                hash: Some(Output::new(&out).map_err(|e| invalid(&e))?),
            };
            Ok(hash.to_string())
        })
        .await?
    }

    /// Whether `password` matches the PHC hash. `None` (an unknown user) still costs one
    /// hash, so answer times do not tell which user names exist.
    pub async fn verify(&self, password: &str, phc_opt: Option<String>) -> AuthResult<bool> {
        let password = password.to_owned();
        self.run(move || {
            let Some(phc) = phc_opt else {
                let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
                let salt = *b"switchboard-dummy-salt";
                let params = Params::default();
                let _ = compute(
                    Algorithm::Argon2id,
                    Version::V0x13,
                    &params,
                    password.as_bytes(),
                    &salt,
                    &mut out,
                );
                return false;
            };
            verify_phc(&phc, password.as_bytes()).unwrap_or(false)
        })
        .await
    }
}

/// Recomputes a stored PHC hash with its own algorithm, version, parameters and salt, and
/// compares in constant time.
fn verify_phc(phc: &str, password: &[u8]) -> Option<bool> {
    let hash = PasswordHash::new(phc).ok()?;
    let algorithm = Algorithm::try_from(hash.algorithm).ok()?;
    let version = hash.version.map_or(Some(Version::V0x13), |v| Version::try_from(v).ok())?;
    let params = Params::try_from(&hash).ok()?;
    if params.m_cost() > MAX_M_COST_KIB {
        return None;
    }
    let expected = hash.hash?;
    let mut salt_buf = [0u8; 64];
    let salt = hash.salt?.decode_b64(&mut salt_buf).ok()?;
    let mut out = vec![0u8; expected.len()];
    compute(algorithm, version, &params, password, salt, &mut out).ok()?;
    // `Output`'s equality is constant-time.
    Some(Output::new(&out).ok()? == expected)
}

/// Refuses weak passwords: shorter than [`MIN_PASSWORD_CHARS`], fewer than 6 distinct
/// characters, or containing a well-known default. The message never repeats the password.
pub fn check_password_strength(field: &'static str, password: &str) -> AuthResult<()> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Err(AuthError::invalid(
            field,
            format!("{field} is {chars} characters, at least {MIN_PASSWORD_CHARS} are required"),
        ));
    }
    if chars > MAX_PASSWORD_CHARS {
        return Err(AuthError::invalid(
            field,
            format!("{field} is {chars} characters, limit is {MAX_PASSWORD_CHARS}"),
        ));
    }
    let distinct: std::collections::HashSet<char> = password.chars().collect();
    if distinct.len() < 6 {
        return Err(AuthError::invalid(field, format!("{field} has fewer than 6 distinct characters")));
    }
    let lower = password.to_ascii_lowercase();
    if let Some(common) = COMMON.iter().find(|c| lower.contains(*c)) {
        return Err(AuthError::invalid(field, format!("{field} contains the well-known word {common:?}")));
    }
    Ok(())
}

/// A random password for the bootstrap admin: 24 characters from an unambiguous alphabet.
pub fn generate_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..24).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process's anonymous resident memory (nextest runs each test in its own).
    fn rss_anon_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[tokio::test]
    async fn hashing_memory_goes_back_to_the_system_after_each_hash() {
        let hasher = PasswordHasher::new(2, Duration::from_secs(30));
        let before = rss_anon_kib();
        for _ in 0..3 {
            let hash = hasher.hash("correct horse battery").await.unwrap();
            assert!(hasher.verify("correct horse battery", Some(hash)).await.unwrap());
        }
        let after = rss_anon_kib();
        // One hash's 19 MiB kept would show; allow for the runtime's own growth.
        assert!(after < before + 8 * 1024, "RssAnon grew from {before} KiB to {after} KiB");
    }

    #[tokio::test]
    async fn hashes_verify_and_wrong_passwords_do_not() {
        let hasher = PasswordHasher::new(2, Duration::from_secs(30));
        let hash = hasher.hash("correct horse battery").await.unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(!hash.contains("correct horse"));
        assert!(hasher.verify("correct horse battery", Some(hash.clone())).await.unwrap());
        assert!(!hasher.verify("wrong horse battery", Some(hash)).await.unwrap());
        assert!(!hasher.verify("anything", None).await.unwrap());
        // A hash made by the crate's own PasswordHasher verifies too (the PHC format).
        use argon2::PasswordHasher as _;
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let standard = Argon2::default().hash_password(b"correct horse battery", &salt).unwrap().to_string();
        assert!(hasher.verify("correct horse battery", Some(standard)).await.unwrap());
    }

    #[test]
    fn weak_passwords_are_refused() {
        assert!(check_password_strength("password", "short").is_err());
        assert!(check_password_strength("password", "aaaaaaaaaaaaaaaa").is_err());
        assert!(check_password_strength("password", "MyNacosIsGreat1").is_err());
        assert!(check_password_strength("password", &generate_password()).is_ok());
        let error = check_password_strength("password", "tiny").unwrap_err().to_string();
        assert!(!error.contains("tiny"), "the message never repeats the password: {error}");
    }
}
