//! The schema: versioned migration scripts, applied in one transaction and recorded in
//! `schema_version`.
//!
//! Timestamps are integer microseconds since the Unix epoch. States, metadata, turns,
//! traces and revisions are JSON text (queryable with SQLite's JSON functions); vectors and
//! encoded state versions are blobs.

use crate::error::SqliteError;
use rusqlite::{Connection, OptionalExtension};

/// Migration `i` takes the schema from version `i` to `i + 1`. Never edit a released one:
/// add the next.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE sessions (
    tenant          TEXT    NOT NULL,
    id              TEXT    NOT NULL,
    agent_id        TEXT    NOT NULL,
    user_id         TEXT,
    state           TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    metadata        TEXT    NOT NULL,
    memory_count    INTEGER NOT NULL,
    turn_count      INTEGER NOT NULL,
    ttl_expires_at  INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    revision        INTEGER NOT NULL,
    PRIMARY KEY (tenant, id)
) STRICT;
CREATE INDEX sessions_by_created ON sessions (tenant, created_at, id);
CREATE INDEX sessions_by_agent ON sessions (tenant, agent_id, created_at, id);
CREATE INDEX sessions_by_user ON sessions (tenant, user_id, created_at, id);
CREATE INDEX sessions_by_expiry ON sessions (ttl_expires_at);

CREATE TABLE versions (
    tenant      TEXT    NOT NULL,
    session_id  TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    body        BLOB    NOT NULL,
    PRIMARY KEY (tenant, session_id, version),
    FOREIGN KEY (tenant, session_id) REFERENCES sessions (tenant, id) ON DELETE CASCADE
) STRICT, WITHOUT ROWID;

CREATE TABLE turns (
    tenant       TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    session_id   TEXT    NOT NULL,
    turn_number  INTEGER NOT NULL,
    body         TEXT    NOT NULL,
    PRIMARY KEY (tenant, id),
    UNIQUE (tenant, session_id, turn_number),
    FOREIGN KEY (tenant, session_id) REFERENCES sessions (tenant, id) ON DELETE CASCADE
) STRICT;

CREATE TABLE memories (
    tenant           TEXT    NOT NULL,
    id               TEXT    NOT NULL,
    session_id       TEXT,
    user_id          TEXT,
    content          TEXT    NOT NULL,
    memory_type      TEXT    NOT NULL,
    tags             TEXT    NOT NULL,
    metadata         TEXT    NOT NULL,
    version          INTEGER NOT NULL,
    embedding_model  TEXT,
    embedding        BLOB,
    dedupe_key       TEXT    NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    PRIMARY KEY (tenant, id),
    UNIQUE (tenant, dedupe_key),
    FOREIGN KEY (tenant, session_id) REFERENCES sessions (tenant, id) ON DELETE CASCADE
) STRICT;
CREATE INDEX memories_by_created ON memories (tenant, created_at, id);
CREATE INDEX memories_by_session ON memories (tenant, session_id, created_at, id);
CREATE INDEX memories_by_user ON memories (tenant, user_id, created_at, id);
CREATE INDEX memories_by_type ON memories (tenant, memory_type, created_at, id);

CREATE TABLE memory_tags (
    tenant     TEXT NOT NULL,
    memory_id  TEXT NOT NULL,
    tag        TEXT NOT NULL,
    PRIMARY KEY (tenant, memory_id, tag),
    FOREIGN KEY (tenant, memory_id) REFERENCES memories (tenant, id) ON DELETE CASCADE
) STRICT, WITHOUT ROWID;
CREATE INDEX memory_tags_by_tag ON memory_tags (tenant, tag, memory_id);

CREATE TABLE memory_revisions (
    tenant     TEXT    NOT NULL,
    memory_id  TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    body       TEXT    NOT NULL,
    PRIMARY KEY (tenant, memory_id, version),
    FOREIGN KEY (tenant, memory_id) REFERENCES memories (tenant, id) ON DELETE CASCADE
) STRICT, WITHOUT ROWID;

CREATE TABLE traces (
    tenant         TEXT    NOT NULL,
    id             TEXT    NOT NULL,
    session_id     TEXT,
    action         TEXT    NOT NULL,
    resource_type  TEXT    NOT NULL,
    resource_id    TEXT    NOT NULL,
    actor          TEXT    NOT NULL,
    timestamp      INTEGER NOT NULL,
    details        TEXT    NOT NULL,
    PRIMARY KEY (tenant, id)
) STRICT;
CREATE INDEX traces_by_time ON traces (tenant, timestamp, id);
CREATE INDEX traces_by_session ON traces (tenant, session_id, timestamp, id);
CREATE INDEX traces_by_action ON traces (tenant, action, timestamp, id);
CREATE INDEX traces_by_resource ON traces (tenant, resource_id, timestamp, id);
"#,
    r#"
CREATE TABLE api_keys (
    id          TEXT    NOT NULL PRIMARY KEY,
    tenant      TEXT    NOT NULL,
    key_hash    TEXT    NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    body        TEXT    NOT NULL
) STRICT;
CREATE INDEX api_keys_by_tenant ON api_keys (tenant, created_at, id);
"#,
    // The commit order of traces (the webhook outbox), explicit so that VACUUM keeps it;
    // the server's own records.
    r#"
ALTER TABLE traces ADD COLUMN position INTEGER;
UPDATE traces SET position = rowid;
CREATE UNIQUE INDEX traces_by_position ON traces (position);
CREATE TABLE meta (
    space  TEXT NOT NULL,
    key    TEXT NOT NULL,
    value  BLOB NOT NULL,
    PRIMARY KEY (space, key)
) STRICT, WITHOUT ROWID;
"#,
    // No table changes: version bodies may now be deltas (statebase-core's codec format 2),
    // which an older statebase cannot read, so it must refuse the file.
    "SELECT 1;",
    // Most traces are of a session about itself (resource_id = session_id), found by
    // session: the resource index leaves them out, one B-tree insert fewer a write.
    r#"
DROP INDEX traces_by_resource;
CREATE INDEX traces_by_resource ON traces (tenant, resource_id, timestamp, id)
    WHERE resource_id IS NOT session_id;
"#,
    // Entities. A version's attributes are stored once, in entity_versions: the entity row
    // names its current version.
    r#"
CREATE TABLE entities (
    tenant       TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    session_id   TEXT    NOT NULL,
    entity_type  TEXT    NOT NULL,
    entity_id    TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (tenant, id),
    UNIQUE (tenant, session_id, entity_type, entity_id),
    FOREIGN KEY (tenant, session_id) REFERENCES sessions (tenant, id) ON DELETE CASCADE
) STRICT;
CREATE INDEX entities_by_created ON entities (tenant, created_at, id);
CREATE INDEX entities_by_session ON entities (tenant, session_id, created_at, id);
CREATE INDEX entities_by_type ON entities (tenant, entity_type, created_at, id);

CREATE TABLE entity_versions (
    tenant      TEXT    NOT NULL,
    entity      TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    attributes  TEXT    NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant, entity, version),
    FOREIGN KEY (tenant, entity) REFERENCES entities (tenant, id) ON DELETE CASCADE
) STRICT, WITHOUT ROWID;
"#,
    // The server's records in their own tables, moved from the key-value meta space (which
    // goes): webhook endpoints (as JSON), their deliveries and cursor, idempotent responses.
    r#"
CREATE TABLE webhooks (
    id          TEXT    PRIMARY KEY,
    tenant      TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    body        TEXT    NOT NULL
) STRICT;
CREATE INDEX webhooks_by_tenant ON webhooks (tenant, created_at);

CREATE TABLE webhook_deliveries (
    endpoint_id  TEXT    NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    position     INTEGER NOT NULL,
    done_at      INTEGER,
    body         BLOB    NOT NULL,
    PRIMARY KEY (endpoint_id, position)
) STRICT, WITHOUT ROWID;
CREATE INDEX webhook_deliveries_owed ON webhook_deliveries (endpoint_id, position)
    WHERE done_at IS NULL;
CREATE INDEX webhook_deliveries_done ON webhook_deliveries (done_at)
    WHERE done_at IS NOT NULL;

CREATE TABLE webhook_cursor (
    id        INTEGER PRIMARY KEY CHECK (id = 0),
    position  INTEGER NOT NULL
) STRICT;

CREATE TABLE idempotent_responses (
    key   TEXT    PRIMARY KEY,
    at    INTEGER NOT NULL,
    body  BLOB    NOT NULL
) STRICT, WITHOUT ROWID;
CREATE INDEX idempotent_responses_by_at ON idempotent_responses (at);

INSERT INTO webhooks (id, tenant, created_at, body)
SELECT json_extract(v, '$.id'), json_extract(v, '$.tenant'),
       CAST(unixepoch(json_extract(v, '$.created_at'), 'subsec') * 1000000 AS INTEGER), v
FROM (SELECT CAST(value AS TEXT) AS v FROM meta
      WHERE space = 'webhooks' AND key LIKE 'endpoint/%');

-- Keys were pending/{endpoint}/{position, 20 digits} and done/{endpoint}/{position}.
INSERT INTO webhook_deliveries (endpoint_id, position, done_at, body)
SELECT endpoint_id, position, done_at, value FROM (
    SELECT substr(key, 9, length(key) - 29) AS endpoint_id,
           CAST(substr(key, -20) AS INTEGER) AS position, NULL AS done_at, value
    FROM meta WHERE space = 'webhooks' AND key LIKE 'pending/%'
    UNION ALL
    SELECT substr(key, 6, length(key) - 26), CAST(substr(key, -20) AS INTEGER),
           CAST(unixepoch(coalesce(json_extract(CAST(value AS TEXT), '$.delivered_at'),
                                   json_extract(CAST(value AS TEXT), '$.next_attempt_at')),
                          'subsec') * 1000000 AS INTEGER),
           value
    FROM meta WHERE space = 'webhooks' AND key LIKE 'done/%'
) WHERE endpoint_id IN (SELECT id FROM webhooks);

INSERT INTO webhook_cursor (id, position)
SELECT 0, CAST(CAST(value AS TEXT) AS INTEGER) FROM meta
WHERE space = 'webhooks' AND key = 'cursor';

INSERT INTO idempotent_responses (key, at, body)
SELECT key, CAST(unixepoch(json_extract(CAST(value AS TEXT), '$.at'), 'subsec') * 1000000
                 AS INTEGER), value
FROM meta WHERE space = 'idempotency';

DROP TABLE meta;
"#,
    // Erasing a user: tombstones of the erased session and memory ids, and what each kept
    // response names, to erase it with them.
    r#"
CREATE TABLE erased (
    tenant     TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    user_id    TEXT    NOT NULL,
    erased_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant, id)
) STRICT, WITHOUT ROWID;
CREATE INDEX erased_by_user ON erased (tenant, user_id);

ALTER TABLE idempotent_responses ADD COLUMN tenant TEXT NOT NULL DEFAULT '';
CREATE TABLE idempotent_subjects (
    tenant   TEXT NOT NULL,
    subject  TEXT NOT NULL,
    key      TEXT NOT NULL REFERENCES idempotent_responses (key) ON DELETE CASCADE,
    PRIMARY KEY (tenant, subject, key)
) STRICT, WITHOUT ROWID;
CREATE INDEX idempotent_subjects_by_key ON idempotent_subjects (key);
"#,
    // Retention policies: a tenant's, and a session's, which goes with it.
    r#"
CREATE TABLE tenant_retention (
    tenant  TEXT NOT NULL PRIMARY KEY,
    body    TEXT NOT NULL
) STRICT, WITHOUT ROWID;
CREATE TABLE session_retention (
    tenant      TEXT NOT NULL,
    session_id  TEXT NOT NULL,
    body        TEXT NOT NULL,
    PRIMARY KEY (tenant, session_id),
    FOREIGN KEY (tenant, session_id) REFERENCES sessions (tenant, id) ON DELETE CASCADE
) STRICT, WITHOUT ROWID;
"#,
];

/// The schema version this code writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The schema version of the file (0 for a new one).
fn current_version(conn: &Connection) -> Result<i64, SqliteError> {
    let has_table: Option<String> = conn
        .query_row(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if has_table.is_none() {
        return Ok(0);
    }
    Ok(conn.query_row(
        "SELECT coalesce(max(version), 0) FROM schema_version",
        [],
        |r| r.get(0),
    )?)
}

/// Fails, writing nothing, if the file was written by a newer statebase.
pub fn check_version(conn: &Connection) -> Result<(), SqliteError> {
    let found = current_version(conn)?;
    if found > SCHEMA_VERSION {
        return Err(SqliteError::NewerSchema {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// Brings the schema up to [`SCHEMA_VERSION`], all in one transaction.
pub fn migrate(conn: &mut Connection) -> Result<(), SqliteError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
            version     INTEGER PRIMARY KEY,
            applied_at  INTEGER NOT NULL
        ) STRICT;",
    )?;
    let from = current_version(&tx)?;
    if from > SCHEMA_VERSION {
        return Err(SqliteError::NewerSchema {
            found: from,
            supported: SCHEMA_VERSION,
        });
    }
    for (i, script) in MIGRATIONS.iter().enumerate().skip(from as usize) {
        tx.execute_batch(script)?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (?1, ?2)",
            (i as i64 + 1, chrono::Utc::now().timestamp_micros()),
        )?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file written before the trace feed existed: its traces enter the feed in the order
    /// they were written (not, say, by id).
    /// A database as a statebase of schema `version` left it.
    fn file_at(version: usize) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL) STRICT;",
        )
        .unwrap();
        for (i, script) in MIGRATIONS[..version].iter().enumerate() {
            conn.execute_batch(script).unwrap();
            conn.execute("INSERT INTO schema_version VALUES (?1, 0)", [i as i64 + 1])
                .unwrap();
        }
        conn
    }

    #[test]
    fn migration_3_puts_existing_traces_in_the_feed_in_write_order() {
        let mut conn = file_at(2);
        for (id, tenant) in [("trace_b", "t1"), ("trace_a", "t2"), ("trace_c", "t1")] {
            conn.execute(
                "INSERT INTO traces (tenant, id, session_id, action, resource_type, resource_id,
                 actor, timestamp, details) VALUES (?1, ?2, NULL, 'session.created', 'session',
                 'sess_x', 'system', 0, '{}')",
                [tenant, id],
            )
            .unwrap();
        }
        migrate(&mut conn).unwrap();
        let feed = crate::sql::trace_feed(&conn, 0, 10).unwrap();
        let seen: Vec<(u64, &str, &str)> = feed
            .iter()
            .map(|e| (e.position, e.tenant.as_str(), e.trace.id.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                (1, "t1", "trace_b"),
                (2, "t2", "trace_a"),
                (3, "t1", "trace_c")
            ]
        );
        assert_eq!(crate::sql::trace_feed(&conn, 2, 10).unwrap().len(), 1);
    }

    /// The resource index of an existing file leaves out the traces of a session about
    /// itself, and traces of both kinds written before are still found by resource.
    #[test]
    fn migration_6_keeps_every_trace_found_by_resource() {
        let mut conn = file_at(5);
        for (position, (id, resource)) in [("trace_1", "sess_x"), ("trace_2", "mem_y")]
            .into_iter()
            .enumerate()
        {
            conn.execute(
                "INSERT INTO traces (tenant, id, session_id, action, resource_type, resource_id,
                 actor, timestamp, details, position) VALUES ('t', ?1, 'sess_x', 'a', 'r', ?2,
                 'system', 0, '{}', ?3)",
                rusqlite::params![id, resource, position as i64 + 1],
            )
            .unwrap();
        }
        migrate(&mut conn).unwrap();
        let index: String = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE name = 'traces_by_resource'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(
            index.ends_with("WHERE resource_id IS NOT session_id"),
            "{index}"
        );
        for (resource, id) in [("sess_x", "trace_1"), ("mem_y", "trace_2")] {
            let q = statebase_core::store::TraceQuery {
                limit: 10,
                resource_id: Some(resource.into()),
                ..Default::default()
            };
            let found = crate::sql::list_traces(&conn, "t", &q).unwrap();
            let ids: Vec<&str> = found.iter().map(|t| t.id.as_str()).collect();
            assert_eq!(ids, [id]);
        }
    }

    /// The server's records of a file that kept them in the meta space: endpoints, owed and
    /// done deliveries (with when they were done), the cursor and idempotent responses are
    /// in their tables after the upgrade; a delivery of an endpoint that was gone is not.
    #[test]
    fn migration_7_moves_the_server_records_out_of_the_meta_space() {
        let mut conn = file_at(6);
        let endpoint = r#"{"id":"wh_a","tenant":"t","url":"https://example.com/","events":[],"secret":"whsec_0123456789abcdef","created_at":"2026-01-02T03:04:05.678901Z"}"#;
        let owed = r#"{"session_id":null,"status":"pending","delivered_at":null,"next_attempt_at":"2026-01-02T00:00:00Z"}"#;
        let done = r#"{"session_id":null,"status":"delivered","delivered_at":"2026-01-03T00:00:01Z","next_attempt_at":"2026-01-02T00:00:00Z"}"#;
        let response =
            r#"{"request":"r","status":201,"headers":[],"body":"{}","at":"2026-01-04T00:00:00Z"}"#;
        let position = |p: u64| format!("{p:020}");
        for (space, key, value) in [
            ("webhooks", "endpoint/1:t/wh_a".to_owned(), endpoint),
            ("webhooks", format!("pending/wh_a/{}", position(12)), owed),
            ("webhooks", format!("done/wh_a/{}", position(7)), done),
            ("webhooks", format!("pending/wh_gone/{}", position(3)), owed),
            ("webhooks", "cursor".to_owned(), "12"),
            ("idempotency", "key_1/k".to_owned(), response),
        ] {
            conn.execute(
                "INSERT INTO meta (space, key, value) VALUES (?1, ?2, ?3)",
                rusqlite::params![space, key, value.as_bytes()],
            )
            .unwrap();
        }
        migrate(&mut conn).unwrap();
        let e = crate::sql::webhook(&conn, "t", "wh_a").unwrap().unwrap();
        assert_eq!(
            (e.url.as_str(), e.created_at.timestamp_micros() % 1_000_000),
            ("https://example.com/", 678_901)
        );
        assert_eq!(crate::sql::list_webhooks(&conn, None).unwrap().len(), 1);
        let deliveries = crate::sql::deliveries(&conn, None, false).unwrap();
        let found: Vec<(&str, u64, Option<i64>, &[u8])> = deliveries
            .iter()
            .map(|d| {
                let done = d.done_at.map(|t| t.timestamp());
                (d.endpoint_id.as_str(), d.position, done, d.body.as_slice())
            })
            .collect();
        let done_at = chrono::DateTime::parse_from_rfc3339("2026-01-03T00:00:01Z").unwrap();
        assert_eq!(
            found,
            [
                ("wh_a", 7, Some(done_at.timestamp()), done.as_bytes()),
                ("wh_a", 12, None, owed.as_bytes())
            ]
        );
        assert_eq!(crate::sql::delivery_cursor(&conn).unwrap(), 12);
        let kept = crate::sql::idempotent_response(&conn, "key_1/k")
            .unwrap()
            .unwrap();
        assert_eq!(
            (kept.at.to_rfc3339(), kept.body.as_slice()),
            ("2026-01-04T00:00:00+00:00".to_owned(), response.as_bytes())
        );
        let meta: Option<String> = conn
            .query_row(
                "SELECT name FROM sqlite_master WHERE name = 'meta'",
                [],
                |r| r.get(0),
            )
            .optional()
            .unwrap();
        assert_eq!(meta, None, "the meta space is gone");
    }
}
