//! Request ids, structured request logs, and the Prometheus metrics at `/metrics`.

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::time::Instant;

/// Upper bounds of the latency histogram buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bound, count) in BUCKETS.iter().zip(self.counts.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// Counters and histograms, rendered in the Prometheus text format.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// (route, method, status) -> count
    requests: BTreeMap<(String, String, u16), u64>,
    /// (route, method) -> latency
    latency: BTreeMap<(String, String), Histogram>,
    /// store operation -> latency
    store: BTreeMap<&'static str, Histogram>,
    /// store operation -> failures
    store_errors: BTreeMap<&'static str, u64>,
    rate_limited: u64,
    /// Memories given a vector after their write: pending ones, and re-embedded ones.
    vectors_embedded: u64,
    embedding_failures: u64,
}

impl statebase_core::StoreObserver for Metrics {
    fn observe(&self, operation: &'static str, elapsed: std::time::Duration, ok: bool) {
        let mut m = self.inner.lock();
        m.store
            .entry(operation)
            .or_default()
            .observe(elapsed.as_secs_f64());
        if !ok {
            *m.store_errors.entry(operation).or_default() += 1;
        }
    }
}

/// Writes one histogram with the given labels.
fn histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    for (bound, count) in BUCKETS.iter().zip(h.counts) {
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum);
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
}

impl Metrics {
    fn record(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let mut m = self.inner.lock();
        *m.requests
            .entry((route.to_owned(), method.to_owned(), status))
            .or_default() += 1;
        m.latency
            .entry((route.to_owned(), method.to_owned()))
            .or_default()
            .observe(seconds);
        if status == 429 {
            m.rate_limited += 1;
        }
    }

    /// Counts memories given their vector after their write (pending or re-embedded).
    pub fn vectors_embedded(&self, n: u64) {
        self.inner.lock().vectors_embedded += n;
    }

    /// Counts a failed round of background embedding.
    pub fn embedding_failed(&self) {
        self.inner.lock().embedding_failures += 1;
    }

    /// The Prometheus text exposition; `pending_vectors` is the gauge of memories whose
    /// vectors this process still owes.
    pub fn render(&self, pending_vectors: usize) -> String {
        let m = self.inner.lock();
        let mut out = String::new();
        out.push_str(
            "# HELP statebase_http_requests_total HTTP requests by route, method and status.\n",
        );
        out.push_str("# TYPE statebase_http_requests_total counter\n");
        for ((route, method, status), n) in &m.requests {
            let _ = writeln!(
                out,
                "statebase_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP statebase_http_request_duration_seconds Request latency by route and method.\n",
        );
        out.push_str("# TYPE statebase_http_request_duration_seconds histogram\n");
        for ((route, method), h) in &m.latency {
            let labels = format!("route=\"{route}\",method=\"{method}\"");
            histogram(
                &mut out,
                "statebase_http_request_duration_seconds",
                &labels,
                h,
            );
        }
        out.push_str(
            "# HELP statebase_store_operation_duration_seconds Store call latency by operation.\n",
        );
        out.push_str("# TYPE statebase_store_operation_duration_seconds histogram\n");
        for (op, h) in &m.store {
            let labels = format!("operation=\"{op}\"");
            histogram(
                &mut out,
                "statebase_store_operation_duration_seconds",
                &labels,
                h,
            );
        }
        out.push_str("# HELP statebase_store_errors_total Failed store calls by operation.\n");
        out.push_str("# TYPE statebase_store_errors_total counter\n");
        for (op, n) in &m.store_errors {
            let _ = writeln!(
                out,
                "statebase_store_errors_total{{operation=\"{op}\"}} {n}"
            );
        }
        out.push_str("# HELP statebase_rate_limited_total Requests refused by a rate limit.\n");
        out.push_str("# TYPE statebase_rate_limited_total counter\n");
        let _ = writeln!(out, "statebase_rate_limited_total {}", m.rate_limited);
        for (name, kind, help, value) in [
            (
                "statebase_memory_vectors_pending",
                "gauge",
                "Memories stored whose vectors this process has yet to make.",
                pending_vectors as u64,
            ),
            (
                "statebase_memory_vectors_embedded_total",
                "counter",
                "Memories given their vector after their write (pending or re-embedded).",
                m.vectors_embedded,
            ),
            (
                "statebase_embedding_failures_total",
                "counter",
                "Rounds of background embedding the embedder failed.",
                m.embedding_failures,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}

/// Gives each request an id (`x-request-id`, kept if the client sent one), logs it when it
/// ends, and counts it.
pub async fn observe(
    State(metrics): State<Arc<Metrics>>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_owned)
        .unwrap_or_else(|| statebase_core::IdSource::new_id(&statebase_core::RandomIds, "req_"));
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().to_string();
    if let Ok(v) = HeaderValue::from_str(&id) {
        req.headers_mut().insert("x-request-id", v);
    }
    let mut response = next.run(req).await;
    let seconds = started.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    metrics.record(&route, &method, status, seconds);
    tracing::info!(request_id = %id, %method, %route, status, ms = seconds * 1e3, "request");
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}
