//! The one place where errors become HTTP answers.
//!
//! Every non-2xx answer under `/api/` is `{"error":{"code":"…","message":"…","field":"…"}}`.
//! [`ErrorKind::status`] and [`ErrorKind::code`] are the one table from error kinds to
//! statuses and stable codes; a handler never picks a status by hand.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sb_store::StoreError;
use serde::Serialize;

/// What went wrong, as a client can act on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    /// A revision below the compacted one was asked for.
    Compacted,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    MethodNotAllowed,
    /// An `If-Match` revision did not match.
    Conflict,
    PayloadTooLarge,
    /// Too many attempts (login backoff): the answer carries `Retry-After`.
    TooManyRequests,
    Unavailable,
    /// A store that answers with corrupt data: never caused by input.
    Internal,
}

impl ErrorKind {
    /// The table: kind → (status, stable code).
    fn entry(self) -> (StatusCode, &'static str) {
        match self {
            ErrorKind::InvalidArgument => (StatusCode::BAD_REQUEST, "invalid_argument"),
            ErrorKind::Compacted => (StatusCode::BAD_REQUEST, "revision_compacted"),
            ErrorKind::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            ErrorKind::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
            ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ErrorKind::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ErrorKind::Conflict => (StatusCode::CONFLICT, "conflict"),
            ErrorKind::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ErrorKind::TooManyRequests => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    pub fn status(self) -> StatusCode {
        self.entry().0
    }

    /// The same table's Nacos 1.x column, for paths under `/nacos/`: the status a Nacos
    /// server answers with, and the fixed plain-text body it sends where it has one (an
    /// authentication failure is a 403 `unknown user!`, as in Nacos 1.x).
    pub fn nacos(self) -> (StatusCode, Option<&'static str>) {
        match self {
            ErrorKind::Unauthenticated => (StatusCode::FORBIDDEN, Some("unknown user!")),
            ErrorKind::PermissionDenied => (StatusCode::FORBIDDEN, Some("authorization failed!")),
            other => (other.status(), None),
        }
    }

    pub fn code(self) -> &'static str {
        self.entry().1
    }
}

/// An error answer: a kind, a message that names the value and the limit, and the
/// offending field when there is one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    pub field: Option<&'static str>,
    /// Sent as `Retry-After` (seconds) when set.
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError { kind, message: message.into(), field: None, retry_after_secs: None }
    }

    pub fn with_field(mut self, field: &'static str) -> Self {
        self.field = Some(field);
        self
    }

    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message).with_field(field)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'static str>,
}

impl ApiError {
    /// The JSON body of the error, `{"error":{"code","message","field"}}`, for answers that
    /// carry an error inside a stream.
    pub fn json_body(&self) -> serde_json::Value {
        let envelope =
            Envelope { error: Body { code: self.kind.code(), message: &self.message, field: self.field } };
        serde_json::to_value(&envelope).unwrap_or(serde_json::Value::Null)
    }

    /// The error as a Nacos 1.x server answers it: a plain-text body.
    pub fn into_nacos_response(self) -> Response {
        let (status, fixed) = self.kind.nacos();
        let body = fixed.map_or(self.message, str::to_owned);
        let mut response = (status, body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain;charset=UTF-8"));
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let envelope =
            Envelope { error: Body { code: self.kind.code(), message: &self.message, field: self.field } };
        // Serializing plain strings cannot fail; fall back to a fixed body all the same.
        let body = serde_json::to_vec(&envelope).unwrap_or_else(|_| {
            br#"{"error":{"code":"internal","message":"error encoding failed"}}"#.to_vec()
        });
        let mut response = (self.kind.status(), body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if self.kind == ErrorKind::Unauthenticated {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        let message = error.to_string();
        match error {
            StoreError::Compacted { .. } => {
                ApiError::new(ErrorKind::Compacted, message).with_field("revision")
            }
            StoreError::FutureRevision { .. } => ApiError::invalid("revision", message),
            StoreError::LeaseNotFound(_) => ApiError::not_found(message).with_field("lease"),
            StoreError::TooManyOps { .. }
            | StoreError::DuplicateKey { .. }
            | StoreError::InvalidArgument(_) => ApiError::new(ErrorKind::InvalidArgument, message),
            StoreError::RequestTooLarge { .. } => ApiError::new(ErrorKind::PayloadTooLarge, message),
            StoreError::NotEmpty(_) => ApiError::new(ErrorKind::Conflict, message),
            StoreError::Unavailable(_) | StoreError::WatchCancelled(_) | StoreError::Closed => {
                ApiError::new(ErrorKind::Unavailable, message)
            }
            StoreError::Corrupt(_) => ApiError::new(ErrorKind::Internal, message),
        }
    }
}

impl From<sb_config::ConfigError> for ApiError {
    fn from(error: sb_config::ConfigError) -> Self {
        use sb_config::ConfigError as E;
        let message = error.to_string();
        match error {
            E::InvalidName { field, .. } => ApiError::invalid(field, message),
            E::UnknownFormat(_) => ApiError::invalid("format", message),
            E::InvalidContent(_) | E::SchemaViolation(_) => ApiError::invalid("content", message),
            E::InvalidSchema(_) => ApiError::invalid("schema", message),
            E::TooLarge { .. } => ApiError::new(ErrorKind::PayloadTooLarge, message).with_field("content"),
            E::VersionMismatch { .. } => ApiError::new(ErrorKind::Conflict, message).with_field("If-Match"),
            E::Contended(_) => ApiError::new(ErrorKind::Conflict, message),
            E::NotFound(_) => ApiError::not_found(message),
            E::VersionNotFound { .. } => ApiError::not_found(message).with_field("version"),
            E::InvalidSelector(_) => ApiError::invalid("selector", message),
            E::InvalidImport(_) => ApiError::invalid("file", message),
            E::ImportConflict(_) => ApiError::new(ErrorKind::Conflict, message),
            E::NoGray(_) => ApiError::new(ErrorKind::Conflict, message),
            E::Corrupt(_) | E::Keys(_) => ApiError::new(ErrorKind::Internal, message),
            E::SecretsUnavailable(_) => ApiError::new(ErrorKind::Unavailable, message),
            E::NotCaughtUp { .. } => ApiError::new(ErrorKind::Unavailable, message),
            E::Store(error) => ApiError::from(error),
        }
    }
}

impl From<sb_auth::AuthError> for ApiError {
    fn from(error: sb_auth::AuthError) -> Self {
        use sb_auth::AuthError as E;
        let message = error.to_string();
        match error {
            E::Invalid { field, .. } => ApiError::invalid(field, message),
            E::NotFound(_) => ApiError::not_found(message),
            E::AlreadyExists(_) | E::Conflict(_) => ApiError::new(ErrorKind::Conflict, message),
            E::BadCredentials => ApiError::new(ErrorKind::Unauthenticated, message),
            E::Backoff { retry_after_secs } => ApiError {
                retry_after_secs: Some(retry_after_secs),
                ..ApiError::new(ErrorKind::TooManyRequests, message)
            },
            E::Busy | E::NotCaughtUp(_) => ApiError::new(ErrorKind::Unavailable, message),
            E::Store(error) => ApiError::from(error),
            E::Corrupt(_) => ApiError::new(ErrorKind::Internal, message),
        }
    }
}

/// A size for a message: `1 MiB`, `1.9 MiB`, `512 KiB`, `100 bytes`.
pub fn human_bytes(bytes: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * 1024;
    match bytes {
        b if b >= MIB && b % MIB == 0 => format!("{} MiB", b / MIB),
        b if b >= MIB => format!("{:.1} MiB", b as f64 / MIB as f64),
        b if b >= KIB && b % KIB == 0 => format!("{} KiB", b / KIB),
        b if b >= KIB => format!("{:.1} KiB", b as f64 / KIB as f64),
        b => format!("{b} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(1024 * 1024), "1 MiB");
        assert_eq!(human_bytes(2_000_000), "1.9 MiB");
        assert_eq!(human_bytes(1024), "1 KiB");
        assert_eq!(human_bytes(10), "10 bytes");
    }

    #[test]
    fn every_kind_has_a_distinct_code() {
        let kinds = [
            ErrorKind::InvalidArgument,
            ErrorKind::Compacted,
            ErrorKind::Unauthenticated,
            ErrorKind::PermissionDenied,
            ErrorKind::NotFound,
            ErrorKind::MethodNotAllowed,
            ErrorKind::Conflict,
            ErrorKind::PayloadTooLarge,
            ErrorKind::TooManyRequests,
            ErrorKind::Unavailable,
            ErrorKind::Internal,
        ];
        let codes: std::collections::HashSet<_> = kinds.iter().map(|k| k.code()).collect();
        assert_eq!(codes.len(), kinds.len());
    }
}
