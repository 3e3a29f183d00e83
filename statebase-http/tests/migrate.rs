//! Moving data between backends: archives round-trip through every pair of memory, SQLite,
//! sled and PostgreSQL stores, and `statebase export`, `import` and `migrate` work on real
//! databases.

use statebase_core::store::TraceLog;
use statebase_core::testing::archive_cases::{assert_same_answers, export_all, populated};
use statebase_core::testing::epoch;
use statebase_core::{archive, Config, ManualClock, MemoryStore, ServerStore, StateBase};
use statebase_postgres::testing::TestCluster;
use statebase_postgres::{PostgresOptions, PostgresStore};
use statebase_sled::SledStore;
use statebase_sqlite::SqliteStore;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

const BACKENDS: [&str; 4] = ["memory", "sqlite", "sled", "postgres"];

/// A new, empty store of `backend`, its files (if any) named `name` in `dir`.
async fn empty(backend: &str, dir: &Path, name: &str) -> Arc<dyn ServerStore> {
    match backend {
        "memory" => Arc::new(MemoryStore::new()),
        "sqlite" => Arc::new(SqliteStore::open(dir.join(format!("{name}.db"))).unwrap()),
        "sled" => Arc::new(SledStore::open(dir.join(format!("{name}.sled"))).unwrap()),
        "postgres" => Arc::new(connect(&TestCluster::required().database().await).await),
        _ => unreachable!(),
    }
}

async fn connect(url: &str) -> PostgresStore {
    PostgresStore::connect(url, PostgresOptions::default())
        .await
        .unwrap()
}

async fn import(store: &dyn ServerStore, bytes: &[u8]) {
    archive::import(store, bytes, &mut |_| {}).await.unwrap();
}

/// Reads as of the populated store's clock, so that its sessions are live.
fn statebase<S: statebase_core::Store>(store: S) -> StateBase<S> {
    let config = Config {
        clock: Arc::new(ManualClock::new(epoch())),
        ..Config::default()
    };
    StateBase::with_config(store, config)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_pair_of_backends_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let source = export_all(populated().await.store()).await;
    for a in BACKENDS {
        let store_a = empty(a, dir.path(), a).await;
        import(&*store_a, &source).await;
        let from_a = export_all(&*store_a).await;
        assert!(from_a == source, "memory → {a}: the archives differ");
        for b in BACKENDS.into_iter().filter(|b| *b != a) {
            let store_b = empty(b, dir.path(), &format!("{a}-{b}")).await;
            import(&*store_b, &from_a).await;
            let from_b = export_all(&*store_b).await;
            assert!(from_b == source, "{a} → {b}: the archives differ");
        }
    }
}

fn statebase_cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_statebase"))
        .args(args)
        .output()
        .expect("run statebase")
}

fn run(args: &[&str]) -> String {
    let out = statebase_cli(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_migrated_sqlite_store_answers_the_same_from_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let source = populated().await;
    let path = dir.path().join("start.db");
    import(
        &SqliteStore::open(&path).unwrap(),
        &export_all(source.store()).await,
    )
    .await;
    let pg = TestCluster::required().database().await;

    let sqlite = format!("sqlite:{}", path.display());
    let report = run(&["migrate", "--from", &sqlite, "--to", &pg, "--with-vectors"]);
    assert!(report.contains("imported: 3 sessions"), "{report}");
    assert_same_answers(&source, &statebase(connect(&pg).await)).await;

    // Again: nothing more is written.
    let report = run(&["migrate", "--from", &sqlite, "--to", &pg]);
    assert!(
        report.contains(
            "imported: 0 sessions, 0 versions, 0 turns, 0 memories, 0 entities, 0 traces"
        ),
        "{report}"
    );
    assert_same_answers(&source, &statebase(connect(&pg).await)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn export_then_import_through_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let source = populated().await;
    let from = dir.path().join("from.sled");
    import(
        &SledStore::open(&from).unwrap(),
        &export_all(source.store()).await,
    )
    .await;
    let file = dir.path().join("all.jsonl");
    let file_arg = file.to_str().unwrap();
    let sled = format!("sled:{}", from.display());
    run(&["export", "--db", &sled, "--with-vectors", "-o", file_arg]);

    // A damaged copy is refused whole, before anything is written.
    let mut damaged = std::fs::read(&file).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] = if damaged[middle] == b'0' { b'1' } else { b'0' };
    let damaged_path = dir.path().join("damaged.jsonl");
    std::fs::write(&damaged_path, damaged).unwrap();
    let to = dir.path().join("to.db");
    let sqlite = format!("sqlite:{}", to.display());
    let refused = statebase_cli(&["import", "--db", &sqlite, damaged_path.to_str().unwrap()]);
    assert!(!refused.status.success());
    let store = SqliteStore::open(&to).unwrap();
    assert!(
        store.tenants().await.unwrap().is_empty(),
        "a refused archive wrote"
    );
    drop(store);

    let report = run(&["import", "--db", &sqlite, file_arg]);
    assert!(report.contains("imported: 3 sessions"), "{report}");
    let again = run(&["import", "--db", &sqlite, file_arg]);
    assert!(
        again.contains("skipped (already there): 3 sessions"),
        "{again}"
    );
    assert_same_answers(&source, &statebase(SqliteStore::open(&to).unwrap())).await;
    // Its own export is the file, but for the header's time.
    let exported = dir.path().join("again.jsonl");
    run(&[
        "export",
        "--db",
        &sqlite,
        "--with-vectors",
        "-o",
        exported.to_str().unwrap(),
    ]);
    let lines = |p: &Path| {
        let text = std::fs::read_to_string(p).unwrap();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        lines[1..lines.len() - 1].to_vec()
    };
    assert_eq!(lines(&exported), lines(&file));
}

/// An export onto a full disk (Linux's `/dev/full` answers every write with ENOSPC) fails
/// and says why; it never reports success.
#[tokio::test]
async fn an_export_onto_a_full_disk_fails_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let source = populated().await;
    let db = dir.path().join("full.db");
    import(
        &SqliteStore::open(&db).unwrap(),
        &export_all(source.store()).await,
    )
    .await;
    let sqlite = format!("sqlite:{}", db.display());
    let out = statebase_cli(&["export", "--db", &sqlite, "-o", "/dev/full"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exported onto a full disk: {stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
}

/// The lines of an archive between its header and its trailer (which hold its time).
fn records(archive: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(archive).unwrap();
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[1..lines.len() - 1].to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_exports_its_own_records_over_http() {
    use statebase_http::{router, AppState, Rate, RateLimiter, Targets};
    let source = populated().await;
    let store: Arc<dyn ServerStore> = Arc::new(MemoryStore::new());
    import(&*store, &export_all(source.store()).await).await;
    let state = AppState::new(
        store.clone(),
        RateLimiter::new(Rate::new(1000, 1000)),
        Targets::Public,
    );
    for (tenant, key) in [
        ("default", "sb_exportdefaultkey000001"),
        ("other", "sb_exportotherkey00000001"),
    ] {
        let limits = statebase_core::KeyLimits::default();
        state
            .sb
            .import_api_key(tenant, "test", key, limits, None)
            .await
            .unwrap();
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/export", listener.local_addr().unwrap());
    let limits = statebase_http::Limits::default();
    tokio::spawn(statebase_http::serve(
        listener,
        router(state),
        limits,
        std::future::pending(),
    ));
    let http = reqwest::Client::new();

    let anonymous = http.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);

    for (tenant, key) in [
        ("default", "sb_exportdefaultkey000001"),
        ("other", "sb_exportotherkey00000001"),
    ] {
        let response = http
            .get(&url)
            .header("x-api-key", key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/x-ndjson");
        let body = response.bytes().await.unwrap();
        let (header, _) = archive::verify(&body[..]).await.unwrap();
        assert_eq!(header.tenant.as_deref(), Some(tenant));
        // The same records as the library's export of that tenant, the keys included.
        let mut expected = Vec::new();
        let options = archive::ExportOptions {
            tenant: Some(tenant.into()),
            with_vectors: false,
        };
        archive::export(&*store, &options, epoch(), &mut expected, &mut |_| {})
            .await
            .unwrap();
        assert_eq!(records(&body), records(&expected), "{tenant}");
        let restored = MemoryStore::new();
        import(&restored, &body).await;
        assert_eq!(restored.tenants().await.unwrap(), [tenant]);
    }

    let with_vectors = http
        .get(format!("{url}?with_vectors=true"))
        .header("x-api-key", "sb_exportdefaultkey000001")
        .send()
        .await
        .unwrap();
    let body = with_vectors.bytes().await.unwrap();
    assert!(std::str::from_utf8(&body)
        .unwrap()
        .contains("\"embedding\":["));
    let bad = http
        .get(format!("{url}?with_vectors=maybe"))
        .header("x-api-key", "sb_exportdefaultkey000001")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
}
