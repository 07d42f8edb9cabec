//! History retention: keep the last N entries of an item and drop entries older than a
//! maximum age, so the store's quota is never reached. The newest entry (the current
//! content, or the record of a delete) always stays.

use std::time::Duration;

use crate::model::EntryId;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Entries kept per item, newest first (at least 1).
    pub keep_last: usize,
    /// Entries older than this are dropped; `None` keeps them (up to `keep_last`).
    pub max_age: Option<Duration>,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { keep_last: 100, max_age: None }
    }
}

impl Retention {
    /// Indexes (into `entries`, oldest first) of the entries to delete.
    pub fn doomed(&self, entries: &[EntryId], now_ms: u64) -> Vec<usize> {
        let keep = self.keep_last.max(1);
        let newest = entries.len().saturating_sub(1);
        let over_count = entries.len().saturating_sub(keep);
        let max_age_ms = self.max_age.map(|age| age.as_millis() as u64);
        entries
            .iter()
            .enumerate()
            .filter(|(i, id)| {
                *i != newest
                    && (*i < over_count
                        || max_age_ms.is_some_and(|age| now_ms.saturating_sub(id.unix_ms()) > age))
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// Indexes (into `entries`: an id and whether it is a gray entry, oldest first) of the
    /// entries to delete. The newest main entry is the current content and the newest gray
    /// entry may be the gray content: neither is ever deleted.
    pub fn doomed_entries(&self, entries: &[(EntryId, bool)], now_ms: u64) -> Vec<usize> {
        let newest_main = entries.iter().rposition(|(_, gray)| !gray);
        let newest_gray = entries.iter().rposition(|(_, gray)| *gray);
        let ids: Vec<EntryId> = entries.iter().map(|(id, _)| *id).collect();
        self.doomed(&ids, now_ms)
            .into_iter()
            .filter(|i| Some(*i) != newest_main && Some(*i) != newest_gray)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(times: &[u64]) -> Vec<EntryId> {
        times.iter().map(|t| EntryId(u128::from(*t) << 32)).collect()
    }

    #[test]
    fn keeps_the_last_n() {
        let retention = Retention { keep_last: 2, max_age: None };
        assert_eq!(retention.doomed(&ids(&[1, 2, 3, 4]), 10), vec![0, 1]);
        assert!(retention.doomed(&ids(&[1, 2]), 10).is_empty());
    }

    #[test]
    fn drops_old_entries_but_never_the_newest() {
        let retention = Retention { keep_last: 100, max_age: Some(Duration::from_millis(5)) };
        assert_eq!(retention.doomed(&ids(&[1, 2, 8, 9]), 10), vec![0, 1]);
        assert_eq!(retention.doomed(&ids(&[1, 2]), 1000), vec![0]);
    }
}
