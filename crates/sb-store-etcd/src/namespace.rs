//! The key namespace every port key lives under, as etcd's `namespace` package does it:
//! keys are prefixed on the way in and stripped on the way out, and every range is
//! bounded by the end of the namespace.

use sb_store::{prefix_end, KeyRange};

/// A raw etcd range: `end` empty means the single key `start`, `[0]` means "to the end
/// of the keyspace", as on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RawRange {
    pub start: Vec<u8>,
    pub end: Vec<u8>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Namespace {
    prefix: Vec<u8>,
}

impl Namespace {
    pub fn new(prefix: Vec<u8>) -> Self {
        Namespace { prefix }
    }

    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    pub fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut raw = Vec::with_capacity(self.prefix.len() + key.len());
        raw.extend_from_slice(&self.prefix);
        raw.extend_from_slice(key);
        raw
    }

    /// The exclusive end of the namespace on the wire (`[0]`: the whole keyspace).
    fn end(&self) -> Vec<u8> {
        prefix_end(&self.prefix).unwrap_or_else(|| vec![0])
    }

    /// The raw range for a port range. An empty start becomes `[0]`, the smallest key
    /// etcd accepts (no key is empty). An empty or inverted range stays empty on the wire
    /// (`end <= start` matches nothing in etcd).
    pub fn range(&self, range: &KeyRange) -> RawRange {
        let non_empty = |key: Vec<u8>| if key.is_empty() { vec![0] } else { key };
        match range {
            KeyRange::Key(key) => RawRange { start: self.key(key), end: Vec::new() },
            KeyRange::Prefix(prefix) => {
                let start = self.key(prefix);
                let end = prefix_end(&start).unwrap_or_else(|| vec![0]);
                RawRange { start: non_empty(start), end }
            }
            KeyRange::Between { start, end } => {
                let start = non_empty(self.key(start));
                let mut end = self.key(end);
                if end.is_empty() {
                    // `[start, "")` is empty; an empty end would mean "the single key".
                    end = start.clone();
                }
                RawRange { start, end }
            }
            KeyRange::From(start) => RawRange { start: non_empty(self.key(start)), end: self.end() },
        }
    }

    /// Strips the namespace from a key read back from etcd.
    pub fn strip(&self, mut raw: Vec<u8>) -> Vec<u8> {
        debug_assert!(raw.starts_with(&self.prefix), "etcd answered a key outside the namespace");
        if raw.starts_with(&self.prefix) {
            raw.drain(..self.prefix.len());
        }
        raw
    }

    pub fn contains(&self, raw: &[u8]) -> bool {
        raw.starts_with(&self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_bounded_by_the_namespace() {
        let ns = Namespace::new(b"/sb/".to_vec());
        assert_eq!(ns.range(&KeyRange::key("a")), RawRange { start: b"/sb/a".to_vec(), end: vec![] });
        assert_eq!(
            ns.range(&KeyRange::prefix("")),
            RawRange { start: b"/sb/".to_vec(), end: b"/sb0".to_vec() }
        );
        assert_eq!(
            ns.range(&KeyRange::From(b"k".to_vec())),
            RawRange { start: b"/sb/k".to_vec(), end: b"/sb0".to_vec() }
        );
        assert_eq!(ns.strip(b"/sb/x".to_vec()), b"x".to_vec());
    }

    #[test]
    fn an_empty_namespace_is_the_whole_keyspace() {
        let ns = Namespace::default();
        assert_eq!(ns.range(&KeyRange::prefix("")), RawRange { start: vec![0], end: vec![0] });
        assert_eq!(ns.range(&KeyRange::From(vec![])), RawRange { start: vec![0], end: vec![0] });
        let empty = ns.range(&KeyRange::Between { start: b"a".to_vec(), end: vec![] });
        assert_eq!(empty.start, empty.end);
    }
}
