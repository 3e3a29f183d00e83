//! [`MemoryStore`]: every record in process memory, behind one lock. For tests, and for
//! applications that need no persistence.

use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::json;
use crate::model::{Session, Trace};
use crate::store::*;
use async_trait::async_trait;
use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap};
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
}

#[derive(Debug)]
struct StoredSession {
    record: SessionRecord,
    versions: Vec<VersionRecord>,
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

    fn insert_trace(&mut self, tenant: &str, trace: Trace) {
        self.trace_order
            .insert((tenant.to_owned(), trace.timestamp, trace.id.clone()));
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

fn session_matches(s: &Session, q: &SessionQuery) -> bool {
    q.live_at.is_none_or(|now| !s.is_expired_at(now))
        && q.agent_id.as_ref().is_none_or(|a| *a == s.agent_id)
        && q.user_id
            .as_ref()
            .is_none_or(|u| Some(u) == s.user_id.as_ref())
        && q.created_after.is_none_or(|t| s.created_at > t)
        && q.created_before.is_none_or(|t| s.created_at < t)
        && q.metadata
            .as_ref()
            .is_none_or(|m| json::contains(&s.metadata, m))
}

fn trace_matches(t: &Trace, q: &TraceQuery) -> bool {
    q.session_id
        .as_ref()
        .is_none_or(|s| Some(s) == t.session_id.as_ref())
        && q.action.as_ref().is_none_or(|a| *a == t.action)
        && q.resource_type
            .as_ref()
            .is_none_or(|r| *r == t.resource_type)
        && q.resource_id.as_ref().is_none_or(|r| *r == t.resource_id)
        && q.created_after.is_none_or(|c| t.timestamp > c)
        && q.created_before.is_none_or(|c| t.timestamp < c)
}

#[async_trait]
impl Store for MemoryStore {
    async fn create_session(&self, tenant: &str, new: NewSession) -> Result<()> {
        let mut inner = self.inner.lock();
        let s = &new.record.session;
        let k = key(tenant, &s.id);
        if inner.sessions.contains_key(&k) {
            return Err(Error::backend(format!("session id {} already exists", s.id)));
        }
        inner
            .session_order
            .insert((tenant.to_owned(), s.created_at, s.id.clone()));
        inner.sessions.insert(
            k,
            StoredSession {
                record: new.record,
                versions: vec![new.initial],
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
                .filter(|s| session_matches(&s.record.session, query))
                .take(query.limit)
                .map(|s| s.record.clone())
                .collect(),
        )
    }

    async fn update_session(&self, tenant: &str, update: SessionUpdate) -> Result<()> {
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
        inner.insert_trace(tenant, update.trace);
        Ok(())
    }

    async fn append_version(&self, tenant: &str, append: AppendVersion) -> Result<()> {
        let mut inner = self.inner.lock();
        let stored = inner.session_mut(tenant, &append.session_id)?;
        let current = stored.record.session.version;
        if current != append.expected_version {
            return Err(Error::Conflict {
                expected: append.expected_version,
                actual: current,
            });
        }
        debug_assert_eq!(append.version.version, current + 1);
        stored.versions.push(append.version);
        stored.record.revision += 1;
        let s = &mut stored.record.session;
        s.version = current + 1;
        s.state = append.state;
        s.updated_at = append.updated_at;
        inner.insert_trace(tenant, append.trace);
        Ok(())
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
        // Versions are stored densely from 0, so a version's number is its index.
        let len = stored.versions.len();
        let clamp = |v: u64| usize::try_from(v).unwrap_or(usize::MAX).min(len);
        let (start, end) = (clamp(range.start), clamp(range.end));
        Ok(stored.versions[start..end.max(start)].to_vec())
    }

    async fn delete_session(&self, tenant: &str, id: &str, trace: Trace) -> Result<SessionRecord> {
        let mut inner = self.inner.lock();
        let stored = inner
            .sessions
            .remove(&key(tenant, id))
            .ok_or_else(|| Error::session_not_found(id))?;
        let s = &stored.record.session;
        inner
            .session_order
            .remove(&(tenant.to_owned(), s.created_at, s.id.clone()));
        inner.insert_trace(tenant, trace);
        Ok(stored.record)
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

    async fn trace(&self, tenant: &str, id: &str) -> Result<Option<Trace>> {
        Ok(self.inner.lock().traces.get(&key(tenant, id)).cloned())
    }

    async fn list_traces(&self, tenant: &str, query: &TraceQuery) -> Result<Vec<Trace>> {
        let inner = self.inner.lock();
        Ok(
            Inner::newest_first(&inner.trace_order, tenant, query.after.as_ref())
                .filter_map(|(t, _, id)| inner.traces.get(&key(t, id)))
                .filter(|t| trace_matches(t, query))
                .take(query.limit)
                .cloned()
                .collect(),
        )
    }
}
