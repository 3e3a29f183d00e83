//! `Idempotency-Key` on POST and PATCH: the first response to a key is kept for 24 hours
//! and replayed to retries with the same key and body, which then create nothing. The same
//! key with another request is refused. Keys are per API key; a retry that arrives while
//! the first request runs waits for it.

use crate::auth::Caller;
use crate::error::ApiError;
use axum::body::{to_bytes, Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEEP: Duration = Duration::from_secs(24 * 3600);

/// One idempotency key's response, once there is one; locked while its first request runs.
type Slot = Arc<tokio::sync::Mutex<Option<Stored>>>;

/// Stored responses, by (API key id, idempotency key).
#[derive(Debug, Default)]
pub struct Idempotency {
    entries: Mutex<HashMap<(String, String), Slot>>,
}

#[derive(Debug)]
struct Stored {
    fingerprint: (Method, String, Bytes),
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

impl Idempotency {
    fn slot(&self, key: (String, String)) -> Slot {
        let mut entries = self.entries.lock();
        if entries.len() > 10_000 {
            // Forget expired responses (and slots nobody holds) now and then.
            entries.retain(|_, slot| match slot.try_lock() {
                Ok(stored) => stored.as_ref().is_some_and(|s| s.at.elapsed() < KEEP),
                Err(_) => true,
            });
        }
        entries.entry(key).or_default().clone()
    }
}

/// The middleware.
pub async fn idempotent(
    axum::extract::State(store): axum::extract::State<Arc<Idempotency>>,
    req: Request,
    next: Next,
) -> Response {
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (Some(key), true) = (key, matches!(*req.method(), Method::POST | Method::PATCH)) else {
        return next.run(req).await;
    };
    let Some(caller) = req.extensions().get::<Caller>().cloned() else {
        return next.run(req).await;
    };
    let (parts, body) = req.into_parts();
    let body = match to_bytes(body, crate::MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => return ApiError::too_large(crate::MAX_BODY_BYTES).into_response(),
    };
    let fingerprint = (parts.method.clone(), parts.uri.to_string(), body.clone());
    let slot = store.slot((caller.key.id.clone(), key));
    let mut stored = slot.lock().await;
    if let Some(s) = stored.as_ref().filter(|s| s.at.elapsed() < KEEP) {
        if s.fingerprint != fingerprint {
            return ApiError::idempotency_key_reused().into_response();
        }
        let mut response = (s.status, s.body.clone()).into_response();
        *response.headers_mut() = s.headers.clone();
        response.headers_mut().insert(
            "idempotent-replayed",
            "true".parse().expect("static header"),
        );
        return response;
    }
    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    // Errors are not kept: a retry after one should really retry.
    if !response.status().is_success() {
        return response;
    }
    let (parts, body) = response.into_parts();
    let Ok(bytes) = to_bytes(body, usize::MAX).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    *stored = Some(Stored {
        fingerprint,
        status: parts.status,
        headers: parts.headers.clone(),
        body: bytes.clone(),
        at: Instant::now(),
    });
    Response::from_parts(parts, Body::from(bytes))
}
