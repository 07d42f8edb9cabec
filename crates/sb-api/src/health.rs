//! Active health checks of persistent instances, on the native API:
//! `GET|PUT|DELETE /api/v1/namespaces/{ns}/services/{service}/instances/{ip}:{port}/check`
//! (`?group=`, `?cluster=`), and `PUT …/{ip}:{port}/health` for a health set by hand while
//! nothing probes the instance. A thin translator over `sb_health::HealthChecks`.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::extract::{ApiJson, Params};
use crate::registry::{instance_addr, service_id};
use crate::ApiState;

/// The service and instance a `…/instances/{ip}:{port}/…` path names (`?group=`, `?cluster=`).
fn instance(
    path: Result<Path<Vec<String>>, PathRejection>,
    params: &Params,
) -> Result<(sb_registry::ServiceId, sb_registry::InstanceAddr), ApiError> {
    let (id, rest) = service_id(path, params)?;
    let addr = instance_addr(&rest, params)?;
    Ok((id, addr))
}

pub async fn get_check(
    State(api): State<ApiState>,
    path: Result<Path<Vec<String>>, PathRejection>,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    let (id, addr) = instance(path, &params)?;
    let spec = api.health.get(&id, &addr).ok_or_else(|| {
        ApiError::not_found(format!("instance {} of service {id} has no health check", addr.socket()))
    })?;
    Ok(Json(serde_json::to_value(spec).unwrap_or(Value::Null)))
}

pub async fn put_check(
    State(api): State<ApiState>,
    crate::audit::Audited(audit): crate::audit::Audited,
    path: Result<Path<Vec<String>>, PathRejection>,
    params: Params,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    let (id, addr) = instance(path, &params)?;
    let spec = sb_health::CheckSpec::from_json(&body).map_err(|e| ApiError::invalid(e.field, e.message))?;
    let revision = api.health.put(&id, &addr, &spec, &audit).await?;
    Ok(Json(json!({"revision": revision, "check": spec})))
}

pub async fn delete_check(
    State(api): State<ApiState>,
    crate::audit::Audited(audit): crate::audit::Audited,
    path: Result<Path<Vec<String>>, PathRejection>,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    let (id, addr) = instance(path, &params)?;
    let deleted = api.health.delete(&id, &addr, &audit).await?;
    Ok(Json(json!({"deleted": deleted})))
}

/// `PUT …/instances/{ip}:{port}/health` with `{"healthy": true|false}`.
pub async fn put_health(
    State(api): State<ApiState>,
    crate::audit::Audited(audit): crate::audit::Audited,
    path: Result<Path<Vec<String>>, PathRejection>,
    params: Params,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    let (id, addr) = instance(path, &params)?;
    let healthy = body.get("healthy").and_then(Value::as_bool).ok_or_else(|| {
        ApiError::invalid("healthy", format!("healthy is {}, expected true or false", body["healthy"]))
    })?;
    let revision = api.health.set_health(&id, &addr, healthy, &audit).await?;
    Ok(Json(json!({"revision": revision, "healthy": healthy})))
}
