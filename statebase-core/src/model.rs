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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateSession {
    /// Required, non-empty.
    pub agent_id: String,
    /// Optional end-user id.
    pub user_id: Option<String>,
    /// A JSON object; `None` means `{}`.
    pub initial_state: Option<Value>,
    /// A JSON object; `None` means `{}`.
    pub metadata: Option<Value>,
    /// Lifetime in seconds, 1..=2592000; `None` means 86400.
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpdateSession {
    /// An RFC 7386 merge patch applied to the metadata (`null` values remove keys).
    pub metadata: Option<Value>,
    /// A new lifetime, counted from now.
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
    /// Only versions after this one (the next `limit` of them). Without it, the latest `limit`.
    pub since_version: Option<u64>,
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
