//! Memories: add, read, change, delete, list and search, under both route families (`/memories` and `/memory`).

use super::*;

/// A new memory.
#[derive(Deserialize, ToSchema)]
pub struct MemoryBody {
    /// The session it belongs to; without one, `user_id` makes it a user-level memory.
    session_id: Option<String>,
    #[schema(min_length = 1, max_length = 256, pattern = r"\S")]
    user_id: Option<String>,
    /// 1..=10,000 characters, not blank.
    #[schema(min_length = 1, max_length = 10_000, pattern = r"\S")]
    content: String,
    /// Default `general`. Alias: `memory_type`.
    #[serde(alias = "memory_type")]
    #[schema(min_length = 1, max_length = 256, pattern = r"\S")]
    r#type: Option<String>,
    /// At most 64, each like a `type`.
    #[schema(max_items = 64)]
    tags: Option<Vec<String>>,
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
    /// Embed it for semantic search now (default true).
    embed: Option<bool>,
}

async fn add_memory_from(sb: &Sb, b: MemoryBody) -> Reply {
    let m = sb
        .add_memory(AddMemory {
            session_id: b.session_id,
            user_id: b.user_id,
            content: b.content,
            memory_type: b.r#type,
            tags: b.tags,
            metadata: b.metadata,
            embed: b.embed,
        })
        .await?;
    created(MemoryOut::from(&m))
}

/// Add a memory. Also at `/memory`.
#[utoipa::path(post, path = "/memories", request_body = MemoryBody,
    responses((status = 201, body = MemoryOut)))]
pub async fn add_memory(Tenant(sb): Tenant, Body(b): Body<MemoryBody>) -> Reply {
    add_memory_from(&sb, b).await
}

/// Add a memory to a session.
#[utoipa::path(post, path = "/sessions/{id}/memories", request_body = MemoryBody,
    responses((status = 201, body = MemoryOut)))]
pub async fn add_session_memory(
    Tenant(sb): Tenant,
    Path(id): Path<String>,
    Body(mut b): Body<MemoryBody>,
) -> Reply {
    b.session_id = Some(id);
    add_memory_from(&sb, b).await
}

/// One memory. Also at `/memory/{id}`.
#[utoipa::path(get, path = "/memories/{id}", responses((status = 200, body = MemoryOut)))]
pub async fn get_memory(Tenant(sb): Tenant, Path(id): Path<String>) -> Reply {
    ok(MemoryOut::from(&sb.get_memory(&id).await?))
}

/// A change to a memory; absent fields stay as they are.
#[derive(Deserialize, ToSchema)]
pub struct MemoryUpdateBody {
    /// New content (re-embedded).
    #[schema(min_length = 1, max_length = 10_000, pattern = r"\S")]
    content: Option<String>,
    /// Alias: `memory_type`.
    #[serde(alias = "memory_type")]
    #[schema(min_length = 1, max_length = 256, pattern = r"\S")]
    r#type: Option<String>,
    /// New tags: they replace the old ones (at most 64, each like a `type`).
    #[schema(max_items = 64)]
    tags: Option<Vec<String>>,
    /// An RFC 7386 merge patch for the metadata.
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
}

/// Change a memory (PUT and PATCH alike). Also at `/memory/{id}`.
#[utoipa::path(method(put, patch), path = "/memories/{id}", request_body = MemoryUpdateBody,
    responses((status = 200, body = MemoryOut)))]
pub async fn update_memory(
    Tenant(sb): Tenant,
    Path(id): Path<String>,
    Body(b): Body<MemoryUpdateBody>,
) -> Reply {
    let m = sb
        .update_memory(
            &id,
            UpdateMemory {
                content: b.content,
                memory_type: b.r#type,
                tags: b.tags,
                metadata: b.metadata,
            },
        )
        .await?;
    ok(MemoryOut::from(&m))
}

/// Delete a memory. Also at `/memory/{id}`.
#[utoipa::path(delete, path = "/memories/{id}", responses((status = 204)))]
pub async fn delete_memory(Tenant(sb): Tenant, Path(id): Path<String>) -> Reply {
    sb.delete_memory(&id).await?;
    no_content()
}

/// A memory's revisions, oldest first. Also at `/memory/{id}/history`.
#[utoipa::path(get, path = "/memories/{id}/history",
    responses((status = 200, body = RevisionsOut)))]
pub async fn memory_history(Tenant(sb): Tenant, Path(id): Path<String>) -> Reply {
    let revisions = sb.memory_history(&id).await?;
    ok(RevisionsOut::from(&revisions[..]))
}

/// Query of the search and list routes: every spelling the clients use.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MemoryQueryParams {
    /// With it (not blank), a semantic search; without it, a list, newest first.
    query: Option<String>,
    session_id: Option<String>,
    user_id: Option<String>,
    /// Comma-separated types (any of them).
    types: Option<String>,
    /// One type. Alias: `memory_type`.
    #[serde(alias = "memory_type")]
    r#type: Option<String>,
    /// Comma-separated tags (any of them).
    tags: Option<String>,
    /// Results of a search, 1..=100 (default 10).
    #[param(minimum = 1, maximum = 100)]
    top_k: Option<i64>,
    /// The same as `top_k`; for a list, its page size.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// Minimum score of a search, 0..=1 (default 0.7).
    #[param(minimum = 0, maximum = 1)]
    threshold: Option<f64>,
    /// The `last_id` of a list's previous page.
    starting_after: Option<String>,
}

async fn search(sb: &Sb, req: SearchMemories) -> Reply {
    let query = req.query.clone();
    let hits = sb.search_memories(req).await?;
    ok(SearchOrList::Search(SearchOut::new(&query, &hits)))
}

/// Search memories with `query`, or list them without one. Also at `/memory` and
/// `/memories/search`.
#[utoipa::path(get, path = "/memories", params(MemoryQueryParams),
    responses((status = 200, body = SearchOrList)))]
pub async fn search_or_list_memories(
    Tenant(sb): Tenant,
    Query(q): Query<MemoryQueryParams>,
) -> Reply {
    // Both spellings of the size are checked when both are given, though one wins.
    for (param, n) in [("top_k", q.top_k), ("limit", q.limit)] {
        if let Some(n) = n.filter(|n| !(1..=100).contains(n)) {
            return Err(Error::invalid(param, format!("{n} is outside 1..=100")).into());
        }
    }
    if let Some(t) = q.threshold.filter(|t| !(0.0..=1.0).contains(t)) {
        // Checked for a list too, where it does nothing, so that one rule holds.
        return Err(Error::invalid("threshold", format!("{t} is outside 0..=1")).into());
    }
    match q.query.filter(|q| !is_blank(q)) {
        Some(query) => {
            let mut types = csv(q.types);
            types.extend(q.r#type);
            let req = SearchMemories {
                query,
                session_id: q.session_id,
                user_id: q.user_id,
                types,
                tags: csv(q.tags),
                limit: q.top_k.or(q.limit),
                threshold: q.threshold,
            };
            search(&sb, req).await
        }
        None => {
            let req = ListMemories {
                limit: q.limit.or(q.top_k),
                starting_after: q.starting_after,
                session_id: q.session_id,
                user_id: q.user_id,
                memory_type: q.r#type.or_else(|| csv(q.types).into_iter().next()),
                tags: csv(q.tags),
            };
            let page = sb.list_memories(req).await?;
            ok(SearchOrList::List(ListOut::page(&page)))
        }
    }
}

/// A semantic search.
#[derive(Deserialize, ToSchema)]
pub struct SearchBody {
    #[schema(min_length = 1, pattern = r"\S")]
    query: String,
    session_id: Option<String>,
    user_id: Option<String>,
    /// One type. Alias: `memory_type`.
    #[serde(alias = "memory_type")]
    r#type: Option<String>,
    /// Any of these types.
    types: Option<Vec<String>>,
    /// Any of these tags.
    tags: Option<Vec<String>>,
    /// 1..=100 (default 10). Alias: `top_k`.
    #[serde(alias = "top_k")]
    #[schema(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// Minimum score, 0..=1 (default 0.7).
    #[schema(minimum = 0, maximum = 1)]
    threshold: Option<f64>,
}

/// Search memories.
#[utoipa::path(post, path = "/memory/search", request_body = SearchBody,
    responses((status = 200, body = SearchOut)))]
pub async fn search_memories(Tenant(sb): Tenant, Body(b): Body<SearchBody>) -> Reply {
    let mut types = b.types.unwrap_or_default();
    types.extend(b.r#type);
    let req = SearchMemories {
        query: b.query,
        session_id: b.session_id,
        user_id: b.user_id,
        types,
        tags: b.tags.unwrap_or_default(),
        limit: b.limit,
        threshold: b.threshold,
    };
    search(&sb, req).await
}

/// Search a session's memories.
#[utoipa::path(post, path = "/sessions/{id}/memories/search", request_body = SearchBody,
    responses((status = 200, body = SearchOut)))]
pub async fn search_session_memories(
    tenant: Tenant,
    Path(id): Path<String>,
    Body(mut b): Body<SearchBody>,
) -> Reply {
    // A missing session is a 404, not an empty result.
    tenant.0.get_session(&id).await?;
    b.session_id = Some(id);
    search_memories(tenant, Body(b)).await
}

/// These routes, under `/v1`.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    let router = OpenApiRouter::new()
        .routes(routes!(add_session_memory))
        .routes(routes!(search_session_memories))
        .routes(routes!(search_memories));
    let router = also_at(router, routes!(add_memory), &["/memory"]);
    let router = also_at(
        router,
        routes!(search_or_list_memories),
        &["/memory", "/memories/search"],
    );
    let router = also_at(
        router,
        routes!(get_memory, update_memory, delete_memory),
        &["/memory/{id}"],
    );
    also_at(router, routes!(memory_history), &["/memory/{id}/history"])
}
