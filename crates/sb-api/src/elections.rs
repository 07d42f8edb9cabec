//! `/api/v1/elections/{name}`: campaign (a long-poll until elected), proclaim, leader,
//! observe (Server-Sent Events), resign and renew, over the same recipe and owner-token
//! rule as locks (`sb_coord`).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::{Extension, Json};
use futures::stream::{self, Stream};
use sb_coord::{LeaderStream, QueueKind};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::extract::{ApiJson, Params};
use crate::locks::{
    default_ttl, default_wait, queue_name, release_json, renew_json, status_json, until_shutdown, GrantJson,
    HolderJson, OwnerRequest, ReleasedJson, RenewedJson,
};
use crate::{ApiState, Subject};

const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignRequest {
    #[serde(default)]
    value: String,
    #[serde(default = "default_ttl")]
    ttl_secs: i64,
    #[serde(default = "default_wait")]
    wait_ms: i64,
}

pub async fn campaign(
    State(api): State<ApiState>,
    Extension(subject): Extension<Subject>,
    path: Result<Path<String>, PathRejection>,
    params: Params,
    ApiJson(request): ApiJson<CampaignRequest>,
) -> Result<Json<GrantJson>, ApiError> {
    let name = queue_name(QueueKind::Election, path, &params)?;
    let campaign = api.coord.acquire(&name, &subject.name, request.ttl_secs, request.wait_ms, request.value);
    Ok(Json(GrantJson::new(until_shutdown(&api, campaign).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProclaimRequest {
    owner: String,
    value: String,
}

#[derive(Serialize)]
pub struct ProclaimedJson {
    revision: i64,
}

pub async fn proclaim(
    State(api): State<ApiState>,
    Extension(subject): Extension<Subject>,
    crate::audit::Audited(audit): crate::audit::Audited,
    path: Result<Path<String>, PathRejection>,
    params: Params,
    ApiJson(request): ApiJson<ProclaimRequest>,
) -> Result<Json<ProclaimedJson>, ApiError> {
    let name = queue_name(QueueKind::Election, path, &params)?;
    let revision = api.coord.proclaim(&name, &subject.name, &request.owner, &request.value, &audit).await?;
    Ok(Json(ProclaimedJson { revision }))
}

pub async fn leader(
    State(api): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    params: Params,
) -> Result<Json<serde_json::Value>, ApiError> {
    let name = queue_name(QueueKind::Election, path, &params)?;
    status_json(&api, &name).await
}

pub async fn resign(
    State(api): State<ApiState>,
    Extension(subject): Extension<Subject>,
    path: Result<Path<String>, PathRejection>,
    params: Params,
    ApiJson(request): ApiJson<OwnerRequest>,
) -> Result<Json<ReleasedJson>, ApiError> {
    let name = queue_name(QueueKind::Election, path, &params)?;
    release_json(&api, &name, &subject, &request.owner).await
}

pub async fn renew(
    State(api): State<ApiState>,
    Extension(subject): Extension<Subject>,
    path: Result<Path<String>, PathRejection>,
    params: Params,
    ApiJson(request): ApiJson<OwnerRequest>,
) -> Result<Json<RenewedJson>, ApiError> {
    let name = queue_name(QueueKind::Election, path, &params)?;
    renew_json(&api, &name, &subject, &request.owner).await
}

/// `event: leader`, `data: {"leader":{…}}` (or `null`) now and at every change.
pub async fn observe(
    State(api): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    params: Params,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let name = queue_name(QueueKind::Election, path, &params)?;
    let mut leaders = api.coord.observe(&name);
    // The first answer comes before the stream starts, so a bad store answers as an error.
    let first = leaders.next().await?;
    api.metrics.sse_streams.inc();
    let state = ObserveState { leaders, first: Some(first), api: api.clone(), done: false };
    Ok(Sse::new(stream::unfold(state, next_leader)).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

struct ObserveState {
    leaders: LeaderStream,
    first: Option<Option<sb_coord::Holder>>,
    api: ApiState,
    done: bool,
}

impl Drop for ObserveState {
    fn drop(&mut self) {
        self.api.metrics.sse_streams.dec();
    }
}

fn leader_event(leader: Option<sb_coord::Holder>) -> Event {
    let leader = leader.map(|holder| HolderJson::new(holder, QueueKind::Election));
    Event::default().event("leader").data(serde_json::json!({ "leader": leader }).to_string())
}

async fn next_leader(mut state: ObserveState) -> Option<(Result<Event, Infallible>, ObserveState)> {
    if state.done {
        return None;
    }
    if let Some(first) = state.first.take() {
        return Some((Ok(leader_event(first)), state));
    }
    let mut shutdown = state.api.shutdown.clone();
    let next = tokio::select! {
        next = state.leaders.next() => next,
        _ = shutdown.wait_for(|stop| *stop) => return None,
    };
    match next {
        Ok(leader) => Some((Ok(leader_event(leader)), state)),
        Err(error) => {
            state.done = true;
            let error = ApiError::from(error);
            let data = serde_json::json!({"error": {"code": error.kind.code(), "message": error.message}});
            Some((Ok(Event::default().event("error").data(data.to_string())), state))
        }
    }
}
