//! `/api/v1/ratelimit`: rule CRUD, checks and concurrency permits, namespace-scoped by the
//! `namespace` query parameter (default `public`). Thin over `sb_ratelimit`: every rule
//! about rules and decisions lives there.

use std::collections::HashMap;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::Json;
use sb_ratelimit::{RateLimitError, RateLimiter, RuleSpec, StoredRule, DEFAULT_NAMESPACE};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ApiError;
use crate::extract::{ApiJson, Params};
use crate::ApiState;

fn namespace(params: &Params) -> &str {
    params.get("namespace").filter(|ns| !ns.is_empty()).unwrap_or(DEFAULT_NAMESPACE)
}

fn limiter(api: &ApiState) -> &RateLimiter {
    &api.ratelimit
}

fn rule_name(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(name)| name).map_err(|rejection| {
        ApiError::invalid("name", format!("rule name is not valid: {}", rejection.body_text()))
    })
}

/// A rule as the API shows it: its fields, flat, with its namespace and revision.
fn rule_json(stored: &StoredRule) -> Value {
    let mut json = serde_json::to_value(&stored.rule).unwrap_or(Value::Null);
    if let Some(object) = json.as_object_mut() {
        object.insert("namespace".into(), stored.namespace.clone().into());
        object.insert("revision".into(), stored.revision.into());
    }
    json
}

#[derive(Serialize)]
pub struct RuleList {
    namespace: String,
    revision: i64,
    rules: Vec<Value>,
}

pub async fn list_rules(State(api): State<ApiState>, params: Params) -> Result<Json<RuleList>, ApiError> {
    let ns = namespace(&params);
    let (rules, revision) = limiter(&api).catalog().list(ns)?;
    Ok(Json(RuleList { namespace: ns.to_owned(), revision, rules: rules.iter().map(rule_json).collect() }))
}

pub async fn get_rule(
    State(api): State<ApiState>,
    params: Params,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let name = rule_name(path)?;
    Ok(Json(rule_json(&limiter(&api).catalog().get(namespace(&params), &name)?)))
}

pub async fn put_rule(
    State(api): State<ApiState>,
    crate::audit::Audited(audit): crate::audit::Audited,
    params: Params,
    path: Result<Path<String>, PathRejection>,
    ApiJson(spec): ApiJson<RuleSpec>,
) -> Result<Json<Value>, ApiError> {
    let name = rule_name(path)?;
    let stored = limiter(&api).catalog().put(namespace(&params), &name, spec, &audit).await?;
    Ok(Json(rule_json(&stored)))
}

#[derive(Serialize)]
pub struct Deleted {
    revision: i64,
    deleted: u64,
}

pub async fn delete_rule(
    State(api): State<ApiState>,
    crate::audit::Audited(audit): crate::audit::Audited,
    params: Params,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Deleted>, ApiError> {
    let name = rule_name(path)?;
    let revision = limiter(&api).catalog().delete(namespace(&params), &name, &audit).await?;
    Ok(Json(Deleted { revision, deleted: 1 }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckBody {
    rule: String,
    #[serde(default)]
    descriptors: HashMap<String, String>,
    #[serde(default = "one")]
    hits: i64,
}

fn one() -> i64 {
    1
}

pub async fn check(
    State(api): State<ApiState>,
    params: Params,
    ApiJson(body): ApiJson<CheckBody>,
) -> Result<Json<sb_ratelimit::Answer>, ApiError> {
    let answer = limiter(&api).check(namespace(&params), &body.rule, &body.descriptors, body.hits).await?;
    Ok(Json(answer))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcquireBody {
    rule: String,
    #[serde(default)]
    descriptors: HashMap<String, String>,
}

pub async fn acquire(
    State(api): State<ApiState>,
    params: Params,
    ApiJson(body): ApiJson<AcquireBody>,
) -> Result<Json<sb_ratelimit::PermitAnswer>, ApiError> {
    Ok(Json(limiter(&api).acquire(namespace(&params), &body.rule, &body.descriptors).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseBody {
    rule: String,
    #[serde(default)]
    descriptors: HashMap<String, String>,
    permit_id: String,
}

pub async fn release(
    State(api): State<ApiState>,
    params: Params,
    ApiJson(body): ApiJson<ReleaseBody>,
) -> Result<Json<sb_ratelimit::ReleaseAnswer>, ApiError> {
    let answer =
        limiter(&api).release(namespace(&params), &body.rule, &body.descriptors, &body.permit_id).await?;
    Ok(Json(answer))
}

impl From<RateLimitError> for ApiError {
    fn from(error: RateLimitError) -> Self {
        let message = error.to_string();
        match error {
            RateLimitError::InvalidArgument { field, .. } => ApiError::invalid(field, message),
            RateLimitError::RuleNotFound { .. } => ApiError::not_found(message).with_field("rule"),
            RateLimitError::PermitNotFound { .. } => ApiError::not_found(message).with_field("permit_id"),
            RateLimitError::Store(store) => store.into(),
            RateLimitError::View(_) => ApiError::new(crate::error::ErrorKind::Unavailable, message),
        }
    }
}
