//! API keys and per-key rate limits, as one middleware layer.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use statebase_core::store::RateBucket;
use statebase_core::{hash_secret, ApiKey, Result, ServerStore, StateBase};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The key of an authenticated request, and its tenant's statebase recording the key as
/// the actor. Made once per key (and kept by [`KeyCache`]); cloning it is cheap.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key.
    pub key: Arc<ApiKey>,
    /// Its tenant's statebase.
    pub sb: StateBase<Arc<dyn ServerStore>>,
}

impl Caller {
    fn new(sb: &StateBase<Arc<dyn ServerStore>>, key: ApiKey) -> Self {
        let actor = format!("api_key_{}", key.key_prefix);
        Self {
            sb: sb.tenant(&key.tenant).actor(&actor),
            key: Arc::new(key),
        }
    }
}

/// The caller's tenant's statebase, recording the calling key as the actor: what most
/// handlers work with.
pub struct Tenant(pub StateBase<Arc<dyn ServerStore>>);

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

/// A token bucket's size: `per_minute` tokens a minute, holding at most `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Tokens added a minute.
    pub per_minute: u32,
    /// Tokens held at most: requests that may come at once.
    pub burst: u32,
}

impl Rate {
    /// `per_minute` a minute in bursts of `burst` (each at least 1).
    pub fn new(per_minute: u32, burst: u32) -> Self {
        Self {
            per_minute: per_minute.max(1),
            burst: burst.max(1),
        }
    }

    fn per_second(self) -> f64 {
        f64::from(self.per_minute) / 60.0
    }
}

/// Failed authentications allowed per client address by default: past them its requests
/// are 429s unless their key is one the server has seen work (so valid keys are never
/// slowed).
pub const AUTH_FAILURES: Rate = Rate {
    per_minute: 30,
    burst: 30,
};

/// The rate limits: a bucket per key (its own [`Rate`] or the server's), one per tenant
/// that all its keys draw from too (so that minting keys does not multiply the limit),
/// and one per client address for failed authentications.
#[derive(Debug)]
pub struct RateLimiter {
    key_default: Rate,
    tenant_budget: Option<Rate>,
    auth_failures: Rate,
    buckets: Mutex<Buckets>,
}

#[derive(Debug, Default)]
struct Buckets {
    /// Each key's bucket, and its use since the server started.
    keys: HashMap<String, (Bucket, Usage)>,
    tenants: HashMap<String, Bucket>,
    failures: HashMap<IpAddr, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: f64::from(rate.burst),
            at: now,
        }
    }

    /// Adds the tokens earned since the last call.
    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second()).min(f64::from(rate.burst));
        self.at = now;
    }

    /// Seconds until a token is there (0 if one is).
    fn wait(&self, rate: Rate) -> u64 {
        if self.tokens >= 1.0 {
            0
        } else {
            ((1.0 - self.tokens) / rate.per_second()).ceil().max(1.0) as u64
        }
    }

    fn decision(&self, rate: Rate, retry_after: Option<u64>) -> Decision {
        Decision {
            limit: rate.per_minute,
            remaining: self.tokens.floor() as u32,
            reset_in: ((f64::from(rate.burst) - self.tokens) / rate.per_second()).ceil() as u64,
            retry_after,
        }
    }
}

/// The bucket of `id` in `map`, refilled to `now` (full when new).
fn bucket<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, Bucket>,
    id: K,
    rate: Rate,
    now: Instant,
) -> &mut Bucket {
    let bucket = map.entry(id).or_insert_with(|| Bucket::full(rate, now));
    bucket.refill(rate, now);
    bucket
}

/// A key's use since the server started.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Requests made.
    pub requests: u64,
    /// When the last one was.
    pub last_used: Option<chrono::DateTime<chrono::Utc>>,
}

/// What the buckets said about one request.
pub struct Decision {
    limit: u32,
    remaining: u32,
    /// Seconds until the bucket is full again.
    reset_in: u64,
    /// Seconds to wait, when refused.
    retry_after: Option<u64>,
}

impl RateLimiter {
    /// Keys without their own rate get `key_default`; tenants have no budget of their own.
    pub fn new(key_default: Rate) -> Self {
        Self {
            key_default,
            tenant_budget: None,
            auth_failures: AUTH_FAILURES,
            buckets: Mutex::default(),
        }
    }

    /// Each client address may fail to authenticate `rate` times (instead of
    /// [`AUTH_FAILURES`]).
    pub fn with_auth_failures(mut self, rate: Rate) -> Self {
        self.auth_failures = rate;
        self
    }

    /// Every tenant's keys together get at most `budget`.
    pub fn with_tenant_budget(mut self, budget: Rate) -> Self {
        self.tenant_budget = Some(budget);
        self
    }

    /// The rate of `key`: its own, or the server's where it has none.
    pub fn rate_of(&self, key: &ApiKey) -> Rate {
        Rate::new(
            key.rate_limit.unwrap_or(self.key_default.per_minute),
            key.burst.unwrap_or(self.key_default.burst),
        )
    }

    /// Takes a token from the key's bucket and its tenant's, if both have one: from the
    /// store's buckets when it keeps them (shared by every server on it), else from this
    /// process's ([`RateLimiter::check`]).
    pub async fn take(&self, key: &ApiKey, store: &dyn ServerStore) -> Result<Decision> {
        let rate = self.rate_of(key);
        let bucket = |name: String, rate: Rate| RateBucket {
            name,
            per_minute: rate.per_minute,
            burst: rate.burst,
        };
        let mut buckets = vec![bucket(format!("key:{}", key.id), rate)];
        if let Some(budget) = self.tenant_budget {
            buckets.push(bucket(format!("tenant:{}", key.tenant), budget));
        }
        let Some(states) = store.take_tokens(buckets).await? else {
            return Ok(self.check(key));
        };
        self.count_use(key, rate);
        let seconds = |d: std::time::Duration| d.as_secs_f64().ceil() as u64;
        let retry_after = states.iter().filter_map(|s| s.retry_after).max();
        Ok(Decision {
            limit: rate.per_minute,
            remaining: states.iter().map(|s| s.remaining).min().unwrap_or(0),
            reset_in: seconds(states[0].reset_in),
            retry_after: retry_after.map(|d| seconds(d).max(1)),
        })
    }

    /// Counts a request of `key` in its usage.
    fn count_use(&self, key: &ApiKey, rate: Rate) {
        let mut buckets = self.buckets.lock();
        let (_, usage) = buckets
            .keys
            .entry(key.id.clone())
            .or_insert((Bucket::full(rate, Instant::now()), Usage::default()));
        usage.requests += 1;
        usage.last_used = Some(chrono::Utc::now());
    }

    /// Takes a token from the key's bucket and its tenant's in this process, if both have
    /// one.
    pub fn check(&self, key: &ApiKey) -> Decision {
        let rate = self.rate_of(key);
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        let Buckets { keys, tenants, .. } = &mut *buckets;
        // Found without cloning the id, but for a key's first request.
        let (own, usage) = match keys.get_mut(&key.id) {
            Some(entry) => entry,
            None => keys
                .entry(key.id.clone())
                .or_insert((Bucket::full(rate, now), Usage::default())),
        };
        own.refill(rate, now);
        usage.requests += 1;
        usage.last_used = Some(chrono::Utc::now());
        let tenant = self
            .tenant_budget
            .map(|budget| (budget, bucket(tenants, key.tenant.clone(), budget, now)));
        let wait = own
            .wait(rate)
            .max(tenant.as_ref().map_or(0, |(budget, t)| t.wait(*budget)));
        let allowed = wait == 0;
        if allowed {
            own.tokens -= 1.0;
        }
        let mut decision = own.decision(rate, (!allowed).then_some(wait));
        if let Some((_, tenant)) = tenant {
            if allowed {
                tenant.tokens -= 1.0;
            }
            decision.remaining = decision.remaining.min(tenant.tokens.floor() as u32);
        }
        decision
    }

    /// Seconds the client at `ip` must wait before a key the server does not know is
    /// looked up for it, if it has failed to authenticate too often.
    pub fn auth_throttled(&self, ip: IpAddr) -> Option<u64> {
        let mut buckets = self.buckets.lock();
        let bucket = buckets.failures.get_mut(&ip)?;
        bucket.refill(self.auth_failures, Instant::now());
        Some(bucket.wait(self.auth_failures)).filter(|w| *w > 0)
    }

    /// Counts a failed authentication from `ip`; answers its bucket's state.
    pub fn auth_failed(&self, ip: IpAddr) -> Decision {
        /// Addresses tracked at most; past it, those whose bucket is full again go.
        const ADDRESSES: usize = 100_000;
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        let rate = self.auth_failures;
        if buckets.failures.len() >= ADDRESSES {
            buckets.failures.retain(|_, b| {
                b.refill(rate, now);
                b.tokens < f64::from(rate.burst)
            });
            if buckets.failures.len() >= ADDRESSES {
                buckets.failures.clear();
            }
        }
        let bucket = bucket(&mut buckets.failures, ip, rate, now);
        bucket.tokens = (bucket.tokens - 1.0).max(0.0);
        bucket.decision(rate, None)
    }

    /// How much a key has been used since the server started.
    pub fn usage(&self, key_id: &str) -> Usage {
        self.buckets
            .lock()
            .keys
            .get(key_id)
            .map(|(_, usage)| *usage)
            .unwrap_or_default()
    }
}

/// Keys recently found by their secret's hash, so that a request does not read the store
/// to authenticate. A key revoked through this server stops working at once; one revoked
/// by another process (`statebase keys revoke`, another server on the same database)
/// within [`KeyCache::TTL`].
#[derive(Debug, Default)]
pub struct KeyCache {
    entries: Mutex<HashMap<String, (Caller, Instant)>>,
}

impl KeyCache {
    /// How long a key read from the store is trusted without reading it again: under a
    /// second, so that a key revoked anywhere stops working everywhere within one, for a
    /// read per key and half second.
    pub const TTL: Duration = Duration::from_millis(500);
    /// Entries kept at most; past it the cache starts over.
    const CAPACITY: usize = 10_000;

    /// Whether `secret` is a key this server has seen work (however long ago, while the
    /// cache holds it): a client presenting it is not guessing.
    pub fn knows(&self, secret: &str) -> bool {
        self.entries.lock().contains_key(&hash_secret(secret))
    }

    /// The caller whose usable key `secret` is, if any.
    pub async fn authenticate(
        &self,
        sb: &StateBase<Arc<dyn ServerStore>>,
        secret: &str,
    ) -> statebase_core::Result<Option<Caller>> {
        let hash = hash_secret(secret);
        let cached = self
            .entries
            .lock()
            .get(&hash)
            .filter(|(_, at)| at.elapsed() < Self::TTL)
            .map(|(caller, _)| caller.key.is_usable_at(sb.now()).then(|| caller.clone()));
        if let Some(cached) = cached {
            return Ok(cached);
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

/// Authenticates a `/v1` request, applies the key's rate limit, and adds the rate-limit headers
/// to whatever the handler answers. A client address that keeps sending wrong keys gets
/// 429s instead of store look-ups, while keys the server has seen work still pass.
pub async fn authenticate(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    if !req.uri().path().starts_with("/v1/") {
        return next.run(req).await;
    }
    let Some(secret) = secret(req.headers()) else {
        return ApiError::unauthenticated().into_response();
    };
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    if let Some(wait) = peer.and_then(|ip| app.limiter.auth_throttled(ip)) {
        if !app.keys.knows(secret) {
            return ApiError::rate_limited(wait).into_response();
        }
    }
    let caller = match app.keys.authenticate(&app.sb, secret).await {
        Ok(Some(caller)) => caller,
        Ok(None) => {
            let mut response = ApiError::unauthenticated().into_response();
            if let Some(ip) = peer {
                add_headers(response.headers_mut(), &app.limiter.auth_failed(ip));
            }
            return response;
        }
        Err(e) => return ApiError::from(e).into_response(),
    };
    let decision = match app.limiter.take(&caller.key, app.sb.store().as_ref()).await {
        Ok(decision) => decision,
        Err(e) => return ApiError::from(e).into_response(),
    };
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
