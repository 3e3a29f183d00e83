//! The sled backend of statebase: every record in one sled database directory.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use statebase_core::{CreateSession, StateBase};
//! use statebase_sled::SledStore;
//!
//! let sb = StateBase::new(SledStore::open("agents.sled")?);
//! let session = sb.create_session(CreateSession::new("support-bot")).await?;
//! # Ok(()) }
//! ```
//!
//! **Atomicity.** Every mutating call is one sled transaction over three trees (records,
//! logs, indexes; layout in the `keys` module docs). sled transactions can't scan, so
//! everything they check is a point key (a session record holds its head version, turn
//! count and revision); deletes gather their keys first and re-check the record inside the
//! transaction.
//!
//! **Durability** is chosen with [`Durability`]: `Flush` (the default) flushes before a
//! write is acknowledged, so it survives a killed process; concurrent writers share
//! flushes (group flush: one flush serves every write made before it began). `Background` leaves flushing to sled's background flusher (every 500 ms by
//! default): faster, and the last writes before a crash may be lost.
//!
//! **Format.** A format version key is written on creation; data of a newer format is
//! refused.

mod keys;
mod ops;

pub use ops::FORMAT_VERSION;

use async_trait::async_trait;
use ops::Trees;
use statebase_core::store::*;
use statebase_core::{
    ApiKey, Entity, EntityVersion, Erasure, MemoryRevision, Result, Retention, RetentionPolicy,
    Timestamp, Trace, Turn, WebhookEndpoint,
};
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// When a write counts as done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// Flush to disk before acknowledging: survives a killed process.
    #[default]
    Flush,
    /// Acknowledge at once; sled flushes in the background.
    Background,
}

/// How a [`SledStore`] opens its directory.
#[derive(Debug, Clone, Default)]
pub struct SledOptions {
    /// Default [`Durability::Flush`].
    pub durability: Durability,
}

/// What can go wrong opening a sled store.
#[derive(Debug, thiserror::Error)]
pub enum SledError {
    /// sled failed.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// The data was written by a newer statebase; nothing was changed.
    #[error(
        "the database has format version {found}, newer than the {supported} this statebase \
         knows: upgrade statebase to open it"
    )]
    NewerFormat {
        /// The data's format version.
        found: u64,
        /// The newest this code knows.
        supported: u64,
    },
    /// A stored value is not what statebase writes.
    #[error("corrupt {0}")]
    Corrupt(&'static str),
}

/// A statebase [`Store`] in a sled database. Cloning is cheap and shares the database.
#[derive(Debug, Clone)]
pub struct SledStore {
    trees: Trees,
    options: SledOptions,
    flushes: Arc<GroupFlush>,
}

/// Group flushing: a write waits for one flush that started after it, and one flush serves
/// every write made before it began, so concurrent writers share flushes.
#[derive(Debug, Default)]
struct GroupFlush {
    /// Writes done (in sled's memory).
    written: AtomicU64,
    /// Writes known to be on disk.
    flushed: AtomicU64,
    /// Held by the one flush under way.
    turn: tokio::sync::Mutex<()>,
}

impl GroupFlush {
    /// Returns once the write just done (and every one before it) is on disk.
    async fn after_write(&self, db: &sled::Db) -> Result<()> {
        let mine = self.written.fetch_add(1, Ordering::SeqCst) + 1;
        let _turn = self.turn.lock().await;
        if self.flushed.load(Ordering::SeqCst) >= mine {
            // A flush that began after this write covered it.
            return Ok(());
        }
        // Every write counted so far is in memory, so this flush makes them all durable.
        let covers = self.written.load(Ordering::SeqCst);
        // A blocking flush on tokio's blocking pool: sled's own `flush_async` runs on
        // sled's small global thread pool, which deadlocks under many concurrent stores.
        let db = db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(statebase_core::Error::backend)?
            .map_err(statebase_core::Error::backend)?;
        self.flushed.fetch_max(covers, Ordering::SeqCst);
        Ok(())
    }
}

/// Opens a sled database, waiting (up to 5 s) for the lock a handle just dropped in this
/// process still holds: sled finishes closing a database on its own threads.
#[doc(hidden)]
pub fn open_when_free(config: &sled::Config) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

impl SledStore {
    /// Opens (or creates) the database in `path` with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SledError> {
        Self::open_with(path, SledOptions::default())
    }

    /// Opens (or creates) the database in `path`. Fails if it was written by a newer
    /// statebase.
    pub fn open_with(path: impl AsRef<Path>, options: SledOptions) -> Result<Self, SledError> {
        // With a flush per write, sled's background flusher has nothing to do; without it
        // no thread outlives the last handle, so the directory is free again as soon as
        // that handle is dropped.
        let flush_every_ms = match options.durability {
            Durability::Flush => None,
            Durability::Background => Some(500),
        };
        let config = sled::Config::new()
            .path(path)
            .flush_every_ms(flush_every_ms);
        let db = open_when_free(&config)?;
        Ok(Self {
            trees: Trees::open(db)?,
            options,
            flushes: Arc::default(),
        })
    }

    /// Makes an acknowledged write durable, as the options say.
    async fn durable<T>(&self, result: Result<T>) -> Result<T> {
        let value = result?;
        if self.options.durability == Durability::Flush {
            self.flushes.after_write(&self.trees.db).await?;
        }
        Ok(value)
    }
}

#[async_trait]
impl SessionLog for SledStore {
    async fn create_session(&self, tenant: &str, new: NewSession) -> Result<()> {
        self.durable(self.trees.create_session(tenant, &new)).await
    }

    async fn session(&self, tenant: &str, id: &str) -> Result<Option<SessionRecord>> {
        self.trees.session(tenant, id)
    }

    async fn list_sessions(
        &self,
        tenant: &str,
        query: &SessionQuery,
    ) -> Result<Vec<SessionRecord>> {
        self.trees.list_sessions(tenant, query)
    }

    async fn update_session(&self, tenant: &str, update: SessionUpdate) -> Result<SessionRecord> {
        self.durable(self.trees.update_session(tenant, &update))
            .await
    }

    async fn append_version(&self, tenant: &str, append: AppendVersion) -> Result<SessionRecord> {
        self.durable(self.trees.append_version(tenant, &append))
            .await
    }

    async fn versions(
        &self,
        tenant: &str,
        session_id: &str,
        range: Range<u64>,
    ) -> Result<Vec<VersionRecord>> {
        self.trees.versions(tenant, session_id, range)
    }

    async fn delete_session(&self, tenant: &str, id: &str, trace: Trace) -> Result<SessionRecord> {
        self.durable(self.trees.delete_session(tenant, id, &trace))
            .await
    }

    async fn prune_versions(
        &self,
        tenant: &str,
        session_id: &str,
        before: u64,
        trace: Trace,
    ) -> Result<u64> {
        self.durable(
            self.trees
                .prune_versions(tenant, session_id, before, &trace),
        )
        .await
    }

    async fn prune_turns(
        &self,
        tenant: &str,
        session_id: &str,
        before: Timestamp,
        trace: Trace,
    ) -> Result<u64> {
        self.durable(self.trees.prune_turns(tenant, session_id, before, &trace))
            .await
    }

    async fn put_retention(
        &self,
        tenant: &str,
        session_id: Option<&str>,
        policy: Option<Retention>,
        trace: Option<Trace>,
    ) -> Result<()> {
        let put = self
            .trees
            .put_retention(tenant, session_id, policy.as_ref(), trace.as_ref());
        self.durable(put).await
    }

    async fn retention(&self, tenant: &str, session_id: Option<&str>) -> Result<Option<Retention>> {
        self.trees.retention(tenant, session_id)
    }

    async fn retention_policies(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<RetentionPolicy>> {
        self.trees.retention_policies(after, limit)
    }

    async fn erase_user(&self, tenant: &str, user_id: &str, trace: Trace) -> Result<Erasure> {
        self.durable(self.trees.erase_user(tenant, user_id, &trace))
            .await
    }

    async fn count_sessions(
        &self,
        tenant: &str,
        live_at: Timestamp,
        changed_after: Timestamp,
    ) -> Result<SessionCounts> {
        self.trees.count_sessions(tenant, live_at, changed_after)
    }

    async fn expired_sessions(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<(String, SessionRecord)>> {
        self.trees.expired_sessions(now, limit)
    }

    async fn append_turn(&self, tenant: &str, append: AppendTurn) -> Result<SessionRecord> {
        self.durable(self.trees.append_turn(tenant, &append)).await
    }

    async fn import_session(&self, tenant: &str, archive: SessionArchive) -> Result<bool> {
        self.durable(self.trees.import_session(tenant, &archive))
            .await
    }

    async fn turn(&self, tenant: &str, id: &str) -> Result<Option<Turn>> {
        self.trees.turn(tenant, id)
    }

    async fn list_turns(
        &self,
        tenant: &str,
        session_id: &str,
        query: &TurnQuery,
    ) -> Result<Vec<Turn>> {
        self.trees.list_turns(tenant, session_id, query)
    }
}

#[async_trait]
impl MemoryRecords for SledStore {
    async fn insert_memory(&self, tenant: &str, new: NewMemory) -> Result<Option<MemoryRecord>> {
        self.durable(self.trees.insert_memory(tenant, &new)).await
    }

    async fn import_memory(&self, tenant: &str, archive: MemoryArchive) -> Result<bool> {
        self.durable(self.trees.import_memory(tenant, &archive))
            .await
    }

    async fn memory(&self, tenant: &str, id: &str) -> Result<Option<MemoryRecord>> {
        self.trees.memory(tenant, id)
    }

    async fn update_memory(&self, tenant: &str, update: MemoryUpdate) -> Result<MemoryRecord> {
        self.durable(self.trees.update_memory(tenant, &update))
            .await
    }

    async fn set_embedding(
        &self,
        tenant: &str,
        id: &str,
        version: u64,
        model: &str,
        vector: Vec<f32>,
    ) -> Result<bool> {
        let result = self
            .trees
            .set_embedding(tenant, id, version, model, &vector);
        self.durable(result).await
    }

    async fn delete_memory(&self, tenant: &str, id: &str, trace: Trace) -> Result<MemoryRecord> {
        self.durable(self.trees.delete_memory(tenant, id, &trace))
            .await
    }

    async fn list_memories(&self, tenant: &str, query: &MemoryQuery) -> Result<Vec<MemoryRecord>> {
        self.trees.list_memories(tenant, query)
    }

    async fn count_memories(&self, tenant: &str) -> Result<u64> {
        self.trees.count_memories(tenant)
    }

    async fn memory_revisions(&self, tenant: &str, id: &str) -> Result<Vec<MemoryRevision>> {
        self.trees.memory_revisions(tenant, id)
    }

    async fn scan_memories(
        &self,
        tenant: &str,
        after_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MemoryRecord>> {
        self.trees.scan_memories(tenant, after_id, limit)
    }
}

#[async_trait]
impl EntityRecords for SledStore {
    async fn insert_entity(&self, tenant: &str, new: NewEntity) -> Result<Option<Entity>> {
        self.durable(self.trees.insert_entity(tenant, &new)).await
    }

    async fn count_entities(&self, tenant: &str) -> Result<u64> {
        self.trees.count_entities(tenant)
    }

    async fn entity(&self, tenant: &str, id: &str) -> Result<Option<Entity>> {
        self.trees.entity(tenant, id)
    }

    async fn list_entities(&self, tenant: &str, query: &EntityQuery) -> Result<Vec<Entity>> {
        self.trees.list_entities(tenant, query)
    }

    async fn update_entity(&self, tenant: &str, update: EntityUpdate) -> Result<Entity> {
        self.durable(self.trees.update_entity(tenant, &update))
            .await
    }

    async fn delete_entity(&self, tenant: &str, id: &str, trace: Trace) -> Result<Entity> {
        self.durable(self.trees.delete_entity(tenant, id, &trace))
            .await
    }

    async fn entity_versions(
        &self,
        tenant: &str,
        id: &str,
        range: Range<u64>,
    ) -> Result<Vec<EntityVersion>> {
        self.trees.entity_versions(tenant, id, range)
    }
}

#[async_trait]
impl TraceLog for SledStore {
    async fn import_traces(&self, tenant: &str, traces: Vec<Trace>) -> Result<u64> {
        self.durable(self.trees.import_traces(tenant, &traces))
            .await
    }

    async fn prune_traces(&self, tenant: &str, before: Timestamp, trace: Trace) -> Result<u64> {
        self.durable(self.trees.prune_traces(tenant, before, &trace))
            .await
    }

    async fn tenants(&self) -> Result<Vec<String>> {
        self.trees.tenants()
    }

    async fn trace(&self, tenant: &str, id: &str) -> Result<Option<Trace>> {
        self.trees.trace(tenant, id)
    }

    async fn list_traces(&self, tenant: &str, query: &TraceQuery) -> Result<Vec<Trace>> {
        self.trees.list_traces(tenant, query)
    }

    async fn trace_activity(
        &self,
        tenant: &str,
        after: Timestamp,
    ) -> Result<Vec<(Timestamp, u64)>> {
        self.trees.trace_activity(tenant, after)
    }

    async fn trace_feed(&self, after: u64, limit: usize) -> Result<Vec<FeedEntry>> {
        self.trees.trace_feed(after, limit)
    }

    async fn trace_feed_end(&self) -> Result<u64> {
        self.trees.trace_feed_end()
    }
}

#[async_trait]
impl ServerRecords for SledStore {
    async fn put_api_key(&self, key: ApiKey) -> Result<()> {
        self.durable(self.trees.put_api_key(&key)).await
    }

    async fn api_key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>> {
        self.trees.api_key_by_hash(hash)
    }

    async fn api_key(&self, id: &str) -> Result<Option<ApiKey>> {
        self.trees.api_key(id)
    }

    async fn list_api_keys(&self, tenant: Option<&str>) -> Result<Vec<ApiKey>> {
        self.trees.list_api_keys(tenant)
    }

    async fn put_webhook(&self, endpoint: WebhookEndpoint) -> Result<()> {
        self.durable(self.trees.put_webhook(&endpoint)).await
    }

    async fn webhook(&self, tenant: &str, id: &str) -> Result<Option<WebhookEndpoint>> {
        self.trees.webhook(tenant, id)
    }

    async fn list_webhooks(&self, tenant: Option<&str>) -> Result<Vec<WebhookEndpoint>> {
        self.trees.list_webhooks(tenant)
    }

    async fn delete_webhook(&self, tenant: &str, id: &str) -> Result<()> {
        self.durable(self.trees.delete_webhook(tenant, id)).await
    }

    async fn put_deliveries(
        &self,
        deliveries: Vec<DeliveryRecord>,
        cursor: Option<u64>,
    ) -> Result<()> {
        self.durable(self.trees.put_deliveries(&deliveries, cursor))
            .await
    }

    async fn delivery_cursor(&self) -> Result<u64> {
        self.trees.delivery_cursor()
    }

    async fn deliveries(
        &self,
        endpoint_id: Option<&str>,
        owed_only: bool,
    ) -> Result<Vec<DeliveryRecord>> {
        self.trees.deliveries(endpoint_id, owed_only)
    }

    async fn prune_deliveries(&self, before: Timestamp) -> Result<u64> {
        self.durable(self.trees.prune_deliveries(before)).await
    }

    async fn idempotent_response(&self, key: &str) -> Result<Option<IdempotentResponse>> {
        self.trees.idempotent_response(key)
    }

    async fn put_idempotent_response(&self, response: IdempotentResponse) -> Result<()> {
        self.durable(self.trees.put_idempotent_response(&response))
            .await
    }

    async fn prune_idempotent_responses(&self, before: Timestamp) -> Result<u64> {
        self.durable(self.trees.prune_idempotent_responses(before))
            .await
    }
}
