//! The operator KV API, confined to the store's `kv/` prefix: keys are shown and taken
//! without it, so no request can name a system key.
//!
//! Reads at the current revision come from the KV view; `?revision=N` reads go to the
//! store (history lives there). Writes answer after the view has applied their revision.

use std::ops::Bound;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use sb_store::{
    prefix_end, Compare, CompareOp, KeyRange, KeyValue, LeaseId, OpResponse, RangeRequest, Revision, Txn,
    TxnOp,
};
use serde::Serialize;

use crate::audit::Audited;
use crate::error::{human_bytes, ApiError, ErrorKind};
use crate::extract::{if_match_revision, Params};
use crate::{leases, ApiState, KV_PREFIX};

/// One key as the API shows it (GET, list items, watch events).
#[derive(Serialize)]
pub(crate) struct KvJson {
    key: String,
    value: String,
    value_encoding: &'static str,
    create_revision: Revision,
    mod_revision: Revision,
    version: i64,
    /// A decimal string: JavaScript loses int64 precision.
    lease: Option<String>,
}

impl KvJson {
    pub(crate) fn from_kv(kv: &KeyValue) -> Self {
        let key = kv.key.strip_prefix(KV_PREFIX.as_bytes()).unwrap_or(&kv.key);
        let (value, value_encoding) = match std::str::from_utf8(&kv.value) {
            Ok(text) => (text.to_owned(), "utf8"),
            Err(_) => (base64::engine::general_purpose::STANDARD.encode(&kv.value), "base64"),
        };
        KvJson {
            key: String::from_utf8_lossy(key).into_owned(),
            value,
            value_encoding,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: kv.lease.map(|l| l.0.to_string()),
        }
    }
}

#[derive(Serialize)]
struct ListJson {
    revision: Revision,
    kvs: Vec<KvJson>,
    more: bool,
    count: u64,
}

#[derive(Serialize)]
struct WriteJson {
    key: String,
    revision: Revision,
}

#[derive(Serialize)]
struct DeleteJson {
    revision: Revision,
    deleted: u64,
}

/// The store key of a user key, after checking it.
fn store_key(
    api: &ApiState,
    path: Result<Path<String>, PathRejection>,
    allow_empty: bool,
) -> Result<Vec<u8>, ApiError> {
    let key = match path {
        Ok(Path(key)) => key,
        Err(rejection) => {
            return Err(ApiError::invalid("key", format!("key is not valid: {}", rejection.body_text())))
        }
    };
    if key.is_empty() && !allow_empty {
        return Err(ApiError::invalid("key", "key is empty"));
    }
    let limit = api.config.max_key_bytes;
    if key.len() > limit {
        return Err(ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!(
                "key is {}, limit is {} (set --max-key-bytes)",
                human_bytes(key.len()),
                human_bytes(limit)
            ),
        )
        .with_field("key"));
    }
    Ok([KV_PREFIX.as_bytes(), key.as_bytes()].concat())
}

fn user_key(store_key: &[u8]) -> String {
    String::from_utf8_lossy(store_key.strip_prefix(KV_PREFIX.as_bytes()).unwrap_or(store_key)).into_owned()
}

pub async fn get(
    State(api): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    params: Params,
) -> Result<Response, ApiError> {
    let prefix = params.flag("prefix")?;
    let key = store_key(&api, path, prefix)?;
    if prefix {
        return list(&api, key, &params).await;
    }
    let revision: Option<Revision> = params.parse("revision", "a revision number")?;
    let found = match revision {
        Some(revision) => {
            let response =
                timed(&api, "range", api.store.range(RangeRequest::key(key.clone()).at_revision(revision)))
                    .await?;
            response.kvs.into_iter().next()
        }
        None => api.kv.snapshot().entries.get(&key).map(|kv| KeyValue::clone(kv)),
    };
    let Some(kv) = found else {
        return Err(ApiError::not_found(format!("key {:?} not found", user_key(&key))).with_field("key"));
    };
    let mut response = Json(KvJson::from_kv(&kv)).into_response();
    set_etag(response.headers_mut(), kv.mod_revision);
    Ok(response)
}

pub async fn list_all(State(api): State<ApiState>, params: Params) -> Result<Response, ApiError> {
    list(&api, KV_PREFIX.as_bytes().to_vec(), &params).await
}

async fn list(api: &ApiState, prefix: Vec<u8>, params: &Params) -> Result<Response, ApiError> {
    let revision: Option<Revision> = params.parse("revision", "a revision number")?;
    let limit: Option<u64> = params.parse("limit", "a non-negative integer")?;
    let limit = limit.filter(|l| *l > 0);
    let list = match revision {
        Some(revision) => {
            let mut request = RangeRequest::prefix(prefix).at_revision(revision);
            request.limit = limit;
            let response = timed(api, "range", api.store.range(request)).await?;
            ListJson {
                revision: response.revision,
                kvs: response.kvs.iter().map(KvJson::from_kv).collect(),
                more: response.more,
                count: response.count,
            }
        }
        None => {
            // The revision first: the snapshot taken after it reflects at least that much.
            let revision = api.kv.revision();
            let snapshot = api.kv.snapshot();
            let end = prefix_end(&prefix).map_or(Bound::Unbounded, Bound::Excluded);
            let matching = snapshot.entries.range::<_, Vec<u8>>((Bound::Included(prefix), end));
            let mut kvs = Vec::new();
            let mut count = 0u64;
            for (_, kv) in matching {
                count += 1;
                if limit.is_none_or(|l| (kvs.len() as u64) < l) {
                    kvs.push(KvJson::from_kv(kv));
                }
            }
            let more = count > kvs.len() as u64;
            ListJson { revision, kvs, more, count }
        }
    };
    Ok(Json(list).into_response())
}

/// The key's current value as this node's view holds it (for an audit record's digest).
fn viewed_value(api: &ApiState, key: &[u8]) -> Option<Vec<u8>> {
    api.kv.snapshot().entries.get(key).map(|kv| kv.value.clone())
}

pub async fn put(
    State(api): State<ApiState>,
    Audited(audit): Audited,
    path: Result<Path<String>, PathRejection>,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = store_key(&api, path, false)?;
    let lease = match params.parse::<i64>("lease", "a lease id (a decimal string)")? {
        Some(id) => {
            let id = LeaseId(id);
            leases::ensure_user_lease(&api, id).await?;
            Some(id)
        }
        None => None,
    };
    let if_match = if_match_revision(&headers)?;
    let value = read_value(&api, &headers, body).await?;
    let before = viewed_value(&api, &key);
    let audited = audit.op("kv.put", String::from_utf8_lossy(&key), before.as_deref(), Some(&value));
    let put = TxnOp::Put { key: key.clone(), value, lease };
    let revision = match if_match {
        None => timed(&api, "put", api.store.txn(Txn::new().and_then([put, audited]))).await?.revision,
        Some(expected) => guarded(&api, &key, expected, [put, audited]).await?,
    };
    wait_for_view(&api, revision).await?;
    let mut response = Json(WriteJson { key: user_key(&key), revision }).into_response();
    set_etag(response.headers_mut(), revision);
    Ok(response)
}

pub async fn delete(
    State(api): State<ApiState>,
    Audited(audit): Audited,
    path: Result<Path<String>, PathRejection>,
    params: Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let prefix = params.flag("prefix")?;
    let key = store_key(&api, path, prefix)?;
    let if_match = if_match_revision(&headers)?;
    let (revision, deleted) = match (prefix, if_match) {
        (true, Some(_)) => {
            return Err(ApiError::invalid("If-Match", "If-Match applies to one key, not to a prefix delete"));
        }
        (true, false_or_none) => {
            debug_assert!(false_or_none.is_none());
            // A prefix delete is recorded once, for the prefix, even when it matched nothing.
            let resource = format!("{}*", String::from_utf8_lossy(&key));
            let txn = Txn::new().and_then([
                TxnOp::Delete(KeyRange::prefix(key)),
                audit.op("kv.delete", resource, None, None),
            ]);
            let response = timed(&api, "delete", api.store.txn(txn)).await?;
            (response.revision, deleted_count(&response.responses))
        }
        (false, None) => {
            // Recorded only when there was a key to delete.
            let before = viewed_value(&api, &key);
            let audited = audit.op("kv.delete", String::from_utf8_lossy(&key), before.as_deref(), None);
            let txn = Txn::new()
                .when([Compare::version(key.clone(), CompareOp::Greater, 0)])
                .and_then([TxnOp::delete(key), audited]);
            let response = timed(&api, "delete", api.store.txn(txn)).await?;
            (response.revision, deleted_count(&response.responses))
        }
        (false, Some(expected)) => {
            let before = viewed_value(&api, &key);
            let audited = audit.op("kv.delete", String::from_utf8_lossy(&key), before.as_deref(), None);
            let revision = guarded(&api, &key, expected, [TxnOp::delete(key.clone()), audited]).await?;
            (revision, 1)
        }
    };
    wait_for_view(&api, revision).await?;
    Ok(Json(DeleteJson { revision, deleted }).into_response())
}

fn deleted_count(responses: &[OpResponse]) -> u64 {
    match responses.first() {
        Some(OpResponse::Delete { deleted }) => *deleted,
        _ => 0,
    }
}

/// Runs `ops` only if the key's mod revision is `expected` (0: the key must not exist).
async fn guarded(
    api: &ApiState,
    key: &[u8],
    expected: Revision,
    ops: [TxnOp; 2],
) -> Result<Revision, ApiError> {
    let txn = Txn::new()
        .when([Compare::mod_revision(key.to_vec(), CompareOp::Equal, expected)])
        .and_then(ops)
        .or_else([TxnOp::get(key.to_vec())]);
    let response = timed(api, "txn", api.store.txn(txn)).await?;
    if response.succeeded {
        return Ok(response.revision);
    }
    let current = match response.responses.first() {
        Some(OpResponse::Range(range)) => range.kvs.first().map(|kv| kv.mod_revision),
        _ => None,
    };
    let message = match current {
        Some(current) => {
            format!("key {:?} has mod revision {current}, If-Match asked for {expected}", user_key(key))
        }
        None => format!("key {:?} does not exist, If-Match asked for mod revision {expected}", user_key(key)),
    };
    Err(ApiError::new(ErrorKind::Conflict, message).with_field("If-Match"))
}

/// Reads the raw body, refusing it past `--max-value-bytes`. An oversized body is still
/// drained (up to a bound), so the client reads the 413 instead of a reset connection.
async fn read_value(api: &ApiState, headers: &HeaderMap, body: Body) -> Result<Vec<u8>, ApiError> {
    use http_body_util::BodyExt;
    let limit = api.config.max_value_bytes;
    let drain_limit = limit.saturating_mul(4).max(16 * 1024 * 1024);
    let too_large = |size: usize| {
        ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!(
                "value is {}, limit is {} (set --max-value-bytes)",
                human_bytes(size),
                human_bytes(limit)
            ),
        )
        .with_field("value")
    };
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(length) = announced.filter(|l| *l > drain_limit) {
        return Err(too_large(length));
    }
    let mut body = body;
    let mut value = Vec::with_capacity(announced.unwrap_or(0).min(limit));
    let mut size = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| {
            ApiError::invalid("value", format!("the request body could not be read: {error}"))
        })?;
        let Ok(data) = frame.into_data() else { continue };
        size += data.len();
        if size <= limit {
            value.extend_from_slice(&data);
        } else if size > drain_limit {
            break;
        }
    }
    if size > limit {
        return Err(too_large(announced.unwrap_or(size).max(size)));
    }
    Ok(value)
}

/// Read-your-writes: answer only once the local KV view has applied `revision`.
pub(crate) async fn wait_for_view(api: &ApiState, revision: Revision) -> Result<(), ApiError> {
    api.kv.wait_for(revision, api.config.read_your_writes_timeout).await.map_err(|error| {
        ApiError::new(
            ErrorKind::Unavailable,
            format!("the write committed at revision {revision}, but this node has not caught up: {error}"),
        )
    })
}

/// A store call, timed into `switchboard_store_op_duration_seconds`.
pub(crate) async fn timed<T>(
    api: &ApiState,
    op: &'static str,
    call: impl std::future::Future<Output = sb_store::StoreResult<T>>,
) -> Result<T, ApiError> {
    let start = tokio::time::Instant::now();
    let result = call.await;
    api.metrics.observe_store_op(op, start.elapsed().as_secs_f64());
    result.map_err(ApiError::from)
}

fn set_etag(headers: &mut HeaderMap, revision: Revision) {
    if let Ok(value) = HeaderValue::from_str(&format!("\"{revision}\"")) {
        headers.insert(header::ETAG, value);
    }
}
