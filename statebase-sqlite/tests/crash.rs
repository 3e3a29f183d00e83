//! Acknowledged writes survive SIGKILL: this test binary runs itself as the writing child.

use statebase_core::testing::crash;
use statebase_sqlite::SqliteStore;

/// The child side: does nothing unless the parent test started this binary for it.
#[test]
fn crash_child() {
    let Ok(path) = std::env::var(crash::PATH_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(crash::child(SqliteStore::open(path).expect("open")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().expect("temp dir");
    crash::kill_and_verify(
        &dir.path().join("crash.db"),
        |path| SqliteStore::open(path).expect("reopen after SIGKILL"),
        |store| async move {
            assert_eq!(
                store.integrity_check().await.expect("integrity check"),
                "ok"
            );
        },
    )
    .await;
}
