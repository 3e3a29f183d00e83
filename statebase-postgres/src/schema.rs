//! Versioned migrations: each script runs once, in order, all of them in one transaction
//! that first takes an advisory lock, so that servers starting together apply each once.

use crate::PostgresError;
use tokio_postgres::error::SqlState;
use tokio_postgres::GenericClient;

/// The scripts, in order; script n brings the schema to version n + 1.
const MIGRATIONS: &[&str] = &[
    // pgvector, for memory vectors searched in the database.
    "CREATE EXTENSION IF NOT EXISTS vector;",
    // Every record. JSON is json  (queryable); encoded state versions are bytea. Ids sort
    // by bytes (COLLATE "C"), as in every backend, whatever the database's locale. Traces
    // get their feed position after commit, from `statebase_feed` (see `traces.rs`).
    r#"
CREATE TABLE sessions (
    tenant          text        NOT NULL,
    id              text COLLATE "C" NOT NULL,
    agent_id        text        NOT NULL,
    user_id         text,
    state           json        NOT NULL,
    version         bigint      NOT NULL,
    metadata        json        NOT NULL,
    memory_count    bigint      NOT NULL,
    turn_count      bigint      NOT NULL,
    ttl_expires_at  timestamptz NOT NULL,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    revision        bigint      NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX sessions_by_created ON sessions (tenant, created_at, id);
CREATE INDEX sessions_by_agent ON sessions (tenant, agent_id, created_at, id);
CREATE INDEX sessions_by_user ON sessions (tenant, user_id, created_at, id);
CREATE INDEX sessions_by_expiry ON sessions (ttl_expires_at);

CREATE TABLE versions (
    tenant      text        NOT NULL,
    session_id  text        NOT NULL,
    version     bigint      NOT NULL,
    created_at  timestamptz NOT NULL,
    body        bytea       NOT NULL,
    PRIMARY KEY (tenant, session_id, version),
    FOREIGN KEY (tenant, session_id) REFERENCES sessions (tenant, id) ON DELETE CASCADE
);

CREATE TABLE turns (
    tenant       text   NOT NULL,
    id           text COLLATE "C" NOT NULL,
    session_id   text   NOT NULL,
    turn_number  bigint NOT NULL,
    body         json   NOT NULL,
    PRIMARY KEY (tenant, id),
    UNIQUE (tenant, session_id, turn_number),
    FOREIGN KEY (tenant, session_id) REFERENCES sessions (tenant, id) ON DELETE CASCADE
);

CREATE TABLE memories (
    tenant           text        NOT NULL,
    id               text COLLATE "C" NOT NULL,
    session_id       text,
    user_id          text,
    content          text        NOT NULL,
    memory_type      text        NOT NULL,
    tags             text[]      NOT NULL,
    metadata         json        NOT NULL,
    version          bigint      NOT NULL,
    embedding_model  text,
    embedding        vector,
    keywords         text[]      NOT NULL,
    dedupe_key       text        NOT NULL,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    PRIMARY KEY (tenant, id),
    UNIQUE (tenant, dedupe_key),
    FOREIGN KEY (tenant, session_id) REFERENCES sessions (tenant, id) ON DELETE CASCADE
);
CREATE INDEX memories_by_created ON memories (tenant, created_at, id);
CREATE INDEX memories_by_session ON memories (tenant, session_id, created_at, id);
CREATE INDEX memories_by_user ON memories (tenant, user_id, created_at, id);
CREATE INDEX memories_by_type ON memories (tenant, memory_type, created_at, id);
CREATE INDEX memories_by_tag ON memories USING gin (tags);
CREATE INDEX memories_by_keyword ON memories USING gin (keywords);

CREATE TABLE memory_revisions (
    tenant     text   NOT NULL,
    memory_id  text   NOT NULL,
    version    bigint NOT NULL,
    body       json   NOT NULL,
    PRIMARY KEY (tenant, memory_id, version),
    FOREIGN KEY (tenant, memory_id) REFERENCES memories (tenant, id) ON DELETE CASCADE
);

CREATE TABLE entities (
    tenant       text        NOT NULL,
    id           text COLLATE "C" NOT NULL,
    session_id   text        NOT NULL,
    entity_type  text        NOT NULL,
    entity_id    text        NOT NULL,
    version      bigint      NOT NULL,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant, id),
    UNIQUE (tenant, session_id, entity_type, entity_id),
    FOREIGN KEY (tenant, session_id) REFERENCES sessions (tenant, id) ON DELETE CASCADE
);
CREATE INDEX entities_by_created ON entities (tenant, created_at, id);
CREATE INDEX entities_by_session ON entities (tenant, session_id, created_at, id);
CREATE INDEX entities_by_type ON entities (tenant, entity_type, created_at, id);

CREATE TABLE entity_versions (
    tenant      text        NOT NULL,
    entity      text        NOT NULL,
    version     bigint      NOT NULL,
    attributes  json        NOT NULL,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant, entity, version),
    FOREIGN KEY (tenant, entity) REFERENCES entities (tenant, id) ON DELETE CASCADE
);

CREATE SEQUENCE statebase_feed;
CREATE SEQUENCE statebase_trace_seq;
CREATE TABLE traces (
    tenant         text        NOT NULL,
    id             text COLLATE "C" NOT NULL,
    session_id     text,
    action         text        NOT NULL,
    resource_type  text        NOT NULL,
    resource_id    text        NOT NULL,
    actor          text        NOT NULL,
    timestamp      timestamptz NOT NULL,
    details        json        NOT NULL,
    seq            bigint      NOT NULL DEFAULT nextval('statebase_trace_seq'),
    position       bigint      UNIQUE,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX traces_by_time ON traces (tenant, timestamp, id);
CREATE INDEX traces_by_session ON traces (tenant, session_id, timestamp, id);
CREATE INDEX traces_by_action ON traces (tenant, action, timestamp, id);
CREATE INDEX traces_by_resource ON traces (tenant, resource_id, timestamp, id);
CREATE INDEX traces_unsequenced ON traces (seq) WHERE position IS NULL;

CREATE TABLE api_keys (
    id          text COLLATE "C" PRIMARY KEY,
    tenant      text        NOT NULL,
    key_hash    text        NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL,
    body        json        NOT NULL
);
CREATE INDEX api_keys_by_tenant ON api_keys (tenant, created_at, id);

CREATE TABLE webhooks (
    id          text COLLATE "C" PRIMARY KEY,
    tenant      text        NOT NULL,
    created_at  timestamptz NOT NULL,
    body        json        NOT NULL
);
CREATE INDEX webhooks_by_tenant ON webhooks (tenant, created_at, id);

CREATE TABLE webhook_deliveries (
    endpoint_id  text        NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    position     bigint      NOT NULL,
    done_at      timestamptz,
    body         bytea       NOT NULL,
    PRIMARY KEY (endpoint_id, position)
);
CREATE INDEX webhook_deliveries_owed ON webhook_deliveries (endpoint_id, position)
    WHERE done_at IS NULL;
CREATE INDEX webhook_deliveries_done ON webhook_deliveries (done_at)
    WHERE done_at IS NOT NULL;

CREATE TABLE webhook_cursor (
    id        integer PRIMARY KEY CHECK (id = 0),
    position  bigint  NOT NULL
);

CREATE TABLE idempotent_responses (
    key   text        PRIMARY KEY,
    at    timestamptz NOT NULL,
    body  bytea       NOT NULL
);
CREATE INDEX idempotent_responses_by_age ON idempotent_responses (at);

-- Rate limits shared by every server (GCRA: when the bucket would next be full-free).
CREATE TABLE rate_buckets (
    name  text        PRIMARY KEY,
    tat   timestamptz NOT NULL
);

CREATE TABLE leases (
    name        text        PRIMARY KEY,
    holder      text        NOT NULL,
    expires_at  timestamptz NOT NULL
);
"#,
    // Rate limits in one round trip, the buckets' locks held only while it runs. Their
    // table is unlogged: a bucket that a crash loses only refills early, and a commit that
    // writes only buckets waits for no disk.
    r#"
ALTER TABLE rate_buckets SET UNLOGGED;

-- Takes up to `wanted` tokens from every bucket of `names`, as many from each (`taken`,
-- perhaps 0): bucket i has room for k more while its `tat` stays within rooms[i] seconds
-- of now after k steps of steps[i] seconds. `ahead` is how far each `tat` is ahead of now
-- after the take.
CREATE FUNCTION statebase_take_tokens(
    names text[], steps float8[], rooms float8[], wanted integer,
    OUT ahead float8[], OUT taken integer
) LANGUAGE plpgsql AS $$
DECLARE
    at timestamptz;
BEGIN
    INSERT INTO rate_buckets (name, tat) SELECT unnest(names), now() ON CONFLICT DO NOTHING;
    -- Locked in one order, whatever the caller's: two requests never wait on each other.
    PERFORM 1 FROM rate_buckets WHERE name = ANY (names) ORDER BY name FOR UPDATE;
    at := clock_timestamp();
    SELECT greatest(least(wanted,
               min(floor((i.room + 1e-6 - extract(epoch FROM greatest(b.tat, at) - at)) / i.step))
           ), 0)
        INTO taken
        FROM unnest(names, steps, rooms) AS i (name, step, room) JOIN rate_buckets b USING (name);
    IF taken > 0 THEN
        UPDATE rate_buckets b SET tat = greatest(b.tat, at) + taken * i.step * interval '1 second'
            FROM unnest(names, steps) AS i (name, step) WHERE b.name = i.name;
    END IF;
    SELECT array_agg(extract(epoch FROM greatest(b.tat, at) - at)::float8 ORDER BY i.n)
        INTO ahead
        FROM unnest(names) WITH ORDINALITY AS i (name, n) JOIN rate_buckets b USING (name);
END $$;
"#,
    // Imported traces tell of the past: they have no `seq`, so the feed never numbers them.
    r#"
ALTER TABLE traces ALTER COLUMN seq DROP NOT NULL;
DROP INDEX traces_unsequenced;
CREATE INDEX traces_unsequenced ON traces (seq) WHERE position IS NULL AND seq IS NOT NULL;
"#,
    // Erasing a user: tombstones of the erased session and memory ids, and what each kept
    // response names, to erase it with them.
    r#"
CREATE TABLE erased (
    tenant     text        NOT NULL,
    id         text        NOT NULL,
    user_id    text        NOT NULL,
    erased_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant, id)
);
ALTER TABLE idempotent_responses
    ADD COLUMN tenant text NOT NULL DEFAULT '',
    ADD COLUMN subjects text[] NOT NULL DEFAULT '{}';
CREATE INDEX idempotent_responses_by_subject ON idempotent_responses USING gin (subjects);
"#,
    // Retention policies: a tenant's, and a session's, which goes with it.
    r#"
CREATE TABLE tenant_retention (
    tenant  text COLLATE "C" PRIMARY KEY,
    body    json NOT NULL
);
CREATE TABLE session_retention (
    tenant      text COLLATE "C" NOT NULL,
    session_id  text COLLATE "C" NOT NULL,
    body        json NOT NULL,
    PRIMARY KEY (tenant, session_id),
    FOREIGN KEY (tenant, session_id) REFERENCES sessions (tenant, id) ON DELETE CASCADE
);
"#,
];

/// The schema version this code writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Serialises migrations across every process of the database ("statebase" in ASCII).
const LOCK: i64 = 0x7374_6174_6562_6173;

/// The schema version of the database (0 for a new one).
pub async fn current_version(conn: &impl GenericClient) -> Result<i64, PostgresError> {
    let table = conn
        .query_opt("SELECT to_regclass('statebase_schema_version')::text", &[])
        .await?
        .and_then(|row| row.get::<_, Option<String>>(0));
    if table.is_none() {
        return Ok(0);
    }
    let row = conn
        .query_one(
            "SELECT coalesce(max(version), 0) FROM statebase_schema_version",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// Brings the schema up to [`SCHEMA_VERSION`]; fails, writing nothing, on a newer one or
/// without pgvector.
pub async fn migrate(conn: &mut tokio_postgres::Client) -> Result<(), PostgresError> {
    let tx = conn.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK])
        .await?;
    let from = current_version(&tx).await?;
    if from > SCHEMA_VERSION {
        return Err(PostgresError::NewerSchema {
            found: from,
            supported: SCHEMA_VERSION,
        });
    }
    if from == 0 {
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS statebase_schema_version (
                version     bigint PRIMARY KEY,
                applied_at  timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await?;
    }
    for (i, script) in MIGRATIONS.iter().enumerate().skip(from as usize) {
        let applied = tx.batch_execute(script).await;
        // The first script creates the extension: its failure says why pgvector is missing.
        applied.map_err(|e| if i == 0 { no_vector(e) } else { e.into() })?;
        tx.execute(
            "INSERT INTO statebase_schema_version (version) VALUES ($1)",
            &[&(i as i64 + 1)],
        )
        .await?;
    }
    // Installed by us or by an operator before: either way it must be there.
    let installed = tx
        .query_opt("SELECT 1 FROM pg_extension WHERE extname = 'vector'", &[])
        .await?;
    if installed.is_none() {
        return Err(PostgresError::NoVectorExtension(
            "it is not installed".into(),
        ));
    }
    tx.commit().await?;
    Ok(())
}

/// A failure to create the `vector` extension, said as such.
fn no_vector(e: tokio_postgres::Error) -> PostgresError {
    let about_vector = matches!(
        e.code(),
        Some(c) if *c == SqlState::UNDEFINED_FILE
            || *c == SqlState::INSUFFICIENT_PRIVILEGE
            || *c == SqlState::FEATURE_NOT_SUPPORTED
            || *c == SqlState::UNDEFINED_OBJECT
    );
    if about_vector {
        let detail = e
            .as_db_error()
            .map_or(e.to_string(), |d| d.message().to_owned());
        PostgresError::NoVectorExtension(detail)
    } else {
        PostgresError::Postgres(e)
    }
}
