//! The core conformance suite and property test against sled databases in temp directories.

use async_trait::async_trait;
use statebase_core::testing::StoreFactory;
use statebase_sled::SledStore;

/// A fresh database in its own temp directory, removed when the case ends.
struct SledFactory {
    dir: tempfile::TempDir,
}

impl SledFactory {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }
}

#[async_trait]
impl StoreFactory for SledFactory {
    type Store = SledStore;
    async fn open(&self) -> SledStore {
        SledStore::open(self.dir.path().join("statebase.sled")).expect("open sled store")
    }
}

mod direct {
    statebase_core::conformance_suite!(super::SledFactory::new());
}

mod through_dyn {
    statebase_core::conformance_suite!(statebase_core::testing::DynFactory(
        super::SledFactory::new()
    ));
}
