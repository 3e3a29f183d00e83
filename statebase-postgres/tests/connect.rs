//! Opening a PostgreSQL database: migrations once, a newer schema refused untouched, and a
//! database that cannot use pgvector refused with an error that says what to do.

use statebase_postgres::testing::TestCluster;
use statebase_postgres::{PostgresError, PostgresOptions, PostgresStore, SCHEMA_VERSION};

#[tokio::test]
async fn a_database_is_migrated_once_even_by_servers_starting_together() {
    let pg = TestCluster::required();
    let url = pg.database().await;
    let opens = (0..4).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { PostgresStore::connect(&url, PostgresOptions::default()).await })
    });
    for open in opens {
        let store = open.await.unwrap().unwrap();
        assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
    }
    let again = PostgresStore::connect(&url, PostgresOptions::default())
        .await
        .unwrap();
    assert_eq!(again.schema_version().await.unwrap(), SCHEMA_VERSION);
}

#[tokio::test]
async fn a_newer_schema_is_refused_untouched() {
    let pg = TestCluster::required();
    let url = pg.database().await;
    PostgresStore::connect(&url, PostgresOptions::default())
        .await
        .unwrap();
    let database = url.rsplit('/').next().unwrap();
    let newer = SCHEMA_VERSION + 1;
    pg.execute_in(
        database,
        &format!("INSERT INTO statebase_schema_version (version) VALUES ({newer})"),
    )
    .await;
    match PostgresStore::connect(&url, PostgresOptions::default()).await {
        Err(PostgresError::NewerSchema { found, supported }) => {
            assert_eq!((found, supported), (newer, SCHEMA_VERSION));
        }
        other => panic!("expected NewerSchema, got {other:?}"),
    }
}

#[tokio::test]
async fn a_database_without_pgvector_is_refused_with_what_to_run() {
    let pg = TestCluster::required();
    let url = pg.database().await;
    let database = url.rsplit('/').next().unwrap().to_owned();
    // A user who owns the database but may not create the extension (it is not trusted).
    let user = format!("{database}_app");
    pg.execute(&format!(
        "CREATE ROLE {user} LOGIN; ALTER DATABASE {database} OWNER TO {user}"
    ))
    .await;
    let e = PostgresStore::connect(&pg.url_as(&user, &database), PostgresOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(e, PostgresError::NoVectorExtension(_)),
        "expected NoVectorExtension, got {e:?}"
    );
    assert!(e.to_string().contains("CREATE EXTENSION vector;"), "{e}");
    // Once an operator enables it, the same user opens the database.
    pg.execute_in(&database, "CREATE EXTENSION vector").await;
    PostgresStore::connect(&pg.url_as(&user, &database), PostgresOptions::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn an_unreachable_server_fails_fast() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let options = PostgresOptions {
        wait_timeout: std::time::Duration::from_secs(1),
        ..PostgresOptions::default()
    };
    let started = std::time::Instant::now();
    let e = PostgresStore::connect(&format!("postgres://u@127.0.0.1:{port}/db"), options)
        .await
        .unwrap_err();
    assert!(matches!(e, PostgresError::Unavailable(_)), "{e:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
}
