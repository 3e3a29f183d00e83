//! The `/v1` handlers: parse, call core, shape the answer. No domain logic lives here.
//!
//! Each handler's `#[utoipa::path]` names its route, what it takes and what it answers;
//! [`crate::router`] serves the handlers from those and `/openapi.json` documents them.

use crate::auth::{Caller, Tenant};
use crate::error::ApiError;
use crate::extract::{Body, Query};
use crate::{webhooks, wire, AppState};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use statebase_core::*;
use utoipa::{IntoParams, ToSchema};
use webhooks::{DeliveryOut, EndpointOut};
use wire::*;

mod entities;
pub use entities::*;

type Sb = StateBase<std::sync::Arc<dyn Store>>;
type Reply = Result<Response, ApiError>;

fn ok(v: impl Serialize) -> Reply {
    Ok(Json(v).into_response())
}

fn created(v: impl Serialize) -> Reply {
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

fn no_content() -> Reply {
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Comma-separated lists in queries (`types=a,b`).
fn csv(v: Option<String>) -> Vec<String> {
    v.map(|s| {
        s.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect()
    })
    .unwrap_or_default()
}

fn timestamp(param: &'static str, v: Option<String>) -> Result<Option<Timestamp>, ApiError> {
    v.map(|s| {
        chrono::DateTime::parse_from_rfc3339(&s)
            .map(|t| t.to_utc())
            .map_err(|e| ApiError::validation(param, "query", format!("not an ISO 8601 time: {e}")))
    })
    .transpose()
}

// ----- sessions -----

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

// ----- state -----

/// A state write.
#[derive(Deserialize, ToSchema)]
pub struct StateBody {
    /// The new state (PUT, POST) or an RFC 7386 merge patch (PATCH). Required, here or as
    /// `updates`.
    #[schema(value_type = Option<Object>)]
    state: Option<Object>,
    /// The same as `state`.
    #[schema(value_type = Option<Object>)]
    updates: Option<Object>,
    /// Why, kept on the version and in the audit trail.
    #[schema(max_length = 65_536)]
    reasoning: Option<String>,
    /// Write only if this is still the current version (else 409 `version_conflict`).
    expected_version: Option<u64>,
}

/// The `If-Match` header of state writes: write only if the session is still at this
/// version (quotes and a `W/` prefix allowed).
#[derive(IntoParams)]
#[into_params(names("If-Match"), parameter_in = Header)]
pub struct IfMatch(#[allow(dead_code)] Option<String>);

/// `If-Match: <version>` as an expected version.
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get("if-match") else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    let text = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    text.parse().map(Some).map_err(|_| {
        ApiError::validation(
            "If-Match",
            "header",
            format!("not a version number: {text}"),
        )
    })
}

impl StateBody {
    /// The write, with the body's `expected_version` or else the `If-Match` header's.
    fn write(self, headers: &HeaderMap) -> Result<StateWrite, ApiError> {
        let state = self
            .state
            .or(self.updates)
            .ok_or_else(|| ApiError::validation("state", "body", "missing field `state`".into()))?;
        Ok(StateWrite {
            expected_version: self.expected_version.or(if_match(headers)?),
            state: Value::Object(state),
            reasoning: self.reasoning,
        })
    }
}

/// A session's current state.
#[utoipa::path(get, path = "/sessions/{id}/state", responses((status = 200, body = StateOut)))]
pub async fn get_state(Tenant(sb): Tenant, Path(id): Path<String>) -> Reply {
    ok(StateOut::from(&sb.get_session(&id).await?))
}

/// Merge a patch into the state (RFC 7386): a new version.
#[utoipa::path(patch, path = "/sessions/{id}/state", params(IfMatch), request_body = StateBody,
    responses((status = 200, body = StateOut)))]
pub async fn merge_state(
    Tenant(sb): Tenant,
    Path(id): Path<String>,
    headers: HeaderMap,
    Body(body): Body<StateBody>,
) -> Reply {
    let s = sb.merge_state(&id, body.write(&headers)?).await?;
    ok(StateOut::from(&s))
}

/// Replace the whole state: a new version.
#[utoipa::path(put, path = "/sessions/{id}/state", params(IfMatch), request_body = StateBody,
    responses((status = 200, body = StateOut)))]
pub async fn replace_state(
    Tenant(sb): Tenant,
    Path(id): Path<String>,
    headers: HeaderMap,
    Body(body): Body<StateBody>,
) -> Reply {
    let s = sb.replace_state(&id, body.write(&headers)?).await?;
    ok(StateOut::from(&s))
}

/// Replace the whole state (the seed page's form): answers with the session.
#[utoipa::path(post, path = "/sessions/{id}/state", params(IfMatch), request_body = StateBody,
    responses((status = 200, body = StateReplaced)))]
pub async fn post_state(
    Tenant(sb): Tenant,
    Path(id): Path<String>,
    headers: HeaderMap,
    Body(body): Body<StateBody>,
) -> Reply {
    let s = sb.replace_state(&id, body.write(&headers)?).await?;
    ok(StateReplaced::from(&s))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    /// How many versions, 1..=1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// Only the versions after this one; without it (or `from_version`), the latest.
    since_version: Option<u64>,
    /// The first version of the window: 0 for the start of a long history (with
    /// `since_version` too, the later of the two).
    from_version: Option<u64>,
}

/// A window of the state's versions, oldest first. Also at `/sessions/{id}/state/history`.
#[utoipa::path(get, path = "/sessions/{id}/history", params(HistoryParams),
    responses((status = 200, body = HistoryOut)))]
pub async fn state_history(
    Tenant(sb): Tenant,
    Path(id): Path<String>,
    Query(q): Query<HistoryParams>,
) -> Reply {
    let h = sb
        .history(
            &id,
            HistoryQuery {
                limit: q.limit,
                since_version: q.since_version,
                from_version: q.from_version,
            },
        )
        .await?;
    ok(HistoryOut::new(&id, &h))
}

/// A rollback.
#[derive(Deserialize, ToSchema)]
pub struct RollbackBody {
    /// The version to restore; negative counts back from the current one.
    version: i64,
    /// Why. Alias: `reasoning`.
    #[serde(alias = "reasoning")]
    #[schema(max_length = 65_536)]
    reason: Option<String>,
    /// Roll back only if this is still the current version.
    expected_version: Option<u64>,
}

/// Restore an earlier version as a new version (history is kept). Also at
/// `/sessions/{id}/state/rollback`.
#[utoipa::path(post, path = "/sessions/{id}/rollback", params(IfMatch), request_body = RollbackBody,
    responses((status = 200, body = RollbackOut)))]
pub async fn rollback(
    Tenant(sb): Tenant,
    Path(id): Path<String>,
    headers: HeaderMap,
    Body(b): Body<RollbackBody>,
) -> Reply {
    let r = sb
        .rollback(
            &id,
            RollbackTo {
                version: b.version,
                reason: b.reason,
                expected_version: b.expected_version.or(if_match(&headers)?),
            },
        )
        .await?;
    ok(RollbackOut::from(&r))
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

// ----- turns -----

/// Log a turn; a `state_after` that differs from the state becomes a new version with it.
#[utoipa::path(post, path = "/sessions/{id}/turns", request_body = AddTurn,
    responses((status = 201, body = TurnOut)))]
pub async fn add_turn(
    Tenant(sb): Tenant,
    Path(id): Path<String>,
    Body(req): Body<AddTurn>,
) -> Reply {
    created(TurnOut::from(&sb.add_turn(&id, req).await?))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TurnListQuery {
    /// Page size, 1..=100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// The `last_id` of the previous page.
    starting_after: Option<String>,
    /// `desc` (newest first, the default) or `asc`.
    order: Option<Order>,
}

/// A session's turns.
#[utoipa::path(get, path = "/sessions/{id}/turns", params(TurnListQuery),
    responses((status = 200, body = ListOut<TurnOut>)))]
pub async fn list_turns(
    Tenant(sb): Tenant,
    Path(id): Path<String>,
    Query(q): Query<TurnListQuery>,
) -> Reply {
    let page = sb
        .list_turns(
            &id,
            ListTurns {
                limit: q.limit,
                starting_after: q.starting_after,
                order: q.order.unwrap_or_default(),
            },
        )
        .await?;
    ok(ListOut::<TurnOut>::page(&page))
}

/// One turn.
#[utoipa::path(get, path = "/sessions/{id}/turns/{turn_id}",
    responses((status = 200, body = TurnOut)))]
pub async fn get_turn(Tenant(sb): Tenant, Path((id, turn_id)): Path<(String, String)>) -> Reply {
    ok(TurnOut::from(&sb.get_turn(&id, &turn_id).await?))
}

// ----- memories -----

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

// ----- traces -----

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

// ----- dashboard -----

/// An API key (never its secret, but once at creation).
#[derive(Serialize, ToSchema)]
pub struct KeyOut<'a> {
    id: &'a str,
    /// The first characters of the key, to recognise it.
    key_prefix: &'a str,
    name: &'a str,
    is_active: bool,
    /// Requests a minute.
    rate_limit: u32,
    /// Requests at once before the per-minute rate applies.
    burst: u32,
    created_at: chrono::DateTime<chrono::Utc>,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The last request with it since the server started.
    last_used_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Requests made with it since the server started.
    total_requests: u64,
    /// The whole key: in the answer that creates it, and never again.
    full_key: Option<&'a str>,
}

impl<'a> KeyOut<'a> {
    fn new(app: &AppState, k: &'a ApiKey, full_key: Option<&'a str>) -> Self {
        let usage = app.limiter.usage(&k.id);
        let rate = app.limiter.rate_of(k);
        Self {
            id: &k.id,
            key_prefix: &k.key_prefix,
            name: &k.name,
            is_active: k.is_active,
            rate_limit: rate.per_minute,
            burst: rate.burst,
            created_at: k.created_at,
            expires_at: k.expires_at,
            last_used_at: usage.last_used,
            total_requests: usage.requests,
            full_key,
        }
    }
}

/// The caller's tenant's keys, as a bare array (as the dashboard API returns them).
#[utoipa::path(get, path = "/dashboard/keys", responses((status = 200, body = Vec<KeyOut>)))]
pub async fn list_keys(State(app): State<AppState>, Extension(caller): Extension<Caller>) -> Reply {
    let keys = app.sb.list_api_keys(Some(&caller.key.tenant)).await?;
    ok(keys
        .iter()
        .map(|k| KeyOut::new(&app, k, None))
        .collect::<Vec<_>>())
}

/// The largest rate or burst a key may be asked for (a 32-bit integer, as clients have it).
const MAX_KEY_RATE: u32 = i32::MAX as u32;

/// A new key.
#[derive(Deserialize, ToSchema)]
pub struct KeyBody {
    #[schema(min_length = 1, max_length = 200)]
    name: String,
    /// Requests a minute; more than the calling key's is granted as the calling key's
    /// (default the calling key's).
    #[schema(minimum = 1, maximum = 2_147_483_647)]
    rate_limit: Option<u32>,
    /// Requests at once, likewise at most the calling key's.
    #[schema(minimum = 1, maximum = 2_147_483_647)]
    burst: Option<u32>,
    /// Days until it expires, 1..=3650 (default never).
    #[schema(minimum = 1, maximum = 3650)]
    expires_days: Option<i64>,
}

/// A new key for the caller's tenant; its secret is in `full_key`, this once. It gets at
/// most the calling key's rate and burst (the answer says what it got), so that no key
/// can raise its own limits.
#[utoipa::path(post, path = "/dashboard/keys", request_body = KeyBody,
    responses((status = 200, body = KeyOut)))]
pub async fn create_key(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(b): Body<KeyBody>,
) -> Reply {
    let expires_at = match b.expires_days {
        None => None,
        Some(d @ 1..=3650) => Some(caller.sb.now() + chrono::Duration::days(d)),
        Some(d) => {
            return Err(ApiError::validation(
                "expires_days",
                "body",
                format!("{d} is outside 1..=3650"),
            ))
        }
    };
    let name_chars = b.name.chars().count();
    if !(1..=200).contains(&name_chars) {
        return Err(ApiError::validation(
            "name",
            "body",
            format!("{name_chars} characters, outside 1..=200"),
        ));
    }
    for (field, n) in [("rate_limit", b.rate_limit), ("burst", b.burst)] {
        if n.is_some_and(|n| n == 0 || n > MAX_KEY_RATE) {
            return Err(ApiError::validation(
                field,
                "body",
                format!("must be 1..={MAX_KEY_RATE}"),
            ));
        }
    }
    let own = app.limiter.rate_of(&caller.key);
    // What is asked above the calling key's is granted at the calling key's (the answer
    // says what was granted); unset, a new key follows what limits the calling key.
    let limits = KeyLimits {
        rate_limit: b
            .rate_limit
            .map(|n| n.min(own.per_minute))
            .or(caller.key.rate_limit),
        burst: b.burst.map(|n| n.min(own.burst)).or(caller.key.burst),
    };
    let (key, secret) = app
        .sb
        .create_api_key(&caller.key.tenant, &b.name, limits, expires_at)
        .await?;
    ok(KeyOut::new(&app, &key, Some(&secret)))
}

/// Revoking the calling key itself needs `confirm=true`.
#[derive(Deserialize, IntoParams)]
pub struct RevokeQuery {
    /// Must be true to revoke the key that makes this request.
    confirm: Option<bool>,
}

/// Revoke a key of the caller's tenant (the calling key itself only with `?confirm=true`).
#[utoipa::path(delete, path = "/dashboard/keys/{id}", params(RevokeQuery),
    responses((status = 204), (status = 409, body = crate::error::ErrorBody,
        description = "the calling key, without confirm=true")))]
pub async fn revoke_key(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<RevokeQuery>,
) -> Reply {
    if id == caller.key.id && q.confirm != Some(true) {
        return Err(ApiError::confirmation_required(
            "this is the key making the request: add ?confirm=true to revoke it",
        ));
    }
    app.sb.revoke_api_key(&id, Some(&caller.key.tenant)).await?;
    app.keys.forget(&id);
    no_content()
}

/// A tenant's totals.
#[derive(Serialize, ToSchema)]
pub struct Totals {
    total_sessions: u64,
    total_turns: u64,
    total_memories: u64,
    total_entities: u64,
    /// Sessions changed in the last 24 hours.
    active_sessions_24h: u64,
    /// Not measured per tenant: always null.
    storage_usage_bytes: Option<u64>,
}

/// Changes in one hour.
#[derive(Serialize, ToSchema)]
pub struct HourOfActivity {
    /// The hour's start, ISO 8601.
    timestamp: String,
    count: u64,
}

/// The dashboard's numbers.
#[derive(Serialize, ToSchema)]
pub struct StatsOut {
    stats: Totals,
    /// Changes per hour over the last 24 hours, oldest first.
    recent_activity: Vec<HourOfActivity>,
}

/// Totals of the caller's tenant, and its changes per hour over the last 24 hours.
#[utoipa::path(get, path = "/dashboard/stats", responses((status = 200, body = StatsOut)))]
pub async fn stats(Tenant(sb): Tenant) -> Reply {
    let day_ago = chrono::Utc::now() - chrono::Duration::hours(24);
    let (mut sessions, mut turns, mut active) = (0u64, 0u64, 0u64);
    let mut cursor = None;
    loop {
        let page = sb
            .list_sessions(ListSessions {
                limit: Some(100),
                starting_after: cursor,
                ..Default::default()
            })
            .await?;
        for s in &page.data {
            sessions += 1;
            turns += s.turn_count;
            active += u64::from(s.updated_at > day_ago);
        }
        if !page.has_more {
            break;
        }
        cursor = page.last_id;
    }
    let mut hours: std::collections::BTreeMap<String, u64> = Default::default();
    let mut cursor = None;
    loop {
        let page = sb
            .list_traces(ListTraces {
                limit: Some(100),
                starting_after: cursor,
                created_after: Some(day_ago),
                ..Default::default()
            })
            .await?;
        for t in &page.data {
            let hour = t.timestamp.format("%Y-%m-%dT%H:00:00Z").to_string();
            *hours.entry(hour).or_default() += 1;
        }
        if !page.has_more {
            break;
        }
        cursor = page.last_id;
    }
    // Every memory, user-level ones included (session counts miss those).
    let memories = count_all(|starting_after| {
        sb.list_memories(ListMemories {
            limit: Some(100),
            starting_after,
            ..Default::default()
        })
    })
    .await?;
    let entities = count_all(|starting_after| {
        sb.list_entities(ListEntities {
            limit: Some(100),
            starting_after,
            ..Default::default()
        })
    })
    .await?;
    ok(StatsOut {
        stats: Totals {
            total_sessions: sessions,
            total_turns: turns,
            total_memories: memories,
            total_entities: entities,
            active_sessions_24h: active,
            storage_usage_bytes: None,
        },
        recent_activity: hours
            .into_iter()
            .map(|(timestamp, count)| HourOfActivity { timestamp, count })
            .collect(),
    })
}

/// How many items a list has, read a page at a time (`page` takes the `starting_after`).
async fn count_all<T, P>(page: impl Fn(Option<String>) -> P) -> Result<u64, Error>
where
    P: std::future::Future<Output = Result<Page<T>, Error>>,
{
    let (mut count, mut cursor) = (0u64, None);
    loop {
        let p = page(cursor).await?;
        count += p.data.len() as u64;
        if !p.has_more {
            return Ok(count);
        }
        cursor = p.last_id;
    }
}

// ----- service -----

/// The server's health.
#[derive(Serialize, ToSchema)]
pub struct HealthOut {
    /// `healthy`.
    #[schema(example = "healthy")]
    status: &'static str,
    timestamp: chrono::DateTime<chrono::Utc>,
    /// The server's version.
    version: &'static str,
    uptime_seconds: f64,
    /// `{"store": {"status": "healthy"}}`.
    #[schema(value_type = Object)]
    services: Value,
}

/// Whether the server is up (no key needed). Also at `/health/live` and `/health/ready`.
#[utoipa::path(get, path = "/health", security(()), responses((status = 200, body = HealthOut)))]
pub async fn health(State(app): State<AppState>) -> Reply {
    ok(HealthOut {
        status: "healthy",
        timestamp: chrono::Utc::now(),
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: app.started.elapsed().as_secs_f64(),
        services: json!({"store": {"status": "healthy"}}),
    })
}

/// What this server is.
#[derive(Serialize, ToSchema)]
pub struct RootOut {
    name: &'static str,
    version: &'static str,
    /// The API's prefix, `/v1`.
    api: &'static str,
    health: &'static str,
    /// This server's OpenAPI document.
    openapi: &'static str,
}

/// The server's name and where its API is (no key needed).
#[utoipa::path(get, path = "/", security(()), responses((status = 200, body = RootOut)))]
pub async fn root() -> Reply {
    ok(RootOut {
        name: "statebase",
        version: env!("CARGO_PKG_VERSION"),
        api: "/v1",
        health: "/health",
        openapi: "/openapi.json",
    })
}

// ----- webhooks (an extension: the hosted service configures them in its dashboard) -----

/// A new webhook endpoint.
#[derive(Deserialize, ToSchema)]
pub struct WebhookBody {
    /// Where events are POSTed: `http` or `https`.
    url: String,
    /// The event types it receives (empty: all).
    #[serde(default)]
    events: Vec<String>,
    /// The HMAC key of the signatures (default a new `whsec_…`).
    secret: Option<String>,
}

/// Send the tenant's events to a URL, signed.
#[utoipa::path(post, path = "/webhooks", request_body = WebhookBody,
    responses((status = 201, body = EndpointOut)))]
pub async fn create_webhook(
    State(app): State<AppState>,
    Tenant(sb): Tenant,
    Body(b): Body<WebhookBody>,
) -> Reply {
    let targets = app.webhook_targets;
    let e = webhooks::create(&sb, sb.tenant_id(), &b.url, b.events, b.secret, targets).await?;
    created(EndpointOut::created(&e))
}

/// The tenant's webhook endpoints.
#[utoipa::path(get, path = "/webhooks", responses((status = 200, body = ListOut<EndpointOut>)))]
pub async fn list_webhooks(Tenant(sb): Tenant) -> Reply {
    let all = webhooks::list(&sb, Some(sb.tenant_id())).await?;
    ok(ListOut::all(all.iter().map(EndpointOut::listed).collect()))
}

/// Stop sending events to an endpoint.
#[utoipa::path(delete, path = "/webhooks/{id}", responses((status = 204)))]
pub async fn delete_webhook(Tenant(sb): Tenant, Path(id): Path<String>) -> Reply {
    webhooks::delete(&sb, sb.tenant_id(), &id).await?;
    no_content()
}

/// An endpoint's deliveries: pending, delivered and failed.
#[utoipa::path(get, path = "/webhooks/{id}/deliveries",
    responses((status = 200, body = ListOut<DeliveryOut>)))]
pub async fn webhook_deliveries(Tenant(sb): Tenant, Path(id): Path<String>) -> Reply {
    let all = webhooks::deliveries(&sb, sb.tenant_id(), &id).await?;
    ok(ListOut::all(all.iter().map(DeliveryOut::from).collect()))
}

/// Send a delivery again now.
#[utoipa::path(post, path = "/webhooks/{id}/deliveries/{event_id}/retry",
    responses((status = 200, body = DeliveryOut)))]
pub async fn retry_delivery(
    Tenant(sb): Tenant,
    Path((id, event_id)): Path<(String, String)>,
) -> Reply {
    let d = webhooks::redeliver(&sb, sb.tenant_id(), &id, &event_id).await?;
    ok(DeliveryOut::from(&d))
}
