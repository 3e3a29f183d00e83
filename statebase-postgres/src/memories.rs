//! Memories with their revisions and vectors (a pgvector column).

use crate::query::{self, get_uint, int, Filtered, Res};
use crate::sessions::erased;
use crate::sessions::touch_session;
use crate::traces::insert_trace;
use crate::{PostgresError, PostgresStore};
use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use pgvector::Vector;
use statebase_core::search::keywords;
use statebase_core::store::*;
use statebase_core::{Error, Memory, MemoryRevision, Object, ResourceKind, Result, Trace};
use std::collections::HashMap;
use tokio_postgres::types::Json;
use tokio_postgres::Row;

const COLUMNS: &str = "id, session_id, user_id, content, memory_type, tags, metadata, \
     version, embedding_model, embedding, dedupe_key, created_at, updated_at";

/// `text` as an SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The name of the HNSW index of the vectors `model` made, `dims` long.
fn vector_index_name(model: &str, dims: usize) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{model}\0{dims}"));
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("memories_hnsw_{hex}")
}

impl PostgresStore {
    /// Builds the HNSW index of the vectors `model` made, `dims` long, in the background,
    /// once per process: searches meanwhile compare exactly. The index is partial (vectors
    /// of two models are not comparable) and on an expression (an index needs a fixed
    /// dimension, which the column has not). A build that fails is tried again at a later
    /// search.
    fn see_to_vector_index(&self, model: &str, dims: usize) {
        let key = (model.to_owned(), dims);
        if !self.vector_indexes.lock().insert(key.clone()) {
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
            let name = vector_index_name(&key.0, dims);
            match store.build_vector_index(&name, &key.0, dims).await {
                Ok(()) => tracing::info!(index = %name, model = %key.0, dims, "vector index ready"),
                Err(e) => {
                    tracing::warn!(error = %e, index = %name, "building the vector index failed");
                    store.vector_indexes.lock().remove(&key);
                }
            }
        });
    }

    async fn build_vector_index(&self, name: &str, model: &str, dims: usize) -> Res<()> {
        let conn = self.conn().await?;
        // One builder at a time, of every process: an index left invalid by a build that
        // stopped is then a leftover to drop, not another server's build in progress.
        let lock = query::row(
            &conn,
            "SELECT pg_try_advisory_lock(hashtext($1)) AS got",
            &[&name],
        )
        .await?
        .map(|r| r.get::<_, bool>("got"))
        .unwrap_or(false);
        if !lock {
            return Ok(());
        }
        let built = async {
            let invalid = query::row(
                &conn,
                "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                 WHERE c.relname = $1 AND NOT i.indisvalid",
                &[&name],
            )
            .await?;
            // A big table takes longer than the statement timeout to index.
            conn.batch_execute("SET statement_timeout = 0").await?;
            if invalid.is_some() {
                conn.batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {name}"))
                    .await?;
            }
            conn.batch_execute(&format!(
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON memories
                 USING hnsw ((embedding::vector({dims})) vector_cosine_ops)
                 WHERE embedding_model = {}",
                literal(model)
            ))
            .await?;
            Ok::<_, PostgresError>(())
        }
        .await;
        conn.batch_execute("RESET statement_timeout; SELECT pg_advisory_unlock_all()")
            .await?;
        built
    }

    /// The candidates of a search (see [`MemoryRecords::search_memories`]).
    async fn search(&self, tenant: &str, q: &MemorySearch) -> Res<Vec<ScoredMemory>> {
        // Three reads: the nearest by vector; the keyword index's matches, whose keywords
        // are counted here (cheaper than in SQL) and kept only above the nearest's bar;
        // then the candidates' records with their exact vector scores.
        let conn = self.conn().await?;
        let model = literal(&q.model);
        let vector = q.vector.clone().map(Vector::from);
        let mut nearest: Vec<(String, f32)> = Vec::new();
        if let Some(v) = &vector {
            let dims = v.as_slice().len();
            self.see_to_vector_index(&q.model, dims);
            let mut f = search_filters(tenant, q);
            // The model and dimensions are written out, so that the planner can use the
            // model's partial HNSW index (see `see_to_vector_index`) for a search of the whole
            // tenant. A session's or a user's memories are few, found by their B-tree
            // indexes and compared exactly: walking the graph of every tenant's vectors for
            // the few that pass such a filter costs far more.
            let p = f.bind(v.clone());
            let distance = match q.scope {
                SearchScope::Tenant => format!("embedding::vector({dims}) <=> {p}::vector({dims})"),
                _ => format!("embedding <=> {p}"),
            };
            // A memory whose vector is pending has its model but no vector yet.
            f.and(&format!(
                "embedding_model = {model} AND embedding IS NOT NULL"
            ));
            f.select(format!(
                "SELECT id, (1 - ({distance}))::real AS vs FROM memories"
            ));
            let limit = f.bind(query::limit(q.limit));
            let order = format!("ORDER BY {distance} LIMIT {limit}");
            for r in f.rows(&conn, &order).await? {
                nearest.push((r.try_get("id")?, r.try_get("vs")?));
            }
        }
        let mut counts: HashMap<String, usize> = HashMap::new();
        if !q.keywords.is_empty() {
            let mut f = search_filters(tenant, q);
            let words = f.bind(q.keywords.clone());
            f.and(&format!("keywords && {words}"));
            f.select("SELECT id, keywords FROM memories".to_owned());
            for r in f.rows(&conn, "").await? {
                let keywords: Vec<String> = r.try_get("keywords")?;
                let matched = keywords.iter().filter(|k| q.keywords.contains(k)).count();
                counts.insert(r.try_get("id")?, matched);
            }
        }
        let share = |id: &str| counts.get(id).map_or(0.0, |&c| q.keyword_share(c));
        let bar = q.bar(nearest.iter().map(|(id, vs)| q.score(*vs, share(id))));
        let ceiling = q.vector_ceiling(nearest.iter().map(|n| n.1));
        let mut ids: Vec<String> = nearest.into_iter().map(|(id, _)| id).collect();
        if let Some(min) = q.min_keywords(ceiling) {
            let above = counts
                .iter()
                .filter(|&(id, &c)| {
                    c >= min && q.score(ceiling, q.keyword_share(c)) > bar && !ids.contains(id)
                })
                .map(|(id, _)| id.clone())
                .collect::<Vec<_>>();
            ids.extend(above);
        }
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // The hits need no vectors: leave them in the database.
        let columns = COLUMNS.replacen("embedding,", "NULL::vector AS embedding,", 1);
        let sql = format!(
            "SELECT {columns}, embedding IS NOT NULL AS has_vector,
                 CASE WHEN $3::vector IS NOT NULL AND embedding_model = {model}
                     AND embedding IS NOT NULL
                 THEN (1 - (embedding <=> $3))::real ELSE 0 END AS vector_score
             FROM memories WHERE tenant = $1 AND id = ANY($2)"
        );
        let found = query::rows(&conn, &sql, &[&tenant, &ids, &vector]).await?;
        let scored = found
            .iter()
            .map(|r| {
                let mut memory = read_memory(r)?.memory;
                memory.vector_available = r.try_get("has_vector")?;
                Ok(ScoredMemory {
                    keyword_score: share(&memory.id),
                    vector_score: r.try_get("vector_score")?,
                    memory,
                })
            })
            .collect::<Res<_>>()?;
        Ok(scored)
    }
}

/// The `WHERE` of a search's scope, types and tags.
fn search_filters(tenant: &str, q: &MemorySearch) -> Filtered {
    let mut f = Filtered::new("", "tenant", tenant);
    match &q.scope {
        SearchScope::Tenant => {}
        SearchScope::Session(s) => f.eq("session_id", Some(s)),
        SearchScope::User(u) => f.eq("user_id", Some(u)),
        SearchScope::SessionAndUserLevel(s, None) => f.eq("session_id", Some(s)),
        SearchScope::SessionAndUserLevel(s, Some(u)) => {
            let (s, u) = (f.bind(s.clone()), f.bind(u.clone()));
            f.and(&format!(
                "(session_id = {s} OR (session_id IS NULL AND user_id = {u}))"
            ));
        }
    }
    if !q.types.is_empty() {
        let types = f.bind(q.types.clone());
        f.and(&format!("memory_type = ANY({types})"));
    }
    if !q.tags.is_empty() {
        let tags = f.bind(q.tags.clone());
        f.and(&format!("tags && {tags}"));
    }
    f
}

fn read_memory(r: &Row) -> Res<MemoryRecord> {
    let embedding = r.try_get::<_, Option<Vector>>("embedding")?.map(Vec::from);
    Ok(MemoryRecord {
        memory: Memory {
            id: r.try_get("id")?,
            session_id: r.try_get("session_id")?,
            user_id: r.try_get("user_id")?,
            content: r.try_get("content")?,
            memory_type: r.try_get("memory_type")?,
            tags: r.try_get("tags")?,
            metadata: r.try_get::<_, Json<Object>>("metadata")?.0,
            version: get_uint(r, "version")?,
            embedding_model: r.try_get("embedding_model")?,
            vector_available: embedding.is_some(),
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
        },
        embedding,
        dedupe_key: r.try_get("dedupe_key")?,
    })
}

async fn memory(c: &impl GenericClient, tenant: &str, id: &str) -> Res<Option<MemoryRecord>> {
    let found = query::row(
        c,
        &format!("SELECT {COLUMNS} FROM memories WHERE tenant = $1 AND id = $2"),
        &[&tenant, &id],
    )
    .await?;
    found.as_ref().map(read_memory).transpose()
}

async fn memory_by_key(
    c: &impl GenericClient,
    tenant: &str,
    key: &str,
) -> Res<Option<MemoryRecord>> {
    let found = query::row(
        c,
        &format!("SELECT {COLUMNS} FROM memories WHERE tenant = $1 AND dedupe_key = $2"),
        &[&tenant, &key],
    )
    .await?;
    found.as_ref().map(read_memory).transpose()
}

async fn insert_revision(c: &impl GenericClient, tenant: &str, m: &Memory) -> Res<()> {
    query::execute(
        c,
        "INSERT INTO memory_revisions (tenant, memory_id, version, body) VALUES ($1, $2, $3, $4)",
        &[
            &tenant,
            &m.id,
            &int(m.version)?,
            &Json(MemoryRevision::of(m)),
        ],
    )
    .await?;
    Ok(())
}

/// Inserts the memory's row (not its revision) unless another has its dedupe key, and
/// says whether it did.
async fn insert_row(c: &impl GenericClient, tenant: &str, record: &MemoryRecord) -> Res<bool> {
    let m = &record.memory;
    let inserted = query::execute(
        c,
        &format!(
            "INSERT INTO memories (tenant, {COLUMNS}, keywords)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
             ON CONFLICT (tenant, dedupe_key) DO NOTHING"
        ),
        &[
            &tenant,
            &m.id,
            &m.session_id,
            &m.user_id,
            &m.content,
            &m.memory_type,
            &m.tags,
            &Json(&m.metadata),
            &int(m.version)?,
            &m.embedding_model,
            &record.embedding.clone().map(Vector::from),
            &record.dedupe_key,
            &m.created_at,
            &m.updated_at,
            &keywords(&m.content),
        ],
    )
    .await?;
    Ok(inserted == 1)
}

/// Inserts the archived memory with its revisions, in the caller's transaction; false if
/// the tenant has a memory with its id; `DuplicateContent` if another has its dedupe key.
pub async fn import_memory(c: &impl GenericClient, tenant: &str, a: &MemoryArchive) -> Res<bool> {
    let id = &a.record.memory.id;
    if memory(c, tenant, id).await?.is_some() || erased(c, tenant, id).await? {
        return Ok(false);
    }
    if !insert_row(c, tenant, &a.record).await? {
        let other = memory_by_key(c, tenant, &a.record.dedupe_key).await?;
        let other = other.map_or_else(String::new, |o| o.memory.id);
        return Err(Error::DuplicateContent { other }.into());
    }
    let numbers = a
        .revisions
        .iter()
        .map(|r| int(r.version))
        .collect::<Res<Vec<_>>>()?;
    let bodies: Vec<_> = a.revisions.iter().map(Json).collect();
    query::execute(
        c,
        "INSERT INTO memory_revisions (tenant, memory_id, version, body)
         SELECT $1, $2, * FROM unnest($3::bigint[], $4::json[])",
        &[&tenant, id, &numbers, &bodies],
    )
    .await?;
    Ok(true)
}

#[async_trait]
impl MemoryRecords for PostgresStore {
    async fn insert_memory(&self, tenant: &str, new: NewMemory) -> Result<Option<MemoryRecord>> {
        let m = &new.record.memory;
        loop {
            let mut conn = self.conn().await?;
            let tx = query::begin(&mut conn).await?;
            if let Some(session_id) = &m.session_id {
                touch_session(&tx, tenant, session_id, 1).await?;
            }
            if insert_row(&tx, tenant, &new.record).await? {
                insert_revision(&tx, tenant, m).await?;
                insert_trace(&tx, tenant, &new.trace).await?;
                query::commit(tx).await?;
                return Ok(None);
            }
            // The session's count goes back with the rest.
            tx.rollback().await.map_err(PostgresError::from)?;
            // Else it went between the insert and the read: try again.
            if let Some(existing) = memory_by_key(&conn, tenant, &new.record.dedupe_key).await? {
                return Ok(Some(existing));
            }
        }
    }

    async fn import_memory(&self, tenant: &str, archive: MemoryArchive) -> Result<bool> {
        let mut conn = self.conn().await?;
        let tx = query::begin(&mut conn).await?;
        let imported = import_memory(&tx, tenant, &archive).await?;
        query::commit(tx).await?;
        Ok(imported)
    }

    async fn memory(&self, tenant: &str, id: &str) -> Result<Option<MemoryRecord>> {
        let conn = self.conn().await?;
        Ok(memory(&conn, tenant, id).await?)
    }

    async fn update_memory(&self, tenant: &str, u: MemoryUpdate) -> Result<MemoryRecord> {
        let m = &u.record.memory;
        let mut conn = self.conn().await?;
        let tx = query::begin(&mut conn).await?;
        let other = query::row(
            &tx,
            "SELECT id FROM memories WHERE tenant = $1 AND dedupe_key = $2 AND id <> $3",
            &[&tenant, &u.record.dedupe_key, &m.id],
        )
        .await?;
        if let Some(other) = other {
            let other = other.try_get("id").map_err(PostgresError::from)?;
            return Err(Error::DuplicateContent { other });
        }
        let changed = query::execute(
            &tx,
            "UPDATE memories SET content = $4, memory_type = $5, tags = $6, metadata = $7,
                 version = $8, embedding_model = $9, embedding = $10, dedupe_key = $11,
                 updated_at = $12, keywords = $13
             WHERE tenant = $1 AND id = $2 AND version = $3",
            &[
                &tenant,
                &m.id,
                &int(u.expected_version)?,
                &m.content,
                &m.memory_type,
                &m.tags,
                &Json(&m.metadata),
                &int(m.version)?,
                &m.embedding_model,
                &u.record.embedding.clone().map(Vector::from),
                &u.record.dedupe_key,
                &m.updated_at,
                &keywords(&m.content),
            ],
        )
        .await?;
        if changed == 0 {
            let current = memory(&tx, tenant, &m.id)
                .await?
                .ok_or_else(|| Error::not_found(ResourceKind::Memory, &m.id))?;
            return Err(Error::Conflict {
                expected: u.expected_version,
                actual: current.memory.version,
            });
        }
        insert_revision(&tx, tenant, m).await?;
        insert_trace(&tx, tenant, &u.trace).await?;
        query::commit(tx).await?;
        Ok(u.record)
    }

    async fn set_embedding(
        &self,
        tenant: &str,
        id: &str,
        version: u64,
        model: &str,
        vector: Vec<f32>,
    ) -> Result<bool> {
        let conn = self.conn().await?;
        let changed = query::execute(
            &conn,
            "UPDATE memories SET embedding_model = $4, embedding = $5
             WHERE tenant = $1 AND id = $2 AND version = $3",
            &[&tenant, &id, &int(version)?, &model, &Vector::from(vector)],
        )
        .await?;
        Ok(changed > 0)
    }

    async fn delete_memory(&self, tenant: &str, id: &str, trace: Trace) -> Result<MemoryRecord> {
        let mut conn = self.conn().await?;
        let tx = query::begin(&mut conn).await?;
        // Its revisions go by ON DELETE CASCADE.
        let gone = query::row(
            &tx,
            &format!("DELETE FROM memories WHERE tenant = $1 AND id = $2 RETURNING {COLUMNS}"),
            &[&tenant, &id],
        )
        .await?
        .ok_or_else(|| Error::not_found(ResourceKind::Memory, id))?;
        let gone = read_memory(&gone)?;
        if let Some(session_id) = &gone.memory.session_id {
            touch_session(&tx, tenant, session_id, -1).await?;
        }
        insert_trace(&tx, tenant, &trace).await?;
        query::commit(tx).await?;
        Ok(gone)
    }

    async fn list_memories(&self, tenant: &str, q: &MemoryQuery) -> Result<Vec<MemoryRecord>> {
        let mut f = Filtered::new(&format!("SELECT {COLUMNS} FROM memories"), "tenant", tenant);
        f.before("created_at", "id", q.after.as_ref());
        f.eq("session_id", q.session_id.as_ref());
        f.eq("user_id", q.user_id.as_ref());
        f.eq("memory_type", q.memory_type.as_ref());
        if q.user_level_only {
            f.and("session_id IS NULL");
        }
        if !q.tags.is_empty() {
            let tags = f.bind(q.tags.clone());
            f.and(&format!("tags && {tags}"));
        }
        let conn = self.conn().await?;
        let found = f.newest_first(&conn, "created_at", "id", q.limit).await?;
        Ok(found.iter().map(read_memory).collect::<Res<_>>()?)
    }

    async fn count_memories(&self, tenant: &str) -> Result<u64> {
        Ok(self.count("memories", tenant).await?)
    }

    async fn memory_revisions(&self, tenant: &str, id: &str) -> Result<Vec<MemoryRevision>> {
        let conn = self.conn().await?;
        let found = query::rows(
            &conn,
            "SELECT body FROM memory_revisions WHERE tenant = $1 AND memory_id = $2
             ORDER BY version",
            &[&tenant, &id],
        )
        .await?;
        let revisions = found
            .iter()
            .map(|r| Ok(r.try_get::<_, Json<MemoryRevision>>("body")?.0))
            .collect::<Res<_>>()?;
        Ok(revisions)
    }

    async fn search_memories(
        &self,
        tenant: &str,
        q: &MemorySearch,
    ) -> Result<Option<Vec<ScoredMemory>>> {
        Ok(Some(self.search(tenant, q).await?))
    }

    async fn scan_memories(
        &self,
        tenant: &str,
        after_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MemoryRecord>> {
        let conn = self.conn().await?;
        let found = query::rows(
            &conn,
            &format!(
                "SELECT {COLUMNS} FROM memories WHERE tenant = $1 AND id > $2
                 ORDER BY id LIMIT $3"
            ),
            &[&tenant, &after_id.unwrap_or(""), &query::limit(limit)],
        )
        .await?;
        Ok(found.iter().map(read_memory).collect::<Res<_>>()?)
    }
}
