//! Measures where HNSW search starts beating an exact scan (1k to 30k vectors), to choose
//! `HnswConfig::exact_limit`. Vectors are `HashEmbedder` embeddings of synthetic sentences.
//!
//! Run with `cargo run --release -p statebase-examples --bin index_crossover`.

use statebase_core::search::vector::Filter;
use statebase_core::{HashEmbedder, HnswConfig, HnswIndex, VectorIndex};
use std::sync::Arc;
use std::time::Instant;

#[path = "corpus.rs"]
mod corpus;
use corpus::sentence;

fn median_micros(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    let embedder = HashEmbedder::new();
    let queries: Vec<Vec<f32>> = (0..200)
        .map(|i| embedder.embed_one(&sentence(1_000_000 + i)))
        .collect();
    println!(
        "{:>8} {:>12} {:>12} {:>8} {:>10}",
        "vectors", "exact µs", "hnsw µs", "ratio", "recall@10"
    );
    for n in [1_000u64, 5_000, 10_000, 20_000, 30_000] {
        let exact = HnswIndex::new(HnswConfig {
            exact_limit: usize::MAX,
            ..HnswConfig::default()
        });
        let hnsw = HnswIndex::new(HnswConfig {
            exact_limit: 0,
            ..HnswConfig::default()
        });
        let vectors: Vec<(u64, Arc<[f32]>)> = (0..n)
            .map(|i| (i, embedder.embed_one(&sentence(i)).into()))
            .collect();
        exact.insert_many(vectors.clone());
        hnsw.insert_many(vectors);
        hnsw.wait_indexed();
        let time = |index: &HnswIndex| -> (f64, Vec<Vec<u64>>) {
            let mut samples = Vec::new();
            let mut results = Vec::new();
            for q in &queries {
                let start = Instant::now();
                let hits = index.search(q, 10, &Filter::accepting(&|_| true));
                samples.push(start.elapsed().as_secs_f64() * 1e6);
                results.push(hits.into_iter().map(|h| h.0).collect());
            }
            (median_micros(samples), results)
        };
        let (exact_us, truth) = time(&exact);
        let (hnsw_us, got) = time(&hnsw);
        let found: usize = truth
            .iter()
            .zip(&got)
            .map(|(t, g)| g.iter().filter(|k| t.contains(k)).count())
            .sum();
        let recall = found as f64 / truth.iter().map(Vec::len).sum::<usize>() as f64;
        println!(
            "{n:>8} {exact_us:>12.1} {hnsw_us:>12.1} {:>8.2} {recall:>10.3}",
            exact_us / hnsw_us
        );
    }
}
