//! The audit log's protocol side: [`Audited`] builds the [`Audit`] context of a request
//! (its authenticated subject, client address after `--trusted-proxies`, user agent and
//! request id) for the domain mutations, and `GET /api/v1/audit` reads the log.

use axum::extract::{FromRequestParts, State};
use axum::http::header::USER_AGENT;
use axum::http::request::Parts;
use axum::Json;
use sb_audit::{Audit, AuditError, AuditPage, AuditQuery};
use sb_store::{Revision, Txn};

use crate::auth::Subject;
use crate::error::{ApiError, ErrorKind};
use crate::extract::Params;
use crate::middleware::RequestContext;
use crate::ApiState;

/// The longest user agent kept in a record.
const MAX_USER_AGENT_CHARS: usize = 256;
/// A page's size when the query names none.
const DEFAULT_LIMIT: usize = 100;

/// The request's audit context. Every audited handler takes it and hands `.0` to the
/// domain mutation, which writes the record in the change's own transaction.
pub struct Audited(pub Audit);

impl<S: Send + Sync> FromRequestParts<S> for Audited {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Audited(audit_of(parts)))
    }
}

/// The audit context of a request, from what the middleware attached to it.
pub fn audit_of(parts: &Parts) -> Audit {
    audit_from(parts.extensions.get::<Subject>(), parts.extensions.get::<RequestContext>(), &parts.headers)
}

/// The one rule for who made a change: the authenticated subject, the client address
/// (after `--trusted-proxies`), the user agent (truncated) and the request id.
pub(crate) fn audit_from(
    subject: Option<&Subject>,
    context: Option<&RequestContext>,
    headers: &axum::http::HeaderMap,
) -> Audit {
    let actor = subject.map(|s| s.name.clone()).unwrap_or_default();
    let source_ip = context.and_then(|c| c.client).map(|ip| ip.to_string()).unwrap_or_default();
    let request_id = context.map(|c| c.request_id.clone()).unwrap_or_default();
    let user_agent: String = headers
        .get(USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .chars()
        .take(MAX_USER_AGENT_CHARS)
        .collect();
    Audit { actor, source_ip, user_agent, request_id }
}

/// Records an audited action that changes no key (an admin action): the record is its
/// own transaction, and its revision is the answer's.
pub(crate) async fn record_alone(
    api: &ApiState,
    audit: &Audit,
    action: &str,
    resource: &str,
    after: Option<&[u8]>,
) -> sb_store::StoreResult<Revision> {
    let response = api.store.txn(Txn::new().and_then([audit.op(action, resource, None, after)])).await?;
    Ok(response.revision)
}

impl From<AuditError> for ApiError {
    fn from(error: AuditError) -> Self {
        match error {
            AuditError::InvalidArgument { field, message } => ApiError::invalid(field, message),
            AuditError::Store(error) => error.into(),
            AuditError::Corrupt { .. } => ApiError::new(ErrorKind::Internal, error.to_string()),
        }
    }
}

/// A time in Unix milliseconds (`1700000000000`); the CLI turns `1h` or a date into one.
fn time_param(params: &Params, name: &'static str) -> Result<Option<u64>, ApiError> {
    params.parse::<u64>(name, "a time in Unix milliseconds")
}

/// `GET /api/v1/audit?from=&to=&actor=&resource=&action=&limit=&after=`
pub async fn list(State(api): State<ApiState>, params: Params) -> Result<Json<AuditPage>, ApiError> {
    let text = |name: &str| params.get(name).filter(|v| !v.is_empty()).map(str::to_owned);
    let query = AuditQuery {
        from_ms: time_param(&params, "from")?,
        to_ms: time_param(&params, "to")?,
        actor: text("actor"),
        resource_prefix: text("resource"),
        action: text("action"),
        limit: params.parse::<usize>("limit", "a number from 1 to 1000")?.unwrap_or(DEFAULT_LIMIT),
        after: text("after"),
    };
    Ok(Json(sb_audit::query(api.store.as_ref(), &query).await?))
}
