//! [`StateBase`]: the domain logic (validation, versioning, TTL, tenancy, audit) in front of
//! any [`Store`].

use crate::action;
use crate::clock::{self, Clock, SystemClock, Timestamp};
use crate::codec::{self, VersionBody};
use crate::error::{Error, ResourceKind, Result};
use crate::id::{IdSource, RandomIds};
use crate::json::{self, Diff, Object};
use crate::model::*;
use crate::search::embed::{Embedder, HashEmbedder};
use crate::search::vector::{HnswConfig, HnswIndex};
use crate::search::{IndexFactory, Indexes};
use crate::store::*;
use chrono::Duration;
use serde::Serialize;
use serde_json::{json, Value};
use std::ops::Range;
use std::sync::Arc;

/// The tenant a [`StateBase`] works in unless told otherwise.
pub const DEFAULT_TENANT: &str = "default";
/// The actor recorded in traces unless told otherwise.
pub const DEFAULT_ACTOR: &str = "system";
/// Session lifetime when none is given: 24 hours.
pub const DEFAULT_TTL_SECONDS: i64 = 86_400;
/// The longest session lifetime: 30 days.
pub const MAX_TTL_SECONDS: i64 = 2_592_000;

/// Size limits, enforced on every write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest JSON encoding of a state or a metadata object, in bytes. Default 1 MiB.
    pub max_document_bytes: usize,
    /// Longest `agent_id`, `user_id` and other identifiers, in characters (as an HTTP
    /// client's JSON Schema counts them). Default 256.
    pub max_identifier_chars: usize,
    /// Longest `reasoning` or `reason`, in characters. Default 65,536.
    pub max_reasoning_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_document_bytes: 1 << 20,
            max_identifier_chars: 256,
            max_reasoning_chars: 64 << 10,
        }
    }
}

/// What a [`StateBase`] is built with besides its store.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the time comes from.
    pub clock: Arc<dyn Clock>,
    /// Where new ids come from.
    pub ids: Arc<dyn IdSource>,
    /// The size limits.
    pub limits: Limits,
    /// What embeds memories and queries.
    pub embedder: Arc<dyn Embedder>,
    /// What makes each tenant's vector index.
    pub vector_index: IndexFactory,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            ids: Arc::new(RandomIds),
            limits: Limits::default(),
            embedder: Arc::new(HashEmbedder::new()),
            vector_index: IndexFactory::new(|| Box::new(HnswIndex::new(HnswConfig::default()))),
        }
    }
}

/// Durable, versioned agent state over a [`Store`], scoped to one tenant and one actor.
///
/// Cloning is cheap; [`tenant`](StateBase::tenant) and [`actor`](StateBase::actor) return
/// clones scoped differently over the same store.
#[derive(Debug)]
pub struct StateBase<S> {
    pub(crate) shared: Arc<Shared<S>>,
    pub(crate) tenant: Arc<str>,
    pub(crate) actor: Arc<str>,
}

#[derive(Debug)]
pub(crate) struct Shared<S> {
    pub(crate) store: S,
    pub(crate) config: Config,
    pub(crate) indexes: Indexes,
    pub(crate) pending: crate::memories::PendingVectors,
}

impl<S> Clone for StateBase<S> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            tenant: Arc::clone(&self.tenant),
            actor: Arc::clone(&self.actor),
        }
    }
}

/// How a state write combines with the current state.
#[derive(Clone, Copy)]
enum WriteMode {
    Replace,
    Merge,
}

impl<S: Store> StateBase<S> {
    /// Statebase over `store` with the system clock, random ids and default limits.
    pub fn new(store: S) -> Self {
        Self::with_config(store, Config::default())
    }

    /// Statebase over `store` with the given clock, ids and limits.
    pub fn with_config(store: S, config: Config) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                indexes: Indexes::new(config.embedder.clone(), config.vector_index.clone()),
                pending: Default::default(),
                config,
            }),
            tenant: DEFAULT_TENANT.into(),
            actor: DEFAULT_ACTOR.into(),
        }
    }

    /// The same statebase, scoped to `tenant`: it sees and writes only that tenant's records.
    pub fn tenant(&self, tenant: &str) -> Self {
        Self {
            tenant: tenant.into(),
            ..self.clone()
        }
    }

    /// The same statebase, recording `actor` as the author of its changes.
    pub fn actor(&self, actor: &str) -> Self {
        Self {
            actor: actor.into(),
            ..self.clone()
        }
    }

    /// The tenant this handle is scoped to.
    pub fn tenant_id(&self) -> &str {
        &self.tenant
    }

    /// The underlying store.
    pub fn store(&self) -> &S {
        &self.shared.store
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    // ----- sessions -----

    /// Creates a session with its state at version 0.
    ///
    /// Errors: `InvalidInput` for an empty `agent_id`, a state or metadata that is not an
    /// object, a TTL outside 1..=2592000; `PayloadTooLarge` over the document limit.
    pub async fn create_session(&self, req: CreateSession) -> Result<Session> {
        let agent_id = self.identifier("agent_id", req.agent_id)?;
        let user_id = self.optional_identifier("user_id", req.user_id)?;
        let state = self.document("initial_state", req.initial_state)?;
        let metadata = self.document("metadata", req.metadata)?;
        let ttl = ttl_seconds(req.ttl_seconds)?;
        let now = self.now();
        let session = self.new_session(agent_id, user_id, state, metadata, ttl, now);
        let details = json!({
            "agent_id": session.agent_id,
            "user_id": session.user_id,
            "initial_state": session.state,
            "version": 0,
        });
        let trace = self.trace(&session.id, action::SESSION_CREATED, details, now);
        self.insert_session(session, VersionChange::Created, trace)
            .await
    }

    /// The session, with its current state and version.
    ///
    /// Errors: `NotFound` if it does not exist, has expired, or is another tenant's.
    pub async fn get_session(&self, id: &str) -> Result<Session> {
        Ok(self.live_session(id).await?.session)
    }

    /// Sessions newest first, filtered, one page at a time.
    pub async fn list_sessions(&self, req: ListSessions) -> Result<Page<Session>> {
        let limit = page_limit(req.limit, 20, 100)?;
        let after = match &req.starting_after {
            None => None,
            Some(id) => {
                let rec = self
                    .store()
                    .session(&self.tenant, id)
                    .await?
                    .ok_or_else(|| Error::not_found(ResourceKind::Session, id))?;
                Some(Cursor {
                    at: rec.session.created_at,
                    id: rec.session.id,
                })
            }
        };
        let query = SessionQuery {
            limit: limit + 1,
            after,
            live_at: Some(self.now()),
            agent_id: req.agent_id,
            user_id: req.user_id,
            created_after: req.created_after,
            created_before: req.created_before,
            metadata: req.metadata,
        };
        let records = self.store().list_sessions(&self.tenant, &query).await?;
        Ok(page(
            records.into_iter().map(|r| r.session).collect(),
            limit,
            |s| &s.id,
        ))
    }

    /// Merges `metadata` (RFC 7386) into the session's metadata and, with `ttl_seconds`,
    /// resets its expiry to that many seconds from now.
    pub async fn update_session(&self, id: &str, req: UpdateSession) -> Result<Session> {
        let patch = self.document("metadata", req.metadata)?;
        let ttl = req.ttl_seconds.map(|t| ttl_seconds(Some(t))).transpose()?;
        loop {
            let rec = self.live_session(id).await?;
            let now = self.now();
            let mut session = rec.session;
            let mut metadata = session.metadata.clone();
            json::merge_patch(&mut metadata, &patch);
            self.check_size("metadata", &metadata)?;
            let details = json!({
                "metadata_diff": Diff::between(&session.metadata, &metadata),
                "ttl_seconds": ttl,
            });
            if let Some(ttl) = ttl {
                session.ttl_expires_at = now + Duration::seconds(ttl);
            }
            session.metadata = metadata;
            session.updated_at = now;
            let update = SessionUpdate {
                session_id: session.id.clone(),
                expected_revision: rec.revision,
                metadata: session.metadata.clone(),
                ttl_expires_at: session.ttl_expires_at,
                updated_at: now,
                trace: self.trace(&session.id, action::SESSION_UPDATED, details, now),
            };
            match self.store().update_session(&self.tenant, update).await {
                // Another writer changed the session since we read it: merge again.
                Err(Error::Conflict { .. }) => continue,
                other => return other.map(|stored| stored.session),
            }
        }
    }

    /// Deletes the session, every state version and everything else it owns, at once.
    pub async fn delete_session(&self, id: &str) -> Result<()> {
        let rec = self.live_session(id).await?;
        let details = json!({
            "session_id": id,
            "version": rec.session.version,
            "turn_count": rec.session.turn_count,
            "memory_count": rec.session.memory_count,
        });
        let trace = self.trace(id, action::SESSION_DELETED, details, self.now());
        self.store().delete_session(&self.tenant, id, trace).await?;
        self.shared
            .indexes
            .update(&self.tenant, |index| index.remove_session(id))
            .await;
        Ok(())
    }

    /// Erases everything of the user in this tenant at once: their sessions with every
    /// version, turn and entity, their memories with revisions and vectors, the traces of
    /// those, and the responses kept for idempotent retries that named them; leaves one
    /// `user.erased` trace with the counts. Erased ids stay erased: no import brings them
    /// back, and a late write to an erased session finds no session. Erasing a user with
    /// nothing (or again) erases nothing, and says so.
    pub async fn erase_user(&self, user_id: &str) -> Result<Erasure> {
        let user_id = self.identifier("user_id", user_id.to_owned())?;
        let now = self.now();
        let trace = self.resource_trace(
            None,
            ("user", &user_id),
            action::USER_ERASED,
            Value::Null,
            now,
        );
        let erasure = self
            .store()
            .erase_user(&self.tenant, &user_id, trace)
            .await?;
        // Rare, and exact: the next search reloads the index without what went.
        self.shared.indexes.forget(&self.tenant).await;
        Ok(erasure)
    }

    /// Deletes every session (of every tenant) that has expired, with a `session.expired`
    /// trace each, and returns them.
    pub async fn sweep_expired(&self) -> Result<Vec<ExpiredSession>> {
        const BATCH: usize = 100;
        let now = self.now();
        let mut removed = Vec::new();
        loop {
            let batch = self.store().expired_sessions(now, BATCH).await?;
            let done = batch.len() < BATCH;
            for (tenant, rec) in batch {
                let s = &rec.session;
                let details = json!({"ttl_expires_at": s.ttl_expires_at, "version": s.version});
                let trace = self.trace(&s.id, action::SESSION_EXPIRED, details, now);
                match self.store().delete_session(&tenant, &s.id, trace).await {
                    Ok(rec) => {
                        let id = &rec.session.id;
                        self.shared
                            .indexes
                            .update(&tenant, |index| index.remove_session(id))
                            .await;
                        removed.push(ExpiredSession {
                            tenant,
                            session: rec.session,
                        })
                    }
                    // Deleted meanwhile by someone else: nothing left to sweep.
                    Err(Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            if done {
                return Ok(removed);
            }
        }
    }

    // ----- the version log -----

    /// Replaces the whole state, appending one version.
    ///
    /// With `expected_version`, writes only if that is still the current version
    /// (`Conflict` otherwise); without it, concurrent writes are each applied, in some order.
    pub async fn replace_state(&self, id: &str, write: StateWrite) -> Result<Session> {
        self.write_state(id, write, WriteMode::Replace).await
    }

    /// Applies an RFC 7386 merge patch to the state, appending one version.
    ///
    /// With `expected_version`, writes only if that is still the current version
    /// (`Conflict` otherwise); without it, no concurrent merge is lost.
    pub async fn merge_state(&self, id: &str, write: StateWrite) -> Result<Session> {
        self.write_state(id, write, WriteMode::Merge).await
    }

    /// The state at `version`; a negative version counts back from the current one.
    pub async fn state_at(&self, id: &str, version: i64) -> Result<StateVersion> {
        let rec = self.live_session(id).await?;
        let k = resolve_version(&rec.session, version)?;
        self.read_version(&rec.session, k).await
    }

    /// A window of the version history, oldest first: the `limit` versions from
    /// `from_version` and after `since_version` (either or both), or without them the
    /// latest `limit`.
    pub async fn history(&self, id: &str, q: HistoryQuery) -> Result<History> {
        let limit = page_limit(q.limit, 50, 1000)? as u64;
        let rec = self.live_session(id).await?;
        let end = rec.session.version + 1;
        // Both are lower bounds: the window starts at the later of the two.
        let after_since = q.since_version.map(|v| v.saturating_add(1));
        let first = q.from_version.max(after_since);
        let range = match first {
            Some(first) => first.min(end)..first.saturating_add(limit).min(end),
            None => end.saturating_sub(limit)..end,
        };
        let versions = self.versions(id, range).await?;
        Ok(History {
            versions,
            current_version: rec.session.version,
        })
    }

    /// What changed between two versions (negative numbers count back from the current).
    pub async fn diff(&self, id: &str, from: i64, to: i64) -> Result<VersionDiff> {
        let rec = self.live_session(id).await?;
        let (from, to) = (
            resolve_version(&rec.session, from)?,
            resolve_version(&rec.session, to)?,
        );
        let old = self.read_version(&rec.session, from).await?;
        let new = self.read_version(&rec.session, to).await?;
        Ok(VersionDiff {
            session_id: id.to_owned(),
            from_version: from,
            to_version: to,
            diff: Diff::between(&old.state, &new.state),
        })
    }

    /// Appends a new version equal to the state at `req.version` (negative: relative to the
    /// current). History is kept.
    pub async fn rollback(&self, id: &str, req: RollbackTo) -> Result<Rollback> {
        let reason = self.reasoning("reason", req.reason)?;
        loop {
            let rec = self.live_session(id).await?;
            check_expected(&rec.session, req.expected_version)?;
            let target = resolve_version(&rec.session, req.version)?;
            let restored = self.read_version(&rec.session, target).await?;
            let from = rec.session.version;
            let now = self.now();
            let details = json!({
                "from_version": from,
                "to_version": target,
                "new_version": from + 1,
                "reason": reason,
            });
            let trace = self.trace(id, action::STATE_ROLLED_BACK, details, now);
            let trace_id = trace.id.clone();
            let change = VersionChange::RolledBack {
                restored_from_version: target,
            };
            let body = VersionBody {
                state: restored.state,
                reasoning: reason.clone(),
                actor: self.actor.to_string(),
                change,
            };
            match self.append(rec.session, body, now, trace).await {
                Err(Error::Conflict { .. }) if req.expected_version.is_none() => continue,
                other => {
                    return other.map(|session| Rollback {
                        session,
                        restored_from_version: target,
                        trace_id,
                    })
                }
            }
        }
    }

    /// A new session whose version 0 is this session's state at `req.version` (default:
    /// the current one). The source is untouched.
    pub async fn fork(&self, id: &str, req: ForkFrom) -> Result<Session> {
        let source = self.live_session(id).await?.session;
        let k = match req.version {
            None => source.version,
            Some(v) => resolve_version(&source, v)?,
        };
        let state = self.read_version(&source, k).await?.state;
        let agent_id = match req.agent_id {
            Some(a) => self.identifier("agent_id", a)?,
            None => source.agent_id.clone(),
        };
        let user_id = match self.optional_identifier("user_id", req.user_id)? {
            Some(u) => Some(u),
            None => source.user_id.clone(),
        };
        let mut metadata = match req.metadata {
            Some(Value::Null) | None => source.metadata.clone(),
            given => self.document("metadata", given)?,
        };
        metadata.insert("forked_from".into(), json!(source.id));
        metadata.insert("forked_version".into(), json!(k));
        self.check_size("metadata", &metadata)?;
        let ttl = ttl_seconds(req.ttl_seconds)?;
        let now = self.now();
        let session = self.new_session(agent_id, user_id, state, metadata, ttl, now);
        let details = json!({
            "source_session_id": source.id,
            "source_session": source.id,
            "fork_version": k,
        });
        let trace = self.trace(&session.id, action::SESSION_FORKED, details, now);
        let change = VersionChange::Forked {
            source_session_id: source.id,
            source_version: k,
        };
        self.insert_session(session, change, trace).await
    }

    // ----- traces -----

    /// The audit trace.
    pub async fn get_trace(&self, id: &str) -> Result<Trace> {
        self.store()
            .trace(&self.tenant, id)
            .await?
            .ok_or_else(|| Error::not_found(ResourceKind::Trace, id))
    }

    /// Audit traces newest first, filtered, one page at a time. Traces outlive their
    /// sessions.
    pub async fn list_traces(&self, req: ListTraces) -> Result<Page<Trace>> {
        let limit = page_limit(req.limit, 50, 100)?;
        let after = match &req.starting_after {
            None => None,
            Some(id) => {
                let t = self
                    .store()
                    .trace(&self.tenant, id)
                    .await?
                    .ok_or_else(|| Error::not_found(ResourceKind::Trace, id))?;
                Some(Cursor {
                    at: t.timestamp,
                    id: t.id,
                })
            }
        };
        let query = TraceQuery {
            limit: limit + 1,
            after,
            session_id: req.session_id,
            action: req.action.as_deref().map(action::canonical),
            resource_type: req.resource_type,
            resource_id: req.resource_id,
            created_after: req.created_after,
            created_before: req.created_before,
        };
        let traces = self.store().list_traces(&self.tenant, &query).await?;
        Ok(page(traces, limit, |t| &t.id))
    }

    /// The tenant's totals, and its activity (traces per hour) over the last 24 hours: counted
    /// by the store, not read.
    pub async fn stats(&self) -> Result<Stats> {
        let now = self.now();
        let day_ago = now - Duration::hours(24);
        let store = self.store();
        let sessions = store.count_sessions(&self.tenant, now, day_ago).await?;
        Ok(Stats {
            sessions: sessions.sessions,
            turns: sessions.turns,
            memories: store.count_memories(&self.tenant).await?,
            entities: store.count_entities(&self.tenant).await?,
            active_sessions_24h: sessions.changed,
            recent_activity: store.trace_activity(&self.tenant, day_ago).await?,
        })
    }

    // ----- internals -----

    /// Now, by the configured clock, at the precision timestamps are stored with.
    pub fn now(&self) -> Timestamp {
        clock::truncate(self.config().clock.now())
    }

    pub(crate) fn new_id(&self, prefix: &str) -> String {
        self.config().ids.new_id(prefix)
    }

    pub(crate) fn trace(
        &self,
        session_id: &str,
        action: &str,
        details: Value,
        now: Timestamp,
    ) -> Trace {
        self.resource_trace(
            Some(session_id),
            ("session", session_id),
            action,
            details,
            now,
        )
    }

    /// A trace of `action` on the resource `(type, id)`, belonging to `session_id`.
    pub(crate) fn resource_trace(
        &self,
        session_id: Option<&str>,
        (resource_type, resource_id): (&str, &str),
        action: &str,
        details: Value,
        now: Timestamp,
    ) -> Trace {
        Trace {
            id: self.new_id("trace_"),
            session_id: session_id.map(str::to_owned),
            action: action.to_owned(),
            resource_type: resource_type.to_owned(),
            resource_id: resource_id.to_owned(),
            actor: self.actor.to_string(),
            timestamp: now,
            details,
        }
    }

    /// A session at version 0, made now, with a fresh id.
    fn new_session(
        &self,
        agent_id: String,
        user_id: Option<String>,
        state: Object,
        metadata: Object,
        ttl_seconds: i64,
        now: Timestamp,
    ) -> Session {
        Session {
            id: self.new_id("sess_"),
            agent_id,
            user_id,
            state,
            version: 0,
            metadata,
            memory_count: 0,
            turn_count: 0,
            ttl_expires_at: now + Duration::seconds(ttl_seconds),
            created_at: now,
            updated_at: now,
        }
    }

    /// The session if it exists for this tenant and has not expired.
    pub(crate) async fn live_session(&self, id: &str) -> Result<SessionRecord> {
        match self.store().session(&self.tenant, id).await? {
            Some(rec) if !rec.session.is_expired_at(self.now()) => Ok(rec),
            _ => Err(Error::session_not_found(id)),
        }
    }

    async fn insert_session(
        &self,
        session: Session,
        change: VersionChange,
        trace: Trace,
    ) -> Result<Session> {
        let body = VersionBody {
            state: session.state.clone(),
            reasoning: None,
            actor: self.actor.to_string(),
            change,
        };
        let initial = VersionRecord {
            version: 0,
            created_at: session.created_at,
            body: codec::encode(0, None, &body)?,
        };
        let record = SessionRecord {
            session,
            revision: 0,
        };
        let new = NewSession {
            record: record.clone(),
            initial,
            trace,
        };
        self.store().create_session(&self.tenant, new).await?;
        Ok(record.session)
    }

    async fn write_state(&self, id: &str, write: StateWrite, mode: WriteMode) -> Result<Session> {
        let given = match write.state {
            Value::Object(o) => o,
            _ => return Err(Error::invalid("state", "must be a JSON object")),
        };
        self.check_size("state", &given)?;
        let reasoning = self.reasoning("reasoning", write.reasoning)?;
        loop {
            let rec = self.live_session(id).await?;
            check_expected(&rec.session, write.expected_version)?;
            let (state, change) = match mode {
                WriteMode::Replace => (given.clone(), VersionChange::Replaced),
                WriteMode::Merge => {
                    let mut merged = rec.session.state.clone();
                    json::merge_patch(&mut merged, &given);
                    self.check_size("state", &merged)?;
                    (merged, VersionChange::Merged)
                }
            };
            let now = self.now();
            let details = json!({
                "reasoning": reasoning,
                "version": rec.session.version + 1,
                "mode": match mode { WriteMode::Replace => "replace", WriteMode::Merge => "merge" },
                "state_diff": Diff::between(&rec.session.state, &state),
            });
            let trace = self.trace(id, action::STATE_UPDATED, details, now);
            let body = VersionBody {
                state,
                reasoning: reasoning.clone(),
                actor: self.actor.to_string(),
                change,
            };
            match self.append(rec.session, body, now, trace).await {
                // Without an expectation the caller wants its write applied: read again.
                Err(Error::Conflict { .. }) if write.expected_version.is_none() => continue,
                other => return other,
            }
        }
    }

    /// The store write that appends `body` as the version after `session`'s current one.
    pub(crate) fn next_version(
        &self,
        session: &Session,
        body: VersionBody,
        now: Timestamp,
        trace: Trace,
    ) -> Result<AppendVersion> {
        Ok(AppendVersion {
            session_id: session.id.clone(),
            expected_version: session.version,
            version: VersionRecord {
                version: session.version + 1,
                created_at: now,
                body: codec::encode(session.version + 1, Some(&session.state), &body)?,
            },
            state: body.state,
            updated_at: now,
            trace,
        })
    }

    /// Appends `body` as the version after `session`'s current one; returns the session as
    /// stored.
    async fn append(
        &self,
        session: Session,
        body: VersionBody,
        now: Timestamp,
        trace: Trace,
    ) -> Result<Session> {
        let append = self.next_version(&session, body, now, trace)?;
        Ok(self
            .store()
            .append_version(&self.tenant, append)
            .await?
            .session)
    }

    async fn read_version(&self, session: &Session, k: u64) -> Result<StateVersion> {
        if let Some(v) = self.versions(&session.id, k..k + 1).await?.pop() {
            return Ok(v);
        }
        // Gone: by retention, or with the session, deleted between our two reads.
        let rec = self.live_session(&session.id).await?;
        Err(Error::Pruned {
            session_id: session.id.clone(),
            version: k,
            kept_from: self.oldest_version(&rec.session).await?,
        })
    }

    /// The session's oldest stored version: retention keeps a suffix of them.
    pub(crate) async fn oldest_version(&self, session: &Session) -> Result<u64> {
        self.first_version(session, 0, |_| true).await
    }

    /// The first of the session's versions from `from` that is stored and `wanted`, the
    /// current one if none is before it: `wanted` must hold of a suffix of the stored
    /// versions. A binary search, one version read a step.
    pub(crate) async fn first_version(
        &self,
        session: &Session,
        from: u64,
        wanted: impl Fn(&VersionRecord) -> bool,
    ) -> Result<u64> {
        let (mut lo, mut hi) = (from, session.version);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let found = self
                .store()
                .versions(&self.tenant, &session.id, mid..mid + 1);
            match found.await?.pop() {
                Some(v) if wanted(&v) => hi = mid,
                _ => lo = mid + 1,
            }
        }
        Ok(lo)
    }

    /// The versions in `range`, decoded from the snapshot at or before its start.
    async fn versions(&self, id: &str, range: Range<u64>) -> Result<Vec<StateVersion>> {
        let from = codec::chain_start(range.start);
        let records = self
            .store()
            .versions(&self.tenant, id, from..range.end)
            .await?;
        let bodies: Vec<&[u8]> = records.iter().map(|r| &r.body[..]).collect();
        let wanted = records.partition_point(|r| r.version < range.start);
        let bodies = codec::decode_run(&bodies, wanted)?;
        Ok(records
            .into_iter()
            .skip(wanted)
            .zip(bodies)
            .map(|(r, body)| body.into_version(id, &r))
            .collect())
    }

    pub(crate) fn identifier(&self, param: &'static str, value: String) -> Result<String> {
        if is_blank(&value) {
            return Err(Error::invalid(param, "must not be empty"));
        }
        let max = self.config().limits.max_identifier_chars;
        if value.chars().count() > max {
            return Err(Error::invalid(
                param,
                format!("longer than {max} characters"),
            ));
        }
        Ok(value)
    }

    pub(crate) fn optional_identifier(
        &self,
        param: &'static str,
        value: Option<String>,
    ) -> Result<Option<String>> {
        value.map(|v| self.identifier(param, v)).transpose()
    }

    pub(crate) fn reasoning(
        &self,
        param: &'static str,
        value: Option<String>,
    ) -> Result<Option<String>> {
        let max = self.config().limits.max_reasoning_chars;
        match value {
            Some(v) if v.chars().count() > max => Err(Error::invalid(
                param,
                format!("longer than {max} characters"),
            )),
            v => Ok(v),
        }
    }

    /// An optional JSON object (`None` or `null` mean `{}`), within the size limit.
    pub(crate) fn document(&self, param: &'static str, value: Option<Value>) -> Result<Object> {
        let doc = match value {
            None | Some(Value::Null) => Object::new(),
            Some(Value::Object(o)) => o,
            Some(_) => return Err(Error::invalid(param, "must be a JSON object")),
        };
        self.check_size(param, &doc)?;
        Ok(doc)
    }

    pub(crate) fn check_size(&self, what: &'static str, doc: &impl Serialize) -> Result<()> {
        let limit = self.config().limits.max_document_bytes;
        let size = json_size(doc);
        if size > limit {
            return Err(Error::PayloadTooLarge { what, size, limit });
        }
        Ok(())
    }
}

/// True if `text` has nothing but white space, as JSON Schema's `\S` pattern (ECMAScript's
/// `\s`) counts it, so that a schema saying "not blank" and the server agree: U+FEFF is
/// white space and U+0085 is not, unlike Rust's `trim`.
pub fn is_blank(text: &str) -> bool {
    text.chars().all(|c| {
        matches!(
            c,
            '\t' | '\n' | '\u{b}' | '\u{c}' | '\r' | ' ' | '\u{a0}' | '\u{1680}' | '\u{2000}'
                ..='\u{200a}'
                    | '\u{2028}'
                    | '\u{2029}'
                    | '\u{202f}'
                    | '\u{205f}'
                    | '\u{3000}'
                    | '\u{feff}'
        )
    })
}

/// `version` as an absolute version of `session`: negative counts back from the current.
fn resolve_version(session: &Session, version: i64) -> Result<u64> {
    let current = i128::from(session.version);
    let k = if version < 0 {
        current + i128::from(version)
    } else {
        i128::from(version)
    };
    if (0..=current).contains(&k) {
        Ok(k as u64)
    } else {
        Err(Error::version_not_found(&session.id, version))
    }
}

fn check_expected(session: &Session, expected: Option<u64>) -> Result<()> {
    match expected {
        Some(expected) if expected != session.version => Err(Error::Conflict {
            expected,
            actual: session.version,
        }),
        _ => Ok(()),
    }
}

fn ttl_seconds(ttl: Option<i64>) -> Result<i64> {
    match ttl.unwrap_or(DEFAULT_TTL_SECONDS) {
        t @ 1..=MAX_TTL_SECONDS => Ok(t),
        t => Err(Error::invalid(
            "ttl_seconds",
            format!("{t} is outside 1..={MAX_TTL_SECONDS}"),
        )),
    }
}

pub(crate) fn page_limit(limit: Option<i64>, default: usize, max: usize) -> Result<usize> {
    match limit {
        None => Ok(default),
        Some(l) if l >= 1 && l as u64 <= max as u64 => Ok(l as usize),
        Some(l) => Err(Error::invalid("limit", format!("{l} is outside 1..={max}"))),
    }
}

/// A page from `limit + 1` items: the extra one only says that more follow.
pub(crate) fn page<T>(mut items: Vec<T>, limit: usize, id: impl Fn(&T) -> &String) -> Page<T> {
    let has_more = items.len() > limit;
    items.truncate(limit);
    Page {
        first_id: items.first().map(|t| id(t).clone()),
        last_id: items.last().map(|t| id(t).clone()),
        has_more,
        data: items,
    }
}

/// The length of `value`'s JSON encoding, without building it.
fn json_size(value: &impl Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing to a counter cannot fail, and a map with string keys always serialises.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

#[cfg(test)]
mod tests {
    #[test]
    fn blank_is_what_json_schemas_backslash_s_matches() {
        for blank in ["", " ", "\t\n\r", "\u{a0}\u{2003}\u{3000}", "\u{feff}"] {
            assert!(super::is_blank(blank), "{blank:?}");
        }
        // U+0085 and U+001C are white space to Rust's `trim`, not to ECMAScript's `\s`.
        for text in ["a", " a ", "\u{85}", "\u{1c}"] {
            assert!(!super::is_blank(text), "{text:?}");
        }
    }
}
