//! Acknowledged writes survive SIGKILL: this test binary runs itself as the writing child.

use statebase_core::testing::crash::{self, Acks};
use statebase_sled::SledStore;
use std::process::Command;

/// The child side: does nothing unless the parent test started this binary for it.
#[test]
fn crash_child() {
    let Ok(path) = std::env::var(crash::PATH_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(crash::child(SledStore::open(path).expect("open")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("crash.sled");
    let mut acks = Acks::default();
    for round in 0..5 {
        let mut child = Command::new(std::env::current_exe().expect("test binary"));
        child
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(crash::PATH_ENV, &path);
        let before = acks.count;
        tokio::task::block_in_place(|| crash::kill_once(child, &mut acks));
        assert!(acks.count > before, "round {round}: no acknowledged write");
        let store = SledStore::open(&path).expect("reopen after SIGKILL");
        crash::verify(&store, &acks).await;
    }
    assert_eq!(acks.sessions.len(), 4);
}
