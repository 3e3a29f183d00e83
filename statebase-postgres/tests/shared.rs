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

#[tokio::test]
async fn a_lease_has_one_holder_until_released_or_run_out() {
    use statebase_core::ServerRecords;
    let url = TestCluster::required().database().await;
    let (a, b) = (
        PostgresStore::connect(&url, PostgresOptions::default())
            .await
            .unwrap(),
        PostgresStore::connect(&url, PostgresOptions::default())
            .await
            .unwrap(),
    );
    let long = std::time::Duration::from_secs(60);
    assert!(a.take_lease("job", "a", long).await.unwrap());
    assert!(
        a.take_lease("job", "a", long).await.unwrap(),
        "renewed by its holder"
    );
    assert!(
        !b.take_lease("job", "b", long).await.unwrap(),
        "taken while held"
    );
    assert!(
        b.take_lease("other", "b", long).await.unwrap(),
        "another name is free"
    );
    // Released by someone else than its holder: still held.
    b.release_lease("job", "b").await.unwrap();
    assert!(!b.take_lease("job", "b", long).await.unwrap());
    a.release_lease("job", "a").await.unwrap();
    assert!(b
        .take_lease("job", "b", std::time::Duration::from_millis(200))
        .await
        .unwrap());
    assert!(!a.take_lease("job", "a", long).await.unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(a.take_lease("job", "a", long).await.unwrap(), "run out");
}

#[tokio::test]
async fn tokens_are_taken_from_every_bucket_or_none() {
    use statebase_core::store::RateBucket;
    use statebase_core::ServerRecords;
    let url = TestCluster::required().database().await;
    let store = PostgresStore::connect(&url, PostgresOptions::default())
        .await
        .unwrap();
    let bucket = |name: &str, burst: u32| RateBucket {
        name: name.into(),
        per_minute: 1,
        burst,
    };
    let take = |buckets: Vec<RateBucket>| {
        let store = store.clone();
        async move { store.take_tokens(buckets).await.unwrap().unwrap() }
    };
    // The key has 5, its tenant 1: the first request takes one of each.
    let first = take(vec![bucket("key:k", 5), bucket("tenant:t", 1)]).await;
    assert_eq!(
        first.iter().map(|s| s.remaining).collect::<Vec<_>>(),
        [4, 0]
    );
    assert!(first.iter().all(|s| s.retry_after.is_none()));
    // The tenant has none left: refused, and the key's token stays.
    let refused = take(vec![bucket("key:k", 5), bucket("tenant:t", 1)]).await;
    assert_eq!(refused[0].remaining, 4);
    assert!(refused[0].retry_after.is_none());
    let wait = refused[1]
        .retry_after
        .expect("the tenant's bucket says how long");
    assert!(
        wait > std::time::Duration::from_secs(50) && wait <= std::time::Duration::from_secs(60)
    );
    // Alone, the key still has its four.
    for left in (0..4).rev() {
        assert_eq!(take(vec![bucket("key:k", 5)]).await[0].remaining, left);
    }
    assert!(take(vec![bucket("key:k", 5)]).await[0]
        .retry_after
        .is_some());
}

/// Requests of one key waiting on each other in a process take their tokens in one round
/// trip, yet the two processes together never admit more than the shared bucket holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_requests_share_a_round_trip_and_no_more_than_the_bucket() {
    use statebase_core::store::RateBucket;
    use statebase_core::ServerRecords;
    let cluster = TestCluster::required();
    let url = cluster.database().await;
    let database = url.rsplit('/').next().unwrap().to_owned();
    cluster
        .execute(&format!(
            "ALTER DATABASE {database} SET track_functions = 'pl'"
        ))
        .await;
    let open = || PostgresStore::connect(&url, PostgresOptions::default());
    let stores = [open().await.unwrap(), open().await.unwrap()];
    let bucket = RateBucket {
        name: "key:k".into(),
        per_minute: 1,
        burst: 50,
    };
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (store, bucket) = (stores[i % 2].clone(), bucket.clone());
            tokio::spawn(async move { store.take_tokens(vec![bucket]).await.unwrap().unwrap() })
        })
        .collect();
    let mut remaining = Vec::new();
    for task in tasks {
        let state = task.await.unwrap()[0];
        match state.retry_after {
            None => remaining.push(state.remaining),
            Some(wait) => assert!(wait > std::time::Duration::from_secs(50)),
        }
    }
    // Each admitted request was given its own token of the 50, and was told what was left.
    remaining.sort_unstable();
    assert_eq!(remaining, (0..50).collect::<Vec<_>>());
    // The calls made, counted by PostgreSQL once the stores' connections have closed.
    drop(stores);
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let calls = loop {
        let others: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        let calls = client
            .query_opt(
                "SELECT calls FROM pg_stat_user_functions WHERE funcname = 'statebase_take_tokens'",
                &[],
            )
            .await
            .unwrap()
            .map(|r| r.get::<_, i64>(0));
        if let (0, Some(calls)) = (others, calls) {
            break calls;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(calls <= 100, "{calls} round trips for 200 requests");
}

/// Requests that go away while they wait for their key's round trip (a client gone, a
/// timeout) are not counted in the next one: it takes no tokens for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_gone_while_waiting_take_no_tokens() {
    use statebase_core::store::RateBucket;
    use statebase_core::ServerRecords;
    use std::time::Duration;
    let url = TestCluster::required().database().await;
    let open = || PostgresStore::connect(&url, PostgresOptions::default());
    let (a, b) = (open().await.unwrap(), open().await.unwrap());
    let bucket = RateBucket {
        name: "key:k".into(),
        per_minute: 1,
        burst: 50,
    };
    let take = |store: &PostgresStore| {
        let (store, bucket) = (store.clone(), bucket.clone());
        async move { store.take_tokens(vec![bucket]).await.unwrap().unwrap()[0] }
    };
    take(&b).await;
    // Another client holds the bucket's row: a's first request waits in the database, and
    // nine more wait behind it in a, until they are dropped.
    let (locker, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    locker
        .batch_execute("BEGIN; SELECT 1 FROM rate_buckets WHERE name = 'key:k' FOR UPDATE")
        .await
        .unwrap();
    let first = tokio::spawn(take(&a));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let gone: Vec<_> = (0..9).map(|_| tokio::spawn(take(&a))).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for waiting in &gone {
        waiting.abort();
    }
    for waiting in gone {
        assert!(waiting.await.unwrap_err().is_cancelled());
    }
    locker.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(first.await.unwrap().remaining, 48);
    // a's next request asks for its own token only: b sees 47 - 1 left.
    assert_eq!(take(&a).await.remaining, 47);
    assert_eq!(take(&b).await.remaining, 46);
}
