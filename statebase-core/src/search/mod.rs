//! Memory search: embedders, the keyword text rules, vector indexes, and the in-process
//! search index over a store's memories: per tenant, loaded from the store on
//! first use, then kept current by every memory write of this process.
//!
//! Scoring is hybrid. A memory's `vector_score` is the cosine similarity of its vector and
//! the query's; its `keyword_score` is the share of the query's keywords (words less
//! stopwords) that it contains. Its `score` is the higher of the two, so a memory that
//! contains every keyword of the query scores 1 and is never lost to a low vector score.

pub mod embed;
mod text;
pub mod vector;

use crate::error::Result;
use crate::model::{Memory, MemoryHit};
use crate::store::{MemoryRecord, MemorySearch, ScoredMemory, SearchScope, Store};
use embed::Embedder;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
pub use text::keywords;
use tokio::sync::RwLock;
use vector::{Filter, Vector, VectorIndex};

/// Makes the vector index of one tenant.
#[derive(Clone)]
pub struct IndexFactory(Arc<dyn Fn() -> Box<dyn VectorIndex> + Send + Sync>);

impl IndexFactory {
    /// A factory from a closure.
    pub fn new(make: impl Fn() -> Box<dyn VectorIndex> + Send + Sync + 'static) -> Self {
        Self(Arc::new(make))
    }

    fn make(&self) -> Box<dyn VectorIndex> {
        (self.0)()
    }
}

impl fmt::Debug for IndexFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IndexFactory")
    }
}

/// A memory as the search keeps it: the record a hit answers with (its vector lives in the
/// vector index), and its keywords.
struct Entry {
    memory: Memory,
    keywords: Vec<String>,
}

/// One tenant's memories as the search sees them.
struct TenantIndex {
    next_key: u64,
    keys: HashMap<String, u64>,
    entries: HashMap<u64, Entry>,
    by_session: HashMap<String, HashSet<u64>>,
    by_user: HashMap<String, HashSet<u64>>,
    user_level: HashMap<String, HashSet<u64>>,
    by_keyword: HashMap<String, HashSet<u64>>,
    vectors: Box<dyn VectorIndex>,
}

fn unlink(map: &mut HashMap<String, HashSet<u64>>, name: &str, key: u64) {
    if let Some(set) = map.get_mut(name) {
        set.remove(&key);
        if set.is_empty() {
            map.remove(name);
        }
    }
}

impl TenantIndex {
    fn new(vectors: Box<dyn VectorIndex>) -> Self {
        Self {
            next_key: 0,
            keys: HashMap::new(),
            entries: HashMap::new(),
            by_session: HashMap::new(),
            by_user: HashMap::new(),
            user_level: HashMap::new(),
            by_keyword: HashMap::new(),
            vectors,
        }
    }

    /// Adds (or replaces) a memory; returns its vector for a bulk insert, when `bulk`.
    fn upsert(&mut self, record: &MemoryRecord, model: &str, bulk: bool) -> Option<(u64, Vector)> {
        let m = &record.memory;
        self.remove(&m.id);
        let key = self.next_key;
        self.next_key += 1;
        // A vector of another model is not comparable with the query's: keyword-only.
        let vector: Option<Vector> = match (&record.embedding, &m.embedding_model) {
            (Some(v), Some(made_by)) if made_by == model => Some(v.as_slice().into()),
            _ => None,
        };
        let entry = Entry {
            memory: m.clone(),
            keywords: keywords(&m.content),
        };
        if let Some(s) = &m.session_id {
            self.by_session.entry(s.clone()).or_default().insert(key);
        }
        if let Some(u) = &m.user_id {
            self.by_user.entry(u.clone()).or_default().insert(key);
            if m.session_id.is_none() {
                self.user_level.entry(u.clone()).or_default().insert(key);
            }
        }
        for k in &entry.keywords {
            self.by_keyword.entry(k.clone()).or_default().insert(key);
        }
        self.keys.insert(m.id.clone(), key);
        self.entries.insert(key, entry);
        let vector = vector.map(|v| (key, v));
        match vector {
            Some((key, v)) if !bulk => {
                self.vectors.insert(key, v);
                None
            }
            other => other,
        }
    }

    fn remove(&mut self, id: &str) {
        let Some(key) = self.keys.remove(id) else {
            return;
        };
        let Some(entry) = self.entries.remove(&key) else {
            return;
        };
        let m = &entry.memory;
        if let Some(s) = &m.session_id {
            unlink(&mut self.by_session, s, key);
        }
        if let Some(u) = &m.user_id {
            unlink(&mut self.by_user, u, key);
            unlink(&mut self.user_level, u, key);
        }
        for k in &entry.keywords {
            unlink(&mut self.by_keyword, k, key);
        }
        self.vectors.remove(key);
    }

    fn remove_session(&mut self, session_id: &str) {
        let keys: Vec<u64> = self
            .by_session
            .get(session_id)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        for key in keys {
            if let Some(id) = self.entries.get(&key).map(|e| e.memory.id.clone()) {
                self.remove(&id);
            }
        }
    }

    /// The candidate keys of a scope, as disjoint sets borrowed from the postings (no copy
    /// on the query path); `None` for the whole tenant.
    fn candidates(&self, scope: &SearchScope) -> Option<Candidates<'_>> {
        let sets = match scope {
            SearchScope::Tenant => return None,
            SearchScope::Session(s) => vec![self.by_session.get(s)],
            SearchScope::User(u) => vec![self.by_user.get(u)],
            // A session's memories and user-level ones (no session) never overlap.
            SearchScope::SessionAndUserLevel(s, user) => {
                vec![
                    self.by_session.get(s),
                    user.as_ref().and_then(|u| self.user_level.get(u)),
                ]
            }
        };
        Some(Candidates(sets.into_iter().flatten().collect()))
    }

    fn search(&self, q: &MemorySearch) -> Vec<MemoryHit> {
        let candidates = self.candidates(&q.scope);
        // Every key of the candidates and of the vector index is an entry's.
        let unfiltered = q.types.is_empty() && q.tags.is_empty();
        let filters = |key: u64| {
            unfiltered
                || self.entries.get(&key).is_some_and(|e| {
                    let m = &e.memory;
                    (q.types.is_empty() || q.types.contains(&m.memory_type))
                        && (q.tags.is_empty() || q.tags.iter().any(|t| m.tags.contains(t)))
                })
        };
        let filter = Filter {
            among: candidates.as_ref().map(|c| c.0.as_slice()),
            accept: &filters,
        };
        let mut scores: HashMap<u64, (f32, f32)> = HashMap::new();
        let mut vector_ceiling = 0f32;
        if let Some(qv) = &q.vector {
            let nearest = self.vectors.search(qv, q.limit, &filter);
            vector_ceiling = q.vector_ceiling(nearest.iter().map(|n| n.1));
            for (key, s) in nearest {
                scores.insert(key, (s, 0.0));
            }
        }
        let words = &q.keywords;
        if !words.is_empty() {
            let mut counts: HashMap<u64, usize> = HashMap::new();
            for w in words {
                for key in self.by_keyword.get(w).into_iter().flatten() {
                    *counts.entry(*key).or_default() += 1;
                }
            }
            for (key, slot) in scores.iter_mut() {
                slot.1 = counts.get(key).map_or(0.0, |&n| q.keyword_share(n));
            }
            // The rest, most keywords first. A memory outside the vector top-`limit` has a
            // vector score no higher than theirs: stop once the best score such a memory
            // could have with the share can't beat the current `limit`-th best score.
            let mut by_count: Vec<Vec<u64>> = vec![Vec::new(); words.len() + 1];
            for (key, n) in counts {
                if !scores.contains_key(&key) {
                    by_count[n].push(key);
                }
            }
            for n in (1..=words.len()).rev() {
                let s = q.keyword_share(n);
                let best = scores.values().map(|(v, k)| q.score(*v, *k));
                let ceiling = q.score(vector_ceiling, s);
                if ceiling < q.threshold || ceiling <= q.bar(best) {
                    break;
                }
                for &key in &by_count[n] {
                    if !filter.admits(key) {
                        continue;
                    }
                    let vs = q.vector.as_ref().and_then(|qv| self.vectors.score(qv, key));
                    scores.insert(key, (vs.unwrap_or(0.0), s));
                }
            }
        }
        let scored = scores
            .into_iter()
            .filter_map(|(key, (vector_score, keyword_score))| {
                Some((vector_score, keyword_score, &self.entries.get(&key)?.memory))
            });
        rank(scored, q)
    }
}

/// The hits of a search, from its candidates with their vector and keyword scores: the
/// best `limit` of those whose [`score`](MemorySearch::score) reaches the threshold, best
/// first (ties: the higher vector score, then the smaller id). What every search ranks
/// with, in process or in a store.
pub(crate) fn rank<'a>(
    scored: impl Iterator<Item = (f32, f32, &'a Memory)>,
    q: &MemorySearch,
) -> Vec<MemoryHit> {
    let mut hits: Vec<(f32, f32, f32, &Memory)> = scored
        .filter_map(|(vector_score, keyword_score, m)| {
            let score = q.score(vector_score, keyword_score);
            (score >= q.threshold).then_some((score, vector_score, keyword_score, m))
        })
        .collect();
    hits.sort_unstable_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(b.1.total_cmp(&a.1))
            .then_with(|| a.3.id.cmp(&b.3.id))
    });
    hits.truncate(q.limit);
    hits.into_iter()
        .map(|(score, vector_score, keyword_score, m)| {
            MemoryHit::of(m.clone(), score, vector_score, keyword_score)
        })
        .collect()
}

/// [`rank`] of what a store's search found.
pub(crate) fn rank_found(found: &[ScoredMemory], q: &MemorySearch) -> Vec<MemoryHit> {
    let scored = found
        .iter()
        .map(|f| (f.vector_score, f.keyword_score, &f.memory));
    rank(scored, q)
}

/// Disjoint key sets whose union is a query's candidates.
struct Candidates<'a>(Vec<&'a HashSet<u64>>);

type Slot = Arc<RwLock<Option<TenantIndex>>>;

/// Every tenant's index, each loaded on first use.
pub(crate) struct Indexes {
    embedder: Arc<dyn Embedder>,
    factory: IndexFactory,
    tenants: Mutex<HashMap<String, Slot>>,
}

impl fmt::Debug for Indexes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Indexes")
            .field("embedder", &self.embedder.model_id())
            .field("tenants", &self.tenants.lock().len())
            .finish()
    }
}

/// Memories read per store call while loading an index.
pub(crate) const LOAD_PAGE: usize = 1_000;

impl Indexes {
    pub fn new(embedder: Arc<dyn Embedder>, factory: IndexFactory) -> Self {
        Self {
            embedder,
            factory,
            tenants: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, tenant: &str) -> Slot {
        self.tenants
            .lock()
            .entry(tenant.to_owned())
            .or_default()
            .clone()
    }

    /// Runs `f` on the tenant's index if it is loaded; a write of a memory that the next
    /// load reads from the store anyway needs nothing more.
    pub async fn update(&self, tenant: &str, f: impl FnOnce(&mut TenantIndexHandle<'_>)) {
        let slot = self.slot(tenant);
        let mut guard = slot.write().await;
        if let Some(index) = guard.as_mut() {
            f(&mut TenantIndexHandle {
                index,
                model: self.embedder.model_id(),
            });
        }
    }

    /// Drops the tenant's index, if loaded: the next search loads it from the store.
    pub async fn forget(&self, tenant: &str) {
        *self.slot(tenant).write().await = None;
    }

    /// Searches the tenant's index, loading it from the store first if needed.
    pub async fn search<S: Store + ?Sized>(
        &self,
        store: &S,
        tenant: &str,
        q: &MemorySearch,
    ) -> Result<Vec<MemoryHit>> {
        let slot = self.slot(tenant);
        {
            let guard = slot.read().await;
            if let Some(index) = guard.as_ref() {
                return Ok(index.search(q));
            }
        }
        let mut guard = slot.write().await;
        if guard.is_none() {
            *guard = Some(self.load(store, tenant).await?);
        }
        let index = guard.as_ref().map(|i| i.search(q)).unwrap_or_default();
        Ok(index)
    }

    /// Reads every memory of the tenant and builds the index; it writes nothing (vectors of
    /// another model are left to [`StateBase::reembed_memories`](crate::StateBase::reembed_memories)).
    /// Runs under the tenant's write lock, so memory writes that commit meanwhile wait and
    /// are applied after it.
    async fn load<S: Store + ?Sized>(&self, store: &S, tenant: &str) -> Result<TenantIndex> {
        let model = self.embedder.model_id().to_owned();
        let mut index = TenantIndex::new(self.factory.make());
        let mut vectors = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = store
                .scan_memories(tenant, after.as_deref(), LOAD_PAGE)
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.memory.id.clone());
            let done = page.len() < LOAD_PAGE;
            for record in &page {
                vectors.extend(index.upsert(record, &model, true));
            }
            if done {
                break;
            }
        }
        index.vectors.insert_many(vectors);
        Ok(index)
    }
}

/// A loaded tenant index, open for writing.
pub(crate) struct TenantIndexHandle<'a> {
    index: &'a mut TenantIndex,
    model: &'a str,
}

impl TenantIndexHandle<'_> {
    pub fn upsert(&mut self, record: &MemoryRecord) {
        self.index.upsert(record, self.model, false);
    }

    /// Upserts `record` if the index holds it at that version or an older one: not if a
    /// newer write or a delete got there first.
    pub fn refresh(&mut self, record: &MemoryRecord) {
        let m = &record.memory;
        let indexed = self
            .index
            .keys
            .get(&m.id)
            .and_then(|k| self.index.entries.get(k));
        if indexed.is_some_and(|e| e.memory.version <= m.version) {
            self.index.upsert(record, self.model, false);
        }
    }

    pub fn remove(&mut self, id: &str) {
        self.index.remove(id);
    }

    pub fn remove_session(&mut self, session_id: &str) {
        self.index.remove_session(session_id);
    }
}
