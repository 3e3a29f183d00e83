//! Text embeddings: the [`Embedder`] trait and a built-in one that needs no model files.

use super::text::words;
use crate::error::Result;
use async_trait::async_trait;
use std::fmt::Debug;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Turns texts into vectors for semantic memory search.
///
/// Implement it to plug in an embedding API or a local model. Statebase records
/// [`model_id`](Embedder::model_id) with every vector; after a change of model,
/// [`StateBase::reembed_memories`](crate::StateBase::reembed_memories) re-embeds stored
/// memories (until then search compares them by keywords only).
#[async_trait]
pub trait Embedder: Send + Sync + Debug + 'static {
    /// Names the model and its version; vectors of different ids are never compared.
    fn model_id(&self) -> &str;

    /// The length of every vector returned.
    fn dimensions(&self) -> usize;

    /// One vector per text, in order. Vectors should be L2-normalised (search scores are
    /// dot products, i.e. cosine similarity).
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>>;
}

/// Deterministic embeddings from hashed word, word-pair and character-trigram features.
///
/// No network and no model files; strong on word and sub-word overlap (shared words,
/// inflections, typos), blind to synonyms. Each feature is hashed (xxh3) to a dimension and
/// a sign; counts are damped with `ln(1 + n)`; the vector is L2-normalised.
#[derive(Debug, Clone)]
pub struct HashEmbedder {
    dimensions: usize,
    model_id: String,
}

impl HashEmbedder {
    /// The default: 384 dimensions.
    pub fn new() -> Self {
        Self::with_dimensions(384)
    }

    /// Vectors of `dimensions` (at least 1).
    pub fn with_dimensions(dimensions: usize) -> Self {
        let dimensions = dimensions.max(1);
        Self {
            dimensions,
            model_id: format!("statebase-hash-v1-{dimensions}"),
        }
    }

    /// Embeds one text, synchronously.
    pub fn embed_one(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0f32; self.dimensions];
        let words = words(text);
        let mut add = |feature: &str, kind: u64, weight: f32| {
            let h = xxh3_64_with_seed(feature.as_bytes(), kind);
            let dim = (h % self.dimensions as u64) as usize;
            let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
            v[dim] += sign * weight;
        };
        let mut pair = String::new();
        let mut padded = Vec::new();
        let mut tri = String::new();
        for (i, w) in words.iter().enumerate() {
            add(w, 1, 1.0);
            if let Some(next) = words.get(i + 1) {
                pair.clear();
                pair.push_str(w);
                pair.push(' ');
                pair.push_str(next);
                add(&pair, 2, 0.5);
            }
            padded.clear();
            padded.push('#');
            padded.extend(w.chars());
            padded.push('#');
            for window in padded.windows(3) {
                tri.clear();
                tri.extend(window);
                add(&tri, 3, 0.4);
            }
        }
        // Damp repeated features, then normalise.
        for x in v.iter_mut() {
            *x = x.signum() * x.abs().ln_1p();
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
        v
    }
}

impl Default for HashEmbedder {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Embedder for HashEmbedder {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn dimensions(&self) -> usize {
        self.dimensions
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        Ok(texts.iter().map(|t| self.embed_one(t)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::super::vector::dot;
    use super::*;

    #[test]
    fn vectors_are_deterministic_normalised_and_overlap_sensitive() {
        let e = HashEmbedder::new();
        let a = e.embed_one("The user prefers dark mode in the editor");
        assert_eq!(a, e.embed_one("The user prefers dark mode in the editor"));
        assert_eq!(a.len(), 384);
        assert!((dot(&a, &a) - 1.0).abs() < 1e-5);
        let near = e.embed_one("user prefers the dark mode");
        let typo = e.embed_one("usr prefers drak mode");
        let far = e.embed_one("Shipping address is 12 Baker Street, London");
        assert!(dot(&a, &near) > 0.6, "{}", dot(&a, &near));
        assert!(dot(&a, &typo) > dot(&a, &far));
        assert!(dot(&a, &far) < 0.2, "{}", dot(&a, &far));
        assert!(e.embed_one("").iter().all(|x| *x == 0.0));
    }
}
