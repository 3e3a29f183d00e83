//! The records statebase returns, and the requests it takes.

use crate::clock::Timestamp;
use crate::json::{Diff, Object};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A session: one conversation's container for versioned state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// `sess_` + 12 random lowercase alphanumerics.
    pub id: String,
    /// The agent this session belongs to.
    pub agent_id: String,
    /// The end user, if given.
    pub user_id: Option<String>,
    /// The current state (the state at [`version`](Session::version)).
    pub state: Object,
    /// The current state version; 0 is the initial state.
    pub version: u64,
    /// Free-form metadata. Forks carry `forked_from` and `forked_version`.
    pub metadata: Object,
    /// Memories attached to this session.
    pub memory_count: u64,
    /// Conversation turns logged in this session.
    pub turn_count: u64,
    /// From this instant on the session behaves as not found.
    pub ttl_expires_at: Timestamp,
    /// When the session was created.
    pub created_at: Timestamp,
    /// When the session or its state last changed.
    pub updated_at: Timestamp,
}

impl Session {
    /// True when the session has expired at `now`.
    pub fn is_expired_at(&self, now: Timestamp) -> bool {
        self.ttl_expires_at <= now
    }
}

/// How a state version came to be.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum VersionChange {
    /// The initial state of a new session (version 0).
    Created,
    /// A full replacement.
    Replaced,
    /// An RFC 7386 merge patch.
    Merged,
    /// A rollback: a copy of an earlier version.
    RolledBack {
        /// The version that was restored.
        restored_from_version: u64,
    },
    /// The `state_after` of a turn.
    Turn {
        /// The turn.
        turn_id: String,
        /// Its number.
        turn_number: u64,
    },
    /// The initial state of a fork (version 0), copied from another session.
    Forked {
        /// The session forked from.
        source_session_id: String,
        /// Its version that was copied.
        source_version: u64,
    },
}

/// One version of a session's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateVersion {
    /// The session it belongs to.
    pub session_id: String,
    /// Its number: 0, 1, 2, … without gaps.
    pub version: u64,
    /// The whole state at this version.
    pub state: Object,
    /// When this version was written.
    pub created_at: Timestamp,
    /// Why the change was made, as the caller said.
    pub reasoning: Option<String>,
    /// Who made it (the scope's actor).
    pub updated_by: String,
    /// What kind of change produced it.
    pub change: VersionChange,
}

/// A window of a session's version history, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// The versions, ascending.
    pub versions: Vec<StateVersion>,
    /// The session's current version.
    pub current_version: u64,
}

/// The difference between two versions of a session's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionDiff {
    /// The session.
    pub session_id: String,
    /// The older side.
    pub from_version: u64,
    /// The newer side.
    pub to_version: u64,
    /// What changed, by JSON Pointer path.
    #[serde(flatten)]
    pub diff: Diff,
}

/// The outcome of a rollback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollback {
    /// The session after the rollback.
    pub session: Session,
    /// The version that was restored.
    pub restored_from_version: u64,
    /// The audit trace of the rollback.
    pub trace_id: String,
}

/// An audit record of one change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    /// `trace_` + 12 random characters.
    pub id: String,
    /// The session the change concerns.
    pub session_id: Option<String>,
    /// What happened, e.g. `state.updated` (see [`action`](crate::action)).
    pub action: String,
    /// The kind of resource changed: `session`, `turn`, `memory`.
    pub resource_type: String,
    /// The id of the resource changed.
    pub resource_id: String,
    /// Who did it.
    pub actor: String,
    /// When.
    pub timestamp: Timestamp,
    /// Action-specific details: reasoning, version, diff, …
    pub details: Value,
}

/// One page of a list, with a cursor to the next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    /// The items, in list order.
    pub data: Vec<T>,
    /// True when more items follow the last one.
    pub has_more: bool,
    /// The id of the first item.
    pub first_id: Option<String>,
    /// The id of the last item: pass it as `starting_after` for the next page.
    pub last_id: Option<String>,
}

/// Input of [`StateBase::create_session`](crate::StateBase::create_session).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateSession {
    /// Required, not blank, at most 256 characters.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 256, pattern = r"\S")
    )]
    pub agent_id: String,
    /// Optional end-user id.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 256, pattern = r"\S")
    )]
    pub user_id: Option<String>,
    /// A JSON object; `None` means `{}`.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub initial_state: Option<Value>,
    /// A JSON object; `None` means `{}`.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub metadata: Option<Value>,
    /// Lifetime in seconds, 1..=2592000; `None` means 86400.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 2_592_000))]
    pub ttl_seconds: Option<i64>,
}

impl CreateSession {
    /// A request for a session of `agent_id` with every default.
    pub fn new(agent_id: impl Into<String>) -> Self {
        Self {
            agent_id: agent_id.into(),
            ..Self::default()
        }
    }
}

/// Input of [`StateBase::update_session`](crate::StateBase::update_session).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpdateSession {
    /// An RFC 7386 merge patch applied to the metadata (`null` values remove keys).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub metadata: Option<Value>,
    /// A new lifetime, counted from now.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 2_592_000))]
    pub ttl_seconds: Option<i64>,
}

/// Filters and cursor of [`StateBase::list_sessions`](crate::StateBase::list_sessions).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListSessions {
    /// Page size, 1..=100; `None` means 20.
    pub limit: Option<i64>,
    /// The id of the last session of the previous page.
    pub starting_after: Option<String>,
    /// Only this agent's sessions.
    pub agent_id: Option<String>,
    /// Only this user's sessions.
    pub user_id: Option<String>,
    /// Only sessions created strictly after this instant.
    pub created_after: Option<Timestamp>,
    /// Only sessions created strictly before this instant.
    pub created_before: Option<Timestamp>,
    /// Only sessions whose metadata contains these keys with these values.
    pub metadata: Option<Object>,
}

/// A state write: the new state (replace) or a merge patch (merge).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StateWrite {
    /// A JSON object.
    pub state: Value,
    /// Why, recorded on the version and in the trace.
    pub reasoning: Option<String>,
    /// When given, the write happens only if this is still the current version.
    pub expected_version: Option<u64>,
}

impl StateWrite {
    /// A write of `state` with no reasoning and no expectation.
    pub fn new(state: Value) -> Self {
        Self {
            state,
            ..Self::default()
        }
    }

    /// Adds the reasoning.
    pub fn reasoning(mut self, reasoning: impl Into<String>) -> Self {
        self.reasoning = Some(reasoning.into());
        self
    }

    /// Adds the expected current version.
    pub fn expect_version(mut self, version: u64) -> Self {
        self.expected_version = Some(version);
        self
    }
}

/// Input of [`StateBase::history`](crate::StateBase::history).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryQuery {
    /// How many versions, 1..=1000; `None` means 50.
    pub limit: Option<i64>,
    /// Only versions after this one (the next `limit` of them). Without it or
    /// `from_version`, the latest `limit`.
    pub since_version: Option<u64>,
    /// The first version of the window (0 for the start of the history); with
    /// `since_version` too, the window starts at the later of the two.
    pub from_version: Option<u64>,
}

/// Input of [`StateBase::rollback`](crate::StateBase::rollback).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RollbackTo {
    /// The version to restore; negative counts back from the current one (-1 = the one before).
    pub version: i64,
    /// Why, recorded on the new version and in the trace.
    pub reason: Option<String>,
    /// When given, the rollback happens only if this is still the current version.
    pub expected_version: Option<u64>,
}

/// Input of [`StateBase::fork`](crate::StateBase::fork).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ForkFrom {
    /// The source version; `None` means the latest, negative counts back from it.
    pub version: Option<i64>,
    /// The new session's agent; `None` keeps the source's.
    pub agent_id: Option<String>,
    /// The new session's user; `None` keeps the source's.
    pub user_id: Option<String>,
    /// Metadata for the new session; `None` keeps the source's. `forked_from` and
    /// `forked_version` are always added.
    pub metadata: Option<Value>,
    /// Lifetime of the new session; `None` means 86400.
    pub ttl_seconds: Option<i64>,
}

/// Filters and cursor of [`StateBase::list_traces`](crate::StateBase::list_traces).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListTraces {
    /// Page size, 1..=100; `None` means 50.
    pub limit: Option<i64>,
    /// The id of the last trace of the previous page.
    pub starting_after: Option<String>,
    /// Only this session's traces.
    pub session_id: Option<String>,
    /// Only this action (past or present tense: `state.updated` or `state.update`).
    pub action: Option<String>,
    /// Only this resource type.
    pub resource_type: Option<String>,
    /// Only this resource.
    pub resource_id: Option<String>,
    /// Only traces strictly after this instant.
    pub created_after: Option<Timestamp>,
    /// Only traces strictly before this instant.
    pub created_before: Option<Timestamp>,
}

/// A session removed by [`StateBase::sweep_expired`](crate::StateBase::sweep_expired).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpiredSession {
    /// The tenant it belonged to.
    pub tenant: String,
    /// The session as it was when removed.
    pub session: Session,
}

/// What retention keeps, as a policy of a tenant or of one session (see
/// [`StateBase::set_retention`](crate::StateBase::set_retention)) or for one prune on
/// demand. Each field left out keeps everything of its kind.
///
/// State versions: the last `keep_versions`, and those younger than `keep_days`; a version
/// either keeps stays. The current version always stays, and so do the few before the
/// oldest kept one back to the snapshot it decodes from (at most 15), so that every kept
/// version reads exactly. Turns older than `keep_turn_days` go (the session's
/// `turn_count` still counts them). Traces older than `keep_trace_days` go: the audit trail
/// is the tenant's, so only a tenant's policy has that limit.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// Keep at least this many of the latest versions (at least 1).
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 9223372036854775807_i64)
    )]
    pub keep_versions: Option<u64>,
    /// Keep the versions written in the last this many days (1 to 36,500).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 36500))]
    pub keep_days: Option<u32>,
    /// Keep the turns logged in the last this many days (1 to 36,500).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 36500))]
    pub keep_turn_days: Option<u32>,
    /// Keep the traces written in the last this many days (1 to 36,500); a tenant's policy
    /// only.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 36500))]
    pub keep_trace_days: Option<u32>,
}

/// A stored retention policy: the tenant's own (no `session_id`), or one session's, which
/// replaces the tenant's for that session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPolicy {
    /// The tenant.
    pub tenant: String,
    /// The session it is for; `None`: the tenant's.
    pub session_id: Option<String>,
    /// What it keeps.
    pub retention: Retention,
}

/// What pruning one session did, by
/// [`StateBase::prune_session`](crate::StateBase::prune_session).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pruned {
    /// The session.
    pub session_id: String,
    /// How many state versions went now.
    pub versions_pruned: u64,
    /// How many turns went now.
    pub turns_pruned: u64,
    /// The oldest version kept: reading one before it is `version_not_found`.
    pub kept_from: u64,
    /// The current version.
    pub current_version: u64,
}

/// What one pass of retention over a tenant (or every tenant) removed, by
/// [`StateBase::apply_retention`](crate::StateBase::apply_retention).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionApplied {
    /// Sessions a policy applied to.
    pub sessions: u64,
    /// State versions removed.
    pub versions: u64,
    /// Turns removed.
    pub turns: u64,
    /// Traces removed.
    pub traces: u64,
}

impl std::ops::AddAssign for RetentionApplied {
    fn add_assign(&mut self, other: Self) {
        self.sessions += other.sessions;
        self.versions += other.versions;
        self.turns += other.turns;
        self.traces += other.traces;
    }
}

/// What erasing a user removed, by [`StateBase::erase_user`](crate::StateBase::erase_user):
/// counts, never content. It is also the details of the `user.erased` trace.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Erasure {
    /// Sessions of the user.
    pub sessions: u64,
    /// Their state versions.
    pub versions: u64,
    /// Their turns.
    pub turns: u64,
    /// Memories of the user: their sessions' and their user-level ones, with revisions
    /// and vectors.
    pub memories: u64,
    /// Entities of their sessions, with their versions.
    pub entities: u64,
    /// Traces of those sessions and memories (they hold diffs, reasoning and previews).
    pub traces: u64,
    /// Responses kept for idempotent retries that named the user or what was erased.
    pub idempotent_responses: u64,
}

impl Erasure {
    /// `trace` with these counts as its details: the one trace an erasure leaves.
    pub fn into_trace(self, mut trace: Trace) -> Trace {
        trace.details = serde_json::to_value(self).expect("counts serialize");
        trace
    }
}

/// One conversation turn: what came in, what went out, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    /// `turn_` + 12 random characters.
    pub id: String,
    /// The session it belongs to.
    pub session_id: String,
    /// 1, 2, 3, … within the session, without gaps.
    pub turn_number: u64,
    /// The input: `type`, `content` and any other keys as given.
    pub input: Object,
    /// The output: `type`, `content` and any other keys as given.
    pub output: Object,
    /// Why the agent answered so.
    pub reasoning: Option<String>,
    /// Free-form metadata (model, tokens, latency, …).
    pub metadata: Object,
    /// The state before the turn, as given.
    pub state_before: Option<Object>,
    /// The state after the turn, as given.
    pub state_after: Option<Object>,
    /// The state version this turn wrote, when its `state_after` changed the state.
    pub state_version: Option<u64>,
    /// When the turn was logged.
    pub created_at: Timestamp,
}

/// Input of [`StateBase::add_turn`](crate::StateBase::add_turn).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AddTurn {
    /// An object with `type` and `content` (other keys are kept), or a plain string, taken as
    /// `{"type": "text", "content": …}`.
    pub input: Value,
    /// Like `input`.
    pub output: Value,
    /// Why.
    #[cfg_attr(feature = "openapi", schema(max_length = 65_536))]
    pub reasoning: Option<String>,
    /// A JSON object.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub metadata: Option<Value>,
    /// The state before the turn (a JSON object), recorded as given.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub state_before: Option<Value>,
    /// The state after the turn (a JSON object). When it differs from the current state it
    /// becomes a new state version, written atomically with the turn.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub state_after: Option<Value>,
}

impl AddTurn {
    /// A turn with text input and output.
    pub fn text(input: &str, output: &str) -> Self {
        Self {
            input: Value::String(input.to_owned()),
            output: Value::String(output.to_owned()),
            ..Self::default()
        }
    }
}

/// List order.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Oldest first.
    Asc,
    /// Newest first.
    #[default]
    Desc,
}

/// Input of [`StateBase::list_turns`](crate::StateBase::list_turns).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListTurns {
    /// Page size, 1..=100; `None` means 20.
    pub limit: Option<i64>,
    /// The id of the last turn of the previous page.
    pub starting_after: Option<String>,
    /// Default newest first.
    pub order: Order,
}

/// A long-term memory, found by semantic search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// `mem_` + 12 random characters.
    pub id: String,
    /// The session it belongs to; `None` for a user-level memory.
    pub session_id: Option<String>,
    /// The user it belongs to (a session memory has its session's user).
    pub user_id: Option<String>,
    /// The text, 1..=10,000 characters.
    pub content: String,
    /// Free-form kind: `fact`, `preference`, `event`, … Default `general`.
    #[serde(rename = "type")]
    pub memory_type: String,
    /// Labels.
    pub tags: Vec<String>,
    /// Free-form metadata.
    pub metadata: Object,
    /// 1 at creation, +1 per update.
    pub version: u64,
    /// The embedding model of its vector; `None` when it was added with `embed: false`.
    pub embedding_model: Option<String>,
    /// Whether its vector is stored: false when it was added with `embed: false`, and while
    /// its vector is pending (the embedder was remote, slow or down when it was written; see
    /// [`StateBase::embed_pending`](crate::StateBase::embed_pending)). Derived from the
    /// stored vector, never stored itself.
    #[serde(skip)]
    pub vector_available: bool,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

/// One revision of a memory, as it was after an add or an update.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryRevision {
    /// The memory.
    pub memory_id: String,
    /// Its version at this revision.
    pub version: u64,
    /// The content then.
    pub content: String,
    /// The type then.
    #[serde(rename = "type")]
    pub memory_type: String,
    /// The tags then.
    pub tags: Vec<String>,
    /// The metadata then.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub metadata: Object,
    /// When the revision was made.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub updated_at: Timestamp,
}

impl MemoryRevision {
    /// The revision a memory is at.
    pub fn of(m: &Memory) -> Self {
        Self {
            memory_id: m.id.clone(),
            version: m.version,
            content: m.content.clone(),
            memory_type: m.memory_type.clone(),
            tags: m.tags.clone(),
            metadata: m.metadata.clone(),
            updated_at: m.updated_at,
        }
    }
}

/// Input of [`StateBase::add_memory`](crate::StateBase::add_memory).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AddMemory {
    /// The session it belongs to. Without one, `user_id` makes it a user-level memory.
    pub session_id: Option<String>,
    /// The user of a user-level memory (a session memory takes its session's user).
    pub user_id: Option<String>,
    /// 1..=10,000 characters.
    pub content: String,
    /// Default `general`.
    #[serde(rename = "type")]
    pub memory_type: Option<String>,
    /// Labels.
    pub tags: Option<Vec<String>>,
    /// A JSON object.
    pub metadata: Option<Value>,
    /// Whether to embed it for semantic search now (default true). Without a vector it is
    /// still found by keyword.
    pub embed: Option<bool>,
}

impl AddMemory {
    /// A memory of `session_id` with every default.
    pub fn new(session_id: &str, content: &str) -> Self {
        Self {
            session_id: Some(session_id.to_owned()),
            content: content.to_owned(),
            ..Self::default()
        }
    }
}

/// Input of [`StateBase::update_memory`](crate::StateBase::update_memory).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpdateMemory {
    /// New content (re-embedded).
    pub content: Option<String>,
    /// New type.
    #[serde(rename = "type")]
    pub memory_type: Option<String>,
    /// New tags: they replace the old ones.
    pub tags: Option<Vec<String>>,
    /// An RFC 7386 merge patch for the metadata.
    pub metadata: Option<Value>,
}

/// Input of [`StateBase::list_memories`](crate::StateBase::list_memories).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListMemories {
    /// Page size, 1..=100; `None` means 20.
    pub limit: Option<i64>,
    /// The id of the last memory of the previous page.
    pub starting_after: Option<String>,
    /// Only this session's memories.
    pub session_id: Option<String>,
    /// Only this user's memories.
    pub user_id: Option<String>,
    /// Only this type.
    #[serde(rename = "type")]
    pub memory_type: Option<String>,
    /// Only memories with any of these tags.
    pub tags: Vec<String>,
}

/// A record an agent keeps about something in its session (a person, an order, a ticket),
/// under the application's own type and id. Every change of its attributes is a new
/// `version`; the old ones stay readable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entity {
    /// `ent_` + 12 random characters.
    pub id: String,
    /// The session it belongs to.
    pub session_id: String,
    /// The application's kind of record, e.g. `customer`.
    pub entity_type: String,
    /// The application's id of it: unique per session and type.
    pub entity_id: String,
    /// The attributes at this version.
    pub attributes: Object,
    /// 1 at creation, +1 per update.
    pub version: u64,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

/// One version of an entity's attributes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntityVersion {
    /// The version number.
    pub version: u64,
    /// The attributes then.
    pub attributes: Object,
    /// When this version was written.
    pub updated_at: Timestamp,
}

impl EntityVersion {
    /// The version an entity is at.
    pub fn of(e: &Entity) -> Self {
        Self {
            version: e.version,
            attributes: e.attributes.clone(),
            updated_at: e.updated_at,
        }
    }
}

/// Input of [`StateBase::create_entity`](crate::StateBase::create_entity).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateEntity {
    /// The session it belongs to.
    pub session_id: String,
    /// The application's kind of record.
    pub entity_type: String,
    /// The application's id, unique per session and type.
    pub entity_id: String,
    /// A JSON object (`None` means `{}`).
    pub attributes: Option<Value>,
}

/// Input of [`StateBase::update_entity`](crate::StateBase::update_entity).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpdateEntity {
    /// The new attributes: they replace the old ones whole.
    pub attributes: Value,
    /// Refuse the update (`Conflict`) unless this is the current version.
    pub expected_version: Option<u64>,
}

/// Input of [`StateBase::entity_history`](crate::StateBase::entity_history).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListEntityVersions {
    /// Page size, 1..=100; `None` means 20.
    pub limit: Option<i64>,
    /// Only versions after this one.
    pub starting_after: Option<u64>,
}

/// Input of [`StateBase::list_entities`](crate::StateBase::list_entities).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListEntities {
    /// Page size, 1..=100; `None` means 20.
    pub limit: Option<i64>,
    /// The id of the last entity of the previous page.
    pub starting_after: Option<String>,
    /// Only this session's entities.
    pub session_id: Option<String>,
    /// Only this type.
    pub entity_type: Option<String>,
    /// Only this application id.
    pub entity_id: Option<String>,
}

/// Input of [`StateBase::search_memories`](crate::StateBase::search_memories).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchMemories {
    /// What to look for.
    pub query: String,
    /// Only this session's memories.
    pub session_id: Option<String>,
    /// Only this user's memories.
    pub user_id: Option<String>,
    /// Only these types (empty: any).
    pub types: Vec<String>,
    /// Only memories with any of these tags (empty: any).
    pub tags: Vec<String>,
    /// How many results, 1..=100; `None` means 10.
    pub limit: Option<i64>,
    /// Minimum score, 0..=1; `None` means 0.7.
    pub threshold: Option<f64>,
}

impl SearchMemories {
    /// A search for `query` with every default.
    pub fn new(query: &str) -> Self {
        Self {
            query: query.to_owned(),
            ..Self::default()
        }
    }
}

/// A memory found by search, with its relevance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryHit {
    /// The memory.
    pub id: String,
    /// Its session.
    pub session_id: Option<String>,
    /// Its user.
    pub user_id: Option<String>,
    /// Its text.
    pub content: String,
    /// Its type.
    #[serde(rename = "type")]
    pub memory_type: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// Its metadata.
    pub metadata: Object,
    /// The relevance, 0..=1: the calibrated `vector_score` and the `keyword_score`
    /// combined (see [`MemorySearch::score`](crate::store::MemorySearch::score)).
    pub score: f32,
    /// Cosine similarity of the query's and the memory's vectors (0 without a vector).
    pub vector_score: f32,
    /// The share of the query's keywords the memory contains.
    pub keyword_score: f32,
    /// When it was created.
    pub created_at: Timestamp,
}

impl MemoryHit {
    /// Memory `m` with its scores.
    pub(crate) fn of(m: Memory, score: f32, vector_score: f32, keyword_score: f32) -> Self {
        Self {
            id: m.id,
            session_id: m.session_id,
            user_id: m.user_id,
            content: m.content,
            memory_type: m.memory_type,
            tags: m.tags,
            metadata: m.metadata,
            score,
            vector_score,
            keyword_score,
            created_at: m.created_at,
        }
    }
}

/// Input of [`StateBase::context`](crate::StateBase::context).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContextRequest {
    /// What the agent is about to answer; memories are ranked against it. Without it, the
    /// most recent memories.
    pub query: Option<String>,
    /// 1..=20; `None` means 5.
    pub memory_limit: Option<i64>,
    /// 1..=50; `None` means 10.
    pub turn_limit: Option<i64>,
}

/// What an agent puts in its next prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Context {
    /// The session, with its current state and version.
    pub session: Session,
    /// The most relevant memories of the session and its user's user-level memories, best
    /// first (newest first without a query).
    pub memories: Vec<MemoryHit>,
    /// The latest turns, newest first.
    pub recent_turns: Vec<Turn>,
    /// The mean score of `memories` (0 when there are none or there was no query).
    pub average_relevance: f32,
    /// True when a query found memories but they are only weakly related to it.
    pub drift_warning: bool,
}

/// An API key as stored (the secret itself never is).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    /// `key_` + 12 random characters.
    pub id: String,
    /// The tenant whose data the key reaches.
    pub tenant: String,
    /// A label.
    pub name: String,
    /// The first characters of the secret, to recognise it in listings.
    pub key_prefix: String,
    /// SHA-256 of the secret, hex.
    pub key_hash: String,
    /// Requests per minute; `None` follows the server's setting.
    pub rate_limit: Option<u32>,
    /// Requests it may make at once before the per-minute rate applies; `None` follows
    /// the server's setting.
    #[serde(default)]
    pub burst: Option<u32>,
    /// False once revoked.
    pub is_active: bool,
    /// When it was made.
    pub created_at: Timestamp,
    /// After this instant it no longer works.
    pub expires_at: Option<Timestamp>,
}

/// A webhook endpoint: where the HTTP server POSTs a tenant's events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEndpoint {
    /// `wh_` + 12 random characters.
    pub id: String,
    /// The tenant whose events it receives.
    pub tenant: String,
    /// Where events are POSTed (`http` or `https`).
    pub url: String,
    /// The event types it receives; empty (or `*`) means all.
    pub events: Vec<String>,
    /// The HMAC key of its signatures, `whsec_…`.
    pub secret: String,
    /// When it was made.
    pub created_at: Timestamp,
}

impl WebhookEndpoint {
    /// Whether it receives events of `event_type`.
    pub fn wants(&self, event_type: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == event_type || e == "*")
    }
}

/// A key's own rate limit; what is `None` follows the server's setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyLimits {
    /// Requests per minute.
    pub rate_limit: Option<u32>,
    /// Requests at once before the per-minute rate applies.
    pub burst: Option<u32>,
}

impl KeyLimits {
    /// `rate_limit` requests a minute, with the server's burst.
    pub fn per_minute(rate_limit: u32) -> Self {
        Self {
            rate_limit: Some(rate_limit),
            burst: None,
        }
    }
}

impl ApiKey {
    /// True if the key works at `now`.
    pub fn is_usable_at(&self, now: Timestamp) -> bool {
        self.is_active && self.expires_at.is_none_or(|e| now < e)
    }
}

/// A tenant's totals, from [`StateBase::stats`](crate::StateBase::stats).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Sessions not expired.
    pub sessions: u64,
    /// Turns of those sessions.
    pub turns: u64,
    /// Memories, user-level ones included.
    pub memories: u64,
    /// Entities.
    pub entities: u64,
    /// Sessions (not expired) changed in the last 24 hours.
    pub active_sessions_24h: u64,
    /// Traces per hour over the last 24 hours, oldest first: (the hour's start, count), hours
    /// without any left out.
    pub recent_activity: Vec<(Timestamp, u64)>,
}
