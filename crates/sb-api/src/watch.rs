//! `GET /api/v1/watch` as Server-Sent Events: `event:` put or delete, `data:` the GET
//! shape of the key, `id:` the revision. The id is set on the last event of each revision
//! only, so a client that reconnects with `Last-Event-ID` never skips the rest of a
//! revision it saw half of.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::stream::{self, Stream, StreamExt};
use sb_store::{EventKind, KeyRange, Revision, WatchRequest, WatchStream};

use crate::error::ApiError;
use crate::extract::Params;
use crate::kv::KvJson;
use crate::{ApiState, KV_PREFIX};

/// Pings keep proxies from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub async fn watch(
    State(api): State<ApiState>,
    params: Params,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let prefix = params.flag("prefix")?;
    let key = params.get("key").unwrap_or("");
    if key.is_empty() && !prefix {
        return Err(ApiError::invalid("key", "key is required (or prefix=true to watch every key)"));
    }
    if key.len() > api.config.max_key_bytes {
        return Err(ApiError::invalid(
            "key",
            format!(
                "key is {} bytes, limit is {} bytes (set --max-key-bytes)",
                key.len(),
                api.config.max_key_bytes
            ),
        ));
    }
    let store_key = [KV_PREFIX.as_bytes(), key.as_bytes()].concat();
    let range = if prefix { KeyRange::prefix(store_key) } else { KeyRange::key(store_key) };
    let mut from: Option<Revision> = params.parse("from_revision", "a revision number")?;
    if let Some(last) = headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        let last: Revision = last.trim().parse().map_err(|_| {
            ApiError::invalid("Last-Event-ID", format!("Last-Event-ID is {last:?}, expected a revision"))
        })?;
        from = Some(last + 1);
    }
    let mut request = WatchRequest::new(range);
    request.start_revision = from.filter(|r| *r > 0);
    let stream = api.store.watch(request).await?;
    api.metrics.sse_streams.inc();
    let state = WatchState { stream, shutdown: api.shutdown.clone(), api: api.clone(), done: false };
    let events =
        stream::unfold(state, next_events).flat_map(|events| stream::iter(events.into_iter().map(Ok)));
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

struct WatchState {
    stream: WatchStream,
    shutdown: tokio::sync::watch::Receiver<bool>,
    api: ApiState,
    done: bool,
}

impl Drop for WatchState {
    fn drop(&mut self) {
        self.api.metrics.sse_streams.dec();
    }
}

/// The SSE events of the next revision; the stream ends on shutdown or a store error
/// (after an `error` event naming it, for example a compacted `from_revision`).
async fn next_events(mut state: WatchState) -> Option<(Vec<Event>, WatchState)> {
    if state.done || *state.shutdown.borrow() {
        return None;
    }
    loop {
        let item = tokio::select! {
            item = state.stream.next() => item,
            _ = state.shutdown.changed() => return None,
        };
        match item {
            Some(Ok(batch)) if batch.is_progress() => continue,
            Some(Ok(batch)) => {
                let last = batch.events.len().saturating_sub(1);
                let events = batch
                    .events
                    .iter()
                    .enumerate()
                    .map(|(i, event)| {
                        let name = match event.kind {
                            EventKind::Put => "put",
                            EventKind::Delete => "delete",
                        };
                        let data = serde_json::to_string(&KvJson::from_kv(&event.kv)).unwrap_or_default();
                        let sse = Event::default().event(name).data(data);
                        if i == last {
                            sse.id(batch.revision.to_string())
                        } else {
                            sse
                        }
                    })
                    .collect();
                return Some((events, state));
            }
            Some(Err(error)) => {
                state.done = true;
                let error = ApiError::from(error);
                let data =
                    serde_json::json!({"error": {"code": error.kind.code(), "message": error.message}});
                return Some((vec![Event::default().event("error").data(data.to_string())], state));
            }
            None => return None,
        }
    }
}
