//! The storage traits every backend implements, one per concern, and the records they
//! store.
//!
//! Core makes every id, timestamp and encoded version; a backend stores exactly what it is
//! given and checks the preconditions each method names. Every record belongs to a tenant
//! and every method is scoped to one: a record of another tenant is never returned, changed
//! or counted, even when its id is known.

use crate::clock::Timestamp;
use crate::error::Result;
use crate::json::Object;
use crate::model::{
    ApiKey, Entity, EntityVersion, Erasure, Memory, MemoryRevision, Retention, RetentionPolicy,
    Session, Trace, Turn, WebhookEndpoint,
};
use crate::search::embed::Calibration;
use async_trait::async_trait;
use std::fmt::Debug;
use std::ops::Range;
use std::sync::Arc;

/// A session as stored: the public record plus its revision.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    /// The session, including its current state and version.
    pub session: Session,
    /// Bumped by every write that changes the session record (its state, counts, metadata
    /// or expiry), for compare-and-set of metadata: an unchanged revision is an unchanged
    /// record.
    pub revision: u64,
}

/// One stored state version. The body's encoding is core's business (see `codec`):
/// backends store and return the bytes as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRecord {
    /// The version number.
    pub version: u64,
    /// When it was written.
    pub created_at: Timestamp,
    /// The encoded version.
    pub body: Vec<u8>,
}

/// A new session with its version 0 and its trace.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// The session, at version 0 and revision 0.
    pub record: SessionRecord,
    /// Its version 0.
    pub initial: VersionRecord,
    /// The `session.created` or `session.forked` trace.
    pub trace: Trace,
}

/// Appends the next state version of a session.
#[derive(Debug, Clone)]
pub struct AppendVersion {
    /// The session.
    pub session_id: String,
    /// The version that must be current; the new one is `expected_version + 1`.
    pub expected_version: u64,
    /// The new version (its number is `expected_version + 1`).
    pub version: VersionRecord,
    /// The state at the new version, which becomes the session's current state.
    pub state: Object,
    /// The session's new `updated_at`.
    pub updated_at: Timestamp,
    /// The trace of the change.
    pub trace: Trace,
}

/// Replaces a session's metadata and expiry.
#[derive(Debug, Clone)]
pub struct SessionUpdate {
    /// The session.
    pub session_id: String,
    /// The revision that must be current.
    pub expected_revision: u64,
    /// The whole new metadata.
    pub metadata: Object,
    /// The new expiry.
    pub ttl_expires_at: Timestamp,
    /// The session's new `updated_at`.
    pub updated_at: Timestamp,
    /// The `session.updated` trace.
    pub trace: Trace,
}

/// Appends the next turn of a session, with the state version it writes, if any.
#[derive(Debug, Clone)]
pub struct AppendTurn {
    /// The turn; its number must be the session's `turn_count + 1`.
    pub turn: Turn,
    /// The state version the turn writes, checked and applied as by
    /// [`SessionLog::append_version`], in the same transaction.
    pub state: Option<AppendVersion>,
    /// The session's new `updated_at`.
    pub updated_at: Timestamp,
    /// The `turn.added` trace.
    pub trace: Trace,
}

/// A session with everything it owns, as an archive restores it: written exactly as given
/// by [`SessionLog::import_session`].
#[derive(Debug, Clone, PartialEq)]
pub struct SessionArchive {
    /// The session as stored.
    pub record: SessionRecord,
    /// Its versions, ascending (encoded by core, as [`VersionRecord`] says).
    pub versions: Vec<VersionRecord>,
    /// Its turns, by turn number.
    pub turns: Vec<Turn>,
    /// Its memories.
    pub memories: Vec<MemoryArchive>,
    /// Its entities.
    pub entities: Vec<EntityArchive>,
}

/// A memory with its revisions, as an archive restores it.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryArchive {
    /// The memory as stored; its vector may be missing (an archive without vectors).
    pub record: MemoryRecord,
    /// Its revisions, oldest first.
    pub revisions: Vec<MemoryRevision>,
}

/// An entity with its versions, as an archive restores it.
#[derive(Debug, Clone, PartialEq)]
pub struct EntityArchive {
    /// The entity at its current version.
    pub entity: Entity,
    /// Its versions, ascending.
    pub versions: Vec<EntityVersion>,
}

/// A memory as stored: the public record, its vector, and its deduplication key.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryRecord {
    /// The memory.
    pub memory: Memory,
    /// Its vector, made by `memory.embedding_model`.
    pub embedding: Option<Vec<f32>>,
    /// Unique within a tenant: two memories with the same key are the same memory.
    pub dedupe_key: String,
}

/// Inserts a memory, unless its tenant already has one with the same dedupe key.
#[derive(Debug, Clone)]
pub struct NewMemory {
    /// The memory, at version 1.
    pub record: MemoryRecord,
    /// The `memory.created` trace.
    pub trace: Trace,
}

/// Replaces a memory with its next version.
#[derive(Debug, Clone)]
pub struct MemoryUpdate {
    /// The memory as it will be (version `expected_version + 1`).
    pub record: MemoryRecord,
    /// The version that must be current.
    pub expected_version: u64,
    /// The `memory.updated` trace.
    pub trace: Trace,
}

/// Filters of [`MemoryRecords::list_memories`]. Order: newest first, by `(created_at, id)` descending.
#[derive(Debug, Clone, Default)]
pub struct MemoryQuery {
    /// At most this many.
    pub limit: usize,
    /// Only memories strictly after this cursor in list order.
    pub after: Option<Cursor>,
    /// Exact session.
    pub session_id: Option<String>,
    /// Exact user.
    pub user_id: Option<String>,
    /// Only memories without a session (user-level ones).
    pub user_level_only: bool,
    /// Exact type.
    pub memory_type: Option<String>,
    /// Any of these tags (empty: any memory).
    pub tags: Vec<String>,
}

impl MemoryQuery {
    /// True if `m` passes every filter (the cursor and limit aside).
    pub fn matches(&self, m: &Memory) -> bool {
        self.session_id
            .as_ref()
            .is_none_or(|s| Some(s) == m.session_id.as_ref())
            && self
                .user_id
                .as_ref()
                .is_none_or(|u| Some(u) == m.user_id.as_ref())
            && (!self.user_level_only || m.session_id.is_none())
            && self
                .memory_type
                .as_ref()
                .is_none_or(|t| *t == m.memory_type)
            && (self.tags.is_empty() || self.tags.iter().any(|t| m.tags.contains(t)))
    }
}

/// Which memories a search looks at, before its type and tag filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchScope {
    /// Every memory of the tenant.
    Tenant,
    /// One session's memories.
    Session(String),
    /// Every memory of one user (their sessions' and their user-level ones).
    User(String),
    /// One session's memories and, with a user, that user's user-level memories: what
    /// context searches.
    SessionAndUserLevel(String, Option<String>),
}

/// A hybrid search of memories: by vector and by keywords.
#[derive(Debug, Clone)]
pub struct MemorySearch {
    /// The query's keywords (see [`keywords`](crate::search::keywords)).
    pub keywords: Vec<String>,
    /// The query's vector, made by `model`.
    pub vector: Option<Vec<f32>>,
    /// The embedding model: only memories whose vector it made are compared with the query's.
    pub model: String,
    /// How the model's cosines map to scores (see [`score`](MemorySearch::score)).
    pub calibration: Calibration,
    /// The memories looked at.
    pub scope: SearchScope,
    /// Any of these types (empty: any).
    pub types: Vec<String>,
    /// Any of these tags (empty: any).
    pub tags: Vec<String>,
    /// Hits wanted.
    pub limit: usize,
    /// The lowest score kept.
    pub threshold: f32,
}

impl MemorySearch {
    /// A memory's score, from the raw cosine of its vector to the query's and its keyword
    /// share: the calibrated cosine `v` and the share `k` combined as `1 − (1 − v)(1 − k)`,
    /// so either alone counts in full (every keyword scores 1), and a memory close in
    /// meaning that also shares words ranks above one that only does either.
    pub fn score(&self, vector_score: f32, keyword_score: f32) -> f32 {
        let v = self.calibration.score(vector_score);
        let k = keyword_score.clamp(0.0, 1.0);
        (1.0 - (1.0 - v) * (1.0 - k)).clamp(0.0, 1.0)
    }

    /// The share of the query's keywords that `matched` of them are: a memory's keyword
    /// score.
    pub fn keyword_share(&self, matched: usize) -> f32 {
        matched as f32 / self.keywords.len().max(1) as f32
    }

    /// The highest vector score a memory outside the `limit` nearest can have, from the
    /// nearest's vector scores: the lowest of them, or 0 when fewer than `limit` were found
    /// (then every other memory lacks a comparable vector).
    pub fn vector_ceiling(&self, nearest: impl Iterator<Item = f32>) -> f32 {
        let (mut count, mut lowest) = (0, f32::INFINITY);
        for s in nearest {
            count += 1;
            lowest = lowest.min(s);
        }
        if count >= self.limit && count > 0 {
            lowest
        } else {
            0.0
        }
    }

    /// The fewest of the query's keywords a memory must contain for its score to reach
    /// the threshold when its vector score is at most `vector_ceiling`; `None` when no
    /// share can (or there are no keywords).
    pub fn min_keywords(&self, vector_ceiling: f32) -> Option<usize> {
        (1..=self.keywords.len())
            .find(|&k| self.score(vector_ceiling, self.keyword_share(k)) >= self.threshold)
    }

    /// What a memory outside the `limit` nearest by vector must beat with its highest
    /// possible score (see [`vector_ceiling`](MemorySearch::vector_ceiling)) to be a
    /// candidate: the `limit`-th
    /// best of `scores`, the [`score`](MemorySearch::score)s of the candidates so
    /// far; −∞ while there are fewer than `limit`.
    pub fn bar(&self, scores: impl Iterator<Item = f32>) -> f32 {
        let mut best: Vec<f32> = scores.collect();
        if best.len() < self.limit || self.limit == 0 {
            return f32::NEG_INFINITY;
        }
        best.select_nth_unstable_by(self.limit - 1, |a, b| b.total_cmp(a));
        best[self.limit - 1]
    }
}

/// A memory a store's search found, with its scores: cosine similarity to the query's
/// vector (0 without a comparable vector) and the share of the query's keywords it contains.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredMemory {
    /// The memory.
    pub memory: Memory,
    /// Cosine similarity of its vector and the query's.
    pub vector_score: f32,
    /// The share of the query's keywords it contains.
    pub keyword_score: f32,
}

/// Inserts an entity, unless its session already has one of the same type and application
/// id.
#[derive(Debug, Clone)]
pub struct NewEntity {
    /// The entity, at version 1.
    pub entity: Entity,
    /// The `entity.created` trace.
    pub trace: Trace,
}

/// Replaces an entity's attributes with its next version.
#[derive(Debug, Clone)]
pub struct EntityUpdate {
    /// The entity as it will be (version `expected_version + 1`).
    pub entity: Entity,
    /// The version that must be current.
    pub expected_version: u64,
    /// The `entity.updated` trace.
    pub trace: Trace,
}

/// Filters of [`EntityRecords::list_entities`]. Order: newest first, by `(created_at, id)`
/// descending.
#[derive(Debug, Clone, Default)]
pub struct EntityQuery {
    /// At most this many.
    pub limit: usize,
    /// Only entities strictly after this cursor in list order.
    pub after: Option<Cursor>,
    /// Exact session.
    pub session_id: Option<String>,
    /// Exact type.
    pub entity_type: Option<String>,
    /// Exact application id.
    pub entity_id: Option<String>,
}

impl EntityQuery {
    /// True if `e` passes every filter (the cursor and limit aside).
    pub fn matches(&self, e: &Entity) -> bool {
        self.session_id.as_ref().is_none_or(|s| *s == e.session_id)
            && self
                .entity_type
                .as_ref()
                .is_none_or(|t| *t == e.entity_type)
            && self.entity_id.as_ref().is_none_or(|i| *i == e.entity_id)
    }
}

/// Filters of [`SessionLog::list_turns`].
#[derive(Debug, Clone, Default)]
pub struct TurnQuery {
    /// At most this many.
    pub limit: usize,
    /// Newest (highest turn number) first.
    pub descending: bool,
    /// Only turns after this number in list order.
    pub after_turn_number: Option<u64>,
}

/// What [`SessionLog::count_sessions`] counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionCounts {
    /// Sessions not expired.
    pub sessions: u64,
    /// The sum of their `turn_count`s.
    pub turns: u64,
    /// Those of them with `updated_at` strictly after the given instant.
    pub changed: u64,
}

/// Where a listing resumes: strictly after this key in its order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The `created_at` (or trace `timestamp`) of the last item returned.
    pub at: Timestamp,
    /// The id of the last item returned.
    pub id: String,
}

impl From<&Session> for Cursor {
    /// Where a list of sessions resumes after `s`.
    fn from(s: &Session) -> Self {
        Cursor {
            at: s.created_at,
            id: s.id.clone(),
        }
    }
}

/// Filters of [`SessionLog::list_sessions`]. Order: newest first, by `(created_at, id)` descending.
#[derive(Debug, Clone, Default)]
pub struct SessionQuery {
    /// At most this many.
    pub limit: usize,
    /// Only sessions strictly after this cursor in list order.
    pub after: Option<Cursor>,
    /// Only sessions not expired at this instant.
    pub live_at: Option<Timestamp>,
    /// Exact agent.
    pub agent_id: Option<String>,
    /// Exact user.
    pub user_id: Option<String>,
    /// `created_at` strictly after.
    pub created_after: Option<Timestamp>,
    /// `created_at` strictly before.
    pub created_before: Option<Timestamp>,
    /// Metadata contains these top-level keys with equal values.
    pub metadata: Option<Object>,
}

impl SessionQuery {
    /// True if `s` passes every filter (the cursor and limit aside).
    pub fn matches(&self, s: &Session) -> bool {
        self.live_at.is_none_or(|now| !s.is_expired_at(now))
            && self.agent_id.as_ref().is_none_or(|a| *a == s.agent_id)
            && self
                .user_id
                .as_ref()
                .is_none_or(|u| Some(u) == s.user_id.as_ref())
            && self.created_after.is_none_or(|t| s.created_at > t)
            && self.created_before.is_none_or(|t| s.created_at < t)
            && self
                .metadata
                .as_ref()
                .is_none_or(|m| crate::json::contains(&s.metadata, m))
    }
}

/// Filters of [`TraceLog::list_traces`]. Order: newest first, by `(timestamp, id)` descending.
#[derive(Debug, Clone, Default)]
pub struct TraceQuery {
    /// At most this many.
    pub limit: usize,
    /// Only traces strictly after this cursor in list order.
    pub after: Option<Cursor>,
    /// Exact session.
    pub session_id: Option<String>,
    /// Exact action.
    pub action: Option<String>,
    /// Exact resource type.
    pub resource_type: Option<String>,
    /// Exact resource id.
    pub resource_id: Option<String>,
    /// `timestamp` strictly after.
    pub created_after: Option<Timestamp>,
    /// `timestamp` strictly before.
    pub created_before: Option<Timestamp>,
}

impl TraceQuery {
    /// True if `t` passes every filter (the cursor and limit aside).
    pub fn matches(&self, t: &Trace) -> bool {
        self.session_id
            .as_ref()
            .is_none_or(|s| Some(s) == t.session_id.as_ref())
            && self.action.as_ref().is_none_or(|a| *a == t.action)
            && self
                .resource_type
                .as_ref()
                .is_none_or(|r| *r == t.resource_type)
            && self
                .resource_id
                .as_ref()
                .is_none_or(|r| *r == t.resource_id)
            && self.created_after.is_none_or(|c| t.timestamp > c)
            && self.created_before.is_none_or(|c| t.timestamp < c)
    }
}

/// A trace with its place in the commit order of every tenant's traces.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedEntry {
    /// Grows with commit order; never reused.
    pub position: u64,
    /// The tenant the trace belongs to.
    pub tenant: String,
    /// The trace.
    pub trace: Trace,
}

/// Everything core stores: the [`SessionLog`], [`MemoryRecords`], [`EntityRecords`] and
/// [`TraceLog`] of every tenant. Implemented for every type that implements the four; a
/// backend implements them (and [`ServerRecords`] to be served over HTTP, see
/// [`ServerStore`]).
///
/// Contract for every method of every part:
/// - **Atomicity**: each mutating method happens whole or not at all; when it returns an
///   error nothing was written.
/// - **Durability**: when a mutating method returns `Ok`, the write survives a reopen of the
///   store and, for persistent backends, a killed process (at the backend's documented
///   durability level).
/// - **Isolation**: concurrent calls behave as if run one at a time in some order.
/// - **Tenancy**: every method sees only the given tenant's records.
/// - **Errors**: [`Error::NotFound`](crate::Error::NotFound) for a missing record where a
///   method requires one, [`Error::Conflict`](crate::Error::Conflict) for a failed
///   precondition, [`Error::Backend`](crate::Error::Backend) for anything else.
pub trait Store: SessionLog + MemoryRecords + EntityRecords + TraceLog {}

impl<T: SessionLog + MemoryRecords + EntityRecords + TraceLog + ?Sized> Store for T {}

/// A [`Store`] with the [`ServerRecords`] the HTTP server needs: what `statebase-http` serves
/// from. Implemented for every type that implements both.
pub trait ServerStore: Store + ServerRecords {}

impl<T: Store + ServerRecords + ?Sized> ServerStore for T {}

/// Sessions with their state versions and turns: the log of each conversation.
///
/// Every mutating method writes its trace in the same transaction (see [`TraceLog`]);
/// each bumps the session's revision when it changes the session record.
/// Expiry is core's business: a backend stores and returns expired sessions like any other,
/// except where a query's `live_at` asks it to leave them out.
#[async_trait]
pub trait SessionLog: Send + Sync + Debug + 'static {
    /// Inserts a session, its version 0 and its trace. A `Backend` error if the id exists
    /// (ids are random: a clash is a bug, never overwritten).
    async fn create_session(&self, tenant: &str, new: NewSession) -> Result<()>;

    /// The session, or `None`.
    async fn session(&self, tenant: &str, id: &str) -> Result<Option<SessionRecord>>;

    /// Sessions matching the query, newest first, at most `query.limit`.
    async fn list_sessions(&self, tenant: &str, query: &SessionQuery)
        -> Result<Vec<SessionRecord>>;

    /// Replaces metadata and expiry, sets `updated_at`, bumps the revision, writes the
    /// trace, and returns the session as stored. `Conflict` if the revision is not
    /// `expected_revision`; `NotFound` if there is no such session.
    async fn update_session(&self, tenant: &str, update: SessionUpdate) -> Result<SessionRecord>;

    /// Appends version `expected_version + 1`, makes its state current, sets `updated_at`,
    /// bumps the revision, writes the trace, and returns the session as stored: the writes
    /// committed before it (turns, memories, metadata) included. `Conflict` if the current
    /// version is not `expected_version`; `NotFound` if there is no such session.
    async fn append_version(&self, tenant: &str, append: AppendVersion) -> Result<SessionRecord>;

    /// The session's versions whose numbers are in `range`, ascending. Empty if the session
    /// does not exist.
    async fn versions(
        &self,
        tenant: &str,
        session_id: &str,
        range: Range<u64>,
    ) -> Result<Vec<VersionRecord>>;

    /// Deletes the session's versions numbered below `before` (core never asks for the
    /// current one to go), and if any went writes `trace`; answers how many went. The
    /// session record is unchanged. `NotFound` if there is no such session.
    async fn prune_versions(
        &self,
        tenant: &str,
        session_id: &str,
        before: u64,
        trace: Trace,
    ) -> Result<u64>;

    /// Deletes the session's turns created before `before`, and if any went writes
    /// `trace`; answers how many went. The session record (and its `turn_count`) is
    /// unchanged. `NotFound` if there is no such session.
    async fn prune_turns(
        &self,
        tenant: &str,
        session_id: &str,
        before: Timestamp,
        trace: Trace,
    ) -> Result<u64>;

    /// Sets (`Some`) or removes (`None`) the retention policy of the tenant (`session_id`
    /// `None`) or of one of its sessions, and writes `trace` if given (an import gives
    /// none). A session's policy goes with the session. `NotFound` if there is no such
    /// session.
    async fn put_retention(
        &self,
        tenant: &str,
        session_id: Option<&str>,
        policy: Option<Retention>,
        trace: Option<Trace>,
    ) -> Result<()>;

    /// The retention policy of the tenant (`session_id` `None`) or of one of its sessions.
    async fn retention(&self, tenant: &str, session_id: Option<&str>) -> Result<Option<Retention>>;

    /// Every tenant's policies in an order the store keeps, each tenant's together and its
    /// own first; those after `after` (a tenant, and a session id or `""` for the tenant's
    /// own) in that order, at most `limit`.
    async fn retention_policies(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<RetentionPolicy>>;

    /// Deletes the session and everything it owns (its versions, turns, memories with their
    /// revisions, entities with their versions, and its retention policy) and writes the
    /// trace.
    /// Returns the session as it was; `NotFound` if there is no such session.
    async fn delete_session(&self, tenant: &str, id: &str, trace: Trace) -> Result<SessionRecord>;

    /// Erases everything of `user_id` in the tenant at once: their sessions with all they
    /// own (as [`delete_session`](Self::delete_session) does), every memory whose `user_id`
    /// it is with its revisions, the traces of those sessions and memories, and the kept
    /// [responses](IdempotentResponse) whose subjects name the user (`user:` + id), one of
    /// those sessions or one of those memories. Tombstones the erased session and memory
    /// ids, so that no import brings them back (see
    /// [`import_session`](Self::import_session)). Writes `trace` with the counts as its
    /// details ([`Erasure::into_trace`]) and returns them; a user with nothing is zero
    /// counts, and still the trace.
    async fn erase_user(&self, tenant: &str, user_id: &str, trace: Trace) -> Result<Erasure>;

    /// The tenant's sessions not expired at `live_at`, their turns, and how many of them
    /// changed after `changed_after`.
    async fn count_sessions(
        &self,
        tenant: &str,
        live_at: Timestamp,
        changed_after: Timestamp,
    ) -> Result<SessionCounts>;

    /// Up to `limit` sessions of any tenant whose expiry is at or before `now`, with their
    /// tenants.
    async fn expired_sessions(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<(String, SessionRecord)>>;

    /// Inserts the turn, sets `turn_count` to its number, applies the state version if any,
    /// sets `updated_at`, bumps the revision, writes the traces, and returns the session as
    /// stored. `Conflict` if the turn number is not `turn_count + 1` or the state version
    /// is not the next one; `NotFound` if there is no such session.
    async fn append_turn(&self, tenant: &str, append: AppendTurn) -> Result<SessionRecord>;

    /// Inserts the session and everything the archive holds of it exactly as given (no
    /// trace: [`TraceLog::import_traces`] restores those), all or nothing, and returns true;
    /// if the tenant has a session with its id, or had one that was
    /// [erased](Self::erase_user), writes nothing and returns false.
    /// `DuplicateContent` if another memory of the tenant has one of its memories' dedupe
    /// keys; `Backend` if a memory or entity id is taken.
    async fn import_session(&self, tenant: &str, archive: SessionArchive) -> Result<bool>;

    /// The turn, or `None`.
    async fn turn(&self, tenant: &str, id: &str) -> Result<Option<Turn>>;

    /// The session's turns by turn number, at most `query.limit`.
    async fn list_turns(
        &self,
        tenant: &str,
        session_id: &str,
        query: &TurnQuery,
    ) -> Result<Vec<Turn>>;
}

/// Memories with their revisions and vectors. A memory of a session goes with it.
#[async_trait]
pub trait MemoryRecords: Send + Sync + Debug + 'static {
    /// Inserts the memory and its first revision, bumps its session's `memory_count`, writes
    /// the trace, and returns `None`. If the tenant has a memory with the same dedupe key,
    /// writes nothing and returns that memory. `NotFound` if its session does not exist.
    async fn insert_memory(&self, tenant: &str, new: NewMemory) -> Result<Option<MemoryRecord>>;

    /// Inserts a memory without a session and its revisions exactly as given (no trace),
    /// and returns true; if the tenant has a memory with its id, or had one that was
    /// [erased](SessionLog::erase_user), writes nothing and returns false.
    /// `DuplicateContent` if another memory of the tenant has its dedupe key.
    async fn import_memory(&self, tenant: &str, archive: MemoryArchive) -> Result<bool>;

    /// The memory, or `None`.
    async fn memory(&self, tenant: &str, id: &str) -> Result<Option<MemoryRecord>>;

    /// Replaces the memory, adds the revision, writes the trace, and returns the memory as
    /// stored. `Conflict` if its version is not `expected_version`; `NotFound` if it does
    /// not exist; `DuplicateContent` if another memory of the tenant has the new dedupe
    /// key.
    async fn update_memory(&self, tenant: &str, update: MemoryUpdate) -> Result<MemoryRecord>;

    /// Replaces the vector of the memory if it is still at `version`, and says whether it
    /// did (not if the memory changed or went meanwhile).
    async fn set_embedding(
        &self,
        tenant: &str,
        id: &str,
        version: u64,
        model: &str,
        vector: Vec<f32>,
    ) -> Result<bool>;

    /// Deletes the memory and its revisions, lowers its session's `memory_count`, writes the
    /// trace, and returns it. `NotFound` if it does not exist.
    async fn delete_memory(&self, tenant: &str, id: &str, trace: Trace) -> Result<MemoryRecord>;

    /// Memories matching the query, newest first, at most `query.limit`.
    async fn list_memories(&self, tenant: &str, query: &MemoryQuery) -> Result<Vec<MemoryRecord>>;

    /// How many memories the tenant has.
    async fn count_memories(&self, tenant: &str) -> Result<u64>;

    /// The memory's revisions, oldest first.
    async fn memory_revisions(&self, tenant: &str, id: &str) -> Result<Vec<MemoryRevision>>;

    /// Up to `limit` of the tenant's memories with ids greater than `after_id`, by id: for
    /// loading a search index.
    async fn scan_memories(
        &self,
        tenant: &str,
        after_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MemoryRecord>>;

    /// Searches in the store itself, for a backend whose index every process sharing it
    /// sees at once. `None` (what this provided method answers) leaves search to core's
    /// in-process index, loaded with [`scan_memories`](Self::scan_memories).
    ///
    /// A store that searches answers the candidates among the memories of `search`'s
    /// scope, types and tags, each once with both its scores, in any order: the `limit`
    /// nearest to its vector of those whose vector `search.model` made, and of the others
    /// those containing at least [`min_keywords`](MemorySearch::min_keywords) of its
    /// keywords whose [`score`](MemorySearch::score) at the nearest's
    /// [`vector_ceiling`](MemorySearch::vector_ceiling) is above the
    /// [`bar`](MemorySearch::bar) of the nearest's scores (more do no harm). Core ranks
    /// them.
    async fn search_memories(
        &self,
        tenant: &str,
        search: &MemorySearch,
    ) -> Result<Option<Vec<ScoredMemory>>> {
        let _ = (tenant, search);
        Ok(None)
    }
}

/// Entities with their versions. An entity belongs to a session and goes with it.
#[async_trait]
pub trait EntityRecords: Send + Sync + Debug + 'static {
    /// Inserts the entity and its version 1, writes the trace, and returns `None`. If its
    /// session has an entity with the same `(entity_type, entity_id)`, writes nothing and
    /// returns that entity. `NotFound` if its session does not exist.
    async fn insert_entity(&self, tenant: &str, new: NewEntity) -> Result<Option<Entity>>;

    /// How many entities the tenant has.
    async fn count_entities(&self, tenant: &str) -> Result<u64>;

    /// The entity, or `None`.
    async fn entity(&self, tenant: &str, id: &str) -> Result<Option<Entity>>;

    /// Entities matching the query, newest first, at most `query.limit`.
    async fn list_entities(&self, tenant: &str, query: &EntityQuery) -> Result<Vec<Entity>>;

    /// Replaces the entity with its next version, keeps that version, writes the trace, and
    /// returns the entity as stored. `Conflict` if its version is not `expected_version`;
    /// `NotFound` if it does not exist.
    async fn update_entity(&self, tenant: &str, update: EntityUpdate) -> Result<Entity>;

    /// Deletes the entity and its versions, writes the trace, and returns it. `NotFound` if
    /// it does not exist.
    async fn delete_entity(&self, tenant: &str, id: &str, trace: Trace) -> Result<Entity>;

    /// The entity's versions whose numbers are in `range`, ascending. Empty if the entity
    /// does not exist.
    async fn entity_versions(
        &self,
        tenant: &str,
        id: &str,
        range: Range<u64>,
    ) -> Result<Vec<EntityVersion>>;
}

/// The audit trail: every trace the other traits' writes made, by tenant, and all of them in
/// commit order (the feed).
#[async_trait]
pub trait TraceLog: Send + Sync + Debug + 'static {
    /// Inserts the traces whose ids the tenant has none of, as given, and returns how many;
    /// a trace of an [erased](SessionLog::erase_user) session or memory (its `session_id`
    /// or `resource_id`) is left out.
    /// They stay out of the [feed](TraceLog::trace_feed): they tell of the past, not of
    /// changes to announce.
    async fn import_traces(&self, tenant: &str, traces: Vec<Trace>) -> Result<u64>;

    /// Deletes the tenant's traces whose timestamp is before `before` (from the feed too),
    /// and if any went writes `trace`; answers how many went.
    async fn prune_traces(&self, tenant: &str, before: Timestamp, trace: Trace) -> Result<u64>;

    /// Every tenant with a session, a memory or a trace, in order.
    async fn tenants(&self) -> Result<Vec<String>>;

    /// The trace, or `None`.
    async fn trace(&self, tenant: &str, id: &str) -> Result<Option<Trace>>;

    /// Traces matching the query, newest first, at most `query.limit`.
    async fn list_traces(&self, tenant: &str, query: &TraceQuery) -> Result<Vec<Trace>>;

    /// The tenant's traces after `after`, counted per hour (UTC): (the hour's start, count),
    /// oldest first, hours without traces left out.
    async fn trace_activity(&self, tenant: &str, after: Timestamp)
        -> Result<Vec<(Timestamp, u64)>>;

    /// Every tenant's traces in commit order, those after `position`, at most `limit`. A
    /// trace is written in the same transaction as its change, so this is an outbox: a
    /// reader that remembers the last position it handled misses nothing and, after a
    /// crash, resumes where it stopped.
    async fn trace_feed(&self, after: u64, limit: usize) -> Result<Vec<FeedEntry>>;

    /// The position of the feed's last trace (0 when there is none): where a reader that
    /// has nothing to do with what came before starts, without reading it.
    async fn trace_feed_end(&self) -> Result<u64>;
}

/// One event owed to, or done with for, one webhook endpoint: what the store indexes by,
/// and the rest as the server encodes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    /// The endpoint.
    pub endpoint_id: String,
    /// The feed position of the event's trace; with the endpoint, the delivery's key.
    pub position: u64,
    /// When it was delivered or given up; `None` while it is owed.
    pub done_at: Option<Timestamp>,
    /// The event, its attempts and their outcome, encoded by the server.
    pub body: Vec<u8>,
}

/// The response kept for retries of a request with an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotentResponse {
    /// The server's key for it (the API key's and the client's, together).
    pub key: String,
    /// The tenant of the API key that made the request.
    pub tenant: String,
    /// What the response names, for [erasing](SessionLog::erase_user) it with them: the
    /// ids of sessions and memories, and users as `user:` + id; sorted, each once.
    pub subjects: Vec<String>,
    /// When it was kept.
    pub at: Timestamp,
    /// The response, encoded by the server.
    pub body: Vec<u8>,
}

/// A token bucket that every process using the store draws from: `per_minute` tokens a
/// minute, holding at most `burst`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateBucket {
    /// Its name, e.g. `key:<id>`.
    pub name: String,
    /// Tokens added a minute (at least 1).
    pub per_minute: u32,
    /// Tokens held at most (at least 1).
    pub burst: u32,
}

/// A shared bucket after [`ServerRecords::take_tokens`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketState {
    /// Whole tokens left.
    pub remaining: u32,
    /// Until it is full again.
    pub reset_in: std::time::Duration,
    /// Until it has a token, if it had none (then no bucket gave one).
    pub retry_after: Option<std::time::Duration>,
}

/// What the HTTP server keeps besides the data it serves: API keys, webhook endpoints with
/// their deliveries, and idempotent responses. Core's [`StateBase`](crate::StateBase) needs
/// it only for its key methods.
///
/// The contract of [`Store`] holds, except tenancy where a method says so: keys are found by
/// hash across tenants, and the webhook dispatcher reads every tenant's endpoints and
/// deliveries.
#[async_trait]
pub trait ServerRecords: Send + Sync + Debug + 'static {
    /// Inserts or replaces (by id) an API key. Keys belong to a tenant but are found by
    /// hash across tenants.
    async fn put_api_key(&self, key: ApiKey) -> Result<()>;

    /// The key with this secret hash, or `None`.
    async fn api_key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>>;

    /// The key with this id, of any tenant, or `None`.
    async fn api_key(&self, id: &str) -> Result<Option<ApiKey>>;

    /// Every key, or one tenant's, oldest first.
    async fn list_api_keys(&self, tenant: Option<&str>) -> Result<Vec<ApiKey>>;

    /// Inserts or replaces (by id) a webhook endpoint.
    async fn put_webhook(&self, endpoint: WebhookEndpoint) -> Result<()>;

    /// The tenant's endpoint with this id, or `None`.
    async fn webhook(&self, tenant: &str, id: &str) -> Result<Option<WebhookEndpoint>>;

    /// Every endpoint, or one tenant's, oldest first.
    async fn list_webhooks(&self, tenant: Option<&str>) -> Result<Vec<WebhookEndpoint>>;

    /// Deletes the tenant's endpoint and all its deliveries. `NotFound` if there is none.
    async fn delete_webhook(&self, tenant: &str, id: &str) -> Result<()>;

    /// Inserts or replaces (by endpoint and position) these deliveries and, with `cursor`,
    /// sets the delivery cursor, all or none. A delivery to an endpoint that does not exist
    /// (deleted meanwhile) is left out.
    async fn put_deliveries(
        &self,
        deliveries: Vec<DeliveryRecord>,
        cursor: Option<u64>,
    ) -> Result<()>;

    /// The delivery cursor: the feed position up to which deliveries were planned (0 at
    /// first).
    async fn delivery_cursor(&self) -> Result<u64>;

    /// Deliveries to `endpoint_id` (or to every endpoint), only those owed if `owed_only`,
    /// by endpoint then position.
    async fn deliveries(
        &self,
        endpoint_id: Option<&str>,
        owed_only: bool,
    ) -> Result<Vec<DeliveryRecord>>;

    /// Deletes the deliveries done with before `before`; returns how many.
    async fn prune_deliveries(&self, before: Timestamp) -> Result<u64>;

    /// The response kept under `key`, or `None`.
    async fn idempotent_response(&self, key: &str) -> Result<Option<IdempotentResponse>>;

    /// Keeps a response, replacing one under the same key; not one whose subjects name an
    /// [erased](SessionLog::erase_user) session or memory of its tenant (the response to a
    /// write that committed before the erasure, kept after it).
    async fn put_idempotent_response(&self, response: IdempotentResponse) -> Result<()>;

    /// Deletes the responses kept before `before`; returns how many.
    async fn prune_idempotent_responses(&self, before: Timestamp) -> Result<u64>;

    /// Takes the lease `name` for `holder` for `ttl`, or renews it, if no other holder has
    /// it now; says whether `holder` holds it. For work that one process at a time does of
    /// all those sharing the store (the webhook dispatcher, a request with an idempotency
    /// key). The store's own clock times
    /// it, so that the processes' clocks need not agree. The provided method, which always
    /// grants it, suits a store that one process owns.
    async fn take_lease(&self, name: &str, holder: &str, ttl: std::time::Duration) -> Result<bool> {
        let _ = (name, holder, ttl);
        Ok(true)
    }

    /// Gives up the lease `name` if `holder` holds it, so that another may take it before
    /// it runs out. The provided method does nothing, as its `take_lease` keeps nothing.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        let _ = (name, holder);
        Ok(())
    }

    /// Takes a token from each bucket if every one has one, else from none, timed by the
    /// store's clock; answers each bucket's state, in order. For rate limits that hold
    /// across every process sharing the store. `None` (what this provided method answers)
    /// when the store keeps no buckets: one process owns it and limits in memory.
    async fn take_tokens(&self, buckets: Vec<RateBucket>) -> Result<Option<Vec<BucketState>>> {
        let _ = buckets;
        Ok(None)
    }
}

/// Calls `$callback!` with every store trait and its methods' signatures, so that the
/// forwarding and observing impls below list them once.
macro_rules! store_methods {
    ($callback:ident { $($prefix:tt)* }) => {
        $callback! { $($prefix)* ;
            SessionLog {
                fn create_session(&self, tenant: &str, new: NewSession) -> Result<()>;
                fn session(&self, tenant: &str, id: &str) -> Result<Option<SessionRecord>>;
                fn list_sessions(&self, tenant: &str, query: &SessionQuery) -> Result<Vec<SessionRecord>>;
                fn update_session(&self, tenant: &str, update: SessionUpdate) -> Result<SessionRecord>;
                fn append_version(&self, tenant: &str, append: AppendVersion) -> Result<SessionRecord>;
                fn versions(&self, tenant: &str, session_id: &str, range: Range<u64>) -> Result<Vec<VersionRecord>>;
                fn prune_versions(&self, tenant: &str, session_id: &str, before: u64, trace: Trace) -> Result<u64>;
                fn prune_turns(&self, tenant: &str, session_id: &str, before: Timestamp, trace: Trace) -> Result<u64>;
                fn put_retention(&self, tenant: &str, session_id: Option<&str>, policy: Option<Retention>, trace: Option<Trace>) -> Result<()>;
                fn retention(&self, tenant: &str, session_id: Option<&str>) -> Result<Option<Retention>>;
                fn retention_policies(&self, after: Option<(&str, &str)>, limit: usize) -> Result<Vec<RetentionPolicy>>;
                fn delete_session(&self, tenant: &str, id: &str, trace: Trace) -> Result<SessionRecord>;
                fn erase_user(&self, tenant: &str, user_id: &str, trace: Trace) -> Result<Erasure>;
                fn count_sessions(&self, tenant: &str, live_at: Timestamp, changed_after: Timestamp) -> Result<SessionCounts>;
                fn expired_sessions(&self, now: Timestamp, limit: usize) -> Result<Vec<(String, SessionRecord)>>;
                fn append_turn(&self, tenant: &str, append: AppendTurn) -> Result<SessionRecord>;
                fn import_session(&self, tenant: &str, archive: SessionArchive) -> Result<bool>;
                fn turn(&self, tenant: &str, id: &str) -> Result<Option<Turn>>;
                fn list_turns(&self, tenant: &str, session_id: &str, query: &TurnQuery) -> Result<Vec<Turn>>;
            }
            MemoryRecords {
                fn insert_memory(&self, tenant: &str, new: NewMemory) -> Result<Option<MemoryRecord>>;
                fn import_memory(&self, tenant: &str, archive: MemoryArchive) -> Result<bool>;
                fn memory(&self, tenant: &str, id: &str) -> Result<Option<MemoryRecord>>;
                fn update_memory(&self, tenant: &str, update: MemoryUpdate) -> Result<MemoryRecord>;
                fn set_embedding(&self, tenant: &str, id: &str, version: u64, model: &str, vector: Vec<f32>) -> Result<bool>;
                fn delete_memory(&self, tenant: &str, id: &str, trace: Trace) -> Result<MemoryRecord>;
                fn list_memories(&self, tenant: &str, query: &MemoryQuery) -> Result<Vec<MemoryRecord>>;
                fn count_memories(&self, tenant: &str) -> Result<u64>;
                fn memory_revisions(&self, tenant: &str, id: &str) -> Result<Vec<MemoryRevision>>;
                fn scan_memories(&self, tenant: &str, after_id: Option<&str>, limit: usize) -> Result<Vec<MemoryRecord>>;
                fn search_memories(&self, tenant: &str, search: &MemorySearch) -> Result<Option<Vec<ScoredMemory>>>;
            }
            EntityRecords {
                fn insert_entity(&self, tenant: &str, new: NewEntity) -> Result<Option<Entity>>;
                fn count_entities(&self, tenant: &str) -> Result<u64>;
                fn entity(&self, tenant: &str, id: &str) -> Result<Option<Entity>>;
                fn list_entities(&self, tenant: &str, query: &EntityQuery) -> Result<Vec<Entity>>;
                fn update_entity(&self, tenant: &str, update: EntityUpdate) -> Result<Entity>;
                fn delete_entity(&self, tenant: &str, id: &str, trace: Trace) -> Result<Entity>;
                fn entity_versions(&self, tenant: &str, id: &str, range: Range<u64>) -> Result<Vec<EntityVersion>>;
            }
            TraceLog {
                fn import_traces(&self, tenant: &str, traces: Vec<Trace>) -> Result<u64>;
                fn prune_traces(&self, tenant: &str, before: Timestamp, trace: Trace) -> Result<u64>;
                fn tenants(&self) -> Result<Vec<String>>;
                fn trace(&self, tenant: &str, id: &str) -> Result<Option<Trace>>;
                fn list_traces(&self, tenant: &str, query: &TraceQuery) -> Result<Vec<Trace>>;
                fn trace_activity(&self, tenant: &str, after: Timestamp) -> Result<Vec<(Timestamp, u64)>>;
                fn trace_feed(&self, after: u64, limit: usize) -> Result<Vec<FeedEntry>>;
                fn trace_feed_end(&self) -> Result<u64>;
            }
            ServerRecords {
                fn put_api_key(&self, key: ApiKey) -> Result<()>;
                fn api_key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>>;
                fn api_key(&self, id: &str) -> Result<Option<ApiKey>>;
                fn list_api_keys(&self, tenant: Option<&str>) -> Result<Vec<ApiKey>>;
                fn put_webhook(&self, endpoint: WebhookEndpoint) -> Result<()>;
                fn webhook(&self, tenant: &str, id: &str) -> Result<Option<WebhookEndpoint>>;
                fn list_webhooks(&self, tenant: Option<&str>) -> Result<Vec<WebhookEndpoint>>;
                fn delete_webhook(&self, tenant: &str, id: &str) -> Result<()>;
                fn put_deliveries(&self, deliveries: Vec<DeliveryRecord>, cursor: Option<u64>) -> Result<()>;
                fn delivery_cursor(&self) -> Result<u64>;
                fn deliveries(&self, endpoint_id: Option<&str>, owed_only: bool) -> Result<Vec<DeliveryRecord>>;
                fn prune_deliveries(&self, before: Timestamp) -> Result<u64>;
                fn idempotent_response(&self, key: &str) -> Result<Option<IdempotentResponse>>;
                fn put_idempotent_response(&self, response: IdempotentResponse) -> Result<()>;
                fn prune_idempotent_responses(&self, before: Timestamp) -> Result<u64>;
                fn take_lease(&self, name: &str, holder: &str, ttl: std::time::Duration) -> Result<bool>;
                fn release_lease(&self, name: &str, holder: &str) -> Result<()>;
                fn take_tokens(&self, buckets: Vec<RateBucket>) -> Result<Option<Vec<BucketState>>>;
            }
        }
    };
}

macro_rules! forward_store {
    ($ty:ty ; $( $part:ident { $( fn $name:ident(&$s:tt $(, $arg:ident : $argty:ty)*) -> $ret:ty; )* } )*) => {
        $(
            #[async_trait]
            impl<S: $part + ?Sized> $part for $ty {
                $(
                    async fn $name(&$s $(, $arg: $argty)*) -> $ret {
                        (**$s).$name($($arg),*).await
                    }
                )*
            }
        )*
    };
}

store_methods!(forward_store { Arc<S> });
store_methods!(forward_store { Box<S> });

/// Told how long each store call took, by [`ObservedStore`].
pub trait StoreObserver: Send + Sync + std::fmt::Debug + 'static {
    /// `operation` (a store method's name) took `elapsed` and succeeded if `ok`.
    fn observe(&self, operation: &'static str, elapsed: std::time::Duration, ok: bool);
}

/// A store that times every call of the store it wraps, for metrics.
#[derive(Debug)]
pub struct ObservedStore<S> {
    inner: S,
    observer: Arc<dyn StoreObserver>,
}

impl<S> ObservedStore<S> {
    /// Wraps `inner`, reporting to `observer`.
    pub fn new(inner: S, observer: Arc<dyn StoreObserver>) -> Self {
        Self { inner, observer }
    }
}

macro_rules! observe_store {
    (; $( $part:ident { $( fn $name:ident(&$s:tt $(, $arg:ident : $argty:ty)*) -> $ret:ty; )* } )*) => {
        $(
            #[async_trait]
            impl<S: $part> $part for ObservedStore<S> {
                $(
                    async fn $name(&$s $(, $arg: $argty)*) -> $ret {
                        let started = std::time::Instant::now();
                        let result = $s.inner.$name($($arg),*).await;
                        $s.observer.observe(stringify!($name), started.elapsed(), result.is_ok());
                        result
                    }
                )*
            }
        )*
    };
}

store_methods!(observe_store {});

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CreateSession, MemoryStore, StateBase};

    /// A keyword-only candidate must beat the `limit`-th best score; with fewer than `limit`
    /// scores any share may get in. The fewest keywords reaching the threshold.
    #[test]
    fn the_bar_is_the_limit_th_best_score() {
        let search = MemorySearch {
            keywords: vec!["a".into(), "b".into(), "c".into(), "d".into()],
            vector: None,
            model: "m".into(),
            calibration: Calibration::RAW,
            scope: SearchScope::Tenant,
            types: vec![],
            tags: vec![],
            limit: 3,
            threshold: 0.5,
        };
        assert_eq!(search.bar([0.9, 0.2, 0.7, 0.4].into_iter()), 0.4);
        assert_eq!(search.bar([0.9, 0.2].into_iter()), f32::NEG_INFINITY);
        assert_eq!(search.keyword_share(3), 0.75);
        assert_eq!(search.min_keywords(0.0), Some(2));
        // A vector score of 0.4 adds to the share: one keyword of four reaches 0.5.
        assert_eq!(search.min_keywords(0.4), Some(1));
        assert_eq!(search.vector_ceiling([0.9, 0.4, 0.6].into_iter()), 0.4);
        assert_eq!(search.vector_ceiling([0.9, 0.4].into_iter()), 0.0);
        let unreachable = MemorySearch {
            threshold: 1.5,
            ..search.clone()
        };
        assert_eq!(unreachable.min_keywords(0.0), None);
        let no_words = MemorySearch {
            keywords: vec![],
            ..search
        };
        assert_eq!(
            (no_words.min_keywords(0.0), no_words.keyword_share(0)),
            (None, 0.0)
        );
    }

    /// The parts together are one object-safe `Store`: a statebase over `Arc<dyn Store>`
    /// works as over the store itself.
    #[tokio::test]
    async fn a_dyn_store_is_a_store() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let sb = StateBase::new(store);
        let s = sb.create_session(CreateSession::new("a")).await.unwrap();
        assert_eq!(sb.get_session(&s.id).await.unwrap(), s);
    }
}
