//! Versioned migrations: each script runs once, in order, all of them in one transaction
//! that first takes an advisory lock, so that servers starting together apply each once.

use crate::PostgresError;
use tokio_postgres::error::SqlState;
use tokio_postgres::GenericClient;

/// The scripts, in order; script n brings the schema to version n + 1.
const MIGRATIONS: &[&str] = &[
    // pgvector, for memory vectors searched in the database.
    "CREATE EXTENSION IF NOT EXISTS vector;",
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
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS statebase_schema_version (
            version     bigint PRIMARY KEY,
            applied_at  timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await?;
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
