//! Acknowledged writes survive SIGKILL of the process writing them: this test binary runs
//! itself as the writing child, on a database of the test cluster.

use statebase_core::testing::crash;
use statebase_postgres::testing::TestCluster;
use statebase_postgres::{PostgresOptions, PostgresStore};

fn connect(url: &str) -> PostgresStore {
    let handle = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        handle.block_on(PostgresStore::connect(url, PostgresOptions::default()))
    })
    .expect("connect to the crash test's database")
}

/// The child side: does nothing unless the parent test started this binary for it.
#[test]
fn crash_child() {
    let Ok(url) = std::env::var(crash::PATH_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let store = runtime
        .block_on(PostgresStore::connect(&url, PostgresOptions::default()))
        .expect("connect");
    runtime.block_on(crash::child(store));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    // The "path" the crash test hands the child is the database's URL.
    let url = TestCluster::required().database().await;
    crash::kill_and_verify(
        std::path::Path::new(&url),
        |url| connect(&url.to_string_lossy()),
        |_| async {},
    )
    .await;
}
