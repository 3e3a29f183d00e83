//! The PostgreSQL backend of statebase, in progress. What exists: a connection pool with
//! bounded waits and a statement timeout on every query, versioned migrations applied in
//! one transaction under an advisory lock (so servers starting together do not race), a
//! database of a newer schema refused untouched, and the `vector` extension required at
//! open. The store traits are not implemented yet (issue 18).
//!
//! ```no_run
//! # async fn run() -> Result<(), statebase_postgres::PostgresError> {
//! use statebase_postgres::{PostgresOptions, PostgresStore};
//!
//! let store = PostgresStore::connect("postgres://app@db:5432/statebase", PostgresOptions::default()).await?;
//! # Ok(()) }
//! ```

mod error;
mod schema;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::PostgresError;
pub use schema::SCHEMA_VERSION;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::time::Duration;

/// How a [`PostgresStore`] connects.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Connections kept open at most. Default 16.
    pub pool_size: usize,
    /// How long a call waits for a free connection or for a new one to open before it
    /// fails. Default 5 s.
    pub wait_timeout: Duration,
    /// The longest any statement may run (`statement_timeout`). Default 30 s.
    pub statement_timeout: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            pool_size: 16,
            wait_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
        }
    }
}

/// A statebase store in one PostgreSQL database. Cloning is cheap and shares the pool.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("status", &self.pool.status())
            .finish()
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (a `postgres://` URL or a key-value string),
    /// checks that it can use pgvector, and brings its schema up to [`SCHEMA_VERSION`].
    /// Fails, changing nothing, if the schema is newer than this statebase knows.
    pub async fn connect(url: &str, options: PostgresOptions) -> Result<Self, PostgresError> {
        let mut config: tokio_postgres::Config = url.parse()?;
        config.connect_timeout(options.wait_timeout);
        config.options(format!(
            "-c statement_timeout={}",
            options.statement_timeout.as_millis()
        ));
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .wait_timeout(Some(options.wait_timeout))
            .create_timeout(Some(options.wait_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| PostgresError::Pool(e.to_string()))?;
        let store = Self { pool };
        let mut conn = store.conn().await?;
        let client: &mut tokio_postgres::Client = &mut conn;
        schema::migrate(client).await?;
        Ok(store)
    }

    /// A connection from the pool, within the wait timeout.
    async fn conn(&self) -> Result<deadpool_postgres::Object, PostgresError> {
        self.pool
            .get()
            .await
            .map_err(|e| PostgresError::Unavailable(e.to_string()))
    }

    /// The schema version of the database.
    pub async fn schema_version(&self) -> Result<i64, PostgresError> {
        let conn = self.conn().await?;
        let client: &tokio_postgres::Client = &conn;
        schema::current_version(client).await
    }
}
