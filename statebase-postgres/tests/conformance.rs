//! The core conformance suite and property test against PostgreSQL: each case in a
//! database of its own on the test cluster.

use async_trait::async_trait;
use statebase_core::testing::StoreFactory;
use statebase_postgres::testing::TestCluster;
use statebase_postgres::{PostgresOptions, PostgresStore};
use tokio::sync::OnceCell;

/// A new database, made at the first open; every open connects to it again.
#[derive(Default)]
struct PostgresFactory {
    url: OnceCell<String>,
}

#[async_trait]
impl StoreFactory for PostgresFactory {
    type Store = PostgresStore;
    async fn open(&self) -> PostgresStore {
        let url = self
            .url
            .get_or_init(|| TestCluster::required().database())
            .await;
        // Cases run two at a time, each with its own pool: keep well under the server's
        // 100 connections.
        let options = PostgresOptions {
            pool_size: 8,
            ..PostgresOptions::default()
        };
        PostgresStore::connect(url, options)
            .await
            .expect("open postgres store")
    }
}

mod direct {
    statebase_core::conformance_suite!(super::PostgresFactory::default());
}

mod through_dyn {
    statebase_core::conformance_suite!(statebase_core::testing::DynFactory(
        super::PostgresFactory::default()
    ));
}
