//! What every Nacos 1.x compat handler (`/nacos/v1/…`) shares: parameters read the way a
//! Nacos server reads them, and errors answered in Nacos's plain-text shape.
//!
//! Nacos reads a parameter with the servlet's `getParameter`: the query string first, then
//! a URL-encoded form body (Nacos 1.x Java SDKs post forms, the Python SDK uses the query).
//! Compat handlers translate to the same domain services as the native API; no rule lives
//! here.

use std::collections::HashMap;

use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
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

/// Query and form parameters by name; the query's value wins, as with `getParameter`.
#[derive(Debug, Default)]
pub struct NacosParams(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequest<S> for NacosParams {
    type Rejection = NacosError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, NacosError> {
        let (parts, body) = request.into_parts();
        let mut params = HashMap::new();
        let form = parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if let Some(query) = parts.uri.query() {
            for (name, value) in form_urlencoded::parse(query.as_bytes()) {
                params.entry(name.into_owned()).or_insert_with(|| value.into_owned());
            }
        }
        if form {
            let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES).await.map_err(|_| {
                ApiError::new(
                    ErrorKind::PayloadTooLarge,
                    format!("the form body is over {MAX_FORM_BYTES} bytes"),
                )
            })?;
            for (name, value) in form_urlencoded::parse(&bytes) {
                params.entry(name.into_owned()).or_insert_with(|| value.into_owned());
            }
        }
        Ok(NacosParams(params))
    }
}

impl NacosParams {
    /// The value, if present and not empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str).filter(|v| !v.is_empty())
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
