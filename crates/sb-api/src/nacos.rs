//! What every Nacos 1.x compat handler (`/nacos/v1/…`) shares: parameters read the way a
//! Nacos server reads them, and errors answered in Nacos's plain-text shape.
//!
//! Nacos reads a parameter with the servlet's `getParameter`: the query string first, then
//! a URL-encoded form body (Nacos 1.x Java SDKs post forms, the Python SDK uses the query).
//! Compat handlers translate to the same domain services as the native API; no rule lives
//! here.

use std::borrow::Cow;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, ErrorKind};

/// The namespace that an absent or empty `namespaceId` / `tenant` means.
pub const DEFAULT_NAMESPACE: &str = "public";
/// The largest form body read (a config publish carries its content in it).
pub const MAX_FORM_BYTES: usize = 16 * 1024 * 1024;

/// An error on a Nacos path: the status of [`ErrorKind::nacos`] and a plain-text body.
#[derive(Debug)]
pub struct NacosError(pub ApiError);

impl From<ApiError> for NacosError {
    fn from(error: ApiError) -> Self {
        NacosError(error)
    }
}

impl IntoResponse for NacosError {
    fn into_response(self) -> Response {
        self.0.into_nacos_response()
    }
}

pub type NacosResult<T> = Result<T, NacosError>;

/// Query and form parameters in request order, the query's first. A name's first value is
/// its value, as with `getParameter`.
///
/// Decoded once per request: the route guard decodes them to find the credential and the
/// namespaces, and leaves them in the request's extensions, where this extractor takes
/// them. Routes without the guard (login) decode here.
#[derive(Clone, Debug, Default)]
pub struct NacosParams {
    pairs: Arc<[(String, String)]>,
    /// How many of `pairs` came from the query string.
    from_query: usize,
}

impl<S: Send + Sync> FromRequest<S> for NacosParams {
    type Rejection = NacosError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, NacosError> {
        if let Some(params) = request.extensions().get::<NacosParams>() {
            return Ok(params.clone());
        }
        let (parts, body) = request.into_parts();
        let query = parts.uri.query().unwrap_or("");
        if !is_form(&parts.headers) {
            return Ok(NacosParams::decode(query, &[]));
        }
        let form = read_form(body).await?;
        Ok(NacosParams::decode(query, &form))
    }
}

/// Text a view shares (a config's content, a cached list rendering) as response bytes,
/// without a copy.
pub fn shared_bytes(text: Arc<str>) -> Bytes {
    Bytes::from_owner(SharedText(text))
}

struct SharedText(Arc<str>);

impl AsRef<[u8]> for SharedText {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// Whether a request's body is a URL-encoded form.
pub fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

/// A form body, up to [`MAX_FORM_BYTES`].
pub async fn read_form(body: axum::body::Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_FORM_BYTES).await.map_err(|_| {
        ApiError::new(ErrorKind::PayloadTooLarge, format!("the form body is over {MAX_FORM_BYTES} bytes"))
    })
}

impl NacosParams {
    /// Decodes a query string and a URL-encoded form body.
    pub fn decode(query: &str, form: &[u8]) -> Self {
        let owned = |(name, value): (Cow<'_, str>, Cow<'_, str>)| (name.into_owned(), value.into_owned());
        let mut pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes()).map(owned).collect();
        let from_query = pairs.len();
        pairs.extend(form_urlencoded::parse(form).map(owned));
        NacosParams { pairs: pairs.into(), from_query }
    }

    /// Every value of `name`, from the query and the form, empty ones included.
    pub fn all<'a: 'n, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a str> + 'n {
        self.pairs.iter().filter(move |(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    /// The first value of `name` in the query string alone, empty or not.
    pub fn in_query(&self, name: &str) -> Option<&str> {
        self.pairs[..self.from_query].iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    /// The first non-empty value of `name`, from the query or the form.
    pub fn first_non_empty(&self, name: &str) -> Option<&str> {
        self.all(name).find(|value| !value.is_empty())
    }

    /// The value, if present and not empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.all(name).next().filter(|v| !v.is_empty())
    }

    /// The value, or Nacos's 400 for a missing required parameter.
    pub fn required(&self, name: &'static str) -> NacosResult<&str> {
        self.get(name).ok_or_else(|| {
            NacosError(ApiError::invalid(name, format!("caused: Param '{name}' is required.;")))
        })
    }

    /// A parsed value; a malformed one is a 400 naming the parameter and the value.
    pub fn parse<T: std::str::FromStr>(&self, name: &'static str, expected: &str) -> NacosResult<Option<T>> {
        match self.get(name) {
            None => Ok(None),
            Some(raw) => raw.trim().parse().map(Some).map_err(|_| {
                NacosError(ApiError::invalid(
                    name,
                    format!("caused: Param '{name}' is '{raw}', expected {expected};"),
                ))
            }),
        }
    }

    /// `true`/`false` as Java's `Boolean.parseBoolean` reads them (anything else is false).
    pub fn flag(&self, name: &str) -> Option<bool> {
        self.get(name).map(|v| v.eq_ignore_ascii_case("true"))
    }

    /// The namespace of a request: `namespaceId` or `tenant`, where absent or empty means
    /// [`DEFAULT_NAMESPACE`].
    pub fn namespace(&self, name: &str) -> &str {
        self.get(name).unwrap_or(DEFAULT_NAMESPACE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    #[tokio::test]
    async fn query_wins_over_form_and_empty_namespace_means_public() {
        let request = Request::builder()
            .method("POST")
            .uri("/nacos/v1/ns/instance?serviceName=a&namespaceId=")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from("serviceName=b&ip=1.2.3.4&port=80"))
            .unwrap();
        let params = NacosParams::from_request(request, &()).await.unwrap();
        assert_eq!(params.get("serviceName"), Some("a"));
        assert_eq!(params.get("ip"), Some("1.2.3.4"));
        assert_eq!(params.namespace("namespaceId"), "public");
        assert_eq!(params.parse::<u16>("port", "a port").unwrap(), Some(80));
        assert!(params.parse::<u16>("ip", "a port").is_err());
        assert!(params.required("groupName").is_err());
    }
}
