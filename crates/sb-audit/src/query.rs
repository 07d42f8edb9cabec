//! Reading the log: a time range (keys are time-ordered, so it is a key range), then
//! filters on actor, resource prefix and action, paged with a continuation token (the id
//! of the last record scanned).

use sb_store::codec::decode;
use sb_store::{KeyRange, RangeRequest, Revision, Store};
use serde::Serialize;

use crate::{key_at, AuditError, AuditRecord, AUDIT_PREFIX};

/// The most records one page can hold.
pub const MAX_QUERY_LIMIT: usize = 1000;
/// Records read from the store per round trip.
const SCAN_PAGE: u64 = 256;
/// Records scanned per query before answering with what matched so far (and a token), so
/// a filter that matches little never holds a request for a whole log.
const MAX_SCAN: usize = 20_000;

#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    /// Records stamped at or after this time (Unix ms).
    pub from_ms: Option<u64>,
    /// Records stamped at or before this time (Unix ms).
    pub to_ms: Option<u64>,
    pub actor: Option<String>,
    pub resource_prefix: Option<String>,
    pub action: Option<String>,
    /// 1 to [`MAX_QUERY_LIMIT`].
    pub limit: usize,
    /// The `next` token of the previous page.
    pub after: Option<String>,
}

/// One record with its id (its key below `audit/`) and revision (the key's create revision).
#[derive(Clone, Debug, Serialize)]
pub struct AuditEntry {
    pub id: String,
    pub revision: Revision,
    #[serde(flatten)]
    pub record: AuditRecord,
}

#[derive(Clone, Debug, Serialize)]
pub struct AuditPage {
    /// Oldest first.
    pub records: Vec<AuditEntry>,
    /// Pass as `after` for the next page; absent when the range is exhausted.
    pub next: Option<String>,
}

impl AuditQuery {
    pub fn validate(&self) -> Result<(), AuditError> {
        if let (Some(from), Some(to)) = (self.from_ms, self.to_ms) {
            if from > to {
                return Err(AuditError::InvalidArgument {
                    field: "from",
                    message: format!("the time range is empty: from ({from}) is after to ({to})"),
                });
            }
        }
        if self.limit == 0 || self.limit > MAX_QUERY_LIMIT {
            return Err(AuditError::InvalidArgument {
                field: "limit",
                message: format!("limit is {}, expected 1 to {MAX_QUERY_LIMIT}", self.limit),
            });
        }
        if let Some(after) = &self.after {
            let valid = after.len() <= 64 && after.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !valid {
                return Err(AuditError::InvalidArgument {
                    field: "after",
                    message: format!("after is {after:?}, expected the next token of a previous page"),
                });
            }
        }
        Ok(())
    }

    fn matches(&self, record: &AuditRecord) -> bool {
        self.actor.as_deref().is_none_or(|actor| record.actor == actor)
            && self.action.as_deref().is_none_or(|action| record.action == action)
            && self.resource_prefix.as_deref().is_none_or(|prefix| record.resource.starts_with(prefix))
    }
}

/// One page of records matching `query`, oldest first.
pub async fn query(store: &dyn Store, query: &AuditQuery) -> Result<AuditPage, AuditError> {
    query.validate()?;
    let start = match (&query.after, query.from_ms) {
        (Some(after), from) => {
            let mut key = format!("{AUDIT_PREFIX}{after}").into_bytes();
            key.push(0);
            let from_key = from.map(|ms| key_at(ms).into_bytes()).unwrap_or_default();
            key.max(from_key)
        }
        (None, Some(from)) => key_at(from).into_bytes(),
        (None, None) => AUDIT_PREFIX.as_bytes().to_vec(),
    };
    let end = match query.to_ms.and_then(|to| to.checked_add(1)) {
        Some(end) => key_at(end).into_bytes(),
        None => sb_store::prefix_end(AUDIT_PREFIX.as_bytes()).unwrap_or_default(),
    };
    let mut range = KeyRange::Between { start, end };
    let mut records = Vec::new();
    let mut scanned = 0usize;
    let mut revision = None;
    loop {
        if range.start() >= range.end().unwrap_or_default().as_slice() {
            return Ok(AuditPage { records, next: None });
        }
        let mut request = RangeRequest::new(range.clone()).with_limit(SCAN_PAGE);
        // Every page at the revision of the first, so a page never sees half of a sweep.
        if let Some(revision) = revision {
            request = request.at_revision(revision);
        }
        let response = store.range(request).await?;
        revision.get_or_insert(response.revision);
        let Some(last) = response.kvs.last().map(|kv| kv.key.clone()) else {
            return Ok(AuditPage { records, next: None });
        };
        for kv in &response.kvs {
            scanned += 1;
            let id = String::from_utf8_lossy(&kv.key[AUDIT_PREFIX.len()..]).into_owned();
            let record = decode::<AuditRecord>(&kv.value)
                .map_err(|e| AuditError::Corrupt { key: id.clone(), reason: e.to_string() })?;
            if !query.matches(&record) {
                continue;
            }
            records.push(AuditEntry { id, revision: kv.create_revision, record });
            if records.len() == query.limit {
                let next = records.last().map(|e| e.id.clone());
                return Ok(AuditPage { records, next });
            }
        }
        if !response.more {
            return Ok(AuditPage { records, next: None });
        }
        if scanned >= MAX_SCAN {
            let next = String::from_utf8_lossy(&last[AUDIT_PREFIX.len()..]).into_owned();
            return Ok(AuditPage { records, next: Some(next) });
        }
        range = range.after(&last);
    }
}
