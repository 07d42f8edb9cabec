//! How credentials arrive over HTTP. What they mean (tokens, passwords, roles, the policy
//! check) is `sb_auth`'s; this module only reads headers.

use std::sync::Arc;

pub use sb_auth::Subject;

/// The common name of the client certificate a TLS connection presented (verified against
/// `--tls-client-ca`), attached to each of its requests by the listener. A request with no
/// other credential acts as the service account of this name; an unknown name is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCertSubject(pub Arc<str>);

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(header: Option<&axum::http::HeaderValue>) -> Option<&str> {
    let value = header?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_header_is_parsed() {
        let value = axum::http::HeaderValue::from_static("Bearer abc");
        assert_eq!(bearer(Some(&value)), Some("abc"));
        let value = axum::http::HeaderValue::from_static("Basic abc");
        assert_eq!(bearer(Some(&value)), None);
        assert_eq!(bearer(None), None);
    }
}
