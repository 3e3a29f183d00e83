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

    /// The vector of a search's query. A search waits for it, so a remote embedder should
    /// answer it fast or fail (the search then goes by keywords): one try, a short
    /// timeout. The default embeds it as one text.
    async fn embed_query(&self, text: &str) -> Result<Vec<f32>> {
        let mut vectors = self.embed(&[text.to_owned()]).await?;
        vectors
            .pop()
            .ok_or_else(|| crate::Error::backend(format!("{} returned no vector", self.model_id())))
    }

    /// How this model's raw cosine similarities map to relevance scores. The default,
    /// [`Calibration::RAW`], takes the cosine as it is.
    fn calibration(&self) -> Calibration {
        Calibration::RAW
    }

    /// Whether a memory's add or change waits for its vector: true (the default) for a
    /// model in process, which answers in microseconds to milliseconds. A remote service
    /// answers false: writes then store memories with their vectors pending, searchable by
    /// keywords at once, and [`StateBase::embed_pending`](crate::StateBase::embed_pending)
    /// embeds them in batches. Either way an embedder error never fails a write.
    fn embeds_on_write(&self) -> bool {
        true
    }
}

/// Maps a model's raw cosine similarity to a relevance score on one scale for every model:
/// 0.7 (the SDKs' default threshold) is where a memory becomes relevant to a query.
///
/// Each model's cosines live in a range of their own (a sentence model rates unrelated
/// sentences 0.1-0.3 and paraphrases 0.25-0.6), so the score is a logistic curve in the
/// cosine through two anchors measured for the model: `threshold_cosine`, the cosine that
/// 90% of unrelated pairs stay below, scores 0.7, and `relevant_cosine`, the median cosine
/// of a relevant pair, scores 0.9. The curve never flattens, so closer stays higher.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    /// The cosine scored 0.5 and the curve's width (`None`: the score is the cosine).
    logistic: Option<(f32, f32)>,
}

impl Calibration {
    /// The cosine is the score (clamped to 0..=1).
    pub const RAW: Self = Self { logistic: None };

    /// The cosine `threshold_cosine` scores 0.7 and `relevant_cosine` (greater) 0.9.
    pub fn new(threshold_cosine: f32, relevant_cosine: f32) -> Self {
        assert!(
            relevant_cosine > threshold_cosine,
            "a relevant pair's cosine must be above the threshold's"
        );
        let logit = |p: f32| (p / (1.0 - p)).ln();
        let width = (relevant_cosine - threshold_cosine) / (logit(0.9) - logit(0.7));
        Self {
            logistic: Some((threshold_cosine - logit(0.7) * width, width)),
        }
    }

    /// Context raises `drift_warning` when the memories it found average below this score:
    /// [`DRIFT_THRESHOLD`](crate::DRIFT_THRESHOLD) for raw cosines, 0.6 on the calibrated
    /// scale (where a typical unrelated pair scores 0.5-0.6).
    pub fn drift_threshold(&self) -> f32 {
        match self.logistic {
            None => crate::DRIFT_THRESHOLD,
            Some(_) => 0.6,
        }
    }

    /// The relevance score of a raw cosine similarity, in 0..=1.
    pub fn score(&self, cosine: f32) -> f32 {
        match self.logistic {
            None => cosine.clamp(0.0, 1.0),
            Some((middle, width)) => 1.0 / (1.0 + (-(cosine - middle) / width).exp()),
        }
    }
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

/// [`HashEmbedder`] behind a switch: while [down](Self::set_down) every
/// call fails, as a remote embedding service that is unreachable; it can also play a remote
/// one that [does not embed on write](crate::Embedder::embeds_on_write).
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Default)]
pub struct FlakyEmbedder {
    inner: HashEmbedder,
    down: std::sync::atomic::AtomicBool,
    remote: bool,
}

#[cfg(any(test, feature = "testing"))]
impl FlakyEmbedder {
    /// One that embeds on write (while up).
    pub fn new() -> Self {
        Self::default()
    }

    /// One that never embeds on write, as a remote service.
    pub fn remote() -> Self {
        Self {
            remote: true,
            ..Self::default()
        }
    }

    /// Makes every call fail (`true`) or work again.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(any(test, feature = "testing"))]
#[async_trait]
impl Embedder for FlakyEmbedder {
    fn model_id(&self) -> &str {
        self.inner.model_id()
    }
    fn dimensions(&self) -> usize {
        self.inner.dimensions()
    }
    async fn embed(&self, texts: &[String]) -> crate::Result<Vec<Vec<f32>>> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(crate::Error::backend("the embedding service is down"));
        }
        self.inner.embed(texts).await
    }
    fn embeds_on_write(&self) -> bool {
        !self.remote
    }
}

#[cfg(test)]
mod tests {
    use super::super::vector::dot;
    use super::*;

    #[test]
    fn calibration_puts_the_anchors_at_07_and_09_and_keeps_order_strictly() {
        assert_eq!(Calibration::RAW.score(0.42), 0.42);
        assert_eq!(Calibration::RAW.score(-0.3), 0.0);
        let c = Calibration::new(0.3, 0.45);
        assert!((c.score(0.3) - 0.7).abs() < 1e-6);
        assert!((c.score(0.45) - 0.9).abs() < 1e-6);
        let scores: Vec<f32> = (-10..=10).map(|i| c.score(i as f32 / 10.0)).collect();
        assert!(scores.windows(2).all(|w| w[0] < w[1]), "{scores:?}");
        assert!(scores[0] >= 0.0 && scores[20] <= 1.0, "{scores:?}");
    }

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
