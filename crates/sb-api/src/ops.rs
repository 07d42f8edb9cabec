//! Probes, metrics, the OpenAPI document and the runtime log level.

use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::error::{ApiError, ErrorKind};
use crate::extract::ApiJson;
use crate::{openapi, ApiState};

/// How long readiness waits for the store to answer.
const READINESS_STORE_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when the store answers and the views are loaded (a view exists only once its
/// first load is applied, so the remaining check is the store).
pub async fn readyz(State(api): State<ApiState>) -> Result<Json<serde_json::Value>, ApiError> {
    let revision = tokio::time::timeout(READINESS_STORE_TIMEOUT, api.store.current_revision())
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorKind::Unavailable,
                format!("the store did not answer within {} ms", READINESS_STORE_TIMEOUT.as_millis()),
            )
        })??;
    Ok(Json(json!({
        "status": "ready",
        "store": api.store.kind(),
        "revision": revision,
        "views": {"kv": api.kv.revision(), "auth": api.auth.revision()},
    })))
}

pub async fn metrics(State(api): State<ApiState>) -> Result<Response, ApiError> {
    api.metrics.kv_keys.set(api.kv.snapshot().entries.len() as i64);
    let text = api
        .metrics
        .encode()
        .map_err(|e| ApiError::new(ErrorKind::Internal, format!("metrics could not be encoded: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
        .into_response())
}

pub async fn openapi() -> Json<serde_json::Value> {
    Json(openapi::document())
}

#[derive(Deserialize)]
pub struct LogLevelRequest {
    /// An `EnvFilter` directive: `debug`, or `info,sb_api=debug`.
    level: String,
}

pub async fn set_log_level(
    State(api): State<ApiState>,
    crate::audit::Audited(audit): crate::audit::Audited,
    ApiJson(request): ApiJson<LogLevelRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(control) = &api.log_level else {
        return Err(ApiError::new(ErrorKind::Unavailable, "this server has no runtime log control"));
    };
    control.set(&request.level).map_err(|e| {
        ApiError::invalid("level", format!("level {:?} is not a valid log filter: {e}", request.level))
    })?;
    let current = control.current();
    let revision = crate::kv::timed(
        &api,
        "txn",
        crate::audit::record_alone(
            &api,
            &audit,
            "admin.log-level",
            "admin/log-level",
            Some(current.as_bytes()),
        ),
    )
    .await?;
    Ok(Json(json!({"level": current, "revision": revision})))
}
