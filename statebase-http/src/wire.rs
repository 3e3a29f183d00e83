//! Response shapes: the superset every published client parses (spec §5). Each is a type
//! that borrows the record it shows, so what is sent and what `/openapi.json` describes
//! come from one definition.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use statebase_core::{Memory, MemoryHit, MemoryRevision, Page, Rollback, Session, Trace, Turn};
use utoipa::ToSchema;

type Object = Map<String, Value>;

/// A session: `object`, the documented fields, and its `version`.
#[derive(Serialize, ToSchema)]
pub struct SessionOut<'a> {
    /// `session`.
    #[schema(example = "session")]
    object: &'static str,
    id: &'a str,
    agent_id: &'a str,
    user_id: Option<&'a str>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    metadata: &'a Object,
    /// The current state.
    state: &'a Object,
    /// The current state version; 0 is the initial state.
    version: u64,
    memory_count: u64,
    turn_count: u64,
    /// From this instant on the session is gone.
    ttl_expires_at: DateTime<Utc>,
}

impl<'a> From<&'a Session> for SessionOut<'a> {
    fn from(s: &'a Session) -> Self {
        Self {
            object: "session",
            id: &s.id,
            agent_id: &s.agent_id,
            user_id: s.user_id.as_deref(),
            created_at: s.created_at,
            updated_at: s.updated_at,
            metadata: &s.metadata,
            state: &s.state,
            version: s.version,
            memory_count: s.memory_count,
            turn_count: s.turn_count,
            ttl_expires_at: s.ttl_expires_at,
        }
    }
}

/// A state read or write: `data` and `state` both hold the state.
#[derive(Serialize, ToSchema)]
pub struct StateOut<'a> {
    /// `state`.
    #[schema(example = "state")]
    object: &'static str,
    session_id: &'a str,
    version: u64,
    state: &'a Object,
    /// The same as `state`.
    data: &'a Object,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl<'a> From<&'a Session> for StateOut<'a> {
    fn from(s: &'a Session) -> Self {
        Self {
            object: "state",
            session_id: &s.id,
            version: s.version,
            state: &s.state,
            data: &s.state,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

/// The answer of `POST /v1/sessions/{id}/state` (the seed page): the session, plus the
/// state fields.
#[derive(Serialize, ToSchema)]
pub struct StateReplaced<'a> {
    #[serde(flatten)]
    session: SessionOut<'a>,
    session_id: &'a str,
    /// The same as `state`.
    data: &'a Object,
}

impl<'a> From<&'a Session> for StateReplaced<'a> {
    fn from(s: &'a Session) -> Self {
        Self {
            session: s.into(),
            session_id: &s.id,
            data: &s.state,
        }
    }
}

/// A rollback: the OpenAPI shape and the state shape the SDKs parse, together.
#[derive(Serialize, ToSchema)]
pub struct RollbackOut<'a> {
    #[serde(flatten)]
    state: StateOut<'a>,
    success: bool,
    new_version: u64,
    restored_from_version: u64,
    trace_id: &'a str,
}

impl<'a> From<&'a Rollback> for RollbackOut<'a> {
    fn from(r: &'a Rollback) -> Self {
        Self {
            state: (&r.session).into(),
            success: true,
            new_version: r.session.version,
            restored_from_version: r.restored_from_version,
            trace_id: &r.trace_id,
        }
    }
}

/// A new session forked from another: the session, and its id again as `new_session_id`.
#[derive(Serialize, ToSchema)]
pub struct Forked<'a> {
    #[serde(flatten)]
    session: SessionOut<'a>,
    new_session_id: &'a str,
}

impl<'a> From<&'a Session> for Forked<'a> {
    fn from(s: &'a Session) -> Self {
        Self {
            session: s.into(),
            new_session_id: &s.id,
        }
    }
}

/// One version of a session's state.
#[derive(Serialize, ToSchema)]
pub struct VersionOut<'a> {
    version: u64,
    state: &'a Object,
    created_at: DateTime<Utc>,
    updated_by: &'a str,
    reasoning: Option<&'a str>,
    /// How the version came to be: `{"kind": "created" | "replaced" | "merged" |
    /// "rolled_back" | "turn" | "forked", …}`.
    #[schema(value_type = statebase_core::VersionChange)]
    change: &'a statebase_core::VersionChange,
}

/// A window of a session's version history, oldest first.
#[derive(Serialize, ToSchema)]
pub struct HistoryOut<'a> {
    /// `list`.
    #[schema(example = "list")]
    object: &'static str,
    data: Vec<VersionOut<'a>>,
    current_version: u64,
    session_id: &'a str,
}

impl<'a> HistoryOut<'a> {
    pub fn new(session_id: &'a str, h: &'a statebase_core::History) -> Self {
        Self {
            object: "list",
            data: h
                .versions
                .iter()
                .map(|v| VersionOut {
                    version: v.version,
                    state: &v.state,
                    created_at: v.created_at,
                    updated_by: &v.updated_by,
                    reasoning: v.reasoning.as_deref(),
                    change: &v.change,
                })
                .collect(),
            current_version: h.current_version,
            session_id,
        }
    }
}

/// The first 100 characters of a turn's input or output `content`.
/// The text of a turn's input or output: its `content` (JSON text if not a string), if
/// it has any.
fn text(io: &Object) -> Option<std::borrow::Cow<'_, str>> {
    match io.get("content")? {
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.as_str().into()),
        Value::Null => None,
        other => Some(other.to_string().into()),
    }
}

fn preview(io: &Object) -> String {
    text(io).map_or_else(String::new, |t| t.chars().take(100).collect())
}

/// Who speaks in a turn read as one chat message.
#[derive(Serialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The person or system that gave the input.
    User,
    /// The agent, which gave the output.
    Assistant,
}

/// A turn, with the list previews of the OpenAPI list item.
#[derive(Serialize, ToSchema)]
pub struct TurnOut<'a> {
    /// `turn`.
    #[schema(example = "turn")]
    object: &'static str,
    id: &'a str,
    session_id: &'a str,
    turn_number: u64,
    /// `type`, `content` and any other keys as given.
    input: &'a Object,
    /// `type`, `content` and any other keys as given.
    output: &'a Object,
    input_preview: String,
    output_preview: String,
    reasoning: Option<&'a str>,
    metadata: &'a Object,
    state_before: Option<&'a Object>,
    state_after: Option<&'a Object>,
    /// The state version the turn wrote, when its `state_after` changed the state.
    state_version: Option<u64>,
    created_at: DateTime<Utc>,
    /// For clients that read a turn as one chat message (`{role, content}`): `assistant`
    /// with the output's text when the output has any, else `user` with the input's.
    role: Role,
    /// The text of the side `role` names.
    content: std::borrow::Cow<'a, str>,
}

impl<'a> From<&'a Turn> for TurnOut<'a> {
    fn from(t: &'a Turn) -> Self {
        let (role, content) = match text(&t.output) {
            Some(said) => (Role::Assistant, said),
            None => (Role::User, text(&t.input).unwrap_or_default()),
        };
        Self {
            role,
            content,
            object: "turn",
            id: &t.id,
            session_id: &t.session_id,
            turn_number: t.turn_number,
            input: &t.input,
            output: &t.output,
            input_preview: preview(&t.input),
            output_preview: preview(&t.output),
            reasoning: t.reasoning.as_deref(),
            metadata: &t.metadata,
            state_before: t.state_before.as_ref(),
            state_after: t.state_after.as_ref(),
            state_version: t.state_version,
            created_at: t.created_at,
        }
    }
}

/// A memory.
#[derive(Serialize, ToSchema)]
pub struct MemoryOut<'a> {
    /// `memory`.
    #[schema(example = "memory")]
    object: &'static str,
    id: &'a str,
    session_id: Option<&'a str>,
    user_id: Option<&'a str>,
    content: &'a str,
    r#type: &'a str,
    /// The same as `type`.
    memory_type: &'a str,
    tags: &'a [String],
    metadata: &'a Object,
    /// 1 at creation, +1 per update.
    version: u64,
    embedding_id: Option<String>,
    embedding_model: Option<&'a str>,
    vector_available: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl<'a> From<&'a Memory> for MemoryOut<'a> {
    fn from(m: &'a Memory) -> Self {
        Self {
            object: "memory",
            id: &m.id,
            session_id: m.session_id.as_deref(),
            user_id: m.user_id.as_deref(),
            content: &m.content,
            r#type: &m.memory_type,
            memory_type: &m.memory_type,
            tags: &m.tags,
            metadata: &m.metadata,
            version: m.version,
            embedding_id: m
                .vector_available
                .then(|| format!("vec_{}", m.id.trim_start_matches("mem_"))),
            embedding_model: m.embedding_model.as_deref(),
            vector_available: m.vector_available,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

/// A search result or a context memory, with its relevance.
#[derive(Serialize, ToSchema)]
pub struct HitOut<'a> {
    /// `memory`.
    #[schema(example = "memory")]
    object: &'static str,
    id: &'a str,
    session_id: Option<&'a str>,
    user_id: Option<&'a str>,
    content: &'a str,
    r#type: &'a str,
    tags: &'a [String],
    metadata: &'a Object,
    /// 0..=1: the calibrated `vector_score` and the `keyword_score` combined as
    /// `1 - (1 - v)(1 - k)`: 0.7 and above is relevant.
    score: f32,
    vector_score: f32,
    keyword_score: f32,
    created_at: DateTime<Utc>,
}

impl<'a> From<&'a MemoryHit> for HitOut<'a> {
    fn from(h: &'a MemoryHit) -> Self {
        Self {
            object: "memory",
            id: &h.id,
            session_id: h.session_id.as_deref(),
            user_id: h.user_id.as_deref(),
            content: &h.content,
            r#type: &h.memory_type,
            tags: &h.tags,
            metadata: &h.metadata,
            score: h.score,
            vector_score: h.vector_score,
            keyword_score: h.keyword_score,
            created_at: h.created_at,
        }
    }
}

/// Search results, best first.
#[derive(Serialize, ToSchema)]
pub struct SearchOut<'a> {
    /// `list`.
    #[schema(example = "list")]
    object: &'static str,
    query: &'a str,
    data: Vec<HitOut<'a>>,
    /// Always false: a search answers in one page.
    has_more: bool,
}

impl<'a> SearchOut<'a> {
    pub fn new(query: &'a str, hits: &'a [MemoryHit]) -> Self {
        Self {
            object: "list",
            query,
            data: hits.iter().map(HitOut::from).collect(),
            has_more: false,
        }
    }
}

/// `GET /v1/memories`: a search's results with a `query`, a page of memories without.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum SearchOrList<'a> {
    /// With a query.
    Search(SearchOut<'a>),
    /// Without one.
    List(ListOut<MemoryOut<'a>>),
}

/// What an agent puts in its next prompt.
#[derive(Serialize, ToSchema)]
pub struct ContextOut<'a> {
    /// `context`.
    #[schema(example = "context")]
    object: &'static str,
    session_id: &'a str,
    version: u64,
    state: &'a Object,
    /// The most relevant memories, best first.
    memories: Vec<HitOut<'a>>,
    /// The latest turns, newest first.
    #[schema(value_type = Vec<TurnOut>)]
    recent_turns: Box<RawValue>,
    /// The same as `recent_turns`.
    #[schema(value_type = Vec<TurnOut>)]
    turns: Box<RawValue>,
    average_relevance: f32,
    drift_warning: bool,
}

impl<'a> ContextOut<'a> {
    /// The context as sent; its turns are serialized once for both of their keys.
    pub fn new(c: &'a statebase_core::Context) -> serde_json::Result<Self> {
        let turns: Vec<TurnOut> = c.recent_turns.iter().map(TurnOut::from).collect();
        let turns = serde_json::value::to_raw_value(&turns)?;
        Ok(Self {
            object: "context",
            session_id: &c.session.id,
            version: c.session.version,
            state: &c.session.state,
            memories: c.memories.iter().map(HitOut::from).collect(),
            recent_turns: turns.clone(),
            turns,
            average_relevance: c.average_relevance,
            drift_warning: c.drift_warning,
        })
    }
}

/// An audit record: the OpenAPI fields and the documented ones.
#[derive(Serialize, ToSchema)]
pub struct TraceOut<'a> {
    /// `trace`.
    #[schema(example = "trace")]
    object: &'static str,
    id: &'a str,
    session_id: Option<&'a str>,
    /// What happened, e.g. `state.updated`.
    action: &'a str,
    resource_type: &'a str,
    resource_id: &'a str,
    actor: &'a str,
    /// The same as `actor`.
    actor_id: &'a str,
    timestamp: DateTime<Utc>,
    /// The same as `timestamp`.
    created_at: DateTime<Utc>,
    /// Action-specific details: reasoning, version, diff, …
    details: &'a Value,
    /// Always `{}`.
    metadata: Object,
    /// Always null.
    context: Option<Value>,
    /// Always null.
    ip_address: Option<String>,
}

impl<'a> From<&'a Trace> for TraceOut<'a> {
    fn from(t: &'a Trace) -> Self {
        Self {
            object: "trace",
            id: &t.id,
            session_id: t.session_id.as_deref(),
            action: &t.action,
            resource_type: &t.resource_type,
            resource_id: &t.resource_id,
            actor: &t.actor,
            actor_id: &t.actor,
            timestamp: t.timestamp,
            created_at: t.timestamp,
            details: &t.details,
            metadata: Object::new(),
            context: None,
            ip_address: None,
        }
    }
}

/// A memory's revisions, oldest first.
#[derive(Serialize, ToSchema)]
pub struct RevisionsOut<'a> {
    /// `list`.
    #[schema(example = "list")]
    object: &'static str,
    data: &'a [MemoryRevision],
    /// Always false.
    has_more: bool,
}

impl<'a> From<&'a [MemoryRevision]> for RevisionsOut<'a> {
    fn from(data: &'a [MemoryRevision]) -> Self {
        Self {
            object: "list",
            data,
            has_more: false,
        }
    }
}

/// One page of a list: `object`, `data`, `has_more`, `first_id`, `last_id`.
#[derive(Serialize, ToSchema)]
pub struct ListOut<T> {
    /// `list`.
    #[schema(example = "list")]
    object: &'static str,
    data: Vec<T>,
    /// True when more items follow: pass `last_id` as `starting_after`.
    has_more: bool,
    /// The first item's id.
    #[schema(required)]
    first_id: Option<String>,
    /// The last item's id: the next page's `starting_after`.
    #[schema(required)]
    last_id: Option<String>,
}

impl<T> ListOut<T> {
    /// The page `p`, each item shown as a `T`.
    pub fn page<'a, R>(p: &'a Page<R>) -> Self
    where
        T: From<&'a R>,
    {
        Self::page_with(p, T::from)
    }

    /// The page `p`, each item shown by `show`.
    pub fn page_with<'a, R>(p: &'a Page<R>, show: impl Fn(&'a R) -> T) -> Self {
        Self {
            object: "list",
            data: p.data.iter().map(show).collect(),
            has_more: p.has_more,
            first_id: p.first_id.clone(),
            last_id: p.last_id.clone(),
        }
    }

    /// A whole list in one page.
    pub fn all(data: Vec<T>) -> Self {
        Self {
            object: "list",
            data,
            has_more: false,
            first_id: None,
            last_id: None,
        }
    }
}
