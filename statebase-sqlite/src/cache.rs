//! Sessions read recently, kept in memory so that reading them again needs no read
//! connection: agents read their session and its latest turns at every turn.
//!
//! The cache never answers with a row older than the file's. The writer connection's update
//! hook reports every row of `sessions` a transaction changes, as it changes it: the row's entry is dropped and the row is held until the transaction is over, and
//! while it is held no read may put it back. A read puts what it found only if no
//! transaction that changed the cache's table ended while it read (an epoch counts them),
//! so it cannot put back what a commit replaced. A session's turns are kept with it: adding
//! a turn changes the session's row (its turn count) in the same transaction, and turns
//! never change once written.
//!
//! A write may also stage a row as it wrote it, after its last change to the row: the
//! staged value is kept once the transaction commits, unless the row changed again first,
//! so the read that usually follows a write finds it.
//!
//! Writes by other processes are not seen: see
//! [`SqliteOptions::session_cache_bytes`](crate::SqliteOptions::session_cache_bytes).

use parking_lot::Mutex;
use statebase_core::store::SessionRecord;
use statebase_core::{Object, Turn};
use std::collections::{HashMap, HashSet};

/// The caches of one store, told by its writer what each transaction changes.
#[derive(Debug)]
pub struct Caches {
    pub sessions: RowCache<CachedSession>,
}

impl Caches {
    /// A sessions cache of at most these many bytes of stored data; 0 keeps nothing.
    pub fn new(sessions: usize) -> Self {
        Self {
            sessions: RowCache::new(sessions),
        }
    }

    /// Called by the update hook: the transaction in progress changes `row` of `table`.
    pub fn changing(&self, table: &str, row: i64) {
        if table == "sessions" {
            self.sessions.changing(row);
        }
    }

    /// Called by the writer once its transaction committed or rolled back, before it
    /// answers the writes: a committed one's staged rows are kept.
    pub fn transaction_over(&self, committed: bool) {
        self.sessions.transaction_over(committed);
    }
}

/// A (tenant, id) key.
type Key = (String, String);

fn key(tenant: &str, id: &str) -> Key {
    (tenant.to_owned(), id.to_owned())
}

/// The cache of one table's rows, by tenant and id.
#[derive(Debug)]
pub struct RowCache<V> {
    budget: usize,
    inner: Mutex<Inner<V>>,
}

#[derive(Debug)]
struct Inner<V> {
    entries: HashMap<Key, Entry<V>>,
    /// row id -> key, to drop an entry by the row the hook reports.
    keys: HashMap<i64, Key>,
    /// Rows changed by the transaction in progress.
    held: HashSet<i64>,
    /// Values the transaction in progress wrote, by row: kept if it commits.
    staged: HashMap<i64, (Key, Entry<V>)>,
    /// Transactions that changed the table, ended so far.
    epoch: u64,
    bytes: usize,
}

#[derive(Debug)]
struct Entry<V> {
    row: i64,
    value: V,
    /// Bytes of stored data the value holds.
    size: usize,
}

/// Where a read that missed stands: it may fill the entry only if nothing changed since.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

impl<V> RowCache<V> {
    /// A cache of at most `budget` bytes of stored data; 0 keeps nothing.
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                keys: HashMap::new(),
                held: HashSet::new(),
                staged: HashMap::new(),
                epoch: 0,
                bytes: 0,
            }),
        }
    }

    /// Whether the cache keeps anything at all.
    pub fn is_on(&self) -> bool {
        self.budget > 0
    }

    fn fits(&self, size: usize) -> bool {
        self.is_on() && size <= self.budget
    }

    /// `read` of the cached value, or a ticket to fill it with what the file holds.
    fn lookup<R>(&self, tenant: &str, id: &str, read: impl FnOnce(&V) -> R) -> Result<R, Ticket> {
        let inner = self.inner.lock();
        // A borrowed key would need a custom map; the clone is smaller than the value's.
        match inner.entries.get(&key(tenant, id)) {
            Some(entry) => Ok(read(&entry.value)),
            None => Err(Ticket(inner.epoch)),
        }
    }

    /// Keeps `value`, read from row `row` after `ticket` was given, unless a transaction
    /// changed the table since or is changing this row now.
    pub fn fill(&self, ticket: Ticket, tenant: &str, id: &str, row: i64, value: V, size: usize) {
        let mut inner = self.inner.lock();
        if inner.epoch != ticket.0 || inner.held.contains(&row) || !self.fits(size) {
            return;
        }
        inner.insert(self.budget, key(tenant, id), Entry { row, value, size });
    }

    /// Called by a write, in the writer's transaction, after its last change to row `row`:
    /// `value` is the row as the write left it, kept if the transaction commits and nothing
    /// changes the row before.
    pub fn stage(&self, tenant: &str, id: &str, row: i64, value: V, size: usize) {
        if self.fits(size) {
            let entry = Entry { row, value, size };
            self.inner
                .lock()
                .staged
                .insert(row, (key(tenant, id), entry));
        }
    }

    /// Called by the update hook: the transaction in progress changes row `row`.
    pub fn changing(&self, row: i64) {
        let mut inner = self.inner.lock();
        inner.held.insert(row);
        inner.staged.remove(&row);
        if let Some(key) = inner.keys.remove(&row) {
            if let Some(old) = inner.entries.remove(&key) {
                inner.bytes -= old.size;
            }
        }
    }

    /// Drops the entry of `id`, if any.
    pub fn forget(&self, tenant: &str, id: &str) {
        let mut inner = self.inner.lock();
        if let Some(old) = inner.entries.remove(&key(tenant, id)) {
            inner.keys.remove(&old.row);
            inner.bytes -= old.size;
        }
    }

    /// Called once the transaction in progress committed or rolled back.
    fn transaction_over(&self, committed: bool) {
        let mut inner = self.inner.lock();
        if !inner.held.is_empty() {
            inner.held.clear();
            inner.epoch += 1;
        }
        let staged = std::mem::take(&mut inner.staged);
        if committed {
            for (key, entry) in staged.into_values() {
                inner.insert(self.budget, key, entry);
            }
        }
    }
}

impl<V> Inner<V> {
    /// Keeps `entry`, which fits in `budget`.
    fn insert(&mut self, budget: usize, key: Key, entry: Entry<V>) {
        if self.bytes + entry.size > budget {
            // Simpler than least-recently-used, and rare: the hot rows come back at once.
            // What the transaction in progress holds and staged stays.
            self.entries.clear();
            self.keys.clear();
            self.bytes = 0;
        }
        self.keys.insert(entry.row, key.clone());
        self.bytes += entry.size;
        if let Some(old) = self.entries.insert(key, entry) {
            self.bytes -= old.size;
        }
    }
}

/// A cached session and, once read, its latest turns.
#[derive(Debug)]
pub struct CachedSession {
    record: SessionRecord,
    turns: Option<LatestTurns>,
}

/// A session's latest turns, newest first, as a list of `limit` asked for them, each with
/// the bytes of its stored body.
#[derive(Debug, Clone)]
struct LatestTurns {
    limit: usize,
    turns: Vec<(Turn, usize)>,
}

/// The bytes of these turns' stored bodies.
fn bytes_of(turns: &[(Turn, usize)]) -> usize {
    turns.iter().map(|(_, bytes)| bytes).sum()
}

/// What a write to a cached session builds on: the cached copy's revision, its state (when
/// the write sets none) and its latest turns.
#[derive(Debug)]
pub struct Before {
    revision: u64,
    state: Option<Object>,
    turns: Option<LatestTurns>,
}

impl From<SessionRecord> for CachedSession {
    fn from(record: SessionRecord) -> Self {
        Self {
            record,
            turns: None,
        }
    }
}

impl CachedSession {
    /// The session as a write left it, built on `before`: `record` is its row read back
    /// with the state unread, `state` the state the write set and `turn` the turn it added,
    /// with the bytes of its stored body. `None` when the state is unknown.
    pub fn after_write(
        before: Option<Before>,
        mut record: SessionRecord,
        state: Option<Object>,
        turn: Option<(Turn, usize)>,
    ) -> Option<Self> {
        // Each change of the row adds one to its revision: if only this write came after
        // the copy, the copy's state and turns are what it built on.
        let writes = u64::from(state.is_some()) + u64::from(turn.is_some());
        let before = before.filter(|b| b.revision + writes == record.revision);
        let (old_state, old_turns) = before.map_or((None, None), |b| (b.state, b.turns));
        record.session.state = state.or(old_state)?;
        let turns = old_turns.map(|mut latest| {
            if let Some(turn) = turn {
                latest.turns.insert(0, turn);
                latest.turns.truncate(latest.limit);
            }
            latest
        });
        Some(Self { record, turns })
    }

    /// Its state.
    pub fn state(&self) -> &Object {
        &self.record.session.state
    }

    /// The bytes of the stored turns it keeps.
    pub fn turns_size(&self) -> usize {
        self.turns
            .as_ref()
            .map_or(0, |latest| bytes_of(&latest.turns))
    }
}

impl RowCache<CachedSession> {
    /// What a write to the cached session builds on, its state only unless the write sets
    /// one.
    pub fn before_write(&self, tenant: &str, id: &str, sets_state: bool) -> Option<Before> {
        self.lookup(tenant, id, |s| Before {
            revision: s.record.revision,
            state: (!sets_state).then(|| s.record.session.state.clone()),
            turns: s.turns.clone(),
        })
        .ok()
    }

    /// The cached session, or a ticket to fill it.
    pub fn session(&self, tenant: &str, id: &str) -> Result<SessionRecord, Ticket> {
        self.lookup(tenant, id, |s| s.record.clone())
    }

    /// The session's latest `limit` turns, newest first, or a ticket to fill them (`None`
    /// when the session itself is not cached: its turns are kept only with it).
    pub fn turns(&self, tenant: &str, id: &str, limit: usize) -> Result<Vec<Turn>, Option<Ticket>> {
        let inner = self.inner.lock();
        match inner.entries.get(&key(tenant, id)).map(|e| &e.value.turns) {
            Some(Some(latest)) if latest.limit == limit => {
                Ok(latest.turns.iter().map(|(t, _)| t.clone()).collect())
            }
            Some(_) => Err(Some(Ticket(inner.epoch))),
            None => Err(None),
        }
    }

    /// Keeps the session's latest `limit` turns, each with the bytes of its stored body,
    /// read after `ticket` was given, with the session, if it is still cached and no
    /// transaction changed sessions since.
    pub fn fill_turns(
        &self,
        ticket: Ticket,
        tenant: &str,
        id: &str,
        limit: usize,
        turns: &[(Turn, usize)],
    ) {
        let size = bytes_of(turns);
        let mut inner = self.inner.lock();
        if inner.epoch != ticket.0 || inner.bytes + size > self.budget {
            return;
        }
        let Some(entry) = inner.entries.get_mut(&key(tenant, id)) else {
            return;
        };
        let freed = entry.value.turns_size();
        entry.value.turns = Some(LatestTurns {
            limit,
            turns: turns.to_vec(),
        });
        entry.size = entry.size - freed + size;
        inner.bytes = inner.bytes - freed + size;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use statebase_core::Session;

    fn record(id: &str, version: u64) -> SessionRecord {
        let now = chrono::Utc::now();
        SessionRecord {
            session: Session {
                id: id.into(),
                agent_id: "a".into(),
                user_id: None,
                state: Default::default(),
                version,
                metadata: Default::default(),
                memory_count: 0,
                turn_count: 0,
                ttl_expires_at: now,
                created_at: now,
                updated_at: now,
            },
            revision: version,
        }
    }

    fn record_at(version: u64, revision: u64) -> SessionRecord {
        SessionRecord {
            revision,
            ..record("s", version)
        }
    }

    fn turn(n: u64) -> Turn {
        Turn {
            id: format!("turn_{n}"),
            session_id: "s".into(),
            turn_number: n,
            input: Default::default(),
            output: Default::default(),
            reasoning: None,
            metadata: Default::default(),
            state_before: None,
            state_after: None,
            state_version: None,
            created_at: chrono::DateTime::UNIX_EPOCH,
        }
    }

    /// What a write builds on: a cached copy at `revision` of a session of `turns` turns
    /// that keeps its latest 2, of 10 bytes each.
    fn before(revision: u64, turns: u64) -> Before {
        Before {
            revision,
            state: Some(json!({"kept": true}).as_object().unwrap().clone()),
            turns: Some(LatestTurns {
                limit: 2,
                turns: (1..=turns).rev().take(2).map(|n| (turn(n), 10)).collect(),
            }),
        }
    }

    /// Its turns' numbers and bytes.
    fn turns_of(s: &CachedSession) -> (Vec<u64>, usize) {
        let latest = s.turns.as_ref().unwrap();
        let numbers = latest.turns.iter().map(|(t, _)| t.turn_number).collect();
        (numbers, s.turns_size())
    }

    #[test]
    fn a_write_builds_on_the_copy_only_if_nothing_came_between() {
        let state = json!({"new": 1}).as_object().unwrap().clone();
        let kept = before(0, 0).state.unwrap();
        // A state write keeps the turns.
        let s = CachedSession::after_write(
            Some(before(5, 3)),
            record_at(2, 6),
            Some(state.clone()),
            None,
        )
        .unwrap();
        assert_eq!(
            (turns_of(&s), &s.record.session.state),
            ((vec![3, 2], 20), &state)
        );
        // A turn keeps the state and comes first; the oldest goes.
        let after = record_at(1, 6);
        let s = CachedSession::after_write(
            Some(before(5, 3)),
            after.clone(),
            None,
            Some((turn(4), 14)),
        )
        .unwrap();
        assert_eq!(
            (turns_of(&s), &s.record.session.state),
            ((vec![4, 3], 24), &kept)
        );
        // A turn with a state: two changes of the row.
        let s = CachedSession::after_write(
            Some(before(5, 3)),
            record_at(1, 7),
            Some(state.clone()),
            Some((turn(4), 14)),
        )
        .unwrap();
        assert_eq!(
            (turns_of(&s).0, &s.record.session.state),
            (vec![4, 3], &state)
        );
        // Another write came between: no turns, and no state to build on.
        let s = CachedSession::after_write(Some(before(5, 3)), record_at(2, 7), Some(state), None)
            .unwrap();
        assert!(s.turns.is_none());
        assert!(
            CachedSession::after_write(Some(before(4, 3)), after, None, Some((turn(4), 14)))
                .is_none()
        );
        assert!(CachedSession::after_write(None, record("s", 1), None, None).is_none());
        // The first turn of a session.
        let s = CachedSession::after_write(
            Some(before(1, 0)),
            record_at(0, 2),
            None,
            Some((turn(1), 14)),
        )
        .unwrap();
        assert_eq!(turns_of(&s), (vec![1], 14));
    }

    #[test]
    fn a_read_that_overlaps_a_change_does_not_fill() {
        let cache = RowCache::<CachedSession>::new(1 << 20);
        // Read before a transaction that changes the row: too old once it ends.
        let Err(before) = cache.session("t", "s") else {
            panic!("empty cache hit")
        };
        cache.changing(7);
        let Err(during) = cache.session("t", "s") else {
            panic!("held row hit")
        };
        cache.fill(during, "t", "s", 7, record("s", 1).into(), 10);
        assert!(cache.session("t", "s").is_err(), "filled while held");
        cache.transaction_over(true);
        cache.fill(before, "t", "s", 7, record("s", 1).into(), 10);
        cache.fill(during, "t", "s", 7, record("s", 1).into(), 10);
        assert!(cache.session("t", "s").is_err(), "filled across a commit");
        // A read that starts after it fills, and the next change drops the entry.
        let Err(after) = cache.session("t", "s") else {
            panic!("empty cache hit")
        };
        cache.fill(after, "t", "s", 7, record("s", 2).into(), 10);
        assert_eq!(cache.session("t", "s").unwrap().session.version, 2);
        assert!(cache.session("u", "s").is_err(), "another tenant's session");
        cache.changing(7);
        assert!(cache.session("t", "s").is_err());
    }

    #[test]
    fn turns_are_kept_with_their_session_until_it_changes() {
        let cache = RowCache::<CachedSession>::new(1 << 20);
        assert!(
            matches!(cache.turns("t", "s", 10), Err(None)),
            "no session, no turns"
        );
        let Err(ticket) = cache.session("t", "s") else {
            panic!("empty cache hit")
        };
        cache.fill(ticket, "t", "s", 7, record("s", 1).into(), 10);
        let Err(Some(ticket)) = cache.turns("t", "s", 10) else {
            panic!("turns before they were filled")
        };
        cache.fill_turns(ticket, "t", "s", 10, &[(turn(1), 5)]);
        assert_eq!(cache.turns("t", "s", 10).unwrap(), vec![turn(1)]);
        assert!(cache.turns("t", "s", 5).is_err(), "another limit");
        // A turn is added: the session row changes, and turns read before do not fill.
        let Err(Some(old)) = cache.turns("t", "s", 5) else {
            panic!("turns of another limit")
        };
        cache.changing(7);
        assert!(matches!(cache.turns("t", "s", 10), Err(None)));
        cache.transaction_over(true);
        let Err(ticket) = cache.session("t", "s") else {
            panic!("changed session hit")
        };
        cache.fill(ticket, "t", "s", 7, record("s", 2).into(), 10);
        cache.fill_turns(old, "t", "s", 5, &[(turn(1), 5)]);
        assert!(cache.turns("t", "s", 5).is_err(), "filled across a commit");
        assert_eq!(cache.inner.lock().bytes, 10);
        // Turns of another limit replace those kept, and their bytes.
        for (limit, size) in [(10, 4), (5, 3)] {
            let Err(Some(ticket)) = cache.turns("t", "s", limit) else {
                panic!("turns before they were filled")
            };
            cache.fill_turns(ticket, "t", "s", limit, &[(turn(1), size)]);
        }
        assert!(cache.turns("t", "s", 5).is_ok() && cache.turns("t", "s", 10).is_err());
        assert_eq!(cache.inner.lock().bytes, 13);
    }

    #[test]
    fn a_staged_session_is_kept_only_if_its_transaction_commits_with_it() {
        let cache = RowCache::<CachedSession>::new(1 << 20);
        let Err(before) = cache.session("t", "s") else {
            panic!("empty cache hit")
        };
        cache.changing(7);
        cache.stage("t", "s", 7, record("s", 1).into(), 10);
        assert!(cache.session("t", "s").is_err(), "kept before the commit");
        cache.transaction_over(true);
        assert_eq!(cache.session("t", "s").unwrap().session.version, 1);
        cache.fill(before, "t", "s", 7, record("s", 0).into(), 10);
        assert_eq!(
            cache.session("t", "s").unwrap().session.version,
            1,
            "an older read"
        );
        // Rolled back: nothing kept.
        cache.changing(7);
        cache.stage("t", "s", 7, record("s", 2).into(), 10);
        cache.transaction_over(false);
        assert!(cache.session("t", "s").is_err(), "kept after a rollback");
        // Changed again after it was staged: not kept.
        cache.changing(7);
        cache.stage("t", "s", 7, record("s", 3).into(), 10);
        cache.changing(7);
        cache.transaction_over(true);
        assert!(
            cache.session("t", "s").is_err(),
            "kept across a later change"
        );
        assert_eq!(cache.inner.lock().bytes, 0);
    }

    #[test]
    fn starting_over_when_full_keeps_the_rows_held() {
        let cache = RowCache::<CachedSession>::new(25);
        let Err(ticket) = cache.session("t", "held") else {
            panic!("empty cache hit")
        };
        cache.changing(7);
        for (row, id) in ["a", "b", "c"].iter().enumerate() {
            let Err(t) = cache.session("t", id) else {
                panic!("empty cache hit")
            };
            cache.fill(t, "t", id, row as i64, record(id, 1).into(), 10);
        }
        cache.fill(ticket, "t", "held", 7, record("held", 1).into(), 1);
        assert!(cache.session("t", "held").is_err(), "filled while held");
    }

    #[test]
    fn the_budget_is_kept() {
        let cache = RowCache::<CachedSession>::new(25);
        for (row, id) in ["a", "b", "c"].iter().enumerate() {
            let Err(ticket) = cache.session("t", id) else {
                panic!("empty cache hit")
            };
            cache.fill(ticket, "t", id, row as i64, record(id, 1).into(), 10);
        }
        // Two fit; the third started over.
        assert!(cache.session("t", "a").is_err());
        assert!(cache.session("t", "c").is_ok());
        assert!(cache.inner.lock().bytes <= 25);
        let Err(ticket) = cache.session("t", "big") else {
            panic!("empty cache hit")
        };
        cache.fill(ticket, "t", "big", 9, record("big", 1).into(), 26);
        assert!(cache.session("t", "big").is_err());
    }
}
