//! User leases. Ids are decimal strings everywhere (JavaScript loses int64 precision).
//!
//! A system lease (a node's membership or session lease, a worker-id lease) can never be
//! revoked, kept alive or attached through this API. A lease is a system lease when this
//! node registered it in [`SystemLeases`], or when any key on it lies outside `kv/` (which
//! also catches other nodes' system leases in etcd mode).

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::Json;
use parking_lot::RwLock;
use sb_store::{LeaseId, Txn, TxnOp, ETCD_MAX_TXN_OPS, MAX_LEASE_TTL_SECS};
use serde::{Deserialize, Serialize};

use crate::audit::Audited;
use crate::error::{ApiError, ErrorKind};
use crate::extract::ApiJson;
use crate::kv::{timed, wait_for_view};
use crate::{ApiState, KV_PREFIX};

type LeaseSource = Arc<dyn Fn() -> Option<LeaseId> + Send + Sync>;

/// The leases this node holds for itself. Sources are read at each check, because a
/// system lease can change (membership re-registers under a new lease after losing one).
#[derive(Default)]
pub struct SystemLeases {
    sources: RwLock<Vec<LeaseSource>>,
}

impl SystemLeases {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&self, source: impl Fn() -> Option<LeaseId> + Send + Sync + 'static) {
        self.sources.write().push(Arc::new(source));
    }

    pub fn contains(&self, lease: LeaseId) -> bool {
        self.sources.read().iter().any(|source| source() == Some(lease))
    }
}

fn system_lease_error(lease: LeaseId) -> ApiError {
    ApiError::new(
        ErrorKind::PermissionDenied,
        format!(
            "lease {lease} is a system lease; only leases granted through /api/v1/leases can be used here"
        ),
    )
    .with_field("lease")
}

/// Refuses a system lease; a lease that does not exist is a 404. Answers the lease's keys.
pub(crate) async fn ensure_user_lease(api: &ApiState, lease: LeaseId) -> Result<Vec<Vec<u8>>, ApiError> {
    if api.system_leases.contains(lease) {
        return Err(system_lease_error(lease));
    }
    let info = timed(api, "lease_time_to_live", api.store.lease_time_to_live(lease, true)).await?;
    if info.keys.iter().any(|key| !key.starts_with(KV_PREFIX.as_bytes())) {
        return Err(system_lease_error(lease));
    }
    Ok(info.keys)
}

fn lease_id(path: Result<Path<String>, PathRejection>) -> Result<LeaseId, ApiError> {
    let raw = path.map(|Path(id)| id).unwrap_or_default();
    match raw.parse::<i64>() {
        Ok(id) if id > 0 => Ok(LeaseId(id)),
        _ => {
            Err(ApiError::invalid("id", format!("lease id is {raw:?}, expected a positive decimal integer")))
        }
    }
}

#[derive(Deserialize)]
pub struct GrantRequest {
    ttl_secs: i64,
}

#[derive(Serialize)]
pub struct LeaseJson {
    id: String,
    ttl_secs: i64,
}

#[derive(Serialize)]
pub struct RevokedJson {
    id: String,
    revoked: bool,
}

pub async fn grant(
    State(api): State<ApiState>,
    ApiJson(request): ApiJson<GrantRequest>,
) -> Result<Json<LeaseJson>, ApiError> {
    if request.ttl_secs < 1 || request.ttl_secs > MAX_LEASE_TTL_SECS {
        return Err(ApiError::invalid(
            "ttl_secs",
            format!("ttl_secs is {}, expected 1 to {MAX_LEASE_TTL_SECS}", request.ttl_secs),
        ));
    }
    let granted = timed(&api, "lease_grant", api.store.lease_grant(request.ttl_secs)).await?;
    Ok(Json(LeaseJson { id: granted.id.0.to_string(), ttl_secs: granted.ttl_secs }))
}

pub async fn keep_alive(
    State(api): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<LeaseJson>, ApiError> {
    let lease = lease_id(path)?;
    ensure_user_lease(&api, lease).await?;
    let ttl_secs = timed(&api, "lease_keep_alive", api.store.lease_keep_alive(lease)).await?;
    Ok(Json(LeaseJson { id: lease.0.to_string(), ttl_secs }))
}

pub async fn revoke(
    State(api): State<ApiState>,
    Audited(audit): Audited,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<RevokedJson>, ApiError> {
    let lease = lease_id(path)?;
    let keys = ensure_user_lease(&api, lease).await?;
    // A revoke cannot carry a record, so the lease's keys are deleted first in one
    // transaction with the record (the change the record describes), then the lease goes.
    // Keys beyond one transaction's room go in earlier batches, unrecorded one by one.
    let room = ETCD_MAX_TXN_OPS - 1;
    let (earlier, last) = keys.split_at(keys.len().saturating_sub(room));
    for chunk in earlier.chunks(room) {
        let ops = chunk.iter().map(|key| TxnOp::delete(key.clone()));
        timed(&api, "txn", api.store.txn(Txn::new().and_then(ops))).await?;
    }
    let audited = audit.op("lease.revoke", format!("lease/{lease}"), None, None);
    let ops = last.iter().map(|key| TxnOp::delete(key.clone())).chain([audited]);
    let revision = timed(&api, "txn", api.store.txn(Txn::new().and_then(ops))).await?.revision;
    timed(&api, "lease_revoke", api.store.lease_revoke(lease)).await?;
    // The keys are gone: read-your-writes for them too.
    wait_for_view(&api, revision).await?;
    Ok(Json(RevokedJson { id: lease.0.to_string(), revoked: true }))
}
