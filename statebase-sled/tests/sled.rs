//! What is particular to the sled backend: the format version and background durability.

use serde_json::json;
use statebase_core::{CreateSession, StateBase, StateWrite};
use statebase_sled::{Durability, SledError, SledOptions, SledStore, FORMAT_VERSION};

#[tokio::test]
async fn a_newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("newer.sled");
    {
        let sb = StateBase::new(SledStore::open(&path).unwrap());
        sb.create_session(CreateSession::new("a")).await.unwrap();
    }
    {
        let db = sled::open(&path).unwrap();
        let records = db.open_tree("records").unwrap();
        assert_eq!(
            records.get(b"F").unwrap().as_deref(),
            Some(&FORMAT_VERSION.to_be_bytes()[..])
        );
        records
            .insert(b"F", &(FORMAT_VERSION + 1).to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    match SledStore::open(&path) {
        Err(SledError::NewerFormat { found, supported }) => {
            assert_eq!((found, supported), (FORMAT_VERSION + 1, FORMAT_VERSION));
        }
        other => panic!("expected NewerFormat, got {other:?}"),
    }
}

/// Data of format 1 (no version deltas) opens, keeps its sessions, and is marked as the
/// current format, so that format-1 code refuses it once it may hold deltas.
#[tokio::test]
async fn format_1_data_opens_and_is_marked_current() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.sled");
    let id = {
        let sb = StateBase::new(SledStore::open(&path).unwrap());
        let s = sb.create_session(CreateSession::new("a")).await.unwrap();
        sb.replace_state(&s.id, StateWrite::new(json!({"v": 1})))
            .await
            .unwrap();
        s.id
    };
    let mark = |version: u64| {
        let db = sled::open(&path).unwrap();
        let records = db.open_tree("records").unwrap();
        records.insert(b"F", &version.to_be_bytes()).unwrap();
        db.flush().unwrap();
    };
    mark(1);
    {
        let sb = StateBase::new(SledStore::open(&path).unwrap());
        assert_eq!(sb.state_at(&id, 1).await.unwrap().state["v"], 1);
    }
    let db = sled::open(&path).unwrap();
    let records = db.open_tree("records").unwrap();
    assert_eq!(
        records.get(b"F").unwrap().as_deref(),
        Some(&FORMAT_VERSION.to_be_bytes()[..])
    );
}

#[tokio::test]
async fn background_durability_keeps_writes_across_a_clean_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("background.sled");
    let options = SledOptions {
        durability: Durability::Background,
    };
    let id = {
        let sb = StateBase::new(SledStore::open_with(&path, options.clone()).unwrap());
        let s = sb.create_session(CreateSession::new("a")).await.unwrap();
        sb.replace_state(&s.id, StateWrite::new(json!({"n": 1})))
            .await
            .unwrap();
        s.id
    };
    let sb = StateBase::new(SledStore::open_with(&path, options).unwrap());
    assert_eq!(sb.get_session(&id).await.unwrap().version, 1);
}
