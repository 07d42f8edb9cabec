//! Reading a large range in pages, all at one revision.

use crate::error::StoreResult;
use crate::store::Store;
use crate::types::{KeyRange, KeyValue, RangeRequest, Revision};

/// Keys per page: small enough to keep memory bounded on a huge range.
pub const DEFAULT_PAGE_KEYS: u64 = 1000;

/// Pages through a range at one fixed revision: the revision of the first page, or the
/// one asked for. Every key that existed at that revision is returned exactly once, even
/// while others write.
pub struct RangePager<'a> {
    store: &'a dyn Store,
    next: Option<KeyRange>,
    revision: Option<Revision>,
    page_keys: u64,
}

impl<'a> RangePager<'a> {
    pub fn new(store: &'a dyn Store, range: KeyRange, revision: Option<Revision>) -> Self {
        RangePager { store, next: Some(range), revision, page_keys: DEFAULT_PAGE_KEYS }
    }

    pub fn with_page_keys(mut self, page_keys: u64) -> Self {
        self.page_keys = page_keys.max(1);
        self
    }

    /// The revision the pages are read at, once the first page is read.
    pub fn revision(&self) -> Option<Revision> {
        self.revision
    }

    /// The next page; `None` when the range is exhausted.
    pub async fn next_page(&mut self) -> StoreResult<Option<Vec<KeyValue>>> {
        let Some(range) = self.next.take() else { return Ok(None) };
        let mut request = RangeRequest::new(range.clone()).with_limit(self.page_keys);
        request.revision = self.revision;
        let response = self.store.range(request).await?;
        let revision = *self.revision.get_or_insert(response.revision);
        debug_assert!(revision <= response.revision, "a page is never read past the current revision");
        if response.more {
            if let Some(last) = response.kvs.last() {
                self.next = Some(range.after(&last.key));
            }
        }
        Ok(Some(response.kvs))
    }
}

/// Reads a whole range at one revision; returns the keys and that revision.
pub async fn range_all(
    store: &dyn Store,
    range: KeyRange,
    revision: Option<Revision>,
) -> StoreResult<(Vec<KeyValue>, Revision)> {
    let mut pager = RangePager::new(store, range, revision);
    let mut all = Vec::new();
    while let Some(page) = pager.next_page().await? {
        all.extend(page);
    }
    let revision = match pager.revision() {
        Some(rev) => rev,
        None => store.current_revision().await?,
    };
    Ok((all, revision))
}
