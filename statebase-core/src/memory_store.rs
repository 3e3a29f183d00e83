//! [`MemoryStore`]: every record in process memory, behind one lock. For tests, and for
//! applications that need no persistence.

use crate::clock::Timestamp;
use crate::error::{Error, Result};

use crate::model::{
    ApiKey, Entity, EntityVersion, Erasure, MemoryRevision, Retention, RetentionPolicy, Trace,
    Turn, WebhookEndpoint,
};
use crate::store::*;
use async_trait::async_trait;
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;

/// A store in process memory. Clones share the same data, so a "reopened" clone sees every
/// acknowledged write; nothing survives the process.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

/// (tenant, id)
type Key = (String, String);
/// (tenant, created_at or timestamp, id): iterating it backwards lists newest first.
type OrderKey = (String, Timestamp, String);

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<Key, StoredSession>,
    session_order: BTreeSet<OrderKey>,
    traces: HashMap<Key, Trace>,
    trace_order: BTreeSet<OrderKey>,
    /// (tenant, turn id) -> session id
    turn_sessions: HashMap<Key, String>,
    memories: HashMap<Key, StoredMemory>,
    memory_order: BTreeSet<OrderKey>,
    /// (tenant, dedupe key) -> memory id
    dedupe: HashMap<Key, String>,
    entities: HashMap<Key, StoredEntity>,
    entity_order: BTreeSet<OrderKey>,
    /// (tenant, session id, entity type, entity id) -> id
    entity_names: HashMap<(String, String, String, String), String>,
    /// Keys in creation order.
    api_keys: Vec<ApiKey>,
    /// (tenant, trace id) in commit order: position n is at index n - 1.
    feed: Vec<Key>,
    webhooks: Vec<WebhookEndpoint>,
    /// (endpoint id, position) -> delivery
    deliveries: BTreeMap<(String, u64), DeliveryRecord>,
    delivery_cursor: u64,
    /// key -> response
    idempotent: HashMap<String, IdempotentResponse>,
    /// (tenant, id) of every erased session and memory: tombstones.
    erased: HashSet<Key>,
    /// (tenant, session id or "" for the tenant's own) -> retention policy
    retention: BTreeMap<Key, Retention>,
}

#[derive(Debug)]
struct StoredSession {
    record: SessionRecord,
    versions: Vec<VersionRecord>,
    /// By turn number, from the oldest kept one.
    turns: Vec<Turn>,
}

#[derive(Debug)]
struct StoredMemory {
    record: MemoryRecord,
    revisions: Vec<MemoryRevision>,
}

#[derive(Debug)]
struct StoredEntity {
    entity: Entity,
    /// Version n is at index n - 1.
    versions: Vec<EntityVersion>,
}

fn entity_name(tenant: &str, e: &Entity) -> (String, String, String, String) {
    (
        tenant.to_owned(),
        e.session_id.clone(),
        e.entity_type.clone(),
        e.entity_id.clone(),
    )
}

fn key(tenant: &str, id: &str) -> Key {
    (tenant.to_owned(), id.to_owned())
}

impl Inner {
    fn session_mut(&mut self, tenant: &str, id: &str) -> Result<&mut StoredSession> {
        self.sessions
            .get_mut(&key(tenant, id))
            .ok_or_else(|| Error::session_not_found(id))
    }

    /// Applies a checked version append to a session; returns the session as it is then.
    fn append_version(
        &mut self,
        tenant: &str,
        stored_key: &Key,
        append: AppendVersion,
    ) -> Result<SessionRecord> {
        let stored = self
            .sessions
            .get_mut(stored_key)
            .ok_or_else(|| Error::session_not_found(&append.session_id))?;
        stored.versions.push(append.version);
        stored.record.revision += 1;
        let s = &mut stored.record.session;
        s.version += 1;
        s.state = append.state;
        s.updated_at = append.updated_at;
        let record = stored.record.clone();
        self.insert_trace(tenant, append.trace);
        Ok(record)
    }

    fn check_next_version(stored: &StoredSession, append: &AppendVersion) -> Result<()> {
        let current = stored.record.session.version;
        if append.expected_version != current {
            return Err(Error::Conflict {
                expected: append.expected_version,
                actual: current,
            });
        }
        Ok(())
    }

    fn remove_memory(&mut self, tenant: &str, id: &str) -> Option<StoredMemory> {
        let stored = self.memories.remove(&key(tenant, id))?;
        let m = &stored.record.memory;
        self.memory_order
            .remove(&(tenant.to_owned(), m.created_at, m.id.clone()));
        self.dedupe.remove(&key(tenant, &stored.record.dedupe_key));
        Some(stored)
    }

    /// Removes the session with its turns, memories and entities; answers it, the ids of
    /// its memories and how many entities went.
    fn remove_session(
        &mut self,
        tenant: &str,
        id: &str,
    ) -> Option<(StoredSession, Vec<String>, u64)> {
        let stored = self.sessions.remove(&key(tenant, id))?;
        let s = &stored.record.session;
        self.session_order
            .remove(&(tenant.to_owned(), s.created_at, s.id.clone()));
        self.retention.remove(&key(tenant, id));
        for turn in &stored.turns {
            self.turn_sessions.remove(&key(tenant, &turn.id));
        }
        let owned: Vec<String> = self
            .memories
            .iter()
            .filter(|((t, _), m)| t == tenant && m.record.memory.session_id.as_deref() == Some(id))
            .map(|((_, mid), _)| mid.clone())
            .collect();
        for mid in &owned {
            self.remove_memory(tenant, mid);
        }
        let entities: Vec<String> = self
            .entities
            .iter()
            .filter(|((t, _), e)| t == tenant && e.entity.session_id == id)
            .map(|((_, eid), _)| eid.clone())
            .collect();
        for eid in &entities {
            self.remove_entity(tenant, eid);
        }
        Some((stored, owned, entities.len() as u64))
    }

    fn remove_entity(&mut self, tenant: &str, id: &str) -> Option<StoredEntity> {
        let stored = self.entities.remove(&key(tenant, id))?;
        let e = &stored.entity;
        self.entity_order
            .remove(&(tenant.to_owned(), e.created_at, e.id.clone()));
        self.entity_names.remove(&entity_name(tenant, e));
        Some(stored)
    }

    /// Checks that an archived memory can be inserted: its id is free (false if not) and
    /// its dedupe key is not another memory's.
    fn can_import_memory(&self, tenant: &str, archive: &MemoryArchive) -> Result<bool> {
        let id = key(tenant, &archive.record.memory.id);
        if self.memories.contains_key(&id) || self.erased.contains(&id) {
            return Ok(false);
        }
        match self.dedupe.get(&key(tenant, &archive.record.dedupe_key)) {
            Some(other) => Err(Error::DuplicateContent {
                other: other.clone(),
            }),
            None => Ok(true),
        }
    }

    /// Adds the memory with its order and dedupe keys.
    fn put_memory(&mut self, tenant: &str, mut stored: StoredMemory) {
        stored.record.memory.vector_available = stored.record.embedding.is_some();
        let m = &stored.record.memory;
        self.memory_order
            .insert((tenant.to_owned(), m.created_at, m.id.clone()));
        self.dedupe
            .insert(key(tenant, &stored.record.dedupe_key), m.id.clone());
        self.memories
            .insert(key(tenant, &stored.record.memory.id), stored);
    }

    /// Adds the entity with its order and name keys.
    fn put_entity(&mut self, tenant: &str, stored: StoredEntity) {
        let e = &stored.entity;
        self.entity_order
            .insert((tenant.to_owned(), e.created_at, e.id.clone()));
        self.entity_names
            .insert(entity_name(tenant, e), e.id.clone());
        self.entities.insert(key(tenant, &stored.entity.id), stored);
    }

    /// Removes the trace; its feed position stays, empty.
    fn remove_trace(&mut self, k: &Key) {
        if let Some(trace) = self.traces.remove(k) {
            self.trace_order
                .remove(&(k.0.clone(), trace.timestamp, trace.id));
        }
    }

    fn insert_trace(&mut self, tenant: &str, trace: Trace) {
        self.trace_order
            .insert((tenant.to_owned(), trace.timestamp, trace.id.clone()));
        self.feed.push(key(tenant, &trace.id));
        self.traces.insert(key(tenant, &trace.id), trace);
    }

    /// Order keys of `tenant`, newest first, strictly after `after` in that order.
    fn newest_first<'a>(
        order: &'a BTreeSet<OrderKey>,
        tenant: &str,
        after: Option<&Cursor>,
    ) -> impl Iterator<Item = &'a OrderKey> + 'a {
        let lo = (tenant.to_owned(), Timestamp::MIN_UTC, String::new());
        let hi = match after {
            Some(c) => std::ops::Bound::Excluded((tenant.to_owned(), c.at, c.id.clone())),
            None => {
                std::ops::Bound::Included((tenant.to_owned(), Timestamp::MAX_UTC, String::new()))
            }
        };
        order.range((std::ops::Bound::Included(lo), hi)).rev()
    }
}

#[async_trait]
impl SessionLog for MemoryStore {
    async fn create_session(&self, tenant: &str, new: NewSession) -> Result<()> {
        let mut inner = self.inner.lock();
        let s = &new.record.session;
        let k = key(tenant, &s.id);
        if inner.sessions.contains_key(&k) {
            return Err(Error::backend(format!(
                "session id {} already exists",
                s.id
            )));
        }
        inner
            .session_order
            .insert((tenant.to_owned(), s.created_at, s.id.clone()));
        inner.sessions.insert(
            k,
            StoredSession {
                record: new.record,
                versions: vec![new.initial],
                turns: Vec::new(),
            },
        );
        inner.insert_trace(tenant, new.trace);
        Ok(())
    }

    async fn session(&self, tenant: &str, id: &str) -> Result<Option<SessionRecord>> {
        let inner = self.inner.lock();
        Ok(inner
            .sessions
            .get(&key(tenant, id))
            .map(|s| s.record.clone()))
    }

    async fn list_sessions(
        &self,
        tenant: &str,
        query: &SessionQuery,
    ) -> Result<Vec<SessionRecord>> {
        let inner = self.inner.lock();
        Ok(
            Inner::newest_first(&inner.session_order, tenant, query.after.as_ref())
                .filter_map(|(t, _, id)| inner.sessions.get(&key(t, id)))
                .filter(|s| query.matches(&s.record.session))
                .take(query.limit)
                .map(|s| s.record.clone())
                .collect(),
        )
    }

    async fn update_session(&self, tenant: &str, update: SessionUpdate) -> Result<SessionRecord> {
        let mut inner = self.inner.lock();
        let stored = inner.session_mut(tenant, &update.session_id)?;
        if stored.record.revision != update.expected_revision {
            return Err(Error::Conflict {
                expected: update.expected_revision,
                actual: stored.record.revision,
            });
        }
        stored.record.revision += 1;
        let s = &mut stored.record.session;
        s.metadata = update.metadata;
        s.ttl_expires_at = update.ttl_expires_at;
        s.updated_at = update.updated_at;
        let record = stored.record.clone();
        inner.insert_trace(tenant, update.trace);
        Ok(record)
    }

    async fn append_version(&self, tenant: &str, append: AppendVersion) -> Result<SessionRecord> {
        let mut inner = self.inner.lock();
        let stored = inner.session_mut(tenant, &append.session_id)?;
        Inner::check_next_version(stored, &append)?;
        let k = key(tenant, &append.session_id);
        inner.append_version(tenant, &k, append)
    }

    async fn versions(
        &self,
        tenant: &str,
        session_id: &str,
        range: Range<u64>,
    ) -> Result<Vec<VersionRecord>> {
        let inner = self.inner.lock();
        let Some(stored) = inner.sessions.get(&key(tenant, session_id)) else {
            return Ok(Vec::new());
        };
        // Versions are stored densely from the oldest kept one, so a version's number less
        // that one's is its index.
        let len = stored.versions.len();
        let first = stored.versions.first().map_or(0, |v| v.version);
        let clamp = |v: u64| {
            usize::try_from(v.saturating_sub(first))
                .unwrap_or(usize::MAX)
                .min(len)
        };
        let (start, end) = (clamp(range.start), clamp(range.end));
        Ok(stored.versions[start..end.max(start)].to_vec())
    }

    async fn delete_session(&self, tenant: &str, id: &str, trace: Trace) -> Result<SessionRecord> {
        let mut inner = self.inner.lock();
        let (stored, _, _) = inner
            .remove_session(tenant, id)
            .ok_or_else(|| Error::session_not_found(id))?;
        inner.insert_trace(tenant, trace);
        Ok(stored.record)
    }

    async fn prune_versions(
        &self,
        tenant: &str,
        session_id: &str,
        before: u64,
        trace: Trace,
    ) -> Result<u64> {
        let mut inner = self.inner.lock();
        let stored = inner
            .sessions
            .get_mut(&key(tenant, session_id))
            .ok_or_else(|| Error::session_not_found(session_id))?;
        let count = stored.versions.partition_point(|v| v.version < before);
        stored.versions.drain(..count);
        if count > 0 {
            inner.insert_trace(tenant, trace);
        }
        Ok(count as u64)
    }

    async fn prune_turns(
        &self,
        tenant: &str,
        session_id: &str,
        before: Timestamp,
        trace: Trace,
    ) -> Result<u64> {
        let mut inner = self.inner.lock();
        let stored = inner.session_mut(tenant, session_id)?;
        // Turns are logged in time order.
        let count = stored.turns.partition_point(|t| t.created_at < before);
        let gone: Vec<Turn> = stored.turns.drain(..count).collect();
        for turn in &gone {
            inner.turn_sessions.remove(&key(tenant, &turn.id));
        }
        if count > 0 {
            inner.insert_trace(tenant, trace);
        }
        Ok(count as u64)
    }

    async fn put_retention(
        &self,
        tenant: &str,
        session_id: Option<&str>,
        policy: Option<Retention>,
        trace: Option<Trace>,
    ) -> Result<()> {
        let mut inner = self.inner.lock();
        if let Some(id) = session_id {
            inner.session_mut(tenant, id)?;
        }
        let k = key(tenant, session_id.unwrap_or(""));
        match policy {
            Some(p) => inner.retention.insert(k, p),
            None => inner.retention.remove(&k),
        };
        if let Some(trace) = trace {
            inner.insert_trace(tenant, trace);
        }
        Ok(())
    }

    async fn retention(&self, tenant: &str, session_id: Option<&str>) -> Result<Option<Retention>> {
        let k = key(tenant, session_id.unwrap_or(""));
        Ok(self.inner.lock().retention.get(&k).copied())
    }

    async fn retention_policies(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<RetentionPolicy>> {
        use std::ops::Bound;
        let inner = self.inner.lock();
        let from = match after {
            Some((t, s)) => Bound::Excluded(key(t, s)),
            None => Bound::Unbounded,
        };
        Ok(inner
            .retention
            .range((from, Bound::Unbounded))
            .take(limit)
            .map(|((tenant, session), retention)| RetentionPolicy {
                tenant: tenant.clone(),
                session_id: Some(session.clone()).filter(|s| !s.is_empty()),
                retention: *retention,
            })
            .collect())
    }

    async fn erase_user(&self, tenant: &str, user_id: &str, trace: Trace) -> Result<Erasure> {
        let mut inner = self.inner.lock();
        let mut erasure = Erasure::default();
        let mut erased = HashSet::new();
        let sessions: Vec<String> = inner
            .sessions
            .iter()
            .filter(|((t, _), s)| {
                t == tenant && s.record.session.user_id.as_deref() == Some(user_id)
            })
            .map(|((_, id), _)| id.clone())
            .collect();
        for id in sessions {
            let (stored, memories, entities) = inner.remove_session(tenant, &id).expect("listed");
            erasure.sessions += 1;
            erasure.versions += stored.versions.len() as u64;
            erasure.turns += stored.turns.len() as u64;
            erasure.memories += memories.len() as u64;
            erasure.entities += entities;
            erased.insert(id);
            erased.extend(memories);
        }
        let memories: Vec<String> = inner
            .memories
            .iter()
            .filter(|((t, _), m)| {
                t == tenant && m.record.memory.user_id.as_deref() == Some(user_id)
            })
            .map(|((_, id), _)| id.clone())
            .collect();
        erasure.memories += memories.len() as u64;
        for id in memories {
            inner.remove_memory(tenant, &id);
            erased.insert(id);
        }
        let of_erased = |t: &Trace| {
            t.session_id.as_ref().is_some_and(|s| erased.contains(s))
                || erased.contains(&t.resource_id)
        };
        let traces: Vec<Key> = inner
            .traces
            .iter()
            .filter(|((t, _), trace)| t == tenant && of_erased(trace))
            .map(|(k, _)| k.clone())
            .collect();
        erasure.traces = traces.len() as u64;
        for k in &traces {
            inner.remove_trace(k);
        }
        let user = format!("user:{user_id}");
        let before = inner.idempotent.len();
        inner.idempotent.retain(|_, r| {
            r.tenant != tenant || !r.subjects.iter().any(|s| *s == user || erased.contains(s))
        });
        erasure.idempotent_responses = (before - inner.idempotent.len()) as u64;
        inner
            .erased
            .extend(erased.into_iter().map(|id| key(tenant, &id)));
        inner.insert_trace(tenant, erasure.into_trace(trace));
        Ok(erasure)
    }

    async fn count_sessions(
        &self,
        tenant: &str,
        live_at: Timestamp,
        changed_after: Timestamp,
    ) -> Result<SessionCounts> {
        let inner = self.inner.lock();
        let mut counts = SessionCounts::default();
        let live = inner
            .sessions
            .iter()
            .filter(|((t, _), s)| t == tenant && !s.record.session.is_expired_at(live_at));
        for (_, stored) in live {
            let s = &stored.record.session;
            counts.sessions += 1;
            counts.turns += s.turn_count;
            counts.changed += u64::from(s.updated_at > changed_after);
        }
        Ok(counts)
    }

    async fn expired_sessions(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<(String, SessionRecord)>> {
        let inner = self.inner.lock();
        Ok(inner
            .sessions
            .iter()
            .filter(|(_, s)| s.record.session.is_expired_at(now))
            .take(limit)
            .map(|((tenant, _), s)| (tenant.clone(), s.record.clone()))
            .collect())
    }

    async fn append_turn(&self, tenant: &str, append: AppendTurn) -> Result<SessionRecord> {
        let mut inner = self.inner.lock();
        let session_id = append.turn.session_id.clone();
        let stored = inner.session_mut(tenant, &session_id)?;
        let count = stored.record.session.turn_count;
        if append.turn.turn_number != count + 1 {
            return Err(Error::Conflict {
                expected: append.turn.turn_number.saturating_sub(1),
                actual: count,
            });
        }
        if let Some(state) = &append.state {
            Inner::check_next_version(stored, state)?;
        }
        stored.record.session.turn_count = count + 1;
        stored.record.session.updated_at = append.updated_at;
        stored.record.revision += 1;
        stored.turns.push(append.turn.clone());
        let k = key(tenant, &session_id);
        inner
            .turn_sessions
            .insert(key(tenant, &append.turn.id), session_id);
        let record = match append.state {
            Some(state) => inner.append_version(tenant, &k, state)?,
            None => inner.sessions[&k].record.clone(),
        };
        inner.insert_trace(tenant, append.trace);
        Ok(record)
    }

    async fn import_session(&self, tenant: &str, archive: SessionArchive) -> Result<bool> {
        let mut inner = self.inner.lock();
        let s = &archive.record.session;
        let id = key(tenant, &s.id);
        if inner.sessions.contains_key(&id) || inner.erased.contains(&id) {
            return Ok(false);
        }
        // Check everything before writing anything: all or nothing.
        for m in &archive.memories {
            if !inner.can_import_memory(tenant, m)? {
                return Err(Error::backend(format!(
                    "memory id {} already exists",
                    m.record.memory.id
                )));
            }
        }
        for e in &archive.entities {
            if inner.entities.contains_key(&key(tenant, &e.entity.id)) {
                return Err(Error::backend(format!(
                    "entity id {} already exists",
                    e.entity.id
                )));
            }
        }
        inner
            .session_order
            .insert((tenant.to_owned(), s.created_at, s.id.clone()));
        for turn in &archive.turns {
            inner
                .turn_sessions
                .insert(key(tenant, &turn.id), s.id.clone());
        }
        for m in archive.memories {
            let stored = StoredMemory {
                record: m.record,
                revisions: m.revisions,
            };
            inner.put_memory(tenant, stored);
        }
        for e in archive.entities {
            let stored = StoredEntity {
                entity: e.entity,
                versions: e.versions,
            };
            inner.put_entity(tenant, stored);
        }
        inner.sessions.insert(
            key(tenant, &archive.record.session.id),
            StoredSession {
                record: archive.record,
                versions: archive.versions,
                turns: archive.turns,
            },
        );
        Ok(true)
    }

    async fn turn(&self, tenant: &str, id: &str) -> Result<Option<Turn>> {
        let inner = self.inner.lock();
        let Some(session_id) = inner.turn_sessions.get(&key(tenant, id)) else {
            return Ok(None);
        };
        Ok(inner
            .sessions
            .get(&key(tenant, session_id))
            .and_then(|s| s.turns.iter().find(|t| t.id == id).cloned()))
    }

    async fn list_turns(
        &self,
        tenant: &str,
        session_id: &str,
        query: &TurnQuery,
    ) -> Result<Vec<Turn>> {
        let inner = self.inner.lock();
        let Some(stored) = inner.sessions.get(&key(tenant, session_id)) else {
            return Ok(Vec::new());
        };
        let after = query.after_turn_number;
        let turns: Box<dyn Iterator<Item = &Turn>> = if query.descending {
            Box::new(
                stored
                    .turns
                    .iter()
                    .rev()
                    .filter(|t| after.is_none_or(|a| t.turn_number < a)),
            )
        } else {
            Box::new(
                stored
                    .turns
                    .iter()
                    .filter(|t| after.is_none_or(|a| t.turn_number > a)),
            )
        };
        Ok(turns.take(query.limit).cloned().collect())
    }
}

#[async_trait]
impl MemoryRecords for MemoryStore {
    async fn insert_memory(&self, tenant: &str, new: NewMemory) -> Result<Option<MemoryRecord>> {
        let mut inner = self.inner.lock();
        if let Some(existing) = inner.dedupe.get(&key(tenant, &new.record.dedupe_key)) {
            let existing = key(tenant, existing);
            return Ok(inner.memories.get(&existing).map(|m| m.record.clone()));
        }
        let m = &new.record.memory;
        if let Some(sid) = &m.session_id {
            let record = &mut inner.session_mut(tenant, sid)?.record;
            record.session.memory_count += 1;
            record.revision += 1;
        }
        let stored = StoredMemory {
            revisions: vec![MemoryRevision::of(m)],
            record: new.record,
        };
        inner.put_memory(tenant, stored);
        inner.insert_trace(tenant, new.trace);
        Ok(None)
    }

    async fn import_memory(&self, tenant: &str, archive: MemoryArchive) -> Result<bool> {
        let mut inner = self.inner.lock();
        if !inner.can_import_memory(tenant, &archive)? {
            return Ok(false);
        }
        let stored = StoredMemory {
            record: archive.record,
            revisions: archive.revisions,
        };
        inner.put_memory(tenant, stored);
        Ok(true)
    }

    async fn memory(&self, tenant: &str, id: &str) -> Result<Option<MemoryRecord>> {
        let inner = self.inner.lock();
        Ok(inner
            .memories
            .get(&key(tenant, id))
            .map(|m| m.record.clone()))
    }

    async fn update_memory(&self, tenant: &str, update: MemoryUpdate) -> Result<MemoryRecord> {
        let mut inner = self.inner.lock();
        let id = update.record.memory.id.clone();
        let new_key = key(tenant, &update.record.dedupe_key);
        match inner.dedupe.get(&new_key) {
            Some(other) if *other != id => {
                return Err(Error::DuplicateContent {
                    other: other.clone(),
                })
            }
            _ => {}
        }
        let stored = inner
            .memories
            .get_mut(&key(tenant, &id))
            .ok_or_else(|| Error::not_found(crate::ResourceKind::Memory, &id))?;
        if stored.record.memory.version != update.expected_version {
            return Err(Error::Conflict {
                expected: update.expected_version,
                actual: stored.record.memory.version,
            });
        }
        let old_key = key(tenant, &stored.record.dedupe_key);
        stored
            .revisions
            .push(MemoryRevision::of(&update.record.memory));
        let mut record = update.record;
        record.memory.vector_available = record.embedding.is_some();
        stored.record = record.clone();
        inner.dedupe.remove(&old_key);
        inner.dedupe.insert(new_key, id);
        inner.insert_trace(tenant, update.trace);
        Ok(record)
    }

    async fn set_embedding(
        &self,
        tenant: &str,
        id: &str,
        version: u64,
        model: &str,
        vector: Vec<f32>,
    ) -> Result<bool> {
        let mut inner = self.inner.lock();
        let Some(stored) = inner.memories.get_mut(&key(tenant, id)) else {
            return Ok(false);
        };
        if stored.record.memory.version != version {
            return Ok(false);
        }
        stored.record.memory.embedding_model = Some(model.to_owned());
        stored.record.memory.vector_available = true;
        stored.record.embedding = Some(vector);
        Ok(true)
    }

    async fn delete_memory(&self, tenant: &str, id: &str, trace: Trace) -> Result<MemoryRecord> {
        let mut inner = self.inner.lock();
        let stored = inner
            .remove_memory(tenant, id)
            .ok_or_else(|| Error::not_found(crate::ResourceKind::Memory, id))?;
        if let Some(sid) = &stored.record.memory.session_id {
            if let Ok(s) = inner.session_mut(tenant, sid) {
                s.record.session.memory_count = s.record.session.memory_count.saturating_sub(1);
                s.record.revision += 1;
            }
        }
        inner.insert_trace(tenant, trace);
        Ok(stored.record)
    }

    async fn list_memories(&self, tenant: &str, query: &MemoryQuery) -> Result<Vec<MemoryRecord>> {
        let inner = self.inner.lock();
        Ok(
            Inner::newest_first(&inner.memory_order, tenant, query.after.as_ref())
                .filter_map(|(t, _, id)| inner.memories.get(&key(t, id)))
                .filter(|m| query.matches(&m.record.memory))
                .take(query.limit)
                .map(|m| m.record.clone())
                .collect(),
        )
    }

    async fn count_memories(&self, tenant: &str) -> Result<u64> {
        let inner = self.inner.lock();
        Ok(inner.memories.keys().filter(|(t, _)| t == tenant).count() as u64)
    }

    async fn memory_revisions(&self, tenant: &str, id: &str) -> Result<Vec<MemoryRevision>> {
        let inner = self.inner.lock();
        Ok(inner
            .memories
            .get(&key(tenant, id))
            .map(|m| m.revisions.clone())
            .unwrap_or_default())
    }

    async fn scan_memories(
        &self,
        tenant: &str,
        after_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MemoryRecord>> {
        let inner = self.inner.lock();
        let mut found: Vec<&StoredMemory> = inner
            .memories
            .iter()
            .filter(|((t, id), _)| t == tenant && after_id.is_none_or(|a| id.as_str() > a))
            .map(|(_, m)| m)
            .collect();
        found.sort_unstable_by(|a, b| a.record.memory.id.cmp(&b.record.memory.id));
        Ok(found
            .into_iter()
            .take(limit)
            .map(|m| m.record.clone())
            .collect())
    }
}

#[async_trait]
impl EntityRecords for MemoryStore {
    async fn insert_entity(&self, tenant: &str, new: NewEntity) -> Result<Option<Entity>> {
        let mut inner = self.inner.lock();
        let e = new.entity;
        if let Some(existing) = inner.entity_names.get(&entity_name(tenant, &e)) {
            let existing = key(tenant, existing);
            return Ok(inner.entities.get(&existing).map(|s| s.entity.clone()));
        }
        inner.session_mut(tenant, &e.session_id)?;
        let stored = StoredEntity {
            versions: vec![EntityVersion::of(&e)],
            entity: e,
        };
        inner.put_entity(tenant, stored);
        inner.insert_trace(tenant, new.trace);
        Ok(None)
    }

    async fn count_entities(&self, tenant: &str) -> Result<u64> {
        let inner = self.inner.lock();
        Ok(inner.entities.keys().filter(|(t, _)| t == tenant).count() as u64)
    }

    async fn entity(&self, tenant: &str, id: &str) -> Result<Option<Entity>> {
        let inner = self.inner.lock();
        Ok(inner
            .entities
            .get(&key(tenant, id))
            .map(|s| s.entity.clone()))
    }

    async fn list_entities(&self, tenant: &str, query: &EntityQuery) -> Result<Vec<Entity>> {
        let inner = self.inner.lock();
        Ok(
            Inner::newest_first(&inner.entity_order, tenant, query.after.as_ref())
                .filter_map(|(t, _, id)| inner.entities.get(&key(t, id)))
                .filter(|s| query.matches(&s.entity))
                .take(query.limit)
                .map(|s| s.entity.clone())
                .collect(),
        )
    }

    async fn update_entity(&self, tenant: &str, update: EntityUpdate) -> Result<Entity> {
        let mut inner = self.inner.lock();
        let id = &update.entity.id;
        let stored = inner
            .entities
            .get_mut(&key(tenant, id))
            .ok_or_else(|| Error::not_found(crate::ResourceKind::Entity, id))?;
        if stored.entity.version != update.expected_version {
            return Err(Error::Conflict {
                expected: update.expected_version,
                actual: stored.entity.version,
            });
        }
        stored.versions.push(EntityVersion::of(&update.entity));
        stored.entity = update.entity.clone();
        inner.insert_trace(tenant, update.trace);
        Ok(update.entity)
    }

    async fn delete_entity(&self, tenant: &str, id: &str, trace: Trace) -> Result<Entity> {
        let mut inner = self.inner.lock();
        let stored = inner
            .remove_entity(tenant, id)
            .ok_or_else(|| Error::not_found(crate::ResourceKind::Entity, id))?;
        inner.insert_trace(tenant, trace);
        Ok(stored.entity)
    }

    async fn entity_versions(
        &self,
        tenant: &str,
        id: &str,
        range: Range<u64>,
    ) -> Result<Vec<EntityVersion>> {
        let inner = self.inner.lock();
        Ok(inner
            .entities
            .get(&key(tenant, id))
            .map(|s| {
                s.versions
                    .iter()
                    .filter(|v| range.contains(&v.version))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }
}

#[async_trait]
impl TraceLog for MemoryStore {
    async fn import_traces(&self, tenant: &str, traces: Vec<Trace>) -> Result<u64> {
        let mut inner = self.inner.lock();
        let mut count = 0;
        for trace in traces {
            let k = key(tenant, &trace.id);
            let erased = |id: &str| inner.erased.contains(&key(tenant, id));
            if inner.traces.contains_key(&k)
                || trace.session_id.as_deref().is_some_and(erased)
                || erased(&trace.resource_id)
            {
                continue;
            }
            inner
                .trace_order
                .insert((tenant.to_owned(), trace.timestamp, trace.id.clone()));
            inner.traces.insert(k, trace);
            count += 1;
        }
        Ok(count)
    }

    async fn tenants(&self) -> Result<Vec<String>> {
        let inner = self.inner.lock();
        let sessions = inner.session_order.iter().map(|(t, _, _)| t);
        let memories = inner.memory_order.iter().map(|(t, _, _)| t);
        let traces = inner.trace_order.iter().map(|(t, _, _)| t);
        let all: BTreeSet<&String> = sessions.chain(memories).chain(traces).collect();
        Ok(all.into_iter().cloned().collect())
    }

    async fn trace(&self, tenant: &str, id: &str) -> Result<Option<Trace>> {
        Ok(self.inner.lock().traces.get(&key(tenant, id)).cloned())
    }

    async fn list_traces(&self, tenant: &str, query: &TraceQuery) -> Result<Vec<Trace>> {
        let inner = self.inner.lock();
        Ok(
            Inner::newest_first(&inner.trace_order, tenant, query.after.as_ref())
                .filter_map(|(t, _, id)| inner.traces.get(&key(t, id)))
                .filter(|t| query.matches(t))
                .take(query.limit)
                .cloned()
                .collect(),
        )
    }

    async fn trace_activity(
        &self,
        tenant: &str,
        after: Timestamp,
    ) -> Result<Vec<(Timestamp, u64)>> {
        let inner = self.inner.lock();
        let from = (tenant.to_owned(), after, String::from(char::MAX));
        let mut hours: BTreeMap<Timestamp, u64> = BTreeMap::new();
        for (_, at, _) in inner
            .trace_order
            .range(from..)
            .take_while(|(t, _, _)| t == tenant)
            .filter(|(_, at, _)| *at > after)
        {
            *hours.entry(crate::clock::hour_start(*at)).or_default() += 1;
        }
        Ok(hours.into_iter().collect())
    }

    async fn prune_traces(&self, tenant: &str, before: Timestamp, trace: Trace) -> Result<u64> {
        let mut inner = self.inner.lock();
        let lo = (tenant.to_owned(), Timestamp::MIN_UTC, String::new());
        let hi = (tenant.to_owned(), before, String::new());
        let old: Vec<Key> = inner
            .trace_order
            .range(lo..hi)
            .map(|(t, _, id)| key(t, id))
            .collect();
        for k in &old {
            inner.remove_trace(k);
        }
        if !old.is_empty() {
            inner.insert_trace(tenant, trace);
        }
        Ok(old.len() as u64)
    }

    async fn trace_feed(&self, after: u64, limit: usize) -> Result<Vec<FeedEntry>> {
        let inner = self.inner.lock();
        let start = usize::try_from(after).unwrap_or(usize::MAX);
        Ok(inner
            .feed
            .iter()
            .enumerate()
            .skip(start)
            .filter_map(|(i, k)| {
                Some(FeedEntry {
                    position: i as u64 + 1,
                    tenant: k.0.clone(),
                    trace: inner.traces.get(k)?.clone(),
                })
            })
            .take(limit)
            .collect())
    }

    async fn trace_feed_end(&self) -> Result<u64> {
        Ok(self.inner.lock().feed.len() as u64)
    }
}

#[async_trait]
impl ServerRecords for MemoryStore {
    async fn put_api_key(&self, api_key: ApiKey) -> Result<()> {
        let mut inner = self.inner.lock();
        match inner.api_keys.iter_mut().find(|k| k.id == api_key.id) {
            Some(k) => *k = api_key,
            None => inner.api_keys.push(api_key),
        }
        Ok(())
    }

    async fn api_key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>> {
        let inner = self.inner.lock();
        Ok(inner.api_keys.iter().find(|k| k.key_hash == hash).cloned())
    }

    async fn api_key(&self, id: &str) -> Result<Option<ApiKey>> {
        let inner = self.inner.lock();
        Ok(inner.api_keys.iter().find(|k| k.id == id).cloned())
    }

    async fn list_api_keys(&self, tenant: Option<&str>) -> Result<Vec<ApiKey>> {
        let inner = self.inner.lock();
        Ok(inner
            .api_keys
            .iter()
            .filter(|k| tenant.is_none_or(|t| k.tenant == t))
            .cloned()
            .collect())
    }

    async fn put_webhook(&self, endpoint: WebhookEndpoint) -> Result<()> {
        let mut inner = self.inner.lock();
        match inner.webhooks.iter_mut().find(|e| e.id == endpoint.id) {
            Some(e) => *e = endpoint,
            None => inner.webhooks.push(endpoint),
        }
        Ok(())
    }

    async fn webhook(&self, tenant: &str, id: &str) -> Result<Option<WebhookEndpoint>> {
        let inner = self.inner.lock();
        let found = inner
            .webhooks
            .iter()
            .find(|e| e.id == id && e.tenant == tenant);
        Ok(found.cloned())
    }

    async fn list_webhooks(&self, tenant: Option<&str>) -> Result<Vec<WebhookEndpoint>> {
        let inner = self.inner.lock();
        let mut found: Vec<WebhookEndpoint> = inner
            .webhooks
            .iter()
            .filter(|e| tenant.is_none_or(|t| e.tenant == t))
            .cloned()
            .collect();
        found.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(found)
    }

    async fn delete_webhook(&self, tenant: &str, id: &str) -> Result<()> {
        let mut inner = self.inner.lock();
        let before = inner.webhooks.len();
        inner
            .webhooks
            .retain(|e| !(e.id == id && e.tenant == tenant));
        if inner.webhooks.len() == before {
            return Err(Error::not_found(crate::ResourceKind::Webhook, id));
        }
        inner.deliveries.retain(|(endpoint, _), _| endpoint != id);
        Ok(())
    }

    async fn put_deliveries(
        &self,
        deliveries: Vec<DeliveryRecord>,
        cursor: Option<u64>,
    ) -> Result<()> {
        let mut inner = self.inner.lock();
        for d in deliveries {
            if inner.webhooks.iter().any(|e| e.id == d.endpoint_id) {
                inner
                    .deliveries
                    .insert((d.endpoint_id.clone(), d.position), d);
            }
        }
        if let Some(c) = cursor {
            inner.delivery_cursor = c;
        }
        Ok(())
    }

    async fn delivery_cursor(&self) -> Result<u64> {
        Ok(self.inner.lock().delivery_cursor)
    }

    async fn deliveries(
        &self,
        endpoint_id: Option<&str>,
        owed_only: bool,
    ) -> Result<Vec<DeliveryRecord>> {
        let inner = self.inner.lock();
        Ok(inner
            .deliveries
            .values()
            .filter(|d| endpoint_id.is_none_or(|e| d.endpoint_id == e))
            .filter(|d| !owed_only || d.done_at.is_none())
            .cloned()
            .collect())
    }

    async fn prune_deliveries(&self, before: Timestamp) -> Result<u64> {
        let mut inner = self.inner.lock();
        let count = inner.deliveries.len();
        inner
            .deliveries
            .retain(|_, d| d.done_at.is_none_or(|at| at >= before));
        Ok((count - inner.deliveries.len()) as u64)
    }

    async fn idempotent_response(&self, key: &str) -> Result<Option<IdempotentResponse>> {
        Ok(self.inner.lock().idempotent.get(key).cloned())
    }

    async fn put_idempotent_response(&self, response: IdempotentResponse) -> Result<()> {
        let mut inner = self.inner.lock();
        let tenant = &response.tenant;
        if !response
            .subjects
            .iter()
            .any(|s| inner.erased.contains(&key(tenant, s)))
        {
            inner.idempotent.insert(response.key.clone(), response);
        }
        Ok(())
    }

    async fn prune_idempotent_responses(&self, before: Timestamp) -> Result<u64> {
        let mut inner = self.inner.lock();
        let count = inner.idempotent.len();
        inner.idempotent.retain(|_, r| r.at >= before);
        Ok((count - inner.idempotent.len()) as u64)
    }
}
