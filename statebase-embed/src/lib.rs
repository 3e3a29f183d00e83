//! Embedders for statebase's semantic memory search.
//!
//! [`StaticEmbedder::builtin`] is a static embedding model distilled from
//! all-MiniLM-L6-v2 (see `model/distill.py`): one vector per vocabulary token, weighted so
//! that frequent words count little; a text's vector is the normalised mean of its tokens'.
//! It finds memories by meaning ("prefers email" for "how should we contact them?") where
//! [`HashEmbedder`](statebase_core::HashEmbedder) only matches words, and embeds a sentence
//! in microseconds, in process, with no model files at run time: the table (12 MB) is
//! built into the binary.

mod openai;

pub use openai::{OpenAiEmbedder, OpenAiOptions};

use async_trait::async_trait;
use serde::Deserialize;
use statebase_core::{Calibration, Embedder, Error, Result};
use std::sync::{Arc, LazyLock};
use tokenizers::Tokenizer;

/// The built-in model's files, built into the binary.
const TABLE: &[u8] = include_bytes!("../model/minilm-l6-static.i8");
const TOKENIZER: &[u8] = include_bytes!("../model/tokenizer.json");
const MODEL: &str = include_str!("../model/model.json");

/// A static embedding model: a table of token vectors and the tokenizer that indexes it.
///
/// The table file is little-endian: the row and column counts (`u32` each), one `f32`
/// scale per row, then the rows as `i8` (a row's values are its bytes times its scale).
pub struct StaticEmbedder {
    model_id: String,
    tokenizer: Tokenizer,
    dimensions: usize,
    scales: Vec<f32>,
    rows: &'static [u8],
    calibration: Calibration,
}

/// What `model.json` says of the table beside it.
#[derive(Deserialize)]
struct ModelCard {
    model_id: String,
    calibration: Anchors,
}

#[derive(Deserialize)]
struct Anchors {
    threshold_cosine: f32,
    relevant_cosine: f32,
}

impl StaticEmbedder {
    /// The built-in model (384 dimensions), loaded once per process and shared.
    pub fn builtin() -> Arc<Self> {
        static BUILTIN: LazyLock<Arc<StaticEmbedder>> = LazyLock::new(|| {
            Arc::new(
                StaticEmbedder::from_parts(TABLE, TOKENIZER, MODEL)
                    .expect("the built-in model's files are valid"),
            )
        });
        BUILTIN.clone()
    }

    /// A model from its table, `tokenizer.json` and `model.json` (as in this crate's
    /// `model/` folder).
    pub fn from_parts(table: &'static [u8], tokenizer: &[u8], card: &str) -> Result<Self> {
        let bad = |why: String| Error::backend(std::io::Error::other(why));
        let card: ModelCard = serde_json::from_str(card).map_err(|e| bad(e.to_string()))?;
        let mut tokenizer = Tokenizer::from_bytes(tokenizer).map_err(|e| bad(e.to_string()))?;
        // A text's vector is the mean over all its tokens: nothing to pad or cut.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| bad(e.to_string()))?;
        let u32_at = |i: usize| {
            table
                .get(i..i + 4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
        };
        let (Some(count), Some(dimensions)) = (u32_at(0), u32_at(4)) else {
            return Err(bad("the table has no header".into()));
        };
        let rows_at = 8 + 4 * count;
        if dimensions == 0 || table.len() != rows_at + count * dimensions {
            return Err(bad(format!(
                "a table of {count}×{dimensions} takes {} bytes, not {}",
                rows_at + count * dimensions,
                table.len()
            )));
        }
        if tokenizer.get_vocab_size(true) > count {
            return Err(bad("the tokenizer has tokens the table lacks".into()));
        }
        let scales = table[8..rows_at]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect();
        Ok(Self {
            calibration: Calibration::new(
                card.calibration.threshold_cosine,
                card.calibration.relevant_cosine,
            ),
            model_id: card.model_id,
            tokenizer,
            dimensions,
            scales,
            rows: &table[rows_at..],
        })
    }

    /// Embeds one text: the normalised mean of its tokens' vectors (zeros for a text
    /// without tokens).
    pub fn embed_one(&self, text: &str) -> Result<Vec<f32>> {
        let encoding = self
            .tokenizer
            .encode_fast(text, false)
            .map_err(|e| Error::backend(std::io::Error::other(e.to_string())))?;
        let mut v = vec![0f32; self.dimensions];
        for &id in encoding.get_ids() {
            let id = id as usize;
            let row = &self.rows[id * self.dimensions..(id + 1) * self.dimensions];
            let scale = self.scales[id];
            for (x, &b) in v.iter_mut().zip(row) {
                *x += f32::from(b as i8) * scale;
            }
        }
        // The mean's direction is the sum's: normalising is all that is left.
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
        Ok(v)
    }
}

impl std::fmt::Debug for StaticEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticEmbedder")
            .field("model_id", &self.model_id)
            .field("dimensions", &self.dimensions)
            .field("tokens", &self.scales.len())
            .finish()
    }
}

#[async_trait]
impl Embedder for StaticEmbedder {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn dimensions(&self) -> usize {
        self.dimensions
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        texts.iter().map(|t| self.embed_one(t)).collect()
    }

    fn calibration(&self) -> Calibration {
        self.calibration
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn the_builtin_model_finds_meaning_not_only_words() {
        let e = StaticEmbedder::builtin();
        assert_eq!(e.dimensions(), 384);
        let v = |t: &str| e.embed_one(t).unwrap();
        let fact = v("User prefers email over SMS");
        assert_eq!(fact, v("User prefers email over SMS"));
        assert!((cosine(&fact, &fact) - 1.0).abs() < 1e-5);
        // No word in common with the fact, yet nearer to it than an unrelated fact is.
        let question = v("How should we contact the customer?");
        let unrelated = v("Allergic to peanuts");
        assert!(
            cosine(&fact, &question) > cosine(&fact, &unrelated) + 0.1,
            "{} vs {}",
            cosine(&fact, &question),
            cosine(&fact, &unrelated)
        );
        assert!(v("").iter().all(|x| *x == 0.0));
        assert!(v("   \t").iter().all(|x| *x == 0.0));
        // Any text embeds: unknown scripts, emoji, control characters, a long one.
        for text in [
            "日本語のテキスト",
            "🦀🦀",
            "\u{0}\u{7}x",
            &"word ".repeat(20_000),
        ] {
            assert_eq!(v(text).len(), 384);
        }
    }

    /// The calibration pairs of `model/distill.py`, whose anchors `model.json` holds: in
    /// Rust as in the distillation, 90% of the unrelated pairs score below 0.7 and the
    /// median relevant pair 0.9 (the tokenizer, the table and the calibration agree).
    #[test]
    fn calibration_matches_the_distillation() {
        let script = include_str!("../model/distill.py");
        let pairs: Vec<(&str, &str)> = script
            .lines()
            .filter_map(|l| l.trim().strip_prefix("(\"")?.strip_suffix("\"),"))
            .map(|l| l.split_once("\", \"").expect("a pair"))
            .collect();
        assert_eq!(pairs.len(), 16);
        let e = StaticEmbedder::builtin();
        let c = e.calibration();
        let v = |t: &str| e.embed_one(t).unwrap();
        let facts: Vec<_> = pairs.iter().map(|p| v(p.0)).collect();
        let questions: Vec<_> = pairs.iter().map(|p| v(p.1)).collect();
        let (mut right, mut wrong) = (Vec::new(), Vec::new());
        for (i, q) in questions.iter().enumerate() {
            for (j, f) in facts.iter().enumerate() {
                let score = c.score(cosine(q, f));
                if i == j {
                    right.push(score)
                } else {
                    wrong.push(score)
                }
            }
        }
        let kept = wrong.iter().filter(|s| **s >= 0.7).count() as f32 / wrong.len() as f32;
        assert!((0.05..=0.15).contains(&kept), "{kept}");
        right.sort_by(f32::total_cmp);
        let median = (right[7] + right[8]) / 2.0;
        assert!((median - 0.9).abs() < 0.02, "{median}");
    }

    #[test]
    fn a_damaged_table_is_refused() {
        static SHORT: [u8; 12] = [2, 0, 0, 0, 4, 0, 0, 0, 0, 0, 128, 63];
        let err = StaticEmbedder::from_parts(&SHORT, TOKENIZER, MODEL).unwrap_err();
        assert!(err.to_string().contains("takes 24 bytes"), "{err}");
        let err = StaticEmbedder::from_parts(&TABLE[..4], TOKENIZER, MODEL).unwrap_err();
        assert!(err.to_string().contains("no header"), "{err}");
        let err = StaticEmbedder::from_parts(TABLE, TOKENIZER, "{}").unwrap_err();
        assert!(err.to_string().contains("model_id"), "{err}");
    }
}
