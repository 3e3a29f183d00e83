//! Sessions read recently, and their latest turns, kept in memory so that reading them
//! again needs no read connection: agents read both at every turn.
//!
//! The cache never answers with a session older than the file's. The writer connection's
//! update hook reports every `sessions` row a transaction changes, as it changes it: the
//! row's entry is dropped and the row is held until the transaction is over, and while it is
//! held no read may put it back. A read puts what it found only if no transaction that
//! changed sessions ended while it read (an epoch counts them), so it cannot put back what a
//! commit replaced. A session's turns are kept with it: adding a turn changes the session's
//! row (its turn count) in the same transaction, and turns never change once written.
//!
//! A write may also stage the session as it wrote it, after its last change to the row: the
//! staged session is kept once the transaction commits, unless the row changed again first,
//! so the read that usually follows a write finds it.
//! Writes by other processes are not seen: see
//! [`SqliteOptions::session_cache_bytes`](crate::SqliteOptions::session_cache_bytes).

use parking_lot::Mutex;
use statebase_core::store::SessionRecord;
use statebase_core::Turn;
use std::collections::{HashMap, HashSet};

/// The sessions cache of one store.
#[derive(Debug)]
pub struct SessionCache {
    budget: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<(String, String), Entry>,
    /// row id -> (tenant, id), to drop an entry by the row the hook reports.
    keys: HashMap<i64, (String, String)>,
    /// Rows changed by the transaction in progress.
    held: HashSet<i64>,
    /// Sessions the transaction in progress wrote, by row: kept if it commits.
    staged: HashMap<i64, Staged>,
    /// Transactions that changed sessions, ended so far.
    epoch: u64,
    bytes: usize,
}

/// A cached session.
#[derive(Debug)]
struct Entry {
    row: i64,
    record: SessionRecord,
    /// The latest turns, newest first, as a list of this many asked for them, and the
    /// bytes of their stored bodies.
    turns: Option<(usize, Vec<Turn>, usize)>,
    /// Bytes of stored state, metadata and turns.
    size: usize,
}

/// A session as a write in progress left it.
#[derive(Debug)]
struct Staged {
    key: (String, String),
    record: SessionRecord,
    size: usize,
}

/// Where a read that missed stands: it may fill the entry only if nothing changed since.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

impl SessionCache {
    /// A cache of at most `budget` bytes of stored state, metadata and turns; 0 keeps
    /// nothing.
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            inner: Mutex::default(),
        }
    }

    /// The cached session, or a ticket to fill it with what the file holds.
    pub fn get(&self, tenant: &str, id: &str) -> Result<SessionRecord, Ticket> {
        let inner = self.inner.lock();
        // A borrowed key would need a custom map; the clone is smaller than the record's.
        match inner.entries.get(&(tenant.to_owned(), id.to_owned())) {
            Some(entry) => Ok(entry.record.clone()),
            None => Err(Ticket(inner.epoch)),
        }
    }

    /// The session's latest `limit` turns, newest first, or a ticket to fill them (`None`
    /// when the session itself is not cached: its turns are kept only with it).
    pub fn turns(&self, tenant: &str, id: &str, limit: usize) -> Result<Vec<Turn>, Option<Ticket>> {
        let inner = self.inner.lock();
        match inner.entries.get(&(tenant.to_owned(), id.to_owned())) {
            Some(Entry {
                turns: Some((n, turns, _)),
                ..
            }) if *n == limit => Ok(turns.clone()),
            Some(_) => Err(Some(Ticket(inner.epoch))),
            None => Err(None),
        }
    }

    /// Keeps the session's latest `limit` turns, read after `ticket` was given, with the
    /// session, if it is still cached and no transaction changed sessions since.
    pub fn fill_turns(
        &self,
        ticket: Ticket,
        tenant: &str,
        id: &str,
        limit: usize,
        turns: &[Turn],
        size: usize,
    ) {
        let mut inner = self.inner.lock();
        if inner.epoch != ticket.0 || inner.bytes + size > self.budget {
            return;
        }
        let Some(entry) = inner.entries.get_mut(&(tenant.to_owned(), id.to_owned())) else {
            return;
        };
        let replaced = entry.turns.replace((limit, turns.to_vec(), size));
        let freed = replaced.map_or(0, |(_, _, size)| size);
        entry.size = entry.size - freed + size;
        inner.bytes = inner.bytes - freed + size;
    }

    /// Keeps `record`, read from row `row` after `ticket` was given, unless a transaction
    /// changed sessions since or is changing this one now.
    pub fn fill(
        &self,
        ticket: Ticket,
        tenant: &str,
        row: i64,
        record: &SessionRecord,
        size: usize,
    ) {
        let mut inner = self.inner.lock();
        if inner.epoch != ticket.0 || inner.held.contains(&row) || !self.fits(size) {
            return;
        }
        let key = (tenant.to_owned(), record.session.id.clone());
        inner.insert(self.budget, key, row, record.clone(), size);
    }

    /// Whether the cache keeps anything at all.
    pub fn is_on(&self) -> bool {
        self.budget > 0
    }

    fn fits(&self, size: usize) -> bool {
        self.is_on() && size <= self.budget
    }

    /// Called by a write, in the writer's transaction, after its last change to row `row`:
    /// `record` is the session as the write left it, kept if the transaction commits and
    /// nothing changes the row before.
    pub fn stage(&self, tenant: &str, row: i64, record: SessionRecord, size: usize) {
        if !self.fits(size) {
            return;
        }
        let key = (tenant.to_owned(), record.session.id.clone());
        let staged = Staged { key, record, size };
        self.inner.lock().staged.insert(row, staged);
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

    /// Drops the session's entry, if any.
    pub fn forget(&self, tenant: &str, id: &str) {
        let mut inner = self.inner.lock();
        if let Some(old) = inner.entries.remove(&(tenant.to_owned(), id.to_owned())) {
            inner.keys.remove(&old.row);
            inner.bytes -= old.size;
        }
    }

    /// Called by the writer once its transaction committed or rolled back, before it
    /// answers the writes: a committed one's staged sessions are kept.
    pub fn transaction_over(&self, committed: bool) {
        let mut inner = self.inner.lock();
        if !inner.held.is_empty() {
            inner.held.clear();
            inner.epoch += 1;
        }
        let staged = std::mem::take(&mut inner.staged);
        if committed {
            for (row, s) in staged {
                inner.insert(self.budget, s.key, row, s.record, s.size);
            }
        }
    }
}

impl Inner {
    /// Keeps `record` from row `row`, which fits in `budget`.
    fn insert(
        &mut self,
        budget: usize,
        key: (String, String),
        row: i64,
        record: SessionRecord,
        size: usize,
    ) {
        if self.bytes + size > budget {
            // Simpler than least-recently-used, and rare: the hot sessions come back at once.
            // What the transaction in progress holds and staged stays.
            self.entries.clear();
            self.keys.clear();
            self.bytes = 0;
        }
        self.keys.insert(row, key.clone());
        self.bytes += size;
        let entry = Entry {
            row,
            record,
            turns: None,
            size,
        };
        if let Some(old) = self.entries.insert(key, entry) {
            self.bytes -= old.size;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn a_read_that_overlaps_a_change_does_not_fill() {
        let cache = SessionCache::new(1 << 20);
        // Read before a transaction that changes the row: too old once it ends.
        let Err(before) = cache.get("t", "s") else {
            panic!("empty cache hit")
        };
        cache.changing(7);
        let Err(during) = cache.get("t", "s") else {
            panic!("held row hit")
        };
        cache.fill(during, "t", 7, &record("s", 1), 10);
        assert!(cache.get("t", "s").is_err(), "filled while held");
        cache.transaction_over(true);
        cache.fill(before, "t", 7, &record("s", 1), 10);
        cache.fill(during, "t", 7, &record("s", 1), 10);
        assert!(cache.get("t", "s").is_err(), "filled across a commit");
        // A read that starts after it fills, and the next change drops the entry.
        let Err(after) = cache.get("t", "s") else {
            panic!("empty cache hit")
        };
        cache.fill(after, "t", 7, &record("s", 2), 10);
        assert_eq!(cache.get("t", "s").unwrap().session.version, 2);
        assert!(cache.get("u", "s").is_err(), "another tenant's session");
        cache.changing(7);
        assert!(cache.get("t", "s").is_err());
    }

    #[test]
    fn turns_are_kept_with_their_session_until_it_changes() {
        let cache = SessionCache::new(1 << 20);
        assert!(
            matches!(cache.turns("t", "s", 10), Err(None)),
            "no session, no turns"
        );
        let Err(ticket) = cache.get("t", "s") else {
            panic!("empty cache hit")
        };
        cache.fill(ticket, "t", 7, &record("s", 1), 10);
        let Err(Some(ticket)) = cache.turns("t", "s", 10) else {
            panic!("turns before they were filled")
        };
        cache.fill_turns(ticket, "t", "s", 10, &[], 5);
        assert_eq!(cache.turns("t", "s", 10).unwrap(), vec![]);
        assert!(cache.turns("t", "s", 5).is_err(), "another limit");
        // A turn is added: the session row changes, and turns read before do not fill.
        let Err(Some(old)) = cache.turns("t", "s", 5) else {
            panic!("turns of another limit")
        };
        cache.changing(7);
        assert!(matches!(cache.turns("t", "s", 10), Err(None)));
        cache.transaction_over(true);
        let Err(ticket) = cache.get("t", "s") else {
            panic!("changed session hit")
        };
        cache.fill(ticket, "t", 7, &record("s", 2), 10);
        cache.fill_turns(old, "t", "s", 5, &[], 5);
        assert!(cache.turns("t", "s", 5).is_err(), "filled across a commit");
        assert_eq!(cache.inner.lock().bytes, 10);
        // Turns of another limit replace those kept, and their bytes.
        for (limit, size) in [(10, 4), (5, 3)] {
            let Err(Some(ticket)) = cache.turns("t", "s", limit) else {
                panic!("turns before they were filled")
            };
            cache.fill_turns(ticket, "t", "s", limit, &[], size);
        }
        assert!(cache.turns("t", "s", 5).is_ok() && cache.turns("t", "s", 10).is_err());
        assert_eq!(cache.inner.lock().bytes, 13);
    }

    #[test]
    fn a_staged_session_is_kept_only_if_its_transaction_commits_with_it() {
        let cache = SessionCache::new(1 << 20);
        let Err(before) = cache.get("t", "s") else {
            panic!("empty cache hit")
        };
        cache.changing(7);
        cache.stage("t", 7, record("s", 1), 10);
        assert!(cache.get("t", "s").is_err(), "kept before the commit");
        cache.transaction_over(true);
        assert_eq!(cache.get("t", "s").unwrap().session.version, 1);
        cache.fill(before, "t", 7, &record("s", 0), 10);
        assert_eq!(
            cache.get("t", "s").unwrap().session.version,
            1,
            "an older read"
        );
        // Rolled back: nothing kept.
        cache.changing(7);
        cache.stage("t", 7, record("s", 2), 10);
        cache.transaction_over(false);
        assert!(cache.get("t", "s").is_err(), "kept after a rollback");
        // Changed again after it was staged: not kept.
        cache.changing(7);
        cache.stage("t", 7, record("s", 3), 10);
        cache.changing(7);
        cache.transaction_over(true);
        assert!(cache.get("t", "s").is_err(), "kept across a later change");
        assert_eq!(cache.inner.lock().bytes, 0);
    }

    #[test]
    fn starting_over_when_full_keeps_the_rows_held() {
        let cache = SessionCache::new(25);
        let Err(ticket) = cache.get("t", "held") else {
            panic!("empty cache hit")
        };
        cache.changing(7);
        for (row, id) in ["a", "b", "c"].iter().enumerate() {
            let Err(t) = cache.get("t", id) else {
                panic!("empty cache hit")
            };
            cache.fill(t, "t", row as i64, &record(id, 1), 10);
        }
        cache.fill(ticket, "t", 7, &record("held", 1), 1);
        assert!(cache.get("t", "held").is_err(), "filled while held");
    }

    #[test]
    fn the_budget_is_kept() {
        let cache = SessionCache::new(25);
        for (row, id) in ["a", "b", "c"].iter().enumerate() {
            let Err(ticket) = cache.get("t", id) else {
                panic!("empty cache hit")
            };
            cache.fill(ticket, "t", row as i64, &record(id, 1), 10);
        }
        // Two fit; the third started over.
        assert!(cache.get("t", "a").is_err());
        assert!(cache.get("t", "c").is_ok());
        assert!(cache.inner.lock().bytes <= 25);
        let Err(ticket) = cache.get("t", "big") else {
            panic!("empty cache hit")
        };
        cache.fill(ticket, "t", 9, &record("big", 1), 26);
        assert!(cache.get("t", "big").is_err());
    }
}
