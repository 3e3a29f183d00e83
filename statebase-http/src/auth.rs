//! API keys and per-key rate limits, as one middleware layer.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use statebase_core::{hash_secret, ApiKey, StateBase, Store};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The key of an authenticated request, and its tenant's statebase recording the key as
/// the actor. Made once per key (and kept by [`KeyCache`]); cloning it is cheap.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key.
    pub key: Arc<ApiKey>,
    /// Its tenant's statebase.
    pub sb: StateBase<Arc<dyn Store>>,
}

impl Caller {
    fn new(sb: &StateBase<Arc<dyn Store>>, key: ApiKey) -> Self {
        let actor = format!("api_key_{}", key.key_prefix);
        Self {
            sb: sb.tenant(&key.tenant).actor(&actor),
            key: Arc::new(key),
        }
    }
}

/// The caller's tenant's statebase, recording the calling key as the actor: what most
/// handlers work with.
pub struct Tenant(pub StateBase<Arc<dyn Store>>);

impl FromRequestParts<AppState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        // Set by `authenticate`, which runs before every `/v1` handler.
        let caller = parts
            .extensions
            .get::<Caller>()
            .ok_or_else(ApiError::unauthenticated)?;
        Ok(Tenant(caller.sb.clone()))
    }
}

/// Token buckets per key: `limit` tokens a minute, holding at most `burst`.
#[derive(Debug)]
pub struct RateLimiter {
    burst: u32,
    default_limit: u32,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// Requests made with the key since the server started, and when the last was.
    requests: u64,
    last_used: Option<chrono::DateTime<chrono::Utc>>,
}

/// A key's use since the server started.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Requests made.
    pub requests: u64,
    /// When the last one was.
    pub last_used: Option<chrono::DateTime<chrono::Utc>>,
}

/// What a bucket said about one request.
pub struct Decision {
    limit: u32,
    remaining: u32,
    /// Seconds until the bucket is full again.
    reset_in: u64,
    /// Seconds to wait, when refused.
    retry_after: Option<u64>,
}

impl RateLimiter {
    /// Buckets of `burst` tokens; keys without their own limit get `default_limit` a minute.
    pub fn new(default_limit: u32, burst: u32) -> Self {
        Self {
            burst: burst.max(1),
            default_limit: default_limit.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token from the key's bucket, if there is one.
    pub fn check(&self, key: &ApiKey) -> Decision {
        let limit = self.limit_of(key);
        let per_second = f64::from(limit) / 60.0;
        let capacity = f64::from(self.burst);
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        let bucket = buckets.entry(key.id.clone()).or_insert(Bucket {
            tokens: capacity,
            at: now,
            requests: 0,
            last_used: None,
        });
        bucket.requests += 1;
        bucket.last_used = Some(chrono::Utc::now());
        let elapsed = now.duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(capacity);
        bucket.at = now;
        let retry_after = if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            None
        } else {
            Some(((1.0 - bucket.tokens) / per_second).ceil().max(1.0) as u64)
        };
        Decision {
            limit,
            remaining: bucket.tokens.floor() as u32,
            reset_in: ((capacity - bucket.tokens) / per_second).ceil() as u64,
            retry_after,
        }
    }
}

impl RateLimiter {
    /// Requests per minute for `key`: its own limit, or the server's.
    pub fn limit_of(&self, key: &ApiKey) -> u32 {
        key.rate_limit.unwrap_or(self.default_limit)
    }

    /// How much a key has been used since the server started.
    pub fn usage(&self, key_id: &str) -> Usage {
        self.buckets
            .lock()
            .get(key_id)
            .map(|b| Usage {
                requests: b.requests,
                last_used: b.last_used,
            })
            .unwrap_or_default()
    }
}

/// Keys recently found by their secret's hash, so that a request does not read the store
/// to authenticate. A key revoked through this server stops working at once; one revoked
/// by another process (`statebase keys revoke`) within [`KeyCache::TTL`].
#[derive(Debug, Default)]
pub struct KeyCache {
    entries: Mutex<HashMap<String, (Caller, Instant)>>,
}

impl KeyCache {
    /// How long a key read from the store is trusted without reading it again.
    pub const TTL: Duration = Duration::from_secs(5);
    /// Entries kept at most; past it the cache starts over.
    const CAPACITY: usize = 10_000;

    /// The caller whose usable key `secret` is, if any.
    pub async fn authenticate(
        &self,
        sb: &StateBase<Arc<dyn Store>>,
        secret: &str,
    ) -> statebase_core::Result<Option<Caller>> {
        let hash = hash_secret(secret);
        let cached = self
            .entries
            .lock()
            .get(&hash)
            .filter(|(_, at)| at.elapsed() < Self::TTL)
            .map(|(caller, _)| caller.clone());
        if let Some(caller) = cached {
            return Ok(caller.key.is_usable_at(sb.now()).then_some(caller));
        }
        let Some(key) = sb.authenticate(secret).await? else {
            return Ok(None);
        };
        let caller = Caller::new(sb, key);
        let mut entries = self.entries.lock();
        if entries.len() >= Self::CAPACITY {
            entries.clear();
        }
        entries.insert(hash, (caller.clone(), Instant::now()));
        Ok(Some(caller))
    }

    /// Drops the key `id`, so that its next use reads the store.
    pub fn forget(&self, id: &str) {
        self.entries
            .lock()
            .retain(|_, (caller, _)| caller.key.id != id);
    }
}

fn secret(headers: &HeaderMap) -> Option<&str> {
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(key.trim());
    }
    let auth = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = auth.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn add_headers(headers: &mut HeaderMap, d: &Decision) {
    let reset = SystemTime::now()
        .checked_add(Duration::from_secs(d.reset_in))
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |t| t.as_secs());
    headers.insert("x-ratelimit-limit", HeaderValue::from(d.limit));
    headers.insert("x-ratelimit-remaining", HeaderValue::from(d.remaining));
    headers.insert("x-ratelimit-reset", HeaderValue::from(reset));
}

/// Authenticates the request, applies the key's rate limit, and adds the rate-limit headers
/// to whatever the handler answers.
pub async fn authenticate(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    let Some(secret) = secret(req.headers()) else {
        return ApiError::unauthenticated().into_response();
    };
    let caller = match app.keys.authenticate(&app.sb, secret).await {
        Ok(Some(caller)) => caller,
        Ok(None) => return ApiError::unauthenticated().into_response(),
        Err(e) => return ApiError::from(e).into_response(),
    };
    let decision = app.limiter.check(&caller.key);
    let mut response = match decision.retry_after {
        Some(seconds) => ApiError::rate_limited(seconds).into_response(),
        None => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
    };
    add_headers(response.headers_mut(), &decision);
    response
}
