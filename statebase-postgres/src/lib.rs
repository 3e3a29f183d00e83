//! The PostgreSQL backend of statebase: every record in one database, which any number of
//! processes may share. Nothing is cached in the process, so each sees every write the
//! others acknowledged.
//!
//! - **Writes** are one transaction each, starting with a compare-and-set `UPDATE` of the
//!   row they depend on (a session, a memory, an entity), which also serialises concurrent
//!   writes to it.
//! - **Rate limits** are buckets in the database, taken from in one round trip; the
//!   requests of one key that wait on each other in a process share it.
//! - **Connections** come from a pool with a bounded wait, and a statement timeout bounds
//!   every query.
//! - **Schema**: versioned migrations, applied in one transaction under an advisory lock
//!   (servers starting together apply each once); a database of a newer schema is refused
//!   untouched, and one without the `vector` extension (pgvector) is refused with the SQL
//!   that enables it.
//!
//! ```no_run
//! # async fn run() -> Result<(), statebase_postgres::PostgresError> {
//! use statebase_postgres::{PostgresOptions, PostgresStore};
//!
//! let store = PostgresStore::connect("postgres://app@db:5432/statebase", PostgresOptions::default()).await?;
//! # Ok(()) }
//! ```

mod entities;
mod error;
mod memories;
mod query;
mod rate_buckets;
mod schema;
mod server_records;
mod sessions;
#[cfg(feature = "testing")]
pub mod testing;
mod traces;

pub use error::PostgresError;
pub use schema::SCHEMA_VERSION;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::Arc;
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
    /// The (model, dimensions) whose vector index this process has seen to.
    vector_indexes: Arc<Mutex<HashSet<(String, usize)>>>,
    /// This process's requests for rate-limit tokens.
    token_queues: Arc<rate_buckets::TokenQueues>,
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
        // A filtered nearest-vector search goes on down the HNSW index until it has its
        // `LIMIT` of rows that pass the filters (pgvector 0.8), instead of coming back short;
        // it looks at 100 candidates, not pgvector's 40, for the recall of an exact search.
        config.options(format!(
            "-c statement_timeout={} -c hnsw.iterative_scan=relaxed_order -c hnsw.ef_search=100",
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
        let store = Self {
            pool,
            vector_indexes: Arc::default(),
            token_queues: Arc::default(),
        };
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

    /// How many rows of `table` the tenant has.
    async fn count(&self, table: &str, tenant: &str) -> Result<u64, PostgresError> {
        let conn = self.conn().await?;
        let sql = format!("SELECT count(*) FROM {table} WHERE tenant = $1");
        let found = query::row(&conn, &sql, &[&tenant]).await?;
        query::uint(found.map_or(Ok(0), |r| r.try_get(0))?)
    }

    /// The schema version of the database.
    pub async fn schema_version(&self) -> Result<i64, PostgresError> {
        let conn = self.conn().await?;
        let client: &tokio_postgres::Client = &conn;
        schema::current_version(client).await
    }
}
