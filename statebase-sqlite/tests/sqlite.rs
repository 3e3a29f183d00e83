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

/// The sessions cache never hides an acknowledged write: while writers append versions to
/// a few sessions and add turns and memories, every read returns at least the version last
/// acknowledged before it began, with the turn and memory counts of then, and the latest
/// turns include the last turn acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_see_every_acknowledged_write_through_the_sessions_cache() {
    use statebase_core::{AddMemory, AddTurn, ContextRequest};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let sb = StateBase::new(SqliteStore::open(dir.path().join("cache.db")).unwrap());
    let mut sessions = Vec::new();
    for _ in 0..4 {
        let s = sb.create_session(CreateSession::new("c")).await.unwrap();
        // (version, turn_count + memory_count) acknowledged so far.
        sessions.push((
            s.id,
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        ));
    }
    let mut tasks = Vec::new();
    for (id, version, counts) in sessions.clone() {
        let sb = sb.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..60u64 {
                let s = match i % 3 {
                    0 => sb
                        .add_turn(&id, AddTurn::text("q", "a"))
                        .await
                        .map(|t| assert_eq!(t.turn_number, i / 3 + 1)),
                    1 => sb
                        .add_memory(AddMemory::new(&id, &format!("fact {i}")))
                        .await
                        .map(drop),
                    _ => sb
                        .merge_state(&id, StateWrite::new(json!({ "i": i })))
                        .await
                        .map(drop),
                };
                s.unwrap();
                let s = sb.get_session(&id).await.unwrap();
                version.store(s.version, Ordering::SeqCst);
                counts.store(s.turn_count + s.memory_count, Ordering::SeqCst);
            }
        }));
    }
    for _ in 0..4 {
        let (sb, sessions) = (sb.clone(), sessions.clone());
        tasks.push(tokio::spawn(async move {
            for round in 0..300 {
                let (id, version, counts) = &sessions[round % sessions.len()];
                let (v, n) = (
                    version.load(Ordering::SeqCst),
                    counts.load(Ordering::SeqCst),
                );
                let s = sb.get_session(id).await.unwrap();
                assert!(s.version >= v, "read version {} after {v}", s.version);
                assert!(s.turn_count + s.memory_count >= n);
                let turns = s.turn_count;
                let c = sb.context(id, ContextRequest::default()).await.unwrap();
                let latest = c.recent_turns.first().map_or(0, |t| t.turn_number);
                assert!(latest >= turns, "latest turn {latest} after {turns} turns");
                let numbers: Vec<u64> = c.recent_turns.iter().map(|t| t.turn_number).collect();
                let expected: Vec<u64> = (1..=latest).rev().take(10).collect();
                assert_eq!(numbers, expected, "not the latest turns");
                tokio::task::yield_now().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for (id, _, _) in &sessions {
        let s = sb.get_session(id).await.unwrap();
        assert_eq!((s.version, s.turn_count, s.memory_count), (20, 20, 20));
        let c = sb.context(id, ContextRequest::default()).await.unwrap();
        let numbers: Vec<u64> = c.recent_turns.iter().map(|t| t.turn_number).collect();
        assert_eq!(numbers, (11..=20).rev().collect::<Vec<_>>());
    }
}

/// A write made by another process is not seen by this store's cached reads (the documented
/// limit), but a write here that finds its cached copy stale reads the file again and
/// lands, instead of retrying against the stale copy forever. A session written here is
/// cached as written.
#[tokio::test]
async fn a_write_here_after_another_process_wrote_reads_the_file_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("two.db");
    let here = StateBase::new(SqliteStore::open(&path).unwrap());
    let s = here.create_session(CreateSession::new("c")).await.unwrap();
    here.get_session(&s.id).await.unwrap();
    let other = StateBase::new(SqliteStore::open(&path).unwrap());
    other
        .merge_state(&s.id, StateWrite::new(json!({"other": 1})))
        .await
        .unwrap();
    let write = here.merge_state(&s.id, StateWrite::new(json!({"here": 2})));
    let s = tokio::time::timeout(std::time::Duration::from_secs(10), write)
        .await
        .expect("the write retried forever")
        .unwrap();
    assert_eq!(s.version, 2);
    assert_eq!(
        s.state,
        json!({"other": 1, "here": 2}).as_object().unwrap().clone()
    );
    // The write kept the session as written: the next read here takes it from the cache,
    // which another process's write that came after does not change.
    other
        .merge_state(&s.id, StateWrite::new(json!({"other": 3})))
        .await
        .unwrap();
    let cached = here.get_session(&s.id).await.unwrap();
    assert_eq!((cached.version, cached.state), (2, s.state.clone()));
    let s = here
        .merge_state(&s.id, StateWrite::new(json!({"here": 4})))
        .await
        .unwrap();
    assert_eq!(s.version, 4);
    let off = SqliteOptions {
        session_cache_bytes: 0,
        ..SqliteOptions::default()
    };
    // With the cache off, a session read here sees another process's write at once.
    let uncached = StateBase::new(SqliteStore::open_with(&path, off).unwrap());
    assert_eq!(uncached.get_session(&s.id).await.unwrap().version, 4);
    other
        .merge_state(&s.id, StateWrite::new(json!({"other": 5})))
        .await
        .unwrap();
    assert_eq!(uncached.get_session(&s.id).await.unwrap().version, 5);
}

/// Another process holds the write lock past the busy timeout: the writes waiting for it
/// fail with a backend error (no panic, no hang) and change nothing; once the lock is
/// released, writing goes on from the version the file holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_blocked_by_another_process_past_the_busy_timeout_fail_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locked.db");
    let options = SqliteOptions {
        busy_timeout: std::time::Duration::from_millis(200),
        ..SqliteOptions::default()
    };
    let sb = StateBase::new(SqliteStore::open_with(&path, options).unwrap());
    let s = sb.create_session(CreateSession::new("l")).await.unwrap();
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let writes: Vec<_> = (0..4)
        .map(|i| {
            let (sb, id) = (sb.clone(), s.id.clone());
            tokio::spawn(async move {
                sb.merge_state(&id, StateWrite::new(json!({ "i": i })))
                    .await
            })
        })
        .collect();
    for w in writes {
        let err = tokio::time::timeout(std::time::Duration::from_secs(10), w)
            .await
            .expect("a write waited for the lock forever")
            .unwrap()
            .unwrap_err();
        assert_eq!(err.code(), "internal_error", "{err}");
        assert!(format!("{err:?}").contains("locked"), "{err:?}");
    }
    other.execute_batch("COMMIT").unwrap();
    let s = sb.get_session(&s.id).await.unwrap();
    assert_eq!((s.version, s.state.len()), (0, 0));
    let s = sb
        .merge_state(&s.id, StateWrite::new(json!({"after": true})))
        .await
        .unwrap();
    assert_eq!(s.version, 1);
    let reopened = StateBase::new(SqliteStore::open(&path).unwrap());
    let history = reopened
        .history(&s.id, HistoryQuery::default())
        .await
        .unwrap();
    assert_eq!(history.versions.len(), 2);
}

/// A memory reads back as every write left it: an update, a new vector, a delete, and the
/// delete of its session (a cascade of the `sessions` delete).
#[tokio::test]
async fn memories_follow_every_write_that_changes_them() {
    use statebase_core::store::MemoryRecords;
    use statebase_core::{AddMemory, SearchMemories, UpdateMemory, DEFAULT_TENANT};
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("memories.db")).unwrap();
    let sb = StateBase::new(store.clone());
    let s = sb.create_session(CreateSession::new("m")).await.unwrap();
    let mut ids = Vec::new();
    for content in ["likes tea", "lives in Oslo", "has a cat"] {
        let m = sb.add_memory(AddMemory::new(&s.id, content)).await.unwrap();
        assert_eq!(sb.get_memory(&m.id).await.unwrap().content, content);
        ids.push(m.id);
    }
    let update = UpdateMemory {
        content: Some("likes coffee".into()),
        ..UpdateMemory::default()
    };
    sb.update_memory(&ids[0], update).await.unwrap();
    assert_eq!(
        sb.get_memory(&ids[0]).await.unwrap().content,
        "likes coffee"
    );
    let hits = sb
        .search_memories(SearchMemories::new("coffee"))
        .await
        .unwrap();
    assert_eq!(hits[0].content, "likes coffee");

    let version = sb.get_memory(&ids[1]).await.unwrap().version;
    let vector = vec![
        0.5;
        store
            .memory(DEFAULT_TENANT, &ids[1])
            .await
            .unwrap()
            .unwrap()
            .embedding
            .unwrap()
            .len()
    ];
    store
        .set_embedding(
            DEFAULT_TENANT,
            &ids[1],
            version,
            "another-model",
            vector.clone(),
        )
        .await
        .unwrap();
    let read = store
        .memory(DEFAULT_TENANT, &ids[1])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.embedding.as_ref(), Some(&vector));

    sb.delete_memory(&ids[1]).await.unwrap();
    assert_eq!(
        sb.get_memory(&ids[1]).await.unwrap_err().code(),
        "memory_not_found"
    );
    sb.delete_session(&s.id).await.unwrap();
    for id in [&ids[0], &ids[2]] {
        assert!(store.memory(DEFAULT_TENANT, id).await.unwrap().is_none());
    }
}

/// No read hides an acknowledged memory update: while writers update memories, every read
/// and every search returns at least the version last acknowledged before it began.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_see_every_acknowledged_memory_write() {
    use statebase_core::{AddMemory, SearchMemories, UpdateMemory};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let sb = StateBase::new(SqliteStore::open(dir.path().join("mcache.db")).unwrap());
    let s = sb.create_session(CreateSession::new("m")).await.unwrap();
    let mut memories = Vec::new();
    for i in 0..4 {
        let m = sb
            .add_memory(AddMemory::new(&s.id, &format!("note {i} version 1")))
            .await
            .unwrap();
        memories.push((m.id, Arc::new(AtomicU64::new(m.version))));
    }
    let mut tasks = Vec::new();
    for (i, (id, acknowledged)) in memories.clone().into_iter().enumerate() {
        let sb = sb.clone();
        tasks.push(tokio::spawn(async move {
            for n in 2..=40 {
                let update = UpdateMemory {
                    content: Some(format!("note {i} version {n}")),
                    ..UpdateMemory::default()
                };
                let m = sb.update_memory(&id, update).await.unwrap();
                acknowledged.store(m.version, Ordering::SeqCst);
            }
        }));
    }
    for _ in 0..2 {
        let (sb, memories) = (sb.clone(), memories.clone());
        tasks.push(tokio::spawn(async move {
            for round in 0..200 {
                let (id, acknowledged) = &memories[round % memories.len()];
                let before = acknowledged.load(Ordering::SeqCst);
                let m = sb.get_memory(id).await.unwrap();
                assert!(
                    m.version >= before,
                    "read version {} after {before}",
                    m.version
                );
                let hits = sb
                    .search_memories(SearchMemories::new("note"))
                    .await
                    .unwrap();
                let hit = hits
                    .iter()
                    .find(|h| &h.id == id)
                    .expect("the memory is found");
                let version: u64 = hit.content.rsplit(' ').next().unwrap().parse().unwrap();
                assert!(version >= before, "found version {version} after {before}");
                tokio::task::yield_now().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for (id, _) in &memories {
        assert_eq!(sb.get_memory(id).await.unwrap().version, 40);
    }
}

/// A memory update here, after another process updated the memory this store has cached,
/// reads the file again and lands instead of retrying against the stale copy forever.
#[tokio::test]
async fn a_memory_update_here_after_another_process_updated_it_lands() {
    use statebase_core::{AddMemory, UpdateMemory};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("two-memories.db");
    let here = StateBase::new(SqliteStore::open(&path).unwrap());
    let s = here.create_session(CreateSession::new("c")).await.unwrap();
    let m = here.add_memory(AddMemory::new(&s.id, "one")).await.unwrap();
    here.get_memory(&m.id).await.unwrap();
    let other = StateBase::new(SqliteStore::open(&path).unwrap());
    let update = |content: &str| UpdateMemory {
        content: Some(content.into()),
        ..UpdateMemory::default()
    };
    other.update_memory(&m.id, update("two")).await.unwrap();
    let write = here.update_memory(&m.id, update("three"));
    let m = tokio::time::timeout(std::time::Duration::from_secs(10), write)
        .await
        .expect("the update retried forever")
        .unwrap();
    assert_eq!((m.version, m.content.as_str()), (3, "three"));
}

/// A turn or a state written here keeps the session and its latest turns as written, so
/// the context that follows reads neither from the file: it does not see a turn another
/// process added after them (the documented limit, which shows where they came from).
#[tokio::test]
async fn writes_here_keep_the_session_and_its_latest_turns_cached() {
    use statebase_core::{AddTurn, ContextRequest};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("turns.db");
    let here = StateBase::new(SqliteStore::open(&path).unwrap());
    let s = here.create_session(CreateSession::new("t")).await.unwrap();
    here.add_turn(&s.id, AddTurn::text("q1", "a1"))
        .await
        .unwrap();
    here.context(&s.id, ContextRequest::default())
        .await
        .unwrap();
    here.add_turn(&s.id, AddTurn::text("q2", "a2"))
        .await
        .unwrap();
    here.merge_state(&s.id, StateWrite::new(json!({"x": 1})))
        .await
        .unwrap();
    let other = StateBase::new(SqliteStore::open(&path).unwrap());
    other
        .add_turn(&s.id, AddTurn::text("q3", "a3"))
        .await
        .unwrap();
    let c = here
        .context(&s.id, ContextRequest::default())
        .await
        .unwrap();
    let numbers: Vec<u64> = c.recent_turns.iter().map(|t| t.turn_number).collect();
    assert_eq!(numbers, [2, 1]);
    assert_eq!((c.session.version, c.session.turn_count), (1, 2));
}
