//! Reads and writes: paged ranges at one revision, transactions checked before they are
//! sent, and the single-key shortcuts.

use etcd_client::{DeleteOptions, PutOptions};
use sb_store::{
    check_key, put_request_bytes, txn_request_bytes, DeleteResponse, KeyRange, LeaseId, RangeRequest,
    RangeResponse, Revision, StoreError, StoreResult, Txn, TxnResponse,
};

use crate::convert;
use crate::failure::{timed, Failure};
use crate::EtcdStore;

/// A page aims at this many bytes of keys and values: half the client's 4 MiB decode
/// limit, so a page of keys a little larger than the average still fits.
const PAGE_TARGET_BYTES: usize = 2 * 1024 * 1024;
/// Keys asked for in the first page, before any size is known. A page that turns out too
/// large is halved and read again.
const FIRST_PAGE_KEYS: u64 = 256;
const MAX_PAGE_KEYS: u64 = 100_000;

pub(crate) async fn range(store: &EtcdStore, request: RangeRequest) -> StoreResult<RangeResponse> {
    if let KeyRange::Key(key) = &request.range {
        check_key(key)?;
    }
    let ns = store.namespace();
    let requested = request.revision.unwrap_or(0);
    if request.count_only {
        let (key, options) = convert::get_options(ns, &request, request.effective_limit());
        let mut kv = store.client().kv_client();
        let answer = match timed(store.request_timeout(), kv.get(key, Some(options))).await {
            Ok(answer) => answer.0,
            Err(failure) => return Err(store.revision_error(failure, requested).await),
        };
        return Ok(RangeResponse {
            revision: answer.header.map_or(0, |h| h.revision),
            kvs: Vec::new(),
            more: answer.more,
            count: u64::try_from(answer.count).unwrap_or(0),
        });
    }

    // Every page is read at one revision: the one asked for, or the first page's.
    let user_limit = request.effective_limit();
    let mut page = request.clone();
    let mut page_keys = user_limit.unwrap_or(u64::MAX).min(FIRST_PAGE_KEYS);
    let mut out = RangeResponse::default();
    let mut first = true;
    let mut seen_bytes = 0usize;
    loop {
        let remaining = user_limit.map(|limit| limit - out.kvs.len() as u64);
        let limit = remaining.map_or(page_keys, |r| r.min(page_keys));
        let (key, options) = convert::get_options(ns, &page, Some(limit));
        let mut kv = store.client().kv_client();
        let answer = match timed(store.request_timeout(), kv.get(key, Some(options))).await {
            Ok(answer) => answer.0,
            Err(Failure::ResponseTooLarge(message)) => {
                if limit <= 1 {
                    return Err(StoreError::Unavailable(format!(
                        "one key is over the client's decode limit: {message}"
                    )));
                }
                page_keys = limit / 2;
                tracing::debug!(page_keys, "range page over the decode limit, halving it");
                continue;
            }
            Err(failure) => return Err(store.revision_error(failure, page.revision.unwrap_or(0)).await),
        };
        if first {
            first = false;
            out.revision = answer.header.as_ref().map_or(0, |h| h.revision);
            out.count = u64::try_from(answer.count).unwrap_or(0);
            page.revision = Some(request.revision.unwrap_or(out.revision));
        }
        let Some(last) = answer.kvs.last() else {
            break;
        };
        let last_raw_key = last.key.clone();
        for kv in answer.kvs {
            seen_bytes += kv.key.len() + kv.value.len();
            out.kvs.push(convert::key_value(ns, kv));
        }
        if !answer.more {
            break;
        }
        if user_limit.is_some_and(|limit| out.kvs.len() as u64 >= limit) {
            out.more = true;
            break;
        }
        // Next page: after the last key, sized from the average key and value so far.
        let average = (seen_bytes / out.kvs.len()).max(1);
        page_keys = ((PAGE_TARGET_BYTES / average) as u64).clamp(1, MAX_PAGE_KEYS);
        page.range = page.range.after(&ns.strip(last_raw_key));
    }
    Ok(out)
}

pub(crate) async fn txn(store: &EtcdStore, txn: Txn) -> StoreResult<TxnResponse> {
    let limits = store.options.limits;
    limits.check_txn(&txn)?;
    let ns = store.namespace();
    let bytes = txn_request_bytes(&convert::namespaced_txn(ns, &txn));
    limits.check_size(bytes)?;
    let mut kv = store.client().kv_client();
    let answer = match timed(store.request_timeout(), kv.txn(convert::txn(ns, &txn))).await {
        Ok(answer) => answer.0,
        Err(failure) => return Err(txn_error(store, failure, &txn, bytes).await),
    };
    let revision = answer.header.map_or(0, |h| h.revision);
    Ok(TxnResponse {
        succeeded: answer.succeeded,
        revision,
        responses: answer
            .responses
            .into_iter()
            .map(|op| convert::op_response(ns, revision, op.response))
            .collect(),
    })
}

/// etcd's own refusals, for a cluster whose limits are lower than ours.
async fn txn_error(store: &EtcdStore, failure: Failure, txn: &Txn, bytes: usize) -> StoreError {
    let limits = store.options.limits;
    match failure {
        Failure::RequestTooLarge => {
            tracing::warn!(
                bytes,
                "etcd refused a transaction as too large: is its --max-request-bytes lower than ours?"
            );
            StoreError::RequestTooLarge { bytes, limit: limits.max_request_bytes }
        }
        Failure::LeaseNotFound => {
            let lease = txn.success.iter().chain(&txn.failure).find_map(|op| match op {
                sb_store::TxnOp::Put { lease, .. } => *lease,
                _ => None,
            });
            StoreError::LeaseNotFound(lease.unwrap_or(LeaseId(0)))
        }
        Failure::TooManyOps => {
            tracing::warn!(
                "etcd refused a transaction's operation count: is its --max-txn-ops lower than ours?"
            );
            let (list, count) = [
                ("compares", txn.compares.len()),
                ("success operations", txn.success.len()),
                ("failure operations", txn.failure.len()),
            ]
            .into_iter()
            .max_by_key(|(_, count)| *count)
            .unwrap_or(("operations", 0));
            StoreError::TooManyOps { list, count, limit: limits.max_txn_ops }
        }
        other => {
            let requested = txn
                .success
                .iter()
                .chain(&txn.failure)
                .find_map(|op| match op {
                    sb_store::TxnOp::Range(r) => r.revision,
                    _ => None,
                })
                .unwrap_or(0);
            store.revision_error(other, requested).await
        }
    }
}

pub(crate) async fn put(
    store: &EtcdStore,
    key: &[u8],
    value: &[u8],
    lease: Option<LeaseId>,
) -> StoreResult<Revision> {
    check_key(key)?;
    let raw_key = store.namespace().key(key);
    let bytes = put_request_bytes(&raw_key, value);
    store.options.limits.check_size(bytes)?;
    let options = lease.map(|lease| PutOptions::new().with_lease(lease.0));
    let mut kv = store.client().kv_client();
    match timed(store.request_timeout(), kv.put(raw_key, value, options)).await {
        Ok(answer) => Ok(answer.0.header.map_or(0, |h| h.revision)),
        Err(Failure::LeaseNotFound) => Err(StoreError::LeaseNotFound(lease.unwrap_or(LeaseId(0)))),
        Err(Failure::RequestTooLarge) => {
            Err(StoreError::RequestTooLarge { bytes, limit: store.options.limits.max_request_bytes })
        }
        Err(other) => Err(other.into_store_error()),
    }
}

pub(crate) async fn delete(store: &EtcdStore, range: KeyRange) -> StoreResult<DeleteResponse> {
    if let KeyRange::Key(key) | KeyRange::Between { start: key, .. } = &range {
        check_key(key)?;
    }
    let raw = store.namespace().range(&range);
    let mut kv = store.client().kv_client();
    let options = DeleteOptions::new().with_range(raw.end);
    match timed(store.request_timeout(), kv.delete(raw.start, Some(options))).await {
        Ok(answer) => Ok(DeleteResponse {
            revision: answer.0.header.map_or(0, |h| h.revision),
            deleted: u64::try_from(answer.0.deleted).unwrap_or(0),
        }),
        Err(other) => Err(other.into_store_error()),
    }
}
