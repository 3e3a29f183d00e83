//! Long-term memories: added once per content and scope, searched by meaning and keywords,
//! and the one-call context an agent builds its next prompt from.

use crate::action;
use crate::error::{Error, ResourceKind, Result};
use crate::is_blank;
use crate::json;
use crate::model::*;
use crate::statebase::{page, page_limit, StateBase};
use crate::store::{
    Cursor, MemoryQuery, MemoryRecord, MemorySearch, MemoryUpdate, NewMemory, SearchScope, Store,
    TurnQuery,
};
use crate::Timestamp;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::sync::atomic::Ordering;

/// The longest memory, in characters.
pub const MAX_MEMORY_CHARS: usize = 10_000;
/// Context raises `drift_warning` when the memories it found average below this score, for
/// an embedder whose scores are raw cosines (see [`Calibration::drift_threshold`](crate::Calibration::drift_threshold)).
pub const DRIFT_THRESHOLD: f32 = 0.35;
/// The most tags a memory can have.
const MAX_TAGS: usize = 64;

impl<S: Store> StateBase<S> {
    /// Adds a memory to a session, or a user-level memory (no session, a `user_id`).
    ///
    /// Adding content that the same scope (session, or user for user-level memories)
    /// already has returns the existing memory instead of a duplicate, also when two adds
    /// race. A new memory is searchable as soon as this returns: by meaning too if the
    /// embedder [embeds on write](crate::Embedder::embeds_on_write) and answered, else by
    /// keywords until [`embed_pending`](Self::embed_pending) gives it its vector. The
    /// embedder failing never fails the add.
    pub async fn add_memory(&self, req: AddMemory) -> Result<Memory> {
        let content = self.memory_content(req.content)?;
        let memory_type = self.memory_type(req.memory_type)?;
        let tags = self.tags(req.tags.unwrap_or_default())?;
        let metadata = self.document("metadata", req.metadata)?;
        let (session_id, user_id) = match (req.session_id, req.user_id) {
            (Some(sid), user) => {
                let session = self.live_session(&sid).await?.session;
                if user.is_some() && user != session.user_id {
                    return Err(Error::UserMismatch);
                }
                (Some(sid), session.user_id)
            }
            (None, Some(user)) => (None, Some(self.identifier("user_id", user)?)),
            (None, None) => {
                return Err(Error::invalid(
                    "session_id",
                    "a memory needs a session_id, or a user_id for a user-level memory",
                ))
            }
        };
        let wants_vector = req.embed != Some(false);
        let embedding = match wants_vector {
            true => self.vector_on_write(&content).await,
            false => None,
        };
        let now = self.now();
        let memory = Memory {
            id: self.new_id("mem_"),
            session_id,
            user_id,
            content,
            memory_type,
            tags,
            metadata,
            version: 1,
            embedding_model: wants_vector.then(|| self.config().embedder.model_id().to_owned()),
            vector_available: embedding.is_some(),
            created_at: now,
            updated_at: now,
        };
        let details = json!({
            "content_preview": preview(&memory.content),
            "type": memory.memory_type,
            "tags": memory.tags,
            "embedded": embedding.is_some(),
        });
        let trace = self.memory_trace(&memory, action::MEMORY_CREATED, details, now);
        let record = MemoryRecord {
            dedupe_key: dedupe_key(&memory),
            memory,
            embedding,
        };
        let new = NewMemory {
            record: record.clone(),
            trace,
        };
        if let Some(existing) = self.store().insert_memory(&self.tenant, new).await? {
            return Ok(existing.memory);
        }
        self.shared
            .indexes
            .update(&self.tenant, |index| index.upsert(&record))
            .await;
        self.queue_if_pending(&record.memory);
        Ok(record.memory)
    }

    /// Gives pending memories (added or changed while the embedder was remote, slow or down:
    /// [`Memory::vector_available`] is false) their vectors: takes up to [`EMBED_BATCH`] of
    /// this process's pending memories, of every tenant, embeds each tenant's in one call,
    /// stores the vectors and returns how many (past [`MAX_QUEUED_VECTORS`], it re-embeds
    /// a tenant's memories by a scan once the queue is empty). If the embedder fails they stay pending and
    /// the error is returned: call it again later. The server runs it in the background;
    /// a library user with a remote embedder calls it when
    /// [`pending_vectors`](Self::pending_vectors) is above 0. Memories left pending by a
    /// process that stopped are found by [`reembed_memories`](Self::reembed_memories).
    pub async fn embed_pending(&self) -> Result<u64> {
        if let Some(tenant) = self.shared.pending.take_overflowed() {
            return match self.tenant(&tenant).reembed_memories().await {
                Ok(n) => Ok(n),
                Err(e) => {
                    self.shared.pending.put_back_overflowed(tenant);
                    Err(e)
                }
            };
        }
        let batch = self.shared.pending.take(EMBED_BATCH);
        match self.embed_batch(&batch).await {
            Ok(embedded) => {
                self.shared.pending.done(&batch);
                Ok(embedded)
            }
            Err(e) => {
                // Those stored stay stored; the rest wait for the next try.
                self.shared.pending.put_back(batch);
                Err(e)
            }
        }
    }

    /// Embeds the batch's memories that still need a vector, each tenant's in one call.
    async fn embed_batch(&self, batch: &[Pending]) -> Result<u64> {
        let model = self.config().embedder.model_id();
        let mut by_tenant: std::collections::BTreeMap<&str, Vec<MemoryRecord>> = Default::default();
        for (tenant, id) in batch {
            match self.store().memory(tenant, id).await? {
                Some(r) if needs_vector(&r, model) => by_tenant.entry(tenant).or_default().push(r),
                _ => {} // Deleted, or given a vector by a later change.
            }
        }
        let mut embedded = 0;
        for (tenant, records) in &by_tenant {
            embedded += self.store_vectors(tenant, records).await?;
        }
        Ok(embedded)
    }

    /// How many memories of this process wait for [`embed_pending`](Self::embed_pending)
    /// or are being embedded by it.
    pub fn pending_vectors(&self) -> usize {
        self.shared.pending.len()
    }

    /// Returns once a memory's vector is pending (at once if one became pending since the
    /// last call): for a background worker that runs [`embed_pending`](Self::embed_pending).
    pub async fn vectors_wanted(&self) {
        self.shared.pending.wanted.notified().await
    }

    /// Re-embeds, with the configured embedder, the tenant's memories whose vectors another
    /// model made (the embedder changed) or that have none (imported without vectors), a
    /// page at a time, and returns how many. Until
    /// then search compares them by keywords only. Memories that change meanwhile keep what
    /// their change wrote.
    pub async fn reembed_memories(&self) -> Result<u64> {
        let model = self.config().embedder.model_id();
        let mut count = 0;
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store()
                .scan_memories(&self.tenant, after.as_deref(), crate::search::LOAD_PAGE)
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.memory.id.clone());
            let stale: Vec<MemoryRecord> = page
                .iter()
                .filter(|r| needs_vector(r, model))
                .cloned()
                .collect();
            count += self.store_vectors(&self.tenant, &stale).await?;
            if page.len() < crate::search::LOAD_PAGE {
                break;
            }
        }
        Ok(count)
    }

    /// The memory.
    pub async fn get_memory(&self, id: &str) -> Result<Memory> {
        Ok(self.memory_record(id).await?.memory)
    }

    /// Changes a memory: new content is re-embedded, tags replace, metadata merges
    /// (RFC 7386); its `version` goes up by one and the old one stays in its history.
    pub async fn update_memory(&self, id: &str, req: UpdateMemory) -> Result<Memory> {
        let content = req.content.map(|c| self.memory_content(c)).transpose()?;
        let memory_type = req
            .memory_type
            .map(|t| self.memory_type(Some(t)))
            .transpose()?;
        let tags = req.tags.map(|t| self.tags(t)).transpose()?;
        let patch = self.document("metadata", req.metadata)?;
        loop {
            let old = self.memory_record(id).await?;
            let mut record = old.clone();
            let m = &mut record.memory;
            let content_changed = content.as_ref().is_some_and(|c| *c != m.content);
            if let Some(c) = &content {
                m.content.clone_from(c);
            }
            // A memory that has (or waits for) a vector gets one of its new content.
            if content_changed && m.embedding_model.is_some() {
                let content = m.content.clone();
                m.embedding_model = Some(self.config().embedder.model_id().to_owned());
                record.embedding = self.vector_on_write(&content).await;
                record.memory.vector_available = record.embedding.is_some();
            }
            let m = &mut record.memory;
            let tags_changed = tags.as_ref().is_some_and(|t| *t != m.tags);
            if let Some(t) = &tags {
                m.tags.clone_from(t);
            }
            if let Some(t) = &memory_type {
                m.memory_type.clone_from(t);
            }
            json::merge_patch(&mut m.metadata, &patch);
            self.check_size("metadata", &m.metadata)?;
            let now = self.now();
            m.version += 1;
            m.updated_at = now;
            let details = json!({
                "content_changed": content_changed,
                "tags_changed": tags_changed,
                "version": m.version,
            });
            let trace = self.memory_trace(m, action::MEMORY_UPDATED, details, now);
            record.dedupe_key = dedupe_key(&record.memory);
            let update = MemoryUpdate {
                record,
                expected_version: old.memory.version,
                trace,
            };
            let stored = match self.store().update_memory(&self.tenant, update).await {
                // Changed meanwhile by another writer: apply ours to the new version.
                Err(Error::Conflict { .. }) => continue,
                other => other?,
            };
            self.shared
                .indexes
                .update(&self.tenant, |index| index.upsert(&stored))
                .await;
            // Pending already unless the content changed (then it is pending anew).
            if content_changed {
                self.queue_if_pending(&stored.memory);
            }
            return Ok(stored.memory);
        }
    }

    /// Deletes the memory and its history.
    pub async fn delete_memory(&self, id: &str) -> Result<()> {
        let memory = self.memory_record(id).await?.memory;
        let details = json!({"content_preview": preview(&memory.content)});
        let trace = self.memory_trace(&memory, action::MEMORY_DELETED, details, self.now());
        self.store().delete_memory(&self.tenant, id, trace).await?;
        self.shared
            .indexes
            .update(&self.tenant, |index| index.remove(id))
            .await;
        Ok(())
    }

    /// Every revision of the memory, oldest first.
    pub async fn memory_history(&self, id: &str) -> Result<Vec<MemoryRevision>> {
        self.memory_record(id).await?;
        self.store().memory_revisions(&self.tenant, id).await
    }

    /// Memories newest first, filtered by session, user, type and tags (any of), one page at
    /// a time.
    pub async fn list_memories(&self, req: ListMemories) -> Result<Page<Memory>> {
        let limit = page_limit(req.limit, 20, 100)?;
        let after = match &req.starting_after {
            None => None,
            Some(id) => {
                let m = self
                    .store()
                    .memory(&self.tenant, id)
                    .await?
                    .ok_or_else(|| Error::not_found(ResourceKind::Memory, id))?;
                Some(Cursor {
                    at: m.memory.created_at,
                    id: m.memory.id,
                })
            }
        };
        let query = MemoryQuery {
            limit: limit + 1,
            after,
            session_id: req.session_id,
            user_id: req.user_id,
            user_level_only: false,
            memory_type: req.memory_type,
            tags: req.tags,
        };
        let records = self.store().list_memories(&self.tenant, &query).await?;
        Ok(page(
            records.into_iter().map(|r| r.memory).collect(),
            limit,
            |m| &m.id,
        ))
    }

    /// Memories ranked by relevance to `query`, best first, down to `threshold`. See
    /// [`MemoryHit`] for how vector and keyword scores combine.
    pub async fn search_memories(&self, req: SearchMemories) -> Result<Vec<MemoryHit>> {
        if is_blank(&req.query) {
            return Err(Error::invalid("query", "must not be empty"));
        }
        let limit = page_limit(req.limit, 10, 100)?;
        let threshold = match req.threshold {
            None => 0.7,
            Some(t) if (0.0..=1.0).contains(&t) => t as f32,
            Some(t) => return Err(Error::invalid("threshold", format!("{t} is outside 0..=1"))),
        };
        let scope = match (&req.session_id, &req.user_id) {
            (Some(s), _) => SearchScope::Session(s.clone()),
            (None, Some(u)) => SearchScope::User(u.clone()),
            (None, None) => SearchScope::Tenant,
        };
        let hits = self
            .search(&req.query, scope, &req.types, &req.tags, limit, threshold)
            .await?;
        let user = req.user_id.as_ref();
        Ok(hits
            .into_iter()
            .filter(|h| user.is_none_or(|u| h.user_id.as_ref() == Some(u)))
            .collect())
    }

    /// What an agent puts in its next prompt: the session (with its state), the memories
    /// most relevant to `query` from the session and its user's user-level memories, and the
    /// latest turns, newest first.
    pub async fn context(&self, session_id: &str, req: ContextRequest) -> Result<Context> {
        let memory_limit = page_limit(req.memory_limit, 5, 20)?;
        let turn_limit = page_limit(req.turn_limit, 10, 50)?;
        let session = self.live_session(session_id).await?.session;
        let query = req.query.filter(|q| !is_blank(q));
        let memories = match &query {
            Some(q) => {
                let scope = SearchScope::SessionAndUserLevel(
                    session_id.to_owned(),
                    session.user_id.clone(),
                );
                self.search(q, scope, &[], &[], memory_limit, 0.0).await?
            }
            None => self.recent_memories(&session, memory_limit).await?,
        };
        let average_relevance = if query.is_some() && !memories.is_empty() {
            memories.iter().map(|m| m.score).sum::<f32>() / memories.len() as f32
        } else {
            0.0
        };
        let turns = TurnQuery {
            limit: turn_limit,
            descending: true,
            after_turn_number: None,
        };
        let recent_turns = self
            .store()
            .list_turns(&self.tenant, session_id, &turns)
            .await?;
        Ok(Context {
            drift_warning: query.is_some()
                && !memories.is_empty()
                && average_relevance < self.config().embedder.calibration().drift_threshold(),
            session,
            memories,
            recent_turns,
            average_relevance,
        })
    }

    // ----- internals -----

    async fn memory_record(&self, id: &str) -> Result<MemoryRecord> {
        self.store()
            .memory(&self.tenant, id)
            .await?
            .ok_or_else(|| Error::not_found(ResourceKind::Memory, id))
    }

    /// One vector per text from the embedder, checked: as many as texts, each of its
    /// dimensions.
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let embedder = &self.config().embedder;
        let vectors = embedder.embed(texts).await?;
        let dimensions = embedder.dimensions();
        if vectors.len() != texts.len() || vectors.iter().any(|v| v.len() != dimensions) {
            return Err(Error::backend(format!(
                "embedder {} did not return {} vectors of {dimensions} dimensions",
                embedder.model_id(),
                texts.len(),
            )));
        }
        Ok(vectors)
    }

    /// The query's vector, checked; `None` if the embedder fails.
    async fn query_vector(&self, text: &str) -> Option<Vec<f32>> {
        let embedder = &self.config().embedder;
        let v = embedder.embed_query(text).await.ok()?;
        (v.len() == embedder.dimensions()).then_some(v)
    }

    /// The vector of a memory being written, if the embedder embeds on write and answers;
    /// `None` leaves the vector pending.
    async fn vector_on_write(&self, content: &str) -> Option<Vec<f32>> {
        if !self.config().embedder.embeds_on_write() {
            return None;
        }
        self.embed(&[content.to_owned()]).await.ok()?.pop()
    }

    fn queue_if_pending(&self, m: &Memory) {
        if m.embedding_model.is_some() && !m.vector_available {
            self.shared.pending.push(&self.tenant, &m.id);
        }
    }

    /// Embeds the records in one call and stores their vectors where the memory is still at
    /// the record's version (else the change that moved it embedded it); returns how many.
    async fn store_vectors(&self, tenant: &str, records: &[MemoryRecord]) -> Result<u64> {
        if records.is_empty() {
            return Ok(0);
        }
        let model = self.config().embedder.model_id();
        let texts: Vec<String> = records.iter().map(|r| r.memory.content.clone()).collect();
        let vectors = self.embed(&texts).await?;
        let mut fresh = Vec::with_capacity(records.len());
        for (r, vector) in records.iter().zip(vectors) {
            let m = &r.memory;
            let written = self
                .store()
                .set_embedding(tenant, &m.id, m.version, model, vector.clone())
                .await?;
            if written {
                let mut now = r.clone();
                now.memory.embedding_model = Some(model.to_owned());
                now.memory.vector_available = true;
                now.embedding = Some(vector);
                fresh.push(now);
            }
        }
        self.shared
            .indexes
            .update(tenant, |index| fresh.iter().for_each(|r| index.refresh(r)))
            .await;
        Ok(fresh.len() as u64)
    }

    async fn search(
        &self,
        text: &str,
        scope: SearchScope,
        types: &[String],
        tags: &[String],
        limit: usize,
        threshold: f32,
    ) -> Result<Vec<MemoryHit>> {
        let search = MemorySearch {
            keywords: crate::search::keywords(text),
            // The embedder down: keywords still find memories.
            vector: self.query_vector(text).await,
            model: self.config().embedder.model_id().to_owned(),
            calibration: self.config().embedder.calibration(),
            scope,
            types: types.to_vec(),
            tags: tags.to_vec(),
            limit,
            threshold,
        };
        if let Some(found) = self.store().search_memories(&self.tenant, &search).await? {
            return Ok(crate::search::rank_found(&found, &search));
        }
        self.shared
            .indexes
            .search(self.store(), &self.tenant, &search)
            .await
    }

    /// The newest memories of the session and its user's user-level memories.
    async fn recent_memories(&self, session: &Session, limit: usize) -> Result<Vec<MemoryHit>> {
        let mut query = MemoryQuery {
            limit,
            session_id: Some(session.id.clone()),
            ..MemoryQuery::default()
        };
        let mut records = self.store().list_memories(&self.tenant, &query).await?;
        if let Some(user) = &session.user_id {
            query.session_id = None;
            query.user_id = Some(user.clone());
            query.user_level_only = true;
            records.extend(self.store().list_memories(&self.tenant, &query).await?);
        }
        let key = |r: &MemoryRecord| (r.memory.created_at, r.memory.id.clone());
        records.sort_unstable_by_key(|r| std::cmp::Reverse(key(r)));
        records.truncate(limit);
        Ok(records
            .into_iter()
            .map(|r| MemoryHit::of(r.memory, 0.0, 0.0, 0.0))
            .collect())
    }

    fn memory_trace(
        &self,
        m: &Memory,
        action: &str,
        details: serde_json::Value,
        now: Timestamp,
    ) -> crate::Trace {
        self.resource_trace(
            m.session_id.as_deref(),
            ("memory", &m.id),
            action,
            details,
            now,
        )
    }

    fn memory_content(&self, content: String) -> Result<String> {
        if is_blank(&content) {
            return Err(Error::invalid("content", "must not be empty"));
        }
        let chars = content.chars().count();
        if chars > MAX_MEMORY_CHARS {
            return Err(Error::ContentTooLarge {
                size: chars,
                limit: MAX_MEMORY_CHARS,
            });
        }
        Ok(content)
    }

    fn memory_type(&self, memory_type: Option<String>) -> Result<String> {
        match memory_type {
            None => Ok("general".to_owned()),
            Some(t) => self.identifier("type", t),
        }
    }

    fn tags(&self, tags: Vec<String>) -> Result<Vec<String>> {
        if tags.len() > MAX_TAGS {
            return Err(Error::invalid("tags", format!("more than {MAX_TAGS} tags")));
        }
        let mut out: Vec<String> = Vec::with_capacity(tags.len());
        for t in tags {
            let t = self.identifier("tags", t)?;
            if !out.contains(&t) {
                out.push(t);
            }
        }
        Ok(out)
    }
}

/// Whether the memory wants a vector of `model` that it lacks: made by another model (the
/// embedder changed), pending, or imported without it.
fn needs_vector(r: &MemoryRecord, model: &str) -> bool {
    r.memory
        .embedding_model
        .as_ref()
        .is_some_and(|m| m != model || r.embedding.is_none())
}

/// The most pending memories [`StateBase::embed_pending`] takes at a time.
pub const EMBED_BATCH: usize = 64;

/// The most pending memories a process keeps in its queue (about 50 bytes each). Past it,
/// a tenant's are not queued one by one: [`StateBase::embed_pending`] scans the tenant's
/// memories for them once the queue is empty.
pub const MAX_QUEUED_VECTORS: usize = 100_000;

/// A memory whose vector is pending: its tenant and id.
type Pending = (std::sync::Arc<str>, String);

/// Memories of this process whose vectors are pending, by tenant and id, oldest first.
#[derive(Debug, Default)]
pub(crate) struct PendingVectors {
    queue: parking_lot::Mutex<std::collections::VecDeque<Pending>>,
    /// Tenants with pending memories that the full queue left out: to be scanned.
    overflowed: parking_lot::Mutex<std::collections::BTreeSet<std::sync::Arc<str>>>,
    /// Taken by an `embed_pending` that has not finished.
    in_flight: std::sync::atomic::AtomicUsize,
    wanted: tokio::sync::Notify,
}

impl PendingVectors {
    fn push(&self, tenant: &std::sync::Arc<str>, id: &str) {
        let mut queue = self.queue.lock();
        if queue.len() < MAX_QUEUED_VECTORS {
            queue.push_back((tenant.clone(), id.to_owned()));
        } else {
            self.overflowed.lock().insert(tenant.clone());
        }
        self.wanted.notify_one();
    }

    /// A tenant to scan, once nothing is queued.
    fn take_overflowed(&self) -> Option<std::sync::Arc<str>> {
        if !self.queue.lock().is_empty() {
            return None;
        }
        self.overflowed.lock().pop_first()
    }

    fn put_back_overflowed(&self, tenant: std::sync::Arc<str>) {
        self.overflowed.lock().insert(tenant);
    }

    /// Takes up to `n` of the oldest; [`done`](Self::done) or
    /// [`put_back`](Self::put_back) says what became of them.
    fn take(&self, n: usize) -> Vec<Pending> {
        let mut queue = self.queue.lock();
        let n = n.min(queue.len());
        self.in_flight.fetch_add(n, Ordering::SeqCst);
        queue.drain(..n).collect()
    }

    fn done(&self, batch: &[Pending]) {
        self.in_flight.fetch_sub(batch.len(), Ordering::SeqCst);
    }

    /// Puts a batch back at the front, in its order.
    fn put_back(&self, batch: Vec<Pending>) {
        let mut queue = self.queue.lock();
        self.done(&batch);
        for item in batch.into_iter().rev() {
            queue.push_front(item);
        }
    }

    /// Those waiting and those being embedded; a tenant to scan counts one.
    fn len(&self) -> usize {
        self.queue.lock().len()
            + self.in_flight.load(Ordering::SeqCst)
            + self.overflowed.lock().len()
    }
}

/// Same content in the same scope (the session, or the user for user-level memories) gives
/// the same key.
fn dedupe_key(m: &Memory) -> String {
    let scope = match (&m.session_id, &m.user_id) {
        (Some(s), _) => format!("session:{s}"),
        (None, Some(u)) => format!("user:{u}"),
        (None, None) => "tenant".to_owned(),
    };
    let digest = Sha256::new()
        .chain_update(scope.as_bytes())
        .chain_update([0])
        .chain_update(m.content.as_bytes())
        .finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The first 100 characters, for traces.
fn preview(content: &str) -> String {
    content.chars().take(100).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::embed::FlakyEmbedder;
    use crate::{Config, CreateSession, MemoryStore};
    use std::sync::Arc;

    /// The queue holds at most `MAX_QUEUED_VECTORS`; the memories it leaves out get their
    /// vectors by a scan of their tenant once it is empty.
    #[tokio::test]
    async fn past_the_queue_limit_pending_vectors_are_found_by_a_scan() {
        let config = Config {
            embedder: Arc::new(FlakyEmbedder::remote()),
            ..Config::default()
        };
        let sb = StateBase::with_config(MemoryStore::new(), config);
        let s = sb.create_session(CreateSession::new("a")).await.unwrap();
        let n = MAX_QUEUED_VECTORS + 3;
        for i in 0..n {
            let m = AddMemory::new(&s.id, &format!("note {i}"));
            sb.add_memory(m).await.unwrap();
        }
        assert_eq!(sb.shared.pending.queue.lock().len(), MAX_QUEUED_VECTORS);
        assert_eq!(
            sb.pending_vectors(),
            MAX_QUEUED_VECTORS + 1,
            "one tenant to scan"
        );
        let mut made = 0;
        while sb.pending_vectors() > 0 {
            made += sb.embed_pending().await.unwrap();
        }
        assert_eq!(made, n as u64, "each memory embedded once");
        let newest = sb.list_memories(ListMemories::default()).await.unwrap();
        assert!(newest.data.iter().all(|m| m.vector_available));
    }
}
