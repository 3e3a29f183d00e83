//! [`OpenAiEmbedder`]: a model behind an OpenAI-compatible `POST /embeddings`, as OpenAI,
//! Azure OpenAI, Ollama, vLLM, text-embeddings-inference and LM Studio serve it.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use statebase_core::{Calibration, Embedder, Error, Result};
use std::time::Duration;

/// How an [`OpenAiEmbedder`] calls its service.
#[derive(Debug, Clone)]
pub struct OpenAiOptions {
    /// The bearer key (`Authorization: Bearer …`), if the service wants one.
    pub key: Option<String>,
    /// The most texts in one request; more are split into several.
    pub batch: usize,
    /// How long one request may take, connecting included.
    pub timeout: Duration,
    /// How long a search's query may wait for its vector (one try; the search goes by
    /// keywords without it).
    pub query_timeout: Duration,
    /// How many times a request that timed out, could not connect or was answered 429 or
    /// 5xx is tried again (waiting 250 ms, then twice as long each time).
    pub retries: u32,
    /// The vectors' length; `None` asks the service at [`connect`](OpenAiEmbedder::connect).
    pub dimensions: Option<usize>,
    /// How the model's cosines map to scores (raw by default: a model's range is not known
    /// here; see [`Calibration::new`]).
    pub calibration: Calibration,
}

impl Default for OpenAiOptions {
    fn default() -> Self {
        Self {
            key: None,
            batch: 64,
            timeout: Duration::from_secs(10),
            query_timeout: Duration::from_secs(2),
            retries: 2,
            dimensions: None,
            calibration: Calibration::RAW,
        }
    }
}

/// A remote embedding model. It does not [embed on write](Embedder::embeds_on_write):
/// memories are stored at once and the server's background worker embeds them in batches,
/// so a slow or unreachable service never holds a write back.
pub struct OpenAiEmbedder {
    client: reqwest::Client,
    url: String,
    model: String,
    model_id: String,
    dimensions: usize,
    options: OpenAiOptions,
}

#[derive(Serialize)]
struct Request<'a> {
    model: &'a str,
    input: &'a [String],
}

#[derive(Deserialize)]
struct Response {
    data: Vec<Datum>,
}

#[derive(Deserialize)]
struct Datum {
    embedding: Vec<f32>,
    index: usize,
}

fn failed(why: String) -> Error {
    Error::backend(std::io::Error::other(why))
}

impl OpenAiEmbedder {
    /// The model `model` at `base_url` (e.g. `https://api.openai.com/v1`: requests go to
    /// `{base_url}/embeddings`). Unless `options.dimensions` is given, embeds one text to
    /// learn the vectors' length, and fails if the service does not answer.
    pub async fn connect(base_url: &str, model: &str, options: OpenAiOptions) -> Result<Self> {
        if options.batch == 0 {
            return Err(failed("the batch size must be at least 1".into()));
        }
        let client = reqwest::Client::builder()
            .timeout(options.timeout)
            .build()
            .map_err(Error::backend)?;
        let mut embedder = Self {
            client,
            url: format!("{}/embeddings", base_url.trim_end_matches('/')),
            model: model.to_owned(),
            model_id: format!("openai:{model}"),
            dimensions: options.dimensions.unwrap_or(0),
            options,
        };
        if embedder.dimensions == 0 {
            let probe = embedder.request(&["dimensions".to_owned()]).await?;
            embedder.dimensions = probe[0].len();
        }
        Ok(embedder)
    }

    /// One request for `texts`, tried again on the failures that may pass.
    async fn request(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let mut wait = Duration::from_millis(250);
        let mut attempt = 0;
        loop {
            match self.request_once(texts, self.options.timeout).await {
                Ok(vectors) => return Ok(vectors),
                Err((true, _)) if attempt < self.options.retries => {
                    attempt += 1;
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err((_, e)) => return Err(e),
            }
        }
    }

    /// The vectors, or the error and whether trying again may help.
    async fn request_once(
        &self,
        texts: &[String],
        timeout: Duration,
    ) -> std::result::Result<Vec<Vec<f32>>, (bool, Error)> {
        let body = Request {
            model: &self.model,
            input: texts,
        };
        let mut req = self.client.post(&self.url).timeout(timeout).json(&body);
        if let Some(key) = &self.options.key {
            req = req.bearer_auth(key);
        }
        let what = |e: reqwest::Error| {
            let transient = e.is_timeout() || e.is_connect() || e.is_request();
            (
                transient,
                failed(format!("embedding service {}: {e}", self.url)),
            )
        };
        let res = req.send().await.map_err(what)?;
        let status = res.status();
        if !status.is_success() {
            let transient = status.as_u16() == 429 || status.is_server_error();
            let text = res.text().await.unwrap_or_default();
            let text: String = text.chars().take(300).collect();
            let e = failed(format!(
                "embedding service {} answered {status}: {text}",
                self.url
            ));
            return Err((transient, e));
        }
        let mut answer: Response = res.json().await.map_err(what)?;
        answer.data.sort_unstable_by_key(|d| d.index);
        let in_order = answer.data.iter().enumerate().all(|(i, d)| d.index == i);
        if answer.data.len() != texts.len() || !in_order {
            let e = failed(format!(
                "embedding service {} answered {} vectors for {} texts",
                self.url,
                answer.data.len(),
                texts.len()
            ));
            return Err((false, e));
        }
        let mut vectors: Vec<Vec<f32>> = answer.data.into_iter().map(|d| d.embedding).collect();
        for v in &mut vectors {
            // Search scores are dot products: some services do not normalise.
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm > 0.0 {
                v.iter_mut().for_each(|x| *x /= norm);
            }
        }
        let wanted = self.dimensions;
        let misfit = |v: &Vec<f32>| v.is_empty() || (wanted > 0 && v.len() != wanted);
        if vectors.iter().any(misfit) {
            let e = failed(format!(
                "embedding service {} answered vectors not of {wanted} dimensions",
                self.url
            ));
            return Err((false, e));
        }
        Ok(vectors)
    }
}

impl std::fmt::Debug for OpenAiEmbedder {
    // Leaves the key out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiEmbedder")
            .field("url", &self.url)
            .field("model", &self.model)
            .field("dimensions", &self.dimensions)
            .finish()
    }
}

#[async_trait]
impl Embedder for OpenAiEmbedder {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn dimensions(&self) -> usize {
        self.dimensions
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(self.options.batch) {
            out.extend(self.request(chunk).await?);
        }
        Ok(out)
    }

    async fn embed_query(&self, text: &str) -> Result<Vec<f32>> {
        let timeout = self.options.query_timeout.min(self.options.timeout);
        let mut vectors = self
            .request_once(&[text.to_owned()], timeout)
            .await
            .map_err(|(_, e)| e)?;
        Ok(vectors.remove(0))
    }

    fn calibration(&self) -> Calibration {
        self.options.calibration
    }

    fn embeds_on_write(&self) -> bool {
        false
    }
}
