//! Password hashing: argon2id with the crate's defaults (19 MiB, 2 passes, 1 lane). A hash
//! costs about 19 MiB and tens of milliseconds, so it runs on the blocking pool behind a
//! semaphore: at most `max_concurrent` hashes at a time, whatever the login rate. Each
//! running hash borrows one of at most `max_concurrent` reusable memory blocks, so the
//! hashing memory is allocated once and stays bounded (fresh 19 MiB allocations on ever
//! new blocking threads would each leave memory behind in a new malloc arena).

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{Output, ParamsString, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};
use parking_lot::Mutex;
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
    memory: Arc<Mutex<Vec<Vec<Block>>>>,
    wait: Duration,
}

/// Computes one argon2 output into `out` with a reused memory block.
fn compute(
    algorithm: Algorithm,
    version: Version,
    params: &Params,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
    memory: &mut Vec<Block>,
) -> Result<(), argon2::Error> {
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::new());
    }
    Argon2::new(algorithm, version, params.clone()).hash_password_into_with_memory(
        password,
        salt,
        out,
        &mut memory[..blocks],
    )
}

impl PasswordHasher {
    /// At most `max_concurrent` hashes at once; a caller waits at most `wait` for a slot.
    pub fn new(max_concurrent: usize, wait: Duration) -> Self {
        PasswordHasher {
            slots: Arc::new(Semaphore::new(max_concurrent.max(1))),
            memory: Arc::new(Mutex::new(Vec::new())),
            wait,
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    ) -> AuthResult<T> {
        let permit = tokio::time::timeout(self.wait, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| AuthError::Busy)?
            .map_err(|_| AuthError::Busy)?;
        let pool = self.memory.clone();
        let result = tokio::task::spawn_blocking(move || {
            // One block per permit at most: a permit holder always finds one or makes one.
            let mut memory = pool.lock().pop().unwrap_or_default();
            let result = work(&mut memory);
            pool.lock().push(memory);
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
        self.run(move |memory| {
            let invalid = |e: &dyn std::fmt::Display| {
                AuthError::invalid("password", format!("the password cannot be hashed: {e}"))
            };
            let salt_bytes: [u8; 16] = rand::random();
            let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| invalid(&e))?;
            let params = Params::default();
            let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
            compute(
                Algorithm::Argon2id,
                Version::V0x13,
                &params,
                password.as_bytes(),
                &salt_bytes,
                &mut out,
                memory,
            )
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
        self.run(move |memory| {
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
                    memory,
                );
                return false;
            };
            verify_phc(&phc, password.as_bytes(), memory).unwrap_or(false)
        })
        .await
    }
}

/// Recomputes a stored PHC hash with its own algorithm, version, parameters and salt, and
/// compares in constant time.
fn verify_phc(phc: &str, password: &[u8], memory: &mut Vec<Block>) -> Option<bool> {
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
    compute(algorithm, version, &params, password, salt, &mut out, memory).ok()?;
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
