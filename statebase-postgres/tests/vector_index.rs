//! The nearest-vector side of search runs on an HNSW index of the embedding model's vectors,
//! built in the background at the first search: its results agree with an exact search,
//! and a search with a filter that few memories pass scans it too and still gets its full
//! `limit`.

use statebase_core::{AddMemory, CreateSession, MemoryStore, SearchMemories, StateBase};
use statebase_postgres::testing::TestCluster;
use statebase_postgres::{PostgresOptions, PostgresStore};
use std::time::{Duration, Instant};

const MEMORIES: usize = 2_000;

fn memory(session: &str, i: usize) -> AddMemory {
    AddMemory {
        // One memory in a hundred, spread over the subjects: whatever a query is near, the
        // graph's nearest 100 hold few of them.
        tags: ((i * 761) % 1000 < 10).then(|| vec!["rare".into()]),
        ..AddMemory::new(
            session,
            &format!(
                "note {i} on subject {} with detail {}",
                i % 50,
                (i * 7) % 113
            ),
        )
    }
}

/// A search by vector alone: none of its words is in any memory, but their letters are.
fn query(tags: &[&str]) -> SearchMemories {
    SearchMemories {
        query: "subjectz 34x detailz 101x".into(),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        threshold: Some(0.0),
        limit: Some(10),
        ..SearchMemories::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vector_search_uses_the_hnsw_index_and_agrees_with_an_exact_one() {
    let pg = TestCluster::required();
    let url = pg.database().await;
    let store = PostgresStore::connect(&url, PostgresOptions::default())
        .await
        .unwrap();
    let sb = StateBase::new(store);
    let exact = StateBase::new(MemoryStore::new());
    let s = sb.create_session(CreateSession::new("bot")).await.unwrap();
    let e = exact
        .create_session(CreateSession::new("bot"))
        .await
        .unwrap();
    for i in 0..MEMORIES {
        sb.add_memory(memory(&s.id, i)).await.unwrap();
        exact.add_memory(memory(&e.id, i)).await.unwrap();
    }
    // The first search starts the index build.
    sb.search_memories(query(&[])).await.unwrap();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let index_state = "SELECT c.relname, i.indisvalid FROM pg_index i \
         JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname LIKE 'memories_hnsw_%'";
    let deadline = Instant::now() + Duration::from_secs(60);
    let index: String = loop {
        let rows = client.query(index_state, &[]).await.unwrap();
        if let Some(r) = rows.iter().find(|r| r.get::<_, bool>(1)) {
            break r.get(0);
        }
        assert!(
            Instant::now() < deadline,
            "the index was not built: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let scans = || async {
        let r = client
            .query_one(
                "SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = $1",
                &[&index],
            )
            .await
            .unwrap();
        r.get::<_, i64>(0)
    };
    // Hybrid searches (keywords that memories contain) rank as the in-process search does.
    for (text, threshold) in [("subject 7 detail 12", 0.0), ("note 12 on subject 12", 0.5)] {
        let hybrid = |store_threshold: f64| SearchMemories {
            query: text.into(),
            threshold: Some(store_threshold),
            limit: Some(10),
            ..SearchMemories::default()
        };
        let contents = |hits: Vec<statebase_core::MemoryHit>| -> Vec<String> {
            hits.into_iter().map(|h| h.content).collect()
        };
        let got = contents(sb.search_memories(hybrid(threshold)).await.unwrap());
        let want = contents(exact.search_memories(hybrid(threshold)).await.unwrap());
        let shared = got.iter().filter(|c| want.contains(c)).count();
        assert!(
            shared + 1 >= want.len() && !want.is_empty(),
            "{text:?}: {got:?} against {want:?}"
        );
    }
    // At this size the planner rightly sorts all 2,000 exactly; the index pays off from
    // tens of thousands. Told to avoid scans and sorts, new connections take the index,
    // as a big table's would.
    let database = url.rsplit('/').next().unwrap();
    client
        .batch_execute(&format!(
            "ALTER DATABASE {database} SET enable_seqscan = off;
             ALTER DATABASE {database} SET enable_bitmapscan = off;
             ALTER DATABASE {database} SET enable_sort = off;"
        ))
        .await
        .unwrap();
    let sb = StateBase::new(
        PostgresStore::connect(&url, PostgresOptions::default())
            .await
            .unwrap(),
    );
    let before = scans().await;
    let ids = |hits: Vec<statebase_core::MemoryHit>| -> Vec<String> {
        hits.into_iter().map(|h| h.content).collect()
    };
    let got = ids(sb.search_memories(query(&[])).await.unwrap());
    let want = ids(exact.search_memories(query(&[])).await.unwrap());
    // A backend reports its statistics when idle, within ten seconds.
    let deadline = Instant::now() + Duration::from_secs(20);
    while scans().await == before {
        assert!(Instant::now() < deadline, "the search did not scan {index}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shared = got.iter().filter(|c| want.contains(c)).count();
    assert!(
        shared >= 9,
        "recall@10 {shared}/10: {got:?} against {want:?}"
    );
    // One memory in a hundred has the tag: still ten of them, as the scan goes on down the
    // graph past its first 100 (`hnsw.iterative_scan`; without it, fewer or none).
    let before = scans().await;
    let rare = sb.search_memories(query(&["rare"])).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while scans().await == before {
        assert!(
            Instant::now() < deadline,
            "the filtered search did not scan {index}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rare.len(), 10);
    assert!(rare.iter().all(|h| h.tags == ["rare"]));
    let want = ids(exact.search_memories(query(&["rare"])).await.unwrap());
    let shared = ids(rare).iter().filter(|c| want.contains(c)).count();
    assert!(shared >= 9, "filtered recall@10 {shared}/10");
}

/// A build stopped halfway (a server killed during `CREATE INDEX CONCURRENTLY`) leaves an
/// invalid index: the next server to search drops it and builds it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_left_invalid_is_built_again() {
    let url = TestCluster::required().database().await;
    let open = || PostgresStore::connect(&url, PostgresOptions::default());
    let sb = StateBase::new(open().await.unwrap());
    let s = sb.create_session(CreateSession::new("bot")).await.unwrap();
    for i in 0..200 {
        sb.add_memory(memory(&s.id, i)).await.unwrap();
    }
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    // The valid index's oid, once there is one.
    let valid = || async {
        let rows = client
            .query(
                "SELECT i.indexrelid::int8 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                 WHERE c.relname LIKE 'memories_hnsw_%' AND i.indisvalid",
                &[],
            )
            .await
            .unwrap();
        rows.first().map(|r| r.get::<_, i64>(0))
    };
    let until_valid = |sb: StateBase<PostgresStore>| async move {
        sb.search_memories(query(&[])).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(oid) = valid().await {
                return oid;
            }
            assert!(Instant::now() < deadline, "no valid index");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let first = until_valid(sb).await;
    client
        .execute(
            "UPDATE pg_index SET indisvalid = false WHERE indexrelid = $1::int8::oid",
            &[&first],
        )
        .await
        .unwrap();
    assert_eq!(valid().await, None);
    // Another server (a store of its own) searches: it sees to the index anew.
    let again = until_valid(StateBase::new(open().await.unwrap())).await;
    assert_ne!(again, first, "the invalid index was not built again");
}
