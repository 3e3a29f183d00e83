//! Context: the state, the memories most relevant to a query and the latest turns, in one call.

use super::*;

/// What to gather for the next prompt.
#[derive(Deserialize, ToSchema)]
pub struct ContextBody {
    /// Memories are ranked against it; without it, the most recent.
    query: Option<String>,
    /// 1..=20 (default 5).
    #[schema(minimum = 1, maximum = 20)]
    memory_limit: Option<i64>,
    /// 1..=50 (default 10).
    #[schema(minimum = 1, maximum = 50)]
    turn_limit: Option<i64>,
}

/// The state, the memories most relevant to a query and the latest turns, in one call.
#[utoipa::path(post, path = "/sessions/{id}/context", request_body = ContextBody,
    responses((status = 200, body = ContextOut)))]
pub async fn context(
    Tenant(sb): Tenant,
    Path(id): Path<String>,
    Body(b): Body<ContextBody>,
) -> Reply {
    let req = ContextRequest {
        query: b.query,
        memory_limit: b.memory_limit,
        turn_limit: b.turn_limit,
    };
    gather_context(&sb, &id, req, true, true).await
}

/// The GET form of context, as the curl examples call it.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ContextQuery {
    /// Memories are ranked against it; without it, the most recent.
    query: Option<String>,
    /// Whether to gather memories (default true).
    include_memories: Option<bool>,
    /// Whether to gather turns (default true).
    include_turns: Option<bool>,
    /// 1..=20 (default 5).
    #[param(minimum = 1, maximum = 20)]
    memory_limit: Option<i64>,
    /// 1..=50 (default 10). Alias: `turn_limit`.
    #[serde(alias = "turn_limit")]
    #[param(minimum = 1, maximum = 50)]
    max_turns: Option<i64>,
}

/// [`context`] with its options in the query string.
#[utoipa::path(get, path = "/sessions/{id}/context", params(ContextQuery),
    responses((status = 200, body = ContextOut)))]
pub async fn get_context(
    Tenant(sb): Tenant,
    Path(id): Path<String>,
    Query(q): Query<ContextQuery>,
) -> Reply {
    let (memories, turns) = (
        q.include_memories.unwrap_or(true),
        q.include_turns.unwrap_or(true),
    );
    let req = ContextRequest {
        // Without memories there is nothing to rank.
        query: q.query.filter(|_| memories),
        memory_limit: q.memory_limit,
        turn_limit: q.max_turns,
    };
    gather_context(&sb, &id, req, memories, turns).await
}

async fn gather_context(
    sb: &Sb,
    id: &str,
    req: ContextRequest,
    memories: bool,
    turns: bool,
) -> Reply {
    let started = std::time::Instant::now();
    let mut c = sb.context(id, req).await?;
    if !memories {
        c.memories.clear();
    }
    if !turns {
        c.recent_turns.clear();
    }
    let body = ContextOut::new(&c).map_err(statebase_core::Error::backend)?;
    let mut response = Json(body).into_response();
    let latency = format!("{:.3}", started.elapsed().as_secs_f64() * 1e3);
    if let Ok(v) = latency.parse() {
        response.headers_mut().insert("x-statebase-latency", v);
    }
    Ok(response)
}

/// These routes, under `/v1`.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(context, get_context))
}
