//! Unique IDs over HTTP: a thin translator over `sb_ids` (Snowflake and segments). IDs are
//! decimal strings, because JavaScript numbers lose precision above 2^53.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sb_ids::{
    check_count, DecodedId, IdError, SegmentService, SnowflakeService, TagStatus, DEFAULT_NAMESPACE,
};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ErrorKind};
use crate::extract::{ApiJson, Params};
use crate::ApiState;

/// The ID services a node runs.
pub struct IdServices {
    pub snowflake: Arc<SnowflakeService>,
    pub segments: Arc<SegmentService>,
}

impl From<IdError> for ApiError {
    fn from(error: IdError) -> Self {
        let message = error.to_string();
        match error {
            IdError::InvalidArgument { field, .. } => ApiError::invalid(field, message),
            IdError::UnknownTag { .. } => ApiError::not_found(message).with_field("tag"),
            IdError::TagExists { .. } => ApiError::new(ErrorKind::Conflict, message).with_field("tag"),
            IdError::Refused(_) => ApiError::new(ErrorKind::Unavailable, message),
            IdError::Store(store) => store.into(),
            IdError::Corrupt(_) => ApiError::new(ErrorKind::Internal, message),
        }
    }
}

/// `{"ids":["…","…"]}`, written directly: a batch is up to 10,000 IDs.
fn ids_response(ids: &[u64]) -> Response {
    let mut body = String::with_capacity(10 + ids.len() * 22);
    body.push_str("{\"ids\":[");
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        let _ = write!(body, "\"{id}\"");
    }
    body.push_str("]}");
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn path_text(path: Result<Path<String>, PathRejection>, field: &'static str) -> Result<String, ApiError> {
    path.map(|Path(text)| text).map_err(|rejection| {
        ApiError::invalid(field, format!("{field} is not valid: {}", rejection.body_text()))
    })
}

fn namespace(params: &Params) -> &str {
    params.get("namespace").filter(|ns| !ns.is_empty()).unwrap_or(DEFAULT_NAMESPACE)
}

pub async fn snowflake_next(State(api): State<ApiState>, params: Params) -> Result<Response, ApiError> {
    let count = check_count(params.get("count"))?;
    let ids = api.ids.snowflake.next_ids(count).await?;
    Ok(ids_response(&ids))
}

pub async fn snowflake_decode(
    State(api): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<DecodedId>, ApiError> {
    let id = path_text(path, "id")?;
    Ok(Json(api.ids.snowflake.layout().decode_str(&id)?))
}

pub async fn segment_next(
    State(api): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    params: Params,
) -> Result<Response, ApiError> {
    let tag = path_text(path, "tag")?;
    let count = check_count(params.get("count"))?;
    let ids = api.ids.segments.next_ids(namespace(&params), &tag, count).await?;
    Ok(ids_response(&ids))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTag {
    tag: String,
    /// The first ID; 1 when absent.
    start: Option<u64>,
    /// IDs per allocation; the server's default step when absent.
    step: Option<u64>,
}

pub async fn segment_create(
    State(api): State<ApiState>,
    crate::audit::Audited(audit): crate::audit::Audited,
    params: Params,
    ApiJson(request): ApiJson<CreateTag>,
) -> Result<Json<TagStatus>, ApiError> {
    let segments = &api.ids.segments;
    let step = request.step.unwrap_or(segments.default_step());
    let start = request.start.unwrap_or(1);
    let status = segments.create_tag(namespace(&params), &request.tag, start, step, &audit).await?;
    Ok(Json(status))
}

#[derive(Serialize)]
pub struct TagList {
    namespace: String,
    tags: Vec<TagStatus>,
}

pub async fn segment_list(State(api): State<ApiState>, params: Params) -> Result<Json<TagList>, ApiError> {
    let namespace = namespace(&params).to_owned();
    let tags = api.ids.segments.list_tags(&namespace).await?;
    Ok(Json(TagList { namespace, tags }))
}
