//! The SQLite backend of statebase: every record in one SQLite file (WAL mode, STRICT
//! tables, foreign keys), bundled SQLite so no system library is needed.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use statebase_core::{CreateSession, StateBase};
//! use statebase_sqlite::SqliteStore;
//!
//! let sb = StateBase::new(SqliteStore::open("agents.db")?);
//! let session = sb.create_session(CreateSession::new("support-bot")).await?;
//! # Ok(()) }
//! ```
//!
//! **Concurrency.** One writer thread owns the only write connection, so `database is
//! locked` never reaches a caller; reads run on a pool of read connections on tokio's
//! blocking threads and see every acknowledged write (WAL snapshots).
//!
//! **Cache.** Recently read sessions with their latest turns are kept in memory and are
//! never older than an acknowledged write of this store; see
//! [`SqliteOptions::session_cache_bytes`] for writes by other processes.
//!
//! **Group commit.** Writes that arrive while the writer commits are applied together in
//! the next transaction, each in its own savepoint, under one `COMMIT`: many concurrent
//! agents share one fsync, and a failing write rolls back alone.
//!
//! **Durability** is chosen with [`Durability`]: `Full` (the default) fsyncs the WAL at every
//! commit, so an acknowledged write survives a killed process and a power loss; `Normal`
//! fsyncs only at checkpoints, so an acknowledged write survives a killed process but the
//! last commits may be lost on power loss.
//!
//! **Schema.** Versioned migration scripts run in one transaction and are recorded in
//! `schema_version`; a file written by a newer statebase is refused, untouched.

mod cache;
mod error;
mod schema;
mod sql;
mod writer;

pub use error::SqliteError;
pub use schema::SCHEMA_VERSION;

use async_trait::async_trait;
use cache::{Change, SessionCache};
use parking_lot::Mutex;
use rusqlite::config::DbConfig;
use rusqlite::Connection;
use statebase_core::store::*;
use statebase_core::{
    ApiKey, Entity, EntityVersion, Erasure, MemoryRevision, Result, Retention, RetentionPolicy,
    Timestamp, Trace, Turn, WebhookEndpoint,
};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use writer::Writer;

/// When a write counts as done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// fsync at every commit (`synchronous = FULL`): acknowledged writes survive a killed
    /// process and a power loss.
    #[default]
    Full,
    /// WAL's default (`synchronous = NORMAL`): acknowledged writes survive a killed process;
    /// the last ones may be lost on power loss.
    Normal,
}

/// How a [`SqliteStore`] opens its file.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Default [`Durability::Full`].
    pub durability: Durability,
    /// How long a connection waits for a lock held by another process. Default 5 s.
    pub busy_timeout: Duration,
    /// Read connections, opened when first needed and then kept: at most this many reads
    /// run at once, and a read waits for a free connection rather than open one. Default 8.
    pub readers: usize,
    /// Sessions kept in memory for reads, up to this many bytes of state and metadata.
    /// Default 64 MiB; 0 turns the cache off. It sees every write of this store, but not
    /// the writes of another process to the same file: turn it off if one writes sessions.
    pub session_cache_bytes: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Full,
            busy_timeout: Duration::from_secs(5),
            readers: 8,
            session_cache_bytes: 64 << 20,
        }
    }
}

/// A statebase [`Store`] in one SQLite file. Cloning is cheap and shares the file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    options: SqliteOptions,
    writer: Writer,
    /// Read connections not in use.
    readers: Mutex<Vec<Connection>>,
    /// One per read connection (`options.readers`).
    reader_permits: Arc<Semaphore>,
    sessions: Arc<SessionCache>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("options", &self.options)
            .finish()
    }
}

fn connect(path: &Path, options: &SqliteOptions) -> Result<Connection, SqliteError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(options.busy_timeout)?;
    // Room for every statement the backend runs, so none is parsed twice.
    conn.set_prepared_statement_cache_capacity(256);
    // Plans that don't look at bound values: otherwise SQLite prepares a cached statement
    // with an ORDER BY or a bound LIMIT again each time it is run with new values.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (or creates) the database file with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SqliteError> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// Opens (or creates) the database file. Fails, changing nothing, if the file was
    /// written by a newer statebase.
    pub fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self, SqliteError> {
        let path = path.as_ref().to_path_buf();
        let mut conn = connect(&path, &options)?;
        schema::check_version(&conn)?;
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let synchronous = match options.durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", synchronous)?;
        // Each write of a group commit runs in a savepoint, whose undo copies of the pages
        // it touches need not go to a temporary file.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        // The page cache stays at SQLite's default (2 MB): the end of each write transaction
        // walks the cache's page table, and at 32 MiB that took 4% of the server's CPU under
        // PATCH load while the hot pages fit in 2 MB.
        // Checkpoint every 10 000 pages of WAL (40 MiB) rather than every 1 000: the pages
        // every commit changes (sessions, index tops) are copied back once per checkpoint.
        conn.pragma_update(None, "wal_autocheckpoint", 10_000)?;
        schema::migrate(&mut conn)?;
        let writer = Writer::start(conn)?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                writer,
                readers: Mutex::new(Vec::new()),
                reader_permits: Arc::new(Semaphore::new(options.readers.max(1))),
                sessions: Arc::new(SessionCache::new(options.session_cache_bytes)),
                options,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// `PRAGMA integrity_check` of the file: `"ok"` when it is sound.
    pub async fn integrity_check(&self) -> Result<String, SqliteError> {
        self.read(sql::integrity_check).await
    }

    async fn read<R: Send + 'static>(
        &self,
        read: impl FnOnce(&Connection) -> Result<R, SqliteError> + Send + 'static,
    ) -> Result<R, SqliteError> {
        let inner = Arc::clone(&self.inner);
        // Held until the connection is back in the pool, even if this future is dropped.
        let permit = Arc::clone(&inner.reader_permits)
            .acquire_owned()
            .await
            .expect("the read permits are never closed");
        tokio::task::spawn_blocking(move || {
            let pooled = inner.readers.lock().pop();
            let conn = match pooled {
                Some(c) => c,
                None => connect(&inner.path, &inner.options)?,
            };
            let result = read(&conn);
            inner.readers.lock().push(conn);
            drop(permit);
            result
        })
        .await?
    }

    /// Runs `write` in the next group commit. Once it committed, before it is answered, the
    /// sessions cache is told what `change` says it did to a session.
    async fn write<R: Send + 'static, C>(
        &self,
        write: impl FnOnce(&Connection) -> Result<R, SqliteError> + Send + 'static,
        change: impl FnOnce(&R) -> C + Send + 'static,
    ) -> Result<R, SqliteError>
    where
        C: IntoIterator<Item = Change>,
    {
        let cache = Arc::clone(&self.inner.sessions);
        let on_commit = move |r: &R| {
            if cache.is_on() {
                cache.committed(change(r).into_iter().collect());
            }
        };
        self.inner.writer.write(write, on_commit).await
    }

    /// `result` of a write to session `id`. One refused against the file (a stale expected
    /// version, a session gone) may have been checked against a cached copy that a write of
    /// another process made stale: the copy goes, so that a retry reads the file.
    fn unless_refused<R>(
        &self,
        tenant: &str,
        id: &str,
        result: Result<R, SqliteError>,
    ) -> Result<R, SqliteError> {
        if let Err(SqliteError::Store(_)) = &result {
            self.inner.sessions.forget(tenant, id);
        }
        result
    }
}

/// For writes that change no session.
fn no_change<R>(_: &R) -> Option<Change> {
    None
}

/// The session as `tenant`'s write stored it, with the turn it added, if any.
fn stored(tenant: String, turn: Option<Turn>) -> impl FnOnce(&SessionRecord) -> Option<Change> {
    move |record| {
        Some(Change::Stored {
            tenant,
            record: record.clone(),
            turn,
        })
    }
}

/// Session `id` of `tenant` changed.
fn changed(tenant: String, id: String) -> Option<Change> {
    Some(Change::Changed { tenant, id })
}

#[async_trait]
impl SessionLog for SqliteStore {
    async fn create_session(&self, tenant: &str, new: NewSession) -> Result<()> {
        let t = tenant.to_owned();
        let write = move |c: &Connection| {
            sql::create_session(c, &t, &new)?;
            Ok(new.record)
        };
        self.write(write, stored(tenant.to_owned(), None)).await?;
        Ok(())
    }

    async fn session(&self, tenant: &str, id: &str) -> Result<Option<SessionRecord>> {
        let cache = &self.inner.sessions;
        let ticket = match cache.session(tenant, id) {
            Ok(record) => return Ok(Some(record)),
            Err(ticket) => ticket,
        };
        let (t, i) = (tenant.to_owned(), id.to_owned());
        let found = self.read(move |c| sql::session(c, &t, &i)).await?;
        if let Some(record) = &found {
            cache.fill(ticket, tenant, record);
        }
        Ok(found)
    }

    async fn list_sessions(
        &self,
        tenant: &str,
        query: &SessionQuery,
    ) -> Result<Vec<SessionRecord>> {
        let (tenant, query) = (tenant.to_owned(), query.clone());
        Ok(self
            .read(move |c| sql::list_sessions(c, &tenant, &query))
            .await?)
    }

    async fn update_session(&self, tenant: &str, update: SessionUpdate) -> Result<SessionRecord> {
        let (t, id) = (tenant.to_owned(), update.session_id.clone());
        let write = move |c: &Connection| sql::update_session(c, &t, &update);
        let result = self.write(write, stored(tenant.to_owned(), None)).await;
        Ok(self.unless_refused(tenant, &id, result)?)
    }

    async fn append_version(&self, tenant: &str, append: AppendVersion) -> Result<SessionRecord> {
        let (t, id) = (tenant.to_owned(), append.session_id.clone());
        let write = move |c: &Connection| sql::append_version(c, &t, &append);
        let result = self.write(write, stored(tenant.to_owned(), None)).await;
        Ok(self.unless_refused(tenant, &id, result)?)
    }

    async fn versions(
        &self,
        tenant: &str,
        session_id: &str,
        range: Range<u64>,
    ) -> Result<Vec<VersionRecord>> {
        let (tenant, id) = (tenant.to_owned(), session_id.to_owned());
        Ok(self
            .read(move |c| sql::versions(c, &tenant, &id, range))
            .await?)
    }

    async fn delete_session(&self, tenant: &str, id: &str, trace: Trace) -> Result<SessionRecord> {
        let (t, i) = (tenant.to_owned(), id.to_owned());
        let change = changed(tenant.to_owned(), id.to_owned());
        let write = move |c: &Connection| sql::delete_session(c, &t, &i, &trace);
        let result = self.write(write, move |_| change).await;
        Ok(self.unless_refused(tenant, id, result)?)
    }

    async fn prune_versions(
        &self,
        tenant: &str,
        session_id: &str,
        before: u64,
        trace: Trace,
    ) -> Result<u64> {
        let (t, i) = (tenant.to_owned(), session_id.to_owned());
        let write = move |c: &Connection| sql::prune_versions(c, &t, &i, before, &trace);
        Ok(self.write(write, no_change).await?)
    }

    async fn prune_turns(
        &self,
        tenant: &str,
        session_id: &str,
        before: Timestamp,
        trace: Trace,
    ) -> Result<u64> {
        let (t, i) = (tenant.to_owned(), session_id.to_owned());
        // The cache keeps a session's latest turns: it must forget them.
        let change = changed(tenant.to_owned(), session_id.to_owned());
        let write = move |c: &Connection| sql::prune_turns(c, &t, &i, before, &trace);
        Ok(self.write(write, move |_| change).await?)
    }

    async fn put_retention(
        &self,
        tenant: &str,
        session_id: Option<&str>,
        policy: Option<Retention>,
        trace: Option<Trace>,
    ) -> Result<()> {
        let (t, i) = (tenant.to_owned(), session_id.map(str::to_owned));
        let write = move |c: &Connection| {
            sql::put_retention(c, &t, i.as_deref(), policy.as_ref(), trace.as_ref())
        };
        Ok(self.write(write, no_change).await?)
    }

    async fn retention(&self, tenant: &str, session_id: Option<&str>) -> Result<Option<Retention>> {
        let (t, i) = (tenant.to_owned(), session_id.map(str::to_owned));
        Ok(self
            .read(move |c| sql::retention(c, &t, i.as_deref()))
            .await?)
    }

    async fn retention_policies(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<RetentionPolicy>> {
        let after = after.map(|(t, s)| (t.to_owned(), s.to_owned()));
        let read = move |c: &Connection| {
            let after = after.as_ref().map(|(t, s)| (t.as_str(), s.as_str()));
            sql::retention_policies(c, after, limit)
        };
        Ok(self.read(read).await?)
    }

    async fn erase_user(&self, tenant: &str, user_id: &str, trace: Trace) -> Result<Erasure> {
        let (t, u) = (tenant.to_owned(), user_id.to_owned());
        let write = move |c: &Connection| sql::erase_user(c, &t, &u, trace);
        let tenant = tenant.to_owned();
        let gone = move |(_, sessions): &(Erasure, Vec<String>)| {
            let changed = |id: &String| Change::Changed {
                tenant: tenant.clone(),
                id: id.clone(),
            };
            sessions.iter().map(changed).collect::<Vec<_>>()
        };
        let (erasure, _) = self.write(write, gone).await?;
        Ok(erasure)
    }

    async fn count_sessions(
        &self,
        tenant: &str,
        live_at: Timestamp,
        changed_after: Timestamp,
    ) -> Result<SessionCounts> {
        let tenant = tenant.to_owned();
        Ok(self
            .read(move |c| sql::count_sessions(c, &tenant, live_at, changed_after))
            .await?)
    }

    async fn expired_sessions(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<(String, SessionRecord)>> {
        Ok(self
            .read(move |c| sql::expired_sessions(c, now, limit))
            .await?)
    }

    async fn append_turn(&self, tenant: &str, append: AppendTurn) -> Result<SessionRecord> {
        let (t, id) = (tenant.to_owned(), append.turn.session_id.clone());
        let change = stored(tenant.to_owned(), Some(append.turn.clone()));
        let write = move |c: &Connection| sql::append_turn(c, &t, &append);
        let result = self.write(write, change).await;
        Ok(self.unless_refused(tenant, &id, result)?)
    }

    async fn import_session(&self, tenant: &str, archive: SessionArchive) -> Result<bool> {
        let t = tenant.to_owned();
        let change = changed(tenant.to_owned(), archive.record.session.id.clone());
        let write = move |c: &Connection| sql::import_session(c, &t, &archive);
        Ok(self.write(write, move |_| change).await?)
    }

    async fn turn(&self, tenant: &str, id: &str) -> Result<Option<Turn>> {
        let (tenant, id) = (tenant.to_owned(), id.to_owned());
        Ok(self.read(move |c| sql::turn(c, &tenant, &id)).await?)
    }

    async fn list_turns(
        &self,
        tenant: &str,
        session_id: &str,
        query: &TurnQuery,
    ) -> Result<Vec<Turn>> {
        let latest = query.descending && query.after_turn_number.is_none();
        let cache = &self.inner.sessions;
        let ticket = match latest.then(|| cache.turns(tenant, session_id, query.limit)) {
            Some(Ok(turns)) => return Ok(turns),
            Some(Err(ticket)) => ticket,
            None => None,
        };
        let (t, id, q) = (tenant.to_owned(), session_id.to_owned(), query.clone());
        let turns = self.read(move |c| sql::list_turns(c, &t, &id, &q)).await?;
        if let Some(ticket) = ticket {
            cache.fill_turns(ticket, tenant, session_id, query.limit, &turns);
        }
        Ok(turns)
    }
}

#[async_trait]
impl MemoryRecords for SqliteStore {
    async fn insert_memory(&self, tenant: &str, new: NewMemory) -> Result<Option<MemoryRecord>> {
        let t = tenant.to_owned();
        let Some(session_id) = new.record.memory.session_id.clone() else {
            let write = move |c: &Connection| sql::insert_memory(c, &t, &new);
            return Ok(self.write(write, no_change).await?);
        };
        // Its session's memory count goes up, unless it was there already.
        let change = changed(tenant.to_owned(), session_id.clone());
        let write = move |c: &Connection| sql::insert_memory(c, &t, &new);
        let result = self
            .write(write, move |existing| change.filter(|_| existing.is_none()))
            .await;
        Ok(self.unless_refused(tenant, &session_id, result)?)
    }

    async fn import_memory(&self, tenant: &str, archive: MemoryArchive) -> Result<bool> {
        let t = tenant.to_owned();
        let write = move |c: &Connection| sql::import_memory(c, &t, &archive);
        Ok(self.write(write, no_change).await?)
    }

    async fn memory(&self, tenant: &str, id: &str) -> Result<Option<MemoryRecord>> {
        let (tenant, id) = (tenant.to_owned(), id.to_owned());
        Ok(self.read(move |c| sql::memory(c, &tenant, &id)).await?)
    }

    async fn update_memory(&self, tenant: &str, update: MemoryUpdate) -> Result<MemoryRecord> {
        let t = tenant.to_owned();
        let write = move |c: &Connection| {
            sql::update_memory(c, &t, &update)?;
            Ok(update.record)
        };
        Ok(self.write(write, no_change).await?)
    }

    async fn set_embedding(
        &self,
        tenant: &str,
        id: &str,
        version: u64,
        model: &str,
        vector: Vec<f32>,
    ) -> Result<bool> {
        let (t, i, model) = (tenant.to_owned(), id.to_owned(), model.to_owned());
        let write = move |c: &Connection| sql::set_embedding(c, &t, &i, version, &model, &vector);
        Ok(self.write(write, no_change).await?)
    }

    async fn delete_memory(&self, tenant: &str, id: &str, trace: Trace) -> Result<MemoryRecord> {
        let (t, i, tenant) = (tenant.to_owned(), id.to_owned(), tenant.to_owned());
        let write = move |c: &Connection| sql::delete_memory(c, &t, &i, &trace);
        // Its session's memory count goes down.
        let change = |m: &MemoryRecord| changed(tenant, m.memory.session_id.clone()?);
        Ok(self.write(write, change).await?)
    }

    async fn list_memories(&self, tenant: &str, query: &MemoryQuery) -> Result<Vec<MemoryRecord>> {
        let (tenant, query) = (tenant.to_owned(), query.clone());
        Ok(self
            .read(move |c| sql::list_memories(c, &tenant, &query))
            .await?)
    }

    async fn count_memories(&self, tenant: &str) -> Result<u64> {
        let tenant = tenant.to_owned();
        Ok(self.read(move |c| sql::count_memories(c, &tenant)).await?)
    }

    async fn memory_revisions(&self, tenant: &str, id: &str) -> Result<Vec<MemoryRevision>> {
        let (tenant, id) = (tenant.to_owned(), id.to_owned());
        Ok(self
            .read(move |c| sql::memory_revisions(c, &tenant, &id))
            .await?)
    }

    async fn scan_memories(
        &self,
        tenant: &str,
        after_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MemoryRecord>> {
        let (tenant, after) = (tenant.to_owned(), after_id.map(str::to_owned));
        Ok(self
            .read(move |c| sql::scan_memories(c, &tenant, after.as_deref(), limit))
            .await?)
    }
}

#[async_trait]
impl EntityRecords for SqliteStore {
    async fn insert_entity(&self, tenant: &str, new: NewEntity) -> Result<Option<Entity>> {
        let tenant = tenant.to_owned();
        let write = move |c: &Connection| sql::insert_entity(c, &tenant, &new);
        Ok(self.write(write, no_change).await?)
    }

    async fn count_entities(&self, tenant: &str) -> Result<u64> {
        let tenant = tenant.to_owned();
        Ok(self.read(move |c| sql::count_entities(c, &tenant)).await?)
    }

    async fn entity(&self, tenant: &str, id: &str) -> Result<Option<Entity>> {
        let (tenant, id) = (tenant.to_owned(), id.to_owned());
        Ok(self.read(move |c| sql::entity(c, &tenant, &id)).await?)
    }

    async fn list_entities(&self, tenant: &str, query: &EntityQuery) -> Result<Vec<Entity>> {
        let (tenant, query) = (tenant.to_owned(), query.clone());
        Ok(self
            .read(move |c| sql::list_entities(c, &tenant, &query))
            .await?)
    }

    async fn update_entity(&self, tenant: &str, update: EntityUpdate) -> Result<Entity> {
        let tenant = tenant.to_owned();
        let write = move |c: &Connection| {
            sql::update_entity(c, &tenant, &update)?;
            Ok(update.entity)
        };
        Ok(self.write(write, no_change).await?)
    }

    async fn delete_entity(&self, tenant: &str, id: &str, trace: Trace) -> Result<Entity> {
        let (tenant, id) = (tenant.to_owned(), id.to_owned());
        let write = move |c: &Connection| sql::delete_entity(c, &tenant, &id, &trace);
        Ok(self.write(write, no_change).await?)
    }

    async fn entity_versions(
        &self,
        tenant: &str,
        id: &str,
        range: Range<u64>,
    ) -> Result<Vec<EntityVersion>> {
        let (tenant, id) = (tenant.to_owned(), id.to_owned());
        Ok(self
            .read(move |c| sql::entity_versions(c, &tenant, &id, range))
            .await?)
    }
}

#[async_trait]
impl TraceLog for SqliteStore {
    async fn import_traces(&self, tenant: &str, traces: Vec<Trace>) -> Result<u64> {
        let t = tenant.to_owned();
        let write = move |c: &Connection| sql::import_traces(c, &t, &traces);
        Ok(self.write(write, no_change).await?)
    }

    async fn prune_traces(&self, tenant: &str, before: Timestamp, trace: Trace) -> Result<u64> {
        let t = tenant.to_owned();
        let write = move |c: &Connection| sql::prune_traces(c, &t, before, &trace);
        Ok(self.write(write, no_change).await?)
    }

    async fn tenants(&self) -> Result<Vec<String>> {
        Ok(self.read(sql::tenants).await?)
    }

    async fn trace(&self, tenant: &str, id: &str) -> Result<Option<Trace>> {
        let (tenant, id) = (tenant.to_owned(), id.to_owned());
        Ok(self.read(move |c| sql::trace(c, &tenant, &id)).await?)
    }

    async fn list_traces(&self, tenant: &str, query: &TraceQuery) -> Result<Vec<Trace>> {
        let (tenant, query) = (tenant.to_owned(), query.clone());
        Ok(self
            .read(move |c| sql::list_traces(c, &tenant, &query))
            .await?)
    }

    async fn trace_activity(
        &self,
        tenant: &str,
        after: Timestamp,
    ) -> Result<Vec<(Timestamp, u64)>> {
        let tenant = tenant.to_owned();
        Ok(self
            .read(move |c| sql::trace_activity(c, &tenant, after))
            .await?)
    }

    async fn trace_feed(&self, after: u64, limit: usize) -> Result<Vec<FeedEntry>> {
        Ok(self.read(move |c| sql::trace_feed(c, after, limit)).await?)
    }

    async fn trace_feed_end(&self) -> Result<u64> {
        Ok(self.read(sql::trace_feed_end).await?)
    }
}

#[async_trait]
impl ServerRecords for SqliteStore {
    async fn put_api_key(&self, key: ApiKey) -> Result<()> {
        let write = move |c: &Connection| sql::put_api_key(c, &key);
        Ok(self.write(write, no_change).await?)
    }

    async fn api_key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>> {
        let hash = hash.to_owned();
        Ok(self.read(move |c| sql::api_key_by_hash(c, &hash)).await?)
    }

    async fn api_key(&self, id: &str) -> Result<Option<ApiKey>> {
        let id = id.to_owned();
        Ok(self.read(move |c| sql::api_key(c, &id)).await?)
    }

    async fn list_api_keys(&self, tenant: Option<&str>) -> Result<Vec<ApiKey>> {
        let tenant = tenant.map(str::to_owned);
        Ok(self
            .read(move |c| sql::list_api_keys(c, tenant.as_deref()))
            .await?)
    }

    async fn put_webhook(&self, endpoint: WebhookEndpoint) -> Result<()> {
        let write = move |c: &Connection| sql::put_webhook(c, &endpoint);
        Ok(self.write(write, no_change).await?)
    }

    async fn webhook(&self, tenant: &str, id: &str) -> Result<Option<WebhookEndpoint>> {
        let (tenant, id) = (tenant.to_owned(), id.to_owned());
        Ok(self.read(move |c| sql::webhook(c, &tenant, &id)).await?)
    }

    async fn list_webhooks(&self, tenant: Option<&str>) -> Result<Vec<WebhookEndpoint>> {
        let tenant = tenant.map(str::to_owned);
        Ok(self
            .read(move |c| sql::list_webhooks(c, tenant.as_deref()))
            .await?)
    }

    async fn delete_webhook(&self, tenant: &str, id: &str) -> Result<()> {
        let (tenant, id) = (tenant.to_owned(), id.to_owned());
        let write = move |c: &Connection| sql::delete_webhook(c, &tenant, &id);
        Ok(self.write(write, no_change).await?)
    }

    async fn put_deliveries(
        &self,
        deliveries: Vec<DeliveryRecord>,
        cursor: Option<u64>,
    ) -> Result<()> {
        let write = move |c: &Connection| sql::put_deliveries(c, &deliveries, cursor);
        Ok(self.write(write, no_change).await?)
    }

    async fn delivery_cursor(&self) -> Result<u64> {
        Ok(self.read(sql::delivery_cursor).await?)
    }

    async fn deliveries(
        &self,
        endpoint_id: Option<&str>,
        owed_only: bool,
    ) -> Result<Vec<DeliveryRecord>> {
        let endpoint_id = endpoint_id.map(str::to_owned);
        Ok(self
            .read(move |c| sql::deliveries(c, endpoint_id.as_deref(), owed_only))
            .await?)
    }

    async fn prune_deliveries(&self, before: Timestamp) -> Result<u64> {
        let write = move |c: &Connection| sql::prune_deliveries(c, before);
        Ok(self.write(write, no_change).await?)
    }

    async fn idempotent_response(&self, key: &str) -> Result<Option<IdempotentResponse>> {
        let key = key.to_owned();
        Ok(self
            .read(move |c| sql::idempotent_response(c, &key))
            .await?)
    }

    async fn put_idempotent_response(&self, response: IdempotentResponse) -> Result<()> {
        let write = move |c: &Connection| sql::put_idempotent_response(c, &response);
        Ok(self.write(write, no_change).await?)
    }

    async fn prune_idempotent_responses(&self, before: Timestamp) -> Result<u64> {
        let write = move |c: &Connection| sql::prune_idempotent_responses(c, before);
        Ok(self.write(write, no_change).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Reads beyond the pool's size wait for a connection instead of opening their own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_readers_reads_run_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteOptions {
            readers: 3,
            ..SqliteOptions::default()
        };
        let store = SqliteStore::open_with(dir.path().join("r.db"), options).unwrap();
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let reads = (0..24).map(|_| {
            let (store, running, most) = (store.clone(), running.clone(), most.clone());
            tokio::spawn(async move {
                store
                    .read(move |conn| {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(20));
                        running.fetch_sub(1, Ordering::SeqCst);
                        Ok(conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?)
                    })
                    .await
            })
        });
        for read in reads.collect::<Vec<_>>() {
            assert_eq!(read.await.unwrap().unwrap(), 1);
        }
        assert_eq!(most.load(Ordering::SeqCst), 3);
        assert_eq!(store.inner.readers.lock().len(), 3);
    }
}
