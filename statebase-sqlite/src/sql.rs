//! The SQL: every statement the backend runs, on a plain connection. The caller decides
//! the transaction (the writer thread wraps each write in a savepoint of a group commit).

use crate::error::SqliteError;
use rusqlite::types::Value as Sql;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};
use statebase_core::store::*;
use statebase_core::{
    ApiKey, Entity, EntityVersion, Erasure, Error, Memory, MemoryRevision, Object, ResourceKind,
    Retention, RetentionPolicy, Session, Timestamp, Trace, Turn, WebhookEndpoint,
};
use std::ops::Range;

type Res<T> = Result<T, SqliteError>;

// ----- conversions -----

fn micros(t: Timestamp) -> i64 {
    t.timestamp_micros()
}

fn time(micros: i64) -> Res<Timestamp> {
    Timestamp::from_timestamp_micros(micros)
        .ok_or_else(|| SqliteError::Corrupt(format!("timestamp {micros}")))
}

fn int(n: u64) -> Res<i64> {
    i64::try_from(n).map_err(|_| SqliteError::Corrupt(format!("integer {n}")))
}

fn uint(n: i64) -> Res<u64> {
    u64::try_from(n).map_err(|_| SqliteError::Corrupt(format!("integer {n}")))
}

fn json(v: &impl serde::Serialize) -> Res<String> {
    Ok(serde_json::to_string(v)?)
}

fn object(text: &str) -> Res<Object> {
    Ok(serde_json::from_str(text)?)
}

fn vector_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn blob_vector(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Runs a query and maps every row with a fallible reader.
fn collect<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    read: impl Fn(&Row<'_>) -> Res<T>,
) -> Res<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(read(row)?);
    }
    Ok(out)
}

fn first<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    read: impl Fn(&Row<'_>) -> Res<T>,
) -> Res<Option<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    match rows.next()? {
        Some(row) => Ok(Some(read(row)?)),
        None => Ok(None),
    }
}

/// Appends `AND (<at>, id) < (?, ?)` for a newest-first cursor.
fn cursor_clause(sql: &mut String, args: &mut Vec<Sql>, at: &str, after: Option<&Cursor>) {
    if let Some(c) = after {
        sql.push_str(&format!(" AND ({at}, id) < (?, ?)"));
        args.push(Sql::Integer(micros(c.at)));
        args.push(Sql::Text(c.id.clone()));
    }
}

fn eq_clause(sql: &mut String, args: &mut Vec<Sql>, column: &str, value: Option<&String>) {
    if let Some(v) = value {
        sql.push_str(&format!(" AND {column} = ?"));
        args.push(Sql::Text(v.clone()));
    }
}

fn time_clause(
    sql: &mut String,
    args: &mut Vec<Sql>,
    column: &str,
    op: &str,
    t: Option<Timestamp>,
) {
    if let Some(t) = t {
        sql.push_str(&format!(" AND {column} {op} ?"));
        args.push(Sql::Integer(micros(t)));
    }
}

// ----- sessions -----

const SESSION_COLUMNS: &str = "id, agent_id, user_id, state, version, metadata, memory_count, \
     turn_count, ttl_expires_at, created_at, updated_at, revision";

fn read_session(r: &Row<'_>) -> Res<SessionRecord> {
    read_session_at(r, 0)
}

pub fn session(conn: &Connection, tenant: &str, id: &str) -> Res<Option<SessionRecord>> {
    // Built once: every read that misses the sessions cache runs it.
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE tenant = ?1 AND id = ?2")
    });
    first(conn, &SQL, params![tenant, id], read_session)
}

/// `UPDATE sessions SET {set} WHERE tenant = ?1 AND id = ?2`, bumping the revision, and
/// the session as stored. Its state is read back only if `state` is `None` (the write left
/// the state as it was); else it is `state`, which the write stored.
fn update_session_row(
    conn: &Connection,
    set: &str,
    params: &[&dyn rusqlite::ToSql],
    state: Option<&Object>,
) -> Res<SessionRecord> {
    let columns = match state {
        Some(_) => SESSION_COLUMNS.replacen("state", "'{}'", 1),
        None => SESSION_COLUMNS.to_owned(),
    };
    let sql = format!(
        "UPDATE sessions SET {set}, revision = revision + 1 WHERE tenant = ?1 AND id = ?2
         RETURNING {columns}"
    );
    let mut record = first(conn, &sql, params, read_session)?
        .ok_or_else(|| SqliteError::Corrupt("a session gone in its write".into()))?;
    if let Some(state) = state {
        record.session.state = state.clone();
    }
    Ok(record)
}

/// The session, or `NotFound`.
fn existing_session(conn: &Connection, tenant: &str, id: &str) -> Res<SessionRecord> {
    session(conn, tenant, id)?.ok_or_else(|| Error::not_found(ResourceKind::Session, id).into())
}

pub fn create_session(conn: &Connection, tenant: &str, new: &NewSession) -> Res<()> {
    let s = &new.record.session;
    if session(conn, tenant, &s.id)?.is_some() {
        return Err(SqliteError::Corrupt(format!(
            "session id {} already exists",
            s.id
        )));
    }
    insert_session_row(conn, tenant, &new.record)?;
    insert_version(conn, tenant, &s.id, &new.initial)?;
    insert_trace(conn, tenant, &new.trace)
}

fn insert_session_row(conn: &Connection, tenant: &str, record: &SessionRecord) -> Res<()> {
    let s = &record.session;
    conn.prepare_cached(&format!(
        "INSERT INTO sessions (tenant, {SESSION_COLUMNS})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
    ))?
    .execute(params![
        tenant,
        s.id,
        s.agent_id,
        s.user_id,
        json(&s.state)?,
        int(s.version)?,
        json(&s.metadata)?,
        int(s.memory_count)?,
        int(s.turn_count)?,
        micros(s.ttl_expires_at),
        micros(s.created_at),
        micros(s.updated_at),
        int(record.revision)?,
    ])?;
    Ok(())
}

fn insert_version(conn: &Connection, tenant: &str, session_id: &str, v: &VersionRecord) -> Res<()> {
    conn.prepare_cached(
        "INSERT INTO versions (tenant, session_id, version, created_at, body)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        tenant,
        session_id,
        int(v.version)?,
        micros(v.created_at),
        v.body
    ])?;
    Ok(())
}

pub fn list_sessions(conn: &Connection, tenant: &str, q: &SessionQuery) -> Res<Vec<SessionRecord>> {
    let (sql, args) = list_sessions_sql(tenant, q)?;
    collect(conn, &sql, params_from_iter(args), read_session)
}

fn list_sessions_sql(tenant: &str, q: &SessionQuery) -> Res<(String, Vec<Sql>)> {
    let mut sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE tenant = ?");
    let mut args = vec![Sql::Text(tenant.to_owned())];
    cursor_clause(&mut sql, &mut args, "created_at", q.after.as_ref());
    time_clause(&mut sql, &mut args, "ttl_expires_at", ">", q.live_at);
    eq_clause(&mut sql, &mut args, "agent_id", q.agent_id.as_ref());
    eq_clause(&mut sql, &mut args, "user_id", q.user_id.as_ref());
    time_clause(&mut sql, &mut args, "created_at", ">", q.created_after);
    time_clause(&mut sql, &mut args, "created_at", "<", q.created_before);
    for (key, value) in q.metadata.iter().flatten() {
        // The key is compared as text, not put in a JSON path, so that any key works (a
        // path cannot hold a NUL). Equal JSON: the same type, and the same value as
        // json_extract gives it (serde_json writes both sides the same way: sorted keys,
        // minified).
        sql.push_str(
            " AND EXISTS (SELECT 1 FROM json_each(sessions.metadata) AS m WHERE m.key = ? \
             AND m.type = json_type(?) AND m.value IS json_extract(?, '$'))",
        );
        let value = json(value)?;
        args.push(Sql::Text(key.clone()));
        args.push(Sql::Text(value.clone()));
        args.push(Sql::Text(value));
    }
    sql.push_str(" ORDER BY created_at DESC, id DESC LIMIT ?");
    args.push(Sql::Integer(q.limit as i64));
    Ok((sql, args))
}

/// The numbers the write preconditions check, without parsing the session's JSON.
struct Counters {
    version: u64,
    turn_count: u64,
    revision: u64,
}

/// A session's counters, or `NotFound`.
fn counters(conn: &Connection, tenant: &str, id: &str) -> Res<Counters> {
    first(
        conn,
        "SELECT version, turn_count, revision FROM sessions WHERE tenant = ?1 AND id = ?2",
        params![tenant, id],
        |r| {
            Ok(Counters {
                version: uint(r.get(0)?)?,
                turn_count: uint(r.get(1)?)?,
                revision: uint(r.get(2)?)?,
            })
        },
    )?
    .ok_or_else(|| Error::not_found(ResourceKind::Session, id).into())
}

pub fn update_session(conn: &Connection, tenant: &str, u: &SessionUpdate) -> Res<SessionRecord> {
    let current = counters(conn, tenant, &u.session_id)?;
    if current.revision != u.expected_revision {
        return Err(Error::Conflict {
            expected: u.expected_revision,
            actual: current.revision,
        }
        .into());
    }
    let record = update_session_row(
        conn,
        "metadata = ?3, ttl_expires_at = ?4, updated_at = ?5",
        params![
            tenant,
            u.session_id,
            json(&u.metadata)?,
            micros(u.ttl_expires_at),
            micros(u.updated_at)
        ],
        None,
    )?;
    insert_trace(conn, tenant, &u.trace)?;
    Ok(record)
}

/// Checks that `a` appends the version after `current_version`, then writes it; the
/// session as stored.
fn append_checked(
    conn: &Connection,
    tenant: &str,
    current_version: u64,
    a: &AppendVersion,
) -> Res<SessionRecord> {
    if current_version != a.expected_version {
        return Err(Error::Conflict {
            expected: a.expected_version,
            actual: current_version,
        }
        .into());
    }
    insert_version(conn, tenant, &a.session_id, &a.version)?;
    let record = update_session_row(
        conn,
        "state = ?3, version = ?4, updated_at = ?5",
        params![
            tenant,
            a.session_id,
            json(&a.state)?,
            int(a.version.version)?,
            micros(a.updated_at)
        ],
        Some(&a.state),
    )?;
    insert_trace(conn, tenant, &a.trace)?;
    Ok(record)
}

pub fn append_version(conn: &Connection, tenant: &str, a: &AppendVersion) -> Res<SessionRecord> {
    let current = counters(conn, tenant, &a.session_id)?;
    append_checked(conn, tenant, current.version, a)
}

pub fn versions(
    conn: &Connection,
    tenant: &str,
    session_id: &str,
    range: Range<u64>,
) -> Res<Vec<VersionRecord>> {
    collect(
        conn,
        "SELECT version, created_at, body FROM versions
         WHERE tenant = ?1 AND session_id = ?2 AND version >= ?3 AND version < ?4
         ORDER BY version",
        params![
            tenant,
            session_id,
            int(range.start)?,
            int(range.end.min(i64::MAX as u64))?
        ],
        |r| {
            Ok(VersionRecord {
                version: uint(r.get(0)?)?,
                created_at: time(r.get(1)?)?,
                body: r.get(2)?,
            })
        },
    )
}

pub fn delete_session(
    conn: &Connection,
    tenant: &str,
    id: &str,
    trace: &Trace,
) -> Res<SessionRecord> {
    let record = existing_session(conn, tenant, id)?;
    // Versions, turns, memories, their tags and revisions go by ON DELETE CASCADE.
    conn.prepare_cached("DELETE FROM sessions WHERE tenant = ?1 AND id = ?2")?
        .execute(params![tenant, id])?;
    insert_trace(conn, tenant, trace)?;
    Ok(record)
}

pub fn prune_versions(
    conn: &Connection,
    tenant: &str,
    session_id: &str,
    before: u64,
    trace: &Trace,
) -> Res<u64> {
    existing_session(conn, tenant, session_id)?;
    let gone = conn
        .prepare_cached(
            "DELETE FROM versions WHERE tenant = ?1 AND session_id = ?2 AND version < ?3",
        )?
        .execute(params![
            tenant,
            session_id,
            int(before.min(i64::MAX as u64))?
        ])?;
    if gone > 0 {
        insert_trace(conn, tenant, trace)?;
    }
    Ok(gone as u64)
}

pub fn prune_turns(
    conn: &Connection,
    tenant: &str,
    session_id: &str,
    before: Timestamp,
    trace: &Trace,
) -> Res<u64> {
    existing_session(conn, tenant, session_id)?;
    // Turns are logged in time order: the first young one ends the old ones.
    let mut stmt = conn.prepare_cached(
        "SELECT turn_number, body FROM turns WHERE tenant = ?1 AND session_id = ?2 \
         ORDER BY turn_number",
    )?;
    let mut rows = stmt.query(params![tenant, session_id])?;
    let mut end = None;
    while let Some(row) = rows.next()? {
        let body = row.get_ref(1)?.as_str().map_err(rusqlite::Error::from)?;
        let turn: Turn = serde_json::from_str(body)?;
        if turn.created_at >= before {
            break;
        }
        end = Some(row.get::<_, i64>(0)?);
    }
    let Some(end) = end else { return Ok(0) };
    let gone = conn
        .prepare_cached(
            "DELETE FROM turns WHERE tenant = ?1 AND session_id = ?2 AND turn_number <= ?3",
        )?
        .execute(params![tenant, session_id, end])?;
    insert_trace(conn, tenant, trace)?;
    Ok(gone as u64)
}

pub fn put_retention(
    conn: &Connection,
    tenant: &str,
    session_id: Option<&str>,
    policy: Option<&Retention>,
    trace: Option<&Trace>,
) -> Res<()> {
    match session_id {
        Some(id) => {
            existing_session(conn, tenant, id)?;
            conn.prepare_cached(
                "DELETE FROM session_retention WHERE tenant = ?1 AND session_id = ?2",
            )?
            .execute(params![tenant, id])?;
            if let Some(p) = policy {
                conn.prepare_cached(
                    "INSERT INTO session_retention (tenant, session_id, body) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![tenant, id, json(p)?])?;
            }
        }
        None => {
            conn.prepare_cached("DELETE FROM tenant_retention WHERE tenant = ?1")?
                .execute(params![tenant])?;
            if let Some(p) = policy {
                conn.prepare_cached("INSERT INTO tenant_retention (tenant, body) VALUES (?1, ?2)")?
                    .execute(params![tenant, json(p)?])?;
            }
        }
    }
    match trace {
        Some(t) => insert_trace(conn, tenant, t),
        None => Ok(()),
    }
}

fn read_policy(r: &Row<'_>) -> Res<RetentionPolicy> {
    let session_id: String = r.get(1)?;
    Ok(RetentionPolicy {
        tenant: r.get(0)?,
        session_id: Some(session_id).filter(|s| !s.is_empty()),
        retention: serde_json::from_str(&r.get::<_, String>(2)?)?,
    })
}

/// The tenant's own policies as `(tenant, '', body)` beside the sessions': one order.
const POLICIES: &str = "SELECT tenant, '' AS session_id, body FROM tenant_retention \
                        UNION ALL SELECT tenant, session_id, body FROM session_retention";

pub fn retention(
    conn: &Connection,
    tenant: &str,
    session_id: Option<&str>,
) -> Res<Option<Retention>> {
    let sql = format!("SELECT * FROM ({POLICIES}) WHERE tenant = ?1 AND session_id = ?2");
    let found = first(
        conn,
        &sql,
        params![tenant, session_id.unwrap_or("")],
        read_policy,
    )?;
    Ok(found.map(|p| p.retention))
}

pub fn retention_policies(
    conn: &Connection,
    after: Option<(&str, &str)>,
    limit: usize,
) -> Res<Vec<RetentionPolicy>> {
    let (tenant, session) = after.unwrap_or(("", ""));
    let sql = format!(
        "SELECT * FROM ({POLICIES}) WHERE ?1 OR (tenant, session_id) > (?2, ?3) \
         ORDER BY tenant, session_id LIMIT ?4"
    );
    let args = params![after.is_none(), tenant, session, limit as i64];
    collect(conn, &sql, args, read_policy)
}

pub fn prune_traces(conn: &Connection, tenant: &str, before: Timestamp, trace: &Trace) -> Res<u64> {
    let position = next_position(conn)?;
    let gone = conn
        .prepare_cached("DELETE FROM traces WHERE tenant = ?1 AND timestamp < ?2")?
        .execute(params![tenant, micros(before)])?;
    if gone > 0 {
        insert_trace_at(conn, tenant, trace, Some(position))?;
    }
    Ok(gone as u64)
}

/// Erases the user's records (see [`SessionLog::erase_user`]); answers the counts and the
/// ids of the erased sessions.
pub fn erase_user(
    conn: &Connection,
    tenant: &str,
    user_id: &str,
    trace: Trace,
) -> Res<(Erasure, Vec<String>)> {
    let of_user = params![tenant, user_id];
    let sessions: Vec<String> = collect(
        conn,
        "SELECT id FROM sessions WHERE tenant = ?1 AND user_id = ?2",
        of_user,
        |r| Ok(r.get(0)?),
    )?;
    let owned = |table: &str| {
        let sql = format!(
            "SELECT count(*) FROM {table} WHERE tenant = ?1 AND session_id IN \
             (SELECT id FROM sessions WHERE tenant = ?1 AND user_id = ?2)"
        );
        first(conn, &sql, of_user, |r| uint(r.get(0)?)).map(Option::unwrap_or_default)
    };
    let mut erasure = Erasure {
        sessions: sessions.len() as u64,
        versions: owned("versions")?,
        turns: owned("turns")?,
        entities: owned("entities")?,
        ..Erasure::default()
    };
    let position = next_position(conn)?;
    // The tombstones first: the deletes below find what went through them.
    let at = micros(trace.timestamp);
    conn.prepare_cached(
        "INSERT OR IGNORE INTO erased (tenant, id, user_id, erased_at) \
         SELECT tenant, id, ?2, ?3 FROM sessions WHERE tenant = ?1 AND user_id = ?2",
    )?
    .execute(params![tenant, user_id, at])?;
    erasure.memories = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO erased (tenant, id, user_id, erased_at) \
             SELECT tenant, id, ?2, ?3 FROM memories WHERE tenant = ?1 AND (user_id = ?2 \
             OR session_id IN (SELECT id FROM sessions WHERE tenant = ?1 AND user_id = ?2))",
        )?
        .execute(params![tenant, user_id, at])? as u64;
    let erased = "(SELECT id FROM erased WHERE tenant = ?1 AND user_id = ?2)";
    for column in ["session_id", "resource_id"] {
        let sql = format!("DELETE FROM traces WHERE tenant = ?1 AND {column} IN {erased}");
        erasure.traces += conn.prepare_cached(&sql)?.execute(of_user)? as u64;
    }
    let sql = format!(
        "DELETE FROM idempotent_responses WHERE key IN (SELECT key FROM idempotent_subjects \
         WHERE tenant = ?1 AND (subject = 'user:' || ?2 OR subject IN {erased}))"
    );
    erasure.idempotent_responses = conn.prepare_cached(&sql)?.execute(of_user)? as u64;
    // Versions, turns, memories and entities of the sessions go by ON DELETE CASCADE.
    conn.prepare_cached("DELETE FROM memories WHERE tenant = ?1 AND user_id = ?2")?
        .execute(of_user)?;
    conn.prepare_cached("DELETE FROM sessions WHERE tenant = ?1 AND user_id = ?2")?
        .execute(of_user)?;
    insert_trace_at(conn, tenant, &erasure.into_trace(trace), Some(position))?;
    Ok((erasure, sessions))
}

/// True if the tenant's session or memory `id` was erased.
fn erased(conn: &Connection, tenant: &str, id: &str) -> Res<bool> {
    Ok(first(
        conn,
        "SELECT 1 FROM erased WHERE tenant = ?1 AND id = ?2",
        params![tenant, id],
        |_| Ok(()),
    )?
    .is_some())
}

pub fn count_sessions(
    conn: &Connection,
    tenant: &str,
    live_at: Timestamp,
    changed_after: Timestamp,
) -> Res<SessionCounts> {
    first(
        conn,
        "SELECT count(*), coalesce(sum(turn_count), 0), coalesce(sum(updated_at > ?3), 0)
         FROM sessions WHERE tenant = ?1 AND ttl_expires_at > ?2",
        params![tenant, micros(live_at), micros(changed_after)],
        |r| {
            Ok(SessionCounts {
                sessions: uint(r.get(0)?)?,
                turns: uint(r.get(1)?)?,
                changed: uint(r.get(2)?)?,
            })
        },
    )
    .map(Option::unwrap_or_default)
}

pub fn count_memories(conn: &Connection, tenant: &str) -> Res<u64> {
    count(
        conn,
        "SELECT count(*) FROM memories WHERE tenant = ?1",
        tenant,
    )
}

pub fn count_entities(conn: &Connection, tenant: &str) -> Res<u64> {
    count(
        conn,
        "SELECT count(*) FROM entities WHERE tenant = ?1",
        tenant,
    )
}

fn count(conn: &Connection, sql: &str, tenant: &str) -> Res<u64> {
    first(conn, sql, params![tenant], |r| uint(r.get(0)?)).map(Option::unwrap_or_default)
}

pub fn trace_activity(
    conn: &Connection,
    tenant: &str,
    after: Timestamp,
) -> Res<Vec<(Timestamp, u64)>> {
    collect(
        conn,
        "SELECT timestamp - timestamp % 3600000000 AS hour, count(*) FROM traces
         WHERE tenant = ?1 AND timestamp > ?2 GROUP BY hour ORDER BY hour",
        params![tenant, micros(after)],
        |r| Ok((time(r.get(0)?)?, uint(r.get(1)?)?)),
    )
}

pub fn expired_sessions(
    conn: &Connection,
    now: Timestamp,
    limit: usize,
) -> Res<Vec<(String, SessionRecord)>> {
    collect(
        conn,
        &format!(
            "SELECT tenant, {SESSION_COLUMNS} FROM sessions WHERE ttl_expires_at <= ?1 LIMIT ?2"
        ),
        params![micros(now), limit as i64],
        |r| {
            let tenant: String = r.get(0)?;
            Ok((tenant, read_session_at(r, 1)?))
        },
    )
}

/// Reads the session columns starting at column `o`.
fn read_session_at(r: &Row<'_>, o: usize) -> Res<SessionRecord> {
    Ok(SessionRecord {
        session: Session {
            id: r.get(o)?,
            agent_id: r.get(o + 1)?,
            user_id: r.get(o + 2)?,
            state: object(&r.get::<_, String>(o + 3)?)?,
            version: uint(r.get(o + 4)?)?,
            metadata: object(&r.get::<_, String>(o + 5)?)?,
            memory_count: uint(r.get(o + 6)?)?,
            turn_count: uint(r.get(o + 7)?)?,
            ttl_expires_at: time(r.get(o + 8)?)?,
            created_at: time(r.get(o + 9)?)?,
            updated_at: time(r.get(o + 10)?)?,
        },
        revision: uint(r.get(o + 11)?)?,
    })
}

// ----- traces -----

const TRACE_COLUMNS: &str =
    "id, session_id, action, resource_type, resource_id, actor, timestamp, details";

fn read_trace(r: &Row<'_>) -> Res<Trace> {
    Ok(Trace {
        id: r.get(0)?,
        session_id: r.get(1)?,
        action: r.get(2)?,
        resource_type: r.get(3)?,
        resource_id: r.get(4)?,
        actor: r.get(5)?,
        timestamp: time(r.get(6)?)?,
        details: serde_json::from_str(&r.get::<_, String>(7)?)?,
    })
}

/// Writes the trace with the next feed position.
fn insert_trace(conn: &Connection, tenant: &str, t: &Trace) -> Res<()> {
    insert_trace_at(conn, tenant, t, None)
}

/// The next feed position. A write that deletes traces (the newest among them, maybe)
/// reads it first and writes its own trace there, so that no position is given out twice.
fn next_position(conn: &Connection) -> Res<i64> {
    Ok(conn
        .prepare_cached("SELECT coalesce(max(position), 0) + 1 FROM traces")?
        .query_row([], |r| r.get(0))?)
}

/// Writes the trace at `position`, or without one at the next.
fn insert_trace_at(conn: &Connection, tenant: &str, t: &Trace, position: Option<i64>) -> Res<()> {
    let sql = format!(
        "INSERT INTO traces (tenant, {TRACE_COLUMNS}, position) VALUES (?1, ?2, ?3, ?4, ?5, \
         ?6, ?7, ?8, ?9, coalesce(?10, (SELECT max(position) FROM traces), 0) + 1)"
    );
    execute_trace(conn, &sql, tenant, t, position.map(|p| p - 1))?;
    Ok(())
}

/// Runs `sql`, an insert of a trace whose parameters are the tenant, `TRACE_COLUMNS` and a
/// position, and returns how many rows it wrote.
fn execute_trace(
    conn: &Connection,
    sql: &str,
    tenant: &str,
    t: &Trace,
    position: Option<i64>,
) -> Res<usize> {
    Ok(conn.prepare_cached(sql)?.execute(params![
        tenant,
        t.id,
        t.session_id,
        t.action,
        t.resource_type,
        t.resource_id,
        t.actor,
        micros(t.timestamp),
        json(&t.details)?,
        position,
    ])?)
}

pub fn trace(conn: &Connection, tenant: &str, id: &str) -> Res<Option<Trace>> {
    first(
        conn,
        &format!("SELECT {TRACE_COLUMNS} FROM traces WHERE tenant = ?1 AND id = ?2"),
        params![tenant, id],
        read_trace,
    )
}

pub fn trace_feed_end(conn: &Connection) -> Res<u64> {
    let end: i64 = conn
        .prepare_cached("SELECT coalesce(max(position), 0) FROM traces")?
        .query_row([], |r| r.get(0))?;
    uint(end)
}

pub fn trace_feed(conn: &Connection, after: u64, limit: usize) -> Res<Vec<FeedEntry>> {
    collect(
        conn,
        &format!(
            "SELECT {TRACE_COLUMNS}, position, tenant FROM traces \
             WHERE position > ?1 ORDER BY position LIMIT ?2"
        ),
        params![int(after)?, limit as i64],
        |r| {
            Ok(FeedEntry {
                trace: read_trace(r)?,
                position: uint(r.get(8)?)?,
                tenant: r.get(9)?,
            })
        },
    )
}

// ----- the server's records -----

pub fn put_webhook(conn: &Connection, e: &WebhookEndpoint) -> Res<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO webhooks (id, tenant, created_at, body) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![e.id, e.tenant, micros(e.created_at), json(e)?])?;
    Ok(())
}

fn read_webhook(r: &Row<'_>) -> Res<WebhookEndpoint> {
    Ok(serde_json::from_str(
        r.get_ref(0)?.as_str().map_err(rusqlite::Error::from)?,
    )?)
}

pub fn webhook(conn: &Connection, tenant: &str, id: &str) -> Res<Option<WebhookEndpoint>> {
    first(
        conn,
        "SELECT body FROM webhooks WHERE id = ?1 AND tenant = ?2",
        params![id, tenant],
        read_webhook,
    )
}

pub fn list_webhooks(conn: &Connection, tenant: Option<&str>) -> Res<Vec<WebhookEndpoint>> {
    match tenant {
        Some(t) => collect(
            conn,
            "SELECT body FROM webhooks WHERE tenant = ?1 ORDER BY created_at, id",
            params![t],
            read_webhook,
        ),
        None => collect(
            conn,
            "SELECT body FROM webhooks ORDER BY created_at, id",
            [],
            read_webhook,
        ),
    }
}

pub fn delete_webhook(conn: &Connection, tenant: &str, id: &str) -> Res<()> {
    // Its deliveries go by ON DELETE CASCADE.
    let gone = conn
        .prepare_cached("DELETE FROM webhooks WHERE id = ?1 AND tenant = ?2")?
        .execute(params![id, tenant])?;
    if gone == 0 {
        return Err(Error::not_found(ResourceKind::Webhook, id).into());
    }
    Ok(())
}

pub fn put_deliveries(
    conn: &Connection,
    deliveries: &[DeliveryRecord],
    cursor: Option<u64>,
) -> Res<()> {
    for d in deliveries {
        conn.prepare_cached(
            "INSERT OR REPLACE INTO webhook_deliveries (endpoint_id, position, done_at, body)
             SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM webhooks WHERE id = ?1)",
        )?
        .execute(params![
            d.endpoint_id,
            int(d.position)?,
            d.done_at.map(micros),
            d.body
        ])?;
    }
    if let Some(c) = cursor {
        conn.prepare_cached("INSERT OR REPLACE INTO webhook_cursor (id, position) VALUES (0, ?1)")?
            .execute(params![int(c)?])?;
    }
    Ok(())
}

pub fn delivery_cursor(conn: &Connection) -> Res<u64> {
    let found: Option<i64> = first(
        conn,
        "SELECT position FROM webhook_cursor WHERE id = 0",
        [],
        |r| Ok(r.get(0)?),
    )?;
    uint(found.unwrap_or(0))
}

pub fn deliveries(
    conn: &Connection,
    endpoint_id: Option<&str>,
    owed_only: bool,
) -> Res<Vec<DeliveryRecord>> {
    let read = |r: &Row<'_>| {
        Ok(DeliveryRecord {
            endpoint_id: r.get(0)?,
            position: uint(r.get(1)?)?,
            done_at: r.get::<_, Option<i64>>(2)?.map(time).transpose()?,
            body: r.get(3)?,
        })
    };
    let owed = if owed_only { "AND done_at IS NULL" } else { "" };
    let sql = format!(
        "SELECT endpoint_id, position, done_at, body FROM webhook_deliveries
         WHERE (?1 IS NULL OR endpoint_id = ?1) {owed} ORDER BY endpoint_id, position"
    );
    collect(conn, &sql, params![endpoint_id], read)
}

pub fn prune_deliveries(conn: &Connection, before: Timestamp) -> Res<u64> {
    let gone = conn
        .prepare_cached("DELETE FROM webhook_deliveries WHERE done_at < ?1")?
        .execute(params![micros(before)])?;
    Ok(gone as u64)
}

pub fn idempotent_response(conn: &Connection, key: &str) -> Res<Option<IdempotentResponse>> {
    let Some(mut kept) = first(
        conn,
        "SELECT key, tenant, at, body FROM idempotent_responses WHERE key = ?1",
        params![key],
        |r| {
            Ok(IdempotentResponse {
                key: r.get(0)?,
                tenant: r.get(1)?,
                subjects: Vec::new(),
                at: time(r.get(2)?)?,
                body: r.get(3)?,
            })
        },
    )?
    else {
        return Ok(None);
    };
    kept.subjects = collect(
        conn,
        "SELECT subject FROM idempotent_subjects WHERE key = ?1 ORDER BY subject",
        params![key],
        |r| Ok(r.get(0)?),
    )?;
    Ok(Some(kept))
}

pub fn put_idempotent_response(conn: &Connection, kept: &IdempotentResponse) -> Res<()> {
    for s in &kept.subjects {
        if erased(conn, &kept.tenant, s)? {
            return Ok(());
        }
    }
    conn.prepare_cached("DELETE FROM idempotent_responses WHERE key = ?1")?
        .execute(params![kept.key])?;
    conn.prepare_cached(
        "INSERT INTO idempotent_responses (key, tenant, at, body) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![kept.key, kept.tenant, micros(kept.at), kept.body])?;
    let mut subject = conn.prepare_cached(
        "INSERT OR IGNORE INTO idempotent_subjects (tenant, subject, key) VALUES (?1, ?2, ?3)",
    )?;
    for s in &kept.subjects {
        subject.execute(params![kept.tenant, s, kept.key])?;
    }
    Ok(())
}

pub fn prune_idempotent_responses(conn: &Connection, before: Timestamp) -> Res<u64> {
    let gone = conn
        .prepare_cached("DELETE FROM idempotent_responses WHERE at < ?1")?
        .execute(params![micros(before)])?;
    Ok(gone as u64)
}

pub fn list_traces(conn: &Connection, tenant: &str, q: &TraceQuery) -> Res<Vec<Trace>> {
    let (sql, args) = list_traces_sql(tenant, q);
    collect(conn, &sql, params_from_iter(args), read_trace)
}

fn list_traces_sql(tenant: &str, q: &TraceQuery) -> (String, Vec<Sql>) {
    let mut sql = format!("SELECT {TRACE_COLUMNS} FROM traces WHERE tenant = ?");
    let mut args = vec![Sql::Text(tenant.to_owned())];
    cursor_clause(&mut sql, &mut args, "timestamp", q.after.as_ref());
    eq_clause(&mut sql, &mut args, "session_id", q.session_id.as_ref());
    eq_clause(&mut sql, &mut args, "action", q.action.as_ref());
    eq_clause(
        &mut sql,
        &mut args,
        "resource_type",
        q.resource_type.as_ref(),
    );
    time_clause(&mut sql, &mut args, "timestamp", ">", q.created_after);
    time_clause(&mut sql, &mut args, "timestamp", "<", q.created_before);
    if let Some(r) = &q.resource_id {
        // traces_by_resource leaves out the traces of a session about itself (most of
        // them): those are found by session. One ordered scan of each index, merged.
        let filtered = sql.clone();
        let repeated = args.clone();
        sql.push_str(" AND resource_id = ? AND resource_id IS NOT session_id UNION ALL ");
        sql.push_str(&filtered);
        sql.push_str(" AND session_id = ? AND resource_id = ?");
        args.push(Sql::Text(r.clone()));
        args.extend(repeated);
        args.extend([Sql::Text(r.clone()), Sql::Text(r.clone())]);
    }
    sql.push_str(" ORDER BY timestamp DESC, id DESC LIMIT ?");
    args.push(Sql::Integer(q.limit as i64));
    (sql, args)
}

// ----- turns -----

fn read_turn(r: &Row<'_>) -> Res<Turn> {
    let body = r.get_ref(0)?.as_str().map_err(rusqlite::Error::from)?;
    Ok(serde_json::from_str(body)?)
}

/// Adds the turn; the session as stored.
pub fn append_turn(conn: &Connection, tenant: &str, a: &AppendTurn) -> Res<SessionRecord> {
    let current = counters(conn, tenant, &a.turn.session_id)?;
    if a.turn.turn_number != current.turn_count + 1 {
        return Err(Error::Conflict {
            expected: a.turn.turn_number.saturating_sub(1),
            actual: current.turn_count,
        }
        .into());
    }
    if let Some(state) = &a.state {
        append_checked(conn, tenant, current.version, state)?;
    }
    insert_turn_row(conn, tenant, &a.turn)?;
    let record = update_session_row(
        conn,
        "turn_count = ?3, updated_at = ?4",
        params![
            tenant,
            a.turn.session_id,
            int(a.turn.turn_number)?,
            micros(a.updated_at)
        ],
        a.state.as_ref().map(|s| &s.state),
    )?;
    insert_trace(conn, tenant, &a.trace)?;
    Ok(record)
}

fn insert_turn_row(conn: &Connection, tenant: &str, turn: &Turn) -> Res<()> {
    conn.prepare_cached(
        "INSERT INTO turns (tenant, id, session_id, turn_number, body) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        tenant,
        turn.id,
        turn.session_id,
        int(turn.turn_number)?,
        json(turn)?
    ])?;
    Ok(())
}

pub fn turn(conn: &Connection, tenant: &str, id: &str) -> Res<Option<Turn>> {
    first(
        conn,
        "SELECT body FROM turns WHERE tenant = ?1 AND id = ?2",
        params![tenant, id],
        read_turn,
    )
}

pub fn list_turns(
    conn: &Connection,
    tenant: &str,
    session_id: &str,
    q: &TurnQuery,
) -> Res<Vec<Turn>> {
    let (op, order) = if q.descending {
        ("<", "DESC")
    } else {
        (">", "ASC")
    };
    let after = match q.after_turn_number {
        Some(n) => int(n)?,
        None if q.descending => i64::MAX,
        None => 0,
    };
    collect(
        conn,
        &format!(
            "SELECT body FROM turns WHERE tenant = ?1 AND session_id = ?2 AND turn_number {op} ?3
             ORDER BY turn_number {order} LIMIT ?4"
        ),
        params![tenant, session_id, after, q.limit as i64],
        read_turn,
    )
}

// ----- memories -----

const MEMORY_COLUMNS: &str = "id, session_id, user_id, content, memory_type, tags, metadata, \
     version, embedding_model, embedding, dedupe_key, created_at, updated_at";

fn read_memory(r: &Row<'_>) -> Res<MemoryRecord> {
    let embedding: Option<Vec<u8>> = r.get(9)?;
    Ok(MemoryRecord {
        memory: Memory {
            id: r.get(0)?,
            session_id: r.get(1)?,
            user_id: r.get(2)?,
            content: r.get(3)?,
            memory_type: r.get(4)?,
            tags: serde_json::from_str(&r.get::<_, String>(5)?)?,
            metadata: object(&r.get::<_, String>(6)?)?,
            version: uint(r.get(7)?)?,
            embedding_model: r.get(8)?,
            vector_available: embedding.is_some(),
            created_at: time(r.get(11)?)?,
            updated_at: time(r.get(12)?)?,
        },
        embedding: embedding.as_deref().map(blob_vector),
        dedupe_key: r.get(10)?,
    })
}

pub fn memory(conn: &Connection, tenant: &str, id: &str) -> Res<Option<MemoryRecord>> {
    first(
        conn,
        &format!("SELECT {MEMORY_COLUMNS} FROM memories WHERE tenant = ?1 AND id = ?2"),
        params![tenant, id],
        read_memory,
    )
}

fn memory_by_key(conn: &Connection, tenant: &str, key: &str) -> Res<Option<MemoryRecord>> {
    first(
        conn,
        &format!("SELECT {MEMORY_COLUMNS} FROM memories WHERE tenant = ?1 AND dedupe_key = ?2"),
        params![tenant, key],
        read_memory,
    )
}

/// The memory's tags and its revision at its version.
fn write_memory_details(conn: &Connection, tenant: &str, m: &Memory) -> Res<()> {
    write_memory_tags(conn, tenant, m)?;
    insert_memory_revision(conn, tenant, &MemoryRevision::of(m))
}

fn write_memory_tags(conn: &Connection, tenant: &str, m: &Memory) -> Res<()> {
    conn.prepare_cached("DELETE FROM memory_tags WHERE tenant = ?1 AND memory_id = ?2")?
        .execute(params![tenant, m.id])?;
    for tag in &m.tags {
        conn.prepare_cached(
            "INSERT INTO memory_tags (tenant, memory_id, tag) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![tenant, m.id, tag])?;
    }
    Ok(())
}

fn insert_memory_revision(conn: &Connection, tenant: &str, r: &MemoryRevision) -> Res<()> {
    conn.prepare_cached(
        "INSERT INTO memory_revisions (tenant, memory_id, version, body) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![tenant, r.memory_id, int(r.version)?, json(r)?])?;
    Ok(())
}

pub fn insert_memory(
    conn: &Connection,
    tenant: &str,
    new: &NewMemory,
) -> Res<Option<MemoryRecord>> {
    if let Some(existing) = memory_by_key(conn, tenant, &new.record.dedupe_key)? {
        return Ok(Some(existing));
    }
    let m = &new.record.memory;
    if let Some(sid) = &m.session_id {
        counters(conn, tenant, sid)?;
        conn.prepare_cached(
            "UPDATE sessions SET memory_count = memory_count + 1, revision = revision + 1
             WHERE tenant = ?1 AND id = ?2",
        )?
        .execute(params![tenant, sid])?;
    }
    insert_memory_row(conn, tenant, &new.record)?;
    write_memory_details(conn, tenant, m)?;
    insert_trace(conn, tenant, &new.trace)?;
    Ok(None)
}

fn insert_memory_row(conn: &Connection, tenant: &str, record: &MemoryRecord) -> Res<()> {
    let m = &record.memory;
    conn.prepare_cached(&format!(
        "INSERT INTO memories (tenant, {MEMORY_COLUMNS})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
    ))?
    .execute(params![
        tenant,
        m.id,
        m.session_id,
        m.user_id,
        m.content,
        m.memory_type,
        json(&m.tags)?,
        json(&m.metadata)?,
        int(m.version)?,
        m.embedding_model,
        record.embedding.as_deref().map(vector_blob),
        record.dedupe_key,
        micros(m.created_at),
        micros(m.updated_at),
    ])?;
    Ok(())
}

pub fn update_memory(conn: &Connection, tenant: &str, u: &MemoryUpdate) -> Res<()> {
    let m = &u.record.memory;
    let current = memory(conn, tenant, &m.id)?.ok_or_else(|| Error::NotFound {
        kind: ResourceKind::Memory,
        id: m.id.clone(),
    })?;
    if current.memory.version != u.expected_version {
        return Err(Error::Conflict {
            expected: u.expected_version,
            actual: current.memory.version,
        }
        .into());
    }
    if let Some(other) = memory_by_key(conn, tenant, &u.record.dedupe_key)? {
        if other.memory.id != m.id {
            return Err(Error::DuplicateContent {
                other: other.memory.id,
            }
            .into());
        }
    }
    conn.prepare_cached(
        "UPDATE memories SET content = ?3, memory_type = ?4, tags = ?5, metadata = ?6,
             version = ?7, embedding_model = ?8, embedding = ?9, dedupe_key = ?10, updated_at = ?11
         WHERE tenant = ?1 AND id = ?2",
    )?
    .execute(params![
        tenant,
        m.id,
        m.content,
        m.memory_type,
        json(&m.tags)?,
        json(&m.metadata)?,
        int(m.version)?,
        m.embedding_model,
        u.record.embedding.as_deref().map(vector_blob),
        u.record.dedupe_key,
        micros(m.updated_at),
    ])?;
    write_memory_details(conn, tenant, m)?;
    insert_trace(conn, tenant, &u.trace)
}

pub fn set_embedding(
    conn: &Connection,
    tenant: &str,
    id: &str,
    version: u64,
    model: &str,
    vector: &[f32],
) -> Res<bool> {
    let changed = conn
        .prepare_cached(
            "UPDATE memories SET embedding_model = ?4, embedding = ?5
             WHERE tenant = ?1 AND id = ?2 AND version = ?3",
        )?
        .execute(params![
            tenant,
            id,
            int(version)?,
            model,
            vector_blob(vector)
        ])?;
    Ok(changed > 0)
}

pub fn delete_memory(
    conn: &Connection,
    tenant: &str,
    id: &str,
    trace: &Trace,
) -> Res<MemoryRecord> {
    let record =
        memory(conn, tenant, id)?.ok_or_else(|| Error::not_found(ResourceKind::Memory, id))?;
    conn.prepare_cached("DELETE FROM memories WHERE tenant = ?1 AND id = ?2")?
        .execute(params![tenant, id])?;
    if let Some(sid) = &record.memory.session_id {
        conn.prepare_cached(
            "UPDATE sessions SET memory_count = max(memory_count - 1, 0), revision = revision + 1
             WHERE tenant = ?1 AND id = ?2",
        )?
        .execute(params![tenant, sid])?;
    }
    insert_trace(conn, tenant, trace)?;
    Ok(record)
}

pub fn list_memories(conn: &Connection, tenant: &str, q: &MemoryQuery) -> Res<Vec<MemoryRecord>> {
    let (sql, args) = list_memories_sql(tenant, q);
    collect(conn, &sql, params_from_iter(args), read_memory)
}

fn list_memories_sql(tenant: &str, q: &MemoryQuery) -> (String, Vec<Sql>) {
    let mut sql = format!("SELECT {MEMORY_COLUMNS} FROM memories WHERE tenant = ?");
    let mut args = vec![Sql::Text(tenant.to_owned())];
    cursor_clause(&mut sql, &mut args, "created_at", q.after.as_ref());
    eq_clause(&mut sql, &mut args, "session_id", q.session_id.as_ref());
    eq_clause(&mut sql, &mut args, "user_id", q.user_id.as_ref());
    eq_clause(&mut sql, &mut args, "memory_type", q.memory_type.as_ref());
    if q.user_level_only {
        sql.push_str(" AND session_id IS NULL");
    }
    if !q.tags.is_empty() {
        let marks = vec!["?"; q.tags.len()].join(", ");
        sql.push_str(&format!(
            " AND id IN (SELECT memory_id FROM memory_tags WHERE tenant = ? AND tag IN ({marks}))"
        ));
        args.push(Sql::Text(tenant.to_owned()));
        args.extend(q.tags.iter().map(|t| Sql::Text(t.clone())));
    }
    sql.push_str(" ORDER BY created_at DESC, id DESC LIMIT ?");
    args.push(Sql::Integer(q.limit as i64));
    (sql, args)
}

pub fn memory_revisions(conn: &Connection, tenant: &str, id: &str) -> Res<Vec<MemoryRevision>> {
    collect(
        conn,
        "SELECT body FROM memory_revisions WHERE tenant = ?1 AND memory_id = ?2 ORDER BY version",
        params![tenant, id],
        |r| Ok(serde_json::from_str(&r.get::<_, String>(0)?)?),
    )
}

pub fn scan_memories(
    conn: &Connection,
    tenant: &str,
    after_id: Option<&str>,
    limit: usize,
) -> Res<Vec<MemoryRecord>> {
    collect(
        conn,
        &format!(
            "SELECT {MEMORY_COLUMNS} FROM memories WHERE tenant = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
        ),
        params![tenant, after_id.unwrap_or(""), limit as i64],
        read_memory,
    )
}

// ----- entities -----

/// An entity with the attributes of its current version.
const ENTITY_SELECT: &str = "SELECT e.id, e.session_id, e.entity_type, e.entity_id, \
     v.attributes, e.version, e.created_at, e.updated_at FROM entities e \
     JOIN entity_versions v ON v.tenant = e.tenant AND v.entity = e.id AND v.version = e.version";

fn read_entity(r: &Row<'_>) -> Res<Entity> {
    Ok(Entity {
        id: r.get(0)?,
        session_id: r.get(1)?,
        entity_type: r.get(2)?,
        entity_id: r.get(3)?,
        attributes: object(&r.get::<_, String>(4)?)?,
        version: uint(r.get(5)?)?,
        created_at: time(r.get(6)?)?,
        updated_at: time(r.get(7)?)?,
    })
}

pub fn entity(conn: &Connection, tenant: &str, id: &str) -> Res<Option<Entity>> {
    first(
        conn,
        &format!("{ENTITY_SELECT} WHERE e.tenant = ?1 AND e.id = ?2"),
        params![tenant, id],
        read_entity,
    )
}

fn insert_entity_version(conn: &Connection, tenant: &str, id: &str, v: &EntityVersion) -> Res<()> {
    conn.prepare_cached(
        "INSERT INTO entity_versions (tenant, entity, version, attributes, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        tenant,
        id,
        int(v.version)?,
        json(&v.attributes)?,
        micros(v.updated_at)
    ])?;
    Ok(())
}

pub fn insert_entity(conn: &Connection, tenant: &str, new: &NewEntity) -> Res<Option<Entity>> {
    let e = &new.entity;
    let existing = first(
        conn,
        &format!(
            "{ENTITY_SELECT} WHERE e.tenant = ?1 AND e.session_id = ?2 AND e.entity_type = ?3
             AND e.entity_id = ?4"
        ),
        params![tenant, e.session_id, e.entity_type, e.entity_id],
        read_entity,
    )?;
    if existing.is_some() {
        return Ok(existing);
    }
    counters(conn, tenant, &e.session_id)?;
    insert_entity_row(conn, tenant, e)?;
    insert_entity_version(conn, tenant, &e.id, &EntityVersion::of(e))?;
    insert_trace(conn, tenant, &new.trace)?;
    Ok(None)
}

fn insert_entity_row(conn: &Connection, tenant: &str, e: &Entity) -> Res<()> {
    conn.prepare_cached(
        "INSERT INTO entities (tenant, id, session_id, entity_type, entity_id, version,
             created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        tenant,
        e.id,
        e.session_id,
        e.entity_type,
        e.entity_id,
        int(e.version)?,
        micros(e.created_at),
        micros(e.updated_at)
    ])?;
    Ok(())
}

pub fn update_entity(conn: &Connection, tenant: &str, u: &EntityUpdate) -> Res<()> {
    let e = &u.entity;
    let current: Option<i64> = first(
        conn,
        "SELECT version FROM entities WHERE tenant = ?1 AND id = ?2",
        params![tenant, e.id],
        |r| Ok(r.get(0)?),
    )?;
    let current = uint(current.ok_or_else(|| Error::not_found(ResourceKind::Entity, &e.id))?)?;
    if current != u.expected_version {
        return Err(Error::Conflict {
            expected: u.expected_version,
            actual: current,
        }
        .into());
    }
    conn.prepare_cached(
        "UPDATE entities SET version = ?3, updated_at = ?4 WHERE tenant = ?1 AND id = ?2",
    )?
    .execute(params![tenant, e.id, int(e.version)?, micros(e.updated_at)])?;
    insert_entity_version(conn, tenant, &e.id, &EntityVersion::of(e))?;
    insert_trace(conn, tenant, &u.trace)
}

pub fn delete_entity(conn: &Connection, tenant: &str, id: &str, trace: &Trace) -> Res<Entity> {
    let found =
        entity(conn, tenant, id)?.ok_or_else(|| Error::not_found(ResourceKind::Entity, id))?;
    // Its versions go by ON DELETE CASCADE.
    conn.prepare_cached("DELETE FROM entities WHERE tenant = ?1 AND id = ?2")?
        .execute(params![tenant, id])?;
    insert_trace(conn, tenant, trace)?;
    Ok(found)
}

pub fn list_entities(conn: &Connection, tenant: &str, q: &EntityQuery) -> Res<Vec<Entity>> {
    let (sql, args) = list_entities_sql(tenant, q);
    collect(conn, &sql, params_from_iter(args), read_entity)
}

fn list_entities_sql(tenant: &str, q: &EntityQuery) -> (String, Vec<Sql>) {
    let mut sql = format!("{ENTITY_SELECT} WHERE e.tenant = ?");
    let mut args = vec![Sql::Text(tenant.to_owned())];
    cursor_clause(&mut sql, &mut args, "e.created_at", q.after.as_ref());
    eq_clause(&mut sql, &mut args, "e.session_id", q.session_id.as_ref());
    eq_clause(&mut sql, &mut args, "e.entity_type", q.entity_type.as_ref());
    eq_clause(&mut sql, &mut args, "e.entity_id", q.entity_id.as_ref());
    sql.push_str(" ORDER BY e.created_at DESC, e.id DESC LIMIT ?");
    args.push(Sql::Integer(q.limit as i64));
    (sql, args)
}

pub fn entity_versions(
    conn: &Connection,
    tenant: &str,
    id: &str,
    range: Range<u64>,
) -> Res<Vec<EntityVersion>> {
    // Numbers past i64::MAX are past every stored version.
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    collect(
        conn,
        "SELECT version, attributes, updated_at FROM entity_versions
         WHERE tenant = ?1 AND entity = ?2 AND version >= ?3 AND version < ?4 ORDER BY version",
        params![tenant, id, clamp(range.start), clamp(range.end)],
        |r| {
            Ok(EntityVersion {
                version: uint(r.get(0)?)?,
                attributes: object(&r.get::<_, String>(1)?)?,
                updated_at: time(r.get(2)?)?,
            })
        },
    )
}

// ----- API keys -----

pub fn put_api_key(conn: &Connection, key: &ApiKey) -> Res<()> {
    conn.prepare_cached(
        "INSERT INTO api_keys (id, tenant, key_hash, created_at, body) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (id) DO UPDATE SET body = excluded.body",
    )?
    .execute(params![
        key.id,
        key.tenant,
        key.key_hash,
        micros(key.created_at),
        json(key)?
    ])?;
    Ok(())
}

pub fn api_key_by_hash(conn: &Connection, hash: &str) -> Res<Option<ApiKey>> {
    first(
        conn,
        "SELECT body FROM api_keys WHERE key_hash = ?1",
        params![hash],
        |r| Ok(serde_json::from_str(&r.get::<_, String>(0)?)?),
    )
}

pub fn api_key(conn: &Connection, id: &str) -> Res<Option<ApiKey>> {
    first(
        conn,
        "SELECT body FROM api_keys WHERE id = ?1",
        params![id],
        |r| Ok(serde_json::from_str(&r.get::<_, String>(0)?)?),
    )
}

pub fn list_api_keys(conn: &Connection, tenant: Option<&str>) -> Res<Vec<ApiKey>> {
    collect(
        conn,
        "SELECT body FROM api_keys WHERE ?1 IS NULL OR tenant = ?1 ORDER BY created_at, id",
        params![tenant],
        |r| Ok(serde_json::from_str(&r.get::<_, String>(0)?)?),
    )
}

/// `PRAGMA integrity_check`: `ok` for a sound file.
pub fn integrity_check(conn: &Connection) -> Res<String> {
    Ok(conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .optional()?
        .unwrap_or_default())
}

// ----- import: archived records as given, with no trace of the import -----

/// Inserts the archived session with everything it holds; false, writing nothing, if the
/// tenant has a session with its id. The caller's savepoint makes it all or nothing.
pub fn import_session(conn: &Connection, tenant: &str, a: &SessionArchive) -> Res<bool> {
    let id = &a.record.session.id;
    if session(conn, tenant, id)?.is_some() || erased(conn, tenant, id)? {
        return Ok(false);
    }
    insert_session_row(conn, tenant, &a.record)?;
    for v in &a.versions {
        insert_version(conn, tenant, id, v)?;
    }
    for t in &a.turns {
        insert_turn_row(conn, tenant, t)?;
    }
    for m in &a.memories {
        if !import_memory(conn, tenant, m)? {
            let taken = format!("memory id {} already exists", m.record.memory.id);
            return Err(Error::backend(taken).into());
        }
    }
    for e in &a.entities {
        if entity(conn, tenant, &e.entity.id)?.is_some() {
            let taken = format!("entity id {} already exists", e.entity.id);
            return Err(Error::backend(taken).into());
        }
        insert_entity_row(conn, tenant, &e.entity)?;
        for v in &e.versions {
            insert_entity_version(conn, tenant, &e.entity.id, v)?;
        }
    }
    Ok(true)
}

/// Inserts the archived memory with its revisions; false if the tenant has one with its
/// id; `DuplicateContent` if another has its dedupe key.
pub fn import_memory(conn: &Connection, tenant: &str, a: &MemoryArchive) -> Res<bool> {
    let m = &a.record.memory;
    if memory(conn, tenant, &m.id)?.is_some() || erased(conn, tenant, &m.id)? {
        return Ok(false);
    }
    if let Some(other) = memory_by_key(conn, tenant, &a.record.dedupe_key)? {
        let other = other.memory.id;
        return Err(Error::DuplicateContent { other }.into());
    }
    insert_memory_row(conn, tenant, &a.record)?;
    write_memory_tags(conn, tenant, m)?;
    for r in &a.revisions {
        insert_memory_revision(conn, tenant, r)?;
    }
    Ok(true)
}

/// Inserts the traces the tenant lacks, but those of erased records, with no feed position (NULL): the feed is for
/// changes to announce. How many it inserted.
pub fn import_traces(conn: &Connection, tenant: &str, traces: &[Trace]) -> Res<u64> {
    let sql = format!(
        "INSERT OR IGNORE INTO traces (tenant, {TRACE_COLUMNS}, position) VALUES \
         (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
    );
    let mut inserted = 0;
    for t in traces {
        let of_erased = match &t.session_id {
            Some(s) => erased(conn, tenant, s)?,
            None => false,
        } || erased(conn, tenant, &t.resource_id)?;
        if !of_erased {
            inserted += execute_trace(conn, &sql, tenant, t, None)? as u64;
        }
    }
    Ok(inserted)
}

pub fn tenants(conn: &Connection) -> Res<Vec<String>> {
    collect(
        conn,
        "SELECT tenant FROM sessions UNION SELECT tenant FROM memories \
         UNION SELECT tenant FROM traces ORDER BY 1",
        [],
        |r| Ok(r.get(0)?),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::StatementStatus;

    fn plan(conn: &Connection, sql: &str, args: Vec<Sql>) -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt
            .query_map(params_from_iter(args), |r| r.get::<_, String>(3))
            .unwrap();
        rows.map(|r| r.unwrap()).collect::<Vec<_>>().join("\n")
    }

    /// A list run again takes its statement from the cache as prepared. Without the query
    /// planner stability guarantee, SQLite prepared each of these again at every run.
    #[test]
    fn lists_run_again_are_not_prepared_again() {
        let mut conn = crate::connect(":memory:".as_ref(), &Default::default()).unwrap();
        crate::schema::migrate(&mut conn).unwrap();
        let sessions = SessionQuery {
            limit: 20,
            agent_id: Some("a".into()),
            ..Default::default()
        };
        let memories = MemoryQuery {
            limit: 5,
            session_id: Some("s".into()),
            ..Default::default()
        };
        let traces = TraceQuery {
            limit: 50,
            ..Default::default()
        };
        for _ in 0..3 {
            list_sessions(&conn, "t", &sessions).unwrap();
            list_memories(&conn, "t", &memories).unwrap();
            list_traces(&conn, "t", &traces).unwrap();
        }
        let statements = [
            list_sessions_sql("t", &sessions).unwrap().0,
            list_memories_sql("t", &memories).0,
            list_traces_sql("t", &traces).0,
        ];
        for sql in statements {
            let stmt = conn.prepare_cached(&sql).unwrap();
            assert_eq!(stmt.get_status(StatementStatus::RePrepare), 0, "{sql}");
        }
    }

    /// Paging, filters and history read through indexes: no query scans a whole table.
    #[test]
    fn lists_and_history_use_indexes() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::schema::migrate(&mut conn).unwrap();
        let at = Timestamp::from_timestamp_micros(1).unwrap();
        let cursor = Some(Cursor { at, id: "x".into() });
        let t = |s: &str| Some(s.to_owned());
        let mut plans = vec![
            list_sessions_sql(
                "t",
                &SessionQuery {
                    limit: 20,
                    after: cursor.clone(),
                    live_at: Some(at),
                    ..Default::default()
                },
            )
            .unwrap(),
            list_sessions_sql(
                "t",
                &SessionQuery {
                    limit: 20,
                    agent_id: t("a"),
                    ..Default::default()
                },
            )
            .unwrap(),
            list_sessions_sql(
                "t",
                &SessionQuery {
                    limit: 20,
                    user_id: t("u"),
                    after: cursor.clone(),
                    ..Default::default()
                },
            )
            .unwrap(),
            list_traces_sql(
                "t",
                &TraceQuery {
                    limit: 20,
                    after: cursor.clone(),
                    ..Default::default()
                },
            ),
            list_traces_sql(
                "t",
                &TraceQuery {
                    limit: 20,
                    session_id: t("s"),
                    ..Default::default()
                },
            ),
            list_traces_sql(
                "t",
                &TraceQuery {
                    limit: 20,
                    action: t("a"),
                    ..Default::default()
                },
            ),
            list_traces_sql(
                "t",
                &TraceQuery {
                    limit: 20,
                    resource_id: t("r"),
                    after: cursor.clone(),
                    ..Default::default()
                },
            ),
            list_memories_sql(
                "t",
                &MemoryQuery {
                    limit: 20,
                    after: cursor,
                    ..Default::default()
                },
            ),
            list_memories_sql(
                "t",
                &MemoryQuery {
                    limit: 20,
                    session_id: t("s"),
                    ..Default::default()
                },
            ),
            list_memories_sql(
                "t",
                &MemoryQuery {
                    limit: 20,
                    user_id: t("u"),
                    ..Default::default()
                },
            ),
            list_memories_sql(
                "t",
                &MemoryQuery {
                    limit: 20,
                    tags: vec!["x".into()],
                    ..Default::default()
                },
            ),
        ];
        for q in [
            EntityQuery {
                limit: 20,
                after: Some(Cursor { at, id: "x".into() }),
                ..Default::default()
            },
            EntityQuery {
                limit: 20,
                session_id: t("s"),
                ..Default::default()
            },
            EntityQuery {
                limit: 20,
                entity_type: t("person"),
                ..Default::default()
            },
        ] {
            plans.push(list_entities_sql("t", &q));
        }
        plans.push((
            "SELECT version, created_at, body FROM versions WHERE tenant = ?1 AND session_id = ?2 AND version >= ?3 AND version < ?4 ORDER BY version".into(),
            vec![Sql::Text("t".into()), Sql::Text("s".into()), Sql::Integer(0), Sql::Integer(10)],
        ));
        plans.push((
            "SELECT body FROM turns WHERE tenant = ?1 AND session_id = ?2 AND turn_number < ?3 ORDER BY turn_number DESC LIMIT ?4".into(),
            vec![Sql::Text("t".into()), Sql::Text("s".into()), Sql::Integer(9), Sql::Integer(10)],
        ));
        for (sql, args) in plans {
            let p = plan(&conn, &sql, args);
            assert!(
                !p.lines().any(|l| l.starts_with("SCAN")),
                "full scan in {sql}:\n{p}"
            );
            assert!(
                !p.contains("TEMP B-TREE"),
                "sort without an index in {sql}:\n{p}"
            );
        }
    }
}
