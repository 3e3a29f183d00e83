//! Retrieval quality: how well memory search finds what a question needs, next to Okapi
//! BM25 (the `bm25` crate) over the same memories in the same run.
//!
//! - **LoCoMo, dev half** (`../shared/data/locomo-dev/locomo-dev.json`, or the file named by
//!   `STATEBASE_LOCOMO`): each dialog turn is a memory of its conversation's session, each
//!   question of categories 1-4 a query; recall@k is the share of its evidence turns among
//!   the top k. Skipped, saying so, when the file is absent.
//! - **Paraphrases** (`paraphrases.rs`): memories and questions that share no keyword, among
//!   distractors: the share found by a default search (threshold 0.7) in its top 3, and the
//!   share that context ranks first.

use serde_json::Value;
use statebase_core::{
    AddMemory, Config, ContextRequest, CreateSession, Embedder, MemoryStore, SearchMemories,
    StateBase,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[path = "paraphrases.rs"]
mod paraphrases;

/// Recall at 1, 5 and 10, and search latencies.
#[derive(Default)]
struct Recall {
    at: [f64; 3],
    questions: usize,
    latencies_us: Vec<f64>,
}

impl Recall {
    const KS: [usize; 3] = [1, 5, 10];

    /// Adds a question whose ranked results are `ranked` and whose evidence is `evidence`.
    fn add(&mut self, ranked: &[&str], evidence: &[String]) {
        for (i, k) in Self::KS.iter().enumerate() {
            let top = &ranked[..ranked.len().min(*k)];
            let found = evidence
                .iter()
                .filter(|e| top.contains(&e.as_str()))
                .count();
            self.at[i] += found as f64 / evidence.len() as f64;
        }
        self.questions += 1;
    }

    fn row(&mut self, name: &str, adds_per_s: Option<f64>) {
        let n = self.questions.max(1) as f64;
        self.latencies_us.sort_by(f64::total_cmp);
        let pick = |q: f64| {
            let l = &self.latencies_us;
            l.get(((l.len() as f64 - 1.0) * q).round() as usize)
                .map_or("-".into(), |v| format!("{v:.0}"))
        };
        println!(
            "{:<52} {:>6.3} {:>6.3} {:>6.3} {:>9} {:>9} {:>12}",
            name,
            self.at[0] / n,
            self.at[1] / n,
            self.at[2] / n,
            pick(0.5),
            pick(0.99),
            adds_per_s.map_or("-".into(), |a| format!("{a:.0}")),
        );
    }
}

fn locomo_path() -> PathBuf {
    std::env::var_os("STATEBASE_LOCOMO").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../shared/data/locomo-dev/locomo-dev.json")
        },
        PathBuf::from,
    )
}

/// A conversation's dialog turns (id, "Speaker: text") and questions (text, evidence ids).
type Conversation = (Vec<(String, String)>, Vec<(String, Vec<String>)>);

fn conversations(data: &Value) -> Vec<Conversation> {
    let mut out = Vec::new();
    for sample in data.as_array().into_iter().flatten() {
        let c = &sample["conversation"];
        let mut turns = Vec::new();
        for n in 1.. {
            let Some(session) = c.get(format!("session_{n}")).and_then(Value::as_array) else {
                break;
            };
            for t in session {
                let text = format!(
                    "{}: {}",
                    t["speaker"].as_str().unwrap_or_default(),
                    t["text"].as_str().unwrap_or_default()
                );
                turns.push((t["dia_id"].as_str().unwrap_or_default().to_owned(), text));
            }
        }
        let questions = sample["qa"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|q| (1..=4).contains(&q["category"].as_u64().unwrap_or(0)))
            .filter_map(|q| {
                let evidence: Vec<String> = q["evidence"]
                    .as_array()?
                    .iter()
                    .filter_map(|e| e.as_str().map(str::to_owned))
                    .collect();
                let question = q["question"].as_str()?.to_owned();
                (!evidence.is_empty()).then_some((question, evidence))
            })
            .collect();
        out.push((turns, questions));
    }
    out
}

/// The LoCoMo table for statebase's search with `config`'s embedder, and BM25.
async fn locomo(config: &Config, embedder_name: &str) {
    let path = locomo_path();
    let Ok(text) = std::fs::read_to_string(&path) else {
        println!(
            "retrieval: LoCoMo skipped: no {} (set STATEBASE_LOCOMO)",
            path.display()
        );
        return;
    };
    let data: Value = serde_json::from_str(&text).expect("LoCoMo is JSON");
    let (mut ours, mut bm25) = (Recall::default(), Recall::default());
    let (mut added, mut adding) = (0usize, std::time::Duration::ZERO);
    for (turns, questions) in conversations(&data) {
        let sb = StateBase::with_config(MemoryStore::new(), config.clone());
        let s = sb
            .create_session(CreateSession::new("locomo"))
            .await
            .unwrap();
        let mut dia = HashMap::new();
        let started = Instant::now();
        for (id, text) in &turns {
            let m = sb.add_memory(AddMemory::new(&s.id, text)).await.unwrap();
            dia.insert(m.id, id.as_str());
        }
        adding += started.elapsed();
        added += turns.len();
        let contents: Vec<&str> = turns.iter().map(|(_, t)| t.as_str()).collect();
        let engine =
            bm25::SearchEngineBuilder::<u32>::with_corpus(bm25::Language::English, contents)
                .build();
        for (question, evidence) in &questions {
            let q = SearchMemories {
                session_id: Some(s.id.clone()),
                limit: Some(10),
                threshold: Some(0.0),
                ..SearchMemories::new(question)
            };
            let started = Instant::now();
            let hits = sb.search_memories(q).await.unwrap();
            ours.latencies_us
                .push(started.elapsed().as_secs_f64() * 1e6);
            let ranked: Vec<&str> = hits.iter().map(|h| dia[&h.id]).collect();
            ours.add(&ranked, evidence);
            let started = Instant::now();
            let results = engine.search(question, 10);
            bm25.latencies_us
                .push(started.elapsed().as_secs_f64() * 1e6);
            let ranked: Vec<&str> = results
                .iter()
                .map(|r| turns[r.document.id as usize].0.as_str())
                .collect();
            bm25.add(&ranked, evidence);
        }
    }
    println!(
        "LoCoMo dev half: {added} memories, {} questions (categories 1-4)",
        ours.questions
    );
    header();
    let adds = added as f64 / adding.as_secs_f64();
    ours.row(
        &format!("statebase hybrid, {embedder_name} embedder"),
        Some(adds),
    );
    bm25.row("Okapi BM25 (bm25 crate), same memories", None);
}

fn header() {
    println!(
        "{:<52} {:>6} {:>6} {:>6} {:>9} {:>9} {:>12}",
        "", "R@1", "R@5", "R@10", "p50 µs", "p99 µs", "adds/s"
    );
}

/// The paraphrase table: found at the default threshold in the top 3, ranked first by
/// context. Panics if a pair shares a keyword (then it tests keywords, not meaning).
async fn paraphrase(config: &Config, embedder_name: &str) {
    let sb = StateBase::with_config(MemoryStore::new(), config.clone());
    let s = sb
        .create_session(CreateSession::new("paraphrases"))
        .await
        .unwrap();
    let mut ids = Vec::new();
    for (memory, _) in paraphrases::PAIRS {
        ids.push(
            sb.add_memory(AddMemory::new(&s.id, memory))
                .await
                .unwrap()
                .id,
        );
    }
    for distractor in paraphrases::DISTRACTORS {
        sb.add_memory(AddMemory::new(&s.id, distractor))
            .await
            .unwrap();
    }
    let (mut found, mut first) = (0, 0);
    for ((memory, question), id) in paraphrases::PAIRS.iter().zip(&ids) {
        let all = SearchMemories {
            session_id: Some(s.id.clone()),
            limit: Some(100),
            threshold: Some(0.0),
            ..SearchMemories::new(question)
        };
        let shared = sb.search_memories(all).await.unwrap();
        let keyword = shared
            .iter()
            .find(|h| h.id == *id)
            .map_or(0.0, |h| h.keyword_score);
        assert_eq!(keyword, 0.0, "{memory:?} and {question:?} share a keyword");
        let default = SearchMemories {
            session_id: Some(s.id.clone()),
            limit: Some(3),
            ..SearchMemories::new(question)
        };
        let hits = sb.search_memories(default).await.unwrap();
        found += usize::from(hits.iter().any(|h| h.id == *id));
        let context = ContextRequest {
            query: Some((*question).to_owned()),
            ..ContextRequest::default()
        };
        let c = sb.context(&s.id, context).await.unwrap();
        first += usize::from(c.memories.first().is_some_and(|m| m.id == *id));
    }
    let n = paraphrases::PAIRS.len();
    println!(
        "Paraphrases: {n} memory/question pairs sharing no keyword, {} distractors",
        paraphrases::DISTRACTORS.len()
    );
    println!(
        "{:<52} {:>22} {:>22}",
        "", "found (0.7, top 3)", "first in context"
    );
    println!(
        "{:<52} {:>15} ({:>4.0}%) {:>15} ({:>4.0}%)",
        format!("statebase, {embedder_name} embedder"),
        format!("{found}/{n}"),
        100.0 * found as f64 / n as f64,
        format!("{first}/{n}"),
        100.0 * first as f64 / n as f64,
    );
}

/// Both tables, for each embedder: the built-in static model and `HashEmbedder`.
pub async fn run() {
    let embedders: [Arc<dyn Embedder>; 2] = [
        statebase_embed::StaticEmbedder::builtin(),
        Arc::new(statebase_core::HashEmbedder::new()),
    ];
    for embedder in embedders {
        let name = embedder.model_id().to_owned();
        let config = Config {
            embedder,
            ..Config::default()
        };
        locomo(&config, &name).await;
        println!();
        paraphrase(&config, &name).await;
        println!();
    }
}
