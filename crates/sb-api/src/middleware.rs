//! The request pipeline, as tower layers generated from the route table:
//! - `per_request` (outermost, every request): request id, client address, metrics, the
//!   access log;
//! - `per_route` (each route, with its table entry): authentication to a [`Subject`],
//!   then the one policy check (`sb_auth`'s `authorize`) on the route's kind and action in
//!   the namespaces the request names.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State};
use axum::http::{header::AUTHORIZATION, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;
use tracing::{debug, info, Instrument};

use sb_auth::{Kind, Resource};

use crate::auth;
use crate::error::{ApiError, ErrorKind};
use crate::nacos::{is_form, read_form, NacosParams};
use crate::routes::{Policy, Route};
use crate::{ApiState, Subject};

pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// A client's request id is honoured only if it is short and printable.
const MAX_REQUEST_ID_CHARS: usize = 128;
/// Query parameters whose values never reach a log.
/// Requests at least this slow are logged at INFO even when they succeed.
const SLOW_REQUEST: std::time::Duration = std::time::Duration::from_secs(1);

const REDACTED_PARAMS: &[&str] = &["accessToken", "password"];

/// What every handler may know about its request.
#[derive(Clone, Debug)]
pub struct RequestContext {
    pub request_id: String,
    /// The client: the peer, or the `X-Forwarded-For` client when the peer is a trusted proxy.
    pub client: Option<IpAddr>,
}

pub async fn per_request(State(state): State<ApiState>, mut request: Request, next: Next) -> Response {
    let start = tokio::time::Instant::now();
    let request_id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            !id.is_empty() && id.len() <= MAX_REQUEST_ID_CHARS && id.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(str::to_owned)
        .unwrap_or_else(new_request_id);
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip());
    let client = peer.map(|peer| client_address(peer, request.headers(), &state.config.trusted_proxies));
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    // Redacted and formatted only when the access line is logged (a cheap clone).
    let uri = request.uri().clone();
    request.extensions_mut().insert(RequestContext { request_id: request_id.clone(), client });

    // A span at info would format its fields on every request even when nothing inside logs;
    // the access log line carries the request id itself, and `debug` adds the span.
    let span = tracing::debug_span!("request", request_id = %request_id);
    let mut response = next.run(request).instrument(span).await;

    let status = response.status().as_u16();
    let elapsed = start.elapsed();
    let route_label = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    state.metrics.observe_request(route_label, method.as_str(), status, elapsed.as_secs_f64());
    // Every request is counted in the metrics; the access log keeps failures and slow
    // requests at INFO and the rest at DEBUG, so the default level does not spend a log
    // line on each of thousands of reads a second (`SWITCHBOARD_LOG=info,switchboard::access=debug`
    // logs them all).
    let duration_us = elapsed.as_micros() as u64;
    let failed_or_slow = status >= 400 || elapsed >= SLOW_REQUEST;
    if failed_or_slow || tracing::enabled!(target: "switchboard::access", tracing::Level::DEBUG) {
        let path = redact_query(uri.path(), uri.query());
        let client = client.map(|c| c.to_string()).unwrap_or_default();
        if failed_or_slow {
            info!(target: "switchboard::access", request_id = %request_id, method = %method, path = %path,
                route = route_label, status, duration_us, client = %client, "request");
        } else {
            debug!(target: "switchboard::access", request_id = %request_id, method = %method, path = %path,
                route = route_label, status, duration_us, client = %client, "request");
        }
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

#[derive(Clone)]
pub struct RouteContext {
    pub route: &'static Route,
    /// The route's policy, from its table entry; `None` (a resource no policy knows)
    /// denies every request, and the permission-matrix test fails on it.
    pub policy: Option<Policy>,
    pub state: ApiState,
}

pub async fn per_route(State(context): State<RouteContext>, request: Request, next: Next) -> Response {
    if !context.route.authenticated {
        return next.run(request).await;
    }
    let nacos = context.route.path.starts_with("/nacos/");
    match guard(&context, request, nacos).await {
        Ok(request) => next.run(request).await,
        Err(error) if nacos => error.into_nacos_response(),
        Err(error) => error.into_response(),
    }
}

/// Authentication, then the one policy check: the request's credential resolves to a
/// [`Subject`], the route's table entry gives the kind and action, and the namespaces the
/// request names (path, `namespace`, Nacos `namespaceId`/`tenant`, the tenants of a Nacos
/// listener) each pass [`sb_auth::AuthService::authorize`]. Every check runs before the
/// handler, so a denial never depends on whether the resource exists.
async fn guard(context: &RouteContext, request: Request, nacos: bool) -> Result<Request, ApiError> {
    let (mut parts, body) = request.into_parts();
    let mut body = axum::body::Body::new(body);
    // The `{ns}` segment of the matched template, percent-decoded as `Path` decodes it.
    let raw = axum::extract::RawPathParams::from_request_parts(&mut parts, &()).await.ok();
    let path_ns = raw.and_then(|p| p.iter().find(|(name, _)| *name == "ns").map(|(_, v)| v.to_owned()));
    let query = parts.uri.query().unwrap_or("");
    // On Nacos paths the query and the form body are decoded here once, and the handler's
    // `NacosParams` extractor takes them from the request's extensions.
    let params = if nacos && is_form(&parts.headers) {
        let form = read_form(body).await?;
        let params = NacosParams::decode(query, &form);
        body = axum::body::Body::from(form);
        params
    } else {
        NacosParams::decode(query, &[])
    };
    let subject = authenticate(context, &parts, &params, nacos).await?;
    let auth = &context.state.auth;
    let allowed = match context.policy {
        None => false,
        Some(Policy::Session) => true,
        Some(Policy::Check(kind)) => match request_namespaces(context.route, kind, path_ns, &params) {
            None => auth.authorize(&subject, context.route.action, Resource { kind, namespace: None }),
            Some(namespaces) => namespaces.iter().all(|ns| {
                auth.authorize(&subject, context.route.action, Resource { kind, namespace: Some(ns) })
            }),
        },
    };
    if !allowed {
        debug!(subject = %subject.name, route = context.route.path, "permission denied");
        return Err(ApiError::new(
            ErrorKind::PermissionDenied,
            format!(
                "{} may not {} here (the route needs {} on {})",
                subject.name,
                context.route.action.as_str(),
                context.route.action.as_str(),
                context.route.resource
            ),
        ));
    }
    parts.extensions.insert(subject);
    if nacos {
        parts.extensions.insert(params);
    }
    Ok(Request::from_parts(parts, body))
}

/// The namespaces a request of a namespaced kind touches (an empty or absent one is
/// `public`), or `None` for a global kind (and for the Prometheus discovery without a
/// `namespace` filter, which lists every namespace).
fn request_namespaces(
    route: &Route,
    kind: Kind,
    path_ns: Option<String>,
    params: &NacosParams,
) -> Option<Vec<String>> {
    if !kind.is_namespaced() {
        return None;
    }
    let mut names: Vec<String> = path_ns.into_iter().collect();
    // Every value of each (a repeated parameter is checked in all its values, whichever a
    // handler reads).
    for name in ["namespace", "namespaceId", "tenant"] {
        names.extend(params.all(name).map(str::to_owned));
    }
    if route.id == crate::routes::RouteId::NacosConfigListener {
        for probe in params.all("Listening-Configs") {
            for line in probe.split('\u{1}').filter(|l| !l.is_empty()) {
                names.push(line.split('\u{2}').nth(3).unwrap_or_default().to_owned());
            }
        }
    }
    if route.id == crate::routes::RouteId::PrometheusSd && names.iter().all(|n| n.is_empty()) {
        return None;
    }
    let mut names: Vec<String> = names
        .into_iter()
        .map(|n| if n.is_empty() { sb_auth::DEFAULT_NAMESPACE.to_owned() } else { n })
        .collect();
    if names.is_empty() {
        names.push(sb_auth::DEFAULT_NAMESPACE.to_owned());
    }
    names.sort();
    names.dedup();
    Some(names)
}

/// Resolves the request's credential to a [`Subject`]: a bearer token; on `/nacos/` paths
/// also Nacos's `accessToken` (query, header or form field) or `username` + `password`
/// (query or form, as some Nacos SDKs send on every call); else a verified TLS client
/// certificate, whose common name acts as the service account of that name. A presented
/// credential that fails never falls back to another. Headers such as
/// `User-Agent: Nacos-Server` or `serverIdentity` grant nothing.
async fn authenticate(
    context: &RouteContext,
    parts: &axum::http::request::Parts,
    params: &NacosParams,
    nacos: bool,
) -> Result<Subject, ApiError> {
    let auth = &context.state.auth;
    let unknown =
        |message: &str| ApiError::new(ErrorKind::Unauthenticated, message).with_field("Authorization");
    let mut token = auth::bearer(parts.headers.get(AUTHORIZATION)).map(str::to_owned);
    if nacos && token.is_none() {
        token = query_or_header_token(params.in_query("accessToken"), &parts.headers)
            .or_else(|| params.first_non_empty("accessToken").map(str::to_owned));
    }
    if let Some(token) = token {
        return auth.resolve_token(&token).ok_or_else(|| unknown("the token is unknown, expired or revoked"));
    }
    if nacos {
        if let (Some(user), Some(password)) =
            (params.first_non_empty("username"), params.first_non_empty("password"))
        {
            let client = parts
                .extensions
                .get::<RequestContext>()
                .and_then(|c| c.client)
                .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
            return Ok(auth.check_password(user, password, client).await?);
        }
    }
    if let Some(auth::ClientCertSubject(name)) = parts.extensions.get::<auth::ClientCertSubject>() {
        return auth.subject_for_certificate(name).ok_or_else(|| {
            unknown("the client certificate's common name is not a service account (create it with switchboard auth sa create)")
        });
    }
    Err(unknown(if nacos {
        "unknown user!"
    } else {
        "missing bearer token: send Authorization: Bearer <token> (a first start writes one to <data-dir>/admin-token)"
    }))
}

/// Nacos's `accessToken`, from the query string or a header of that name.
pub fn nacos_token_from(query: Option<&str>, headers: &axum::http::HeaderMap) -> Option<String> {
    let in_query = query.and_then(|query| {
        form_urlencoded::parse(query.as_bytes()).find(|(key, _)| key == "accessToken").map(|(_, value)| value)
    });
    query_or_header_token(in_query.as_deref(), headers)
}

/// The query's first `accessToken` if it has one, else the header of that name; empty is none.
fn query_or_header_token(in_query: Option<&str>, headers: &axum::http::HeaderMap) -> Option<String> {
    in_query
        .or_else(|| headers.get("accessToken").and_then(|v| v.to_str().ok()))
        .filter(|token| !token.is_empty())
        .map(str::to_owned)
}

fn new_request_id() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    let mut id = [0u8; 16];
    // 8 bytes always fill 16 hex characters, so this cannot fail.
    let _ = hex::encode_to_slice(bytes, &mut id);
    String::from_utf8_lossy(&id).into_owned()
}

/// The client address: `X-Forwarded-For` is walked from the right (the hop nearest to us)
/// past trusted proxies only, so a client cannot forge its address by prepending entries.
fn client_address(peer: IpAddr, headers: &axum::http::HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(str::trim).collect::<Vec<_>>())
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

/// The path with its query, the values of secret parameters replaced by `***`.
pub fn redact_query(path: &str, query: Option<&str>) -> String {
    let Some(query) = query else {
        return path.to_owned();
    };
    let redacted: Vec<String> = query
        .split('&')
        .map(|pair| {
            let name = pair.split_once('=').map_or(pair, |(name, _)| name);
            if REDACTED_PARAMS.iter().any(|secret| secret.eq_ignore_ascii_case(name)) {
                format!("{name}=***")
            } else {
                pair.to_owned()
            }
        })
        .collect();
    format!("{path}?{}", redacted.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_from_logged_paths() {
        assert_eq!(
            redact_query("/nacos/v1/cs/configs", Some("accessToken=abc&dataId=x&password=pw")),
            "/nacos/v1/cs/configs?accessToken=***&dataId=x&password=***"
        );
        assert_eq!(redact_query("/healthz", None), "/healthz");
    }

    #[test]
    fn nacos_access_token_comes_from_query_or_header() {
        let mut headers = axum::http::HeaderMap::new();
        assert_eq!(nacos_token_from(Some("a=1&accessToken=t%2Bx"), &headers).as_deref(), Some("t+x"));
        assert_eq!(nacos_token_from(Some("accessToken="), &headers), None);
        headers.insert("accessToken", "h".parse().unwrap());
        assert_eq!(nacos_token_from(Some("a=1"), &headers).as_deref(), Some("h"));
        let params = NacosParams::decode("a=1&accessToken=", b"dataId=x&accessToken=f");
        assert_eq!(params.in_query("accessToken"), Some(""));
        assert_eq!(params.first_non_empty("accessToken"), Some("f"));
        assert_eq!(params.all("accessToken").collect::<Vec<_>>(), ["", "f"]);
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.0.0.7".parse().unwrap());
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(client_address(proxy, &headers, &trusted), "1.2.3.4".parse::<IpAddr>().unwrap());
        let stranger: IpAddr = "8.8.8.8".parse().unwrap();
        assert_eq!(client_address(stranger, &headers, &trusted), stranger);
    }
}
