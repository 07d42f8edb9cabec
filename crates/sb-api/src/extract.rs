//! Request parsing that answers in the JSON error shape, never axum's plain-text
//! rejections: query parameters by name, JSON bodies, revisions in `If-Match`.

use std::collections::HashMap;
use std::str::FromStr;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use serde::de::DeserializeOwned;

use crate::error::{human_bytes, ApiError};

/// The query string as name → value (the last one wins), percent-decoded.
pub struct Params(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        let pairs: Vec<(String, String)> = serde_urlencoded_pairs(query);
        Ok(Params(pairs.into_iter().collect()))
    }
}

fn serde_urlencoded_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

/// Decodes `%XX` escapes and `+` (a space in a query); invalid escapes stay as written.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// A parsed parameter, or a 400 naming it and the value.
    pub fn parse<T: FromStr>(&self, name: &'static str, expected: &str) -> Result<Option<T>, ApiError> {
        match self.get(name) {
            None | Some("") => Ok(None),
            Some(raw) => raw
                .parse()
                .map(Some)
                .map_err(|_| ApiError::invalid(name, format!("{name} is {raw:?}, expected {expected}"))),
        }
    }

    /// `true`/`false` (also `1`/`0`); absent is false.
    pub fn flag(&self, name: &'static str) -> Result<bool, ApiError> {
        match self.get(name) {
            None | Some("false") | Some("0") => Ok(false),
            Some("") | Some("true") | Some("1") => Ok(true),
            Some(raw) => Err(ApiError::invalid(name, format!("{name} is {raw:?}, expected true or false"))),
        }
    }
}

/// A JSON body, with parse errors as 400s naming what was wrong.
pub struct ApiJson<T>(pub T);

/// JSON bodies of the API are small: requests, never values.
const MAX_JSON_BODY_BYTES: usize = 64 * 1024;

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::to_bytes(request.into_body(), MAX_JSON_BODY_BYTES).await.map_err(|_| {
            ApiError::new(
                crate::error::ErrorKind::PayloadTooLarge,
                format!(
                    "request body is over {}, the limit for JSON bodies",
                    human_bytes(MAX_JSON_BODY_BYTES)
                ),
            )
        })?;
        serde_json::from_slice(&bytes)
            .map(ApiJson)
            .map_err(|e| ApiError::invalid("body", format!("request body is not the expected JSON: {e}")))
    }
}

/// The revision in `If-Match`, quoted (`"42"`) or bare (`42`); `None` when absent.
pub fn if_match_revision(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(value) = headers.get(axum::http::header::IF_MATCH) else {
        return Ok(None);
    };
    let invalid = || {
        ApiError::invalid(
            "If-Match",
            format!("If-Match is {value:?}, expected a mod revision such as \"42\" or 42"),
        )
    };
    let text = value.to_str().map_err(|_| invalid())?.trim();
    let bare = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(text);
    match bare.parse::<i64>() {
        Ok(revision) if revision >= 0 => Ok(Some(revision)),
        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        let pairs = serde_urlencoded_pairs("key=a%2Fb&prefix&x=1+2&bad=%zz&end=%4");
        assert_eq!(pairs[0], ("key".into(), "a/b".into()));
        assert_eq!(pairs[1], ("prefix".into(), "".into()));
        assert_eq!(pairs[2], ("x".into(), "1 2".into()));
        assert_eq!(pairs[3], ("bad".into(), "%zz".into()));
        assert_eq!(pairs[4], ("end".into(), "%4".into()));
    }

    #[test]
    fn if_match_takes_quoted_and_bare_revisions() {
        let mut headers = HeaderMap::new();
        assert_eq!(if_match_revision(&headers), Ok(None));
        headers.insert("if-match", "\"42\"".parse().unwrap());
        assert_eq!(if_match_revision(&headers), Ok(Some(42)));
        headers.insert("if-match", "7".parse().unwrap());
        assert_eq!(if_match_revision(&headers), Ok(Some(7)));
        headers.insert("if-match", "*".parse().unwrap());
        assert_eq!(if_match_revision(&headers).unwrap_err().field, Some("If-Match"));
    }
}
