//! What is particular to the SQLite backend: schema versions, durability settings, and many
//! concurrent writers on one file.

use serde_json::json;
use statebase_core::{CreateSession, HistoryQuery, StateBase, StateWrite};
use statebase_sqlite::{Durability, SqliteError, SqliteOptions, SqliteStore, SCHEMA_VERSION};

#[tokio::test]
async fn a_newer_schema_is_refused_and_the_file_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("newer.db");
    {
        let sb = StateBase::new(SqliteStore::open(&path).unwrap());
        sb.create_session(CreateSession::new("a")).await.unwrap();
    }
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (?1, 0)",
            [SCHEMA_VERSION + 1],
        )
        .unwrap();
        // Fold the WAL into the main file, so the file alone is the whole database.
        conn.pragma_update(None, "journal_mode", "DELETE").unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    match SqliteStore::open(&path) {
        Err(SqliteError::NewerSchema { found, supported }) => {
            assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        other => panic!("expected NewerSchema, got {other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), before, "the file changed");
    let message = SqliteStore::open(&path).unwrap_err().to_string();
    assert!(message.contains("newer"), "{message}");
}

#[tokio::test]
async fn reopening_applies_no_migration_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("twice.db");
    for _ in 0..3 {
        SqliteStore::open(&path).unwrap();
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    let versions: Vec<i64> = conn
        .prepare("SELECT version FROM schema_version ORDER BY version")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
}

#[tokio::test]
async fn normal_durability_keeps_writes_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("normal.db");
    let options = SqliteOptions {
        durability: Durability::Normal,
        ..SqliteOptions::default()
    };
    let id = {
        let sb = StateBase::new(SqliteStore::open_with(&path, options.clone()).unwrap());
        let s = sb.create_session(CreateSession::new("a")).await.unwrap();
        sb.replace_state(&s.id, StateWrite::new(json!({"n": 1})))
            .await
            .unwrap();
        s.id
    };
    let sb = StateBase::new(SqliteStore::open_with(&path, options).unwrap());
    assert_eq!(sb.get_session(&id).await.unwrap().version, 1);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

/// 64 tasks write to their own sessions while others read, all through one store: every
/// call succeeds (no `database is locked`) and every write is there afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_writers_and_readers_never_see_a_lock_error() {
    let dir = tempfile::tempdir().unwrap();
    let sb = StateBase::new(SqliteStore::open(dir.path().join("busy.db")).unwrap());
    let writes = 20u64;
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let sb = sb.clone();
            tokio::spawn(async move {
                let s = sb.create_session(CreateSession::new("w")).await?;
                for i in 0..writes {
                    sb.merge_state(&s.id, StateWrite::new(json!({ "i": i })))
                        .await?;
                    sb.get_session(&s.id).await?;
                }
                sb.history(&s.id, HistoryQuery::default()).await
            })
        })
        .collect();
    for t in tasks {
        let history = t.await.unwrap().unwrap();
        assert_eq!(history.current_version, writes);
        assert_eq!(history.versions.len() as u64, writes + 1);
    }
}
