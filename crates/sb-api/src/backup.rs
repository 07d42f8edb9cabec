//! `GET /api/v1/admin/backup`: the backup file format (`sb_store::backup`) of a running
//! node, streamed. The embedded store's file is locked while the server runs, so this
//! route is how `switchboard backup` reaches it.
//!
//! The snapshot is written into a bounded pipe by a task and read out as the body, so a
//! large store never sits in memory. A failure after the first byte cannot change the
//! status any more: the body then ends with an error (the connection is cut without a
//! final chunk), and the file's trailer and digest let the client refuse what it got.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::stream;
use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

use crate::error::ApiError;
use crate::kv::timed;
use crate::ApiState;

/// The pipe between the snapshot task and the body: bounds memory per backup.
const PIPE_BYTES: usize = 256 * 1024;
const CHUNK_BYTES: usize = 64 * 1024;

type BackupTask = JoinHandle<sb_store::StoreResult<sb_store::backup::BackupSummary>>;

pub async fn backup(
    State(api): State<ApiState>,
    crate::audit::Audited(audit): crate::audit::Audited,
) -> Result<Response, ApiError> {
    // Who took a backup (token hashes included) is recorded first; the write also fails
    // with a status while one can still be sent: an unreachable store is a 503.
    let revision =
        timed(&api, "txn", crate::audit::record_alone(&api, &audit, "admin.backup", "admin/backup", None))
            .await?;
    let (reader, writer) = tokio::io::duplex(PIPE_BYTES);
    let store = api.store.clone();
    let task: BackupTask =
        tokio::spawn(async move { sb_store::backup::backup(store.as_ref(), writer).await });
    let body = stream::unfold(Some((reader, task)), |state| async move {
        let (mut reader, task) = state?;
        let mut chunk = vec![0u8; CHUNK_BYTES];
        match reader.read(&mut chunk).await {
            Ok(0) => finish(task).await.err().map(|error| (Err(error), None)),
            Ok(n) => {
                chunk.truncate(n);
                Some((Ok(Bytes::from(chunk)), Some((reader, task))))
            }
            Err(error) => {
                task.abort();
                Some((Err(error), None))
            }
        }
    });
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        (header::CONTENT_DISPOSITION, format!("attachment; filename=\"switchboard-{revision}.sb\"")),
    ];
    Ok((headers, Body::from_stream(body)).into_response())
}

/// The snapshot task's end: an error makes the body fail instead of ending cleanly.
async fn finish(task: BackupTask) -> std::io::Result<()> {
    match task.await {
        Ok(Ok(summary)) => {
            tracing::info!(
                revision = summary.revision,
                keys = summary.keys,
                bytes = summary.bytes,
                "backup streamed"
            );
            Ok(())
        }
        Ok(Err(error)) => {
            tracing::warn!(error = %error, "backup failed after it started streaming");
            Err(std::io::Error::other(error.to_string()))
        }
        Err(join_error) => Err(std::io::Error::other(format!("the backup task ended: {join_error}"))),
    }
}
