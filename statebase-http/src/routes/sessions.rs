//! Sessions: create, read, list, change, delete, fork.

use super::*;

/// Create a session.
#[utoipa::path(post, path = "/sessions", request_body = CreateSession,
    responses((status = 201, body = SessionOut)))]
pub async fn create_session(Tenant(sb): Tenant, Body(req): Body<CreateSession>) -> Reply {
    let s = sb.create_session(req).await?;
    created(SessionOut::from(&s))
}

/// A session, with its current state.
#[utoipa::path(get, path = "/sessions/{id}", responses((status = 200, body = SessionOut)))]
pub async fn get_session(Tenant(sb): Tenant, Path(id): Path<String>) -> Reply {
    ok(SessionOut::from(&sb.get_session(&id).await?))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SessionListQuery {
    /// Page size, 1..=100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// The `last_id` of the previous page.
    starting_after: Option<String>,
    agent_id: Option<String>,
    user_id: Option<String>,
    /// ISO 8601.
    #[param(format = DateTime)]
    created_after: Option<String>,
    /// ISO 8601.
    #[param(format = DateTime)]
    created_before: Option<String>,
    /// A JSON object the metadata must contain, as a string.
    metadata: Option<String>,
}

/// The tenant's sessions, newest first.
#[utoipa::path(get, path = "/sessions", params(SessionListQuery),
    responses((status = 200, body = ListOut<SessionOut>)))]
pub async fn list_sessions(Tenant(sb): Tenant, Query(q): Query<SessionListQuery>) -> Reply {
    let metadata = match q.metadata {
        None => None,
        Some(m) => Some(
            crate::extract::parse::<Object>(m.as_bytes(), "query").map_err(|_| {
                ApiError::validation("metadata", "query", "must be a JSON object".into())
            })?,
        ),
    };
    let req = ListSessions {
        limit: q.limit,
        starting_after: q.starting_after,
        agent_id: q.agent_id,
        user_id: q.user_id,
        created_after: timestamp("created_after", q.created_after)?,
        created_before: timestamp("created_before", q.created_before)?,
        metadata,
    };
    let page = sb.list_sessions(req).await?;
    ok(ListOut::<SessionOut>::page(&page))
}

/// Merge-patch a session's metadata, or give it a new lifetime.
#[utoipa::path(patch, path = "/sessions/{id}", request_body = UpdateSession,
    responses((status = 200, body = SessionOut)))]
pub async fn update_session(
    Tenant(sb): Tenant,
    Path(id): Path<String>,
    Body(req): Body<UpdateSession>,
) -> Reply {
    ok(SessionOut::from(&sb.update_session(&id, req).await?))
}

/// Delete a session with its versions, turns and memories.
#[utoipa::path(delete, path = "/sessions/{id}", responses((status = 204)))]
pub async fn delete_session(Tenant(sb): Tenant, Path(id): Path<String>) -> Reply {
    sb.delete_session(&id).await?;
    no_content()
}

/// A fork.
#[derive(Deserialize, ToSchema)]
pub struct ForkBody {
    /// The version to copy (default the latest; negative counts back).
    version: Option<i64>,
    /// The new session's agent (default the source's). Alias: `new_agent_id`.
    #[serde(alias = "new_agent_id")]
    #[schema(min_length = 1, max_length = 256, pattern = r"\S")]
    agent_id: Option<String>,
    #[schema(min_length = 1, max_length = 256, pattern = r"\S")]
    user_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
    #[schema(minimum = 1, maximum = 2_592_000)]
    ttl_seconds: Option<i64>,
}

/// A new session whose initial state is a version of this one.
#[utoipa::path(post, path = "/sessions/{id}/fork", request_body = ForkBody,
    responses((status = 201, body = Forked)))]
pub async fn fork(Tenant(sb): Tenant, Path(id): Path<String>, Body(b): Body<ForkBody>) -> Reply {
    let s = sb
        .fork(
            &id,
            ForkFrom {
                version: b.version,
                agent_id: b.agent_id,
                user_id: b.user_id,
                metadata: b.metadata,
                ttl_seconds: b.ttl_seconds,
            },
        )
        .await?;
    created(Forked::from(&s))
}

/// These routes, under `/v1`.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_session, list_sessions))
        .routes(routes!(get_session, update_session, delete_session))
        .routes(routes!(fork))
}
