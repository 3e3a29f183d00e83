//! Two statebases on one database, as two servers behind a load balancer: each sees what
//! the other wrote as soon as it was acknowledged, searches included.

use serde_json::json;
use statebase_core::{AddMemory, CreateSession, SearchMemories, StateBase, StateWrite};
use statebase_postgres::testing::TestCluster;
use statebase_postgres::{PostgresOptions, PostgresStore};

async fn two_servers() -> (StateBase<PostgresStore>, StateBase<PostgresStore>) {
    let url = TestCluster::required().database().await;
    let open = || PostgresStore::connect(&url, PostgresOptions::default());
    (
        StateBase::new(open().await.unwrap()),
        StateBase::new(open().await.unwrap()),
    )
}

#[tokio::test]
async fn a_write_through_one_is_read_through_the_other_at_once() {
    let (a, b) = two_servers().await;
    let s = a.create_session(CreateSession::new("bot")).await.unwrap();
    // Read through b first, so that anything b kept of it would now be stale.
    assert_eq!(b.get_session(&s.id).await.unwrap().version, 0);
    for n in 1..=5 {
        a.replace_state(&s.id, StateWrite::new(json!({ "n": n })))
            .await
            .unwrap();
        let seen = b.get_session(&s.id).await.unwrap();
        assert_eq!((seen.version, seen.state["n"].clone()), (n, json!(n)));
    }
    // And the other way round, with a compare-and-set that knows b's latest version.
    b.replace_state(&s.id, StateWrite::new(json!({"by": "b"})).expect_version(5))
        .await
        .unwrap();
    let stale = a
        .replace_state(&s.id, StateWrite::new(json!({"by": "a"})).expect_version(5))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), "version_conflict");
}

#[tokio::test]
async fn a_memory_added_through_one_is_found_through_the_other_at_once() {
    let (a, b) = two_servers().await;
    let s = a.create_session(CreateSession::new("bot")).await.unwrap();
    let search = |query: &str| SearchMemories {
        query: query.into(),
        session_id: Some(s.id.clone()),
        threshold: Some(0.5),
        ..SearchMemories::default()
    };
    // b searches first: an index of its own, loaded now, would miss what a adds next.
    assert!(b.search_memories(search("tea")).await.unwrap().is_empty());
    let added = a
        .add_memory(AddMemory::new(
            &s.id,
            "The user drinks green tea every morning",
        ))
        .await
        .unwrap();
    let found = b.search_memories(search("green tea")).await.unwrap();
    assert_eq!(found.iter().map(|h| &h.id).collect::<Vec<_>>(), [&added.id]);
    // A delete through b is gone from a's search at once too.
    b.delete_memory(&added.id).await.unwrap();
    assert!(a
        .search_memories(search("green tea"))
        .await
        .unwrap()
        .is_empty());
}
