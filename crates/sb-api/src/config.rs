//! The native config API (`/api/v1/namespaces/{ns}/configs/…`): a thin translator over
//! `sb_config::ConfigService`. Current reads come from the config view; history, diff and
//! rollback go through the service; writes answer once the local view has applied them.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::stream::{self, Stream};
use sb_config::{
    check_namespace, parse_ips, parse_labels, ConfigChange, ConfigChanges, ConfigFormat, ConfigKey,
    ConfigSnapshot, GrayClient, GrayRequest, GraySelector, HistoryRecord, PublishOutcome, PublishRequest,
    SchemaChange,
};
use serde::Serialize;
use serde_json::Value;

use crate::audit::Audited;
use crate::auth::Subject;
use crate::error::{human_bytes, ApiError, ErrorKind};
use crate::extract::{if_match_revision, Params};
use crate::middleware::RequestContext;
use crate::ApiState;

/// The header a client sends its gray-release labels in: `env=canary,zone=a`.
pub const LABELS_HEADER: &str = "x-switchboard-labels";

const KEEP_ALIVE: Duration = Duration::from_secs(15);
const DEFAULT_PAGE_SIZE: usize = 20;
const MAX_PAGE_SIZE: usize = 100;

#[derive(Serialize)]
pub(crate) struct ItemJson {
    namespace: String,
    group: String,
    data_id: String,
    format: ConfigFormat,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<String>,
    md5: String,
    size: usize,
    /// The revision of the publish.
    version: i64,
    created_version: i64,
    description: String,
    tags: Vec<String>,
    author: String,
    created_at_ms: u64,
    modified_at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    schema: Option<Value>,
    /// This is the item's gray version, served because the caller matches its selector.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    gray: bool,
    /// The content is sealed at rest; callers who may not read secrets see it masked.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    secret: bool,
}

impl ItemJson {
    /// The item as `client` may read it (a secret opens only with [`reveal_for`]'s leave).
    pub(crate) fn new(
        snapshot: &ConfigSnapshot,
        with_content: bool,
        client: &GrayClient,
    ) -> Result<ItemJson, ApiError> {
        let item = &snapshot.item;
        let (content, md5) = snapshot.readable(client)?;
        Ok(ItemJson {
            namespace: snapshot.key.namespace.clone(),
            group: snapshot.key.group.clone(),
            data_id: snapshot.key.data_id.clone(),
            format: item.format,
            content: with_content.then_some(content),
            md5,
            size: item.size,
            version: snapshot.version,
            created_version: snapshot.created_version,
            description: item.description.clone(),
            tags: item.tags.clone(),
            author: item.author.clone(),
            created_at_ms: item.created_ms,
            modified_at_ms: item.modified_ms,
            schema: item.schema.clone(),
            gray: snapshot.gray,
            secret: item.secret,
        })
    }
}

#[derive(Serialize)]
struct HistoryJson {
    version: i64,
    entry_id: String,
    op: sb_config::HistoryOp,
    format: ConfigFormat,
    md5: String,
    size: usize,
    description: String,
    tags: Vec<String>,
    author: String,
    source_ip: String,
    at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    rolled_back_from: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    secret: bool,
}

impl HistoryJson {
    fn new(
        key: &ConfigKey,
        record: HistoryRecord,
        with_content: bool,
        client: &GrayClient,
    ) -> Result<HistoryJson, ApiError> {
        let (content, md5) = record.readable(key, client)?;
        let entry = record.entry;
        Ok(HistoryJson {
            version: record.version,
            entry_id: record.entry_id.to_string(),
            op: entry.op,
            format: entry.format,
            md5,
            size: if entry.secret { content.len() } else { entry.content.len() },
            description: entry.description,
            tags: entry.tags,
            author: entry.author,
            source_ip: entry.source_ip,
            at_ms: entry.at_ms,
            rolled_back_from: entry.rolled_back_from,
            content: with_content.then_some(content),
            secret: entry.secret,
        })
    }
}

#[derive(Serialize)]
struct PublishJson {
    namespace: String,
    group: String,
    data_id: String,
    version: i64,
    md5: String,
    created: bool,
}

/// The `{ns}` of a namespace route, checked.
fn ns_path(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(ns) =
        path.map_err(|r| ApiError::invalid("path", format!("the path is not valid: {}", r.body_text())))?;
    check_namespace(&ns)?;
    Ok(ns)
}

fn item_path(path: Result<Path<(String, String, String)>, PathRejection>) -> Result<ConfigKey, ApiError> {
    let Path((ns, group, data_id)) =
        path.map_err(|r| ApiError::invalid("path", format!("the path is not valid: {}", r.body_text())))?;
    Ok(ConfigKey::new(ns, group, data_id)?)
}

fn with_etag(mut response: Response, version: i64) -> Response {
    if let Ok(value) = HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

fn publish_response(key: &ConfigKey, outcome: PublishOutcome) -> Response {
    let json = PublishJson {
        namespace: key.namespace.clone(),
        group: key.group.clone(),
        data_id: key.data_id.clone(),
        version: outcome.version,
        md5: outcome.md5,
        created: outcome.created,
    };
    with_etag(Json(json).into_response(), outcome.version)
}

/// What lets this caller read secret configs of `namespace`: the node's master keys, when
/// the caller may read secrets (`config-secret` `read` in the namespace, through the one
/// policy check: admins and editors). Everyone else gets masked content.
pub(crate) fn reveal_for(
    api: &ApiState,
    subject: &Option<Extension<Subject>>,
    namespace: &str,
) -> Option<sb_config::Reveal> {
    let keys = api.configs.settings().keyring.clone()?;
    let subject = subject.as_ref()?;
    let resource = sb_auth::Resource { kind: sb_auth::Kind::ConfigSecret, namespace: Some(namespace) };
    api.auth.authorize(subject, sb_auth::Action::Read, resource).then(|| sb_config::Reveal(keys))
}

/// The caller as gray release sees it: its IP (after `--trusted-proxies`) and its labels.
fn gray_client(
    context: &Option<Extension<RequestContext>>,
    headers: &HeaderMap,
) -> Result<GrayClient, ApiError> {
    let ip = context.as_ref().and_then(|c| c.client);
    let labels = match headers.get(LABELS_HEADER) {
        None => Default::default(),
        Some(value) => {
            let text = value.to_str().map_err(|_| {
                ApiError::invalid("X-Switchboard-Labels", "X-Switchboard-Labels is not visible ASCII")
            })?;
            parse_labels(text).map_err(|e| ApiError::invalid("X-Switchboard-Labels", e.to_string()))?
        }
    };
    Ok(GrayClient { ip, labels, reveal: None })
}

pub async fn list(
    State(api): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    params: Params,
    subject: Option<Extension<Subject>>,
) -> Result<Response, ApiError> {
    let ns = ns_path(path)?;
    let revision = api.configs.view().revision();
    let state = api.configs.view().snapshot();
    let client = GrayClient::default().with_reveal(reveal_for(&api, &subject, &ns));
    let items: Vec<ItemJson> = state
        .list(&ns, params.get("group").filter(|g| !g.is_empty()))
        .iter()
        .map(|s| ItemJson::new(s, false, &client))
        .collect::<Result<_, _>>()?;
    Ok(Json(serde_json::json!({"revision": revision, "items": items})).into_response())
}

pub async fn get(
    State(api): State<ApiState>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    context: Option<Extension<RequestContext>>,
    subject: Option<Extension<Subject>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = item_path(path)?;
    let client = gray_client(&context, &headers)?.with_reveal(reveal_for(&api, &subject, &key.namespace));
    let snapshot = api
        .configs
        .view()
        .snapshot()
        .get_for(&key, &client)
        .ok_or_else(|| ApiError::not_found(format!("config {key} not found")))?;
    Ok(with_etag(Json(ItemJson::new(&snapshot, true, &client)?).into_response(), snapshot.version))
}

/// Reads a JSON body of at most the content limit plus room for metadata; a larger one is
/// a 413 naming the flag.
async fn read_body(api: &ApiState, body: Body) -> Result<serde_json::Map<String, Value>, ApiError> {
    let limit = api.configs.settings().max_content_bytes;
    // JSON escaping can double content; metadata and a schema get 64 KiB more.
    let body_limit = limit.saturating_mul(2).saturating_add(64 * 1024);
    let bytes = axum::body::to_bytes(body, body_limit).await.map_err(|_| {
        ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!(
                "the request body is over {}, the limit for a config limit of {} (set --config-max-bytes)",
                human_bytes(body_limit),
                human_bytes(limit)
            ),
        )
        .with_field("content")
    })?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::invalid("body", "the request body must be a JSON object")),
        Err(e) => Err(ApiError::invalid("body", format!("request body is not valid JSON: {e}"))),
    }
}

fn string_field(
    body: &serde_json::Map<String, Value>,
    name: &'static str,
) -> Result<Option<String>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ApiError::invalid(name, format!("{name} must be a string, got {other}"))),
    }
}

pub async fn publish(
    State(api): State<ApiState>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    Audited(audit): Audited,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = item_path(path)?;
    let if_match = if_match_revision(&headers)?;
    let body = read_body(&api, body).await?;
    let content =
        string_field(&body, "content")?.ok_or_else(|| ApiError::invalid("content", "content is required"))?;
    let format = match string_field(&body, "format")? {
        Some(name) => ConfigFormat::parse(&name)?,
        None => api.configs.get(&key).map_or(ConfigFormat::Text, |s| s.item.format),
    };
    let tags = match body.get("tags") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|t| t.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| ApiError::invalid("tags", "tags must be an array of strings"))?,
        ),
        Some(other) => {
            return Err(ApiError::invalid("tags", format!("tags must be an array of strings, got {other}")))
        }
    };
    let schema = match body.get("schema") {
        None => SchemaChange::Keep,
        Some(Value::Null) => SchemaChange::Clear,
        Some(schema) => SchemaChange::Set(schema.clone()),
    };
    let request = PublishRequest {
        content,
        format,
        description: string_field(&body, "description")?,
        tags,
        app_name: None,
        author: audit.actor.clone(),
        source_ip: audit.source_ip.clone(),
        if_match,
        schema,
        secret: match body.get("secret") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(secret)) => Some(*secret),
            Some(other) => {
                return Err(ApiError::invalid("secret", format!("secret must be true or false, got {other}")))
            }
        },
    };
    let outcome = api.configs.publish(&key, request, &audit).await?;
    Ok(publish_response(&key, outcome))
}

pub async fn delete(
    State(api): State<ApiState>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    Audited(audit): Audited,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = item_path(path)?;
    let if_match = if_match_revision(&headers)?;
    match api.configs.delete(&key, if_match, &audit).await? {
        Some(revision) => Ok(Json(serde_json::json!({"revision": revision, "deleted": 1})).into_response()),
        None => Err(ApiError::not_found(format!("config {key} not found"))),
    }
}

pub async fn history(
    State(api): State<ApiState>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    params: Params,
    subject: Option<Extension<Subject>>,
) -> Result<Response, ApiError> {
    let key = item_path(path)?;
    let client = GrayClient::default().with_reveal(reveal_for(&api, &subject, &key.namespace));
    let page: usize = params.parse("page", "a page number from 1")?.unwrap_or(1).max(1);
    let page_size: usize = params.parse("page_size", "a page size")?.unwrap_or(DEFAULT_PAGE_SIZE);
    if page_size == 0 || page_size > MAX_PAGE_SIZE {
        return Err(ApiError::invalid(
            "page_size",
            format!("page_size is {page_size}, expected 1 to {MAX_PAGE_SIZE}"),
        ));
    }
    let history = api.configs.history(&key, page, page_size).await?;
    let entries: Vec<HistoryJson> = history
        .records
        .into_iter()
        .map(|r| HistoryJson::new(&key, r, false, &client))
        .collect::<Result<_, _>>()?;
    Ok(Json(serde_json::json!({
        "total": history.total, "page": page, "page_size": page_size, "entries": entries
    }))
    .into_response())
}

fn version_path(
    path: Result<Path<(String, String, String, String)>, PathRejection>,
) -> Result<(ConfigKey, i64), ApiError> {
    let Path((ns, group, data_id, version)) =
        path.map_err(|r| ApiError::invalid("path", format!("the path is not valid: {}", r.body_text())))?;
    let version = version.parse::<i64>().map_err(|_| {
        ApiError::invalid("version", format!("version is {version:?}, expected a revision number"))
    })?;
    Ok((ConfigKey::new(ns, group, data_id)?, version))
}

pub async fn history_entry(
    State(api): State<ApiState>,
    path: Result<Path<(String, String, String, String)>, PathRejection>,
    subject: Option<Extension<Subject>>,
) -> Result<Response, ApiError> {
    let (key, version) = version_path(path)?;
    let client = GrayClient::default().with_reveal(reveal_for(&api, &subject, &key.namespace));
    let record = api.configs.history_entry(&key, version).await?;
    Ok(Json(HistoryJson::new(&key, record, true, &client)?).into_response())
}

pub async fn diff(
    State(api): State<ApiState>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    params: Params,
    subject: Option<Extension<Subject>>,
) -> Result<Response, ApiError> {
    let key = item_path(path)?;
    let client = GrayClient::default().with_reveal(reveal_for(&api, &subject, &key.namespace));
    let from: i64 = params
        .parse("from", "a version (revision)")?
        .ok_or_else(|| ApiError::invalid("from", "from is required: the version to diff from"))?;
    let to: Option<i64> = params.parse("to", "a version (revision)")?;
    let diff = api.configs.diff(&key, from, to, &client).await?;
    let to = to.or_else(|| api.configs.get(&key).map(|s| s.version));
    Ok(Json(serde_json::json!({"from": from, "to": to, "diff": diff})).into_response())
}

pub async fn rollback(
    State(api): State<ApiState>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    Audited(audit): Audited,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = item_path(path)?;
    let if_match = if_match_revision(&headers)?;
    let body = read_body(&api, body).await?;
    let version = body
        .get("version")
        .and_then(Value::as_i64)
        .ok_or_else(|| ApiError::invalid("version", "version is required: the revision to roll back to"))?;
    let outcome = api.configs.rollback(&key, version, if_match, &audit).await?;
    Ok(publish_response(&key, outcome))
}

/// SSE: `publish` (the item with its content) whenever the item's md5 changes, `delete`
/// when it goes away. The current state is sent first; after a view reset the item is
/// re-checked, so no change is missed.
pub async fn watch(
    State(api): State<ApiState>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    context: Option<Extension<RequestContext>>,
    subject: Option<Extension<Subject>>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let key = item_path(path)?;
    let client = gray_client(&context, &headers)?.with_reveal(reveal_for(&api, &subject, &key.namespace));
    // Subscribe before the first read, so a change in between is not lost.
    let changes = api.configs.view().subscribe();
    api.metrics.sse_streams.inc();
    let state = WatchState { api: api.clone(), key, client, changes, last_md5: None, first: true };
    let events = stream::unfold(state, next_event);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

struct WatchState {
    api: ApiState,
    key: ConfigKey,
    client: GrayClient,
    changes: ConfigChanges,
    /// The md5 last sent: `Some("")` after a delete was sent.
    last_md5: Option<String>,
    first: bool,
}

impl Drop for WatchState {
    fn drop(&mut self) {
        self.api.metrics.sse_streams.dec();
    }
}

async fn next_event(mut state: WatchState) -> Option<(Result<Event, Infallible>, WatchState)> {
    let mut shutdown = state.api.shutdown.clone();
    loop {
        if *shutdown.borrow() {
            return None;
        }
        if !state.first {
            let batch = tokio::select! {
                batch = state.changes.next() => batch?,
                _ = shutdown.changed() => return None,
            };
            let relevant = batch.iter().any(|c| match c {
                ConfigChange::Reset => true,
                ConfigChange::Changed(key) => *key == state.key,
            });
            if !relevant {
                continue;
            }
        }
        let first = std::mem::take(&mut state.first);
        let current = state.api.configs.view().snapshot().get_for(&state.key, &state.client);
        let md5 = current.as_ref().map(|s| s.item.md5.clone()).unwrap_or_default();
        if state.last_md5.as_deref() == Some(md5.as_str()) || (first && current.is_none()) {
            state.last_md5 = Some(md5);
            continue;
        }
        state.last_md5 = Some(md5);
        let event = match current {
            Some(snapshot) => match ItemJson::new(&snapshot, true, &state.client) {
                Ok(item) => {
                    let data = serde_json::to_string(&item).unwrap_or_default();
                    Event::default().event("publish").data(data).id(snapshot.version.to_string())
                }
                Err(error) => Event::default().event("error").data(error.json_body().to_string()),
            },
            None => {
                let key = &state.key;
                let data = serde_json::json!({"namespace": key.namespace, "group": key.group, "data_id": key.data_id});
                Event::default().event("delete").data(data.to_string())
            }
        };
        return Some((Ok(event), state));
    }
}

#[derive(Serialize)]
struct GrayJson {
    namespace: String,
    group: String,
    data_id: String,
    /// The gray entry's version (in the item's history).
    version: i64,
    entry_id: String,
    selector: GraySelector,
    format: ConfigFormat,
    md5: String,
    size: usize,
    author: String,
    at_ms: u64,
    content: String,
    /// The main version the gray stands beside.
    main_version: Option<i64>,
}

pub async fn gray_get(
    State(api): State<ApiState>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    subject: Option<Extension<Subject>>,
) -> Result<Response, ApiError> {
    let key = item_path(path)?;
    let client = GrayClient::default().with_reveal(reveal_for(&api, &subject, &key.namespace));
    let state = api.configs.view().snapshot();
    let gray =
        state.gray(&key).ok_or_else(|| ApiError::not_found(format!("config {key} has no gray version")))?;
    let record = &gray.record;
    let (content, md5) = state.gray_readable(&key, &gray, &client)?;
    Ok(Json(GrayJson {
        namespace: key.namespace.clone(),
        group: key.group.clone(),
        data_id: key.data_id.clone(),
        version: gray.version,
        entry_id: record.entry.clone(),
        selector: record.selector.clone(),
        format: record.format,
        md5,
        size: record.size,
        author: record.author.clone(),
        at_ms: record.at_ms,
        content,
        main_version: state.get(&key).map(|s| s.version),
    })
    .into_response())
}

/// The selector of a gray publish: `ips` (an array or a comma-separated string) and
/// `labels` (an object or `env=canary,zone=a`).
fn selector_field(body: &serde_json::Map<String, Value>) -> Result<GraySelector, ApiError> {
    let bad = |e: sb_config::ConfigError| ApiError::from(e);
    let ips = match body.get("ips") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(text)) => parse_ips(text.split(',')).map_err(bad)?,
        Some(Value::Array(items)) => {
            let texts = items
                .iter()
                .map(Value::as_str)
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| ApiError::invalid("ips", "ips must be an array of strings"))?;
            parse_ips(texts).map_err(bad)?
        }
        Some(other) => {
            return Err(ApiError::invalid("ips", format!("ips must be an array of strings, got {other}")))
        }
    };
    let labels = match body.get("labels") {
        None | Some(Value::Null) => Default::default(),
        Some(Value::String(text)) => parse_labels(text).map_err(bad)?,
        Some(Value::Object(map)) => {
            let mut text = String::new();
            for (name, value) in map {
                let value = value.as_str().ok_or_else(|| {
                    ApiError::invalid("labels", format!("label {name:?} must have a string value"))
                })?;
                if name.contains([',', '=']) || value.contains([',', '=']) {
                    return Err(ApiError::invalid(
                        "labels",
                        format!("label {name:?}={value:?} may not contain , or ="),
                    ));
                }
                text.push_str(&format!("{name}={value},"));
            }
            parse_labels(&text).map_err(bad)?
        }
        Some(other) => {
            return Err(ApiError::invalid(
                "labels",
                format!("labels must be an object of strings, got {other}"),
            ))
        }
    };
    Ok(GraySelector { ips, labels })
}

pub async fn gray_publish(
    State(api): State<ApiState>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    Audited(audit): Audited,
    body: Body,
) -> Result<Response, ApiError> {
    let key = item_path(path)?;
    let body = read_body(&api, body).await?;
    let content =
        string_field(&body, "content")?.ok_or_else(|| ApiError::invalid("content", "content is required"))?;
    let selector = selector_field(&body)?;
    let (author, source_ip) = (audit.actor.clone(), audit.source_ip.clone());
    let outcome =
        api.configs.publish_gray(&key, GrayRequest { content, selector, author, source_ip }, &audit).await?;
    Ok(Json(serde_json::json!({
        "namespace": key.namespace, "group": key.group, "data_id": key.data_id,
        "version": outcome.version, "md5": outcome.md5, "gray": true
    }))
    .into_response())
}

pub async fn gray_abort(
    State(api): State<ApiState>,
    Audited(audit): Audited,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let key = item_path(path)?;
    let revision = api.configs.abort_gray(&key, &audit).await?;
    Ok(Json(serde_json::json!({"revision": revision, "aborted": true})).into_response())
}

pub async fn gray_promote(
    State(api): State<ApiState>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    Audited(audit): Audited,
) -> Result<Response, ApiError> {
    let key = item_path(path)?;
    let outcome = api.configs.promote_gray(&key, &audit).await?;
    Ok(publish_response(&key, outcome))
}

/// The largest import file accepted.
const MAX_IMPORT_BYTES: usize = 64 * 1024 * 1024;

pub async fn export(
    State(api): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    params: Params,
    subject: Option<Extension<Subject>>,
) -> Result<Response, ApiError> {
    let ns = ns_path(path)?;
    // Secrets stay sealed unless the caller asks for plaintext, and may have it.
    let reveal = if params.flag("plaintext")? {
        Some(reveal_for(&api, &subject, &ns).ok_or_else(|| {
            ApiError::new(
                ErrorKind::PermissionDenied,
                format!(
                    "plaintext=true exports secrets in the clear, which needs leave to read secrets in {ns}"
                ),
            )
            .with_field("plaintext")
        })?)
    } else {
        None
    };
    let doc = api.configs.export(&ns, params.get("group").filter(|g| !g.is_empty()), reveal.as_ref())?;
    let mut response = match params.get("format").unwrap_or("yaml") {
        "yaml" => {
            let mut response = doc.to_yaml()?.into_response();
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/yaml"));
            response
        }
        // Nacos's console export format: Nacos imports it, and so does `configs-import`.
        "zip" => {
            let sealed = doc.items.iter().filter(|i| i.sealed_at.is_some()).count();
            if sealed > 0 {
                return Err(ApiError::invalid(
                    "format",
                    format!(
                        "a Nacos zip cannot carry sealed secrets ({sealed} in this export): export yaml, \
                         or add plaintext=true"
                    ),
                ));
            }
            let mut response = doc.to_nacos_zip()?.into_response();
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/zip"));
            headers.insert(
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"switchboard-configs.zip\""),
            );
            response
        }
        other => {
            return Err(ApiError::invalid(
                "format",
                format!("export format {other:?} is not one of yaml, zip"),
            ))
        }
    };
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

pub async fn import(
    State(api): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    params: Params,
    Audited(audit): Audited,
    body: Body,
) -> Result<Response, ApiError> {
    let ns = ns_path(path)?;
    let policy = sb_config::ConflictPolicy::parse(params.get("policy").unwrap_or("abort"))
        .map_err(|e| ApiError::invalid("policy", e.to_string()))?;
    let progress = params.flag("progress")?;
    let bytes = axum::body::to_bytes(body, MAX_IMPORT_BYTES).await.map_err(|_| {
        ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!("the import file is over {}, the limit", human_bytes(MAX_IMPORT_BYTES)),
        )
        .with_field("file")
    })?;
    // A Nacos console export (a zip) or our own YAML export, told apart by the zip magic.
    let doc = if sb_config::is_zip(&bytes) {
        sb_config::ExportDoc::from_nacos_zip(&bytes, &ns, api.configs.settings().max_content_bytes)?
    } else {
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| ApiError::invalid("file", format!("the file is not UTF-8: {e}")))?;
        sb_config::ExportDoc::parse(text)?
    };
    drop(bytes);
    // Everything is validated and decided before the answer starts, so a bad file is a 400.
    let plan = api.configs.plan_import(&ns, doc, policy).await?;
    if !progress {
        let report = api.configs.apply_import(plan, &audit, |_| {}).await?;
        return Ok(Json(report).into_response());
    }
    Ok(import_with_progress(api, plan, audit))
}

/// Writes `plan` while streaming its progress as JSON lines: `{"progress":{"written","planned"}}`
/// after each batch, then one `{"report":…}` or `{"error":…}`. The progress channel keeps
/// only the latest value, so a slow reader never holds up the import or grows a queue; the
/// import runs to its end even if the client goes away.
fn import_with_progress(api: ApiState, plan: sb_config::ImportPlan, audit: sb_audit::Audit) -> Response {
    let (progress_tx, progress_rx) =
        tokio::sync::watch::channel(sb_config::ImportProgress { written: 0, planned: plan.writes() });
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let result = api
            .configs
            .apply_import(plan, &audit, |progress| {
                progress_tx.send_replace(progress);
            })
            .await;
        let _ = done_tx.send(result);
    });
    let line = |value: Value| -> Result<axum::body::Bytes, Infallible> {
        let mut bytes = serde_json::to_vec(&value).unwrap_or_default();
        bytes.push(b'\n');
        Ok(bytes.into())
    };
    type ImportResult = sb_config::ConfigResult<sb_config::ImportReport>;
    let finished = |result: Result<ImportResult, tokio::sync::oneshot::error::RecvError>| match result {
        Ok(Ok(report)) => serde_json::json!({ "report": report }),
        Ok(Err(error)) => ApiError::from(error).json_body(),
        Err(_) => ApiError::new(ErrorKind::Internal, "the import task ended without a result").json_body(),
    };
    // The progress last sent is kept, so the last batch's progress is never lost to the race
    // with the result (a closed watch channel still lends its last value).
    enum Lines {
        Running(
            tokio::sync::watch::Receiver<sb_config::ImportProgress>,
            tokio::sync::oneshot::Receiver<ImportResult>,
            Option<sb_config::ImportProgress>,
        ),
        Last(Value),
        Done,
    }
    let lines = stream::unfold(Lines::Running(progress_rx, done_rx, None), move |state| async move {
        let (mut progress_rx, mut done_rx, sent) = match state {
            Lines::Running(progress_rx, done_rx, sent) => (progress_rx, done_rx, sent),
            Lines::Last(value) => return Some((line(value), Lines::Done)),
            Lines::Done => return None,
        };
        let progress_line = |progress| line(serde_json::json!({ "progress": progress }));
        let result = tokio::select! {
            biased;
            result = &mut done_rx => result,
            changed = progress_rx.changed() => match changed {
                Ok(()) => {
                    let progress = *progress_rx.borrow_and_update();
                    return Some((progress_line(progress), Lines::Running(progress_rx, done_rx, Some(progress))));
                }
                // The import is over: only its result is left to send.
                Err(_) => done_rx.await,
            },
        };
        let last = *progress_rx.borrow();
        if sent != Some(last) {
            Some((progress_line(last), Lines::Last(finished(result))))
        } else {
            Some((line(finished(result)), Lines::Done))
        }
    });
    let mut response = Body::from_stream(lines).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    response
}

/// `GET /api/v1/config-keys`: the active master key and how many secret history entries
/// each key still seals (a key at zero can be retired from every node's key file).
pub async fn keys(State(api): State<ApiState>) -> Result<Response, ApiError> {
    let usage = api.configs.key_usage().await?;
    Ok(Json(usage).into_response())
}
