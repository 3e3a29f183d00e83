//! `GET /v1/export`: the caller's tenant as an archive, streamed while it is read.

use super::*;
use futures_util::{stream, StreamExt};
use statebase_core::archive::{self, ExportOptions};
use tokio_util::io::ReaderStream;

/// Bytes of archive held between the store and a slow client: the export waits beyond.
const BUFFER: usize = 64 << 10;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// Memories' vectors too (default false: an import re-embeds them).
    with_vectors: Option<bool>,
}

/// Every record of the caller's tenant, as JSON lines of format 1 (see the README): a
/// header, each session with its versions, turns, memories and entities, user-level
/// memories, traces, keys (hashes only) and webhooks, and a trailer with the counts and
/// the SHA-256 of what came before. `statebase import` restores it. A failure midway
/// breaks the connection: an archive without its trailer is incomplete.
#[utoipa::path(get, path = "/export", params(ExportQuery), responses(
    (status = 200, content_type = "application/x-ndjson", body = String),
))]
pub async fn export(Tenant(sb): Tenant, Query(q): Query<ExportQuery>) -> Response {
    let options = ExportOptions {
        tenant: Some(sb.tenant_id().to_owned()),
        with_vectors: q.with_vectors.unwrap_or(false),
    };
    let (mut writer, reader) = tokio::io::duplex(BUFFER);
    let (done, outcome) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let now = sb.now();
        let result = archive::export(&**sb.store(), &options, now, &mut writer, &mut |_| {}).await;
        drop(writer);
        let _ = done.send(result);
    });
    // The body ends with the export: cleanly, or with an error that aborts the response.
    let end = stream::once(outcome).filter_map(|result| async move {
        match result {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "an export failed midway");
                Some(Err(std::io::Error::other(e)))
            }
            Err(_) => Some(Err(std::io::Error::other("the export stopped"))),
        }
    });
    let body = axum::body::Body::from_stream(ReaderStream::new(reader).chain(end));
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        body,
    )
        .into_response()
}

/// This route, under `/v1`.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(export))
}
