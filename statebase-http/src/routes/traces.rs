//! Traces: the audit trail.

use super::*;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TraceListQuery {
    /// Page size, 1..=100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// The `last_id` of the previous page.
    starting_after: Option<String>,
    session_id: Option<String>,
    /// E.g. `state.updated`.
    action: Option<String>,
    resource_type: Option<String>,
    resource_id: Option<String>,
    /// ISO 8601. Alias: `start_time`.
    #[serde(alias = "start_time")]
    #[param(format = DateTime)]
    created_after: Option<String>,
    /// ISO 8601. Alias: `end_time`.
    #[serde(alias = "end_time")]
    #[param(format = DateTime)]
    created_before: Option<String>,
}

async fn traces(sb: &Sb, q: TraceListQuery) -> Reply {
    let req = ListTraces {
        limit: q.limit,
        starting_after: q.starting_after,
        session_id: q.session_id,
        action: q.action,
        resource_type: q.resource_type,
        resource_id: q.resource_id,
        created_after: timestamp("created_after", q.created_after)?,
        created_before: timestamp("created_before", q.created_before)?,
    };
    let page = sb.list_traces(req).await?;
    ok(ListOut::<TraceOut>::page(&page))
}

/// The audit trail, newest first.
#[utoipa::path(get, path = "/traces", params(TraceListQuery),
    responses((status = 200, body = ListOut<TraceOut>)))]
pub async fn list_traces(Tenant(sb): Tenant, Query(q): Query<TraceListQuery>) -> Reply {
    traces(&sb, q).await
}

/// A session's audit trail. Also at `/traces/sessions/{id}/traces`.
#[utoipa::path(get, path = "/sessions/{id}/traces", params(TraceListQuery),
    responses((status = 200, body = ListOut<TraceOut>)))]
pub async fn session_traces(
    Tenant(sb): Tenant,
    Path(id): Path<String>,
    Query(mut q): Query<TraceListQuery>,
) -> Reply {
    // A missing session is a 404, not an empty page.
    sb.get_session(&id).await?;
    q.session_id = Some(id);
    traces(&sb, q).await
}

/// One audit record.
#[utoipa::path(get, path = "/traces/{id}", responses((status = 200, body = TraceOut)))]
pub async fn get_trace(Tenant(sb): Tenant, Path(id): Path<String>) -> Reply {
    ok(TraceOut::from(&sb.get_trace(&id).await?))
}

/// These routes, under `/v1`.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    let router = OpenApiRouter::new()
        .routes(routes!(list_traces))
        .routes(routes!(get_trace));
    also_at(
        router,
        routes!(session_traces),
        &["/traces/sessions/{id}/traces"],
    )
}
