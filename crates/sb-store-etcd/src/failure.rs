//! What went wrong on the wire, classified once from etcd-client's error and etcd's own
//! messages, before each operation turns it into a [`StoreError`] with its context (the
//! revision or lease it asked for).

use std::future::Future;
use std::time::Duration;

use sb_store::StoreError;

/// A gRPC status code, as a number: the codes are stable across implementations.
type Code = i32;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// `mvcc: required revision has been compacted`
    Compacted,
    /// `mvcc: required revision is a future revision`
    FutureRevision,
    /// `requested lease not found`
    LeaseNotFound,
    /// `request is too large`
    RequestTooLarge,
    /// `too many operations in txn request`
    TooManyOps,
    /// `duplicate key given in txn request`
    DuplicateKey,
    /// The answer was over the client's decode limit (4 MiB): read a smaller page.
    ResponseTooLarge(String),
    /// The store cannot be reached, timed out, or has no leader: retryable.
    Unavailable(String),
    InvalidArgument(String),
}

const CANCELLED: Code = 1;
const UNKNOWN: Code = 2;
const INVALID_ARGUMENT: Code = 3;
const DEADLINE_EXCEEDED: Code = 4;
const RESOURCE_EXHAUSTED: Code = 8;
const ABORTED: Code = 10;
const OUT_OF_RANGE: Code = 11;
const UNAVAILABLE: Code = 14;

impl Failure {
    pub fn classify(error: &etcd_client::Error) -> Failure {
        match error {
            etcd_client::Error::GRpcStatus(status) => {
                classify_status(status.code() as Code, status.message())
            }
            etcd_client::Error::InvalidArgs(message) => Failure::InvalidArgument(message.clone()),
            etcd_client::Error::InvalidUri(e) => {
                Failure::InvalidArgument(format!("invalid etcd endpoint: {e}"))
            }
            etcd_client::Error::LeaseKeepAliveError(message) if message.contains("lease not found") => {
                Failure::LeaseNotFound
            }
            other => Failure::Unavailable(other.to_string()),
        }
    }

    /// The error for a request that asked for nothing in particular; operations with a
    /// revision or lease in hand map those kinds themselves.
    pub fn into_store_error(self) -> StoreError {
        match self {
            Failure::Compacted => StoreError::Compacted { requested: 0, compacted: None },
            Failure::FutureRevision => StoreError::FutureRevision { requested: 0, current: 0 },
            Failure::LeaseNotFound => StoreError::LeaseNotFound(sb_store::LeaseId(0)),
            Failure::RequestTooLarge => StoreError::RequestTooLarge { bytes: 0, limit: 0 },
            Failure::TooManyOps => {
                StoreError::InvalidArgument("etcd refused the transaction: too many operations".into())
            }
            Failure::DuplicateKey => {
                StoreError::DuplicateKey { key: "(etcd refused a key written twice in one branch)".into() }
            }
            Failure::ResponseTooLarge(message) => StoreError::Unavailable(message),
            Failure::Unavailable(message) => StoreError::Unavailable(message),
            Failure::InvalidArgument(message) => StoreError::InvalidArgument(message),
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, Failure::Unavailable(_))
    }
}

fn classify_status(code: Code, message: &str) -> Failure {
    let has = |needle: &str| message.contains(needle);
    if has("required revision has been compacted") {
        Failure::Compacted
    } else if has("required revision is a future revision") {
        Failure::FutureRevision
    } else if has("requested lease not found") {
        Failure::LeaseNotFound
    } else if has("request is too large") {
        Failure::RequestTooLarge
    } else if has("too many operations in txn request") {
        Failure::TooManyOps
    } else if has("duplicate key given in txn request") {
        Failure::DuplicateKey
    } else if has("message length too large") || has("larger than max") || code == RESOURCE_EXHAUSTED {
        // tonic's decode limit (OUT_OF_RANGE) and grpc-go's size limits (RESOURCE_EXHAUSTED).
        Failure::ResponseTooLarge(message.to_string())
    } else if matches!(code, CANCELLED | DEADLINE_EXCEEDED | ABORTED | UNAVAILABLE | UNKNOWN) {
        Failure::Unavailable(format!("etcd: {message}"))
    } else if code == INVALID_ARGUMENT || code == OUT_OF_RANGE {
        Failure::InvalidArgument(format!("etcd refused the request: {message}"))
    } else {
        Failure::Unavailable(format!("etcd: {message} (grpc status {code})"))
    }
}

/// Runs one unary call under the request timeout.
pub(crate) async fn timed<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result.map_err(|e| Failure::classify(&e)),
        Err(_) => Err(Failure::Unavailable(format!("etcd did not answer within {} ms", timeout.as_millis()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_messages_are_classified() {
        let cases = [
            ("etcdserver: mvcc: required revision has been compacted", OUT_OF_RANGE, Failure::Compacted),
            (
                "etcdserver: mvcc: required revision is a future revision",
                OUT_OF_RANGE,
                Failure::FutureRevision,
            ),
            ("etcdserver: requested lease not found", 5, Failure::LeaseNotFound),
            ("etcdserver: request is too large", INVALID_ARGUMENT, Failure::RequestTooLarge),
            ("etcdserver: too many operations in txn request", INVALID_ARGUMENT, Failure::TooManyOps),
            ("etcdserver: duplicate key given in txn request", INVALID_ARGUMENT, Failure::DuplicateKey),
        ];
        for (message, code, expected) in cases {
            assert_eq!(classify_status(code, message), expected, "{message}");
        }
        let decode =
            "Error, decoded message length too large: found 5000000 bytes, the limit is: 4194304 bytes";
        assert!(matches!(classify_status(OUT_OF_RANGE, decode), Failure::ResponseTooLarge(_)));
        assert!(classify_status(UNAVAILABLE, "etcdserver: leader changed").is_retryable());
    }
}
