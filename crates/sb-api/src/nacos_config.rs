//! Nacos 1.x config compat (`/nacos/v1/cs/…`): the same config service as the native API,
//! in Nacos's shapes. `tenant` is the namespace (absent or empty means `public`); `type` is
//! the format. The one deliberate difference from Nacos: content that does not parse as
//! its type is refused with a 400 and a plain-text reason.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use sb_config::{
    parse_ips, ConfigFormat, ConfigKey, GrayClient, GrayRequest, GraySelector, HistoryRecord, ListenKey,
    ListenOutcome, PublishRequest, SchemaChange,
};
use serde::Serialize;

use crate::auth::Subject;
use crate::error::ApiError;
use crate::middleware::RequestContext;
use crate::nacos::{NacosError, NacosParams, NacosResult};
use crate::ApiState;

const DEFAULT_GROUP: &str = "DEFAULT_GROUP";
const WORD_SEPARATOR: char = '\u{2}';
const LINE_SEPARATOR: char = '\u{1}';
/// Answer a long-poll this much before the client's own timeout, as Nacos does.
const LONG_POLL_MARGIN: Duration = Duration::from_millis(500);
/// The longest hold a client may ask for.
const MAX_LONG_POLL: Duration = Duration::from_secs(120);
/// Items one long-poll may name.
const MAX_LISTENED_ITEMS: usize = 10_000;
const DEFAULT_HISTORY_PAGE_SIZE: usize = 100;
const MAX_HISTORY_PAGE_SIZE: usize = 500;

fn plain(body: impl IntoResponse) -> Response {
    let mut response = body.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain;charset=UTF-8"));
    response
}

fn nacos_error(error: impl Into<ApiError>) -> NacosError {
    NacosError(error.into())
}

/// The item a request names: `dataId`, `group` (default `DEFAULT_GROUP`), `tenant`.
fn config_key(params: &NacosParams) -> NacosResult<ConfigKey> {
    let data_id = params.required("dataId")?;
    let group = params.get("group").unwrap_or(DEFAULT_GROUP);
    ConfigKey::new(params.namespace("tenant"), group, data_id).map_err(nacos_error)
}

/// On Nacos paths the client IP selects a gray (Nacos's beta by `betaIps`); secrets open
/// for callers who may read them (see `config::reveal_for`).
fn nacos_client(
    api: &ApiState,
    context: &Option<Extension<RequestContext>>,
    subject: &Option<Extension<Subject>>,
    namespace: &str,
) -> GrayClient {
    GrayClient::by_ip(context.as_ref().and_then(|c| c.client))
        .with_reveal(crate::config::reveal_for(api, subject, namespace))
}

fn is_beta(params: &NacosParams) -> bool {
    params.get("beta").is_some_and(|b| b.eq_ignore_ascii_case("true"))
}

/// Nacos's `RestResult`: `{"code":200,"message":…,"data":…}`.
fn rest_result(message: &str, data: serde_json::Value) -> Response {
    Json(serde_json::json!({"code": 200, "message": message, "data": data})).into_response()
}

pub async fn get(
    State(api): State<ApiState>,
    context: Option<Extension<RequestContext>>,
    subject: Option<Extension<Subject>>,
    params: NacosParams,
) -> NacosResult<Response> {
    if let Some(mode) = params.get("search") {
        let client = nacos_client(&api, &context, &subject, params.namespace("tenant"));
        return search(&api, &params, mode, &client);
    }
    let key = config_key(&params)?;
    let client = nacos_client(&api, &context, &subject, &key.namespace);
    if is_beta(&params) {
        // Nacos's queryBeta: the beta's ConfigInfo4Beta, or null data.
        let state = api.configs.view().snapshot();
        let data = match state.gray(&key) {
            Some(gray) => {
                let ips: Vec<String> = gray.record.selector.ips.iter().map(ToString::to_string).collect();
                let (content, md5) = state.gray_readable(&key, &gray, &client).map_err(nacos_error)?;
                serde_json::json!({
                    "id": gray.version.to_string(), "dataId": key.data_id, "group": key.group,
                    "tenant": params.get("tenant").unwrap_or(""), "content": content,
                    "md5": md5, "type": gray.record.format.as_str(), "betaIps": ips.join(","),
                })
            }
            None => serde_json::Value::Null,
        };
        return Ok(rest_result("query beta ok", data));
    }
    let Some(snapshot) = api.configs.view().snapshot().get_for(&key, &client) else {
        return Err(NacosError(ApiError::not_found("config data not exist")));
    };
    let (content, md5) = snapshot.readable_shared(&client).map_err(nacos_error)?;
    let mut response = plain(crate::nacos::shared_bytes(content));
    let headers = response.headers_mut();
    if snapshot.gray {
        headers.insert("isBeta", HeaderValue::from_static("true"));
    }
    if let Ok(md5) = HeaderValue::from_str(&md5) {
        headers.insert("Content-MD5", md5);
    }
    headers.insert("Config-Type", HeaderValue::from_static(snapshot.item.format.as_str()));
    if let Ok(version) = HeaderValue::from_str(&format!("\"{}\"", snapshot.version)) {
        headers.insert(header::ETAG, version);
    }
    Ok(response)
}

pub async fn publish(
    State(api): State<ApiState>,
    crate::audit::Audited(audit): crate::audit::Audited,
    subject: Option<Extension<Subject>>,
    context: Option<Extension<RequestContext>>,
    headers: HeaderMap,
    params: NacosParams,
) -> NacosResult<Response> {
    let key = config_key(&params)?;
    // An empty content is a missing one, as in Nacos.
    let content = params.required("content")?.to_owned();
    // Nacos's beta: a `betaIps` header publishes a gray version to those client IPs.
    let beta_ips = headers.get("betaIps").map(|v| v.to_str().unwrap_or("\u{fffd}").to_owned());
    if let Some(beta_ips) = beta_ips.filter(|ips| !ips.trim().is_empty()) {
        let ips = parse_ips(beta_ips.split(',')).map_err(nacos_error)?;
        let selector = GraySelector { ips, labels: Default::default() };
        let author = params
            .get("src_user")
            .map(str::to_owned)
            .or_else(|| subject.as_ref().map(|s| s.name.clone()))
            .unwrap_or_default();
        let source_ip = context.and_then(|c| c.client).map(|ip| ip.to_string()).unwrap_or_default();
        let request = GrayRequest { content, selector, author, source_ip };
        api.configs.publish_gray(&key, request, &audit).await.map_err(nacos_error)?;
        return Ok(plain("true"));
    }
    // Nacos 2.x clients send `unset` for "no type given".
    let format = match params.get("type").filter(|t| !t.eq_ignore_ascii_case("unset")) {
        Some(name) => ConfigFormat::parse(name).map_err(nacos_error)?,
        None => api.configs.get(&key).map_or(ConfigFormat::Text, |s| s.item.format),
    };
    let tags = params
        .get("config_tags")
        .map(|tags| tags.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect());
    let author = params
        .get("src_user")
        .map(str::to_owned)
        .or_else(|| subject.as_ref().map(|s| s.name.clone()))
        .unwrap_or_default();
    let request = PublishRequest {
        content,
        format,
        description: params.get("desc").map(str::to_owned),
        tags,
        app_name: params.get("appName").map(str::to_owned),
        author,
        source_ip: context.and_then(|c| c.client).map(|ip| ip.to_string()).unwrap_or_default(),
        if_match: None,
        schema: SchemaChange::Keep,
        // Nacos's encryption plugin marks secrets by a `cipher-` data id: such an item is
        // created secret here (sealed with the master key, not by the client).
        secret: (key.data_id.starts_with("cipher-") && api.configs.get(&key).is_none()).then_some(true),
    };
    api.configs.publish(&key, request, &audit).await.map_err(nacos_error)?;
    Ok(plain("true"))
}

pub async fn delete(
    State(api): State<ApiState>,
    crate::audit::Audited(audit): crate::audit::Audited,
    params: NacosParams,
) -> NacosResult<Response> {
    let key = config_key(&params)?;
    if is_beta(&params) {
        // Nacos's stopBeta.
        api.configs.abort_gray(&key, &audit).await.map_err(nacos_error)?;
        return Ok(rest_result("stop beta ok", serde_json::Value::Bool(true)));
    }
    // Deleting an absent config is `true` in Nacos too (and changes nothing to record).
    api.configs.delete(&key, None, &audit).await.map_err(nacos_error)?;
    Ok(plain("true"))
}

/// One line of `Listening-Configs`, with the tenant exactly as the client sent it (the
/// answer echoes it).
struct ListenLine {
    listen: ListenKey,
    tenant: String,
}

fn malformed(reason: String) -> NacosError {
    NacosError(ApiError::invalid("Listening-Configs", format!("invalid probeModify: {reason}")))
}

/// `dataId %02 group %02 md5 [%02 tenant] %01`, repeated.
fn parse_listening(text: &str) -> NacosResult<Vec<ListenLine>> {
    let mut lines = Vec::new();
    for line in text.split(LINE_SEPARATOR).filter(|l| !l.is_empty()) {
        let fields: Vec<&str> = line.split(WORD_SEPARATOR).collect();
        if !(3..=4).contains(&fields.len()) {
            return Err(malformed(format!(
                "a line has {} fields, expected dataId, group, md5 and an optional tenant",
                fields.len()
            )));
        }
        let tenant = fields.get(3).copied().unwrap_or("");
        let namespace = if tenant.is_empty() { crate::nacos::DEFAULT_NAMESPACE } else { tenant };
        let key = ConfigKey::new(namespace, fields[1], fields[0]).map_err(|e| malformed(e.to_string()))?;
        lines.push(ListenLine {
            listen: ListenKey { key, md5: fields[2].to_owned() },
            tenant: tenant.to_owned(),
        });
        if lines.len() > MAX_LISTENED_ITEMS {
            return Err(malformed(format!("more than {MAX_LISTENED_ITEMS} items in one request")));
        }
    }
    if lines.is_empty() {
        return Err(malformed("no item to listen to".into()));
    }
    Ok(lines)
}

/// The changed items as Nacos encodes them: `dataId %02 group [%02 tenant] %01` for each,
/// the whole URL-encoded as Java's `URLEncoder` does.
fn encode_changed(lines: &[ListenLine], changed: &[ConfigKey]) -> String {
    let mut text = String::new();
    for line in lines.iter().filter(|l| changed.contains(&l.listen.key)) {
        text.push_str(&line.listen.key.data_id);
        text.push(WORD_SEPARATOR);
        text.push_str(&line.listen.key.group);
        if !line.tenant.is_empty() {
            text.push(WORD_SEPARATOR);
            text.push_str(&line.tenant);
        }
        text.push(LINE_SEPARATOR);
    }
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn long_poll_timeout(headers: &HeaderMap) -> NacosResult<Option<Duration>> {
    let Some(value) = headers.get("Long-Pulling-Timeout") else { return Ok(None) };
    let millis = value.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()).ok_or_else(|| {
        NacosError(ApiError::invalid(
            "Long-Pulling-Timeout",
            format!("Long-Pulling-Timeout is {value:?}, expected milliseconds"),
        ))
    })?;
    // Nacos's header; some clients spell it as the server's constant.
    let no_hang_up = ["Long-Pulling-Timeout-No-Hangup", "longPullingNoHangUp"]
        .iter()
        .any(|name| headers.get(*name).and_then(|v| v.to_str().ok()) == Some("true"));
    if no_hang_up {
        return Ok(None);
    }
    Ok(Some(Duration::from_millis(millis).saturating_sub(LONG_POLL_MARGIN).min(MAX_LONG_POLL)))
}

pub async fn listener(
    State(api): State<ApiState>,
    context: Option<Extension<RequestContext>>,
    subject: Option<Extension<Subject>>,
    headers: HeaderMap,
    params: NacosParams,
) -> NacosResult<Response> {
    let probe = params.required("Listening-Configs")?;
    let lines = parse_listening(probe)?;
    // Leave to read secrets is decided per namespace; a probe names one in practice (the
    // client's), and a mixed probe reads secrets masked unless allowed in the first.
    let namespace = lines.first().map(|l| l.listen.key.namespace.clone()).unwrap_or_default();
    let client = nacos_client(&api, &context, &subject, &namespace);
    let timeout = long_poll_timeout(&headers)?;
    let keys: Vec<ListenKey> = lines.iter().map(|l| l.listen.clone()).collect();
    let view = api.configs.view();
    let changed = match timeout {
        None => view.changed_now(&keys, &client),
        Some(timeout) => {
            let mut shutdown = api.shutdown.clone();
            let stop = async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            };
            match view.listen(&keys, &client, timeout, stop).await {
                ListenOutcome::Changed(changed) => changed,
                ListenOutcome::TimedOut | ListenOutcome::Stopped => Vec::new(),
            }
        }
    };
    let mut response = plain(encode_changed(&lines, &changed));
    let headers = response.headers_mut();
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache,no-store"));
    Ok(response)
}

/// One item of a `configs?search=` page (Nacos's `ConfigInfo`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConfigInfo {
    id: String,
    data_id: String,
    group: String,
    content: String,
    md5: String,
    tenant: String,
    app_name: String,
    #[serde(rename = "type")]
    format: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConfigPageJson {
    total_count: usize,
    page_number: usize,
    pages_available: usize,
    page_items: Vec<ConfigInfo>,
}

/// `*` matches any run of characters, as in Nacos's blur search.
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return text.contains(pattern);
    }
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() {
            continue;
        }
        match rest.find(part) {
            Some(at) if i > 0 || at == 0 => rest = &rest[at + part.len()..],
            _ => return false,
        }
    }
    parts.last().is_none_or(|last| last.is_empty() || text.ends_with(last))
}

/// `configs?search=accurate|blur`: a page of a namespace's configs, with their content,
/// from the view. `accurate` matches `dataId` and `group` exactly, `blur` by `*` patterns
/// (or substrings); an empty one matches everything.
fn search(api: &ApiState, params: &NacosParams, mode: &str, client: &GrayClient) -> NacosResult<Response> {
    let blur = match mode {
        "accurate" => false,
        "blur" => true,
        other => {
            return Err(NacosError(ApiError::invalid(
                "search",
                format!("caused: Param 'search' is '{other}', expected accurate or blur;"),
            )))
        }
    };
    let namespace = params.namespace("tenant");
    let tenant = params.get("tenant").unwrap_or("").to_owned();
    let matches = |pattern: Option<&str>, value: &str| match pattern {
        None => true,
        Some(p) if blur => wildcard_match(p, value),
        Some(p) => p == value,
    };
    let (data_id, group) = (params.get("dataId"), params.get("group"));
    let page_number = params.parse::<usize>("pageNo", "a page number")?.unwrap_or(1).max(1);
    let page_size = params
        .parse::<usize>("pageSize", "a page size")?
        .unwrap_or(DEFAULT_HISTORY_PAGE_SIZE)
        .clamp(1, MAX_HISTORY_PAGE_SIZE);
    let state = api.configs.view().snapshot();
    let exact_group = group.filter(|_| !blur);
    let found: Vec<_> = state
        .list(namespace, exact_group)
        .into_iter()
        .filter(|s| matches(data_id, &s.key.data_id) && matches(group, &s.key.group))
        .collect();
    let total_count = found.len();
    let page_items = found
        .into_iter()
        .skip((page_number - 1).saturating_mul(page_size))
        .take(page_size)
        .map(|s| {
            let (content, md5) = s.readable(client).map_err(nacos_error)?;
            Ok(ConfigInfo {
                id: s.version.to_string(),
                data_id: s.key.data_id.clone(),
                group: s.key.group.clone(),
                content,
                md5,
                tenant: tenant.clone(),
                app_name: s.item.app_name.clone(),
                format: s.item.format.as_str(),
            })
        })
        .collect::<NacosResult<_>>()?;
    let json = ConfigPageJson {
        total_count,
        page_number,
        pages_available: total_count.div_ceil(page_size),
        page_items,
    };
    Ok(Json(json).into_response())
}

/// Nacos's `ConfigHistoryInfo`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HistoryInfo {
    id: String,
    last_id: i64,
    data_id: String,
    group: String,
    tenant: String,
    app_name: String,
    md5: Option<String>,
    content: Option<String>,
    src_ip: String,
    src_user: Option<String>,
    op_type: String,
    created_time: String,
    last_modified_time: String,
}

impl HistoryInfo {
    fn new(
        key: &ConfigKey,
        tenant: &str,
        record: HistoryRecord,
        with_content: bool,
        client: &GrayClient,
    ) -> NacosResult<HistoryInfo> {
        let (content, md5) = record.readable(key, client).map_err(nacos_error)?;
        let entry = record.entry;
        let time = iso_time(entry.at_ms);
        Ok(HistoryInfo {
            id: record.version.to_string(),
            last_id: -1,
            data_id: key.data_id.clone(),
            group: key.group.clone(),
            tenant: tenant.to_owned(),
            app_name: entry.app_name,
            md5: Some(md5),
            content: with_content.then_some(content),
            src_ip: entry.source_ip,
            src_user: Some(entry.author).filter(|a| !a.is_empty()),
            op_type: format!("{:<2}", entry.op.nacos_letter()),
            created_time: time.clone(),
            last_modified_time: time,
        })
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HistoryPageJson {
    total_count: usize,
    page_number: usize,
    pages_available: usize,
    page_items: Vec<HistoryInfo>,
}

/// `history?search=accurate` (a page) or `history?nid=N` (one entry; `nid` is the version).
pub async fn history(
    State(api): State<ApiState>,
    context: Option<Extension<RequestContext>>,
    subject: Option<Extension<Subject>>,
    params: NacosParams,
) -> NacosResult<Response> {
    let key = config_key(&params)?;
    let client = nacos_client(&api, &context, &subject, &key.namespace);
    let tenant = params.get("tenant").unwrap_or("").to_owned();
    if let Some(nid) = params.parse::<i64>("nid", "a history id")? {
        let record = api.configs.history_entry(&key, nid).await.map_err(nacos_error)?;
        return Ok(Json(HistoryInfo::new(&key, &tenant, record, true, &client)?).into_response());
    }
    let page_number = params.parse::<usize>("pageNo", "a page number")?.unwrap_or(1).max(1);
    let page_size = params
        .parse::<usize>("pageSize", "a page size")?
        .unwrap_or(DEFAULT_HISTORY_PAGE_SIZE)
        .clamp(1, MAX_HISTORY_PAGE_SIZE);
    let page = api.configs.history(&key, page_number, page_size).await.map_err(nacos_error)?;
    let json = HistoryPageJson {
        total_count: page.total,
        page_number,
        pages_available: page.total.div_ceil(page_size),
        page_items: page
            .records
            .into_iter()
            .map(|r| HistoryInfo::new(&key, &tenant, r, false, &client))
            .collect::<NacosResult<_>>()?,
    };
    Ok(Json(json).into_response())
}

/// `history/previous?id=N`: the entry before version N.
pub async fn history_previous(
    State(api): State<ApiState>,
    context: Option<Extension<RequestContext>>,
    subject: Option<Extension<Subject>>,
    params: NacosParams,
) -> NacosResult<Response> {
    let key = config_key(&params)?;
    let client = nacos_client(&api, &context, &subject, &key.namespace);
    let tenant = params.get("tenant").unwrap_or("").to_owned();
    let id = params
        .parse::<i64>("id", "a history id")?
        .ok_or_else(|| NacosError(ApiError::invalid("id", "caused: Param 'id' is required.;")))?;
    let record = api.configs.previous_entry(&key, id).await.map_err(nacos_error)?;
    Ok(Json(HistoryInfo::new(&key, &tenant, record, true, &client)?).into_response())
}

/// `2010-05-04T16:00:00.000+0000`, in UTC, as Nacos prints history times.
fn iso_time(unix_ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    let rfc3339 = humantime::format_rfc3339_millis(time).to_string();
    format!("{}+0000", rfc3339.trim_end_matches('Z'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_configs_parse_with_and_without_tenant() {
        let lines = parse_listening("a.yaml\u{2}G\u{2}abc\u{1}b\u{2}G\u{2}\u{2}dev\u{1}").unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].listen.key.namespace, "public");
        assert_eq!(lines[1].listen.key.namespace, "dev");
        assert_eq!(lines[1].listen.md5, "");
        assert!(parse_listening("a\u{2}b\u{1}").is_err());
        assert!(parse_listening("").is_err());
        assert!(parse_listening("a/b\u{2}G\u{2}x\u{1}").is_err());
    }

    #[test]
    fn changed_keys_are_encoded_as_java_does() {
        let lines = parse_listening("a.yaml\u{2}G\u{2}x\u{1}b:c\u{2}G\u{2}y\u{2}dev\u{1}").unwrap();
        let changed: Vec<ConfigKey> = lines.iter().map(|l| l.listen.key.clone()).collect();
        assert_eq!(encode_changed(&lines, &changed), "a.yaml%02G%01b%3Ac%02G%02dev%01");
        assert_eq!(encode_changed(&lines, &[]), "");
    }

    #[test]
    fn blur_search_patterns() {
        assert!(wildcard_match("app*", "app.yaml"));
        assert!(wildcard_match("*.yaml", "app.yaml"));
        assert!(wildcard_match("a*y*l", "app.yaml") && !wildcard_match("a*y*l", "app.yamlx"));
        assert!(wildcard_match("pp.y", "app.yaml"));
        assert!(!wildcard_match("web*", "app.yaml"));
    }

    #[test]
    fn history_times_are_utc() {
        assert_eq!(iso_time(0), "1970-01-01T00:00:00.000+0000");
        assert_eq!(iso_time(1_273_000_000_123), "2010-05-04T19:06:40.123+0000");
    }
}
