//! The core conformance suite and property test against SQLite files in temp directories.

use async_trait::async_trait;
use statebase_core::testing::StoreFactory;
use statebase_sqlite::SqliteStore;

/// A fresh database file in its own temp directory, removed when the case ends.
struct SqliteFactory {
    dir: tempfile::TempDir,
}

impl SqliteFactory {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }
}

#[async_trait]
impl StoreFactory for SqliteFactory {
    type Store = SqliteStore;
    async fn open(&self) -> SqliteStore {
        SqliteStore::open(self.dir.path().join("statebase.db")).expect("open sqlite store")
    }
}

mod direct {
    statebase_core::conformance_suite!(super::SqliteFactory::new());
}

mod through_dyn {
    statebase_core::conformance_suite!(statebase_core::testing::DynFactory(
        super::SqliteFactory::new()
    ));
}
