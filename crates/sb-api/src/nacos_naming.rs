//! Nacos 1.x naming compat (`/nacos/v1/ns/…`): the Open API's parameters in, Nacos's
//! shapes and codes out, over the same `sb_registry::Registry` as the native API.
//!
//! - `serviceName` may carry `group@@service` (it wins over `groupName`); an absent or
//!   empty `namespaceId` means `public`.
//! - `instance/list` lists enabled instances only and, once the protection threshold is
//!   reached, serves every instance as `healthy: true`, as Nacos does.
//! - `instance/beat`: a full beat (`beat=` JSON) for an unknown instance registers it; a
//!   light beat for one answers code 20404 so the client registers again; otherwise 10200
//!   with `clientBeatInterval` and `lightBeatEnabled`.
//! - A subscriber passing `clientIP` and `udpPort` to `instance/list` gets UDP pushes
//!   (`nacos_push`).

use axum::extract::{ConnectInfo, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sb_registry::model::parse_metadata;
use sb_registry::{
    InstanceAddr, InstancePatch, InstanceQuery, InstanceSpec, RegistryError, Selection, ServiceId,
    ServiceRecord, DEFAULT_CLUSTER,
};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ErrorKind};
use crate::nacos::{NacosError, NacosParams, NacosResult};
use crate::nacos_list_cache::{ListKey, ListParts, NacosListCache};
use crate::ApiState;

/// Nacos's naming response codes.
pub const CODE_OK: i64 = 10200;
pub const CODE_RESOURCE_NOT_FOUND: i64 = 20404;
/// How long clients cache a list: Nacos's `defaultCacheMillis`, and its
/// `defaultPushCacheMillis` for a subscriber that receives UDP pushes.
pub const CACHE_MILLIS: u64 = 3000;
pub const PUSH_CACHE_MILLIS: u64 = 10_000;

/// A registry error in Nacos's shape: a plain-text `caused: …;` with Nacos's status (an
/// argument, a conflict or a missing service is a 400 there).
fn nacos_error(error: RegistryError) -> NacosError {
    let api = ApiError::from(error);
    let kind = match api.kind {
        ErrorKind::Conflict | ErrorKind::NotFound => ErrorKind::InvalidArgument,
        other => other,
    };
    NacosError(ApiError { kind, message: format!("caused: {};", api.message), ..api })
}

fn ok() -> Response {
    ([(CONTENT_TYPE, "text/plain;charset=UTF-8")], "ok").into_response()
}

fn service_id(params: &NacosParams) -> NacosResult<ServiceId> {
    let name = params.required("serviceName")?;
    ServiceId::from_grouped(params.namespace("namespaceId"), params.get("groupName").unwrap_or(""), name)
        .map_err(nacos_error)
}

fn port(params: &NacosParams) -> NacosResult<i64> {
    params
        .parse::<i64>("port", "a port number")?
        .ok_or_else(|| NacosError(ApiError::invalid("port", "caused: Param 'port' is required.;")))
}

fn cluster(params: &NacosParams) -> &str {
    params.get("clusterName").or_else(|| params.get("cluster")).unwrap_or(DEFAULT_CLUSTER)
}

fn addr(params: &NacosParams) -> NacosResult<InstanceAddr> {
    InstanceAddr::parse(cluster(params), params.required("ip")?, port(params)?).map_err(nacos_error)
}

/// `enabled`, or the Python SDK's `enable`; absent means true.
fn enabled(params: &NacosParams) -> Option<bool> {
    params.flag("enabled").or_else(|| params.flag("enable"))
}

fn metadata(params: &NacosParams) -> NacosResult<Option<sb_registry::Metadata>> {
    params.get("metadata").map(parse_metadata).transpose().map_err(nacos_error)
}

fn spec(params: &NacosParams) -> NacosResult<InstanceSpec> {
    let mut spec = InstanceSpec::new(service_id(params)?, addr(params)?);
    spec.weight = params.parse::<f64>("weight", "a number")?.unwrap_or(1.0);
    spec.enabled = enabled(params).unwrap_or(true);
    spec.healthy = params.flag("healthy").unwrap_or(true);
    spec.ephemeral = params.flag("ephemeral").unwrap_or(true);
    spec.metadata = metadata(params)?.unwrap_or_default();
    // Nacos's default for a persistent instance: a TCP check on its port, derived (not
    // stored) by `sb_health::effective_check`, below its cluster's health-checker settings.
    spec.default_check = !spec.ephemeral;
    Ok(spec)
}

/// `POST /nacos/v1/ns/instance`
pub async fn register(
    State(api): State<ApiState>,
    crate::audit::Audited(audit): crate::audit::Audited,
    params: NacosParams,
) -> NacosResult<Response> {
    api.registry.register(spec(&params)?, &audit).await.map_err(nacos_error)?;
    Ok(ok())
}

/// `PUT /nacos/v1/ns/instance`
pub async fn update(
    State(api): State<ApiState>,
    crate::audit::Audited(audit): crate::audit::Audited,
    params: NacosParams,
) -> NacosResult<Response> {
    let id = service_id(&params)?;
    let addr = addr(&params)?;
    let patch = InstancePatch {
        weight: params.parse::<f64>("weight", "a number")?,
        enabled: enabled(&params),
        metadata: metadata(&params)?,
    };
    api.registry.update_instance(&id, &addr, patch, &audit).await.map_err(nacos_error)?;
    Ok(ok())
}

/// `DELETE /nacos/v1/ns/instance`: `ok` whether or not it was registered, as Nacos.
pub async fn deregister(
    State(api): State<ApiState>,
    crate::audit::Audited(audit): crate::audit::Audited,
    params: NacosParams,
) -> NacosResult<Response> {
    let id = service_id(&params)?;
    let addr = addr(&params)?;
    api.registry.deregister(&id, &addr, &audit).await.map_err(nacos_error)?;
    Ok(ok())
}

fn instance_id(id: &ServiceId, addr: &InstanceAddr) -> String {
    format!("{}#{}#{}#{}", addr.ip, addr.port, addr.cluster, id.grouped_name())
}

/// `GET /nacos/v1/ns/instance`
pub async fn get(State(api): State<ApiState>, params: NacosParams) -> NacosResult<Json<Value>> {
    let id = service_id(&params)?;
    let addr = addr(&params)?;
    let snapshot = api.registry.snapshot();
    let Some(instance) = snapshot.instance(&id, &addr) else {
        return Err(NacosError(ApiError::not_found(format!(
            "caused: no matched ip found: {} in service {};",
            addr.socket(),
            id.grouped_name()
        ))));
    };
    let timeouts = api.registry.timeouts().for_metadata(&instance.record.metadata);
    Ok(Json(json!({
        "service": id.grouped_name(),
        "ip": addr.ip.to_string(),
        "port": addr.port,
        "clusterName": addr.cluster,
        "weight": instance.record.weight,
        "healthy": instance.record.healthy,
        "enabled": instance.record.enabled,
        "ephemeral": instance.record.ephemeral,
        "instanceId": instance_id(&id, &addr),
        "metadata": instance.record.metadata,
        "instanceHeartBeatInterval": timeouts.interval.as_millis() as u64,
        "instanceHeartBeatTimeOut": timeouts.unhealthy_after.as_millis() as u64,
        "ipDeleteTimeout": timeouts.delete_after.as_millis() as u64,
    })))
}

/// One host of an `instance/list` answer (keys in the order `json!` used to give them).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HostJson<'a> {
    cluster_name: &'a str,
    enabled: bool,
    ephemeral: bool,
    healthy: bool,
    instance_heart_beat_interval: u64,
    #[serde(rename = "instanceHeartBeatTimeOut")]
    instance_heart_beat_timeout: u64,
    instance_id: InstanceIdJson<'a>,
    instance_id_generator: &'static str,
    ip: &'a std::net::IpAddr,
    ip_delete_timeout: u64,
    metadata: &'a sb_registry::Metadata,
    port: u16,
    service_name: &'a str,
    weight: f64,
}

/// Nacos's instance id, `ip#port#cluster#group@@service`, written without a temporary.
struct InstanceIdJson<'a> {
    addr: &'a InstanceAddr,
    grouped: &'a str,
}

impl Serialize for InstanceIdJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let addr = self.addr;
        serializer.collect_str(&format_args!("{}#{}#{}#{}", addr.ip, addr.port, addr.cluster, self.grouped))
    }
}

/// The `instance/list` answer (Nacos's `ServiceInfo`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceInfoJson<'a> {
    #[serde(rename = "allIPs")]
    all_ips: bool,
    cache_millis: u64,
    checksum: String,
    clusters: &'a str,
    group_name: &'a str,
    hosts: Vec<HostJson<'a>>,
    last_ref_time: u64,
    name: &'a str,
    reach_protection_threshold: bool,
    valid: bool,
}

/// The `instance/list` body, also what a UDP push carries, with `"lastRefTime":0` for the
/// caller to splice the time into. Serialized straight from borrowed fields: a list of
/// hundreds of hosts is rendered on every change of its service, for polls and pushes.
pub fn render_service_info(
    registry: &sb_registry::Registry,
    id: &ServiceId,
    clusters: &str,
    selection: &Selection,
    cache_millis: u64,
) -> String {
    let grouped = id.grouped_name();
    let defaults = registry.timeouts();
    let hosts: Vec<HostJson<'_>> = selection
        .instances
        .iter()
        .map(|s| {
            let i = &s.entry;
            let timeouts = defaults.for_metadata(&i.record.metadata);
            HostJson {
                cluster_name: &i.addr.cluster,
                enabled: i.record.enabled,
                ephemeral: i.record.ephemeral,
                healthy: s.served_healthy,
                instance_heart_beat_interval: timeouts.interval.as_millis() as u64,
                instance_heart_beat_timeout: timeouts.unhealthy_after.as_millis() as u64,
                instance_id: InstanceIdJson { addr: &i.addr, grouped: &grouped },
                instance_id_generator: "simple",
                ip: &i.addr.ip,
                ip_delete_timeout: timeouts.delete_after.as_millis() as u64,
                metadata: &i.record.metadata,
                port: i.addr.port,
                service_name: &grouped,
                weight: i.record.weight,
            }
        })
        .collect();
    // The service's last-change revision fixes its content: hashing it with the query is
    // as good as hashing the hosts, and costs nothing per host.
    let mut digest = Sha256::new();
    digest.update(
        format!(
            "{grouped}|{clusters}|{}|{}|{}",
            selection.changed_revision,
            selection.reach_protection_threshold,
            hosts.len()
        )
        .as_bytes(),
    );
    let info = ServiceInfoJson {
        all_ips: false,
        cache_millis,
        checksum: hex::encode(&digest.finalize()[..16]),
        clusters,
        group_name: &id.group,
        hosts,
        last_ref_time: 0,
        name: &grouped,
        reach_protection_threshold: selection.reach_protection_threshold,
        valid: true,
    };
    serde_json::to_string(&info).expect("strings, numbers and string maps always serialize to JSON")
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn list_query(clusters: &str, healthy_only: bool) -> InstanceQuery {
    InstanceQuery {
        clusters: clusters.split(',').filter(|c| !c.is_empty()).map(str::to_owned).collect(),
        healthy_only,
        enabled_only: true,
    }
}

/// `GET /nacos/v1/ns/instance/list`
pub async fn list(
    State(api): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    params: NacosParams,
) -> NacosResult<Response> {
    let id = service_id(&params)?;
    let clusters = params.get("clusters").unwrap_or("");
    let healthy_only = params.flag("healthyOnly").unwrap_or(false);
    let udp_port = params.parse::<u16>("udpPort", "a UDP port")?.filter(|p| *p > 0);
    let cache_millis = match udp_port {
        Some(port) => {
            let ip = match params.get("clientIP").map(str::parse::<std::net::IpAddr>) {
                Some(Ok(ip)) => ip,
                Some(Err(_)) => {
                    return Err(NacosError(ApiError::invalid(
                        "clientIP",
                        "caused: Param 'clientIP' is not an IP;",
                    )))
                }
                None => peer.ip(),
            };
            api.naming_push.subscribe(
                id.clone(),
                clusters.to_owned(),
                healthy_only,
                std::net::SocketAddr::new(ip, port),
            );
            PUSH_CACHE_MILLIS
        }
        None => CACHE_MILLIS,
    };
    let key = ListKey { id, clusters: clusters.to_owned(), healthy_only, cache_millis };
    let body = list_parts(&api.registry, &api.nacos_lists, &key).into_body(now_ms());
    Ok(([(CONTENT_TYPE, "application/json")], body).into_response())
}

/// The `instance/list` answer for `key`, rendered once per service revision (shared by
/// polls and UDP pushes); the current `lastRefTime` is spliced in when it is sent.
pub(crate) fn list_parts(
    registry: &sb_registry::Registry,
    lists: &NacosListCache,
    key: &ListKey,
) -> ListParts {
    let snapshot = registry.snapshot();
    let revision = (snapshot.generation, snapshot.service(&key.id).map_or(0, |s| s.changed_revision));
    drop(snapshot);
    let render = || {
        let selection = registry.instances(&key.id, &list_query(&key.clusters, key.healthy_only));
        render_service_info(registry, &key.id, &key.clusters, &selection, key.cache_millis)
    };
    lists.answer(key, revision, render)
}

/// `PUT /nacos/v1/ns/instance/beat`
pub async fn beat(
    State(api): State<ApiState>,
    crate::audit::Audited(audit): crate::audit::Audited,
    params: NacosParams,
) -> NacosResult<Json<Value>> {
    let id = service_id(&params)?;
    let beat: Option<Value> = match params.get("beat") {
        Some(text) => Some(serde_json::from_str(text).map_err(|e| {
            NacosError(ApiError::invalid("beat", format!("caused: Param 'beat' is not JSON: {e};")))
        })?),
        None => None,
    };
    let field = |name: &str| beat.as_ref().and_then(|b| b.get(name)).filter(|v| !v.is_null());
    let cluster = params
        .get("clusterName")
        .or_else(|| field("cluster").and_then(Value::as_str).filter(|c| !c.is_empty()))
        .unwrap_or(DEFAULT_CLUSTER);
    let ip = params
        .get("ip")
        .or_else(|| field("ip").and_then(Value::as_str))
        .ok_or_else(|| NacosError(ApiError::invalid("ip", "caused: Param 'ip' is required.;")))?;
    let port = match params.parse::<i64>("port", "a port number")? {
        Some(port) => port,
        None => field("port")
            .and_then(Value::as_i64)
            .ok_or_else(|| NacosError(ApiError::invalid("port", "caused: Param 'port' is required.;")))?,
    };
    let addr = InstanceAddr::parse(cluster, ip, port).map_err(nacos_error)?;
    let full = match &beat {
        Some(_) => {
            let mut spec = InstanceSpec::new(id.clone(), addr.clone());
            spec.weight = field("weight").and_then(Value::as_f64).unwrap_or(1.0);
            if let Some(Value::Object(map)) = field("metadata") {
                spec.metadata = map
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
                    .collect();
            }
            Some(spec)
        }
        None => None,
    };
    let default_interval = api.registry.timeouts().interval.as_millis() as u64;
    match api.registry.beat(&id, &addr, full, &audit).await {
        Ok(timeouts) => Ok(Json(json!({
            "clientBeatInterval": timeouts.interval.as_millis() as u64,
            "code": CODE_OK,
            "lightBeatEnabled": true,
        }))),
        Err(RegistryError::UnknownInstance(_)) => {
            Ok(Json(json!({"clientBeatInterval": default_interval, "code": CODE_RESOURCE_NOT_FOUND})))
        }
        Err(error) => Err(nacos_error(error)),
    }
}

fn threshold(params: &NacosParams) -> NacosResult<Option<f64>> {
    params.parse::<f64>("protectThreshold", "a number from 0 to 1")
}

/// `POST /nacos/v1/ns/service`
pub async fn create_service(
    State(api): State<ApiState>,
    crate::audit::Audited(audit): crate::audit::Audited,
    params: NacosParams,
) -> NacosResult<Response> {
    let id = service_id(&params)?;
    let record = ServiceRecord {
        protect_threshold: threshold(&params)?.unwrap_or(0.0),
        metadata: metadata(&params)?.unwrap_or_default(),
    };
    api.registry.create_service(&id, record, &audit).await.map_err(nacos_error)?;
    Ok(ok())
}

/// `PUT /nacos/v1/ns/service`
pub async fn update_service(
    State(api): State<ApiState>,
    crate::audit::Audited(audit): crate::audit::Audited,
    params: NacosParams,
) -> NacosResult<Response> {
    let id = service_id(&params)?;
    api.registry
        .update_service(&id, threshold(&params)?, metadata(&params)?, &audit)
        .await
        .map_err(nacos_error)?;
    Ok(ok())
}

/// `DELETE /nacos/v1/ns/service`
pub async fn delete_service(
    State(api): State<ApiState>,
    crate::audit::Audited(audit): crate::audit::Audited,
    params: NacosParams,
) -> NacosResult<Response> {
    let id = service_id(&params)?;
    api.registry.delete_service(&id, &audit).await.map_err(nacos_error)?;
    Ok(ok())
}

/// `GET /nacos/v1/ns/service`
pub async fn get_service(State(api): State<ApiState>, params: NacosParams) -> NacosResult<Json<Value>> {
    let id = service_id(&params)?;
    let snapshot = api.registry.snapshot();
    let Some(service) = snapshot.service(&id) else {
        return Err(NacosError(ApiError::invalid(
            "serviceName",
            format!("caused: service {} is not found!;", id.grouped_name()),
        )));
    };
    let record = service.record.as_ref().map(|r| r.record.clone()).unwrap_or_default();
    // The instances' clusters, and those with health-checker settings but no instance yet.
    let with_settings = api.health.clusters_of(&id);
    let mut clusters: Vec<&str> = service.instances.keys().map(|a| a.cluster.as_str()).collect();
    clusters.extend(with_settings.iter().map(String::as_str));
    clusters.sort_unstable();
    clusters.dedup();
    let clusters: Vec<Value> = clusters
        .into_iter()
        .map(|name| match api.health.cluster(&id, name) {
            Some(settings) => json!({
                "name": name,
                "healthChecker": settings.nacos_health_checker(),
                "checkPort": settings.check_port,
                "useIPPort4Check": settings.use_instance_port,
                "metadata": settings.metadata,
            }),
            // Nacos's default for a cluster with no settings: a TCP checker on the instances' ports.
            None => json!({"name": name, "healthChecker": {"type": "TCP"}, "checkPort": 80,
                           "useIPPort4Check": true, "metadata": {}}),
        })
        .collect();
    Ok(Json(json!({
        "namespaceId": id.namespace,
        "groupName": id.group,
        "name": id.service,
        "protectThreshold": record.protect_threshold,
        "metadata": record.metadata,
        "selector": {"type": "none"},
        "clusters": clusters,
    })))
}

/// `PUT /nacos/v1/ns/cluster`: a cluster's health-checker settings (`healthChecker` JSON of
/// type TCP, HTTP or NONE, `checkPort`, `useInstancePort4Check`, `metadata`), mapped onto
/// active health checks by `sb_health::ClusterCheck::from_nacos`.
pub async fn update_cluster(
    State(api): State<ApiState>,
    crate::audit::Audited(audit): crate::audit::Audited,
    params: NacosParams,
) -> NacosResult<Response> {
    let id = service_id(&params)?;
    let cluster = params.required("clusterName")?;
    let checker = params.required("healthChecker")?;
    let check_port = params.parse::<i64>("checkPort", "a port number")?;
    let use_instance_port = params.flag("useInstancePort4Check");
    let metadata = metadata(&params)?.unwrap_or_default();
    let settings = sb_health::ClusterCheck::from_nacos(
        checker,
        check_port,
        use_instance_port,
        metadata,
        api.health.nacos_interval_ms(),
    )
    .map_err(|e| NacosError(ApiError::invalid(e.field, format!("caused: {};", e.message))))?;
    api.health.put_cluster(&id, cluster, &settings, &audit).await.map_err(nacos_error)?;
    Ok(ok())
}

/// `PUT /nacos/v1/ns/health/instance` (and `/nacos/v1/ns/health`): a persistent instance's
/// health by hand (`healthy`, or the older `valid`), only while nothing probes it (its
/// cluster's checker is `NONE`), as in Nacos; the rule is `sb_health::HealthChecks::set_health`.
pub async fn update_health(
    State(api): State<ApiState>,
    crate::audit::Audited(audit): crate::audit::Audited,
    params: NacosParams,
) -> NacosResult<Response> {
    let healthy = params
        .flag("healthy")
        .or_else(|| params.flag("valid"))
        .ok_or_else(|| NacosError(ApiError::invalid("healthy", "caused: Param 'healthy' is required.;")))?;
    let id = service_id(&params)?;
    let addr = addr(&params)?;
    api.health.set_health(&id, &addr, healthy, &audit).await.map_err(nacos_error)?;
    Ok(ok())
}

/// `GET /nacos/v1/ns/service/list`: `{"count":n,"doms":[…]}`, one page of service names.
pub async fn list_services(State(api): State<ApiState>, params: NacosParams) -> NacosResult<Json<Value>> {
    let page_no = params.parse::<usize>("pageNo", "a page number")?.unwrap_or(1).max(1);
    let page_size = params.parse::<usize>("pageSize", "a page size")?.unwrap_or(10).clamp(1, 10_000);
    let namespace = params.namespace("namespaceId");
    let group = params.get("groupName").unwrap_or(sb_registry::DEFAULT_GROUP);
    let snapshot = api.registry.snapshot();
    let names: Vec<&str> =
        snapshot.services_in(namespace, Some(group)).map(|(id, _)| id.service.as_str()).collect();
    let doms: Vec<&str> = names.iter().skip((page_no - 1) * page_size).take(page_size).copied().collect();
    Ok(Json(json!({"count": names.len(), "doms": doms})))
}

/// `GET /nacos/v1/ns/operator/switches`: the settings SDKs read at start.
pub async fn switches(State(api): State<ApiState>) -> Json<Value> {
    let timeouts = api.registry.timeouts();
    Json(json!({
        "name": "00-00---000-NACOS_SWITCH_DOMAIN-000---00-00",
        "clientBeatInterval": timeouts.interval.as_millis() as u64,
        "defaultCacheMillis": CACHE_MILLIS,
        "defaultPushCacheMillis": PUSH_CACHE_MILLIS,
        "lightBeatEnabled": true,
        "pushEnabled": true,
        "healthCheckEnabled": true,
        "defaultInstanceEphemeral": true,
        "distroEnabled": false,
        "enableStandalone": true,
        "enableAuthentication": true,
    }))
}

/// `GET /nacos/v1/ns/operator/metrics`: the SDKs' server health check reads `status`.
pub async fn metrics(State(api): State<ApiState>) -> Json<Value> {
    let snapshot = api.registry.snapshot();
    Json(json!({
        "status": "UP",
        "serviceCount": snapshot.services.len(),
        "instanceCount": snapshot.instance_count,
        "subscribeCount": api.naming_push.subscriber_count(),
        "responsibleServiceCount": snapshot.services.len(),
        "responsibleInstanceCount": api.registry.tracked_beats(),
        "clientCount": api.naming_push.subscriber_count(),
    }))
}
