//! Namespaces as resources: `/api/v1/namespaces` and Nacos's console API
//! (`/nacos/v1/console/namespaces`). A namespace record holds a display name and a
//! description; namespaces stay implicit on first use through every other path, as in
//! Nacos 1.x, and `public` always exists.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sb_auth::model::NamespaceRecord;
use sb_auth::DEFAULT_NAMESPACE;
use serde::Deserialize;
use serde_json::json;

use crate::audit::Audited;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::nacos::{NacosParams, NacosResult};
use crate::ApiState;

/// Every namespace: `public` first, then the created ones in name order.
fn all(api: &ApiState) -> Vec<(String, NamespaceRecord)> {
    let snapshot = api.auth.namespaces();
    let mut list = Vec::with_capacity(snapshot.entries.len() + 1);
    if api.auth.namespace(DEFAULT_NAMESPACE).is_none() {
        list.push((
            DEFAULT_NAMESPACE.to_owned(),
            NamespaceRecord {
                display_name: DEFAULT_NAMESPACE.into(),
                description: "the default namespace".into(),
                created_at_ms: 0,
            },
        ));
    }
    for (key, entry) in snapshot.entries.iter() {
        let name = String::from_utf8_lossy(&key[sb_auth::model::NAMESPACES_PREFIX.len()..]).into_owned();
        list.push((name, entry.value.clone()));
    }
    list
}

fn namespace_json(api: &ApiState, name: &str, record: &NamespaceRecord) -> serde_json::Value {
    json!({
        "name": name,
        "display_name": record.display_name,
        "description": record.description,
        "created_at_ms": record.created_at_ms,
        "configs": api.configs.view().snapshot().list(name, None).len(),
    })
}

pub async fn list(State(api): State<ApiState>) -> Json<serde_json::Value> {
    let namespaces: Vec<_> =
        all(&api).iter().map(|(name, record)| namespace_json(&api, name, record)).collect();
    Json(json!({ "namespaces": namespaces }))
}

pub async fn get(
    State(api): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let record = all(&api)
        .into_iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| ApiError::not_found(format!("namespace {name:?} was never created")))?;
    Ok(Json(namespace_json(&api, &record.0, &record.1)))
}

#[derive(Deserialize)]
pub struct CreateNamespace {
    name: String,
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    description: String,
}

pub async fn create(
    State(api): State<ApiState>,
    Audited(audit): Audited,
    ApiJson(request): ApiJson<CreateNamespace>,
) -> Result<Response, ApiError> {
    let revision = api
        .auth
        .put_namespace(&request.name, &request.display_name, &request.description, true, &audit)
        .await?;
    Ok((StatusCode::CREATED, Json(json!({"name": request.name, "revision": revision}))).into_response())
}

#[derive(Deserialize)]
pub struct UpdateNamespace {
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    description: String,
}

pub async fn update(
    State(api): State<ApiState>,
    Audited(audit): Audited,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<UpdateNamespace>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if api.auth.namespace(&name).is_none() {
        return Err(ApiError::not_found(format!("namespace {name:?} was never created")));
    }
    let revision =
        api.auth.put_namespace(&name, &request.display_name, &request.description, false, &audit).await?;
    Ok(Json(json!({ "revision": revision })))
}

pub async fn delete(
    State(api): State<ApiState>,
    Audited(audit): Audited,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if name == DEFAULT_NAMESPACE {
        return Err(ApiError::invalid("namespace", "namespace public always exists and cannot be deleted"));
    }
    let revision = api.auth.delete_namespace(&name, &audit).await?;
    Ok(Json(json!({ "revision": revision })))
}

fn nacos_namespace_json(api: &ApiState, name: &str, record: &NamespaceRecord) -> serde_json::Value {
    let public = name == DEFAULT_NAMESPACE;
    json!({
        "namespace": if public { "" } else { name },
        "namespaceShowName": record.display_name,
        "namespaceDesc": record.description,
        "quota": 200,
        "configCount": api.configs.view().snapshot().list(name, None).len(),
        "type": if public { 0 } else { 2 },
    })
}

/// Nacos's list: `public` is the namespace `""` of type 0, created ones are type 2. With
/// `show=all&namespaceId=X`, one namespace (Nacos's describe).
pub async fn nacos_list(State(api): State<ApiState>, params: NacosParams) -> NacosResult<Response> {
    let namespaces = all(&api);
    if params.get("show") == Some("all") {
        let id = params.get("namespaceId").unwrap_or(DEFAULT_NAMESPACE);
        let (name, record) = namespaces
            .iter()
            .find(|(name, _)| name == id)
            .ok_or_else(|| ApiError::not_found(format!("namespace {id:?} was never created")))?;
        return Ok(Json(nacos_namespace_json(&api, name, record)).into_response());
    }
    let data: Vec<_> =
        namespaces.iter().map(|(name, record)| nacos_namespace_json(&api, name, record)).collect();
    Ok(Json(json!({ "code": 200, "message": null, "data": data })).into_response())
}

fn nacos_true() -> Response {
    "true".into_response()
}

pub async fn nacos_create(
    State(api): State<ApiState>,
    Audited(audit): Audited,
    params: NacosParams,
) -> NacosResult<Response> {
    // Nacos generates a UUID when no id is given.
    let id = params.get("customNamespaceId").map(str::to_owned).unwrap_or_else(|| {
        let bytes: [u8; 16] = rand::random();
        let hex = hex::encode(bytes);
        format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
    });
    let name = params.get("namespaceName").unwrap_or_default();
    let description = params.get("namespaceDesc").unwrap_or_default();
    api.auth.put_namespace(&id, name, description, true, &audit).await.map_err(ApiError::from)?;
    Ok(nacos_true())
}

pub async fn nacos_update(
    State(api): State<ApiState>,
    Audited(audit): Audited,
    params: NacosParams,
) -> NacosResult<Response> {
    let id =
        params.get("namespace").ok_or_else(|| ApiError::invalid("namespace", "namespace is required"))?;
    if api.auth.namespace(id).is_none() {
        return Err(ApiError::not_found(format!("namespace {id:?} was never created")).into());
    }
    let name = params.get("namespaceShowName").unwrap_or_default();
    let description = params.get("namespaceDesc").unwrap_or_default();
    api.auth.put_namespace(id, name, description, false, &audit).await.map_err(ApiError::from)?;
    Ok(nacos_true())
}

pub async fn nacos_delete(
    State(api): State<ApiState>,
    Audited(audit): Audited,
    params: NacosParams,
) -> NacosResult<Response> {
    let id = params
        .get("namespaceId")
        .ok_or_else(|| ApiError::invalid("namespaceId", "namespaceId is required"))?;
    if id == DEFAULT_NAMESPACE {
        return Err(ApiError::invalid("namespaceId", "namespace public cannot be deleted").into());
    }
    api.auth.delete_namespace(id, &audit).await.map_err(ApiError::from)?;
    Ok(nacos_true())
}
