//! `--embedder openai:MODEL` against a real OpenAI-compatible embeddings server that this
//! test starts on loopback, answering with real vectors (the built-in model's): the client
//! batches, retries and times out, and a server on it stores memories at once and embeds
//! them in the background, also across the service hanging.

mod common;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use common::{call, get, post, Server};
use parking_lot::Mutex;
use reqwest::Method;
use serde_json::{json, Value};
use statebase_core::Embedder;
use statebase_embed::{OpenAiEmbedder, OpenAiOptions, StaticEmbedder};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY: &str = "sb_embeddingserviceembedding01";
const MODEL: &str = "test-minilm";

/// How the embeddings server answers.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Up,
    /// Answers after 3 s.
    Hanging,
    /// 500 once, then up.
    FailingOnce,
    /// 400 (a request the service refuses).
    Refusing,
}

/// The number of texts of a request, and its `Authorization`.
type Seen = (usize, Option<String>);

#[derive(Clone)]
struct Service {
    mode: Arc<Mutex<Mode>>,
    /// The number of texts of each request, and its `Authorization`.
    requests: Arc<Mutex<Vec<Seen>>>,
    calls: Arc<AtomicU32>,
}

async fn embeddings(
    State(service): State<Service>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    service.calls.fetch_add(1, Ordering::SeqCst);
    let texts: Vec<String> = serde_json::from_value(body["input"].clone()).unwrap();
    let auth = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_owned());
    service.requests.lock().push((texts.len(), auth));
    let mode = *service.mode.lock();
    match mode {
        Mode::Hanging => tokio::time::sleep(Duration::from_secs(3)).await,
        Mode::FailingOnce => {
            *service.mode.lock() = Mode::Up;
            return (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({})));
        }
        Mode::Refusing => {
            let error = json!({"error": {"message": "no such model"}});
            return (StatusCode::BAD_REQUEST, Json(error));
        }
        Mode::Up => {}
    }
    assert_eq!(body["model"], MODEL);
    let model = StaticEmbedder::builtin();
    // Listed in reverse: the client must order by `index`.
    let data: Vec<Value> = texts
        .iter()
        .enumerate()
        .rev()
        .map(|(i, t)| json!({"object": "embedding", "index": i, "embedding": model.embed_one(t).unwrap()}))
        .collect();
    (
        StatusCode::OK,
        Json(json!({"object": "list", "data": data})),
    )
}

/// Starts the embeddings service; its state and `http://127.0.0.1:PORT/v1`.
async fn start_service() -> (Service, String) {
    let service = Service {
        mode: Arc::new(Mutex::new(Mode::Up)),
        requests: Arc::default(),
        calls: Arc::default(),
    };
    let app = axum::Router::new()
        .route("/v1/embeddings", axum::routing::post(embeddings))
        .with_state(service.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (service, url)
}

fn options() -> OpenAiOptions {
    OpenAiOptions {
        key: Some("sk-test".into()),
        batch: 4,
        timeout: Duration::from_millis(300),
        ..OpenAiOptions::default()
    }
}

#[tokio::test]
async fn the_client_batches_orders_retries_and_times_out() {
    let (service, url) = start_service().await;
    let embedder = OpenAiEmbedder::connect(&url, MODEL, options())
        .await
        .unwrap();
    assert_eq!(embedder.dimensions(), 384, "learnt from the service");
    assert_eq!(embedder.model_id(), "openai:test-minilm");
    assert!(!embedder.embeds_on_write());
    let texts: Vec<String> = (0..10).map(|i| format!("memory number {i}")).collect();
    let vectors = embedder.embed(&texts).await.unwrap();
    let builtin = StaticEmbedder::builtin();
    for (text, v) in texts.iter().zip(&vectors) {
        let want = builtin.embed_one(text).unwrap();
        let gap = v
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(gap < 1e-5, "{text}: off by {gap}");
    }
    let sizes: Vec<usize> = service.requests.lock().iter().map(|r| r.0).collect();
    assert_eq!(sizes, [1, 4, 4, 2], "the probe, then batches of 4");
    assert!(service
        .requests
        .lock()
        .iter()
        .all(|r| r.1.as_deref() == Some("Bearer sk-test")));

    let calls = || service.calls.load(Ordering::SeqCst);
    let before = calls();
    *service.mode.lock() = Mode::FailingOnce;
    assert_eq!(embedder.embed(&texts[..1]).await.unwrap().len(), 1);
    assert_eq!(calls() - before, 2, "a 500 is tried again");

    let before = calls();
    *service.mode.lock() = Mode::Refusing;
    let err = embedder.embed(&texts[..1]).await.unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
    assert_eq!(calls() - before, 1, "a 400 is not tried again");

    let before = calls();
    *service.mode.lock() = Mode::Hanging;
    let started = Instant::now();
    assert!(embedder.embed_query("a question").await.is_err());
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(600),
        "a query is tried once: {took:?}"
    );
    assert_eq!(calls() - before, 1);
    let before = calls();
    let started = Instant::now();
    let err = embedder.embed(&texts[..1]).await.unwrap_err();
    let took = started.elapsed();
    assert!(err.to_string().contains("embedding service"), "{err}");
    assert_eq!(calls() - before, 3, "tried twice more after timing out");
    // 3 × 300 ms of timeouts and 250 + 500 ms of waits, well before the service answers.
    assert!(took < Duration::from_millis(2_500), "{took:?}");

    let refused = OpenAiEmbedder::connect("http://127.0.0.1:9", MODEL, options()).await;
    assert!(refused.is_err(), "no service, no dimensions");
    let given = OpenAiOptions {
        dimensions: Some(384),
        ..options()
    };
    let offline = OpenAiEmbedder::connect("http://127.0.0.1:9", MODEL, given).await;
    assert_eq!(
        offline.unwrap().dimensions(),
        384,
        "starts offline when told"
    );
}

/// Waits until the memory's vector is available; its JSON.
async fn vector_arrives(http: &reqwest::Client, base: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let m = get(http, KEY, format!("{base}/v1/memories/{id}")).await;
        if m["vector_available"] == true {
            return m;
        }
        assert!(Instant::now() < deadline, "no vector came: {m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_server_on_an_embedding_service_never_waits_for_it() {
    let (service, url) = start_service().await;
    let server = Server::start(
        "memory",
        &[
            "--api-key",
            KEY,
            "--embedder",
            &format!("openai:{MODEL}"),
            "--embedder-url",
            &url,
            "--embedder-timeout-ms",
            "300",
            // The built-in model's anchors (its model.json): the service answers its vectors.
            "--embedder-calibration",
            "0.294,0.431",
        ],
    )
    .await;
    let (http, base) = (reqwest::Client::new(), server.url.clone());
    let session = post(
        &http,
        KEY,
        format!("{base}/v1/sessions"),
        json!({"agent_id": "a"}),
    )
    .await;
    let add = |content: &str| {
        let body = json!({"session_id": session["id"], "content": content});
        post(&http, KEY, format!("{base}/v1/memory"), body)
    };
    let cats = add("Has two cats named Miso and Tofu").await;
    assert_eq!(
        cats["vector_available"], false,
        "stored before it is embedded"
    );
    vector_arrives(&http, &base, cats["id"].as_str().unwrap()).await;
    let search = |query: &str, threshold: f64| {
        let body = json!({"query": query, "session_id": session["id"], "threshold": threshold});
        post(&http, KEY, format!("{base}/v1/memory/search"), body)
    };
    let hits = search("Does the client own any pets?", 0.7).await;
    assert_eq!(
        hits["data"][0]["id"], cats["id"],
        "a paraphrase, by meaning: {hits}"
    );

    // The service hangs: writes do not wait, keywords still find, vectors come later.
    *service.mode.lock() = Mode::Hanging;
    let started = Instant::now();
    let peanuts = add("Allergic to peanuts").await;
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(peanuts["vector_available"], false);
    let started = Instant::now();
    let hits = search("peanuts", 0.5).await;
    assert_eq!(hits["data"][0]["id"], peanuts["id"], "by keywords: {hits}");
    // One try of the query's vector, then keywords: no retries while the service hangs.
    assert!(
        started.elapsed() < Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    let text = |url: String| async { http.get(url).send().await.unwrap().text().await.unwrap() };
    let metrics = text(format!("{base}/metrics")).await;
    assert_eq!(
        metric(&metrics, "statebase_memory_vectors_pending"),
        1,
        "{metrics}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(
        &text(format!("{base}/metrics")).await,
        "statebase_embedding_failures_total",
    ) == 0
    {
        assert!(Instant::now() < deadline, "the worker never tried");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, m) = call(
        &http,
        KEY,
        Method::GET,
        format!("{base}/v1/memories/{}", peanuts["id"].as_str().unwrap()),
        Value::Null,
    )
    .await;
    assert_eq!(
        (status.as_u16(), &m["vector_available"]),
        (200, &json!(false))
    );
    *service.mode.lock() = Mode::Up;
    vector_arrives(&http, &base, peanuts["id"].as_str().unwrap()).await;
    let metrics = text(format!("{base}/metrics")).await;
    assert_eq!(metric(&metrics, "statebase_memory_vectors_pending"), 0);
    assert_eq!(
        metric(&metrics, "statebase_memory_vectors_embedded_total"),
        2
    );
    let hits = search("Which foods must they avoid?", 0.0).await;
    assert!(
        hits["data"][0]["vector_score"].as_f64().unwrap() > 0.0,
        "{hits}"
    );
}

#[tokio::test]
async fn a_server_does_not_start_on_an_unreachable_service_without_dimensions() {
    let started = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_statebase"))
        .args(["serve", "--db", "memory", "--addr", "127.0.0.1:0"])
        .args([
            "--embedder",
            "openai:m",
            "--embedder-url",
            "http://127.0.0.1:9/v1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--embedder-dimensions"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(20));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_statebase"))
        .args(["serve", "--db", "memory", "--embedder", "word2vec"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("expected builtin, hash or openai:MODEL"),
        "{stderr}"
    );
}
