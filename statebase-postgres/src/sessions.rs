//! Sessions with their state versions and turns.
//!
//! Every write is one transaction whose first statement is a compare-and-set `UPDATE` of
//! the session row: it takes the row's lock, so concurrent writes to a session run one
//! after the other, and a stale expectation changes no row (then a read says why). The
//! appends, the writes agents make most, are one statement: the `UPDATE` and, in the same
//! `WITH`, the inserts of the rows it writes, made only if it changed the session.

use crate::entities::import_entity;
use crate::memories::import_memory;
use crate::query::{self, clamp, get_uint, int, Filtered, Res};
use crate::traces::{insert_trace, insert_trace_for, TraceValues};
use crate::{PostgresError, PostgresStore};
use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use statebase_core::store::*;
use statebase_core::{
    Erasure, Error, Object, ResourceKind, Result, Retention, RetentionPolicy, Session, Timestamp,
    Trace, Turn,
};
use std::ops::Range;
use tokio_postgres::types::{Json, ToSql};
use tokio_postgres::Row;

/// The tenants' own policies as `(tenant, '', body)` beside the sessions': one order.
const POLICIES: &str = "SELECT tenant, '' COLLATE \"C\" AS session_id, body FROM tenant_retention
     UNION ALL SELECT tenant, session_id, body FROM session_retention";

fn read_policy(r: &Row) -> Res<RetentionPolicy> {
    let session_id: String = r.try_get("session_id")?;
    Ok(RetentionPolicy {
        tenant: r.try_get("tenant")?,
        session_id: Some(session_id).filter(|s| !s.is_empty()),
        retention: r.try_get::<_, Json<Retention>>("body")?.0,
    })
}

const COLUMNS: &str = "id, agent_id, user_id, state, version, metadata, memory_count, \
     turn_count, ttl_expires_at, created_at, updated_at, revision";

/// The columns, with the state left out when the caller already has it.
fn returning(state_known: bool) -> String {
    if state_known {
        COLUMNS.replacen("state", "'{}'::json AS state", 1)
    } else {
        COLUMNS.to_owned()
    }
}

/// Sessions read at a time while a list filters by metadata.
const METADATA_BATCH: usize = 256;

/// The sessions of a list query, its metadata filter aside, after `after`.
fn sessions_query(tenant: &str, q: &SessionQuery, after: Option<&Cursor>) -> Filtered {
    let mut f = Filtered::new(&format!("SELECT {COLUMNS} FROM sessions"), "tenant", tenant);
    f.before("created_at", "id", after);
    f.time("ttl_expires_at", ">", q.live_at);
    f.eq("agent_id", q.agent_id.as_ref());
    f.eq("user_id", q.user_id.as_ref());
    f.time("created_at", ">", q.created_after);
    f.time("created_at", "<", q.created_before);
    f
}

fn read_session(r: &Row) -> Res<SessionRecord> {
    Ok(SessionRecord {
        session: Session {
            id: r.try_get("id")?,
            agent_id: r.try_get("agent_id")?,
            user_id: r.try_get("user_id")?,
            state: r.try_get::<_, Json<Object>>("state")?.0,
            version: get_uint(r, "version")?,
            metadata: r.try_get::<_, Json<Object>>("metadata")?.0,
            memory_count: get_uint(r, "memory_count")?,
            turn_count: get_uint(r, "turn_count")?,
            ttl_expires_at: r.try_get("ttl_expires_at")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
        },
        revision: get_uint(r, "revision")?,
    })
}

pub async fn session(c: &impl GenericClient, tenant: &str, id: &str) -> Res<Option<SessionRecord>> {
    let found = query::row(
        c,
        &format!("SELECT {COLUMNS} FROM sessions WHERE tenant = $1 AND id = $2"),
        &[&tenant, &id],
    )
    .await?;
    found.as_ref().map(read_session).transpose()
}

/// The numbers a write's preconditions check, or `NotFound`: read after a
/// compare-and-set changed nothing, to say why.
struct Counters {
    version: u64,
    turn_count: u64,
    revision: u64,
}

async fn counters(c: &impl GenericClient, tenant: &str, id: &str) -> Res<Counters> {
    let found = query::row(
        c,
        "SELECT version, turn_count, revision FROM sessions WHERE tenant = $1 AND id = $2",
        &[&tenant, &id],
    )
    .await?
    .ok_or_else(|| Error::not_found(ResourceKind::Session, id))?;
    Ok(Counters {
        version: get_uint(&found, "version")?,
        turn_count: get_uint(&found, "turn_count")?,
        revision: get_uint(&found, "revision")?,
    })
}

fn conflict(expected: u64, actual: u64) -> PostgresError {
    Error::Conflict { expected, actual }.into()
}

/// Takes the session's row lock and bumps its revision if the session exists: what a write
/// of something the session counts (a memory) does first. `NotFound` if it does not.
pub async fn touch_session(
    c: &impl GenericClient,
    tenant: &str,
    id: &str,
    memory_count_change: i64,
) -> Res<()> {
    let changed = query::execute(
        c,
        "UPDATE sessions SET memory_count = greatest(memory_count + $3, 0),
             revision = revision + 1
         WHERE tenant = $1 AND id = $2",
        &[&tenant, &id, &memory_count_change],
    )
    .await?;
    if changed == 0 {
        return Err(Error::not_found(ResourceKind::Session, id).into());
    }
    Ok(())
}

async fn insert_version(
    c: &impl GenericClient,
    tenant: &str,
    session_id: &str,
    v: &VersionRecord,
) -> Res<()> {
    query::execute(
        c,
        "INSERT INTO versions (tenant, session_id, version, created_at, body)
         VALUES ($1, $2, $3, $4, $5)",
        &[
            &tenant,
            &session_id,
            &int(v.version)?,
            &v.created_at,
            &v.body,
        ],
    )
    .await?;
    Ok(())
}

/// The part of a statement that writes a state version of the session `$2` of the tenant
/// `$1`, numbered `$version`, created at `$created` with the body `$created + 1`, once for
/// each row of `source` (a compare-and-set's rows).
fn insert_version_for(source: &str, version: usize, created: usize) -> String {
    format!(
        "INSERT INTO versions (tenant, session_id, version, created_at, body)
         SELECT $1, $2, ${version}, ${created}, ${} FROM {source}",
        created + 1
    )
}

/// Inserts the session's row unless the tenant has one with its id, and says whether it
/// did.
/// True if the tenant's session or memory `id` was erased.
pub async fn erased(c: &impl GenericClient, tenant: &str, id: &str) -> Res<bool> {
    let sql = "SELECT 1 FROM erased WHERE tenant = $1 AND id = $2";
    Ok(query::row(c, sql, &[&tenant, &id]).await?.is_some())
}

/// Erases the user's records (see [`SessionLog::erase_user`]) in `tx`.
async fn erase_user(
    tx: &impl GenericClient,
    tenant: &str,
    user_id: &str,
    trace: Trace,
) -> Res<Erasure> {
    let ids = |found: Vec<Row>| -> Res<Vec<String>> {
        found.iter().map(|r| Ok(r.try_get("id")?)).collect()
    };
    // Locked: a write to one of them waits for the erasure, then finds nothing.
    let sessions = ids(query::rows(
        tx,
        "SELECT id FROM sessions WHERE tenant = $1 AND user_id = $2 ORDER BY id FOR UPDATE",
        &[&tenant, &user_id],
    )
    .await?)?;
    let memories = ids(query::rows(
        tx,
        "SELECT id FROM memories WHERE tenant = $1 AND (user_id = $2 OR session_id = ANY ($3))
         ORDER BY id FOR UPDATE",
        &[&tenant, &user_id, &sessions],
    )
    .await?)?;
    let owned = |table: &str| {
        format!("SELECT count(*) AS n FROM {table} WHERE tenant = $1 AND session_id = ANY ($2)")
    };
    let mut counts = Vec::new();
    for table in ["versions", "turns", "entities"] {
        let row = query::row(tx, &owned(table), &[&tenant, &sessions]).await?;
        counts.push(row.map_or(Ok(0), |r| get_uint(&r, "n"))?);
    }
    let erased: Vec<&String> = sessions.iter().chain(&memories).collect();
    query::execute(
        tx,
        "INSERT INTO erased (tenant, id, user_id, erased_at)
         SELECT $1, unnest($2::text[]), $3, $4 ON CONFLICT DO NOTHING",
        &[&tenant, &erased, &user_id, &trace.timestamp],
    )
    .await?;
    let traces = query::execute(
        tx,
        "DELETE FROM traces WHERE tenant = $1 AND (session_id = ANY ($2) OR resource_id = ANY ($2))",
        &[&tenant, &erased],
    )
    .await?;
    let mut subjects: Vec<String> = erased.iter().map(|s| s.to_string()).collect();
    subjects.push(format!("user:{user_id}"));
    let idempotent_responses = query::execute(
        tx,
        "DELETE FROM idempotent_responses WHERE tenant = $1 AND subjects && $2",
        &[&tenant, &subjects],
    )
    .await?;
    // What the sessions own goes by ON DELETE CASCADE.
    query::execute(
        tx,
        "DELETE FROM memories WHERE tenant = $1 AND id = ANY ($2)",
        &[&tenant, &memories],
    )
    .await?;
    query::execute(
        tx,
        "DELETE FROM sessions WHERE tenant = $1 AND id = ANY ($2)",
        &[&tenant, &sessions],
    )
    .await?;
    let erasure = Erasure {
        sessions: sessions.len() as u64,
        versions: counts[0],
        turns: counts[1],
        memories: memories.len() as u64,
        entities: counts[2],
        traces,
        idempotent_responses,
    };
    insert_trace(tx, tenant, &erasure.into_trace(trace)).await?;
    Ok(erasure)
}

async fn insert_row(c: &impl GenericClient, tenant: &str, record: &SessionRecord) -> Res<bool> {
    let s = &record.session;
    let inserted = query::execute(
        c,
        &format!(
            "INSERT INTO sessions (tenant, {COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             ON CONFLICT DO NOTHING"
        ),
        &[
            &tenant,
            &s.id,
            &s.agent_id,
            &s.user_id,
            &Json(&s.state),
            &int(s.version)?,
            &Json(&s.metadata),
            &int(s.memory_count)?,
            &int(s.turn_count)?,
            &s.ttl_expires_at,
            &s.created_at,
            &s.updated_at,
            &int(record.revision)?,
        ],
    )
    .await?;
    Ok(inserted == 1)
}

/// Inserts the archived session's versions and turns, each kind in one statement.
async fn import_log(c: &impl GenericClient, tenant: &str, a: &SessionArchive) -> Res<()> {
    let id = &a.record.session.id;
    let numbers = a
        .versions
        .iter()
        .map(|v| int(v.version))
        .collect::<Res<Vec<_>>>()?;
    let times: Vec<_> = a.versions.iter().map(|v| v.created_at).collect();
    let bodies: Vec<&[u8]> = a.versions.iter().map(|v| v.body.as_slice()).collect();
    query::execute(
        c,
        "INSERT INTO versions (tenant, session_id, version, created_at, body)
         SELECT $1, $2, * FROM unnest($3::bigint[], $4::timestamptz[], $5::bytea[])",
        &[&tenant, id, &numbers, &times, &bodies],
    )
    .await?;
    let turn_ids: Vec<_> = a.turns.iter().map(|t| &t.id).collect();
    let turn_numbers = a
        .turns
        .iter()
        .map(|t| int(t.turn_number))
        .collect::<Res<Vec<_>>>()?;
    let turns: Vec<_> = a.turns.iter().map(Json).collect();
    query::execute(
        c,
        "INSERT INTO turns (tenant, session_id, id, turn_number, body)
         SELECT $1, $2, * FROM unnest($3::text[], $4::bigint[], $5::json[])",
        &[&tenant, id, &turn_ids, &turn_numbers, &turns],
    )
    .await?;
    Ok(())
}

impl PostgresStore {
    /// Runs `delete`, whose parameters are the tenant, the session and `bound`, in one
    /// transaction with the session, writing `trace` if it removed any row; answers how
    /// many. `NotFound` if there is no such session.
    async fn prune_rows(
        &self,
        tenant: &str,
        session_id: &str,
        delete: &str,
        bound: &(dyn ToSql + Sync),
        trace: Trace,
    ) -> Result<u64> {
        let mut conn = self.conn().await?;
        let tx = query::begin(&mut conn).await?;
        if session(&tx, tenant, session_id).await?.is_none() {
            return Err(Error::not_found(ResourceKind::Session, session_id));
        }
        let gone = query::execute(&tx, delete, &[&tenant, &session_id, bound]).await?;
        if gone > 0 {
            insert_trace(&tx, tenant, &trace).await?;
        }
        query::commit(tx).await?;
        Ok(gone)
    }
}

#[async_trait]
impl SessionLog for PostgresStore {
    async fn import_session(&self, tenant: &str, a: SessionArchive) -> Result<bool> {
        let mut conn = self.conn().await?;
        let tx = query::begin(&mut conn).await?;
        if erased(&tx, tenant, &a.record.session.id).await?
            || !insert_row(&tx, tenant, &a.record).await?
        {
            return Ok(false);
        }
        import_log(&tx, tenant, &a).await?;
        for m in &a.memories {
            if !import_memory(&tx, tenant, m).await? {
                let id = &m.record.memory.id;
                return Err(Error::backend(format!("memory id {id} already exists")));
            }
        }
        for e in &a.entities {
            import_entity(&tx, tenant, e).await?;
        }
        query::commit(tx).await?;
        Ok(true)
    }

    async fn create_session(&self, tenant: &str, new: NewSession) -> Result<()> {
        let s = &new.record.session;
        let mut conn = self.conn().await?;
        let tx = query::begin(&mut conn).await?;
        if !insert_row(&tx, tenant, &new.record).await? {
            return Err(
                PostgresError::Corrupt(format!("session id {} already exists", s.id)).into(),
            );
        }
        insert_version(&tx, tenant, &s.id, &new.initial).await?;
        insert_trace(&tx, tenant, &new.trace).await?;
        query::commit(tx).await?;
        Ok(())
    }

    async fn session(&self, tenant: &str, id: &str) -> Result<Option<SessionRecord>> {
        let conn = self.conn().await?;
        Ok(session(&conn, tenant, id).await?)
    }

    async fn list_sessions(&self, tenant: &str, q: &SessionQuery) -> Result<Vec<SessionRecord>> {
        let conn = self.conn().await?;
        let Some(metadata) = q.metadata.as_ref().filter(|m| !m.is_empty()) else {
            let found = sessions_query(tenant, q, q.after.as_ref())
                .newest_first(&conn, "created_at", "id", q.limit)
                .await?;
            return Ok(found.iter().map(read_session).collect::<Res<_>>()?);
        };
        // Metadata is compared here, not in SQL: a `json` value cannot be compared there,
        // and a key with a "\u0000" cannot even be named. So the other filters pick
        // sessions a batch at a time, in list order, until `limit` of them match.
        let batch = q.limit.max(METADATA_BATCH);
        let (mut found, mut after) = (Vec::new(), q.after.clone());
        loop {
            let rows = sessions_query(tenant, q, after.as_ref())
                .newest_first(&conn, "created_at", "id", batch)
                .await?;
            for r in &rows {
                let record = read_session(r)?;
                after = Some(Cursor {
                    at: record.session.created_at,
                    id: record.session.id.clone(),
                });
                if statebase_core::json::contains(&record.session.metadata, metadata) {
                    found.push(record);
                    if found.len() == q.limit {
                        return Ok(found);
                    }
                }
            }
            if rows.len() < batch {
                return Ok(found);
            }
        }
    }

    async fn update_session(&self, tenant: &str, u: SessionUpdate) -> Result<SessionRecord> {
        let mut conn = self.conn().await?;
        let tx = query::begin(&mut conn).await?;
        let updated = query::row(
            &tx,
            &format!(
                "UPDATE sessions SET metadata = $4, ttl_expires_at = $5, updated_at = $6,
                     revision = revision + 1
                 WHERE tenant = $1 AND id = $2 AND revision = $3 RETURNING {COLUMNS}"
            ),
            &[
                &tenant,
                &u.session_id,
                &int(u.expected_revision)?,
                &Json(&u.metadata),
                &u.ttl_expires_at,
                &u.updated_at,
            ],
        )
        .await?;
        let Some(updated) = updated else {
            let current = counters(&tx, tenant, &u.session_id).await?;
            return Err(conflict(u.expected_revision, current.revision).into());
        };
        insert_trace(&tx, tenant, &u.trace).await?;
        query::commit(tx).await?;
        Ok(read_session(&updated)?)
    }

    async fn append_version(&self, tenant: &str, a: AppendVersion) -> Result<SessionRecord> {
        let conn = self.conn().await?;
        let (expected_version, state) = (int(a.expected_version)?, Json(&a.state));
        let version = int(a.version.version)?;
        let trace = TraceValues::new(&a.trace);
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![
            &tenant,
            &a.session_id,
            &expected_version,
            &state,
            &version,
            &a.updated_at,
            &a.version.created_at,
            &a.version.body,
        ];
        params.extend(trace.params());
        // One statement: the compare-and-set and, if it changed the session, its version and
        // trace, atomic without a transaction's round trips.
        let updated = query::row(
            &conn,
            &format!(
                "WITH s AS (
                     UPDATE sessions SET state = $4, version = $5, updated_at = $6,
                         revision = revision + 1
                     WHERE tenant = $1 AND id = $2 AND version = $3 RETURNING {}
                 ), v AS ({}), t AS ({})
                 SELECT * FROM s",
                returning(true),
                insert_version_for("s", 5, 7),
                insert_trace_for("s", 9)
            ),
            &params,
        )
        .await?;
        let Some(updated) = updated else {
            let current = counters(&conn, tenant, &a.session_id).await?;
            return Err(conflict(a.expected_version, current.version).into());
        };
        let mut record = read_session(&updated)?;
        record.session.state = a.state;
        Ok(record)
    }

    async fn versions(
        &self,
        tenant: &str,
        session_id: &str,
        range: Range<u64>,
    ) -> Result<Vec<VersionRecord>> {
        let conn = self.conn().await?;
        let found = query::rows(
            &conn,
            "SELECT version, created_at, body FROM versions
             WHERE tenant = $1 AND session_id = $2 AND version >= $3 AND version < $4
             ORDER BY version",
            &[&tenant, &session_id, &clamp(range.start), &clamp(range.end)],
        )
        .await?;
        let versions = found
            .iter()
            .map(|r| {
                Ok(VersionRecord {
                    version: get_uint(r, "version")?,
                    created_at: r.try_get("created_at")?,
                    body: r.try_get("body")?,
                })
            })
            .collect::<Res<_>>()?;
        Ok(versions)
    }

    async fn delete_session(&self, tenant: &str, id: &str, trace: Trace) -> Result<SessionRecord> {
        let mut conn = self.conn().await?;
        let tx = query::begin(&mut conn).await?;
        // What it owns goes by ON DELETE CASCADE.
        let gone = query::row(
            &tx,
            &format!("DELETE FROM sessions WHERE tenant = $1 AND id = $2 RETURNING {COLUMNS}"),
            &[&tenant, &id],
        )
        .await?
        .ok_or_else(|| Error::not_found(ResourceKind::Session, id))?;
        insert_trace(&tx, tenant, &trace).await?;
        query::commit(tx).await?;
        Ok(read_session(&gone)?)
    }

    async fn prune_versions(
        &self,
        tenant: &str,
        session_id: &str,
        before: u64,
        trace: Trace,
    ) -> Result<u64> {
        let sql = "DELETE FROM versions WHERE tenant = $1 AND session_id = $2 AND version < $3";
        self.prune_rows(tenant, session_id, sql, &clamp(before), trace)
            .await
    }

    async fn prune_turns(
        &self,
        tenant: &str,
        session_id: &str,
        before: Timestamp,
        trace: Trace,
    ) -> Result<u64> {
        let sql = "DELETE FROM turns WHERE tenant = $1 AND session_id = $2
                   AND (body->>'created_at')::timestamptz < $3";
        self.prune_rows(tenant, session_id, sql, &before, trace)
            .await
    }

    async fn put_retention(
        &self,
        tenant: &str,
        session_id: Option<&str>,
        policy: Option<Retention>,
        trace: Option<Trace>,
    ) -> Result<()> {
        let mut conn = self.conn().await?;
        let tx = query::begin(&mut conn).await?;
        if let Some(id) = session_id {
            // Locks the session row: a concurrent delete waits, or went first.
            let locked = query::row(
                &tx,
                "SELECT 1 FROM sessions WHERE tenant = $1 AND id = $2 FOR SHARE",
                &[&tenant, &id],
            )
            .await?;
            if locked.is_none() {
                return Err(Error::not_found(ResourceKind::Session, id));
            }
        }
        let body = policy.as_ref().map(Json);
        let (sql, args): (&str, Vec<&(dyn ToSql + Sync)>) = match (&session_id, &body) {
            (Some(id), Some(body)) => (
                "INSERT INTO session_retention (tenant, session_id, body) VALUES ($1, $2, $3)
                 ON CONFLICT (tenant, session_id) DO UPDATE SET body = excluded.body",
                vec![&tenant, id, body],
            ),
            (Some(id), None) => (
                "DELETE FROM session_retention WHERE tenant = $1 AND session_id = $2",
                vec![&tenant, id],
            ),
            (None, Some(body)) => (
                "INSERT INTO tenant_retention (tenant, body) VALUES ($1, $2)
                 ON CONFLICT (tenant) DO UPDATE SET body = excluded.body",
                vec![&tenant, body],
            ),
            (None, None) => (
                "DELETE FROM tenant_retention WHERE tenant = $1",
                vec![&tenant],
            ),
        };
        query::execute(&tx, sql, &args).await?;
        if let Some(trace) = &trace {
            insert_trace(&tx, tenant, trace).await?;
        }
        query::commit(tx).await?;
        Ok(())
    }

    async fn retention(&self, tenant: &str, session_id: Option<&str>) -> Result<Option<Retention>> {
        let conn = self.conn().await?;
        let sql = format!("SELECT * FROM ({POLICIES}) p WHERE tenant = $1 AND session_id = $2");
        let found = query::row(&conn, &sql, &[&tenant, &session_id.unwrap_or("")]).await?;
        Ok(found
            .as_ref()
            .map(read_policy)
            .transpose()?
            .map(|p| p.retention))
    }

    async fn retention_policies(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<RetentionPolicy>> {
        let conn = self.conn().await?;
        let (tenant, session) = after.unwrap_or(("", ""));
        let sql = format!(
            "SELECT * FROM ({POLICIES}) p WHERE $1 OR (tenant, session_id) > ($2, $3)
             ORDER BY tenant, session_id LIMIT $4"
        );
        let args: [&(dyn ToSql + Sync); 4] =
            [&after.is_none(), &tenant, &session, &query::limit(limit)];
        let found = query::rows(&conn, &sql, &args).await?;
        Ok(found.iter().map(read_policy).collect::<Res<_>>()?)
    }

    async fn erase_user(&self, tenant: &str, user_id: &str, trace: Trace) -> Result<Erasure> {
        let mut conn = self.conn().await?;
        let tx = query::begin(&mut conn).await?;
        let erasure = erase_user(&tx, tenant, user_id, trace).await?;
        query::commit(tx).await?;
        Ok(erasure)
    }

    async fn count_sessions(
        &self,
        tenant: &str,
        live_at: Timestamp,
        changed_after: Timestamp,
    ) -> Result<SessionCounts> {
        let conn = self.conn().await?;
        let counts = query::row(
            &conn,
            "SELECT count(*) AS sessions, coalesce(sum(turn_count), 0)::bigint AS turns,
                 count(*) FILTER (WHERE updated_at > $3) AS changed
             FROM sessions WHERE tenant = $1 AND ttl_expires_at > $2",
            &[&tenant, &live_at, &changed_after],
        )
        .await?
        .ok_or_else(|| PostgresError::Corrupt("an aggregate without a row".into()))?;
        Ok(SessionCounts {
            sessions: get_uint(&counts, "sessions")?,
            turns: get_uint(&counts, "turns")?,
            changed: get_uint(&counts, "changed")?,
        })
    }

    async fn expired_sessions(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<(String, SessionRecord)>> {
        let conn = self.conn().await?;
        let found = query::rows(
            &conn,
            &format!(
                "SELECT tenant, {COLUMNS} FROM sessions WHERE ttl_expires_at <= $1
                 ORDER BY ttl_expires_at LIMIT $2"
            ),
            &[&now, &query::limit(limit)],
        )
        .await?;
        let expired = found
            .iter()
            .map(|r| Ok((r.try_get("tenant")?, read_session(r)?)))
            .collect::<Res<_>>()?;
        Ok(expired)
    }

    async fn append_turn(&self, tenant: &str, a: AppendTurn) -> Result<SessionRecord> {
        let t = &a.turn;
        let conn = self.conn().await?;
        let (turn_number, body) = (int(t.turn_number)?, Json(t));
        let mut params: Vec<&(dyn ToSql + Sync)> =
            vec![&tenant, &t.session_id, &turn_number, &a.updated_at];
        // One compare-and-set of the turn number and, with a state, of the version, in one
        // statement with the rows it writes. The revision moves as if the version and the
        // turn were written one after the other.
        let (version, version_trace);
        // The version's trace comes first in the feed, as the version came first.
        let (set, cas, parts, trace_after) = match &a.state {
            None => ("revision = revision + 1", "", String::new(), "s"),
            Some(v) => {
                version = (
                    int(v.expected_version)?,
                    Json(&v.state),
                    int(v.version.version)?,
                );
                params.extend([
                    &version.0 as &(dyn ToSql + Sync),
                    &version.1,
                    &version.2,
                    &v.version.created_at,
                    &v.version.body,
                ]);
                version_trace = TraceValues::new(&v.trace);
                params.extend(version_trace.params());
                (
                    "state = $6, version = $7, revision = revision + 2",
                    " AND version = $5",
                    format!(
                        ", v AS ({}), vt AS ({})",
                        insert_version_for("s", 7, 8),
                        insert_trace_for("s", 10)
                    ),
                    "vt",
                )
            }
        };
        let turn_at = params.len() + 1;
        params.extend([&t.id, &body] as [&(dyn ToSql + Sync); 2]);
        let trace = TraceValues::new(&a.trace);
        let trace_at = params.len() + 1;
        params.extend(trace.params());
        let updated = query::row(
            &conn,
            &format!(
                "WITH s AS (
                     UPDATE sessions SET turn_count = $3, updated_at = $4, {set}
                     WHERE tenant = $1 AND id = $2 AND turn_count + 1 = $3{cas}
                     RETURNING {}
                 ){parts}, n AS (
                     INSERT INTO turns (tenant, id, session_id, turn_number, body)
                     SELECT $1, ${turn_at}, $2, $3, ${} FROM s
                 ), t AS ({})
                 SELECT * FROM s",
                returning(a.state.is_some()),
                turn_at + 1,
                insert_trace_for(trace_after, trace_at)
            ),
            &params,
        )
        .await?;
        let Some(updated) = updated else {
            let current = counters(&conn, tenant, &t.session_id).await?;
            if t.turn_number != current.turn_count + 1 {
                return Err(conflict(t.turn_number.saturating_sub(1), current.turn_count).into());
            }
            let expected = a.state.as_ref().map_or(0, |v| v.expected_version);
            return Err(conflict(expected, current.version).into());
        };
        let mut record = read_session(&updated)?;
        if let Some(v) = a.state {
            record.session.state = v.state;
        }
        Ok(record)
    }

    async fn turn(&self, tenant: &str, id: &str) -> Result<Option<Turn>> {
        let conn = self.conn().await?;
        let found = query::row(
            &conn,
            "SELECT body FROM turns WHERE tenant = $1 AND id = $2",
            &[&tenant, &id],
        )
        .await?;
        Ok(found.as_ref().map(read_turn).transpose()?)
    }

    async fn list_turns(&self, tenant: &str, session_id: &str, q: &TurnQuery) -> Result<Vec<Turn>> {
        let (op, order) = if q.descending {
            ("<", "DESC")
        } else {
            (">", "ASC")
        };
        let after = match q.after_turn_number {
            Some(n) => clamp(n),
            None if q.descending => i64::MAX,
            None => 0,
        };
        let conn = self.conn().await?;
        let found = query::rows(
            &conn,
            &format!(
                "SELECT body FROM turns WHERE tenant = $1 AND session_id = $2
                     AND turn_number {op} $3
                 ORDER BY turn_number {order} LIMIT $4"
            ),
            &[&tenant, &session_id, &after, &query::limit(q.limit)],
        )
        .await?;
        Ok(found.iter().map(read_turn).collect::<Res<_>>()?)
    }
}

fn read_turn(r: &Row) -> Res<Turn> {
    Ok(r.try_get::<_, Json<Turn>>("body")?.0)
}
