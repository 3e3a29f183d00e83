//! Nearest-neighbour search over memory vectors: the [`VectorIndex`] trait and
//! [`HnswIndex`], exact where the index is small and through an HNSW graph where it is
//! large. Vectors are stored contiguously and scored by a kernel compiled for the CPU's
//! vector instructions, chosen at run time (`pulp`).

use parking_lot::RwLock;
use std::collections::{HashMap, HashSet};
use std::fmt::{self, Debug};
use std::sync::{Arc, Weak};
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

/// A vector, as the index takes it.
pub type Vector = Arc<[f32]>;

/// A nearest-neighbour index over L2-normalised vectors, keyed by numbers the caller chooses
/// and never reuses. Scores are cosine similarities (dot products), higher is closer.
pub trait VectorIndex: Send + Sync + Debug + 'static {
    /// Adds a vector. A new vector is found by the next search.
    fn insert(&self, key: u64, vector: Vector);

    /// Adds many vectors, as when an index is loaded from the store.
    fn insert_many(&self, vectors: Vec<(u64, Vector)>) {
        for (key, vector) in vectors {
            self.insert(key, vector);
        }
    }

    /// Removes a vector; later searches don't return it.
    fn remove(&self, key: u64);

    /// Up to `k` keys that `filter` lets through, best first, with their scores. The index
    /// chooses how: scanning `filter.among` while it is small, or searching all it holds.
    fn search(&self, query: &[f32], k: usize, filter: &Filter<'_>) -> Vec<(u64, f32)>;

    /// The score of `key`'s vector against `query`; `None` if it has none here.
    fn score(&self, query: &[f32], key: u64) -> Option<f32>;

    /// How many vectors it holds.
    fn len(&self) -> usize;

    /// True when it holds no vector.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which keys a [`VectorIndex::search`] may return.
#[derive(Clone, Copy)]
pub struct Filter<'a> {
    /// When the caller knows them (a session's memories), the only keys a hit may have, as
    /// disjoint sets; `None`: any key.
    pub among: Option<&'a [&'a HashSet<u64>]>,
    /// What else a hit's key must pass.
    pub accept: &'a dyn Fn(u64) -> bool,
}

impl Filter<'_> {
    /// Any key that `accept` passes.
    pub fn accepting(accept: &dyn Fn(u64) -> bool) -> Filter<'_> {
        Filter {
            among: None,
            accept,
        }
    }

    /// True if `key` may be a hit.
    pub fn admits(&self, key: u64) -> bool {
        self.among
            .is_none_or(|sets| sets.iter().any(|s| s.contains(&key)))
            && (self.accept)(key)
    }

    /// How many keys `among` holds; `None` without it.
    fn among_len(&self) -> Option<usize> {
        self.among.map(|sets| sets.iter().map(|s| s.len()).sum())
    }
}

/// Tuning of [`HnswIndex`].
#[derive(Debug, Clone, Copy)]
pub struct HnswConfig {
    /// Up to this many vectors (held, or among a search's candidates), a search is an exact
    /// scan: faster than a graph walk for small sets, and exact.
    pub exact_limit: usize,
    /// HNSW `M`: links a vector keeps on each layer above the bottom one (twice that on it).
    pub connectivity: usize,
    /// HNSW `efConstruction`: candidates weighed when a vector is linked in.
    pub ef_construction: usize,
    /// HNSW `ef` at search time: candidates a graph search keeps.
    pub ef_search: usize,
}

impl Default for HnswConfig {
    fn default() -> Self {
        Self {
            // Measured by `examples/index_crossover.rs` (384-d, 2 cores, the SIMD scan):
            // exact takes 0.6x the graph's time at 1,000 vectors and 1.5x at 5,000 (3.5x at
            // 10,000); below the limit it is also exact.
            exact_limit: 5_000,
            connectivity: 16,
            ef_construction: 128,
            ef_search: 128,
        }
    }
}

/// Graph hits re-scored exactly for a search of `k`: at least this many.
const RESCORED: usize = 40;

/// Calls the graph serves at once (each takes one of its thread slots); a search beyond
/// that many scans exactly instead.
const GRAPH_SLOTS: usize = 64;

/// Vectors the indexer links into the graph between two looks at what is pending.
const INDEX_BATCH: usize = 1_024;

/// Exact search while small. Past [`HnswConfig::exact_limit`] vectors, a search takes
/// candidates from an HNSW graph (`usearch`, with vectors rounded to `i8`) and re-scores
/// them exactly from the stored vectors, which alone decide what it returns.
///
/// A background thread links new vectors into the graph, in parallel batches; until it has,
/// a search scans them exactly, so a vector is found by the next search. A removal leaves
/// the graph at once. Nothing is ever rebuilt: the first time the index outgrows the limit,
/// the thread links every vector in it the same way.
pub struct HnswIndex {
    state: Arc<RwLock<State>>,
    config: HnswConfig,
}

/// The HNSW graph. It only proposes: a key it holds that the index no longer does (removed
/// while the indexer was linking it) is never returned.
struct Graph {
    /// Written only to grow the graph's capacity: usearch cannot do that beside other calls.
    index: RwLock<Index>,
}

impl Graph {
    fn new(dims: usize, config: &HnswConfig, capacity: usize) -> Option<Self> {
        let options = IndexOptions {
            dimensions: dims,
            metric: MetricKind::IP,
            // A quarter of f32's memory and far less time a comparison; re-scoring the
            // candidates exactly makes up for the rounding.
            quantization: ScalarKind::I8,
            connectivity: config.connectivity,
            expansion_add: config.ef_construction,
            expansion_search: config.ef_search,
            multi: false,
        };
        let index = Index::new(&options).ok()?;
        index
            .reserve_capacity_and_threads(capacity.max(INDEX_BATCH), GRAPH_SLOTS)
            .ok()?;
        Some(Self {
            index: RwLock::new(index),
        })
    }

    /// Links in `key`'s vector, replacing the one it had.
    fn add(&self, key: u64, vector: &[f32]) {
        loop {
            let index = self.index.read();
            // Room for every slot's add at once: usearch refuses adds past its capacity.
            if index.size() + GRAPH_SLOTS >= index.capacity() {
                drop(index);
                let index = self.index.write();
                let capacity = index.capacity() * 2;
                if index.size() + GRAPH_SLOTS >= index.capacity()
                    && index
                        .reserve_capacity_and_threads(capacity, GRAPH_SLOTS)
                        .is_err()
                {
                    return; // Out of memory: the key stays out; searches still score it.
                }
                continue;
            }
            if index.contains(key) {
                let _ = index.remove(key);
            }
            // Fails only with every thread slot taken: the key stays out of the graph.
            let _ = index.add(key, vector);
            return;
        }
    }

    fn remove(&self, key: u64) {
        let _ = self.index.read().remove(key);
    }

    /// Up to `count` keys that `admit` passes, nearest first; `None` when the graph cannot
    /// search now (every thread slot taken).
    fn candidates(
        &self,
        query: &[f32],
        count: usize,
        admit: impl Fn(u64) -> bool,
    ) -> Option<Vec<u64>> {
        let index = self.index.read();
        index
            .filtered_search(query, count, admit)
            .ok()
            .map(|m| m.keys)
    }

    fn len(&self) -> usize {
        self.index.read().size()
    }
}

/// Vectors stored contiguously, one row per key, so that a scan streams through memory.
/// A removal moves the last row into the gap.
#[derive(Default)]
struct Rows {
    dims: usize,
    data: Vec<f32>,
    keys: Vec<u64>,
    slots: HashMap<u64, usize>,
}

impl Rows {
    /// Adds or replaces `key`'s vector; false if it is not kept. Every vector of an index
    /// has one length (one model's); the first sets it, and one of another length is not
    /// kept (and replaces none).
    fn insert(&mut self, key: u64, vector: &[f32]) -> bool {
        if self.keys.is_empty() {
            self.dims = vector.len();
        }
        if vector.len() != self.dims {
            self.remove(key);
            return false;
        }
        let d = self.dims;
        match self.slots.get(&key) {
            Some(&slot) => self.data[slot * d..(slot + 1) * d].copy_from_slice(vector),
            None => {
                self.slots.insert(key, self.keys.len());
                self.keys.push(key);
                self.data.extend_from_slice(vector);
            }
        }
        true
    }
    fn remove(&mut self, key: u64) -> bool {
        let Some(slot) = self.slots.remove(&key) else {
            return false;
        };
        let (d, last) = (self.dims, self.keys.len() - 1);
        if slot != last {
            let moved = self.keys[last];
            self.keys[slot] = moved;
            self.data.copy_within(last * d..(last + 1) * d, slot * d);
            self.slots.insert(moved, slot);
        }
        self.keys.pop();
        self.data.truncate(last * d);
        true
    }

    fn get(&self, key: u64) -> Option<&[f32]> {
        let slot = *self.slots.get(&key)?;
        Some(&self.data[slot * self.dims..(slot + 1) * self.dims])
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    /// Every key with its vector, in storage order.
    #[cfg(test)]
    fn iter(&self) -> impl Iterator<Item = (u64, &[f32])> {
        self.keys
            .iter()
            .copied()
            .zip(self.data.chunks_exact(self.dims.max(1)))
    }
}

#[derive(Default)]
struct State {
    vectors: Rows,
    /// Made the first time the index outgrows the exact limit; dropped when it empties.
    graph: Option<Arc<Graph>>,
    /// Keys whose vector is not linked into the graph yet: searches scan them exactly, and
    /// the graph does not propose them.
    pending: HashSet<u64>,
    /// True while the indexer thread runs.
    indexing: bool,
}

impl Debug for HnswIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state.read();
        f.debug_struct("HnswIndex")
            .field("len", &s.vectors.len())
            .field("graph", &s.graph.as_ref().map(|g| g.len()))
            .field("pending", &s.pending.len())
            .finish()
    }
}

impl HnswIndex {
    /// An empty index.
    pub fn new(config: HnswConfig) -> Self {
        Self {
            state: Arc::default(),
            config,
        }
    }

    /// Blocks until every vector pending for the graph is linked in (at once when the index
    /// has no graph).
    pub fn wait_indexed(&self) {
        while self.state.read().indexing {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// True while the indexer links vectors into the graph.
    pub fn is_indexing(&self) -> bool {
        self.state.read().indexing
    }

    /// Number of vectors in the graph (0 without one).
    pub fn graph_len(&self) -> usize {
        self.state.read().graph.as_ref().map_or(0, |g| g.len())
    }

    /// Makes the graph once the index outgrows the exact limit, and starts the indexer
    /// when vectors are pending and it is not running.
    fn schedule(&self, s: &mut State) {
        if s.graph.is_none() {
            if s.vectors.len() <= self.config.exact_limit || s.vectors.dims == 0 {
                return;
            }
            let Some(graph) = Graph::new(s.vectors.dims, &self.config, 2 * s.vectors.len()) else {
                return; // Searches stay exact.
            };
            s.graph = Some(Arc::new(graph));
            s.pending.extend(s.vectors.keys.iter().copied());
        }
        if s.indexing || s.pending.is_empty() {
            return;
        }
        let state = Arc::downgrade(&self.state);
        s.indexing = std::thread::Builder::new()
            .name("statebase-hnsw".into())
            .spawn(move || index_pending(&state))
            .is_ok();
    }
}

/// The indexer: links pending vectors into the graph, a batch at a time on every core,
/// until none is pending or the index is dropped.
fn index_pending(state: &Weak<RwLock<State>>) {
    while let Some(state) = state.upgrade() {
        let (graph, batch) = {
            // Written, not read: deciding to stop must exclude an insert that would see the
            // indexer still running and not start another.
            let mut s = state.write();
            let graph = s.graph.clone();
            let batch: Vec<(u64, Vec<f32>)> = s
                .pending
                .iter()
                .take(INDEX_BATCH)
                .filter_map(|&key| Some((key, s.vectors.get(key)?.to_vec())))
                .collect();
            match graph {
                Some(graph) if !batch.is_empty() => (graph, batch),
                _ => {
                    s.pending.clear();
                    s.indexing = false;
                    return;
                }
            }
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::thread::scope(|scope| {
            for chunk in batch.chunks(batch.len().div_ceil(threads)) {
                let graph = &graph;
                scope.spawn(move || {
                    for (key, vector) in chunk {
                        graph.add(*key, vector);
                    }
                });
            }
        });
        let mut s = state.write();
        for (key, vector) in batch {
            // A vector replaced meanwhile stays pending, to be linked again.
            if s.vectors.get(key) == Some(&vector[..]) {
                s.pending.remove(&key);
            }
        }
    }
}

/// The best `k` of `hits` (any order), best first (ties: the smaller key), kept in a heap
/// of `k` as they stream by: most hits cost one comparison with the worst kept.
pub(crate) fn top(hits: impl IntoIterator<Item = (u64, f32)>, k: usize) -> Vec<(u64, f32)> {
    if k == 0 {
        return Vec::new();
    }
    let mut kept = std::collections::BinaryHeap::with_capacity(k);
    for hit in hits {
        let hit = Worse(hit);
        if kept.len() < k {
            kept.push(hit);
        } else if let Some(mut worst) = kept.peek_mut() {
            if hit < *worst {
                *worst = hit;
            }
        }
    }
    kept.into_sorted_vec().into_iter().map(|h| h.0).collect()
}

/// A hit ordered so that the worse is the greater: a max-heap's top is its worst.
struct Worse((u64, f32));

impl Ord for Worse {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let ((a, x), (b, y)) = (self.0, other.0);
        y.total_cmp(&x).then(a.cmp(&b))
    }
}

impl PartialOrd for Worse {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Worse {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Worse {}

impl VectorIndex for HnswIndex {
    fn insert(&self, key: u64, vector: Vector) {
        self.insert_many(vec![(key, vector)]);
    }

    fn insert_many(&self, vectors: Vec<(u64, Vector)>) {
        let mut s = self.state.write();
        for (key, vector) in vectors {
            if !s.vectors.insert(key, &vector) {
                forget(&mut s, key);
            } else if s.graph.is_some() {
                s.pending.insert(key);
            }
        }
        self.schedule(&mut s);
    }

    fn remove(&self, key: u64) {
        let mut s = self.state.write();
        if s.vectors.remove(key) {
            forget(&mut s, key);
        }
    }

    fn search(&self, query: &[f32], k: usize, filter: &Filter<'_>) -> Vec<(u64, f32)> {
        let s = self.state.read();
        let rows = &s.vectors;
        // Some keys, each looked up; or every row, in storage order.
        let scan = |keys: &mut dyn Iterator<Item = u64>, admit: &dyn Fn(u64) -> bool| {
            let hits = keys
                .filter(|key| admit(*key))
                .filter_map(|key| rows.get(key).map(|v| (key, dot(query, v))));
            top(hits, k)
        };
        let scan_all = || {
            let mut scores = Vec::with_capacity(rows.len());
            ARCH.dispatch(ScoreRows {
                query,
                rows: &rows.data,
                out: &mut scores,
            });
            let hits = rows.keys.iter().copied().zip(scores);
            top(hits.filter(|(key, _)| filter.admits(*key)), k)
        };
        if let (Some(among), Some(n)) = (filter.among, filter.among_len()) {
            if n <= self.config.exact_limit {
                // The keys are among the candidates by construction: only `accept` is left.
                let keys = &mut among.iter().flat_map(|set| set.iter().copied());
                return scan(keys, filter.accept);
            }
        }
        let graph = match &s.graph {
            Some(graph) if rows.len() > self.config.exact_limit => graph,
            _ => return scan_all(),
        };
        // Not a key removed while it was being linked, nor one whose new vector is pending.
        let admit = |key| {
            rows.slots.contains_key(&key)
                && (s.pending.is_empty() || !s.pending.contains(&key))
                && filter.admits(key)
        };
        let Some(linked) = graph.candidates(query, (4 * k).max(RESCORED), admit) else {
            return scan_all();
        };
        let pending = &mut s.pending.iter().copied();
        let mut hits = scan(&mut linked.into_iter(), &|_| true);
        hits.extend(scan(pending, &|key| filter.admits(key)));
        let hits = top(hits, k);
        // A filter that passes few of the graph's vectors can leave its walk short: exact
        // is slower but never misses.
        if hits.len() < k {
            return scan_all();
        }
        hits
    }

    fn score(&self, query: &[f32], key: u64) -> Option<f32> {
        Some(dot(query, self.state.read().vectors.get(key)?))
    }

    fn len(&self) -> usize {
        self.state.read().vectors.len()
    }
}

/// Takes a key the index no longer holds out of the graph and the pending set (the graph
/// goes with the index's last vector: the next may be of another model).
fn forget(s: &mut State, key: u64) {
    s.pending.remove(&key);
    if let Some(graph) = &s.graph {
        graph.remove(key);
    }
    if s.vectors.len() == 0 {
        s.graph = None;
        s.pending.clear();
    }
}

/// The best vector instructions this CPU has (AVX2 and FMA, NEON…), detected once. An
/// operation it dispatches is compiled for each; [`dot_kernel`] inlined into one
/// vectorises with its instructions (a closure would not be inlined: it would run with
/// the build's baseline ones).
static ARCH: std::sync::LazyLock<pulp::Arch> = std::sync::LazyLock::new(pulp::Arch::new);

/// Dot product; cosine similarity for normalised vectors.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    ARCH.dispatch(Dot(a, b))
}

struct Dot<'a>(&'a [f32], &'a [f32]);

impl pulp::WithSimd for Dot<'_> {
    type Output = f32;
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) -> f32 {
        dot_kernel(self.0, self.1)
    }
}

/// The scores of contiguous `rows` (each as long as `query`) against `query`, appended to
/// `out` in row order: one dispatch for a whole scan.
struct ScoreRows<'a> {
    query: &'a [f32],
    rows: &'a [f32],
    out: &'a mut Vec<f32>,
}

impl pulp::WithSimd for ScoreRows<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        for row in self.rows.chunks_exact(self.query.len().max(1)) {
            self.out.push(dot_kernel(self.query, row));
        }
    }
}

/// The dot product's loop, to be inlined into an operation [`ARCH`] dispatches (alone it
/// compiles for the build's baseline instructions only).
#[inline(always)]
fn dot_kernel(a: &[f32], b: &[f32]) -> f32 {
    // 32 independent accumulators: four registers of eight lanes, so that the adds of
    // one chunk do not wait on the previous chunk's.
    const LANES: usize = 32;
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Seeded unit vectors shaped like text embeddings: points of a low-dimensional latent
/// space (32-d, so with real neighbourhood structure) projected into `dims`, plus noise:
/// data for the index's tests and benchmarks (uniform random vectors have no neighbourhoods
/// for a graph to find).
#[cfg(any(test, feature = "testing"))]
pub fn embedding_like(n: usize, dims: usize, seed: u64) -> Vec<Vector> {
    let mut state = seed | 1;
    let mut next = move || {
        // xorshift64*: plenty for test data. Uniform in [-0.5, 0.5).
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f32 / (1u64 << 53) as f32 - 0.5
    };
    const LATENT: usize = 32;
    // The projection depends only on dims, so vectors of every seed share one space.
    let mut proj_state = 0x9e37_79b9_7f4a_7c15u64;
    let mut proj_next = move || {
        proj_state ^= proj_state >> 12;
        proj_state ^= proj_state << 25;
        proj_state ^= proj_state >> 27;
        (proj_state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f32 / (1u64 << 53) as f32 - 0.5
    };
    let projection: Vec<[f32; LATENT]> = (0..dims)
        .map(|_| std::array::from_fn(|_| proj_next()))
        .collect();
    (0..n)
        .map(|_| {
            let z: [f32; LATENT] = std::array::from_fn(|_| next());
            let mut v: Vec<f32> = projection
                .iter()
                .map(|row| row.iter().zip(&z).map(|(a, b)| a * b).sum::<f32>() + 0.1 * next())
                .collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= norm);
            v.into()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact_top(vectors: &[Vector], q: &[f32], k: usize) -> Vec<u64> {
        let hits = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u64, dot(q, v)));
        top(hits, k).into_iter().map(|(i, _)| i).collect()
    }

    /// A removal moves the last row into the gap: every other key keeps its own vector,
    /// and a replaced vector is replaced in place.
    #[test]
    fn rows_keep_each_key_its_vector_through_removals() {
        let vectors = embedding_like(50, 8, 3);
        let mut rows = Rows::default();
        for (i, v) in vectors.iter().enumerate() {
            rows.insert(i as u64, v);
        }
        for gone in [0u64, 49, 17, 17, 30] {
            rows.remove(gone);
        }
        rows.insert(5, &vectors[6]);
        rows.insert(99, &[1.0; 3]); // Another length: not kept.
        assert_eq!(rows.len(), 46);
        for (i, v) in vectors.iter().enumerate() {
            let want = match i {
                0 | 49 | 17 | 30 => None,
                5 => Some(&*vectors[6]),
                _ => Some(&**v),
            };
            assert_eq!(rows.get(i as u64), want, "key {i}");
        }
        assert_eq!(rows.get(99), None);
        let listed: HashSet<u64> = rows.iter().map(|(k, _)| k).collect();
        assert_eq!(listed.len(), 46);
        assert!(rows.iter().all(|(k, v)| rows.get(k) == Some(v)));
        // The dispatched kernel and the scan agree with a plain dot product.
        let plain = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        let q = &vectors[1];
        let mut scores = Vec::new();
        ARCH.dispatch(ScoreRows {
            query: q,
            rows: &rows.data,
            out: &mut scores,
        });
        for ((k, v), s) in rows.iter().zip(scores) {
            assert!((s - plain(q, v)).abs() < 1e-5, "key {k}");
            assert!((dot(q, v) - s).abs() < 1e-6);
        }
    }

    #[test]
    fn small_indexes_are_exact_and_honour_removals_and_filters() {
        let vectors = embedding_like(500, 32, 7);
        let index = HnswIndex::new(HnswConfig::default());
        for (i, v) in vectors.iter().enumerate() {
            index.insert(i as u64, v.clone());
        }
        let q = &vectors[3];
        let got: Vec<u64> = index
            .search(q, 5, &Filter::accepting(&|_| true))
            .iter()
            .map(|h| h.0)
            .collect();
        assert_eq!(got, exact_top(&vectors, q, 5));
        assert_eq!(got[0], 3);
        index.remove(3);
        assert!(index
            .search(q, 5, &Filter::accepting(&|_| true))
            .iter()
            .all(|h| h.0 != 3));
        let odd = index.search(q, 5, &Filter::accepting(&|k| k % 2 == 1));
        assert_eq!(odd.len(), 5);
        assert!(odd.iter().all(|h| h.0 % 2 == 1));
        assert_eq!(index.len(), 499);
    }

    /// A few candidates of a large index are scanned exactly, whatever the graph holds, and
    /// only they are returned.
    #[test]
    fn a_small_candidate_set_of_a_large_index_is_searched_exactly() {
        let vectors = embedding_like(3_000, 32, 11);
        let config = HnswConfig {
            exact_limit: 100,
            ..HnswConfig::default()
        };
        let index = HnswIndex::new(config);
        index.insert_many(
            vectors
                .iter()
                .enumerate()
                .map(|(i, v)| (i as u64, v.clone()))
                .collect(),
        );
        index.wait_indexed();
        let (evens, few): (HashSet<u64>, HashSet<u64>) =
            ((0..60).map(|i| i * 2).collect(), (1000..1030).collect());
        let sets = [&evens, &few];
        let q = &vectors[2_999];
        let filter = Filter {
            among: Some(&sets),
            accept: &|k| k != 1_000,
        };
        let got: Vec<(u64, f32)> = index.search(q, 7, &filter);
        let wanted: Vec<(u64, f32)> = evens
            .iter()
            .chain(&few)
            .filter(|&&k| k != 1_000)
            .map(|&k| (k, dot(q, &vectors[k as usize])))
            .collect();
        assert_eq!(got, top(wanted, 7));
        assert_eq!(index.score(q, 4), Some(dot(q, &vectors[4])));
        index.remove(4);
        assert_eq!(index.score(q, 4), None);
    }

    #[test]
    fn hnsw_recall_at_10_is_at_least_095_on_20000_vectors() {
        let n = 20_000;
        let vectors = embedding_like(n, 384, 42);
        let index = HnswIndex::new(HnswConfig {
            exact_limit: 1_000,
            ..HnswConfig::default()
        });
        let all = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u64, v.clone()));
        index.insert_many(all.collect());
        index.wait_indexed();
        assert_eq!(index.graph_len(), n);
        let queries = embedding_like(200, 384, 4242);
        let mut found = 0;
        for q in &queries {
            let truth: HashSet<u64> = exact_top(&vectors, q, 10).into_iter().collect();
            let got = index.search(q, 10, &Filter::accepting(&|_| true));
            found += got.iter().filter(|h| truth.contains(&h.0)).count();
        }
        let recall = found as f64 / (10 * queries.len()) as f64;
        println!("HNSW recall@10 over {n} vectors: {recall}");
        assert!(recall >= 0.95, "recall@10 = {recall}");
    }

    /// An index dropped while its indexer runs is freed: the indexer holds it only for a
    /// batch (a fraction of a second), and stops, well before the seconds linking all of
    /// it would take.
    #[test]
    fn a_dropped_index_is_freed_while_its_indexer_runs() {
        let index = HnswIndex::new(HnswConfig {
            exact_limit: 100,
            ..HnswConfig::default()
        });
        let all = embedding_like(20_000, 384, 17).into_iter().enumerate();
        index.insert_many(all.map(|(i, v)| (i as u64, v)).collect());
        // Dropped once the indexer is under way (not before it first looks).
        while index.graph_len() == 0 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(index.is_indexing());
        let state = Arc::downgrade(&index.state);
        drop(index);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while state.upgrade().is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "the index is never freed"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// While the indexer links vectors in, and after: what changed is found (or gone) at
    /// the next search, with the exact results.
    #[test]
    fn changes_are_seen_by_the_next_search_while_and_after_the_graph_is_linked() {
        let vectors = embedding_like(3_000, 32, 9);
        let index = HnswIndex::new(HnswConfig {
            exact_limit: 100,
            ..HnswConfig::default()
        });
        let all = |range: std::ops::Range<usize>| {
            range
                .map(|i| (i as u64, vectors[i].clone()))
                .collect::<Vec<_>>()
        };
        index.insert_many(all(0..2_000));
        // Pending vectors are scanned exactly: the first search after the insert is exact.
        let q = &vectors[2_100];
        let exact = |n: usize| exact_top(&vectors[..n], q, 10);
        let ids = |hits: Vec<(u64, f32)>| hits.into_iter().map(|h| h.0).collect::<Vec<_>>();
        assert!(index.is_indexing());
        assert_eq!(
            ids(index.search(q, 10, &Filter::accepting(&|_| true))),
            exact(2_000)
        );
        index.wait_indexed();
        assert_eq!(index.graph_len(), 2_000);
        // Added after the graph: found by the next search.
        index.insert(5_000, vectors[2_500].clone());
        let hit = index.search(&vectors[2_500], 1, &Filter::accepting(&|_| true));
        assert_eq!(hit[0].0, 5_000);
        // Replaced: found by its new vector, and once.
        index.insert(7, vectors[2_600].clone());
        let hits = index.search(&vectors[2_600], 10, &Filter::accepting(&|_| true));
        assert_eq!(hits[0].0, 7);
        assert_eq!(hits.iter().filter(|h| h.0 == 7).count(), 1);
        index.wait_indexed();
        let hits = index.search(&vectors[2_600], 10, &Filter::accepting(&|_| true));
        assert_eq!(hits[0].0, 7);
        assert_eq!(hits.iter().filter(|h| h.0 == 7).count(), 1);
        // Removed: gone from the next search, linked or pending.
        index.remove(10);
        index.insert(6_000, vectors[2_700].clone());
        index.remove(6_000);
        for gone in [(10, &vectors[10]), (6_000, &vectors[2_700])] {
            let hits = index.search(gone.1, 10, &Filter::accepting(&|_| true));
            assert!(hits.iter().all(|h| h.0 != gone.0), "{} found", gone.0);
        }
        // A filter that rejects nearly everything still finds its one match.
        let only = index.search(&vectors[0], 3, &Filter::accepting(&|k| k == 1_999));
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].0, 1_999);
        // Emptied, the index takes vectors of another length (another model's).
        for key in (0..2_000).chain([5_000]) {
            index.remove(key);
        }
        assert_eq!(index.graph_len(), 0);
        let other = embedding_like(300, 16, 5);
        index.insert_many(
            other
                .iter()
                .cloned()
                .enumerate()
                .map(|(i, v)| (i as u64, v))
                .collect(),
        );
        index.wait_indexed();
        assert_eq!(index.graph_len(), 300);
        let hit = index.search(&other[42], 1, &Filter::accepting(&|_| true));
        assert_eq!(hit[0].0, 42);
    }
}
