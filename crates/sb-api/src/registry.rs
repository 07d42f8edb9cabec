//! The registry's native API under `/api/v1/namespaces/{ns}/services/…`: a thin
//! translator over `sb_registry::Registry`. Reads come from the registry view; writes
//! answer once it has applied them.
//!
//! Instances are addressed as `{ip}:{port}` in the path, with `?cluster=` (default
//! `DEFAULT`); services with `?group=` (default `DEFAULT_GROUP`). Lists say which
//! instances are really unhealthy (`healthy`) and how they are served (`served_healthy`,
//! true for all once the protection threshold is reached).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures::stream::{self, Stream};
use sb_registry::{
    InstanceAddr, InstancePatch, InstanceQuery, InstanceSpec, Metadata, RegistryError, Selection, ServiceId,
    ServiceRecord,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{ApiError, ErrorKind};
use crate::extract::{ApiJson, Params};
use crate::ApiState;

/// The longest a long-poll may hold.
pub const MAX_WAIT_SECS: u64 = 60;
const MAX_PAGE_SIZE: usize = 1000;

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> Self {
        match error {
            RegistryError::Invalid { field, message } => ApiError::invalid(field, message),
            RegistryError::NotFound(message) => ApiError::not_found(message),
            error @ RegistryError::UnknownInstance(_) => ApiError::not_found(error.to_string()),
            RegistryError::Conflict(message) => ApiError::new(ErrorKind::Conflict, message),
            RegistryError::Store(error) => ApiError::from(error),
            RegistryError::View(error) => ApiError::new(
                ErrorKind::Unavailable,
                format!("the write committed, but this node has not caught up: {error}"),
            ),
        }
    }
}

pub(crate) fn service_id(
    path: Result<Path<Vec<String>>, PathRejection>,
    params: &Params,
) -> Result<(ServiceId, Vec<String>), ApiError> {
    let Path(segments) =
        path.map_err(|r| ApiError::invalid("path", format!("path is not valid: {}", r.body_text())))?;
    let (ns, rest) =
        segments.split_first().ok_or_else(|| ApiError::invalid("namespace", "namespace is missing"))?;
    let service = rest.first().map(String::as_str).unwrap_or_default();
    let id = ServiceId::new(ns, params.get("group").unwrap_or(""), service)?;
    Ok((id, rest.iter().skip(1).cloned().collect()))
}

pub(crate) fn instance_addr(rest: &[String], params: &Params) -> Result<InstanceAddr, ApiError> {
    let socket = rest.first().map(String::as_str).unwrap_or_default();
    Ok(InstanceAddr::parse_socket(params.get("cluster").unwrap_or(""), socket)?)
}

#[derive(Serialize)]
pub struct RevisionJson {
    revision: i64,
}

pub fn instances_json(id: &ServiceId, selection: &Selection) -> Value {
    let instances: Vec<Value> = selection
        .instances
        .iter()
        .map(|s| {
            let i = &s.entry;
            json!({
                "ip": i.addr.ip.to_string(),
                "port": i.addr.port,
                "cluster": i.addr.cluster,
                "weight": i.record.weight,
                "enabled": i.record.enabled,
                "healthy": i.record.healthy,
                "served_healthy": s.served_healthy,
                "ephemeral": i.record.ephemeral,
                "metadata": i.record.metadata,
                "owner": i.record.owner,
                "mod_revision": i.mod_revision,
            })
        })
        .collect();
    json!({
        "namespace": id.namespace,
        "group": id.group,
        "service": id.service,
        "revision": selection.changed_revision,
        "protect_threshold": selection.protect_threshold,
        "reach_protection_threshold": selection.reach_protection_threshold,
        "instances": instances,
    })
}

fn query(params: &Params) -> Result<InstanceQuery, ApiError> {
    let clusters = params
        .get("clusters")
        .map(|c| c.split(',').filter(|c| !c.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    Ok(InstanceQuery { clusters, healthy_only: params.flag("healthy_only")?, enabled_only: false })
}

/// `GET …/services/{service}/instances`; with `wait_secs` it is a long-poll that holds
/// until the service's revision differs from `since_revision`.
pub async fn list_instances(
    State(api): State<ApiState>,
    path: Result<Path<Vec<String>>, PathRejection>,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    let (id, _) = service_id(path, &params)?;
    let query = query(&params)?;
    if let Some(wait_secs) = params.parse::<u64>("wait_secs", "a number of seconds")? {
        if wait_secs > MAX_WAIT_SECS {
            return Err(ApiError::invalid(
                "wait_secs",
                format!("wait_secs is {wait_secs}, limit is {MAX_WAIT_SECS}"),
            ));
        }
        let since = params.parse::<i64>("since_revision", "a revision")?.unwrap_or(0);
        let mut shutdown = api.shutdown.clone();
        tokio::select! {
            _ = api.registry.wait_for_change(&id, since, Duration::from_secs(wait_secs)) => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
    }
    Ok(Json(instances_json(&id, &api.registry.instances(&id, &query))))
}

#[derive(Deserialize)]
pub struct RegisterBody {
    ip: String,
    port: i64,
    #[serde(default)]
    cluster: String,
    weight: Option<f64>,
    enabled: Option<bool>,
    healthy: Option<bool>,
    ephemeral: Option<bool>,
    #[serde(default)]
    metadata: Metadata,
}

pub async fn register(
    State(api): State<ApiState>,
    crate::audit::Audited(audit): crate::audit::Audited,
    path: Result<Path<Vec<String>>, PathRejection>,
    params: Params,
    ApiJson(body): ApiJson<RegisterBody>,
) -> Result<Json<Value>, ApiError> {
    let (id, _) = service_id(path, &params)?;
    let addr = InstanceAddr::parse(&body.cluster, &body.ip, body.port)?;
    let mut spec = InstanceSpec::new(id, addr);
    spec.weight = body.weight.unwrap_or(1.0);
    spec.enabled = body.enabled.unwrap_or(true);
    spec.healthy = body.healthy.unwrap_or(true);
    spec.ephemeral = body.ephemeral.unwrap_or(true);
    spec.metadata = body.metadata;
    let revision = api.registry.register(spec, &audit).await?;
    let timeouts = api.registry.timeouts();
    Ok(Json(json!({
        "revision": revision,
        "beat_interval_ms": timeouts.interval.as_millis() as u64,
    })))
}

#[derive(Deserialize)]
pub struct UpdateBody {
    weight: Option<f64>,
    enabled: Option<bool>,
    metadata: Option<Metadata>,
}

pub async fn update_instance(
    State(api): State<ApiState>,
    crate::audit::Audited(audit): crate::audit::Audited,
    path: Result<Path<Vec<String>>, PathRejection>,
    params: Params,
    ApiJson(body): ApiJson<UpdateBody>,
) -> Result<Json<RevisionJson>, ApiError> {
    let (id, rest) = service_id(path, &params)?;
    let addr = instance_addr(&rest, &params)?;
    let patch = InstancePatch { weight: body.weight, enabled: body.enabled, metadata: body.metadata };
    let revision = api.registry.update_instance(&id, &addr, patch, &audit).await?;
    Ok(Json(RevisionJson { revision }))
}

pub async fn deregister(
    State(api): State<ApiState>,
    crate::audit::Audited(audit): crate::audit::Audited,
    path: Result<Path<Vec<String>>, PathRejection>,
    params: Params,
) -> Result<Json<RevisionJson>, ApiError> {
    let (id, rest) = service_id(path, &params)?;
    let addr = instance_addr(&rest, &params)?;
    match api.registry.deregister(&id, &addr, &audit).await? {
        Some(revision) => Ok(Json(RevisionJson { revision })),
        None => Err(ApiError::not_found(format!(
            "instance {} (cluster {}) of service {id} is not registered",
            addr.socket(),
            addr.cluster
        ))),
    }
}

pub async fn beat(
    State(api): State<ApiState>,
    path: Result<Path<Vec<String>>, PathRejection>,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    let (id, rest) = service_id(path, &params)?;
    let addr = instance_addr(&rest, &params)?;
    let timeouts = api.registry.beat(&id, &addr, None, &sb_audit::Audit::default()).await?;
    Ok(Json(json!({
        "beat_interval_ms": timeouts.interval.as_millis() as u64,
        "unhealthy_after_ms": timeouts.unhealthy_after.as_millis() as u64,
        "delete_after_ms": timeouts.delete_after.as_millis() as u64,
    })))
}

#[derive(Deserialize, Default)]
pub struct DrainBody {
    delay_secs: Option<u64>,
}

pub async fn drain(
    State(api): State<ApiState>,
    crate::audit::Audited(audit): crate::audit::Audited,
    path: Result<Path<Vec<String>>, PathRejection>,
    params: Params,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let (id, rest) = service_id(path, &params)?;
    let addr = instance_addr(&rest, &params)?;
    let body: DrainBody = if body.is_empty() {
        DrainBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid("body", format!("request body is not the expected JSON: {e}")))?
    };
    let delay_secs = body.delay_secs.unwrap_or(30);
    if delay_secs > 3600 {
        return Err(ApiError::invalid("delay_secs", format!("delay_secs is {delay_secs}, limit is 3600")));
    }
    let revision = api.registry.drain(&id, &addr, Duration::from_secs(delay_secs), &audit).await?;
    Ok(Json(json!({"revision": revision, "delete_after_secs": delay_secs})))
}

fn service_json(api: &ApiState, id: &ServiceId) -> Option<Value> {
    let snapshot = api.registry.snapshot();
    let service = snapshot.service(id)?;
    let selection = sb_registry::query::select(Some(service), &InstanceQuery::default());
    let healthy = service.instances.values().filter(|i| i.record.healthy).count();
    let record = service.record.as_ref().map(|r| r.record.clone()).unwrap_or_default();
    Some(json!({
        "namespace": id.namespace,
        "group": id.group,
        "service": id.service,
        "protect_threshold": record.protect_threshold,
        "metadata": record.metadata,
        "revision": service.changed_revision,
        "instance_count": service.instances.len(),
        "healthy_count": healthy,
        "reach_protection_threshold": selection.reach_protection_threshold,
    }))
}

pub async fn get_service(
    State(api): State<ApiState>,
    path: Result<Path<Vec<String>>, PathRejection>,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    let (id, _) = service_id(path, &params)?;
    service_json(&api, &id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("service {id} does not exist")))
}

#[derive(Deserialize)]
pub struct ServiceBody {
    #[serde(default)]
    protect_threshold: f64,
    #[serde(default)]
    metadata: Metadata,
}

pub async fn put_service(
    State(api): State<ApiState>,
    crate::audit::Audited(audit): crate::audit::Audited,
    path: Result<Path<Vec<String>>, PathRejection>,
    params: Params,
    ApiJson(body): ApiJson<ServiceBody>,
) -> Result<Json<RevisionJson>, ApiError> {
    let (id, _) = service_id(path, &params)?;
    let record = ServiceRecord { protect_threshold: body.protect_threshold, metadata: body.metadata };
    let revision = api.registry.put_service(&id, record, &audit).await?;
    Ok(Json(RevisionJson { revision }))
}

pub async fn delete_service(
    State(api): State<ApiState>,
    crate::audit::Audited(audit): crate::audit::Audited,
    path: Result<Path<Vec<String>>, PathRejection>,
    params: Params,
) -> Result<Json<RevisionJson>, ApiError> {
    let (id, _) = service_id(path, &params)?;
    let revision = api.registry.delete_service(&id, &audit).await?;
    Ok(Json(RevisionJson { revision }))
}

/// `GET /api/v1/namespaces/{ns}/services`: paged (`page` from 1, `page_size` up to
/// 1000), optionally one `group`.
pub async fn list_services(
    State(api): State<ApiState>,
    Path(ns): Path<String>,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    let ns = if ns.is_empty() { sb_registry::DEFAULT_NAMESPACE.to_owned() } else { ns };
    sb_registry::names::check_name("namespace", &ns)?;
    let page = params.parse::<usize>("page", "a page number from 1")?.unwrap_or(1).max(1);
    let page_size = params.parse::<usize>("page_size", "a page size")?.unwrap_or(100);
    if page_size == 0 || page_size > MAX_PAGE_SIZE {
        return Err(ApiError::invalid(
            "page_size",
            format!("page_size is {page_size}, expected 1 to {MAX_PAGE_SIZE}"),
        ));
    }
    let snapshot = api.registry.snapshot();
    let all: Vec<_> = snapshot.services_in(&ns, params.get("group")).collect();
    let services: Vec<Value> = all
        .iter()
        .skip((page - 1) * page_size)
        .take(page_size)
        .map(|(id, s)| {
            json!({
                "group": id.group,
                "service": id.service,
                "instance_count": s.instances.len(),
                "healthy_count": s.instances.values().filter(|i| i.record.healthy).count(),
                "revision": s.changed_revision,
            })
        })
        .collect();
    Ok(Json(json!({"namespace": ns, "count": all.len(), "page": page, "services": services})))
}

/// `GET …/services/{service}/watch`: Server-Sent Events, one `instances` event (the list's
/// JSON, `id:` its revision) now and after every change, until the server stops.
pub async fn watch(
    State(api): State<ApiState>,
    path: Result<Path<Vec<String>>, PathRejection>,
    params: Params,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let (id, _) = service_id(path, &params)?;
    let query = query(&params)?;
    api.metrics.sse_streams.inc();
    let guard = StreamGuard(api.clone());
    let state = (guard, id, query, None::<i64>);
    let events = stream::unfold(state, |(guard, id, query, last)| async move {
        let api = guard.0.clone();
        let since = match last {
            None => None,
            Some(since) => {
                let mut shutdown = api.shutdown.clone();
                if *shutdown.borrow() {
                    return None;
                }
                tokio::select! {
                    revision = api.registry.wait_for_change(&id, since, Duration::from_secs(MAX_WAIT_SECS)) => Some(revision),
                    _ = shutdown.wait_for(|stop| *stop) => return None,
                }
            }
        };
        let selection = api.registry.instances(&id, &query);
        if since.is_some() && Some(selection.changed_revision) == last {
            // A timeout with no change: a comment line keeps the stream alive.
            return Some((Ok(Event::default().comment("no change")), (guard, id, query, last)));
        }
        let data = instances_json(&id, &selection).to_string();
        let event = Event::default().event("instances").id(selection.changed_revision.to_string()).data(data);
        Some((Ok(event), (guard, id, query, Some(selection.changed_revision))))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

struct StreamGuard(ApiState);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.metrics.sse_streams.dec();
    }
}
