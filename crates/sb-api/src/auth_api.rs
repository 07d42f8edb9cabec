//! `/api/v1/auth/…` and the Nacos logins: thin translators over `sb_auth`. No answer ever
//! carries a password, a password hash or a token other than the one just minted.

use std::net::IpAddr;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use sb_auth::{Binding, Permission, PrincipalKind, PrincipalRef};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit::Audited;
use crate::error::ApiError;
use crate::extract::{ApiJson, Params};
use crate::middleware::RequestContext;
use crate::nacos::{NacosParams, NacosResult};
use crate::{ApiState, Subject};

type Context = Option<Extension<RequestContext>>;

fn client_of(context: &Context) -> IpAddr {
    context.as_ref().and_then(|c| c.client).unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

#[derive(Deserialize)]
pub struct LoginRequest {
    username: String,
    password: String,
    ttl_secs: Option<i64>,
}

/// `POST /api/v1/auth/login`: a session token bound to the user, on a lease of its TTL.
pub async fn login(
    State(api): State<ApiState>,
    context: Context,
    ApiJson(request): ApiJson<LoginRequest>,
) -> Result<Response, ApiError> {
    let session =
        api.auth.login(&request.username, &request.password, client_of(&context), request.ttl_secs).await?;
    Ok(Json(json!({
        "token": session.token,
        "token_id": session.token_id,
        "ttl_secs": session.ttl_secs,
        "user": session.subject.name,
        "global_admin": session.global_admin,
    }))
    .into_response())
}

/// `POST /nacos/v1/auth/login` and `/nacos/v1/auth/users/login`, as Nacos 1.x answers:
/// `{accessToken, tokenTtl, globalAdmin}`; a wrong user or password is a 403.
pub async fn nacos_login(
    State(api): State<ApiState>,
    context: Context,
    params: NacosParams,
) -> NacosResult<Response> {
    let user = params.get("username").unwrap_or_default();
    let password = params.get("password").unwrap_or_default();
    let session = api.auth.login(user, password, client_of(&context), None).await.map_err(ApiError::from)?;
    Ok(Json(json!({
        "accessToken": session.token,
        "tokenTtl": session.ttl_secs,
        "globalAdmin": session.global_admin,
        "username": session.subject.name,
    }))
    .into_response())
}

fn bindings_of(api: &ApiState, principal: &PrincipalRef) -> Vec<Binding> {
    let state = api.auth.snapshot();
    match principal.kind {
        PrincipalKind::User => state.users.get(&principal.name).map(|e| e.value.bindings.clone()),
        PrincipalKind::ServiceAccount => {
            state.accounts.get(&principal.name).map(|e| e.value.bindings.clone())
        }
    }
    .unwrap_or_default()
}

pub async fn whoami(
    State(api): State<ApiState>,
    Extension(subject): Extension<Subject>,
) -> Json<serde_json::Value> {
    Json(json!({
        "name": subject.name,
        "kind": subject.kind.as_str(),
        "token_id": subject.token_id,
        "bindings": bindings_of(&api, &subject.principal()),
        "global_admin": api.auth.is_global_admin(&subject),
    }))
}

#[derive(Serialize)]
pub struct PrincipalJson {
    name: String,
    description: String,
    bindings: Vec<Binding>,
    created_at_ms: u64,
}

fn user_json(name: &str, record: &sb_auth::model::UserRecord) -> PrincipalJson {
    PrincipalJson {
        name: name.to_owned(),
        description: record.description.clone(),
        bindings: record.bindings.clone(),
        created_at_ms: record.created_at_ms,
    }
}

pub async fn list_users(State(api): State<ApiState>) -> Json<serde_json::Value> {
    let state = api.auth.snapshot();
    let users: Vec<PrincipalJson> = state.users.iter().map(|(name, e)| user_json(name, &e.value)).collect();
    Json(json!({ "users": users }))
}

pub async fn get_user(
    State(api): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<PrincipalJson>, ApiError> {
    let state = api.auth.snapshot();
    let entry =
        state.users.get(&name).ok_or_else(|| ApiError::not_found(format!("user {name:?} does not exist")))?;
    Ok(Json(user_json(&name, &entry.value)))
}

#[derive(Deserialize)]
pub struct CreateUser {
    name: String,
    password: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    bindings: Vec<Binding>,
}

pub async fn create_user(
    State(api): State<ApiState>,
    Audited(audit): Audited,
    ApiJson(request): ApiJson<CreateUser>,
) -> Result<Response, ApiError> {
    let revision = api
        .auth
        .create_user(&request.name, &request.password, &request.description, request.bindings, &audit)
        .await?;
    Ok((StatusCode::CREATED, Json(json!({"name": request.name, "revision": revision}))).into_response())
}

fn user_ref(name: String) -> PrincipalRef {
    PrincipalRef { kind: PrincipalKind::User, name }
}

fn account_ref(name: String) -> PrincipalRef {
    PrincipalRef { kind: PrincipalKind::ServiceAccount, name }
}

pub async fn delete_user(
    State(api): State<ApiState>,
    Audited(audit): Audited,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let revision = api.auth.delete_principal(&user_ref(name), &audit).await?;
    Ok(Json(json!({ "revision": revision })))
}

#[derive(Deserialize)]
pub struct SetPassword {
    password: String,
}

pub async fn set_password(
    State(api): State<ApiState>,
    Audited(audit): Audited,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<SetPassword>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let revision = api.auth.set_password(&name, &request.password, &audit).await?;
    Ok(Json(json!({ "revision": revision })))
}

pub async fn list_accounts(State(api): State<ApiState>) -> Json<serde_json::Value> {
    let state = api.auth.snapshot();
    let accounts: Vec<PrincipalJson> = state
        .accounts
        .iter()
        .map(|(name, e)| PrincipalJson {
            name: name.clone(),
            description: e.value.description.clone(),
            bindings: e.value.bindings.clone(),
            created_at_ms: e.value.created_at_ms,
        })
        .collect();
    Json(json!({ "service_accounts": accounts }))
}

#[derive(Deserialize)]
pub struct CreateAccount {
    name: String,
    #[serde(default)]
    description: String,
}

pub async fn create_account(
    State(api): State<ApiState>,
    Audited(audit): Audited,
    ApiJson(request): ApiJson<CreateAccount>,
) -> Result<Response, ApiError> {
    let revision = api.auth.create_service_account(&request.name, &request.description, &audit).await?;
    Ok((StatusCode::CREATED, Json(json!({"name": request.name, "revision": revision}))).into_response())
}

pub async fn delete_account(
    State(api): State<ApiState>,
    Audited(audit): Audited,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let revision = api.auth.delete_principal(&account_ref(name), &audit).await?;
    Ok(Json(json!({ "revision": revision })))
}

/// A binding request names exactly one of `user` and `service_account`.
#[derive(Deserialize)]
pub struct BindingRequest {
    user: Option<String>,
    service_account: Option<String>,
    role: String,
    namespace: Option<String>,
}

impl BindingRequest {
    fn into_parts(self) -> Result<(PrincipalRef, Binding), ApiError> {
        let principal = match (self.user, self.service_account) {
            (Some(user), None) => user_ref(user),
            (None, Some(account)) => account_ref(account),
            _ => return Err(ApiError::invalid("user", "name exactly one of user and service_account")),
        };
        let namespace = self.namespace.filter(|n| !n.is_empty()).ok_or_else(|| {
            ApiError::invalid(
                "namespace",
                "namespace is required: a namespace, a prefix ending in *, or * for all",
            )
        })?;
        Ok((principal, Binding { role: self.role, namespace }))
    }
}

pub async fn grant(
    State(api): State<ApiState>,
    Audited(audit): Audited,
    ApiJson(request): ApiJson<BindingRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (principal, binding) = request.into_parts()?;
    let revision = api.auth.grant(&principal, binding, &audit).await?;
    Ok(Json(json!({ "revision": revision, "bindings": bindings_of(&api, &principal) })))
}

pub async fn ungrant(
    State(api): State<ApiState>,
    Audited(audit): Audited,
    ApiJson(request): ApiJson<BindingRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (principal, binding) = request.into_parts()?;
    let revision = api.auth.ungrant(&principal, binding, &audit).await?;
    Ok(Json(json!({ "revision": revision, "bindings": bindings_of(&api, &principal) })))
}

pub async fn list_roles(State(api): State<ApiState>) -> Json<serde_json::Value> {
    let roles: Vec<serde_json::Value> = api
        .auth
        .roles()
        .into_iter()
        .map(|(name, permissions, description, builtin)| {
            json!({"name": name, "builtin": builtin, "description": description, "permissions": permissions})
        })
        .collect();
    Json(json!({ "roles": roles }))
}

#[derive(Deserialize)]
pub struct PutRole {
    permissions: Vec<Permission>,
    #[serde(default)]
    description: String,
}

pub async fn put_role(
    State(api): State<ApiState>,
    Audited(audit): Audited,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<PutRole>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let revision = api.auth.put_role(&name, request.permissions, &request.description, &audit).await?;
    Ok(Json(json!({ "revision": revision })))
}

pub async fn delete_role(
    State(api): State<ApiState>,
    Audited(audit): Audited,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let revision = api.auth.delete_role(&name, &audit).await?;
    Ok(Json(json!({ "revision": revision })))
}

pub async fn list_tokens(State(api): State<ApiState>, params: Params) -> Json<serde_json::Value> {
    let state = api.auth.snapshot();
    let wanted = match (params.get("user"), params.get("service_account")) {
        (Some(user), _) => Some(user_ref(user.to_owned())),
        (None, Some(account)) => Some(account_ref(account.to_owned())),
        (None, None) => None,
    };
    let tokens: Vec<serde_json::Value> = state
        .tokens
        .iter()
        .filter(|(_, e)| wanted.as_ref().is_none_or(|w| &e.value.principal == w))
        .map(|(id, e)| {
            let t = &e.value;
            json!({
                "id": id,
                "kind": t.principal.kind.as_str(),
                "name": t.principal.name,
                "description": t.description,
                "created_at_ms": t.created_at_ms,
                "expires_at_ms": t.expires_at_ms,
                "session": t.session,
            })
        })
        .collect();
    Json(json!({ "tokens": tokens }))
}

#[derive(Deserialize)]
pub struct CreateToken {
    user: Option<String>,
    service_account: Option<String>,
    ttl_secs: Option<i64>,
    #[serde(default)]
    description: String,
}

pub async fn create_token(
    State(api): State<ApiState>,
    Audited(audit): Audited,
    ApiJson(request): ApiJson<CreateToken>,
) -> Result<Response, ApiError> {
    let principal = match (request.user, request.service_account) {
        (Some(user), None) => user_ref(user),
        (None, Some(account)) => account_ref(account),
        _ => return Err(ApiError::invalid("user", "name exactly one of user and service_account")),
    };
    let minted = api.auth.create_token(&principal, request.ttl_secs, &request.description, &audit).await?;
    let body = json!({
        "token": minted.token,
        "id": minted.id,
        "kind": principal.kind.as_str(),
        "name": principal.name,
        "expires_at_ms": minted.record.expires_at_ms,
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub async fn revoke_token(
    State(api): State<ApiState>,
    Audited(audit): Audited,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    api.auth.revoke_token(&id, &audit).await?;
    Ok(Json(json!({ "revoked": id })))
}

pub async fn list_backoff(State(api): State<ApiState>) -> Json<serde_json::Value> {
    let entries: Vec<serde_json::Value> = api
        .auth
        .backoff()
        .list()
        .into_iter()
        .map(|e| {
            json!({"user": e.user, "address": e.address.to_string(), "failures": e.failures, "retry_after_ms": e.retry_after_ms})
        })
        .collect();
    Json(json!({ "entries": entries }))
}

pub async fn clear_backoff(
    State(api): State<ApiState>,
    Audited(audit): Audited,
    params: Params,
) -> Result<Json<serde_json::Value>, ApiError> {
    let address = params
        .get("address")
        .map(|a| {
            a.parse::<IpAddr>()
                .map_err(|_| ApiError::invalid("address", format!("address {a:?} is not an IP address")))
        })
        .transpose()?;
    let cleared = api.auth.clear_backoff(params.get("user"), address, &audit).await?;
    Ok(Json(json!({ "cleared": cleared })))
}
