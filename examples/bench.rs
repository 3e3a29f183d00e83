//! `statebase-bench`: measures statebase on each backend next to baselines measured in the
//! same run (the machines are small and noisy, so ratios mean more than absolute figures).
//!
//! Run with `cargo run --release -p statebase-examples --bin statebase-bench -- [--quick] [--json]`.
//!
//! Every figure is the median over rounds; latencies are p50/p99 over every operation of
//! every round.

use serde_json::json;
use statebase_core::{
    AddMemory, AddTurn, CreateSession, HistoryQuery, ListTurns, MemoryStore, SearchMemories,
    StateBase, StateWrite, Store,
};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

// Many small allocations from many threads: mimalloc serves them with less contention than
// the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One measured case.
struct Figure {
    backend: &'static str,
    case: String,
    ops_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    baseline: Option<(String, f64)>,
}

struct Sizes {
    rounds: usize,
    writes: usize,
    concurrent: usize,
    reads: usize,
    memories: Vec<usize>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Runs `op` `n` times per round, sequentially; returns (median ops/s, p50 µs, p99 µs).
async fn sequential<F, Fut>(rounds: usize, n: usize, mut op: F) -> (f64, f64, f64)
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut rates = Vec::new();
    let mut latencies = Vec::new();
    for _ in 0..rounds {
        let start = Instant::now();
        for i in 0..n {
            let t = Instant::now();
            op(i).await;
            latencies.push(t.elapsed().as_secs_f64() * 1e6);
        }
        rates.push(n as f64 / start.elapsed().as_secs_f64());
    }
    summarize(rates, latencies)
}

fn summarize(mut rates: Vec<f64>, mut latencies: Vec<f64>) -> (f64, f64, f64) {
    rates.sort_by(f64::total_cmp);
    latencies.sort_by(f64::total_cmp);
    (
        percentile(&rates, 0.5),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
    )
}

/// `tasks` tasks each doing `n` writes on their own session, per round.
async fn concurrent_writes<S: Store>(
    sb: &StateBase<S>,
    rounds: usize,
    tasks: usize,
    n: usize,
) -> (f64, f64, f64) {
    let mut rates = Vec::new();
    let mut latencies = Vec::new();
    for _ in 0..rounds {
        let mut ids = Vec::new();
        for _ in 0..tasks {
            ids.push(
                sb.create_session(CreateSession::new("bench"))
                    .await
                    .unwrap()
                    .id,
            );
        }
        let start = Instant::now();
        let handles: Vec<_> = ids
            .into_iter()
            .map(|id| {
                let sb = sb.clone();
                tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(n);
                    for i in 0..n {
                        let t = Instant::now();
                        sb.merge_state(&id, StateWrite::new(json!({ "i": i })))
                            .await
                            .unwrap();
                        lat.push(t.elapsed().as_secs_f64() * 1e6);
                    }
                    lat
                })
            })
            .collect();
        for h in handles {
            latencies.extend(h.await.unwrap());
        }
        rates.push((tasks * n) as f64 / start.elapsed().as_secs_f64());
    }
    summarize(rates, latencies)
}

/// Raw rusqlite: one row per transaction, with the pragmas the SQLite backend uses.
fn raw_sqlite(dir: &Path, rounds: usize, n: usize) -> f64 {
    let conn = rusqlite::Connection::open(dir.join("raw.db")).unwrap();
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))
        .unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB NOT NULL) STRICT")
        .unwrap();
    let body = vec![7u8; 200];
    let mut rates = Vec::new();
    let mut k = 0i64;
    for _ in 0..rounds {
        let start = Instant::now();
        for _ in 0..n {
            k += 1;
            conn.execute_batch("BEGIN IMMEDIATE").unwrap();
            conn.execute("INSERT INTO t (k, v) VALUES (?1, ?2)", (k, &body))
                .unwrap();
            conn.execute_batch("COMMIT").unwrap();
        }
        rates.push(n as f64 / start.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    percentile(&rates, 0.5)
}

/// Raw sled: insert + flush.
fn raw_sled(dir: &Path, rounds: usize, n: usize) -> f64 {
    let db = sled::Config::new()
        .path(dir.join("raw.sled"))
        .flush_every_ms(None)
        .open()
        .unwrap();
    let body = vec![7u8; 200];
    let mut rates = Vec::new();
    let mut k = 0u64;
    for _ in 0..rounds {
        let start = Instant::now();
        for _ in 0..n {
            k += 1;
            db.insert(k.to_be_bytes(), body.as_slice()).unwrap();
            db.flush().unwrap();
        }
        rates.push(n as f64 / start.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    percentile(&rates, 0.5)
}

async fn bench_backend<S: Store>(
    backend: &'static str,
    sb: StateBase<S>,
    sizes: &Sizes,
    write_baseline: Option<(String, f64)>,
    out: &mut Vec<Figure>,
) {
    let mut push =
        |case: &str, (rate, p50, p99): (f64, f64, f64), baseline: Option<(String, f64)>| {
            out.push(Figure {
                backend,
                case: case.to_owned(),
                ops_per_sec: rate,
                p50_us: p50,
                p99_us: p99,
                baseline,
            })
        };
    let s = sb
        .create_session(CreateSession::new("bench"))
        .await
        .unwrap();
    let id = s.id.clone();
    let one = sequential(sizes.rounds, sizes.writes, |i| {
        let (sb, id) = (sb.clone(), id.clone());
        async move {
            sb.merge_state(&id, StateWrite::new(json!({ "k": i })))
                .await
                .unwrap();
        }
    })
    .await;
    push("state update, 1 task", one, write_baseline.clone());
    let many = concurrent_writes(&sb, sizes.rounds, sizes.concurrent, sizes.writes / 4 + 1).await;
    push(
        &format!("state update, {} tasks", sizes.concurrent),
        many,
        write_baseline,
    );
    let r = sequential(sizes.rounds, sizes.reads, |_| {
        let (sb, id) = (sb.clone(), id.clone());
        async move {
            sb.get_session(&id).await.unwrap();
        }
    })
    .await;
    push("read current state", r, None);
    let r = sequential(sizes.rounds, sizes.reads / 4, |_| {
        let (sb, id) = (sb.clone(), id.clone());
        async move {
            let q = HistoryQuery {
                limit: Some(100),
                since_version: None,
            };
            assert_eq!(sb.history(&id, q).await.unwrap().versions.len(), 100);
        }
    })
    .await;
    push("history of 100 versions", r, None);
    let r = sequential(sizes.rounds, sizes.writes / 4 + 1, |_| {
        let (sb, id) = (sb.clone(), id.clone());
        async move {
            sb.add_turn(&id, AddTurn::text("question", "answer"))
                .await
                .unwrap();
        }
    })
    .await;
    push("add a turn", r, None);
    let r = sequential(sizes.rounds, sizes.reads / 4, |_| {
        let (sb, id) = (sb.clone(), id.clone());
        async move {
            let q = ListTurns {
                limit: Some(10),
                ..Default::default()
            };
            sb.list_turns(&id, q).await.unwrap();
        }
    })
    .await;
    push("last 10 turns", r, None);
    for &n in &sizes.memories {
        let s = sb
            .create_session(CreateSession::new("bench"))
            .await
            .unwrap();
        for i in 0..n {
            let content = format!("memory {i} about topic {} and item {}", i % 97, i % 13);
            sb.add_memory(AddMemory {
                embed: Some(true),
                ..AddMemory::new(&s.id, &content)
            })
            .await
            .unwrap();
        }
        let r = sequential(sizes.rounds, sizes.reads / 4, |i| {
            let (sb, sid) = (sb.clone(), s.id.clone());
            async move {
                let q = SearchMemories {
                    session_id: Some(sid),
                    threshold: Some(0.0),
                    ..SearchMemories::new(&format!("topic {} item {}", i % 97, i % 13))
                };
                assert_eq!(sb.search_memories(q).await.unwrap().len(), 10);
            }
        })
        .await;
        push(
            &format!("search top-10 in a session of {n} memories"),
            r,
            None,
        );
    }
}

/// Builds one request of a load case.
type MakeRequest = Box<dyn Fn(&reqwest::Client) -> reqwest::RequestBuilder + Send + Sync>;

/// `connections` clients each sending `n` requests made by `request`, per round.
async fn http_load(
    rounds: usize,
    connections: usize,
    n: usize,
    request: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder + Clone + Send + 'static,
) -> (f64, f64, f64) {
    let mut rates = Vec::new();
    let mut latencies = Vec::new();
    for _ in 0..rounds {
        let start = Instant::now();
        let tasks: Vec<_> = (0..connections)
            .map(|_| {
                let request = request.clone();
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    let mut lat = Vec::with_capacity(n);
                    for _ in 0..n {
                        let t = Instant::now();
                        let r = request(&client).send().await.unwrap();
                        assert!(r.status().is_success(), "{}", r.status());
                        r.bytes().await.unwrap();
                        lat.push(t.elapsed().as_secs_f64() * 1e6);
                    }
                    lat
                })
            })
            .collect();
        for t in tasks {
            latencies.extend(t.await.unwrap());
        }
        rates.push((connections * n) as f64 / start.elapsed().as_secs_f64());
    }
    summarize(rates, latencies)
}

/// The HTTP server on loopback over SQLite: GET state, PATCH state and POST context from 32
/// connections, next to a trivial JSON endpoint of the same server.
async fn bench_http(dir: &Path, sizes: &Sizes, out: &mut Vec<Figure>) {
    let store: Arc<dyn Store> =
        Arc::new(statebase_sqlite::SqliteStore::open(dir.join("http.db")).unwrap());
    let state = statebase_http::AppState::new(store, u32::MAX / 2, u32::MAX / 2);
    let key = "sb_benchbenchbenchbench00001";
    state
        .sb
        .import_api_key("bench", "bench", key, Some(u32::MAX / 2), None)
        .await
        .unwrap();
    let sb = state.sb.tenant("bench");
    let s = sb
        .create_session(CreateSession::new("bench"))
        .await
        .unwrap();
    for i in 0..50 {
        sb.add_memory(AddMemory::new(
            &s.id,
            &format!("fact number {i} about the user"),
        ))
        .await
        .unwrap();
        sb.add_turn(&s.id, AddTurn::text("question", "answer"))
            .await
            .unwrap();
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = statebase_http::router(state);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let n = sizes.reads / 32 + 1;
    let url = base.clone();
    let baseline = http_load(sizes.rounds, 32, n, move |c| {
        c.get(format!("{url}/health/live"))
    })
    .await;
    out.push(Figure {
        backend: "http",
        case: "GET /health/live (trivial JSON)".into(),
        ops_per_sec: baseline.0,
        p50_us: baseline.1,
        p99_us: baseline.2,
        baseline: None,
    });
    let trivial = Some(("trivial JSON endpoint".to_owned(), baseline.0));
    let state_url = format!("{base}/v1/sessions/{}/state", s.id);
    let context_url = format!("{base}/v1/sessions/{}/context", s.id);
    let cases: Vec<(&str, MakeRequest)> = vec![
        (
            "GET state",
            Box::new(move |c: &reqwest::Client| c.get(&state_url).header("X-API-Key", key)),
        ),
        ("PATCH state", {
            // Agents write their own sessions: spread the writes over 32 of them.
            let mut urls = Vec::new();
            for _ in 0..32 {
                let own = sb
                    .create_session(CreateSession::new("bench"))
                    .await
                    .unwrap();
                urls.push(format!("{base}/v1/sessions/{}/state", own.id));
            }
            let next = std::sync::atomic::AtomicUsize::new(0);
            Box::new(move |c: &reqwest::Client| {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                c.patch(&urls[i % urls.len()])
                    .header("X-API-Key", key)
                    .json(&json!({"state": {"n": i}}))
            })
        }),
        (
            "POST context",
            Box::new(move |c: &reqwest::Client| {
                c.post(&context_url).header("X-API-Key", key).json(
                    &json!({"query": "what about the user", "memory_limit": 5, "turn_limit": 10}),
                )
            }),
        ),
    ];
    for (name, request) in cases {
        let request = Arc::new(request);
        let r = http_load(sizes.rounds, 32, n, move |c| request(c)).await;
        out.push(Figure {
            backend: "http",
            case: format!("{name}, 32 connections"),
            ops_per_sec: r.0,
            p50_us: r.1,
            p99_us: r.2,
            baseline: trivial.clone(),
        });
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let as_json = args.iter().any(|a| a == "--json");
    // `--only sqlite` (or memory, sled, http) runs one group of cases.
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    let runs = |group: &str| only.as_deref().is_none_or(|o| o == group);
    let sizes = if quick {
        Sizes {
            rounds: 3,
            writes: 200,
            concurrent: 64,
            reads: 400,
            memories: vec![1_000],
        }
    } else {
        Sizes {
            rounds: 5,
            writes: 1_000,
            concurrent: 64,
            reads: 4_000,
            memories: vec![1_000, 10_000],
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let mut figures = Vec::new();
    if runs("memory") {
        let sb = StateBase::new(MemoryStore::new());
        bench_backend("memory", sb, &sizes, None, &mut figures).await;
    }
    if runs("sqlite") {
        let raw = raw_sqlite(dir.path(), sizes.rounds, sizes.writes);
        let sqlite = statebase_sqlite::SqliteStore::open(dir.path().join("bench.db")).unwrap();
        let sb = StateBase::new(Arc::new(sqlite) as Arc<dyn Store>);
        let baseline = Some(("raw rusqlite 1-row tx".into(), raw));
        bench_backend("sqlite", sb, &sizes, baseline, &mut figures).await;
    }
    if runs("sled") {
        let raw = raw_sled(dir.path(), sizes.rounds, sizes.writes);
        let sled = statebase_sled::SledStore::open(dir.path().join("bench.sled")).unwrap();
        let baseline = Some(("raw sled insert+flush".into(), raw));
        bench_backend("sled", StateBase::new(sled), &sizes, baseline, &mut figures).await;
    }
    if runs("http") {
        bench_http(dir.path(), &sizes, &mut figures).await;
    }
    if as_json {
        let rows: Vec<_> = figures
            .iter()
            .map(|f| {
                json!({
                    "backend": f.backend,
                    "case": f.case,
                    "ops_per_sec": f.ops_per_sec,
                    "p50_us": f.p50_us,
                    "p99_us": f.p99_us,
                    "baseline": f.baseline.as_ref().map(|(name, rate)| json!({
                        "name": name, "ops_per_sec": rate, "ratio": f.ops_per_sec / rate,
                    })),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
        return;
    }
    println!(
        "{:<8} {:<44} {:>10} {:>9} {:>9}  baseline (ops/s, ratio)",
        "backend", "case", "ops/s", "p50 µs", "p99 µs"
    );
    for f in &figures {
        let baseline = f
            .baseline
            .as_ref()
            .map(|(name, rate)| format!("{name}: {rate:.0}/s, {:.2}x", f.ops_per_sec / rate))
            .unwrap_or_default();
        println!(
            "{:<8} {:<44} {:>10.0} {:>9.1} {:>9.1}  {baseline}",
            f.backend, f.case, f.ops_per_sec, f.p50_us, f.p99_us
        );
    }
}
