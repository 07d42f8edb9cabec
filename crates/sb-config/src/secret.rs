//! Secret configs: content encrypted at rest with AES-256-GCM under master keys that never
//! reach the store.
//!
//! - A sealed content is `sbenc1:{key id}:{base64(nonce ‖ ciphertext ‖ tag)}`; the associated
//!   data is the history key the content is stored under (namespace, group, data id and
//!   entry id), so a ciphertext moved to another entry does not open.
//! - No md5 of a secret's plaintext is stored. The stored md5 of a secret version is its
//!   *tag*: an HMAC of that history key under a key derived from the master key. Callers
//!   who may read secrets are compared against the md5 of the plaintext, computed in
//!   memory; the others against the md5 of the masked content, which carries the tag, so
//!   they learn that a secret changed and nothing about it.
//! - The key file holds every key still needed to read (`key {id} {base64 of 32 bytes}`
//!   lines) and names the one new secrets use (`active {id}`; else the last key). Rotation
//!   adds a key and makes it active; [`crate::ConfigService::reencrypt`] moves every entry
//!   to it in the background; the old key can then be retired.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::error::{ConfigError, ConfigResult};

/// The prefix of sealed content.
pub const SEALED_PREFIX: &str = "sbenc1:";
/// The flag that names the key file (in messages).
pub const MASTER_KEY_FLAG: &str = "--master-key-file";
const NONCE_BYTES: usize = 12;
const KEY_BYTES: usize = 32;
const MAX_KEY_ID_CHARS: usize = 32;

/// One master key: the cipher and the HMAC key derived from it.
struct MasterKey {
    cipher: Aes256Gcm,
    tag_key: [u8; 32],
    /// A value that identifies the key without revealing it, to check that every node has
    /// the same key under the same id.
    check: String,
}

/// The master keys a node holds.
pub struct Keyring {
    keys: BTreeMap<String, MasterKey>,
    active: String,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the keys themselves.
        f.debug_struct("Keyring")
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .finish()
    }
}

fn derive(label: &[u8], key: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(label);
    hasher.update(key);
    hasher.finalize().into()
}

fn bad_file(path: &Path, reason: impl fmt::Display) -> ConfigError {
    ConfigError::Keys(format!("{MASTER_KEY_FLAG} {}: {reason}", path.display()))
}

impl Keyring {
    /// A keyring of `(id, key)` pairs; `active` names the key new secrets use.
    pub fn new(keys: Vec<(String, [u8; KEY_BYTES])>, active: &str) -> ConfigResult<Keyring> {
        let mut ring = BTreeMap::new();
        for (id, key) in keys {
            if id.is_empty()
                || id.len() > MAX_KEY_ID_CHARS
                || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(ConfigError::Keys(format!(
                    "key id {id:?} must be 1 to {MAX_KEY_ID_CHARS} letters, digits, '-' or '_'"
                )));
            }
            let check = hex::encode(&derive(b"switchboard master key check\0", &key)[..16]);
            let master = MasterKey {
                cipher: Aes256Gcm::new(&key.into()),
                tag_key: derive(b"switchboard config md5 hmac\0", &key),
                check,
            };
            if ring.insert(id.clone(), master).is_some() {
                return Err(ConfigError::Keys(format!("key id {id:?} appears twice")));
            }
        }
        if !ring.contains_key(active) {
            return Err(ConfigError::Keys(format!("the active key {active:?} is not among the keys")));
        }
        Ok(Keyring { keys: ring, active: active.to_owned() })
    }

    /// Reads a key file: `key {id} {base64 of 32 bytes}` lines, an optional `active {id}`
    /// line (else the last key is active), `#` comments.
    pub fn load(path: &Path) -> ConfigResult<Keyring> {
        let text =
            std::fs::read_to_string(path).map_err(|e| bad_file(path, format!("cannot be read: {e}")))?;
        let mut keys = Vec::new();
        let mut active = None;
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields[..] {
                ["key", id, material] => {
                    let bytes = base64::engine::general_purpose::STANDARD.decode(material).map_err(|_| {
                        bad_file(path, format!("line {}: key {id:?} is not base64", number + 1))
                    })?;
                    let key: [u8; KEY_BYTES] = bytes.try_into().map_err(|_| {
                        bad_file(path, format!("line {}: key {id:?} is not {KEY_BYTES} bytes", number + 1))
                    })?;
                    keys.push((id.to_owned(), key));
                }
                ["active", id] => active = Some(id.to_owned()),
                _ => {
                    return Err(bad_file(
                        path,
                        format!("line {} is not `key <id> <base64>` or `active <id>`", number + 1),
                    ))
                }
            }
        }
        let Some(last) = keys.last().map(|(id, _)| id.clone()) else {
            return Err(bad_file(path, "it holds no key"));
        };
        let active = active.unwrap_or(last);
        Keyring::new(keys, &active).map_err(|e| bad_file(path, e))
    }

    /// Writes a new key file with one random key (mode 0600), for an embedded first start.
    pub fn generate(path: &Path) -> ConfigResult<Keyring> {
        let key: [u8; KEY_BYTES] = rand::random();
        let id = new_key_id();
        let text = format!(
            "# Switchboard master keys: `key <id> <base64 of 32 bytes>` lines, and `active <id>`.\n\
             # Keep this file secret and backed up: secret configs cannot be read without it.\n\
             key {id} {}\nactive {id}\n",
            base64::engine::general_purpose::STANDARD.encode(key)
        );
        write_private(path, text.as_bytes())
            .map_err(|e| bad_file(path, format!("cannot be written: {e}")))?;
        Keyring::new(vec![(id.clone(), key)], &id)
    }

    /// Adds a new random key to an existing key file and makes it the active one (rotation);
    /// the other keys stay, so what they sealed stays readable. Returns the new key's id.
    pub fn rotate_file(path: &Path) -> ConfigResult<String> {
        let current = Keyring::load(path)?;
        let text =
            std::fs::read_to_string(path).map_err(|e| bad_file(path, format!("cannot be read: {e}")))?;
        let mut id = new_key_id();
        while current.keys.contains_key(&id) {
            id = new_key_id();
        }
        let key: [u8; KEY_BYTES] = rand::random();
        let mut lines: Vec<&str> = text.lines().filter(|l| !l.trim_start().starts_with("active ")).collect();
        let added = format!("key {id} {}", base64::engine::general_purpose::STANDARD.encode(key));
        let active = format!("active {id}");
        lines.push(&added);
        lines.push(&active);
        let staged = path.with_extension("rotating");
        let _ = std::fs::remove_file(&staged);
        write_private(&staged, format!("{}\n", lines.join("\n")).as_bytes())
            .map_err(|e| bad_file(path, format!("cannot be written: {e}")))?;
        Keyring::load(&staged)?;
        std::fs::rename(&staged, path).map_err(|e| bad_file(path, format!("cannot be replaced: {e}")))?;
        Ok(id)
    }

    pub fn active(&self) -> &str {
        &self.active
    }

    /// The key ids and their check values (identify a key without revealing it).
    pub fn checks(&self) -> impl Iterator<Item = (&str, &str)> {
        self.keys.iter().map(|(id, key)| (id.as_str(), key.check.as_str()))
    }

    /// Encrypts `plaintext` under the active key, bound to `aad` (the history key).
    pub fn seal(&self, plaintext: &str, aad: &str) -> ConfigResult<String> {
        let key = &self.keys[&self.active];
        let nonce: [u8; NONCE_BYTES] = rand::random();
        let sealed = key
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext.as_bytes(), aad: aad.as_bytes() })
            .map_err(|_| ConfigError::Keys("encryption failed".into()))?;
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        Ok(format!(
            "{SEALED_PREFIX}{}:{}",
            self.active,
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ))
    }

    /// The key id a sealed content names.
    pub fn key_of(sealed: &str) -> Option<&str> {
        sealed.strip_prefix(SEALED_PREFIX)?.split_once(':').map(|(id, _)| id)
    }

    /// Decrypts sealed content stored under `aad`.
    pub fn open(&self, sealed: &str, aad: &str) -> ConfigResult<String> {
        let corrupt = || ConfigError::Corrupt(format!("the secret at {aad} is not sealed content"));
        let (id, body) =
            sealed.strip_prefix(SEALED_PREFIX).and_then(|s| s.split_once(':')).ok_or_else(corrupt)?;
        let key = self.keys.get(id).ok_or_else(|| {
            ConfigError::SecretsUnavailable(format!(
                "the secret at {aad} is sealed with key {id:?}, which is not in {MASTER_KEY_FLAG}"
            ))
        })?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(body).map_err(|_| corrupt())?;
        if bytes.len() < NONCE_BYTES {
            return Err(corrupt());
        }
        let (nonce, sealed) = bytes.split_at(NONCE_BYTES);
        let plain = key
            .cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad: aad.as_bytes() })
            .map_err(|_| {
                ConfigError::Corrupt(format!("the secret at {aad} does not open with key {id:?}"))
            })?;
        String::from_utf8(plain).map_err(|_| corrupt())
    }

    /// The tag of a secret version: an HMAC of its history key under the active key,
    /// computed once when the version is written and stored as its md5.
    pub fn tag(&self, aad: &str) -> ConfigResult<String> {
        let key = &self.keys[&self.active];
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key.tag_key)
            .map_err(|_| ConfigError::Keys("the HMAC key is unusable".into()))?;
        mac.update(aad.as_bytes());
        Ok(hex::encode(&mac.finalize().into_bytes()[..16]))
    }
}

/// Lets a reader see secrets: what the protocol layer gives a [`crate::GrayClient`] whose
/// caller may read them. Readers without it get masked content.
#[derive(Clone)]
pub struct Reveal(pub Arc<Keyring>);

impl PartialEq for Reveal {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Reveal {}

impl fmt::Debug for Reveal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Reveal")
    }
}

/// What `client` reads of a stored version (content stored under the history key `aad`):
/// its content and md5. A secret opens for a client with [`Reveal`], whose md5 is then
/// the plaintext's, computed here and never stored; any other client gets the masked
/// content and its md5, which change exactly when the secret does.
pub fn readable(
    content: &str,
    stored_md5: &str,
    secret: bool,
    aad: &str,
    client: &crate::GrayClient,
) -> ConfigResult<(String, String)> {
    if !secret {
        return Ok((content.to_owned(), stored_md5.to_owned()));
    }
    let shown = match &client.reveal {
        Some(Reveal(keys)) => keys.open(content, aad)?,
        None => masked_content(stored_md5),
    };
    let md5 = crate::model::content_md5(&shown);
    Ok((shown, md5))
}

/// What callers who may not read a secret get instead of its content: it names the version
/// (by its tag) and nothing else, so its md5 changes exactly when the secret does.
pub fn masked_content(tag: &str) -> String {
    format!("****** (secret config, masked; version {tag})")
}

/// A key id unlikely to be reused by another file: the creation second and a random tag.
fn new_key_id() -> String {
    format!("k{}-{:04x}", crate::service::now_ms() / 1000, rand::random::<u16>())
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(keys: &[(&str, u8)], active: &str) -> Keyring {
        Keyring::new(keys.iter().map(|(id, b)| (id.to_string(), [*b; 32])).collect(), active).unwrap()
    }

    #[test]
    fn seals_and_opens_bound_to_the_history_key() {
        let keys = ring(&[("a", 1)], "a");
        let sealed = keys.seal("password=hunter2", "config/history/ns/g/d/1").unwrap();
        assert!(sealed.starts_with("sbenc1:a:") && !sealed.contains("hunter2"));
        assert_eq!(keys.open(&sealed, "config/history/ns/g/d/1").unwrap(), "password=hunter2");
        // Moved to another entry, it does not open.
        assert!(keys.open(&sealed, "config/history/ns/g/d/2").is_err());
        // Two seals of one plaintext differ (random nonces).
        assert_ne!(sealed, keys.seal("password=hunter2", "config/history/ns/g/d/1").unwrap());
    }

    #[test]
    fn rotation_keeps_old_keys_readable_and_tags_follow_the_sealing_key() {
        let old = ring(&[("a", 1)], "a");
        let sealed = old.seal("x", "k").unwrap();
        let both = ring(&[("a", 1), ("b", 2)], "b");
        assert_eq!(both.open(&sealed, "k").unwrap(), "x");
        assert_ne!(old.tag("k").unwrap(), old.tag("k2").unwrap());
        assert_eq!(old.tag("k").unwrap(), ring(&[("a", 1)], "a").tag("k").unwrap());
        let resealed = both.seal("x", "k").unwrap();
        assert_eq!(Keyring::key_of(&resealed), Some("b"));
        let retired = ring(&[("b", 2)], "b");
        let error = retired.open(&sealed, "k").unwrap_err().to_string();
        assert!(error.contains("\"a\"") && error.contains(MASTER_KEY_FLAG), "{error}");
        // A key under the same id but different material does not open it.
        assert!(ring(&[("a", 9)], "a").open(&sealed, "k").is_err());
    }

    #[test]
    fn key_files_load_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let generated = Keyring::generate(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let loaded = Keyring::load(&path).unwrap();
        assert_eq!(loaded.active(), generated.active());
        let sealed = generated.seal("s", "k").unwrap();
        assert_eq!(loaded.open(&sealed, "k").unwrap(), "s");
        assert!(Keyring::generate(&path).is_err(), "never overwrites a key file");

        let bad = dir.path().join("bad");
        std::fs::write(&bad, "key a c2hvcnQ=\n").unwrap();
        let error = Keyring::load(&bad).unwrap_err().to_string();
        assert!(error.contains("32 bytes") && error.contains("line 1"), "{error}");
        std::fs::write(&bad, "# nothing\n").unwrap();
        assert!(Keyring::load(&bad).unwrap_err().to_string().contains("no key"));
        assert!(!format!("{loaded:?}").contains(&base64::engine::general_purpose::STANDARD.encode([1u8; 4])));
    }
}
