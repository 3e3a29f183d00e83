//! The PostgreSQL backend's own errors, and how they become statebase errors.

/// What can go wrong in the PostgreSQL backend.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    /// PostgreSQL or the connection to it failed.
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// No connection could be had in time: the database is unreachable or every
    /// connection is busy.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// A stored value is out of the range statebase writes.
    #[error("stored value out of range: {0}")]
    Corrupt(String),
    /// A store precondition failed (not found, conflict, …): passed through as is.
    #[error(transparent)]
    Store(#[from] statebase_core::Error),
    /// The pool could not be built from the options.
    #[error("connection pool: {0}")]
    Pool(String),
    /// The database cannot use pgvector.
    #[error(
        "the database cannot use the `vector` extension (pgvector): {0}. Install pgvector \
         on the server and run `CREATE EXTENSION vector;` in this database as a user allowed \
         to, then connect again"
    )]
    NoVectorExtension(String),
    /// The database was written by a newer statebase; nothing was changed.
    #[error(
        "the database has schema version {found}, newer than the {supported} this statebase \
         knows: upgrade statebase to open it"
    )]
    NewerSchema {
        /// The database's schema version.
        found: i64,
        /// The newest this code knows.
        supported: i64,
    },
}

impl PostgresError {
    /// Whether it may pass on its own: the server unreachable, restarting or shutting
    /// down, a connection lost, a statement out of time, a transaction that lost a
    /// serialisation race.
    pub fn is_transient(&self) -> bool {
        match self {
            PostgresError::Unavailable(_) => true,
            PostgresError::Postgres(e) => {
                let io = std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>());
                e.is_closed()
                    || io
                    || match e.code() {
                        None => false,
                        Some(code) => {
                            let class = &code.code()[..2];
                            // 08: connection exception; 57: operator intervention (shutdown,
                            // statement timeout); 53: insufficient resources; 40:
                            // transaction rollback (serialisation failure, deadlock).
                            matches!(class, "08" | "57" | "53" | "40")
                        }
                    }
            }
            _ => false,
        }
    }
}

impl From<PostgresError> for statebase_core::Error {
    fn from(e: PostgresError) -> Self {
        match e {
            PostgresError::Store(e) => e,
            e if e.is_transient() => statebase_core::Error::unavailable(e),
            other => statebase_core::Error::backend(other),
        }
    }
}
