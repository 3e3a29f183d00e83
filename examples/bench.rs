//! `statebase-bench`: measures statebase on each backend next to baselines measured in the
//! same run (the machines are small and noisy, so ratios mean more than absolute figures).
//!
//! Run with `cargo run --release -p statebase-examples --bin statebase-bench -- [--quick]
//! [--full] [--json] [--peers] [--only GROUP]` (groups: retrieval, memory, search, storage,
//! appends, sqlite, sled, postgres, http). `--peers` adds LangGraph and OpenAI Agents to the
//! appends, through python3, when they are installed. The postgres group runs on a
//! throwaway PostgreSQL (see `statebase_postgres::testing`), or is skipped, saying why, when
//! there is none.
//!
//! Every figure is the median over rounds; latencies are p50/p99 over every operation of
//! every round.

use serde_json::json;
use statebase_core::search::vector::{Filter, Vector};
use statebase_core::testing::embedding_like;
use statebase_core::{
    AddMemory, AddTurn, Config, ContextRequest, CreateSession, ForkFrom, HistoryQuery, HnswConfig,
    HnswIndex, IndexFactory, ListTurns, MemoryStore, RollbackTo, SearchMemories, ServerStore,
    StateBase, StateWrite, Store, VectorIndex,
};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

#[path = "corpus.rs"]
mod corpus;
use corpus::sentence;
#[path = "retrieval.rs"]
mod retrieval;

// Many small allocations from many threads: mimalloc serves them with less contention than
// the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One measured case: a rate (with latencies) or a size, and its baseline in the same unit.
struct Figure {
    backend: &'static str,
    case: String,
    /// `ops/s` or `bytes`.
    unit: &'static str,
    value: f64,
    /// Latencies, for rates.
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    baseline: Option<(String, f64)>,
}

impl Figure {
    /// A throughput with its latencies, as `sequential` and friends return them.
    fn rate(
        backend: &'static str,
        case: impl Into<String>,
        (rate, p50, p99): (f64, f64, f64),
        baseline: Option<(String, f64)>,
    ) -> Self {
        Self {
            backend,
            case: case.into(),
            unit: "ops/s",
            value: rate,
            p50_us: Some(p50),
            p99_us: Some(p99),
            baseline,
        }
    }
}

struct Sizes {
    rounds: usize,
    writes: usize,
    concurrent: usize,
    reads: usize,
    /// Memories in one session for each backend's search and context cases.
    memories: usize,
    /// Turns of the session whose last 10 are listed.
    turns: usize,
    /// Memories of a tenant for the search scaling cases (memory backend).
    search_scale: Vec<usize>,
    /// Vectors in the vector index cases (its exact scan and its graph).
    vector_scan: Vec<usize>,
    /// Small edits for the storage case.
    edits: usize,
    /// Small edits of the session that retention prunes to its last 100 versions.
    retention_edits: usize,
}

/// `x` with two significant digits (0.0042, 0.42, 4.2), so small ratios are not all 0.00.
fn two_digits(x: f64) -> String {
    let decimals = if x > 0.0 {
        (1.0 - x.log10().floor()).max(0.0)
    } else {
        2.0
    };
    format!("{x:.*}", decimals as usize)
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

/// `tasks` tasks each merging `state(i)` into their own session for `i` in `0..n`, per
/// round.
async fn concurrent_writes<S: Store>(
    sb: &StateBase<S>,
    rounds: usize,
    tasks: usize,
    n: usize,
    state: fn(usize) -> serde_json::Value,
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
                        sb.merge_state(&id, StateWrite::new(state(i)))
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

/// A backend's raw primitives, measured in the same run: every write case is shown next to
/// `write`, every read case next to `read`.
struct Raw {
    write: (String, f64),
    read: (String, f64),
}

impl Raw {
    fn write(&self) -> Option<(String, f64)> {
        Some(self.write.clone())
    }

    fn read(&self) -> Option<(String, f64)> {
        Some(self.read.clone())
    }
}

/// The median of `rounds` rates of `n` calls of `op(k)`, `k` counting on across rounds.
fn raw_rate(rounds: usize, n: usize, mut op: impl FnMut(u64)) -> f64 {
    let mut rates = Vec::new();
    let mut k = 0u64;
    for _ in 0..rounds {
        let start = Instant::now();
        for _ in 0..n {
            k += 1;
            op(k);
        }
        rates.push(n as f64 / start.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    percentile(&rates, 0.5)
}

/// About the size of one version row of the benchmark's small states.
const RAW_VALUE: [u8; 200] = [7u8; 200];

/// A rusqlite connection to a new file with the pragmas the SQLite backend uses, and a
/// table of one blob a row.
fn raw_sqlite_table(file: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(file).unwrap();
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))
        .unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB NOT NULL) STRICT")
        .unwrap();
    conn
}

/// The rate of transactions of one row holding `value`, each committed (fsync).
fn raw_sqlite_commits(
    conn: &rusqlite::Connection,
    rounds: usize,
    writes: usize,
    value: &[u8],
) -> f64 {
    raw_rate(rounds, writes, |k| {
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        conn.prepare_cached("INSERT INTO t (k, v) VALUES (?1, ?2)")
            .unwrap()
            .execute((k as i64, value))
            .unwrap();
        conn.execute_batch("COMMIT").unwrap();
    })
}

/// Raw rusqlite with the pragmas the SQLite backend uses: one row per transaction, and a
/// point read by primary key on one open connection.
fn raw_sqlite(dir: &Path, rounds: usize, writes: usize, reads: usize) -> Raw {
    let conn = raw_sqlite_table(&dir.join("raw.db"));
    let write = raw_sqlite_commits(&conn, rounds, writes, &RAW_VALUE);
    let rows = (rounds * writes) as u64;
    let read = raw_rate(rounds, reads, |k| {
        let v: Vec<u8> = conn
            .prepare_cached("SELECT v FROM t WHERE k = ?1")
            .unwrap()
            .query_row([(1 + k % rows) as i64], |r| r.get(0))
            .unwrap();
        assert_eq!(v.len(), RAW_VALUE.len());
    });
    Raw {
        write: ("raw rusqlite 1-row tx".into(), write),
        read: ("raw rusqlite point read".into(), read),
    }
}

/// Raw sled: insert + flush, and get.
fn raw_sled(dir: &Path, rounds: usize, writes: usize, reads: usize) -> Raw {
    let db = sled::Config::new()
        .path(dir.join("raw.sled"))
        .flush_every_ms(None)
        .open()
        .unwrap();
    let write = raw_rate(rounds, writes, |k| {
        db.insert(k.to_be_bytes(), &RAW_VALUE[..]).unwrap();
        db.flush().unwrap();
    });
    let rows = (rounds * writes) as u64;
    let read = raw_rate(rounds, reads, |k| {
        let v = db.get((1 + k % rows).to_be_bytes()).unwrap().unwrap();
        assert_eq!(v.len(), RAW_VALUE.len());
    });
    Raw {
        write: ("raw sled insert+flush".into(), write),
        read: ("raw sled get".into(), read),
    }
}

/// Raw tokio-postgres on one connection: a one-row insert transaction, and a point read.
async fn raw_postgres(url: &str, rounds: usize, writes: usize, reads: usize) -> Raw {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute("CREATE TABLE raw_t (k bigint PRIMARY KEY, v bytea NOT NULL)")
        .await
        .unwrap();
    let insert = client
        .prepare("INSERT INTO raw_t (k, v) VALUES ($1, $2)")
        .await
        .unwrap();
    let select = client
        .prepare("SELECT v FROM raw_t WHERE k = $1")
        .await
        .unwrap();
    let client = &client;
    let (insert, select) = (&insert, &select);
    let write = sequential(rounds, writes, |_| async move {
        client.batch_execute("BEGIN").await.unwrap();
        client
            .execute(insert, &[&next_key(), &&RAW_VALUE[..]])
            .await
            .unwrap();
        client.batch_execute("COMMIT").await.unwrap();
    })
    .await;
    let read = sequential(rounds, reads, |i| async move {
        let rows = client
            .query(select, &[&(1 + i as i64 % writes as i64)])
            .await
            .unwrap();
        assert!(rows.len() <= 1);
    })
    .await;
    Raw {
        write: ("raw tokio-postgres 1-row tx".into(), write.0),
        read: ("raw tokio-postgres point read".into(), read.0),
    }
}

/// 1, 2, 3, …: the keys of the raw writes.
fn next_key() -> i64 {
    static LAST: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    LAST.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
}

/// A locked `HashMap` of byte values: what the memory backend is at its simplest.
fn raw_memory(rounds: usize, writes: usize, reads: usize) -> Raw {
    let map = std::sync::Mutex::new(std::collections::HashMap::new());
    let write = raw_rate(rounds, writes, |k| {
        map.lock().unwrap().insert(k, RAW_VALUE.to_vec());
    });
    let rows = (rounds * writes) as u64;
    let read = raw_rate(rounds, reads, |k| {
        let v = map.lock().unwrap().get(&(1 + k % rows)).cloned().unwrap();
        assert_eq!(v.len(), RAW_VALUE.len());
    });
    Raw {
        write: ("raw HashMap insert".into(), write),
        read: ("raw HashMap get".into(), read),
    }
}

async fn bench_backend<S: Store>(
    backend: &'static str,
    sb: StateBase<S>,
    sizes: &Sizes,
    raw: Raw,
    out: &mut Vec<Figure>,
) {
    let mut push = |case: &str, r: (f64, f64, f64), baseline: Option<(String, f64)>| {
        out.push(Figure::rate(backend, case, r, baseline))
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
    push("state update, 1 task", one, raw.write());
    let (rounds, tasks, n) = (sizes.rounds, sizes.concurrent, sizes.writes / 4 + 1);
    let many = concurrent_writes(&sb, rounds, tasks, n, |i| json!({ "i": i })).await;
    push(
        &format!("state update, {} tasks", sizes.concurrent),
        many,
        raw.write(),
    );
    let r = sequential(sizes.rounds, sizes.reads, |_| {
        let (sb, id) = (sb.clone(), id.clone());
        async move {
            sb.get_session(&id).await.unwrap();
        }
    })
    .await;
    push("read current state", r, raw.read());
    let r = sequential(sizes.rounds, sizes.reads, |i| {
        let (sb, id) = (sb.clone(), id.clone());
        async move {
            sb.state_at(&id, 1 + (i % 50) as i64).await.unwrap();
        }
    })
    .await;
    push("read an old version", r, raw.read());
    let r = sequential(sizes.rounds, sizes.reads / 4, |_| {
        let (sb, id) = (sb.clone(), id.clone());
        async move {
            let q = HistoryQuery {
                limit: Some(100),
                since_version: None,
                from_version: None,
            };
            assert_eq!(sb.history(&id, q).await.unwrap().versions.len(), 100);
        }
    })
    .await;
    push("history of 100 versions", r, raw.read());
    let r = sequential(sizes.rounds, sizes.reads / 4, |i| {
        let (sb, id) = (sb.clone(), id.clone());
        async move {
            sb.diff(&id, 1 + (i % 50) as i64, 100).await.unwrap();
        }
    })
    .await;
    push("diff of two versions", r, raw.read());
    let r = sequential(sizes.rounds, sizes.writes / 4 + 1, |i| {
        let (sb, id) = (sb.clone(), id.clone());
        async move {
            let to = RollbackTo {
                version: 1 + (i % 50) as i64,
                reason: None,
                expected_version: None,
            };
            sb.rollback(&id, to).await.unwrap();
        }
    })
    .await;
    push("rollback", r, raw.write());
    let r = sequential(sizes.rounds, sizes.writes / 4 + 1, |i| {
        let (sb, id) = (sb.clone(), id.clone());
        async move {
            let from = ForkFrom {
                version: Some(1 + (i % 50) as i64),
                ..Default::default()
            };
            sb.fork(&id, from).await.unwrap();
        }
    })
    .await;
    push("fork", r, raw.write());

    let talk = sb
        .create_session(CreateSession::new("bench"))
        .await
        .unwrap();
    let per_round = sizes.turns / sizes.rounds;
    let r = sequential(sizes.rounds, per_round, |_| {
        let (sb, id) = (sb.clone(), talk.id.clone());
        async move {
            sb.add_turn(&id, AddTurn::text("question", "answer"))
                .await
                .unwrap();
        }
    })
    .await;
    push("add a turn", r, raw.write());
    let turns = per_round * sizes.rounds;
    let r = sequential(sizes.rounds, sizes.reads / 4, |_| {
        let (sb, id) = (sb.clone(), talk.id.clone());
        async move {
            let q = ListTurns {
                limit: Some(10),
                ..Default::default()
            };
            assert_eq!(sb.list_turns(&id, q).await.unwrap().data.len(), 10);
        }
    })
    .await;
    push(
        &format!("last 10 turns of a session of {turns}"),
        r,
        raw.read(),
    );

    let s = session_with_turns(&sb, 10).await;
    let n = sizes.memories;
    let r = sequential(sizes.rounds, n / sizes.rounds, |i| {
        let (sb, sid) = (sb.clone(), s.id.clone());
        async move {
            let content = format!("memory {i} about topic {} and item {}", i % 97, i % 13);
            sb.add_memory(AddMemory::new(&sid, &content)).await.unwrap();
        }
    })
    .await;
    push("add a memory", r, raw.write());
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
        raw.read(),
    );
    let r = sequential(sizes.rounds, sizes.reads / 4, |i| {
        let (sb, sid) = (sb.clone(), s.id.clone());
        async move {
            let q = ContextRequest {
                query: Some(format!("topic {} item {}", i % 97, i % 13)),
                memory_limit: Some(5),
                turn_limit: Some(10),
            };
            let c = sb.context(&sid, q).await.unwrap();
            assert_eq!((c.memories.len(), c.recent_turns.len()), (5, 10));
        }
    })
    .await;
    push(
        &format!("context: state + 5 of {n} memories + 10 turns"),
        r,
        raw.read(),
    );
}

/// A new session with `turns` turns, for the memory and context cases.
async fn session_with_turns<S: Store>(sb: &StateBase<S>, turns: usize) -> statebase_core::Session {
    let s = sb
        .create_session(CreateSession::new("bench"))
        .await
        .unwrap();
    for _ in 0..turns {
        sb.add_turn(&s.id, AddTurn::text("question", "answer"))
            .await
            .unwrap();
    }
    s
}

/// Context in process with the built-in model next to `HashEmbedder`, over the same
/// memories, in interleaved rounds: what embedding the query costs context.
async fn bench_context_embedders(sizes: &Sizes, out: &mut Vec<Figure>) {
    let embedders: [Arc<dyn statebase_core::Embedder>; 2] = [
        Arc::new(statebase_core::HashEmbedder::new()),
        statebase_embed::StaticEmbedder::builtin(),
    ];
    let mut worlds = Vec::new();
    for embedder in embedders {
        let config = statebase_core::Config {
            embedder,
            ..Default::default()
        };
        let sb = StateBase::with_config(MemoryStore::new(), config);
        let s = session_with_turns(&sb, 10).await;
        for i in 0..sizes.memories as u64 {
            sb.add_memory(AddMemory::new(&s.id, &sentence(i)))
                .await
                .unwrap();
        }
        worlds.push((sb, s.id));
    }
    let mut runs: [Vec<(f64, f64, f64)>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..sizes.rounds {
        for (w, (sb, sid)) in worlds.iter().enumerate() {
            let r = sequential(1, sizes.reads / 4, |i| {
                let (sb, sid) = (sb.clone(), sid.clone());
                async move {
                    let q = ContextRequest {
                        query: Some(sentence(i as u64 * 7 + 3)),
                        memory_limit: Some(5),
                        turn_limit: Some(10),
                    };
                    let c = sb.context(&sid, q).await.unwrap();
                    assert_eq!(c.recent_turns.len(), 10);
                }
            })
            .await;
            runs[w].push(r);
        }
    }
    // The median round of each figure.
    let median = |w: usize, of: fn(&(f64, f64, f64)) -> f64| {
        summarize(runs[w].iter().map(of).collect(), Vec::new()).0
    };
    let builtin = (median(1, |r| r.0), median(1, |r| r.1), median(1, |r| r.2));
    let n = sizes.memories;
    out.push(Figure::rate(
        "memory",
        format!("context of {n} memories, built-in model"),
        builtin,
        Some(("same with HashEmbedder".into(), median(0, |r| r.0))),
    ));
}

/// An [`HnswIndex`] the benchmark keeps a handle on, to build its graph before measuring.
#[derive(Debug, Clone)]
struct SharedIndex(Arc<HnswIndex>);

impl VectorIndex for SharedIndex {
    fn insert(&self, key: u64, vector: Vector) {
        self.0.insert(key, vector);
    }
    fn insert_many(&self, vectors: Vec<(u64, Vector)>) {
        self.0.insert_many(vectors);
    }
    fn remove(&self, key: u64) {
        self.0.remove(key);
    }
    fn search(&self, query: &[f32], k: usize, filter: &Filter<'_>) -> Vec<(u64, f32)> {
        self.0.search(query, k, filter)
    }
    fn score(&self, query: &[f32], key: u64) -> Option<f32> {
        self.0.score(query, key)
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

/// Search top-10 over a tenant of `n` memories on the memory backend, once by exact scan
/// and once through the HNSW graph (its recall@10 measured against the exact results).
/// numpy's exact top-10 (one BLAS thread): a matrix-vector product over contiguous rows
/// and a partial selection, on seeded unit vectors; prints p50 and p99 in µs.
const NUMPY_SCAN: &str = r#"
import os, sys, time
os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = "1"
import numpy as np
n, d, k = int(sys.argv[1]), int(sys.argv[2]), 10
rng = np.random.default_rng(7)
m = rng.standard_normal((n, d), dtype=np.float32)
m /= np.linalg.norm(m, axis=1, keepdims=True)
lat = []
for q in m[rng.integers(0, n, 200)]:
    t = time.perf_counter()
    s = m @ q
    top = np.argpartition(-s, k)[:k]
    top = top[np.argsort(-s[top])]
    lat.append((time.perf_counter() - t) * 1e6)
lat.sort()
print(lat[100], lat[198])
"#;

/// numpy's (p50, p99) µs for an exact top-10 of `n` vectors of `dims`; `None` without
/// `python3` and numpy.
fn numpy_scan(n: usize, dims: usize) -> Option<(f64, f64)> {
    let out = std::process::Command::new("python3")
        .args(["-c", NUMPY_SCAN, &n.to_string(), &dims.to_string()])
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let mut figures = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some((figures.next()??, figures.next()??))
}

/// The vector index alone (384-d, top-10): its exact scan next to numpy's when it is
/// installed, both over vectors stored contiguously; then its HNSW graph, with the time to
/// link every vector in and its recall@10 against the exact scan.
fn bench_vector_scan(sizes: &Sizes, out: &mut Vec<Figure>) {
    const DIMS: usize = 384;
    for &n in &sizes.vector_scan {
        let vectors: Vec<(u64, Vector)> = embedding_like(n, DIMS, 0x9e37_79b9_7f4a_7c15)
            .into_iter()
            .enumerate()
            .map(|(i, v)| (i as u64, v))
            .collect();
        let queries = embedding_like(200, DIMS, 0x5eed);
        let index = |exact_limit| {
            HnswIndex::new(HnswConfig {
                exact_limit,
                ..HnswConfig::default()
            })
        };
        let exact = index(usize::MAX);
        exact.insert_many(vectors.clone());
        let graph = index(0);
        let built = Instant::now();
        graph.insert_many(vectors);
        graph.wait_indexed();
        let build_s = built.elapsed().as_secs_f64();
        assert_eq!(graph.graph_len(), n);
        let run = |index: &HnswIndex| {
            let (mut latencies, mut results) = (Vec::new(), Vec::new());
            for q in &queries {
                let t = Instant::now();
                let hits = index.search(q, 10, &Filter::accepting(&|_| true));
                latencies.push(t.elapsed().as_secs_f64() * 1e6);
                assert_eq!(hits.len(), 10);
                results.push(hits.into_iter().map(|h| h.0).collect::<Vec<_>>());
            }
            // A rate from the median, as numpy reports its own.
            let (_, p50, p99) = summarize(Vec::new(), latencies);
            ((1e6 / p50, p50, p99), results)
        };
        let (e, truth) = run(&exact);
        let (g, got) = run(&graph);
        let found: usize = truth
            .iter()
            .zip(&got)
            .map(|(t, g)| g.iter().filter(|k| t.contains(k)).count())
            .sum();
        let recall = found as f64 / (10 * queries.len()) as f64;
        let baseline =
            numpy_scan(n, DIMS).map(|(np50, _)| ("numpy exact (1 thread)".into(), 1e6 / np50));
        if baseline.is_none() {
            println!("vector scan of {n}: no numpy baseline (pip install numpy)");
        }
        out.push(Figure::rate(
            "memory",
            format!("vector index exact top-10 of {n} ({DIMS}-d)"),
            e,
            baseline,
        ));
        out.push(Figure::rate(
            "memory",
            format!(
                "vector index HNSW top-10 of {n}: recall@10 {recall:.3}, linked in {build_s:.1} s"
            ),
            g,
            Some(("exact scan".into(), e.0)),
        ));
    }
}

async fn bench_search_scale(sizes: &Sizes, out: &mut Vec<Figure>) {
    bench_vector_scan(sizes, out);
    for &n in &sizes.search_scale {
        let store = MemoryStore::new();
        let exact = StateBase::with_config(
            store.clone(),
            Config {
                vector_index: IndexFactory::new(|| {
                    Box::new(HnswIndex::new(HnswConfig {
                        exact_limit: usize::MAX,
                        ..HnswConfig::default()
                    }))
                }),
                ..Config::default()
            },
        );
        let graph = SharedIndex(Arc::new(HnswIndex::new(HnswConfig {
            exact_limit: 0,
            ..HnswConfig::default()
        })));
        let handle = graph.clone();
        let indexed = StateBase::with_config(
            store,
            Config {
                vector_index: IndexFactory::new(move || Box::new(graph.clone())),
                ..Config::default()
            },
        );
        for i in 0..n {
            let m = AddMemory {
                user_id: Some("u".into()),
                content: format!("{} (note {i})", sentence(i as u64)),
                ..AddMemory::default()
            };
            exact.add_memory(m).await.unwrap();
        }
        let query = |i: usize| SearchMemories {
            threshold: Some(0.0),
            ..SearchMemories::new(&sentence(1_000_000 + i as u64))
        };
        // Load both tenants' indexes, then build the graph fully before timing.
        exact.search_memories(query(0)).await.unwrap();
        indexed.search_memories(query(0)).await.unwrap();
        // Loading started the indexer: wait until it has linked every vector in.
        let built = Instant::now();
        while handle.0.is_indexing() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(handle.0.graph_len(), n);
        let build_s = built.elapsed().as_secs_f64();
        // Exact scans of 100k vectors take tens of milliseconds: a bounded number of queries.
        let queries = (sizes.reads / 4).min(200);
        let mut found = 0usize;
        let mut relevant = 0usize;
        for i in 0..queries {
            let want: Vec<String> = exact
                .search_memories(query(i))
                .await
                .unwrap()
                .into_iter()
                .map(|h| h.id)
                .collect();
            let got = indexed.search_memories(query(i)).await.unwrap();
            relevant += want.len();
            found += got.iter().filter(|h| want.contains(&h.id)).count();
        }
        let recall = found as f64 / relevant.max(1) as f64;
        let e = sequential(sizes.rounds, queries, |i| {
            let sb = exact.clone();
            async move {
                assert_eq!(sb.search_memories(query(i)).await.unwrap().len(), 10);
            }
        })
        .await;
        let g = sequential(sizes.rounds, queries, |i| {
            let sb = indexed.clone();
            async move {
                assert_eq!(sb.search_memories(query(i)).await.unwrap().len(), 10);
            }
        })
        .await;
        let case = format!("search top-10 of {n}, exact scan");
        out.push(Figure::rate("memory", case, e, None));
        let case =
            format!("search top-10 of {n}, HNSW: recall@10 {recall:.3}, built in {build_s:.0} s");
        out.push(Figure::rate(
            "memory",
            case,
            g,
            Some(("exact scan".into(), e.0)),
        ));
    }
}

/// An agent's state of about 1 KiB in JSON: a few fields, a plan, and its last messages,
/// which move on by one at each step `i`.
fn kib_state(i: usize) -> serde_json::Value {
    let messages: Vec<String> = (i..i + 7)
        .map(|m| {
            format!(
                "step {m}: {}",
                "the agent looked something up and wrote it down ".repeat(2)
            )
        })
        .collect();
    json!({
        "step": i,
        "user": "user-42",
        "goal": "book a flight to Lisbon in March with a window seat and a vegetarian meal",
        "plan": ["search flights", "compare prices", "hold a seat", "ask the user", "book"],
        "messages": messages,
    })
}

/// The peers' durable appends of the same state, through python3: LangGraph's
/// `SqliteSaver.put` (a checkpoint a step, WAL, `synchronous=FULL` as ours) and OpenAI
/// Agents' `SQLiteSession.add_items` (one message item a step, its own pragmas). Prints
/// `name rate` lines; a peer that is not installed prints nothing, one that fails says why
/// on stderr.
const PEERS: &str = r#"
import asyncio, json, os, sqlite3, sys, time
n, dir = int(sys.argv[1]), sys.argv[2]
states = [json.loads(line) for line in sys.stdin]

def langgraph():
    from langgraph.checkpoint.sqlite import SqliteSaver
    from langgraph.checkpoint.base import empty_checkpoint
    conn = sqlite3.connect(os.path.join(dir, "langgraph.db"), check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL"); conn.execute("PRAGMA synchronous=FULL")
    saver = SqliteSaver(conn); saver.setup()
    config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    for i in range(n):
        checkpoint = empty_checkpoint()
        checkpoint["channel_values"] = states[i % len(states)]
        config = saver.put(config, checkpoint, {"source": "loop", "step": i}, {})

def openai_agents():
    from agents import SQLiteSession
    session = SQLiteSession("s", os.path.join(dir, "agents.db"))
    async def run():
        for i in range(n):
            item = {"role": "assistant", "content": json.dumps(states[i % len(states)])}
            await session.add_items([item])
    asyncio.run(run())

for name, peer in [("langgraph", langgraph), ("openai-agents", openai_agents)]:
    start = time.perf_counter()
    try:
        peer()
    except ImportError:
        continue
    except Exception as e:
        print(f"peers: {name} failed: {e!r}", file=sys.stderr)
        continue
    print(name, n / (time.perf_counter() - start))
"#;

/// Each peer `PEERS` runs: its name there, and its row in the table.
const PEER_ROWS: [(&str, &str, &str); 2] = [
    (
        "langgraph",
        "langgraph",
        "SqliteSaver.put of a 1 KiB state, 1 writer",
    ),
    (
        "openai-agents",
        "oai-agents",
        "SQLiteSession.add_items of a 1 KiB item, 1 writer",
    ),
];

/// Durable appends of a 1 KiB state on SQLite (fsync at every commit), by 1 writer and by
/// `sizes.concurrent`, next to raw rusqlite commits of one row of that size (one a commit:
/// the group the writer forms is not measured); with `peers`, LangGraph and OpenAI Agents
/// appending the same states, next to ours.
async fn bench_appends(dir: &Path, sizes: &Sizes, peers: bool, out: &mut Vec<Figure>) {
    let bytes = serde_json::to_vec(&kib_state(50)).unwrap();
    let conn = raw_sqlite_table(&dir.join("raw-kib.db"));
    let raw = raw_sqlite_commits(&conn, sizes.rounds, sizes.writes, &bytes);
    let raw = Some((
        format!("raw rusqlite 1-row tx of {} bytes", bytes.len()),
        raw,
    ));
    let store = statebase_sqlite::SqliteStore::open(dir.join("appends.db")).unwrap();
    let sb = StateBase::new(store);
    let id = sb
        .create_session(CreateSession::new("bench"))
        .await
        .unwrap()
        .id;
    let one = sequential(sizes.rounds, sizes.writes, |i| {
        let (sb, id) = (sb.clone(), id.clone());
        async move {
            sb.merge_state(&id, StateWrite::new(kib_state(i)))
                .await
                .unwrap();
        }
    })
    .await;
    out.push(Figure::rate(
        "sqlite",
        "append a 1 KiB state, 1 writer",
        one,
        raw.clone(),
    ));
    let (rounds, writers, n) = (sizes.rounds, sizes.concurrent, sizes.writes / 4 + 1);
    let many = concurrent_writes(&sb, rounds, writers, n, kib_state).await;
    let case = format!("append a 1 KiB state, {} writers", sizes.concurrent);
    out.push(Figure::rate("sqlite", case, many, raw));
    if !peers {
        return;
    }
    let input: String = (0..100).map(|i| format!("{}\n", kib_state(i))).collect();
    let mut child = match std::process::Command::new("python3")
        .args(["-c", PEERS, &sizes.writes.to_string()])
        .arg(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => return println!("peers: no python3 ({e})"),
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        println!("peers: python3 {} (its error is above)", output.status);
    } else if text.trim().is_empty() {
        println!("peers: none ran (pip install langgraph-checkpoint-sqlite openai-agents)");
    }
    let ours = Some(("statebase sqlite, 1 writer".to_owned(), one.0));
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(name), Some(Ok(rate))) = (words.next(), words.next().map(str::parse::<f64>))
        else {
            continue;
        };
        let Some(&(_, backend, case)) = PEER_ROWS.iter().find(|row| row.0 == name) else {
            continue;
        };
        out.push(Figure {
            p50_us: None,
            p99_us: None,
            ..Figure::rate(backend, case, (rate, 0.0, 0.0), ours.clone())
        });
    }
}

/// A new session whose state has `keys` keys of 90 characters each; with the size of that
/// state's JSON.
async fn session_of_keys<S: Store>(
    sb: &StateBase<S>,
    keys: usize,
) -> (statebase_core::Session, usize) {
    let state: serde_json::Map<String, serde_json::Value> = (0..keys)
        .map(|i| (format!("key_{i:03}"), json!("x".repeat(90))))
        .collect();
    let size = serde_json::to_vec(&state).unwrap().len();
    let s = sb
        .create_session(CreateSession {
            initial_state: Some(state.into()),
            ..CreateSession::new("bench")
        })
        .await
        .unwrap();
    (s, size)
}

/// Bytes on disk per version after `edits` one-key edits of a 10 KiB state, next to the
/// size of one full snapshot of that state.
async fn bench_storage<S: Store>(
    backend: &'static str,
    open: impl Fn() -> StateBase<S>,
    size: impl Fn() -> u64,
    edits: usize,
    out: &mut Vec<Figure>,
) {
    let sb = open();
    let (s, snapshot) = session_of_keys(&sb, 100).await;
    drop(sb);
    let before = size();
    let sb = open();
    for i in 0..edits {
        sb.merge_state(&s.id, StateWrite::new(json!({ "key_000": i })))
            .await
            .unwrap();
    }
    drop(sb);
    let per_version = size().saturating_sub(before) as f64 / edits as f64;
    out.push(Figure {
        backend,
        case: format!("disk per version, {edits} one-key edits of a 10 KiB state"),
        unit: "bytes",
        value: per_version,
        p50_us: None,
        p99_us: None,
        baseline: Some(("one full snapshot".into(), snapshot as f64)),
    });
}

/// The bytes a backend stores for one session's versions after `edits` one-key edits of
/// a 1 KiB state, after pruning it to its last 100 versions, next to those before.
async fn bench_retention<S: Store>(
    backend: &'static str,
    sb: StateBase<S>,
    edits: usize,
    out: &mut Vec<Figure>,
) {
    let (s, _) = session_of_keys(&sb, 10).await;
    for i in 0..edits {
        sb.merge_state(&s.id, StateWrite::new(json!({ "key_000": i })))
            .await
            .unwrap();
    }
    let stored = || async {
        let versions = sb.store().versions(sb.tenant_id(), &s.id, 0..u64::MAX);
        let versions = versions.await.unwrap();
        versions.iter().map(|v| v.body.len()).sum::<usize>() as f64
    };
    let before = stored().await;
    let keep = statebase_core::Retention {
        keep_versions: Some(100),
        ..Default::default()
    };
    sb.prune_session(&s.id, keep).await.unwrap();
    out.push(Figure {
        backend,
        case: format!("stored version bytes, {edits} one-key edits pruned to the last 100"),
        unit: "bytes",
        value: stored().await,
        p50_us: None,
        p99_us: None,
        baseline: Some(("before pruning".into(), before)),
    });
}

/// The size of a SQLite file with its write-ahead log checkpointed into it.
fn sqlite_bytes(file: &Path) -> u64 {
    let conn = rusqlite::Connection::open(file).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    std::fs::metadata(file).unwrap().len()
}

/// Total size of the files under `dir`.
fn disk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => disk_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Builds one request of a load case.
type MakeRequest = Arc<dyn Fn(&reqwest::Client) -> reqwest::RequestBuilder + Send + Sync>;

/// One round: `connections` clients each sending `n` requests made by `request`. The rate,
/// and every request's latency in µs.
async fn http_round(connections: usize, n: usize, request: &MakeRequest) -> (f64, Vec<f64>) {
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
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let rate = (connections * n) as f64 / start.elapsed().as_secs_f64();
    (rate, latencies)
}

/// The HTTP server on loopback over SQLite: GET state, PATCH state and POST context from 32
/// connections, next to a trivial JSON endpoint of the same server. Each round runs the
/// trivial endpoint and then every case, so that the baseline is measured next to them.
/// The HTTP cases, against one server per store (each on the same data), requests taken
/// by each in turn.
async fn bench_http(
    backend: &'static str,
    stores: Vec<Arc<dyn ServerStore>>,
    sizes: &Sizes,
    out: &mut Vec<Figure>,
) {
    let states: Vec<_> = stores
        .into_iter()
        .map(|store| {
            statebase_http::AppState::new(
                store,
                statebase_http::RateLimiter::new(statebase_http::Rate::new(
                    u32::MAX / 2,
                    u32::MAX / 2,
                )),
                statebase_http::Targets::Public,
            )
        })
        .collect();
    let state = &states[0];
    let key = "sb_benchbenchbenchbench00001";
    state
        .sb
        .import_api_key(
            "bench",
            "bench",
            key,
            statebase_core::KeyLimits::per_minute(u32::MAX / 2),
            None,
        )
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
    // Agents write their own sessions: PATCH spreads its writes over 32 of them.
    let mut own = Vec::new();
    for _ in 0..32 {
        let s = sb
            .create_session(CreateSession::new("bench"))
            .await
            .unwrap();
        own.push(s.id);
    }
    let mut bases = Vec::new();
    for state in &states {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        bases.push(format!("http://{}", listener.local_addr().unwrap()));
        tokio::spawn(statebase_http::serve(
            listener,
            statebase_http::router(state.clone()),
            statebase_http::Limits::default(),
            std::future::pending(),
        ));
    }
    // Each request goes to the next server.
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let pick = move || {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (i, bases[i % bases.len()].clone())
    };
    let (state_path, context_path) = (
        format!("/v1/sessions/{}/state", s.id),
        format!("/v1/sessions/{}/context", s.id),
    );
    let (p1, p2, p3, p4) = (pick.clone(), pick.clone(), pick.clone(), pick);
    let cases: Vec<(&str, MakeRequest)> = vec![
        (
            "GET /health/live (trivial JSON)",
            Arc::new(move |c: &reqwest::Client| c.get(format!("{}/health/live", p1().1))),
        ),
        (
            "GET state, 32 connections",
            Arc::new(move |c: &reqwest::Client| {
                c.get(format!("{}{state_path}", p2().1))
                    .header("X-API-Key", key)
            }),
        ),
        (
            "PATCH state, 32 connections",
            Arc::new(move |c: &reqwest::Client| {
                let (i, base) = p3();
                let url = format!("{base}/v1/sessions/{}/state", own[i % own.len()]);
                c.patch(url)
                    .header("X-API-Key", key)
                    .json(&json!({"state": {"n": i}}))
            }),
        ),
        (
            "POST context, 32 connections",
            Arc::new(move |c: &reqwest::Client| {
                c.post(format!("{}{context_path}", p4().1))
                    .header("X-API-Key", key)
                    .json(
                        &json!({"query": "what about the user", "memory_limit": 5, "turn_limit": 10}),
                    )
            }),
        ),
    ];
    let n = sizes.reads / 32 + 1;
    let mut measured = vec![(Vec::new(), Vec::new()); cases.len()];
    for _ in 0..sizes.rounds {
        for ((_, request), (rates, latencies)) in cases.iter().zip(&mut measured) {
            let (rate, lat) = http_round(32, n, request).await;
            rates.push(rate);
            latencies.extend(lat);
        }
    }
    let mut trivial = None;
    for ((name, _), (rates, latencies)) in cases.iter().zip(measured) {
        let figure = summarize(rates, latencies);
        out.push(Figure::rate(backend, *name, figure, trivial.clone()));
        trivial = trivial.or(Some(("trivial JSON endpoint".to_owned(), figure.0)));
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
            memories: 1_000,
            turns: 1_000,
            search_scale: vec![1_000, 10_000],
            vector_scan: vec![1_000, 10_000],
            edits: 200,
            retention_edits: 1_000,
        }
    } else {
        Sizes {
            rounds: 5,
            writes: 1_000,
            concurrent: 64,
            reads: 4_000,
            memories: 10_000,
            turns: 10_000,
            // `--full` adds 100k, whose graph takes minutes to build on 2 cores.
            search_scale: if args.iter().any(|a| a == "--full") {
                vec![1_000, 10_000, 100_000]
            } else {
                vec![1_000, 10_000]
            },
            vector_scan: vec![10_000, 30_000, 100_000],
            edits: 1_000,
            retention_edits: 10_000,
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let mut figures = Vec::new();
    // Recall is not a rate: its tables print as they are measured.
    if runs("retrieval") && !as_json {
        retrieval::run().await;
    }
    if runs("memory") {
        let raw = raw_memory(sizes.rounds, sizes.writes, sizes.reads);
        let sb = StateBase::new(MemoryStore::new());
        bench_backend("memory", sb, &sizes, raw, &mut figures).await;
        bench_context_embedders(&sizes, &mut figures).await;
    }
    if runs("search") {
        bench_search_scale(&sizes, &mut figures).await;
    }
    if runs("storage") {
        let file = dir.path().join("storage.db");
        let open = || StateBase::new(statebase_sqlite::SqliteStore::open(&file).unwrap());
        let size = || sqlite_bytes(&file);
        bench_storage("sqlite", open, size, sizes.edits, &mut figures).await;
        let at = dir.path().join("storage.sled");
        let open = || StateBase::new(statebase_sled::SledStore::open(&at).unwrap());
        let size = || disk_bytes(&at);
        bench_storage("sled", open, size, sizes.edits, &mut figures).await;
        let edits = sizes.retention_edits;
        let memory = StateBase::new(MemoryStore::new());
        bench_retention("memory", memory, edits, &mut figures).await;
        let sqlite = statebase_sqlite::SqliteStore::open(dir.path().join("retention.db")).unwrap();
        bench_retention("sqlite", StateBase::new(sqlite), edits, &mut figures).await;
        let sled = statebase_sled::SledStore::open(dir.path().join("retention.sled")).unwrap();
        bench_retention("sled", StateBase::new(sled), edits, &mut figures).await;
    }
    if runs("appends") {
        let peers = args.iter().any(|a| a == "--peers");
        bench_appends(dir.path(), &sizes, peers, &mut figures).await;
    }
    if runs("sqlite") {
        let raw = raw_sqlite(dir.path(), sizes.rounds, sizes.writes, sizes.reads);
        let sqlite = statebase_sqlite::SqliteStore::open(dir.path().join("bench.db")).unwrap();
        let sb = StateBase::new(Arc::new(sqlite) as Arc<dyn ServerStore>);
        bench_backend("sqlite", sb, &sizes, raw, &mut figures).await;
    }
    if runs("sled") {
        let raw = raw_sled(dir.path(), sizes.rounds, sizes.writes, sizes.reads);
        let sled = statebase_sled::SledStore::open(dir.path().join("bench.sled")).unwrap();
        bench_backend("sled", StateBase::new(sled), &sizes, raw, &mut figures).await;
    }
    if runs("postgres") {
        match statebase_postgres::testing::TestCluster::get() {
            Some(pg) => {
                let raw = raw_postgres(
                    &pg.database().await,
                    sizes.rounds,
                    sizes.writes,
                    sizes.reads,
                )
                .await;
                let options = statebase_postgres::PostgresOptions::default();
                let store =
                    statebase_postgres::PostgresStore::connect(&pg.database().await, options)
                        .await
                        .unwrap();
                let sb = StateBase::new(store);
                bench_retention("postgres", sb.clone(), sizes.retention_edits, &mut figures).await;
                bench_backend("postgres", sb, &sizes, raw, &mut figures).await;
                // The HTTP cases on one server, then on three sharing a database (in this
                // process, each with its own pool), the requests taken by each in turn.
                for (backend, servers) in [("http-pg", 1), ("http-pg×3", 3)] {
                    let url = pg.database().await;
                    let mut stores: Vec<Arc<dyn ServerStore>> = Vec::new();
                    for _ in 0..servers {
                        let options = statebase_postgres::PostgresOptions::default();
                        let store = statebase_postgres::PostgresStore::connect(&url, options);
                        stores.push(Arc::new(store.await.unwrap()));
                    }
                    bench_http(backend, stores, &sizes, &mut figures).await;
                }
            }
            None => eprintln!(
                "postgres: skipped, no PostgreSQL ({})",
                statebase_postgres::testing::HOW
            ),
        }
    }
    if runs("http") {
        let sqlite = statebase_sqlite::SqliteStore::open(dir.path().join("http.db")).unwrap();
        bench_http("http", vec![Arc::new(sqlite)], &sizes, &mut figures).await;
    }
    if as_json {
        let rows: Vec<_> = figures
            .iter()
            .map(|f| {
                json!({
                    "backend": f.backend,
                    "case": f.case,
                    "unit": f.unit,
                    "value": f.value,
                    "p50_us": f.p50_us,
                    "p99_us": f.p99_us,
                    "baseline": f.baseline.as_ref().map(|(name, value)| json!({
                        "name": name, "value": value, "ratio": f.value / value,
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
    if figures.is_empty() {
        return;
    }
    println!(
        "{:<8} {:<58} {:>16} {:>9} {:>9}  baseline (same unit), ratio",
        "backend", "case", "value", "p50 µs", "p99 µs"
    );
    let micros = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
    for f in &figures {
        let baseline = f
            .baseline
            .as_ref()
            .map(|(name, v)| format!("{name}: {v:.0}, {}x", two_digits(f.value / v)))
            .unwrap_or_default();
        println!(
            "{:<8} {:<58} {:>10.0} {:<5} {:>9} {:>9}  {baseline}",
            f.backend,
            f.case,
            f.value,
            f.unit,
            micros(f.p50_us),
            micros(f.p99_us)
        );
    }
}
