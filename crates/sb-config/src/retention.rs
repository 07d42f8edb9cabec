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
        self.doomed_by(entries.len(), |i| entries[i], |_| false, now_ms)
    }

    /// Indexes (into `entries`: an id and whether it is a gray entry, oldest first, then
    /// `adding` if given) of the entries to delete. The newest main entry is the current
    /// content and the newest gray entry may be the gray content: neither is ever deleted.
    pub fn doomed_entries(
        &self,
        entries: &[(EntryId, bool)],
        adding: Option<(EntryId, bool)>,
        now_ms: u64,
    ) -> Vec<usize> {
        let len = entries.len() + usize::from(adding.is_some());
        let at = |i: usize| entries.get(i).copied().or(adding).expect("an index below len");
        let newest_main = (0..len).rev().find(|i| !at(*i).1);
        let newest_gray = (0..len).rev().find(|i| at(*i).1);
        self.doomed_by(len, |i| at(i).0, |i| Some(i) == newest_main || Some(i) == newest_gray, now_ms)
    }

    /// The rule over `len` entries, oldest first (`id(i)`), never dropping the newest one
    /// nor those `kept(i)` says must stay. Allocates only for what it drops.
    fn doomed_by(
        &self,
        len: usize,
        id: impl Fn(usize) -> EntryId,
        kept: impl Fn(usize) -> bool,
        now_ms: u64,
    ) -> Vec<usize> {
        let keep = self.keep_last.max(1);
        let over_count = len.saturating_sub(keep);
        let max_age_ms = self.max_age.map(|age| age.as_millis() as u64);
        if over_count == 0 && max_age_ms.is_none() {
            return Vec::new();
        }
        let newest = len.saturating_sub(1);
        (0..len)
            .filter(|i| {
                *i != newest
                    && !kept(*i)
                    && (*i < over_count
                        || max_age_ms.is_some_and(|age| now_ms.saturating_sub(id(*i).unix_ms()) > age))
            })
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

    #[test]
    fn counts_the_entry_being_added_and_keeps_the_newest_gray() {
        let retention = Retention { keep_last: 2, max_age: None };
        let entries: Vec<(EntryId, bool)> = ids(&[1, 2, 3]).into_iter().map(|id| (id, false)).collect();
        let adding = Some((ids(&[4])[0], false));
        assert_eq!(retention.doomed_entries(&entries, adding, 10), vec![0, 1]);
        assert_eq!(retention.doomed_entries(&entries, None, 10), vec![0]);
        // The only gray entry is the oldest: it stays, whatever the count says.
        let mut with_gray = entries.clone();
        with_gray[0].1 = true;
        assert_eq!(retention.doomed_entries(&with_gray, adding, 10), vec![1]);
        assert!(Retention::default().doomed_entries(&entries, adding, 10).is_empty());
    }
}
