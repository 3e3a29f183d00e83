//! The SQLite backend's own errors, and how they become statebase errors.

/// What can go wrong in the SQLite backend.
#[derive(Debug, thiserror::Error)]
pub enum SqliteError {
    /// SQLite itself failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored JSON document did not parse.
    #[error("stored JSON is invalid: {0}")]
    Json(#[from] serde_json::Error),
    /// The file was written by a newer statebase; nothing was changed.
    #[error(
        "the database has schema version {found}, newer than the {supported} this statebase \
         knows: upgrade statebase to open it"
    )]
    NewerSchema {
        /// The file's schema version.
        found: i64,
        /// The newest this code knows.
        supported: i64,
    },
    /// A stored value is out of the range statebase writes.
    #[error("stored value out of range: {0}")]
    Corrupt(String),
    /// The commit holding the write failed; nothing of it was written.
    #[error("commit failed: {0}")]
    Commit(String),
    /// The writer thread stopped (the store is shutting down).
    #[error("the database writer has stopped")]
    WriterStopped,
    /// A store precondition failed (not found, conflict, …): passed through as is.
    #[error(transparent)]
    Store(#[from] statebase_core::Error),
    /// A blocking task could not be run.
    #[error("blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl From<SqliteError> for statebase_core::Error {
    fn from(e: SqliteError) -> Self {
        match e {
            SqliteError::Store(e) => e,
            other => statebase_core::Error::backend(other),
        }
    }
}
