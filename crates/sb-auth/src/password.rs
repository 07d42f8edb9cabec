//! Password hashing: argon2id with the crate's defaults (19 MiB, 2 passes, 1 lane). A hash
//! costs about 19 MiB and tens of milliseconds, so it runs on the blocking pool behind a
//! semaphore: at most `max_concurrent` hashes at a time, whatever the login rate.

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHash, PasswordHasher as _, PasswordVerifier};
use tokio::sync::Semaphore;

use crate::error::{AuthError, AuthResult};

/// The shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// The longest password accepted (argon2 takes any length; a bound keeps requests small).
pub const MAX_PASSWORD_CHARS: usize = 256;

/// Passwords that are refused whatever their length (defaults of well-known products and
/// the obvious ones).
const COMMON: &[&str] =
    &["password", "nacos", "admin", "switchboard", "123456", "qwerty", "letmein", "secret"];

#[derive(Clone)]
pub struct PasswordHasher {
    slots: Arc<Semaphore>,
    wait: Duration,
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
            let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
                .map_err(|e| AuthError::invalid("password", format!("the salt cannot be encoded: {e}")))?;
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|hash| hash.to_string())
                .map_err(|e| AuthError::invalid("password", format!("the password cannot be hashed: {e}")))
        })
        .await?
    }

    /// Whether `password` matches the PHC hash. `None` (an unknown user) still costs one
    /// hash, so answer times do not tell which user names exist.
    pub async fn verify(&self, password: &str, phc_opt: Option<String>) -> AuthResult<bool> {
        let password = password.to_owned();
        self.run(move || match phc_opt.as_deref().map(PasswordHash::new) {
            Some(Ok(parsed)) => Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok(),
            Some(Err(_)) => false,
            None => {
                let salt = SaltString::from_b64("c3dpdGNoYm9hcmRkdW1teQ").ok();
                if let Some(salt) = salt {
                    let _ = Argon2::default().hash_password(password.as_bytes(), &salt);
                }
                false
            }
        })
        .await
    }
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
