//! Sessions read or written recently, with their latest turns, kept in memory so that
//! reading them again needs no read connection: agents read their session and its latest
//! turns at every turn.
//!
//! The cache never answers with a session older than the file's. It is fed from two sides:
//! - **Commits.** The writer thread calls [`SessionCache::committed`] for each committed
//!   write, in commit order and before the write is answered, with what the write left:
//!   the session as stored, or only that it changed (its entry goes).
//! - **Reads that missed.** A read takes a [`Ticket`] before it reads the file and may fill
//!   the entry only if no commit was reported since. Fills and commits take one lock, so a
//!   fill either comes before a commit (which then replaces it) or is refused.
//!
//! A session's turns are kept with it, for the `limit` they were asked with: turns never
//! change once written and are numbered from 1, so a session's turn count says which they
//! are.
//!
//! Entries are weighed by the bytes of their JSON and evicted by `quick_cache` (S3-FIFO).
//! Writes by other processes are not seen: see
//! [`SqliteOptions::session_cache_bytes`](crate::SqliteOptions::session_cache_bytes).

use parking_lot::Mutex;
use quick_cache::sync::Cache;
use quick_cache::{Equivalent, Weighter};
use statebase_core::store::SessionRecord;
use statebase_core::Turn;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// What a committed write did to a session.
#[derive(Debug)]
#[allow(clippy::large_enum_variant, reason = "one per write, moved once")]
pub enum Change {
    /// The session as the write stored it, with the turn it added, if any.
    Stored {
        tenant: String,
        record: SessionRecord,
        turn: Option<Turn>,
    },
    /// The session changed (or went) in a way the write did not return.
    Changed { tenant: String, id: String },
}

/// The cache of one store's sessions.
#[derive(Debug)]
pub struct SessionCache {
    /// `None` when the budget is 0.
    entries: Option<Cache<Key, Arc<Entry>, ByWeight>>,
    /// Commits reported so far; held by fills and commits.
    epoch: Mutex<u64>,
}

/// Where a read that missed stands: it may fill the entry only if no commit came since.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

/// A (tenant, id) key.
type Key = (String, String);

/// A key borrowed, to look one up without allocating: hashes as the tuple of `String`s.
struct KeyRef<'a>(&'a str, &'a str);

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
        self.1.hash(state);
    }
}

impl Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.0 == key.0 && self.1 == key.1
    }
}

#[derive(Debug)]
struct Entry {
    record: SessionRecord,
    turns: Option<LatestTurns>,
    /// Bytes of JSON it holds, plus a fixed overhead.
    weight: u64,
}

/// A session's latest turns, newest first, as a list of `limit` asked for them, when the
/// session had `turn_count` turns.
#[derive(Debug, Clone)]
struct LatestTurns {
    limit: usize,
    turn_count: u64,
    turns: Vec<Turn>,
}

#[derive(Debug, Clone)]
struct ByWeight;

impl Weighter<Key, Arc<Entry>> for ByWeight {
    fn weight(&self, _: &Key, entry: &Arc<Entry>) -> u64 {
        entry.weight
    }
}

/// Counts the bytes written to it.
struct Counter(u64);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The bytes of `value`'s JSON.
fn json_bytes(value: &impl serde::Serialize) -> u64 {
    let mut counter = Counter(0);
    // Writing to a counter cannot fail, and our records always serialize.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// What an entry costs beside its JSON: its keys, ids and maps.
const ENTRY_OVERHEAD: u64 = 256;

impl Entry {
    fn new(record: SessionRecord, turns: Option<LatestTurns>) -> Self {
        let s = &record.session;
        let turn_bytes: u64 = turns.iter().flat_map(|l| &l.turns).map(json_bytes).sum();
        let weight = ENTRY_OVERHEAD + json_bytes(&s.state) + json_bytes(&s.metadata) + turn_bytes;
        Self {
            record,
            turns,
            weight,
        }
    }

    /// The latest turns of `record`, which this entry's session became with `turn` added,
    /// if they are known.
    fn turns_after(&self, record: &SessionRecord, turn: Option<Turn>) -> Option<LatestTurns> {
        let mut latest = self.turns.clone()?;
        let count = record.session.turn_count;
        match turn {
            None if count == latest.turn_count => {}
            Some(turn) if turn.turn_number == count && count == latest.turn_count + 1 => {
                latest.turns.insert(0, turn);
                latest.turns.truncate(latest.limit);
                latest.turn_count = count;
            }
            _ => return None,
        }
        Some(latest)
    }
}

impl SessionCache {
    /// A cache of at most `budget` bytes of JSON (with a small overhead per session); 0
    /// keeps nothing.
    pub fn new(budget: usize) -> Self {
        let entries = (budget > 0).then(|| {
            let estimated = (budget / 4096).clamp(16, 1 << 20);
            Cache::with_weighter(estimated, budget as u64, ByWeight)
        });
        Self {
            entries,
            epoch: Mutex::new(0),
        }
    }

    /// Whether it keeps anything: when not, writes need not build their changes.
    pub fn is_on(&self) -> bool {
        self.entries.is_some()
    }

    fn get(&self, tenant: &str, id: &str) -> Option<Arc<Entry>> {
        self.entries.as_ref()?.get(&KeyRef(tenant, id))
    }

    fn ticket(&self) -> Ticket {
        Ticket(*self.epoch.lock())
    }

    /// The cached session, or a ticket to fill it (taken before the file is read).
    pub fn session(&self, tenant: &str, id: &str) -> Result<SessionRecord, Ticket> {
        match self.get(tenant, id) {
            Some(entry) => Ok(entry.record.clone()),
            None => Err(self.ticket()),
        }
    }

    /// Keeps `record`, read after `ticket` was given, unless a commit came since.
    pub fn fill(&self, ticket: Ticket, tenant: &str, record: &SessionRecord) {
        let Some(entries) = &self.entries else { return };
        let epoch = self.epoch.lock();
        if *epoch == ticket.0 {
            let key = (tenant.to_owned(), record.session.id.clone());
            entries.insert(key, Arc::new(Entry::new(record.clone(), None)));
        }
    }

    /// The session's latest `limit` turns, newest first, or a ticket to fill them (`None`
    /// when the session itself is not cached: its turns are kept only with it).
    pub fn turns(&self, tenant: &str, id: &str, limit: usize) -> Result<Vec<Turn>, Option<Ticket>> {
        let Some(entry) = self.get(tenant, id) else {
            return Err(None);
        };
        match &entry.turns {
            Some(latest) if latest.limit == limit => Ok(latest.turns.clone()),
            _ => Err(Some(self.ticket())),
        }
    }

    /// Keeps the session's latest `limit` turns (newest first), read after `ticket` was
    /// given, with the session, if it is still cached, no commit came since, and the turns
    /// are those of its turn count (a turn committed but not yet reported is not).
    pub fn fill_turns(&self, ticket: Ticket, tenant: &str, id: &str, limit: usize, turns: &[Turn]) {
        let Some(entries) = &self.entries else { return };
        let epoch = self.epoch.lock();
        if *epoch != ticket.0 {
            return;
        }
        let Some(entry) = entries.get(&KeyRef(tenant, id)) else {
            return;
        };
        let turn_count = turns.first().map_or(0, |t| t.turn_number);
        if turn_count != entry.record.session.turn_count {
            return;
        }
        let latest = LatestTurns {
            limit,
            turn_count,
            turns: turns.to_vec(),
        };
        let entry = Entry::new(entry.record.clone(), Some(latest));
        entries.insert((tenant.to_owned(), id.to_owned()), Arc::new(entry));
    }

    /// Called by the writer thread, in commit order, for each write that committed, before
    /// it is answered.
    pub fn committed(&self, changes: Vec<Change>) {
        let Some(entries) = &self.entries else { return };
        if changes.is_empty() {
            return;
        }
        let mut epoch = self.epoch.lock();
        *epoch += 1;
        for change in changes {
            match change {
                Change::Stored {
                    tenant,
                    record,
                    turn,
                } => {
                    let key = (tenant, record.session.id.clone());
                    let turns = entries
                        .peek(&KeyRef(&key.0, &key.1))
                        .and_then(|old| old.turns_after(&record, turn));
                    entries.insert(key, Arc::new(Entry::new(record, turns)));
                }
                Change::Changed { tenant, id } => {
                    entries.remove(&KeyRef(&tenant, &id));
                }
            }
        }
    }

    /// Drops the entry of `id`, if any: a write refused against the file says the entry
    /// may be older than it (another process wrote).
    pub fn forget(&self, tenant: &str, id: &str) {
        if let Some(entries) = &self.entries {
            entries.remove(&KeyRef(tenant, id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use statebase_core::Session;

    fn record(id: &str, version: u64, turn_count: u64) -> SessionRecord {
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
                turn_count,
                ttl_expires_at: now,
                created_at: now,
                updated_at: now,
            },
            revision: version + turn_count,
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

    fn stored(record: SessionRecord, turn: Option<Turn>) -> Change {
        Change::Stored {
            tenant: "t".into(),
            record,
            turn,
        }
    }

    fn numbers(turns: Vec<Turn>) -> Vec<u64> {
        turns.iter().map(|t| t.turn_number).collect()
    }

    #[test]
    fn a_read_that_overlaps_a_commit_does_not_fill() {
        let cache = SessionCache::new(1 << 20);
        let Err(before) = cache.session("t", "s") else {
            panic!("empty cache hit")
        };
        // Another write of the tenant's sessions commits while the read runs.
        cache.committed(vec![Change::Changed {
            tenant: "t".into(),
            id: "other".into(),
        }]);
        cache.fill(before, "t", &record("s", 1, 0));
        assert!(cache.session("t", "s").is_err(), "filled across a commit");
        let Err(after) = cache.session("t", "s") else {
            panic!("empty cache hit")
        };
        cache.fill(after, "t", &record("s", 1, 0));
        assert_eq!(cache.session("t", "s").unwrap().session.version, 1);
        assert!(cache.session("u", "s").is_err(), "another tenant's session");
        // A read filled before a commit is replaced by it.
        cache.committed(vec![stored(record("s", 2, 0), None)]);
        assert_eq!(cache.session("t", "s").unwrap().session.version, 2);
        cache.committed(vec![Change::Changed {
            tenant: "t".into(),
            id: "s".into(),
        }]);
        assert!(cache.session("t", "s").is_err(), "changed and kept");
    }

    #[test]
    fn turns_are_kept_while_the_turn_count_says_which_they_are() {
        let cache = SessionCache::new(1 << 20);
        assert!(
            matches!(cache.turns("t", "s", 2), Err(None)),
            "no session, no turns"
        );
        cache.committed(vec![stored(record("s", 0, 3), None)]);
        let Err(Some(ticket)) = cache.turns("t", "s", 2) else {
            panic!("turns before they were filled")
        };
        cache.fill_turns(ticket, "t", "s", 2, &[turn(3), turn(2)]);
        assert_eq!(numbers(cache.turns("t", "s", 2).unwrap()), [3, 2]);
        assert!(cache.turns("t", "s", 5).is_err(), "another limit");
        // A state write keeps them; a turn comes first and the oldest goes.
        cache.committed(vec![stored(record("s", 1, 3), None)]);
        assert_eq!(numbers(cache.turns("t", "s", 2).unwrap()), [3, 2]);
        cache.committed(vec![stored(record("s", 1, 4), Some(turn(4)))]);
        assert_eq!(numbers(cache.turns("t", "s", 2).unwrap()), [4, 3]);
        // A turn this cache did not see (another process): they go.
        cache.committed(vec![stored(record("s", 1, 6), Some(turn(6)))]);
        assert!(matches!(cache.turns("t", "s", 2), Err(Some(_))));
        // Turns read before a commit do not fill.
        let Err(Some(old)) = cache.turns("t", "s", 2) else {
            panic!("turns before they were filled")
        };
        cache.committed(vec![stored(record("s", 1, 7), Some(turn(7)))]);
        cache.fill_turns(old, "t", "s", 2, &[turn(6), turn(5)]);
        assert!(cache.turns("t", "s", 2).is_err(), "filled across a commit");
        // Turns read after a turn committed but before it was reported do not fill either:
        // the report would add that turn again.
        let Err(Some(early)) = cache.turns("t", "s", 2) else {
            panic!("turns before they were filled")
        };
        cache.fill_turns(early, "t", "s", 2, &[turn(8), turn(7)]);
        assert!(
            cache.turns("t", "s", 2).is_err(),
            "filled ahead of the record"
        );
        cache.committed(vec![stored(record("s", 1, 8), Some(turn(8)))]);
        let Err(Some(now)) = cache.turns("t", "s", 2) else {
            panic!("turns before they were filled")
        };
        cache.fill_turns(now, "t", "s", 2, &[turn(8), turn(7)]);
        cache.committed(vec![stored(record("s", 1, 9), Some(turn(9)))]);
        assert_eq!(numbers(cache.turns("t", "s", 2).unwrap()), [9, 8]);
    }

    #[test]
    fn the_budget_is_kept_by_weight() {
        let big = || {
            let mut r = record("x", 1, 0);
            r.session
                .state
                .insert("blob".into(), "x".repeat(10_000).into());
            r
        };
        let cache = SessionCache::new(50_000);
        for i in 0..20 {
            let mut r = big();
            r.session.id = format!("s{i}");
            cache.committed(vec![stored(r, None)]);
        }
        let weight = cache.entries.as_ref().unwrap().weight();
        assert!(weight <= 50_000, "{weight} bytes kept");
        assert!(cache.session("t", "s19").is_ok(), "the newest evicted");
        let off = SessionCache::new(0);
        off.committed(vec![stored(big(), None)]);
        assert!(off.session("t", "x").is_err(), "kept with no budget");
    }
}
