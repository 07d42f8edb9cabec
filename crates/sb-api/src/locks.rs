//! `/api/v1/locks/{name}`: thin translation of `sb_coord`'s locks. Acquire is a long-poll
//! (`wait_ms`); if the client goes away while waiting, the handler's future is dropped and
//! the domain's drop guard removes the waiter. Locks always go to the store, never a view.
//!
//! Tokens are decimal strings (JavaScript loses int64 precision); the `namespace` query
//! parameter scopes every name (default `public`).

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use sb_coord::{CoordError, Grant, Holder, QueueKind, QueueName, QueueStatus};
use serde::{Deserialize, Serialize};

use crate::error::{human_bytes, ApiError, ErrorKind};
use crate::extract::{ApiJson, Params};
use crate::kv::wait_for_view;
use crate::{ApiState, Subject, KV_PREFIX};

/// Defaults of an acquire or campaign body that leaves them out.
pub(crate) const DEFAULT_TTL_SECS: i64 = 30;
pub(crate) const DEFAULT_WAIT_MS: i64 = 30_000;

impl From<CoordError> for ApiError {
    fn from(error: CoordError) -> Self {
        let message = error.to_string();
        match error {
            CoordError::InvalidArgument { field, message } => ApiError::invalid(field, message),
            CoordError::Timeout { .. } | CoordError::LeaseLost { .. } => {
                ApiError::new(ErrorKind::Conflict, message)
            }
            CoordError::NotHeld { .. } => ApiError::not_found(message).with_field("name"),
            CoordError::WrongOwner { .. } => {
                ApiError::new(ErrorKind::PermissionDenied, message).with_field("owner")
            }
            CoordError::Store(store) => ApiError::from(store),
        }
    }
}

/// The name from the path and the namespace from the query, checked.
pub(crate) fn queue_name(
    kind: QueueKind,
    path: Result<Path<String>, PathRejection>,
    params: &Params,
) -> Result<QueueName, ApiError> {
    let name = path.map(|Path(name)| name).unwrap_or_default();
    Ok(QueueName::new(kind, params.get("namespace"), &name)?)
}

/// Runs a long-poll, cut short (503) when the server stops.
pub(crate) async fn until_shutdown<T>(
    api: &ApiState,
    call: impl std::future::Future<Output = Result<T, CoordError>>,
) -> Result<T, ApiError> {
    let mut shutdown = api.shutdown.clone();
    tokio::select! {
        result = call => Ok(result?),
        _ = shutdown.wait_for(|stop| *stop) => Err(ApiError::new(ErrorKind::Unavailable, "the server is stopping; acquire again on another node")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcquireRequest {
    #[serde(default = "default_ttl")]
    ttl_secs: i64,
    #[serde(default = "default_wait")]
    wait_ms: i64,
}

pub(crate) fn default_ttl() -> i64 {
    DEFAULT_TTL_SECS
}

pub(crate) fn default_wait() -> i64 {
    DEFAULT_WAIT_MS
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnerRequest {
    pub(crate) owner: String,
}

/// The answer to an acquire or a won campaign.
#[derive(Serialize)]
pub struct GrantJson {
    namespace: String,
    name: String,
    /// The fencing token: the holder key's create revision.
    token: String,
    owner: String,
    lease: String,
    ttl_secs: i64,
}

impl GrantJson {
    pub(crate) fn new(grant: Grant) -> Self {
        GrantJson {
            namespace: grant.name.namespace,
            name: grant.name.name,
            token: grant.fencing_token.to_string(),
            owner: grant.owner,
            lease: grant.lease.0.to_string(),
            ttl_secs: grant.ttl_secs,
        }
    }
}

#[derive(Serialize)]
pub struct HolderJson {
    subject: String,
    token: String,
    lease: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
}

impl HolderJson {
    pub(crate) fn new(holder: Holder, kind: QueueKind) -> Self {
        HolderJson {
            subject: holder.subject,
            token: holder.fencing_token.to_string(),
            lease: holder.lease.map(|l| l.0.to_string()),
            value: (kind == QueueKind::Election).then_some(holder.value),
        }
    }
}

#[derive(Serialize)]
pub struct StatusJson {
    namespace: String,
    name: String,
    holder: HolderJson,
    /// Contenders queued behind the holder.
    waiters: u64,
    revision: i64,
}

/// The holder and queue of a name; 404 when nothing holds or waits for it.
pub(crate) async fn status_json(
    api: &ApiState,
    name: &QueueName,
) -> Result<Json<serde_json::Value>, ApiError> {
    let QueueStatus { holder, waiters, revision } = api.coord.status(name).await?;
    let Some(holder) = holder else {
        return Err(CoordError::NotHeld { kind: name.kind, name: name.name.clone() }.into());
    };
    let status = StatusJson {
        namespace: name.namespace.clone(),
        name: name.name.clone(),
        holder: HolderJson::new(holder, name.kind),
        waiters,
        revision,
    };
    let mut value = serde_json::to_value(status).unwrap_or_default();
    if name.kind == QueueKind::Election {
        // An election calls its holder the leader.
        if let Some(object) = value.as_object_mut() {
            if let Some(holder) = object.remove("holder") {
                object.insert("leader".into(), holder);
            }
        }
    }
    Ok(Json(value))
}

pub async fn acquire(
    State(api): State<ApiState>,
    Extension(subject): Extension<Subject>,
    path: Result<Path<String>, PathRejection>,
    params: Params,
    ApiJson(request): ApiJson<AcquireRequest>,
) -> Result<Json<GrantJson>, ApiError> {
    let name = queue_name(QueueKind::Lock, path, &params)?;
    let acquire = api.coord.acquire(&name, &subject.name, request.ttl_secs, request.wait_ms, String::new());
    let grant = until_shutdown(&api, acquire).await?;
    Ok(Json(GrantJson::new(grant)))
}

#[derive(Serialize)]
pub struct ReleasedJson {
    released: bool,
    token: String,
    revision: i64,
}

pub async fn release(
    State(api): State<ApiState>,
    Extension(subject): Extension<Subject>,
    path: Result<Path<String>, PathRejection>,
    params: Params,
    ApiJson(request): ApiJson<OwnerRequest>,
) -> Result<Json<ReleasedJson>, ApiError> {
    let name = queue_name(QueueKind::Lock, path, &params)?;
    release_json(&api, &name, &subject, &request.owner).await
}

pub(crate) async fn release_json(
    api: &ApiState,
    name: &QueueName,
    subject: &Subject,
    owner: &str,
) -> Result<Json<ReleasedJson>, ApiError> {
    let released = api.coord.release(name, &subject.name, owner).await?;
    Ok(Json(ReleasedJson {
        released: true,
        token: released.fencing_token.to_string(),
        revision: released.revision,
    }))
}

#[derive(Serialize)]
pub struct RenewedJson {
    ttl_secs: i64,
}

pub async fn renew(
    State(api): State<ApiState>,
    Extension(subject): Extension<Subject>,
    path: Result<Path<String>, PathRejection>,
    params: Params,
    ApiJson(request): ApiJson<OwnerRequest>,
) -> Result<Json<RenewedJson>, ApiError> {
    let name = queue_name(QueueKind::Lock, path, &params)?;
    renew_json(&api, &name, &subject, &request.owner).await
}

pub(crate) async fn renew_json(
    api: &ApiState,
    name: &QueueName,
    subject: &Subject,
    owner: &str,
) -> Result<Json<RenewedJson>, ApiError> {
    let ttl_secs = api.coord.renew(name, &subject.name, owner).await?;
    Ok(Json(RenewedJson { ttl_secs }))
}

pub async fn status(
    State(api): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    params: Params,
) -> Result<Json<serde_json::Value>, ApiError> {
    let name = queue_name(QueueKind::Lock, path, &params)?;
    status_json(&api, &name).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardedPutRequest {
    owner: String,
    /// A key of the KV API (without `kv/`).
    key: String,
    value: String,
}

#[derive(Serialize)]
pub struct GuardedPutJson {
    key: String,
    revision: i64,
    /// The fencing token the write was made under.
    token: String,
}

/// Puts a KV key only while the owner still holds the lock, in one transaction.
pub async fn guarded_put(
    State(api): State<ApiState>,
    Extension(subject): Extension<Subject>,
    crate::audit::Audited(audit): crate::audit::Audited,
    path: Result<Path<String>, PathRejection>,
    params: Params,
    ApiJson(request): ApiJson<GuardedPutRequest>,
) -> Result<Json<GuardedPutJson>, ApiError> {
    let name = queue_name(QueueKind::Lock, path, &params)?;
    if request.key.is_empty() {
        return Err(ApiError::invalid("key", "key is empty"));
    }
    if request.key.len() > api.config.max_key_bytes {
        return Err(ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!(
                "key is {}, limit is {} (set --max-key-bytes)",
                human_bytes(request.key.len()),
                human_bytes(api.config.max_key_bytes)
            ),
        )
        .with_field("key"));
    }
    if request.value.len() > api.config.max_value_bytes {
        return Err(ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!(
                "value is {}, limit is {} (set --max-value-bytes)",
                human_bytes(request.value.len()),
                human_bytes(api.config.max_value_bytes)
            ),
        )
        .with_field("value"));
    }
    let store_key = [KV_PREFIX.as_bytes(), request.key.as_bytes()].concat();
    let (token, revision) = api
        .coord
        .guarded_put(&name, &subject.name, &request.owner, &store_key, request.value.as_bytes(), &audit)
        .await?;
    wait_for_view(&api, revision).await?;
    Ok(Json(GuardedPutJson { key: request.key, revision, token: token.to_string() }))
}
