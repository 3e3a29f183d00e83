//! `Idempotency-Key` on POST and PATCH: the first successful response to a key is kept for
//! 24 hours, in the store (so a retry after a restart is still answered from it), and
//! replayed to retries with the same key and request, which then create nothing. The same
//! key with another request is refused. Keys are per API key; a retry that arrives while
//! the first request runs waits for it.

use crate::auth::Caller;
use crate::error::ApiError;
use axum::body::{to_bytes, Body};
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use statebase_core::keys::hex;
use statebase_core::store::IdempotentResponse;
use statebase_core::{ServerRecords, ServerStore};
use std::collections::HashMap;
use std::sync::Arc;

/// How long a response is kept.
pub const KEEP: chrono::Duration = chrono::Duration::hours(24);
/// The longest idempotency key accepted.
const MAX_KEY_CHARS: usize = 255;

/// Held while the first request with a key runs, so that a concurrent retry waits for it.
type Slot = Arc<tokio::sync::Mutex<()>>;

/// Responses by (API key id, idempotency key), kept in the store.
#[derive(Debug)]
pub struct Idempotency {
    store: Arc<dyn ServerStore>,
    running: Mutex<HashMap<String, Slot>>,
}

/// A kept response, and a digest of the request it answered.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    request: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    #[serde(skip)]
    at: DateTime<Utc>,
}

impl Idempotency {
    /// Responses kept in `store`.
    pub fn new(store: Arc<dyn ServerStore>) -> Self {
        Self {
            store,
            running: Mutex::default(),
        }
    }

    fn slot(&self, key: &str) -> Slot {
        let mut running = self.running.lock();
        // Slots nobody holds are dropped now and then; the responses are in the store.
        if running.len() > 1_000 {
            running.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        running.entry(key.to_owned()).or_default().clone()
    }

    async fn get(&self, key: &str) -> Result<Option<Stored>, ApiError> {
        let Some(kept) = self.store.idempotent_response(key).await? else {
            return Ok(None);
        };
        let mut stored: Stored =
            serde_json::from_slice(&kept.body).map_err(statebase_core::Error::backend)?;
        stored.at = kept.at;
        Ok((Utc::now() - stored.at < KEEP).then_some(stored))
    }

    async fn put(&self, key: &str, tenant: &str, stored: &Stored) -> Result<(), ApiError> {
        let body = serde_json::to_vec(stored).map_err(statebase_core::Error::backend)?;
        let kept = IdempotentResponse {
            key: key.to_owned(),
            tenant: tenant.to_owned(),
            subjects: subjects(&stored.body),
            at: stored.at,
            body,
        };
        Ok(self.store.put_idempotent_response(kept).await?)
    }

    /// Forgets responses older than [`KEEP`]; returns how many.
    pub async fn prune(&self) -> statebase_core::Result<u64> {
        self.store
            .prune_idempotent_responses(Utc::now() - KEEP)
            .await
    }
}

/// What a response body names, to erase the kept response with it: every `id`,
/// `session_id` and `memory_id`, and every `user_id` as `user:` + id, at any depth. Sorted,
/// each once.
fn subjects(body: &str) -> Vec<String> {
    fn walk(v: &serde_json::Value, found: &mut std::collections::BTreeSet<String>) {
        match v {
            serde_json::Value::Object(fields) => {
                for (name, value) in fields {
                    match (name.as_str(), value) {
                        ("id" | "session_id" | "memory_id", serde_json::Value::String(id)) => {
                            found.insert(id.clone());
                        }
                        ("user_id", serde_json::Value::String(id)) => {
                            found.insert(format!("user:{id}"));
                        }
                        _ => walk(value, found),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, found)),
            _ => {}
        }
    }
    let mut found = std::collections::BTreeSet::new();
    if let Ok(v) = serde_json::from_str(body) {
        walk(&v, &mut found);
    }
    found.into_iter().collect()
}

fn replay(stored: Stored) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let mut response = (status, stored.body).into_response();
    let headers = response.headers_mut();
    for (name, value) in stored.headers {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            headers.insert(n, v);
        }
    }
    headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}

/// The middleware.
pub async fn idempotent(
    axum::extract::State(keep): axum::extract::State<Arc<Idempotency>>,
    req: Request,
    next: Next,
) -> Response {
    match run(&keep, req, next).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn run(keep: &Idempotency, req: Request, next: Next) -> Result<Response, ApiError> {
    let key = req
        .headers()
        .get("idempotency-key")
        .map(|v| v.to_str().map(str::to_owned));
    let (Some(key), true) = (key, matches!(*req.method(), Method::POST | Method::PATCH)) else {
        return Ok(next.run(req).await);
    };
    let key = match key {
        // Visible ASCII and spaces (a tab, which HTTP allows in a value, is refused).
        Ok(k)
            if !k.is_empty()
                && k.len() <= MAX_KEY_CHARS
                && k.bytes().all(|b| (b' '..=b'~').contains(&b)) =>
        {
            k
        }
        _ => {
            return Err(ApiError::bad_request(format!(
                "Idempotency-Key must be 1 to {MAX_KEY_CHARS} visible ASCII characters"
            )))
        }
    };
    let Some(caller) = req.extensions().get::<Caller>().cloned() else {
        return Ok(next.run(req).await);
    };
    let (parts, body) = req.into_parts();
    let body = to_bytes(body, crate::MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::too_large(crate::MAX_BODY_BYTES))?;
    let mut digest = Sha256::new();
    digest.update(parts.method.as_str());
    digest.update([0]);
    digest.update(parts.uri.to_string());
    digest.update([0]);
    digest.update(&body);
    let request = hex(&digest.finalize());
    let key = format!("{}/{key}", caller.key.id);
    let slot = keep.slot(&key);
    let _running = slot.lock().await;
    // Another server on the same store may be running it: the claim waits for it.
    let claim = match keep.claim(&key, &request).await? {
        Claim::Replay(stored) => return Ok(replay(stored)),
        Claim::Held(claim) => claim,
    };
    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    let response = keep
        .answer(&key, &caller.key.tenant, request, response)
        .await;
    if let Err(e) = keep.store.release_lease(&claim, claim_holder()).await {
        tracing::warn!(error = %e, "could not release an idempotency claim");
    }
    response
}

/// What [`Idempotency::claim`] found.
enum Claim {
    /// The answer to the first request.
    Replay(Stored),
    /// This request runs: the lease it holds meanwhile.
    Held(String),
}

/// How long a claim holds if its server stops before releasing it.
const CLAIM: std::time::Duration = std::time::Duration::from_secs(60);

/// This process's name as a claim holder.
fn claim_holder() -> &'static str {
    static HOLDER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOLDER.get_or_init(|| {
        use statebase_core::IdSource;
        statebase_core::RandomIds.new_id("server_")
    })
}

impl Idempotency {
    /// The kept answer to `key`, or the claim to run it, waiting while another process
    /// holds it. `idempotency_key_reused` for a kept answer to another request.
    async fn claim(&self, key: &str, request: &str) -> Result<Claim, ApiError> {
        let lease = format!("idempotency:{key}");
        loop {
            let held = self.store.take_lease(&lease, claim_holder(), CLAIM).await?;
            // Read after the claim: an answer kept before it is seen.
            if let Some(stored) = self.get(key).await? {
                if held {
                    self.store.release_lease(&lease, claim_holder()).await?;
                }
                if stored.request != request {
                    return Err(ApiError::idempotency_key_reused());
                }
                return Ok(Claim::Replay(stored));
            }
            if held {
                return Ok(Claim::Held(lease));
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }

    /// Keeps a successful `response` to `key` and answers it.
    async fn answer(
        &self,
        key: &str,
        tenant: &str,
        request: String,
        response: Response,
    ) -> Result<Response, ApiError> {
        // Errors are not kept: a retry after one should really retry.
        if !response.status().is_success() {
            return Ok(response);
        }
        let (parts, body) = response.into_parts();
        let bytes = to_bytes(body, usize::MAX)
            .await
            .map_err(statebase_core::Error::backend)?;
        let stored = Stored {
            request,
            status: parts.status.as_u16(),
            headers: parts
                .headers
                .iter()
                .filter_map(|(n, v)| Some((n.to_string(), v.to_str().ok()?.to_owned())))
                .collect(),
            body: String::from_utf8_lossy(&bytes).into_owned(),
            at: Utc::now(),
        };
        // The change is made; if keeping its response fails, the client still gets it.
        if let Err(e) = self.put(key, tenant, &stored).await {
            tracing::warn!(error = ?e, "could not keep an idempotent response");
        }
        Ok(Response::from_parts(parts, Body::from(bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids and users at any depth, each once; nothing from a body that is not JSON.
    #[test]
    fn subjects_are_what_a_response_names() {
        let body = r#"{"id":"turn_1","session_id":"sess_1","input":{"id":7},
            "data":[{"id":"mem_1","user_id":"u1"},{"memory_id":"mem_1"}]}"#;
        assert_eq!(
            subjects(body),
            ["mem_1", "sess_1", "turn_1", "user:u1"].map(String::from)
        );
        assert!(subjects("not json").is_empty());
    }

    #[tokio::test]
    async fn prune_forgets_only_responses_past_their_day() {
        let keep = Idempotency::new(Arc::new(statebase_core::MemoryStore::new()));
        let stored = |age: chrono::Duration| Stored {
            request: "r".into(),
            status: 201,
            headers: vec![],
            body: "{}".into(),
            at: Utc::now() - age,
        };
        keep.put(
            "key_1/old",
            "t",
            &stored(KEEP + chrono::Duration::minutes(1)),
        )
        .await
        .unwrap();
        keep.put(
            "key_1/new",
            "t",
            &stored(KEEP - chrono::Duration::minutes(1)),
        )
        .await
        .unwrap();
        assert!(keep.get("key_1/old").await.unwrap().is_none(), "expired");
        assert_eq!(keep.prune().await.unwrap(), 1);
        let old = keep.store.idempotent_response("key_1/old").await.unwrap();
        assert!(old.is_none(), "kept past its day");
        assert!(keep.get("key_1/new").await.unwrap().is_some());
    }
}
