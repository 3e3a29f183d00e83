//! Reads and transactions on the three trees (layout in `keys`).

use crate::keys::{index_id, index_time, prefix_end, time_bytes, time_from, trailing_num, Key};
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{IVec, Transactional, Tree};
use statebase_core::store::*;
use statebase_core::{
    ApiKey, Entity, EntityVersion, Erasure, Error, Memory, MemoryRevision, ResourceKind, Result,
    Retention, RetentionPolicy, Session, Timestamp, Trace, Turn, WebhookEndpoint,
};
use std::ops::{Bound, Range};

/// This code's on-disk format; data of a newer one is refused. 2: version bodies may be
/// deltas (statebase-core's codec format 2), which format-1 code cannot read. 3: entities,
/// which format-2 code would leave behind when it deletes their session.
pub const FORMAT_VERSION: u64 = 4;

type TxResult<T> = std::result::Result<T, ConflictableTransactionError<Error>>;

fn abort<T>(e: Error) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

fn storage(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::backend(e)
}

fn corrupt(what: &str) -> Error {
    Error::backend(format!("corrupt record: {what}"))
}

/// A session as stored.
#[derive(Serialize, Deserialize)]
struct SessionValue {
    session: Session,
    revision: u64,
}

#[derive(Serialize, Deserialize)]
struct MemoryValue {
    memory: Memory,
    dedupe_key: String,
    has_embedding: bool,
}

fn to_json(v: &impl Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(storage)
}

fn from_json<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(storage)
}

fn encode_session(r: &SessionRecord) -> Result<Vec<u8>> {
    to_json(&SessionValue {
        session: r.session.clone(),
        revision: r.revision,
    })
}

fn decode_session(bytes: &[u8]) -> Result<SessionRecord> {
    let v: SessionValue = from_json(bytes)?;
    Ok(SessionRecord {
        session: v.session,
        revision: v.revision,
    })
}

fn encode_memory(r: &MemoryRecord) -> Result<Vec<u8>> {
    let json = to_json(&MemoryValue {
        memory: r.memory.clone(),
        dedupe_key: r.dedupe_key.clone(),
        has_embedding: r.embedding.is_some(),
    })?;
    let mut out = (json.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&json);
    for x in r.embedding.iter().flatten() {
        out.extend_from_slice(&x.to_le_bytes());
    }
    Ok(out)
}

fn decode_memory(bytes: &[u8]) -> Result<MemoryRecord> {
    let len = bytes
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| corrupt("memory length"))? as usize;
    let json = bytes.get(4..4 + len).ok_or_else(|| corrupt("memory"))?;
    let v: MemoryValue = from_json(json)?;
    let vector = bytes[4 + len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let mut memory = v.memory;
    memory.vector_available = v.has_embedding;
    Ok(MemoryRecord {
        memory,
        dedupe_key: v.dedupe_key,
        embedding: v.has_embedding.then_some(vector),
    })
}

// ----- keys of each record -----

fn session_key(tenant: &str, id: &str) -> Vec<u8> {
    Key::new(b'S').str(tenant).raw(id).done()
}

fn memory_key(tenant: &str, id: &str) -> Vec<u8> {
    Key::new(b'M').str(tenant).raw(id).done()
}

fn dedupe_key(tenant: &str, key: &str) -> Vec<u8> {
    Key::new(b'D').str(tenant).raw(key).done()
}

/// The last feed position given out.
const FEED_COUNTER: &[u8] = b"P";

fn trace_key(tenant: &str, id: &str) -> Vec<u8> {
    Key::new(b'T').str(tenant).raw(id).done()
}

fn turn_id_key(tenant: &str, id: &str) -> Vec<u8> {
    Key::new(b'U').str(tenant).raw(id).done()
}

fn version_key(tenant: &str, session: &str, version: u64) -> Vec<u8> {
    Key::new(b'V').str(tenant).str(session).num(version).done()
}

fn turn_key(tenant: &str, session: &str, number: u64) -> Vec<u8> {
    Key::new(b'N').str(tenant).str(session).num(number).done()
}

fn revision_key(tenant: &str, memory: &str, version: u64) -> Vec<u8> {
    Key::new(b'R').str(tenant).str(memory).num(version).done()
}

fn entity_key(tenant: &str, id: &str) -> Vec<u8> {
    Key::new(b'E').str(tenant).raw(id).done()
}

fn entity_name_key(tenant: &str, e: &Entity) -> Vec<u8> {
    Key::new(b'I')
        .str(tenant)
        .str(&e.session_id)
        .str(&e.entity_type)
        .raw(&e.entity_id)
        .done()
}

fn entity_version_key(tenant: &str, entity: &str, version: u64) -> Vec<u8> {
    Key::new(b'A').str(tenant).str(entity).num(version).done()
}

/// An index key: its kind, the tenant, the owner it is listed under (agent, user, session,
/// type, tag or action; none for the tenant-wide lists), the time, the id.
fn index_key(kind: u8, tenant: &str, owner: Option<&str>, at: Timestamp, id: &str) -> Vec<u8> {
    let key = Key::new(kind).str(tenant);
    let key = match owner {
        Some(o) => key.str(o),
        None => key,
    };
    key.time(at).raw(id).done()
}

/// The index keys of a session.
fn session_index(tenant: &str, s: &Session) -> Vec<Vec<u8>> {
    let key = |kind, owner| index_key(kind, tenant, owner, s.created_at, &s.id);
    let mut keys = vec![
        key(b's', None),
        key(b'a', Some(&s.agent_id)),
        expiry_key(tenant, s),
    ];
    keys.extend(s.user_id.as_deref().map(|u| key(b'u', Some(u))));
    keys
}

fn expiry_key(tenant: &str, s: &Session) -> Vec<u8> {
    Key::new(b'e')
        .time(s.ttl_expires_at)
        .str(tenant)
        .raw(&s.id)
        .done()
}

/// The index keys of a memory.
fn memory_index(tenant: &str, m: &Memory) -> Vec<Vec<u8>> {
    let key = |kind, owner| index_key(kind, tenant, owner, m.created_at, &m.id);
    let mut keys = vec![key(b'm', None), key(b'y', Some(&m.memory_type))];
    keys.extend(m.session_id.as_deref().map(|s| key(b'n', Some(s))));
    keys.extend(m.user_id.as_deref().map(|u| key(b'o', Some(u))));
    keys.extend(m.tags.iter().map(|t| key(b'g', Some(t))));
    keys
}

/// The index keys of an entity.
fn entity_index(tenant: &str, e: &Entity) -> [Vec<u8>; 3] {
    let key = |kind, owner| index_key(kind, tenant, owner, e.created_at, &e.id);
    [
        key(b'i', None),
        key(b'j', Some(&e.session_id)),
        key(b'k', Some(&e.entity_type)),
    ]
}

/// The index keys of a trace.
fn trace_index(tenant: &str, t: &Trace) -> Vec<Vec<u8>> {
    let key = |kind, owner| index_key(kind, tenant, owner, t.timestamp, &t.id);
    let mut keys = vec![key(b't', None), key(b'c', Some(&t.action))];
    keys.extend(t.session_id.as_deref().map(|s| key(b'x', Some(s))));
    keys
}

/// A newest-first walk over one index prefix, from a cursor and a time window.
struct Walk {
    prefix: Vec<u8>,
    after: Option<Cursor>,
    created_after: Option<Timestamp>,
    created_before: Option<Timestamp>,
}

impl Walk {
    fn new(prefix: Vec<u8>) -> Self {
        Self {
            prefix,
            after: None,
            created_after: None,
            created_before: None,
        }
    }

    /// Ids newest first; `keep` decides on each and stops the walk at `limit` kept.
    fn run<T>(
        &self,
        index: &Tree,
        limit: usize,
        mut keep: impl FnMut(String) -> Result<Option<T>>,
    ) -> Result<Vec<T>> {
        let mut upper = prefix_end(&self.prefix);
        if let Some(c) = &self.after {
            let mut k = self.prefix.clone();
            k.extend_from_slice(&time_bytes(c.at));
            k.extend_from_slice(c.id.as_bytes());
            upper = upper.min(k);
        }
        if let Some(before) = self.created_before {
            let mut k = self.prefix.clone();
            k.extend_from_slice(&time_bytes(before));
            upper = upper.min(k);
        }
        let range = (Bound::Included(self.prefix.clone()), Bound::Excluded(upper));
        let mut out = Vec::new();
        for item in index.range(range).rev() {
            if out.len() >= limit {
                break;
            }
            let (key, _) = item.map_err(storage)?;
            let at = index_time(&key, self.prefix.len()).ok_or_else(|| corrupt("index time"))?;
            if self.created_after.is_some_and(|a| at <= a) {
                break;
            }
            let id = index_id(&key, self.prefix.len()).ok_or_else(|| corrupt("index id"))?;
            if let Some(v) = keep(id)? {
                out.push(v);
            }
        }
        Ok(out)
    }
}

/// The three trees of one database.
#[derive(Debug, Clone)]
pub struct Trees {
    pub db: sled::Db,
    records: Tree,
    log: Tree,
    index: Tree,
}

impl Trees {
    /// Opens the trees, refusing data of a newer format and marking new data with ours.
    pub fn open(db: sled::Db) -> std::result::Result<Self, crate::SledError> {
        let trees = Self {
            records: db.open_tree("records")?,
            log: db.open_tree("log")?,
            index: db.open_tree("index")?,
            db,
        };
        match trees.records.get(b"F")? {
            Some(v) => {
                let found = trailing_num(&v).ok_or(crate::SledError::Corrupt("format version"))?;
                if found > FORMAT_VERSION {
                    return Err(crate::SledError::NewerFormat {
                        found,
                        supported: FORMAT_VERSION,
                    });
                }
                // Format 1 data is format 2 data without deltas yet, format 2 is format 3
                // without entities, format 3 keeps the server's records as `Q` strings.
                if found < FORMAT_VERSION {
                    trees.move_server_records()?;
                    trees.records.insert(b"F", &FORMAT_VERSION.to_be_bytes())?;
                    trees.db.flush()?;
                }
            }
            None => {
                trees.records.insert(b"F", &FORMAT_VERSION.to_be_bytes())?;
                trees.db.flush()?;
            }
        }
        Ok(trees)
    }

    fn transact<T>(
        &self,
        f: impl Fn(&TransactionalTree, &TransactionalTree, &TransactionalTree) -> TxResult<T>,
    ) -> Result<T> {
        (&self.records, &self.log, &self.index)
            .transaction(|(r, l, i)| f(r, l, i))
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => storage(e),
            })
    }

    // ----- sessions -----

    pub fn session(&self, tenant: &str, id: &str) -> Result<Option<SessionRecord>> {
        self.records
            .get(session_key(tenant, id))
            .map_err(storage)?
            .map(|v| decode_session(&v))
            .transpose()
    }

    pub fn create_session(&self, tenant: &str, new: &NewSession) -> Result<()> {
        let s = &new.record.session;
        let value = encode_session(&new.record)?;
        self.transact(|r, l, i| {
            let key = session_key(tenant, &s.id);
            if r.get(&key)?.is_some() {
                return abort(Error::backend(format!(
                    "session id {} already exists",
                    s.id
                )));
            }
            r.insert(key, value.as_slice())?;
            for k in session_index(tenant, s) {
                i.insert(k, &[])?;
            }
            put_version(l, tenant, &s.id, &new.initial)?;
            put_trace(r, i, tenant, &new.trace)
        })
    }

    pub fn list_sessions(&self, tenant: &str, q: &SessionQuery) -> Result<Vec<SessionRecord>> {
        let prefix = match (&q.agent_id, &q.user_id) {
            (Some(a), _) => Key::new(b'a').str(tenant).str(a).done(),
            (None, Some(u)) => Key::new(b'u').str(tenant).str(u).done(),
            (None, None) => Key::new(b's').str(tenant).done(),
        };
        let walk = Walk {
            after: q.after.clone(),
            created_after: q.created_after,
            created_before: q.created_before,
            ..Walk::new(prefix)
        };
        walk.run(&self.index, q.limit, |id| {
            let Some(rec) = self.session(tenant, &id)? else {
                return Ok(None);
            };
            Ok(q.matches(&rec.session).then_some(rec))
        })
    }

    pub fn update_session(&self, tenant: &str, u: &SessionUpdate) -> Result<SessionRecord> {
        let metadata = u.metadata.clone();
        self.transact(|r, _, i| {
            let mut rec = tx_session(r, tenant, &u.session_id)?;
            if rec.revision != u.expected_revision {
                return abort(Error::Conflict {
                    expected: u.expected_revision,
                    actual: rec.revision,
                });
            }
            i.remove(expiry_key(tenant, &rec.session))?;
            rec.revision += 1;
            rec.session.metadata = metadata.clone();
            rec.session.ttl_expires_at = u.ttl_expires_at;
            rec.session.updated_at = u.updated_at;
            i.insert(expiry_key(tenant, &rec.session), &[])?;
            put_session(r, tenant, &rec)?;
            put_trace(r, i, tenant, &u.trace)?;
            Ok(rec)
        })
    }

    pub fn append_version(&self, tenant: &str, a: &AppendVersion) -> Result<SessionRecord> {
        self.transact(|r, l, i| {
            let mut rec = tx_session(r, tenant, &a.session_id)?;
            apply_version(l, r, i, tenant, &mut rec, a)?;
            put_session(r, tenant, &rec)?;
            Ok(rec)
        })
    }

    pub fn versions(
        &self,
        tenant: &str,
        id: &str,
        range: Range<u64>,
    ) -> Result<Vec<VersionRecord>> {
        let (start, end) = (
            version_key(tenant, id, range.start),
            version_key(tenant, id, range.end),
        );
        let mut out = Vec::new();
        for item in self.log.range(start..end) {
            let (key, value) = item.map_err(storage)?;
            out.push(VersionRecord {
                version: trailing_num(&key).ok_or_else(|| corrupt("version key"))?,
                created_at: time_from(&value).ok_or_else(|| corrupt("version time"))?,
                body: value[8..].to_vec(),
            });
        }
        Ok(out)
    }

    pub fn delete_session(&self, tenant: &str, id: &str, trace: &Trace) -> Result<SessionRecord> {
        loop {
            let mut gone = Removal::default();
            let Some(rec) = self.gather_session(tenant, id, &mut gone)? else {
                return Err(Error::not_found(ResourceKind::Session, id));
            };
            let result = self.transact(|r, l, i| {
                gone.apply(r, l, i)?;
                put_trace(r, i, tenant, trace)
            });
            match result {
                // Changed between the scan and the transaction: gather again.
                Err(Error::Conflict { .. }) => continue,
                other => return other.map(|()| rec),
            }
        }
    }

    pub fn prune_versions(
        &self,
        tenant: &str,
        session_id: &str,
        before: u64,
        trace: &Trace,
    ) -> Result<u64> {
        let from = Key::new(b'V').str(tenant).str(session_id).done();
        let to = version_key(tenant, session_id, before);
        let keys: Vec<IVec> = self
            .log
            .range(from..to)
            .keys()
            .collect::<std::result::Result<_, _>>()
            .map_err(storage)?;
        self.transact(|r, l, i| {
            tx_session(r, tenant, session_id)?;
            for k in &keys {
                l.remove(k)?;
            }
            if !keys.is_empty() {
                put_trace(r, i, tenant, trace)?;
            }
            Ok(keys.len() as u64)
        })
    }

    pub fn prune_turns(
        &self,
        tenant: &str,
        session_id: &str,
        before: Timestamp,
        trace: &Trace,
    ) -> Result<u64> {
        // Turns are logged in time order: the first young one ends the old ones.
        let prefix = Key::new(b'N').str(tenant).str(session_id).done();
        let mut gone = Vec::new();
        for item in self.log.scan_prefix(&prefix) {
            let (key, value) = item.map_err(storage)?;
            let turn: Turn = from_json(&value)?;
            if turn.created_at >= before {
                break;
            }
            gone.push((key, turn_id_key(tenant, &turn.id)));
        }
        self.transact(|r, l, i| {
            tx_session(r, tenant, session_id)?;
            for (log_key, id_key) in &gone {
                l.remove(log_key)?;
                r.remove(id_key.as_slice())?;
            }
            if !gone.is_empty() {
                put_trace(r, i, tenant, trace)?;
            }
            Ok(gone.len() as u64)
        })
    }

    pub fn put_retention(
        &self,
        tenant: &str,
        session_id: Option<&str>,
        policy: Option<&Retention>,
        trace: Option<&Trace>,
    ) -> Result<()> {
        let key = retention_key(tenant, session_id.unwrap_or(""));
        let value = policy.map(to_json).transpose()?;
        self.transact(|r, _, i| {
            if let Some(id) = session_id {
                tx_session(r, tenant, id)?;
            }
            match &value {
                Some(v) => r.insert(key.as_slice(), v.as_slice())?,
                None => r.remove(key.as_slice())?,
            };
            match trace {
                Some(t) => put_trace(r, i, tenant, t),
                None => Ok(()),
            }
        })
    }

    pub fn retention(&self, tenant: &str, session_id: Option<&str>) -> Result<Option<Retention>> {
        let key = retention_key(tenant, session_id.unwrap_or(""));
        let found = self.records.get(key).map_err(storage)?;
        found.map(|v| from_json(&v)).transpose()
    }

    /// The policies in key order: each tenant's together, its own (`""`) first.
    pub fn retention_policies(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<RetentionPolicy>> {
        let from = match after {
            Some((t, s)) => Bound::Excluded(retention_key(t, s)),
            None => Bound::Included(vec![b'Y']),
        };
        let to = Bound::Excluded(prefix_end(b"Y"));
        let mut out = Vec::new();
        for item in self.records.range::<Vec<u8>, _>((from, to)).take(limit) {
            let (key, value) = item.map_err(storage)?;
            let tenant = key_tenant(&key).ok_or_else(|| corrupt("retention key"))?;
            let session = String::from_utf8(key[5 + tenant.len()..].to_vec())
                .map_err(|_| corrupt("retention key"))?;
            out.push(RetentionPolicy {
                tenant,
                session_id: Some(session).filter(|s| !s.is_empty()),
                retention: from_json(&value)?,
            });
        }
        Ok(out)
    }

    /// Deletes the tenant's traces from before `before` with their index keys; then the
    /// front of the feed index while it points at traces that are gone.
    pub fn prune_traces(&self, tenant: &str, before: Timestamp, trace: &Trace) -> Result<u64> {
        let prefix = Key::new(b't').str(tenant).done();
        let to = Key::new(b't').str(tenant).time(before).done();
        let mut keys = Vec::new();
        let mut ids = std::collections::HashSet::new();
        for item in self.index.range(prefix.clone()..to) {
            let (key, _) = item.map_err(storage)?;
            let id = index_id(&key, prefix.len()).ok_or_else(|| corrupt("index id"))?;
            if let Some(t) = self.trace(tenant, &id)? {
                keys.push((trace_key(tenant, &id), trace_index(tenant, &t)));
            }
            ids.insert(id);
        }
        let mut feed = Vec::new();
        for item in self.index.range(vec![b'p']..vec![b'q']) {
            let (key, _) = item.map_err(storage)?;
            let (_, t, id) = feed_key_parts(&key).ok_or_else(|| corrupt("feed key"))?;
            let going = t == tenant && ids.contains(&id);
            if !going && self.trace(&t, &id)?.is_some() {
                break;
            }
            feed.push(key);
        }
        self.transact(|r, _, i| {
            for (record, index) in &keys {
                r.remove(record.as_slice())?;
                for k in index {
                    i.remove(k.as_slice())?;
                }
            }
            for k in &feed {
                i.remove(k)?;
            }
            if !keys.is_empty() {
                put_trace(r, i, tenant, trace)?;
            }
            Ok(keys.len() as u64)
        })
    }

    /// Adds the keys of the session and everything it owns to `gone`, with the record that
    /// must be unchanged when they go, and answers it; `None` if there is no such session.
    /// Every write that adds keys under a session bumps its record, so an unchanged record
    /// means the gathered keys are all there are. (Transactions can't scan: gathering comes
    /// first.)
    fn gather_session(
        &self,
        tenant: &str,
        id: &str,
        gone: &mut Removal,
    ) -> Result<Option<SessionRecord>> {
        let key = session_key(tenant, id);
        let Some(before) = self.records.get(&key).map_err(storage)? else {
            return Ok(None);
        };
        let rec = decode_session(&before)?;
        gone.index.extend(session_index(tenant, &rec.session));
        gone.unchanged.push((key.clone(), before));
        gone.records.push(key);
        gone.records.push(retention_key(tenant, id));
        gone.erasure.sessions += 1;
        for prefix in [
            Key::new(b'V').str(tenant).str(id).done(),
            Key::new(b'N').str(tenant).str(id).done(),
        ] {
            for item in self.log.scan_prefix(&prefix) {
                let (key, value) = item.map_err(storage)?;
                if prefix[0] == b'N' {
                    let turn: Turn = from_json(&value)?;
                    gone.records.push(turn_id_key(tenant, &turn.id));
                    gone.erasure.turns += 1;
                } else {
                    gone.erasure.versions += 1;
                }
                gone.log.push(key.to_vec());
            }
        }
        let owned = Key::new(b'n').str(tenant).str(id).done();
        for item in self.index.scan_prefix(&owned) {
            let (key, _) = item.map_err(storage)?;
            let mid = index_id(&key, owned.len()).ok_or_else(|| corrupt("index id"))?;
            self.gather_memory(tenant, &mid, gone)?;
        }
        let entities = Key::new(b'j').str(tenant).str(id).done();
        for item in self.index.scan_prefix(&entities) {
            let (key, _) = item.map_err(storage)?;
            let eid = index_id(&key, entities.len()).ok_or_else(|| corrupt("index id"))?;
            if let Some(e) = self.entity(tenant, &eid)? {
                gone.index.extend(entity_index(tenant, &e));
                gone.records.push(entity_name_key(tenant, &e));
                gone.records.push(entity_key(tenant, &eid));
                gone.erasure.entities += 1;
                let versions = Key::new(b'A').str(tenant).str(&eid).done();
                for item in self.log.scan_prefix(&versions) {
                    gone.log.push(item.map_err(storage)?.0.to_vec());
                }
            }
        }
        Ok(Some(rec))
    }

    /// Adds the keys of the memory and its revisions to `gone`, with its record, which must
    /// be unchanged when they go; answers whether it exists.
    fn gather_memory(&self, tenant: &str, id: &str, gone: &mut Removal) -> Result<bool> {
        let key = memory_key(tenant, id);
        let Some(v) = self.records.get(&key).map_err(storage)? else {
            return Ok(false);
        };
        let m = decode_memory(&v)?;
        gone.index.extend(memory_index(tenant, &m.memory));
        gone.records.push(dedupe_key(tenant, &m.dedupe_key));
        gone.unchanged.push((key.clone(), v));
        gone.records.push(key);
        gone.erasure.memories += 1;
        gone.memories.push(id.to_owned());
        let revisions = Key::new(b'R').str(tenant).str(id).done();
        for item in self.log.scan_prefix(&revisions) {
            gone.log.push(item.map_err(storage)?.0.to_vec());
        }
        Ok(true)
    }

    /// Erases the user's records (see [`SessionLog::erase_user`]) in one transaction, after
    /// gathering their keys; answers the counts. A transaction that finds a gathered record
    /// changed gathers again, and a busy writer could make that last forever: so the
    /// sessions are tombstoned first, in a transaction of their own, which stops every
    /// write to them (see `tx_session`). Killed between the two, the sessions stay
    /// readable but not writable until an erasure runs again.
    pub fn erase_user(&self, tenant: &str, user_id: &str, trace: &Trace) -> Result<Erasure> {
        let sessions = Key::new(b'u').str(tenant).str(user_id).done();
        let mut ids = Vec::new();
        for item in self.index.scan_prefix(&sessions) {
            let (key, _) = item.map_err(storage)?;
            ids.push(index_id(&key, sessions.len()).ok_or_else(|| corrupt("index id"))?);
        }
        self.transact(|r, _, _| {
            for id in &ids {
                r.insert(erased_key(tenant, id), user_id.as_bytes())?;
            }
            Ok(())
        })?;
        loop {
            let mut gone = Removal::default();
            let mut erased = std::collections::BTreeSet::new();
            let sessions = Key::new(b'u').str(tenant).str(user_id).done();
            for item in self.index.scan_prefix(&sessions) {
                let (key, _) = item.map_err(storage)?;
                let id = index_id(&key, sessions.len()).ok_or_else(|| corrupt("index id"))?;
                self.gather_session(tenant, &id, &mut gone)?;
                erased.insert(id);
            }
            let memories = Key::new(b'o').str(tenant).str(user_id).done();
            for item in self.index.scan_prefix(&memories) {
                let (key, _) = item.map_err(storage)?;
                let id = index_id(&key, memories.len()).ok_or_else(|| corrupt("index id"))?;
                if !gone.memories.contains(&id) {
                    self.gather_memory(tenant, &id, &mut gone)?;
                }
            }
            erased.extend(gone.memories.iter().cloned());
            let traces = self.traces_of(tenant, &erased)?;
            gone.erasure.traces = traces.len() as u64;
            for t in &traces {
                gone.records.push(trace_key(tenant, &t.id));
                gone.index.extend(trace_index(tenant, t));
            }
            let mut subjects: Vec<String> = erased.iter().cloned().collect();
            subjects.push(format!("user:{user_id}"));
            let responses = self.responses_naming(tenant, &subjects)?;
            gone.erasure.idempotent_responses = responses.len() as u64;
            for (key, kept) in &responses {
                gone.records.extend(response_keys(key, kept));
            }
            let erasure = gone.erasure;
            let result = self.transact(|r, l, i| {
                gone.apply(r, l, i)?;
                for id in &erased {
                    r.insert(erased_key(tenant, id), user_id.as_bytes())?;
                }
                put_trace(r, i, tenant, &erasure.into_trace(trace.clone()))
            });
            match result {
                Err(Error::Conflict { .. }) => continue,
                other => return other.map(|()| erasure),
            }
        }
    }

    /// The tenant's traces of the sessions and memories `ids`: by the session index, and
    /// for a memory without a session by the memory actions' index.
    fn traces_of(
        &self,
        tenant: &str,
        ids: &std::collections::BTreeSet<String>,
    ) -> Result<Vec<Trace>> {
        let mut found = std::collections::BTreeMap::new();
        let mut walk = |prefix: Vec<u8>, keep: &dyn Fn(&Trace) -> bool| -> Result<()> {
            for item in self.index.scan_prefix(&prefix) {
                let (key, _) = item.map_err(storage)?;
                let id = index_id(&key, prefix.len()).ok_or_else(|| corrupt("index id"))?;
                if let Some(t) = self.trace(tenant, &id)? {
                    if keep(&t) {
                        found.insert(id, t);
                    }
                }
            }
            Ok(())
        };
        for id in ids {
            walk(Key::new(b'x').str(tenant).str(id).done(), &|_| true)?;
        }
        let memory_actions = [
            statebase_core::action::MEMORY_CREATED,
            statebase_core::action::MEMORY_UPDATED,
            statebase_core::action::MEMORY_DELETED,
        ];
        for action in memory_actions {
            let prefix = Key::new(b'c').str(tenant).str(action).done();
            walk(prefix, &|t| {
                t.session_id.is_none() && ids.contains(&t.resource_id)
            })?;
        }
        Ok(found.into_values().collect())
    }

    pub fn count_sessions(
        &self,
        tenant: &str,
        live_at: Timestamp,
        changed_after: Timestamp,
    ) -> Result<SessionCounts> {
        let mut counts = SessionCounts::default();
        let prefix = Key::new(b's').str(tenant).done();
        for key in self.index.scan_prefix(&prefix).keys() {
            let key = key.map_err(storage)?;
            let id = index_id(&key, prefix.len()).ok_or_else(|| corrupt("index id"))?;
            let Some(rec) = self.session(tenant, &id)? else {
                continue;
            };
            let s = &rec.session;
            if !s.is_expired_at(live_at) {
                counts.sessions += 1;
                counts.turns += s.turn_count;
                counts.changed += u64::from(s.updated_at > changed_after);
            }
        }
        Ok(counts)
    }

    pub fn count_memories(&self, tenant: &str) -> Result<u64> {
        self.count_index(b'm', tenant)
    }

    pub fn count_entities(&self, tenant: &str) -> Result<u64> {
        self.count_index(b'i', tenant)
    }

    /// How many keys index `kind` has for the tenant.
    fn count_index(&self, kind: u8, tenant: &str) -> Result<u64> {
        let prefix = Key::new(kind).str(tenant).done();
        let mut n = 0;
        for key in self.index.scan_prefix(prefix).keys() {
            key.map_err(storage)?;
            n += 1;
        }
        Ok(n)
    }

    pub fn trace_activity(&self, tenant: &str, after: Timestamp) -> Result<Vec<(Timestamp, u64)>> {
        let prefix = Key::new(b't').str(tenant).done();
        let mut from = prefix.clone();
        from.extend_from_slice(&time_bytes(after));
        let mut hours: std::collections::BTreeMap<Timestamp, u64> = Default::default();
        for key in self.index.range(from..prefix_end(&prefix)).keys() {
            let key = key.map_err(storage)?;
            let at = index_time(&key, prefix.len()).ok_or_else(|| corrupt("index time"))?;
            if at > after {
                *hours
                    .entry(statebase_core::clock::hour_start(at))
                    .or_default() += 1;
            }
        }
        Ok(hours.into_iter().collect())
    }

    pub fn expired_sessions(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<(String, SessionRecord)>> {
        let mut upto = vec![b'e'];
        upto.extend_from_slice(&time_bytes(now));
        let range = (
            Bound::Included(vec![b'e']),
            Bound::Excluded(prefix_end(&upto)),
        );
        let mut out = Vec::new();
        for item in self.index.range(range) {
            if out.len() >= limit {
                break;
            }
            let (key, _) = item.map_err(storage)?;
            let rest = key.get(9..).ok_or_else(|| corrupt("expiry key"))?;
            let len = rest
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes)
                .ok_or_else(|| corrupt("expiry key"))? as usize;
            let tenant =
                std::str::from_utf8(rest.get(4..4 + len).ok_or_else(|| corrupt("expiry"))?)
                    .map_err(storage)?
                    .to_owned();
            let id = std::str::from_utf8(&rest[4 + len..]).map_err(storage)?;
            if let Some(rec) = self.session(&tenant, id)? {
                out.push((tenant, rec));
            }
        }
        Ok(out)
    }

    // ----- turns -----

    pub fn append_turn(&self, tenant: &str, a: &AppendTurn) -> Result<SessionRecord> {
        let turn_json = to_json(&a.turn)?;
        self.transact(|r, l, i| {
            let mut rec = tx_session(r, tenant, &a.turn.session_id)?;
            let count = rec.session.turn_count;
            if a.turn.turn_number != count + 1 {
                return abort(Error::Conflict {
                    expected: a.turn.turn_number.saturating_sub(1),
                    actual: count,
                });
            }
            if let Some(state) = &a.state {
                apply_version(l, r, i, tenant, &mut rec, state)?;
            }
            let number = a.turn.turn_number;
            put_turn(r, l, tenant, &a.turn, &turn_json)?;
            rec.session.turn_count = number;
            rec.session.updated_at = a.updated_at;
            rec.revision += 1;
            put_session(r, tenant, &rec)?;
            put_trace(r, i, tenant, &a.trace)?;
            Ok(rec)
        })
    }

    pub fn turn(&self, tenant: &str, id: &str) -> Result<Option<Turn>> {
        let Some(pointer) = self.records.get(turn_id_key(tenant, id)).map_err(storage)? else {
            return Ok(None);
        };
        let number = u64::from_be_bytes(
            pointer
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| corrupt("turn pointer"))?,
        );
        let session = std::str::from_utf8(&pointer[8..]).map_err(storage)?;
        self.log
            .get(turn_key(tenant, session, number))
            .map_err(storage)?
            .map(|v| from_json(&v))
            .transpose()
    }

    pub fn list_turns(&self, tenant: &str, session: &str, q: &TurnQuery) -> Result<Vec<Turn>> {
        let prefix = Key::new(b'N').str(tenant).str(session).done();
        let iter: Box<dyn Iterator<Item = sled::Result<(IVec, IVec)>>> = if q.descending {
            let upper = match q.after_turn_number {
                Some(n) => turn_key(tenant, session, n),
                None => prefix_end(&prefix),
            };
            Box::new(self.log.range(prefix..upper).rev())
        } else {
            let lower = match q.after_turn_number {
                Some(n) => Bound::Excluded(turn_key(tenant, session, n)),
                None => Bound::Included(prefix.clone()),
            };
            Box::new(
                self.log
                    .range((lower, Bound::Excluded(prefix_end(&prefix)))),
            )
        };
        iter.take(q.limit)
            .map(|item| from_json(&item.map_err(storage)?.1))
            .collect()
    }

    // ----- memories -----

    pub fn memory(&self, tenant: &str, id: &str) -> Result<Option<MemoryRecord>> {
        self.records
            .get(memory_key(tenant, id))
            .map_err(storage)?
            .map(|v| decode_memory(&v))
            .transpose()
    }

    pub fn insert_memory(&self, tenant: &str, new: &NewMemory) -> Result<Option<MemoryRecord>> {
        let m = &new.record.memory;
        let value = encode_memory(&new.record)?;
        let revision = to_json(&MemoryRevision::of(m))?;
        self.transact(|r, l, i| {
            if let Some(existing) = r.get(dedupe_key(tenant, &new.record.dedupe_key))? {
                let id = std::str::from_utf8(&existing).map_err(|e| abort_now(storage(e)))?;
                let found = r
                    .get(memory_key(tenant, id))?
                    .ok_or_else(|| abort_now(corrupt("dedupe")))?;
                return decode_memory(&found).map(Some).map_err(abort_now);
            }
            if let Some(sid) = &m.session_id {
                let mut rec = tx_session(r, tenant, sid)?;
                rec.session.memory_count += 1;
                rec.revision += 1;
                put_session(r, tenant, &rec)?;
            }
            put_memory(r, i, tenant, &new.record, &value)?;
            l.insert(revision_key(tenant, &m.id, m.version), revision.as_slice())?;
            put_trace(r, i, tenant, &new.trace)?;
            Ok(None)
        })
    }

    pub fn update_memory(&self, tenant: &str, u: &MemoryUpdate) -> Result<MemoryRecord> {
        let m = &u.record.memory;
        let value = encode_memory(&u.record)?;
        let revision = to_json(&MemoryRevision::of(m))?;
        self.transact(|r, l, i| {
            let old = match r.get(memory_key(tenant, &m.id))? {
                Some(v) => decode_memory(&v).map_err(abort_now)?,
                None => return abort(Error::not_found(ResourceKind::Memory, &m.id)),
            };
            if old.memory.version != u.expected_version {
                return abort(Error::Conflict {
                    expected: u.expected_version,
                    actual: old.memory.version,
                });
            }
            if let Some(other) = r.get(dedupe_key(tenant, &u.record.dedupe_key))? {
                if other.as_ref() != m.id.as_bytes() {
                    return abort(Error::DuplicateContent {
                        other: String::from_utf8_lossy(&other).into_owned(),
                    });
                }
            }
            r.remove(dedupe_key(tenant, &old.dedupe_key))?;
            r.insert(dedupe_key(tenant, &u.record.dedupe_key), m.id.as_bytes())?;
            for k in memory_index(tenant, &old.memory) {
                i.remove(k)?;
            }
            for k in memory_index(tenant, m) {
                i.insert(k, &[])?;
            }
            r.insert(memory_key(tenant, &m.id), value.as_slice())?;
            l.insert(revision_key(tenant, &m.id, m.version), revision.as_slice())?;
            // A new revision key lives under the session: bump it (see delete_session).
            if let Some(sid) = &m.session_id {
                let mut rec = tx_session(r, tenant, sid)?;
                rec.revision += 1;
                put_session(r, tenant, &rec)?;
            }
            put_trace(r, i, tenant, &u.trace)?;
            Ok(u.record.clone())
        })
    }

    pub fn set_embedding(
        &self,
        tenant: &str,
        id: &str,
        version: u64,
        model: &str,
        vector: &[f32],
    ) -> Result<bool> {
        self.transact(|r, _, _| {
            let Some(v) = r.get(memory_key(tenant, id))? else {
                return Ok(false);
            };
            let mut rec = decode_memory(&v).map_err(abort_now)?;
            if rec.memory.version != version {
                return Ok(false);
            }
            rec.memory.embedding_model = Some(model.to_owned());
            rec.embedding = Some(vector.to_vec());
            let value = encode_memory(&rec).map_err(abort_now)?;
            r.insert(memory_key(tenant, id), value)?;
            Ok(true)
        })
    }

    pub fn delete_memory(&self, tenant: &str, id: &str, trace: &Trace) -> Result<MemoryRecord> {
        loop {
            let Some(before) = self.memory(tenant, id)? else {
                return Err(Error::not_found(ResourceKind::Memory, id));
            };
            let revisions: Vec<Vec<u8>> = self
                .log
                .scan_prefix(Key::new(b'R').str(tenant).str(id).done())
                .keys()
                .map(|k| k.map(|k| k.to_vec()).map_err(storage))
                .collect::<Result<_>>()?;
            let result = self.transact(|r, l, i| {
                let current = match r.get(memory_key(tenant, id))? {
                    Some(v) => decode_memory(&v).map_err(abort_now)?,
                    None => return abort(Error::not_found(ResourceKind::Memory, id)),
                };
                // Updated since the scan: it may have a revision we did not gather.
                if current.memory.version != before.memory.version {
                    return abort(Error::Conflict {
                        expected: before.memory.version,
                        actual: current.memory.version,
                    });
                }
                r.remove(memory_key(tenant, id))?;
                r.remove(dedupe_key(tenant, &current.dedupe_key))?;
                for k in &revisions {
                    l.remove(k.as_slice())?;
                }
                for k in memory_index(tenant, &current.memory) {
                    i.remove(k)?;
                }
                if let Some(sid) = &current.memory.session_id {
                    if let Some(v) = r.get(session_key(tenant, sid))? {
                        let mut rec = decode_session(&v).map_err(abort_now)?;
                        rec.session.memory_count = rec.session.memory_count.saturating_sub(1);
                        rec.revision += 1;
                        put_session(r, tenant, &rec)?;
                    }
                }
                put_trace(r, i, tenant, trace)
            });
            match result {
                Err(Error::Conflict { .. }) => continue,
                other => return other.map(|()| before),
            }
        }
    }

    pub fn list_memories(&self, tenant: &str, q: &MemoryQuery) -> Result<Vec<MemoryRecord>> {
        let prefix = match (&q.session_id, &q.user_id, &q.memory_type, q.tags.as_slice()) {
            (Some(s), ..) => Key::new(b'n').str(tenant).str(s).done(),
            (None, Some(u), ..) => Key::new(b'o').str(tenant).str(u).done(),
            (None, None, Some(t), _) => Key::new(b'y').str(tenant).str(t).done(),
            (None, None, None, [tag]) => Key::new(b'g').str(tenant).str(tag).done(),
            _ => Key::new(b'm').str(tenant).done(),
        };
        let walk = Walk {
            after: q.after.clone(),
            ..Walk::new(prefix)
        };
        walk.run(&self.index, q.limit, |id| {
            let Some(rec) = self.memory(tenant, &id)? else {
                return Ok(None);
            };
            Ok(q.matches(&rec.memory).then_some(rec))
        })
    }

    pub fn memory_revisions(&self, tenant: &str, id: &str) -> Result<Vec<MemoryRevision>> {
        self.log
            .scan_prefix(Key::new(b'R').str(tenant).str(id).done())
            .values()
            .map(|v| from_json(&v.map_err(storage)?))
            .collect()
    }

    pub fn scan_memories(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MemoryRecord>> {
        let prefix = Key::new(b'M').str(tenant).done();
        let lower = match after {
            Some(id) => Bound::Excluded(memory_key(tenant, id)),
            None => Bound::Included(prefix.clone()),
        };
        self.records
            .range((lower, Bound::Excluded(prefix_end(&prefix))))
            .take(limit)
            .map(|item| decode_memory(&item.map_err(storage)?.1))
            .collect()
    }

    // ----- API keys -----

    // ----- entities -----

    pub fn entity(&self, tenant: &str, id: &str) -> Result<Option<Entity>> {
        self.records
            .get(entity_key(tenant, id))
            .map_err(storage)?
            .map(|v| from_json(&v))
            .transpose()
    }

    pub fn insert_entity(&self, tenant: &str, new: &NewEntity) -> Result<Option<Entity>> {
        let e = &new.entity;
        let value = to_json(e)?;
        let version = to_json(&EntityVersion::of(e))?;
        self.transact(|r, l, i| {
            if let Some(existing) = r.get(entity_name_key(tenant, e))? {
                let id = std::str::from_utf8(&existing).map_err(|e| abort_now(storage(e)))?;
                let found = r
                    .get(entity_key(tenant, id))?
                    .ok_or_else(|| abort_now(corrupt("entity name")))?;
                return from_json(&found).map(Some).map_err(abort_now);
            }
            // New keys under the session: bump it (see delete_session).
            let mut rec = tx_session(r, tenant, &e.session_id)?;
            rec.revision += 1;
            put_session(r, tenant, &rec)?;
            put_entity(r, i, tenant, e, &value)?;
            l.insert(
                entity_version_key(tenant, &e.id, e.version),
                version.as_slice(),
            )?;
            put_trace(r, i, tenant, &new.trace)?;
            Ok(None)
        })
    }

    pub fn update_entity(&self, tenant: &str, u: &EntityUpdate) -> Result<Entity> {
        let e = &u.entity;
        let value = to_json(e)?;
        let version = to_json(&EntityVersion::of(e))?;
        self.transact(|r, l, i| {
            let old: Entity = match r.get(entity_key(tenant, &e.id))? {
                Some(v) => from_json(&v).map_err(abort_now)?,
                None => return abort(Error::not_found(ResourceKind::Entity, &e.id)),
            };
            if old.version != u.expected_version {
                return abort(Error::Conflict {
                    expected: u.expected_version,
                    actual: old.version,
                });
            }
            r.insert(entity_key(tenant, &e.id), value.as_slice())?;
            l.insert(
                entity_version_key(tenant, &e.id, e.version),
                version.as_slice(),
            )?;
            // A new version key lives under the session: bump it (see delete_session).
            let mut rec = tx_session(r, tenant, &e.session_id)?;
            rec.revision += 1;
            put_session(r, tenant, &rec)?;
            put_trace(r, i, tenant, &u.trace)?;
            Ok(e.clone())
        })
    }

    pub fn delete_entity(&self, tenant: &str, id: &str, trace: &Trace) -> Result<Entity> {
        loop {
            let Some(before) = self.entity(tenant, id)? else {
                return Err(Error::not_found(ResourceKind::Entity, id));
            };
            let versions: Vec<Vec<u8>> = self
                .log
                .scan_prefix(Key::new(b'A').str(tenant).str(id).done())
                .keys()
                .map(|k| k.map(|k| k.to_vec()).map_err(storage))
                .collect::<Result<_>>()?;
            let result = self.transact(|r, l, i| {
                let current: Entity = match r.get(entity_key(tenant, id))? {
                    Some(v) => from_json(&v).map_err(abort_now)?,
                    None => return abort(Error::not_found(ResourceKind::Entity, id)),
                };
                // Updated since the scan: it may have a version we did not gather.
                if current.version != before.version {
                    return abort(Error::Conflict {
                        expected: before.version,
                        actual: current.version,
                    });
                }
                r.remove(entity_key(tenant, id))?;
                r.remove(entity_name_key(tenant, &current))?;
                for k in &versions {
                    l.remove(k.as_slice())?;
                }
                for k in entity_index(tenant, &current) {
                    i.remove(k)?;
                }
                put_trace(r, i, tenant, trace)
            });
            match result {
                Err(Error::Conflict { .. }) => continue,
                other => return other.map(|()| before),
            }
        }
    }

    pub fn list_entities(&self, tenant: &str, q: &EntityQuery) -> Result<Vec<Entity>> {
        let prefix = match (&q.session_id, &q.entity_type) {
            (Some(s), _) => Key::new(b'j').str(tenant).str(s).done(),
            (None, Some(t)) => Key::new(b'k').str(tenant).str(t).done(),
            (None, None) => Key::new(b'i').str(tenant).done(),
        };
        let walk = Walk {
            after: q.after.clone(),
            ..Walk::new(prefix)
        };
        walk.run(&self.index, q.limit, |id| {
            let Some(e) = self.entity(tenant, &id)? else {
                return Ok(None);
            };
            Ok(q.matches(&e).then_some(e))
        })
    }

    pub fn entity_versions(
        &self,
        tenant: &str,
        id: &str,
        range: Range<u64>,
    ) -> Result<Vec<EntityVersion>> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let from = entity_version_key(tenant, id, range.start);
        let to = entity_version_key(tenant, id, range.end);
        self.log
            .range(from..to)
            .values()
            .map(|v| from_json(&v.map_err(storage)?))
            .collect()
    }

    pub fn put_api_key(&self, key: &ApiKey) -> Result<()> {
        let value = to_json(key)?;
        self.transact(|r, _, _| {
            r.insert(Key::new(b'K').raw(&key.id).done(), value.as_slice())?;
            r.insert(Key::new(b'H').raw(&key.key_hash).done(), key.id.as_bytes())?;
            Ok(())
        })
    }

    pub fn api_key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>> {
        let Some(id) = self
            .records
            .get(Key::new(b'H').raw(hash).done())
            .map_err(storage)?
        else {
            return Ok(None);
        };
        self.api_key(std::str::from_utf8(&id).map_err(storage)?)
    }

    pub fn api_key(&self, id: &str) -> Result<Option<ApiKey>> {
        self.records
            .get(Key::new(b'K').raw(id).done())
            .map_err(storage)?
            .map(|v| from_json(&v))
            .transpose()
    }

    pub fn list_api_keys(&self, tenant: Option<&str>) -> Result<Vec<ApiKey>> {
        let mut keys: Vec<ApiKey> = self
            .records
            .scan_prefix([b'K'])
            .values()
            .map(|v| from_json(&v.map_err(storage)?))
            .collect::<Result<_>>()?;
        keys.retain(|k| tenant.is_none_or(|t| k.tenant == t));
        keys.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(keys)
    }

    // ----- traces -----

    pub fn trace(&self, tenant: &str, id: &str) -> Result<Option<Trace>> {
        self.records
            .get(trace_key(tenant, id))
            .map_err(storage)?
            .map(|v| from_json(&v))
            .transpose()
    }

    pub fn trace_feed_end(&self) -> Result<u64> {
        let feed = Key::new(b'p').done()..Key::new(b'q').done();
        match self.index.range(feed).next_back() {
            Some(entry) => {
                let (key, _) = entry.map_err(storage)?;
                let (position, _, _) =
                    feed_key_parts(&key).ok_or_else(|| Error::backend("a malformed feed key"))?;
                Ok(position)
            }
            None => Ok(0),
        }
    }

    pub fn trace_feed(&self, after: u64, limit: usize) -> Result<Vec<FeedEntry>> {
        let from = Key::new(b'p').num(after.saturating_add(1)).done();
        let to = Key::new(b'q').done();
        let mut out = Vec::new();
        for entry in self.index.range(from..to) {
            if out.len() == limit {
                break;
            }
            let (key, _) = entry.map_err(storage)?;
            let (position, tenant, id) =
                feed_key_parts(&key).ok_or_else(|| Error::backend("a malformed feed key"))?;
            if let Some(trace) = self.trace(&tenant, &id)? {
                out.push(FeedEntry {
                    position,
                    tenant,
                    trace,
                });
            }
        }
        Ok(out)
    }

    // ----- import: archived records as given, with no trace of the import -----

    pub fn import_session(&self, tenant: &str, a: &SessionArchive) -> Result<bool> {
        let s = &a.record.session;
        let value = encode_session(&a.record)?;
        let turns: Vec<Vec<u8>> = a.turns.iter().map(to_json).collect::<Result<_>>()?;
        let memories: Vec<MemoryImport> = a
            .memories
            .iter()
            .map(MemoryImport::encode)
            .collect::<Result<_>>()?;
        let entities: Vec<(Vec<u8>, Vec<Vec<u8>>)> = a
            .entities
            .iter()
            .map(|e| {
                Ok((
                    to_json(&e.entity)?,
                    e.versions.iter().map(to_json).collect::<Result<_>>()?,
                ))
            })
            .collect::<Result<_>>()?;
        self.transact(|r, l, i| {
            let key = session_key(tenant, &s.id);
            if r.get(&key)?.is_some() || is_erased(r, tenant, &s.id)? {
                return Ok(false);
            }
            r.insert(key, value.as_slice())?;
            for k in session_index(tenant, s) {
                i.insert(k, &[])?;
            }
            for v in &a.versions {
                put_version(l, tenant, &s.id, v)?;
            }
            for (turn, json) in a.turns.iter().zip(&turns) {
                put_turn(r, l, tenant, turn, json)?;
            }
            for m in &memories {
                if !m.put(r, l, i, tenant)? {
                    let id = &m.archive.record.memory.id;
                    return abort(Error::backend(format!("memory id {id} already exists")));
                }
            }
            for (e, (value, versions)) in a.entities.iter().zip(&entities) {
                let entity = &e.entity;
                if r.get(entity_key(tenant, &entity.id))?.is_some() {
                    let id = &entity.id;
                    return abort(Error::backend(format!("entity id {id} already exists")));
                }
                put_entity(r, i, tenant, entity, value)?;
                for (v, json) in e.versions.iter().zip(versions) {
                    l.insert(
                        entity_version_key(tenant, &entity.id, v.version),
                        json.as_slice(),
                    )?;
                }
            }
            Ok(true)
        })
    }

    pub fn import_memory(&self, tenant: &str, a: &MemoryArchive) -> Result<bool> {
        let m = MemoryImport::encode(a)?;
        self.transact(|r, l, i| m.put(r, l, i, tenant))
    }

    /// Inserts the traces the tenant lacks, kept out of the feed; how many.
    pub fn import_traces(&self, tenant: &str, traces: &[Trace]) -> Result<u64> {
        self.transact(|r, _, i| {
            let mut inserted = 0;
            for t in traces {
                let of_erased = match &t.session_id {
                    Some(s) => is_erased(r, tenant, s)?,
                    None => false,
                } || is_erased(r, tenant, &t.resource_id)?;
                if !of_erased && r.get(trace_key(tenant, &t.id))?.is_none() {
                    put_trace_record(r, i, tenant, t)?;
                    inserted += 1;
                }
            }
            Ok(inserted)
        })
    }

    /// Every tenant with a session, memory or trace: one seek per tenant and kind.
    pub fn tenants(&self) -> Result<Vec<String>> {
        let mut tenants = std::collections::BTreeSet::new();
        for kind in [b'S', b'M', b'T'] {
            let mut from = Key::new(kind).done();
            let end = prefix_end(&from);
            while let Some(entry) = self.records.range(from.clone()..end.clone()).next() {
                let (key, _) = entry.map_err(storage)?;
                let tenant = key_tenant(&key).ok_or_else(|| corrupt("record key"))?;
                from = prefix_end(&Key::new(kind).str(&tenant).done());
                tenants.insert(tenant);
            }
        }
        Ok(tenants.into_iter().collect())
    }

    // ----- the server's records -----

    pub fn put_webhook(&self, e: &WebhookEndpoint) -> Result<()> {
        self.records
            .insert(webhook_key(&e.id), to_json(e)?)
            .map_err(storage)?;
        Ok(())
    }

    pub fn webhook(&self, tenant: &str, id: &str) -> Result<Option<WebhookEndpoint>> {
        let found = self.records.get(webhook_key(id)).map_err(storage)?;
        let endpoint: Option<WebhookEndpoint> = found.map(|v| from_json(&v)).transpose()?;
        Ok(endpoint.filter(|e| e.tenant == tenant))
    }

    pub fn list_webhooks(&self, tenant: Option<&str>) -> Result<Vec<WebhookEndpoint>> {
        let mut all: Vec<WebhookEndpoint> = self
            .records
            .scan_prefix([b'W'])
            .values()
            .map(|v| from_json(&v.map_err(storage)?))
            .collect::<Result<_>>()?;
        all.retain(|e| tenant.is_none_or(|t| e.tenant == t));
        all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(all)
    }

    pub fn delete_webhook(&self, tenant: &str, id: &str) -> Result<()> {
        if self.webhook(tenant, id)?.is_none() {
            return Err(Error::not_found(ResourceKind::Webhook, id));
        }
        // Deliveries are written only while the endpoint exists (checked in their
        // transaction), so once it is gone the scan below sees them all. Those a crash
        // leaves between the two are not listed, and pruned.
        self.records.remove(webhook_key(id)).map_err(storage)?;
        let prefix = Key::new(b'L').str(id).done();
        let mut batch = sled::Batch::default();
        for key in self.records.scan_prefix(&prefix).keys() {
            batch.remove(key.map_err(storage)?);
        }
        self.records.apply_batch(batch).map_err(storage)
    }

    pub fn put_deliveries(&self, deliveries: &[DeliveryRecord], cursor: Option<u64>) -> Result<()> {
        let encoded: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> = deliveries
            .iter()
            .map(|d| {
                (
                    webhook_key(&d.endpoint_id),
                    delivery_key(d),
                    encode_delivery(d),
                )
            })
            .collect();
        self.transact(|r, _, _| {
            for (endpoint, key, value) in &encoded {
                if r.get(endpoint)?.is_some() {
                    r.insert(key.as_slice(), value.as_slice())?;
                }
            }
            if let Some(c) = cursor {
                r.insert(b"C", &c.to_be_bytes())?;
            }
            Ok(())
        })
    }

    pub fn delivery_cursor(&self) -> Result<u64> {
        match self.records.get(b"C").map_err(storage)? {
            Some(v) => trailing_num(&v).ok_or_else(|| corrupt("delivery cursor")),
            None => Ok(0),
        }
    }

    pub fn deliveries(
        &self,
        endpoint_id: Option<&str>,
        owed_only: bool,
    ) -> Result<Vec<DeliveryRecord>> {
        let prefix = match endpoint_id {
            Some(e) => Key::new(b'L').str(e).done(),
            None => Key::new(b'L').done(),
        };
        let mut out = Vec::new();
        for d in self.all_deliveries(prefix) {
            let (d, endpoint_exists) = d?;
            if endpoint_exists && (!owed_only || d.done_at.is_none()) {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// The deliveries under `prefix`, each with whether its endpoint exists.
    fn all_deliveries(
        &self,
        prefix: Vec<u8>,
    ) -> impl Iterator<Item = Result<(DeliveryRecord, bool)>> + '_ {
        let mut checked: Option<(String, bool)> = None;
        self.records.scan_prefix(prefix).map(move |entry| {
            let (key, value) = entry.map_err(storage)?;
            let d = decode_delivery(&key, &value).ok_or_else(|| corrupt("webhook delivery"))?;
            let exists = match &checked {
                Some((id, exists)) if *id == d.endpoint_id => *exists,
                _ => {
                    let exists = self
                        .records
                        .contains_key(webhook_key(&d.endpoint_id))
                        .map_err(storage)?;
                    checked = Some((d.endpoint_id.clone(), exists));
                    exists
                }
            };
            Ok((d, exists))
        })
    }

    pub fn prune_deliveries(&self, before: Timestamp) -> Result<u64> {
        let mut batch = sled::Batch::default();
        let mut count = 0;
        for d in self.all_deliveries(Key::new(b'L').done()) {
            let (d, endpoint_exists) = d?;
            if !endpoint_exists || d.done_at.is_some_and(|at| at < before) {
                batch.remove(delivery_key(&d));
                count += 1;
            }
        }
        self.records.apply_batch(batch).map_err(storage)?;
        Ok(count)
    }

    pub fn idempotent_response(&self, key: &str) -> Result<Option<IdempotentResponse>> {
        let Some(v) = self.records.get(idempotent_key(key)).map_err(storage)? else {
            return Ok(None);
        };
        let at = time_from(&v).ok_or_else(|| corrupt("idempotent response"))?;
        let named = self.response_subjects(key)?;
        Ok(Some(IdempotentResponse {
            key: key.to_owned(),
            tenant: named.tenant,
            subjects: named.subjects,
            at,
            body: v[8..].to_vec(),
        }))
    }

    /// The `G` record of a kept response; empty for one kept before there were any.
    fn response_subjects(&self, key: &str) -> Result<ResponseSubjects> {
        match self
            .records
            .get(response_subjects_key(key))
            .map_err(storage)?
        {
            Some(v) => from_json(&v),
            None => Ok(ResponseSubjects::default()),
        }
    }

    /// Keeps the response with its subjects in one transaction, replacing one under the
    /// same key; not one that names an erased session or memory (written after it went).
    pub fn put_idempotent_response(&self, kept: &IdempotentResponse) -> Result<()> {
        let mut value = time_bytes(kept.at).to_vec();
        value.extend_from_slice(&kept.body);
        let named = ResponseSubjects {
            tenant: kept.tenant.clone(),
            subjects: kept.subjects.clone(),
        };
        let json = to_json(&named)?;
        self.transact(|r, _, _| {
            for s in &named.subjects {
                if is_erased(r, &named.tenant, s)? {
                    return Ok(());
                }
            }
            if let Some(old) = r.get(response_subjects_key(&kept.key))? {
                let old: ResponseSubjects = from_json(&old).map_err(abort_now)?;
                for k in response_keys(&kept.key, &old) {
                    r.remove(k)?;
                }
            }
            r.insert(idempotent_key(&kept.key), value.as_slice())?;
            r.insert(response_subjects_key(&kept.key), json.as_slice())?;
            for s in &named.subjects {
                r.insert(response_by_subject_key(&named.tenant, s, &kept.key), &[])?;
            }
            Ok(())
        })
    }

    /// The tenant's kept responses naming any of `subjects`, by key.
    fn responses_naming(
        &self,
        tenant: &str,
        subjects: &[String],
    ) -> Result<std::collections::BTreeMap<String, ResponseSubjects>> {
        let mut found = std::collections::BTreeMap::new();
        for subject in subjects {
            let prefix = Key::new(b'O').str(tenant).str(subject).done();
            for key in self.records.scan_prefix(&prefix).keys() {
                let key = key.map_err(storage)?;
                let key = String::from_utf8(key[prefix.len()..].to_vec())
                    .map_err(|_| corrupt("response key"))?;
                let named = self.response_subjects(&key)?;
                found.insert(key, named);
            }
        }
        Ok(found)
    }

    pub fn prune_idempotent_responses(&self, before: Timestamp) -> Result<u64> {
        let mut batch = sled::Batch::default();
        let mut count = 0;
        for entry in self.records.scan_prefix([b'J']) {
            let (key, value) = entry.map_err(storage)?;
            if time_from(&value).is_some_and(|at| at < before) {
                let id =
                    String::from_utf8(key[1..].to_vec()).map_err(|_| corrupt("response key"))?;
                for k in response_keys(&id, &self.response_subjects(&id)?) {
                    batch.remove(k);
                }
                count += 1;
            }
        }
        self.records.apply_batch(batch).map_err(storage)?;
        Ok(count)
    }

    /// Moves the server's records of format 3 (`Q` strings: `endpoint/{len}:{tenant}/{id}`,
    /// `pending/` and `done/{endpoint}/{position}`, `cursor`; idempotency keys) to their own
    /// keys, in one batch.
    fn move_server_records(&self) -> std::result::Result<(), crate::SledError> {
        #[derive(Deserialize)]
        struct OldDelivery {
            delivered_at: Option<Timestamp>,
            next_attempt_at: Timestamp,
        }
        #[derive(Deserialize)]
        struct OldResponse {
            at: Timestamp,
        }
        let bad = || crate::SledError::Corrupt("a server record of format 3");
        let mut batch = sled::Batch::default();
        for space in ["webhooks", "idempotency"] {
            let prefix = Key::new(b'Q').str(space).done();
            for entry in self.records.scan_prefix(&prefix) {
                let (k, v) = entry?;
                let key = std::str::from_utf8(&k[prefix.len()..]).map_err(|_| bad())?;
                batch.remove(k.clone());
                if space == "idempotency" {
                    let old: OldResponse = serde_json::from_slice(&v).map_err(|_| bad())?;
                    let mut value = time_bytes(old.at).to_vec();
                    value.extend_from_slice(&v);
                    batch.insert(idempotent_key(key), value);
                } else if key == "cursor" {
                    let position: u64 = serde_json::from_slice(&v).map_err(|_| bad())?;
                    batch.insert(b"C".to_vec(), position.to_be_bytes().to_vec());
                } else if key.starts_with("endpoint/") {
                    let e: WebhookEndpoint = serde_json::from_slice(&v).map_err(|_| bad())?;
                    batch.insert(webhook_key(&e.id), v);
                } else {
                    let (state, rest) = key.split_once('/').ok_or_else(bad)?;
                    let (endpoint_id, position) = rest.rsplit_once('/').ok_or_else(bad)?;
                    let done_at = match state {
                        "pending" => None,
                        _ => {
                            let old: OldDelivery = serde_json::from_slice(&v).map_err(|_| bad())?;
                            Some(old.delivered_at.unwrap_or(old.next_attempt_at))
                        }
                    };
                    let d = DeliveryRecord {
                        endpoint_id: endpoint_id.to_owned(),
                        position: position.parse().map_err(|_| bad())?,
                        done_at,
                        body: v.to_vec(),
                    };
                    batch.insert(delivery_key(&d), encode_delivery(&d));
                }
            }
        }
        self.records.apply_batch(batch)?;
        Ok(())
    }

    pub fn list_traces(&self, tenant: &str, q: &TraceQuery) -> Result<Vec<Trace>> {
        let prefix = match (&q.session_id, &q.action) {
            (Some(s), _) => Key::new(b'x').str(tenant).str(s).done(),
            (None, Some(a)) => Key::new(b'c').str(tenant).str(a).done(),
            (None, None) => Key::new(b't').str(tenant).done(),
        };
        let walk = Walk {
            after: q.after.clone(),
            created_after: q.created_after,
            created_before: q.created_before,
            ..Walk::new(prefix)
        };
        walk.run(&self.index, q.limit, |id| {
            let Some(t) = self.trace(tenant, &id)? else {
                return Ok(None);
            };
            Ok(q.matches(&t).then_some(t))
        })
    }
}

fn webhook_key(id: &str) -> Vec<u8> {
    Key::new(b'W').raw(id).done()
}

fn delivery_key(d: &DeliveryRecord) -> Vec<u8> {
    Key::new(b'L').str(&d.endpoint_id).num(d.position).done()
}

fn idempotent_key(key: &str) -> Vec<u8> {
    Key::new(b'J').raw(key).done()
}

fn encode_delivery(d: &DeliveryRecord) -> Vec<u8> {
    let mut value = match d.done_at {
        Some(at) => [&[1u8][..], &time_bytes(at)].concat(),
        None => vec![0],
    };
    value.extend_from_slice(&d.body);
    value
}

fn decode_delivery(key: &[u8], value: &[u8]) -> Option<DeliveryRecord> {
    let len = u32::from_be_bytes(key.get(1..5)?.try_into().ok()?) as usize;
    let endpoint_id = String::from_utf8(key.get(5..5 + len)?.to_vec()).ok()?;
    let position = trailing_num(key)?;
    let (done_at, body) = match value.first()? {
        0 => (None, &value[1..]),
        _ => (Some(time_from(value.get(1..9)?)?), value.get(9..)?),
    };
    Some(DeliveryRecord {
        endpoint_id,
        position,
        done_at,
        body: body.to_vec(),
    })
}

/// (position, tenant, trace id) of a `p` index key.
fn feed_key_parts(key: &[u8]) -> Option<(u64, String, String)> {
    let position = u64::from_be_bytes(key.get(1..9)?.try_into().ok()?);
    let len = u32::from_be_bytes(key.get(9..13)?.try_into().ok()?) as usize;
    let tenant = String::from_utf8(key.get(13..13 + len)?.to_vec()).ok()?;
    let id = String::from_utf8(key.get(13 + len..)?.to_vec()).ok()?;
    Some((position, tenant, id))
}

/// The tenant of a `records` key: the string after its kind byte.
fn key_tenant(key: &[u8]) -> Option<String> {
    let len = u32::from_be_bytes(key.get(1..5)?.try_into().ok()?) as usize;
    String::from_utf8(key.get(5..5 + len)?.to_vec()).ok()
}

/// Keys to remove in one transaction, with the records that must then be as gathered.
#[derive(Debug, Default)]
struct Removal {
    records: Vec<Vec<u8>>,
    log: Vec<Vec<u8>>,
    index: Vec<Vec<u8>>,
    unchanged: Vec<(Vec<u8>, IVec)>,
    /// The ids of the memories gathered.
    memories: Vec<String>,
    /// What the keys hold.
    erasure: Erasure,
}

impl Removal {
    /// Removes the keys; a `Conflict` abort if a record changed since it was gathered.
    fn apply(
        &self,
        r: &TransactionalTree,
        l: &TransactionalTree,
        i: &TransactionalTree,
    ) -> TxResult<()> {
        for (key, value) in &self.unchanged {
            if r.get(key)?.as_ref() != Some(value) {
                return abort(Error::Conflict {
                    expected: 0,
                    actual: 1,
                });
            }
        }
        for k in &self.records {
            r.remove(k.as_slice())?;
        }
        for k in &self.log {
            l.remove(k.as_slice())?;
        }
        for k in &self.index {
            i.remove(k.as_slice())?;
        }
        Ok(())
    }
}

/// A retention policy: the tenant's own (`session` `""`) or a session's.
fn retention_key(tenant: &str, session: &str) -> Vec<u8> {
    Key::new(b'Y').str(tenant).raw(session).done()
}

/// The tombstone of an erased session or memory.
fn erased_key(tenant: &str, id: &str) -> Vec<u8> {
    Key::new(b'X').str(tenant).raw(id).done()
}

/// True if the tenant's session or memory `id` was erased.
fn is_erased(r: &TransactionalTree, tenant: &str, id: &str) -> TxResult<bool> {
    Ok(r.get(erased_key(tenant, id))?.is_some())
}

/// Who a kept response belongs to and what it names (its `G` record).
#[derive(Debug, Default, Serialize, Deserialize)]
struct ResponseSubjects {
    tenant: String,
    subjects: Vec<String>,
}

fn response_subjects_key(key: &str) -> Vec<u8> {
    Key::new(b'G').raw(key).done()
}

fn response_by_subject_key(tenant: &str, subject: &str, key: &str) -> Vec<u8> {
    Key::new(b'O').str(tenant).str(subject).raw(key).done()
}

/// Every key a kept response has: its own, its subjects' and theirs.
fn response_keys(key: &str, kept: &ResponseSubjects) -> Vec<Vec<u8>> {
    let mut keys = vec![idempotent_key(key), response_subjects_key(key)];
    keys.extend(
        kept.subjects
            .iter()
            .map(|s| response_by_subject_key(&kept.tenant, s, key)),
    );
    keys
}

fn abort_now(e: Error) -> ConflictableTransactionError<Error> {
    ConflictableTransactionError::Abort(e)
}

/// The session inside a transaction, or an abort with `NotFound`; also for a session
/// being erased (tombstoned, not yet removed: see [`Trees::erase_user`]), so that writes
/// to it stop.
fn tx_session(r: &TransactionalTree, tenant: &str, id: &str) -> TxResult<SessionRecord> {
    match r.get(session_key(tenant, id))? {
        Some(v) if !is_erased(r, tenant, id)? => decode_session(&v).map_err(abort_now),
        _ => abort(Error::not_found(ResourceKind::Session, id)),
    }
}

fn put_session(r: &TransactionalTree, tenant: &str, rec: &SessionRecord) -> TxResult<()> {
    let value = encode_session(rec).map_err(abort_now)?;
    r.insert(session_key(tenant, &rec.session.id), value)?;
    Ok(())
}

fn put_version(
    l: &TransactionalTree,
    tenant: &str,
    session: &str,
    v: &VersionRecord,
) -> TxResult<()> {
    let mut value = time_bytes(v.created_at).to_vec();
    value.extend_from_slice(&v.body);
    l.insert(version_key(tenant, session, v.version), value)?;
    Ok(())
}

/// Checks and applies a version append to `rec` (the caller writes `rec` back).
fn apply_version(
    l: &TransactionalTree,
    r: &TransactionalTree,
    i: &TransactionalTree,
    tenant: &str,
    rec: &mut SessionRecord,
    a: &AppendVersion,
) -> TxResult<()> {
    if rec.session.version != a.expected_version {
        return abort(Error::Conflict {
            expected: a.expected_version,
            actual: rec.session.version,
        });
    }
    put_version(l, tenant, &a.session_id, &a.version)?;
    rec.session.version = a.version.version;
    rec.session.state = a.state.clone();
    rec.session.updated_at = a.updated_at;
    rec.revision += 1;
    put_trace(r, i, tenant, &a.trace)
}

fn put_trace(
    r: &TransactionalTree,
    i: &TransactionalTree,
    tenant: &str,
    t: &Trace,
) -> TxResult<()> {
    put_trace_record(r, i, tenant, t)?;
    // Every trace-writing transaction reads and writes the feed counter, so they conflict
    // and commit one at a time: positions follow commit order.
    let position = r
        .get(FEED_COUNTER)?
        .as_deref()
        .and_then(trailing_num)
        .unwrap_or(0)
        + 1;
    r.insert(FEED_COUNTER, &position.to_be_bytes())?;
    i.insert(
        Key::new(b'p').num(position).str(tenant).raw(&t.id).done(),
        &[],
    )?;
    Ok(())
}

/// The trace and its index keys, with no feed position.
fn put_trace_record(
    r: &TransactionalTree,
    i: &TransactionalTree,
    tenant: &str,
    t: &Trace,
) -> TxResult<()> {
    let value = to_json(t).map_err(abort_now)?;
    r.insert(trace_key(tenant, &t.id), value)?;
    for k in trace_index(tenant, t) {
        i.insert(k, &[])?;
    }
    Ok(())
}

/// The turn (`json` is its JSON) and the pointer to it from its id.
fn put_turn(
    r: &TransactionalTree,
    l: &TransactionalTree,
    tenant: &str,
    turn: &Turn,
    json: &[u8],
) -> TxResult<()> {
    let number = turn.turn_number;
    l.insert(turn_key(tenant, &turn.session_id, number), json)?;
    let mut pointer = number.to_be_bytes().to_vec();
    pointer.extend_from_slice(turn.session_id.as_bytes());
    r.insert(turn_id_key(tenant, &turn.id), pointer)?;
    Ok(())
}

/// The memory (`value` is its encoding), its dedupe key and its index keys.
fn put_memory(
    r: &TransactionalTree,
    i: &TransactionalTree,
    tenant: &str,
    record: &MemoryRecord,
    value: &[u8],
) -> TxResult<()> {
    let m = &record.memory;
    r.insert(memory_key(tenant, &m.id), value)?;
    r.insert(dedupe_key(tenant, &record.dedupe_key), m.id.as_bytes())?;
    for k in memory_index(tenant, m) {
        i.insert(k, &[])?;
    }
    Ok(())
}

/// The entity (`value` is its JSON), its name and its index keys.
fn put_entity(
    r: &TransactionalTree,
    i: &TransactionalTree,
    tenant: &str,
    e: &Entity,
    value: &[u8],
) -> TxResult<()> {
    r.insert(entity_key(tenant, &e.id), value)?;
    r.insert(entity_name_key(tenant, e), e.id.as_bytes())?;
    for k in entity_index(tenant, e) {
        i.insert(k, &[])?;
    }
    Ok(())
}

/// An archived memory, encoded outside the transaction.
struct MemoryImport<'a> {
    archive: &'a MemoryArchive,
    value: Vec<u8>,
    revisions: Vec<Vec<u8>>,
}

impl<'a> MemoryImport<'a> {
    fn encode(archive: &'a MemoryArchive) -> Result<Self> {
        Ok(Self {
            archive,
            value: encode_memory(&archive.record)?,
            revisions: archive
                .revisions
                .iter()
                .map(to_json)
                .collect::<Result<_>>()?,
        })
    }

    /// Writes it and returns true; false if its id is taken; `DuplicateContent` if
    /// another memory has its dedupe key.
    fn put(
        &self,
        r: &TransactionalTree,
        l: &TransactionalTree,
        i: &TransactionalTree,
        tenant: &str,
    ) -> TxResult<bool> {
        let record = &self.archive.record;
        let id = &record.memory.id;
        if r.get(memory_key(tenant, id))?.is_some() || is_erased(r, tenant, id)? {
            return Ok(false);
        }
        if let Some(other) = r.get(dedupe_key(tenant, &record.dedupe_key))? {
            let other = String::from_utf8_lossy(&other).into_owned();
            return abort(Error::DuplicateContent { other });
        }
        put_memory(r, i, tenant, record, &self.value)?;
        for (rev, value) in self.archive.revisions.iter().zip(&self.revisions) {
            l.insert(revision_key(tenant, id, rev.version), value.as_slice())?;
        }
        Ok(true)
    }
}
