//! The `/v1` handlers: parse, call core, shape the answer. No domain logic lives here.

use crate::auth::{Caller, Tenant};
use crate::error::ApiError;
use crate::extract::{Body, Query};
use crate::{webhooks, wire, AppState};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use statebase_core::*;

type Sb = StateBase<std::sync::Arc<dyn Store>>;
type Reply = Result<Response, ApiError>;

fn ok(v: Value) -> Reply {
    Ok(Json(v).into_response())
}

fn created(v: Value) -> Reply {
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

pub async fn create_session(Tenant(sb): Tenant, Body(req): Body<CreateSession>) -> Reply {
    let s = sb.create_session(req).await?;
    created(wire::session(&s))
}

pub async fn get_session(Tenant(sb): Tenant, Path(id): Path<String>) -> Reply {
    ok(wire::session(&sb.get_session(&id).await?))
}

#[derive(Deserialize)]
pub struct SessionListQuery {
    limit: Option<i64>,
    starting_after: Option<String>,
    agent_id: Option<String>,
    user_id: Option<String>,
    created_after: Option<String>,
    created_before: Option<String>,
    /// A JSON object, as a string.
    metadata: Option<String>,
}

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
    ok(wire::page(&page, wire::session))
}

pub async fn update_session(
    Tenant(sb): Tenant,
    Path(id): Path<String>,
    Body(req): Body<UpdateSession>,
) -> Reply {
    ok(wire::session(&sb.update_session(&id, req).await?))
}

pub async fn delete_session(Tenant(sb): Tenant, Path(id): Path<String>) -> Reply {
    sb.delete_session(&id).await?;
    no_content()
}

// ----- state -----

#[derive(Deserialize)]
pub struct StateBody {
    #[serde(alias = "updates")]
    state: Value,
    reasoning: Option<String>,
    expected_version: Option<u64>,
}

/// `If-Match: <version>` (quotes and a `W/` prefix allowed) as an expected version.
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
        Ok(StateWrite {
            expected_version: self.expected_version.or(if_match(headers)?),
            state: self.state,
            reasoning: self.reasoning,
        })
    }
}

pub async fn get_state(Tenant(sb): Tenant, Path(id): Path<String>) -> Reply {
    ok(wire::state(&sb.get_session(&id).await?))
}

/// PATCH: an RFC 7386 merge.
pub async fn merge_state(
    Tenant(sb): Tenant,
    Path(id): Path<String>,
    headers: HeaderMap,
    Body(body): Body<StateBody>,
) -> Reply {
    let s = sb.merge_state(&id, body.write(&headers)?).await?;
    ok(wire::state(&s))
}

/// PUT: a full replace.
pub async fn replace_state(
    Tenant(sb): Tenant,
    Path(id): Path<String>,
    headers: HeaderMap,
    Body(body): Body<StateBody>,
) -> Reply {
    let s = sb.replace_state(&id, body.write(&headers)?).await?;
    ok(wire::state(&s))
}

/// POST (the seed page): a full replace that answers with the session, plus the state
/// fields.
pub async fn post_state(
    Tenant(sb): Tenant,
    Path(id): Path<String>,
    headers: HeaderMap,
    Body(body): Body<StateBody>,
) -> Reply {
    let s = sb.replace_state(&id, body.write(&headers)?).await?;
    let mut v = wire::session(&s);
    v["session_id"] = json!(s.id);
    v["data"] = json!(s.state);
    ok(v)
}

#[derive(Deserialize)]
pub struct HistoryParams {
    limit: Option<i64>,
    since_version: Option<u64>,
}

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
            },
        )
        .await?;
    let data: Vec<Value> = h
        .versions
        .iter()
        .map(|v| {
            json!({
                "version": v.version,
                "state": v.state,
                "created_at": v.created_at,
                "updated_by": v.updated_by,
                "reasoning": v.reasoning,
                "change": v.change,
            })
        })
        .collect();
    ok(
        json!({"object": "list", "data": data, "current_version": h.current_version, "session_id": id}),
    )
}

#[derive(Deserialize)]
pub struct RollbackBody {
    version: i64,
    #[serde(alias = "reasoning")]
    reason: Option<String>,
    expected_version: Option<u64>,
}

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
    ok(wire::rollback(&r))
}

#[derive(Deserialize)]
pub struct ForkBody {
    version: Option<i64>,
    #[serde(alias = "new_agent_id")]
    agent_id: Option<String>,
    user_id: Option<String>,
    metadata: Option<Value>,
    ttl_seconds: Option<i64>,
}

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
    let mut v = wire::session(&s);
    v["new_session_id"] = json!(s.id);
    created(v)
}

#[derive(Deserialize)]
pub struct ContextBody {
    query: Option<String>,
    memory_limit: Option<i64>,
    turn_limit: Option<i64>,
}

pub async fn context(
    Tenant(sb): Tenant,
    Path(id): Path<String>,
    Body(b): Body<ContextBody>,
) -> Reply {
    let started = std::time::Instant::now();
    let c = sb
        .context(
            &id,
            ContextRequest {
                query: b.query,
                memory_limit: b.memory_limit,
                turn_limit: b.turn_limit,
            },
        )
        .await?;
    let turns: Vec<Value> = c.recent_turns.iter().map(wire::turn).collect();
    let body = json!({
        "object": "context",
        "session_id": c.session.id,
        "version": c.session.version,
        "state": c.session.state,
        "memories": c.memories.iter().map(wire::hit).collect::<Vec<_>>(),
        "recent_turns": turns,
        "turns": turns,
        "average_relevance": c.average_relevance,
        "drift_warning": c.drift_warning,
    });
    let mut response = Json(body).into_response();
    let latency = format!("{:.3}", started.elapsed().as_secs_f64() * 1e3);
    if let Ok(v) = latency.parse() {
        response.headers_mut().insert("x-statebase-latency", v);
    }
    Ok(response)
}

// ----- turns -----

pub async fn add_turn(
    Tenant(sb): Tenant,
    Path(id): Path<String>,
    Body(req): Body<AddTurn>,
) -> Reply {
    created(wire::turn(&sb.add_turn(&id, req).await?))
}

#[derive(Deserialize)]
pub struct TurnListQuery {
    limit: Option<i64>,
    starting_after: Option<String>,
    order: Option<Order>,
}

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
    ok(wire::page(&page, wire::turn))
}

pub async fn get_turn(Tenant(sb): Tenant, Path((id, turn_id)): Path<(String, String)>) -> Reply {
    ok(wire::turn(&sb.get_turn(&id, &turn_id).await?))
}

// ----- memories -----

#[derive(Deserialize)]
pub struct MemoryBody {
    session_id: Option<String>,
    user_id: Option<String>,
    content: String,
    #[serde(alias = "memory_type")]
    r#type: Option<String>,
    tags: Option<Vec<String>>,
    metadata: Option<Value>,
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
    created(wire::memory(&m))
}

pub async fn add_memory(Tenant(sb): Tenant, Body(b): Body<MemoryBody>) -> Reply {
    add_memory_from(&sb, b).await
}

/// `POST /v1/sessions/{id}/memories`: the session comes from the path.
pub async fn add_session_memory(
    Tenant(sb): Tenant,
    Path(id): Path<String>,
    Body(mut b): Body<MemoryBody>,
) -> Reply {
    b.session_id = Some(id);
    add_memory_from(&sb, b).await
}

pub async fn get_memory(Tenant(sb): Tenant, Path(id): Path<String>) -> Reply {
    ok(wire::memory(&sb.get_memory(&id).await?))
}

#[derive(Deserialize)]
pub struct MemoryUpdateBody {
    content: Option<String>,
    #[serde(alias = "memory_type")]
    r#type: Option<String>,
    tags: Option<Vec<String>>,
    metadata: Option<Value>,
}

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
    ok(wire::memory(&m))
}

pub async fn delete_memory(Tenant(sb): Tenant, Path(id): Path<String>) -> Reply {
    sb.delete_memory(&id).await?;
    no_content()
}

pub async fn memory_history(Tenant(sb): Tenant, Path(id): Path<String>) -> Reply {
    let revisions = sb.memory_history(&id).await?;
    ok(json!({"object": "list", "data": revisions, "has_more": false}))
}

/// Query of the search and list routes: every spelling the clients use.
#[derive(Deserialize)]
pub struct MemoryQueryParams {
    query: Option<String>,
    session_id: Option<String>,
    user_id: Option<String>,
    types: Option<String>,
    #[serde(alias = "memory_type")]
    r#type: Option<String>,
    tags: Option<String>,
    top_k: Option<i64>,
    limit: Option<i64>,
    threshold: Option<f64>,
    starting_after: Option<String>,
}

async fn search(sb: &Sb, req: SearchMemories) -> Reply {
    let query = req.query.clone();
    let hits = sb.search_memories(req).await?;
    ok(json!({
        "object": "list",
        "query": query,
        "data": hits.iter().map(wire::hit).collect::<Vec<_>>(),
        "has_more": false,
    }))
}

/// `GET /v1/memories`: a search with `query`, a list without one.
pub async fn search_or_list_memories(
    Tenant(sb): Tenant,
    Query(q): Query<MemoryQueryParams>,
) -> Reply {
    match q.query {
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
            ok(wire::page(&page, wire::memory))
        }
    }
}

/// Body of `POST /v1/memory/search`.
#[derive(Deserialize)]
pub struct SearchBody {
    query: String,
    session_id: Option<String>,
    user_id: Option<String>,
    #[serde(alias = "memory_type")]
    r#type: Option<String>,
    types: Option<Vec<String>>,
    tags: Option<Vec<String>>,
    #[serde(alias = "top_k")]
    limit: Option<i64>,
    threshold: Option<f64>,
}

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

/// `POST /v1/sessions/{id}/memories/search`.
pub async fn search_session_memories(
    tenant: Tenant,
    Path(id): Path<String>,
    Body(mut b): Body<SearchBody>,
) -> Reply {
    b.session_id = Some(id);
    search_memories(tenant, Body(b)).await
}

// ----- traces -----

#[derive(Deserialize)]
pub struct TraceListQuery {
    limit: Option<i64>,
    starting_after: Option<String>,
    session_id: Option<String>,
    action: Option<String>,
    resource_type: Option<String>,
    resource_id: Option<String>,
    #[serde(alias = "start_time")]
    created_after: Option<String>,
    #[serde(alias = "end_time")]
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
    ok(wire::page(&page, wire::trace))
}

pub async fn list_traces(Tenant(sb): Tenant, Query(q): Query<TraceListQuery>) -> Reply {
    traces(&sb, q).await
}

pub async fn session_traces(
    Tenant(sb): Tenant,
    Path(id): Path<String>,
    Query(mut q): Query<TraceListQuery>,
) -> Reply {
    q.session_id = Some(id);
    traces(&sb, q).await
}

pub async fn get_trace(Tenant(sb): Tenant, Path(id): Path<String>) -> Reply {
    ok(wire::trace(&sb.get_trace(&id).await?))
}

// ----- dashboard -----

fn api_key(app: &AppState, k: &ApiKey, secret: Option<&str>) -> Value {
    let usage = app.limiter.usage(&k.id);
    json!({
        "id": k.id,
        "key_prefix": k.key_prefix,
        "name": k.name,
        "is_active": k.is_active,
        "rate_limit": app.limiter.limit_of(k),
        "created_at": k.created_at,
        "expires_at": k.expires_at,
        "last_used_at": usage.last_used,
        "total_requests": usage.requests,
        "full_key": secret,
    })
}

/// The caller's tenant's keys, as a bare array (as the dashboard API returns them).
pub async fn list_keys(State(app): State<AppState>, Extension(caller): Extension<Caller>) -> Reply {
    let keys = app.sb.list_api_keys(Some(&caller.key.tenant)).await?;
    ok(json!(keys
        .iter()
        .map(|k| api_key(&app, k, None))
        .collect::<Vec<_>>()))
}

#[derive(Deserialize)]
pub struct KeyBody {
    name: String,
    rate_limit: Option<u32>,
    expires_days: Option<i64>,
}

/// A new key for the caller's tenant; its secret is in `full_key`, this once.
pub async fn create_key(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(b): Body<KeyBody>,
) -> Reply {
    let expires_at = match b.expires_days {
        None => None,
        Some(d @ 1..=3650) => Some(chrono::Utc::now() + chrono::Duration::days(d)),
        Some(d) => {
            return Err(ApiError::validation(
                "expires_days",
                "body",
                format!("{d} is outside 1..=3650"),
            ))
        }
    };
    let (key, secret) = app
        .sb
        .create_api_key(&caller.key.tenant, &b.name, b.rate_limit, expires_at)
        .await?;
    ok(api_key(&app, &key, Some(&secret)))
}

pub async fn revoke_key(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Reply {
    app.sb.revoke_api_key(&id, Some(&caller.key.tenant)).await?;
    app.keys.forget(&id);
    no_content()
}

/// Totals of the caller's tenant, and its changes per hour over the last 24 hours.
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
    let mut memories = 0u64;
    let mut cursor = None;
    loop {
        let page = sb
            .list_memories(ListMemories {
                limit: Some(100),
                starting_after: cursor,
                ..Default::default()
            })
            .await?;
        memories += page.data.len() as u64;
        if !page.has_more {
            break;
        }
        cursor = page.last_id;
    }
    ok(json!({
        "stats": {
            "total_sessions": sessions,
            "total_turns": turns,
            "total_memories": memories,
            "total_entities": 0,
            "active_sessions_24h": active,
            // Not measured per tenant.
            "storage_usage_bytes": null,
        },
        "recent_activity": hours
            .into_iter()
            .map(|(timestamp, count)| json!({"timestamp": timestamp, "count": count}))
            .collect::<Vec<_>>(),
    }))
}

// ----- service -----

pub async fn health(State(app): State<AppState>) -> Reply {
    ok(json!({
        "status": "healthy",
        "timestamp": chrono::Utc::now(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": app.started.elapsed().as_secs_f64(),
        "services": {"store": {"status": "healthy"}},
    }))
}

pub async fn root() -> Reply {
    ok(json!({
        "name": "statebase",
        "version": env!("CARGO_PKG_VERSION"),
        "api": "/v1",
        "health": "/health",
    }))
}

// ----- webhooks (an extension: the hosted service configures them in its dashboard) -----

#[derive(Deserialize)]
pub struct WebhookBody {
    url: String,
    #[serde(default)]
    events: Vec<String>,
    secret: Option<String>,
}

pub async fn create_webhook(Tenant(sb): Tenant, Body(b): Body<WebhookBody>) -> Reply {
    let e = webhooks::create(&sb, sb.tenant_id(), &b.url, b.events, b.secret).await?;
    created(e.to_json())
}

pub async fn list_webhooks(Tenant(sb): Tenant) -> Reply {
    let all = webhooks::list(&sb, Some(sb.tenant_id())).await?;
    let data: Vec<Value> = all.iter().map(webhooks::Endpoint::to_json).collect();
    ok(json!({"object": "list", "data": data, "has_more": false}))
}

pub async fn delete_webhook(Tenant(sb): Tenant, Path(id): Path<String>) -> Reply {
    webhooks::delete(&sb, sb.tenant_id(), &id).await?;
    no_content()
}

pub async fn webhook_deliveries(Tenant(sb): Tenant, Path(id): Path<String>) -> Reply {
    let all = webhooks::deliveries(&sb, sb.tenant_id(), &id).await?;
    let data: Vec<Value> = all.iter().map(webhooks::Delivery::to_json).collect();
    ok(json!({"object": "list", "data": data, "has_more": false}))
}

pub async fn retry_delivery(
    Tenant(sb): Tenant,
    Path((id, event_id)): Path<(String, String)>,
) -> Reply {
    let d = webhooks::redeliver(&sb, sb.tenant_id(), &id, &event_id).await?;
    ok(d.to_json())
}
