//! Names and keys: `locks/{ns}/{name}/{lease}` and `elections/{ns}/{name}/{lease}`.
//!
//! A namespace and a name are 1 to 128 characters of `A-Z a-z 0-9 . _ - :`; no `/`, so a
//! name's prefix never contains another name's keys.

use std::fmt;

use sb_store::LeaseId;

use crate::error::{CoordError, CoordResult};

pub const LOCKS_PREFIX: &str = "locks/";
pub const ELECTIONS_PREFIX: &str = "elections/";
/// The namespace of a request that names none (as Nacos's `public`).
pub const DEFAULT_NAMESPACE: &str = "public";
pub const MAX_NAME_CHARS: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueKind {
    Lock,
    Election,
}

impl QueueKind {
    pub fn prefix(self) -> &'static str {
        match self {
            QueueKind::Lock => LOCKS_PREFIX,
            QueueKind::Election => ELECTIONS_PREFIX,
        }
    }
}

impl fmt::Display for QueueKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QueueKind::Lock => "lock",
            QueueKind::Election => "election",
        })
    }
}

/// A validated lock or election name within its namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueName {
    pub kind: QueueKind,
    pub namespace: String,
    pub name: String,
}

fn check(field: &'static str, what: &str, value: &str) -> CoordResult<()> {
    let valid_chars =
        value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
    if value.is_empty() || value.len() > MAX_NAME_CHARS || !valid_chars {
        return Err(CoordError::invalid(
            field,
            format!("{what} is {value:?}, expected 1 to {MAX_NAME_CHARS} characters of A-Z a-z 0-9 . _ - :"),
        ));
    }
    Ok(())
}

impl QueueName {
    /// Checks both parts; `namespace` `None` (or empty) is [`DEFAULT_NAMESPACE`].
    pub fn new(kind: QueueKind, namespace: Option<&str>, name: &str) -> CoordResult<Self> {
        let namespace = namespace.filter(|n| !n.is_empty()).unwrap_or(DEFAULT_NAMESPACE);
        check("namespace", "namespace", namespace)?;
        check("name", &format!("{kind} name"), name)?;
        Ok(QueueName { kind, namespace: namespace.to_owned(), name: name.to_owned() })
    }

    /// Every contender's key starts with this.
    pub fn prefix(&self) -> Vec<u8> {
        format!("{}{}/{}/", self.kind.prefix(), self.namespace, self.name).into_bytes()
    }

    /// The key of the contender on `lease`: fixed-width hex, one per lease.
    pub fn member_key(&self, lease: LeaseId) -> Vec<u8> {
        let mut key = self.prefix();
        key.extend_from_slice(format!("{:016x}", lease.0).as_bytes());
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_keys_are_separated() {
        let lock = QueueName::new(QueueKind::Lock, None, "db-migrate").unwrap();
        assert_eq!(lock.prefix(), b"locks/public/db-migrate/");
        assert_eq!(lock.member_key(LeaseId(255)), b"locks/public/db-migrate/00000000000000ff");
        let election = QueueName::new(QueueKind::Election, Some("prod"), "leader").unwrap();
        assert_eq!(election.prefix(), b"elections/prod/leader/");
        for bad in ["", "a/b", "white space", &"x".repeat(129)] {
            let error = QueueName::new(QueueKind::Lock, None, bad).unwrap_err();
            assert!(matches!(error, CoordError::InvalidArgument { field: "name", .. }), "{bad:?}");
        }
        let error = QueueName::new(QueueKind::Lock, Some("a/b"), "x").unwrap_err();
        assert!(matches!(error, CoordError::InvalidArgument { field: "namespace", .. }));
    }
}
