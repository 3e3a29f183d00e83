//! The StateBase `/v1` HTTP API in front of any statebase store.
//!
//! [`router`] builds the axum `Router` (tests drive it on a loopback socket); the
//! `statebase` binary serves it and manages API keys. Handlers only parse, call
//! `statebase-core` and shape the answer; authentication and per-key rate limits are one
//! middleware layer; every error is the StateBase envelope.

mod auth;
mod error;
mod extract;
mod idempotency;
mod observe;
mod openapi;
mod outbound;
mod routes;
mod server;
mod web;
pub mod webhooks;
mod wire;

pub use auth::{KeyCache, Rate, RateLimiter, AUTH_FAILURES};
pub use error::ApiError;
pub use outbound::{is_public, Targets};
pub use server::{serve, Limits};

use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::Router;
use statebase_core::{Config, ObservedStore, ServerStore, StateBase};
use std::sync::Arc;
use std::time::{Duration, Instant};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The largest request body accepted, in bytes (a state of 1 MiB plus its envelope).
pub const MAX_BODY_BYTES: usize = 2 << 20;

/// What every handler shares: one `Arc`, so the clone each request makes is one counter.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Shared>);

/// The parts of [`AppState`].
#[derive(Debug)]
pub struct Shared {
    /// Statebase over the server's store.
    pub sb: StateBase<Arc<dyn ServerStore>>,
    /// Keys recently authenticated.
    pub keys: auth::KeyCache,
    /// The per-key rate limits.
    pub limiter: RateLimiter,
    /// Request counters and latencies for `/metrics`.
    pub metrics: Arc<observe::Metrics>,
    /// Responses kept for `Idempotency-Key` retries.
    pub idempotency: Arc<idempotency::Idempotency>,
    /// When the server started.
    pub started: Instant,
    /// The addresses webhooks may be sent to.
    pub webhook_targets: Targets,
    /// `/openapi.json`, made by [`router`].
    openapi: std::sync::OnceLock<Bytes>,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// State over `store` (timed for `/metrics`) under the rate limits of `limiter`,
    /// taking webhook endpoints only at addresses `webhook_targets` allows.
    pub fn new(
        store: Arc<dyn ServerStore>,
        limiter: RateLimiter,
        webhook_targets: Targets,
    ) -> Self {
        Self::with_config(store, limiter, webhook_targets, Config::default())
    }

    /// [`new`](Self::new), with `config` (its embedder, limits) for the statebase.
    pub fn with_config(
        store: Arc<dyn ServerStore>,
        limiter: RateLimiter,
        webhook_targets: Targets,
        config: Config,
    ) -> Self {
        let metrics: Arc<observe::Metrics> = Arc::default();
        let observed: Arc<dyn ServerStore> = Arc::new(ObservedStore::new(store, metrics.clone()));
        Self(Arc::new(Shared {
            idempotency: Arc::new(idempotency::Idempotency::new(observed.clone())),
            sb: StateBase::with_config(observed, config),
            keys: auth::KeyCache::default(),
            limiter,
            metrics,
            started: Instant::now(),
            webhook_targets,
            openapi: std::sync::OnceLock::new(),
        }))
    }
}

/// True if `E` is somewhere in `e`'s chain of causes.
pub(crate) fn caused_by<E: std::error::Error + 'static>(
    e: &(dyn std::error::Error + 'static),
) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<E>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// At start, and at each sweep until it succeeds: re-embeds the memories of every tenant
/// with an API key whose vectors another embedding model made or that a stopped process
/// left pending. Every `interval`, forever: deletes expired sessions (each emits
/// `session.expired`), applies every tenant's retention policies, and forgets idempotent
/// responses past their 24 hours.
pub fn spawn_maintenance(state: &AppState, interval: Duration) -> tokio::task::JoinHandle<()> {
    let (sb, idempotency) = (state.sb.clone(), state.idempotency.clone());
    let metrics = state.metrics.clone();
    tokio::spawn(async move {
        // Tried again at each sweep until it succeeds (the embedder may be down at start).
        let mut reembedded = false;
        loop {
            if !reembedded {
                match reembed_every_tenant(&sb, &metrics).await {
                    Ok(()) => reembedded = true,
                    Err(e) => tracing::warn!(error = %e, "re-embedding memories failed; retrying"),
                }
            }
            tokio::time::sleep(interval).await;
            match sb.sweep_expired().await {
                Ok(gone) if !gone.is_empty() => {
                    tracing::info!(count = gone.len(), "expired sessions deleted")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "TTL sweep failed; retrying"),
            }
            match sb.sweep_retention().await {
                Ok(r) if r.versions + r.turns + r.traces > 0 => tracing::info!(
                    sessions = r.sessions,
                    versions = r.versions,
                    turns = r.turns,
                    traces = r.traces,
                    "retention pruned"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "retention sweep failed; retrying"),
            }
            if let Err(e) = idempotency.prune().await {
                tracing::warn!(error = %e, "pruning idempotent responses failed; retrying");
            }
        }
    })
}

/// [`StateBase::reembed_memories`] for every tenant that has an API key.
async fn reembed_every_tenant(
    sb: &StateBase<Arc<dyn ServerStore>>,
    metrics: &observe::Metrics,
) -> statebase_core::Result<()> {
    let keys = sb.store().list_api_keys(None).await?;
    let tenants: std::collections::BTreeSet<&str> =
        keys.iter().map(|k| k.tenant.as_str()).collect();
    for (done, tenant) in tenants.iter().enumerate() {
        let count = sb.tenant(tenant).reembed_memories().await?;
        metrics.vectors_embedded(count);
        if count > 0 {
            let model = sb.config().embedder.model_id();
            tracing::info!(
                tenant,
                count,
                model,
                tenants_done = done + 1,
                tenants = tenants.len(),
                "memories re-embedded with the current model"
            );
        }
    }
    Ok(())
}

/// Forever: gives memories whose vectors are pending (see
/// [`StateBase::embed_pending`]) their vectors, a batch at a time, as soon as one is
/// pending. While the embedder fails it tries again after a second, then twice as long
/// each time, up to a minute.
pub fn spawn_embedding(state: &AppState) -> tokio::task::JoinHandle<()> {
    const FIRST_WAIT: Duration = Duration::from_secs(1);
    let (sb, metrics) = (state.sb.clone(), state.metrics.clone());
    tokio::spawn(async move {
        let mut wait = FIRST_WAIT;
        loop {
            if sb.pending_vectors() == 0 {
                sb.vectors_wanted().await;
            }
            match sb.embed_pending().await {
                Ok(n) => {
                    metrics.vectors_embedded(n);
                    wait = FIRST_WAIT;
                }
                Err(e) => {
                    metrics.embedding_failed();
                    let pending = sb.pending_vectors();
                    tracing::warn!(error = %e, pending, retry_in_ms = wait.as_millis() as u64,
                        "embedding pending memories failed; they stay searchable by keywords");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(60));
                }
            }
        }
    })
}

/// The whole API, and `/openapi.json` describing it.
pub fn router(state: AppState) -> Router {
    let v1 = OpenApiRouter::new()
        .merge(routes::sessions::router())
        .merge(routes::state::router())
        .merge(routes::context::router())
        .merge(routes::turns::router())
        .merge(routes::memories::router())
        .merge(routes::entities::router())
        .merge(routes::export::router())
        .merge(routes::traces::router())
        .merge(routes::users::router())
        .merge(routes::retention::router())
        .merge(routes::dashboard::router())
        .merge(routes::webhooks::router());
    // Idempotency wraps the routes themselves: a wrong method or an unknown route is not a
    // request to remember.
    let v1 = v1.layer(axum::middleware::from_fn_with_state(
        state.idempotency.clone(),
        idempotency::idempotent,
    ));
    let service = OpenApiRouter::with_openapi(openapi::Base::openapi())
        .nest("/v1", v1)
        .merge(routes::service::router())
        .routes(routes!(metrics))
        .routes(routes!(openapi_json));
    let (router, doc) = service.split_for_parts();
    let doc = Bytes::from(openapi::finish(doc).to_string());
    state.openapi.get_or_init(|| doc);
    // Authentication wraps every route, the fallbacks included, so that unknown routes and
    // methods under /v1 are authenticated and counted like the others (it lets paths
    // outside /v1 through); it runs before idempotency, which needs the caller.
    router
        .merge(web::router())
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(catch_panics())
        .layer(compression())
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            observe::observe,
        ))
        .with_state(state)
}

/// Bodies this large or larger are gzipped for clients that accept it.
pub const COMPRESS_FROM_BYTES: u16 = 4096;

/// gzip for large answers (lists, histories, big states) to a client that sends
/// `Accept-Encoding: gzip`; small ones are not worth the CPU.
fn compression(
) -> tower_http::compression::CompressionLayer<impl tower_http::compression::Predicate> {
    use tower_http::compression::predicate::{NotForContentType, Predicate, SizeAbove};
    tower_http::compression::CompressionLayer::new()
        .compress_when(SizeAbove::new(COMPRESS_FROM_BYTES).and(NotForContentType::GRPC))
}

/// A handler that panics (a bug) answers the 500 envelope; the panic is logged by the hook.
fn catch_panics() -> tower_http::catch_panic::CatchPanicLayer<
    fn(Box<dyn std::any::Any + Send>) -> axum::response::Response,
> {
    fn answer(_: Box<dyn std::any::Any + Send>) -> axum::response::Response {
        ApiError::panicked().into_response()
    }
    tower_http::catch_panic::CatchPanicLayer::custom(answer)
}

/// This document (no key needed).
#[utoipa::path(get, path = "/openapi.json", security(()),
    responses((status = 200, body = serde_json::Value, description = "OpenAPI 3.1")))]
async fn openapi_json(State(app): State<AppState>) -> impl IntoResponse {
    let doc = app.openapi.get().cloned().unwrap_or_default();
    ([(CONTENT_TYPE, "application/json")], doc)
}

/// The Prometheus text format: requests by route and status, latencies, store operations,
/// rate-limit rejections, background embedding.
#[utoipa::path(get, path = "/metrics", security(()),
    responses((status = 200, content_type = "text/plain", body = String)))]
async fn metrics(State(state): State<AppState>) -> String {
    state.metrics.render(state.sb.pending_vectors())
}

async fn no_route() -> ApiError {
    ApiError::no_route()
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_panicking_handler_answers_the_500_envelope() {
        let app = axum::Router::new()
            .route(
                "/boom",
                axum::routing::get(|| async {
                    panic!("a bug");
                    #[allow(unreachable_code)]
                    ""
                }),
            )
            .layer(super::catch_panics());
        let req = Request::get("/boom").body(Body::empty()).unwrap();
        let res = app.oneshot(req).await.unwrap();
        assert_eq!(res.status(), 500);
        let body = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "internal_error");
    }

    /// Vectors a stopped process left pending come once the embedder is back: the start-up
    /// re-embedding is tried again at each sweep until it succeeds.
    #[tokio::test]
    async fn vectors_left_pending_come_once_the_embedder_is_back() {
        use statebase_core::testing::FlakyEmbedder;
        use statebase_core::{AddMemory, Config, CreateSession, KeyLimits};
        let store: Arc<dyn ServerStore> = Arc::new(statebase_core::MemoryStore::new());
        let embedder = Arc::new(FlakyEmbedder::remote());
        let config = Config {
            embedder: embedder.clone(),
            ..Config::default()
        };
        // The process that stopped: it stored the memory and never embedded it.
        let id = {
            let sb = StateBase::with_config(store.clone(), config.clone()).tenant("a");
            let s = sb.create_session(CreateSession::new("bot")).await.unwrap();
            let m = sb.add_memory(AddMemory::new(&s.id, "likes tea")).await;
            m.unwrap().id
        };
        embedder.set_down(true);
        let limiter = RateLimiter::new(Rate::new(100, 100));
        let state = AppState::with_config(store, limiter, Targets::Public, config);
        let sb = state.sb.tenant("a");
        let secret = "sb_pendingpendingpendingpe01";
        sb.import_api_key("a", "k", secret, KeyLimits::default(), None)
            .await
            .unwrap();
        let maintenance = spawn_maintenance(&state, Duration::from_millis(20));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!sb.get_memory(&id).await.unwrap().vector_available);
        embedder.set_down(false);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !sb.get_memory(&id).await.unwrap().vector_available {
            assert!(std::time::Instant::now() < deadline, "never re-embedded");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        maintenance.abort();
    }

    /// At start the server re-embeds the memories of its tenants that another model
    /// embedded, and only theirs.
    #[tokio::test]
    async fn memories_of_another_model_are_re_embedded_for_every_tenant() {
        use statebase_core::{AddMemory, Config, CreateSession, HashEmbedder, KeyLimits};
        let store: Arc<dyn ServerStore> = Arc::new(statebase_core::MemoryStore::new());
        let old = Config {
            embedder: Arc::new(HashEmbedder::with_dimensions(64)),
            ..Config::default()
        };
        let before = StateBase::with_config(store.clone(), old);
        let mut ids = Vec::new();
        for tenant in ["a", "b", "keyless"] {
            let sb = before.tenant(tenant);
            let s = sb.create_session(CreateSession::new("bot")).await.unwrap();
            let m = sb
                .add_memory(AddMemory::new(&s.id, "likes tea"))
                .await
                .unwrap();
            ids.push((tenant, m.id));
        }
        let sb = StateBase::new(store);
        for (tenant, secret) in [
            ("a", "sb_reembedreembedreembed0001"),
            ("b", "sb_reembedreembedreembed0002"),
        ] {
            sb.import_api_key(tenant, "k", secret, KeyLimits::default(), None)
                .await
                .unwrap();
        }
        reembed_every_tenant(&sb, &Default::default())
            .await
            .unwrap();
        let current = sb.config().embedder.model_id().to_owned();
        for (tenant, id) in ids {
            let m = sb.tenant(tenant).get_memory(&id).await.unwrap();
            let expected = if tenant == "keyless" {
                "statebase-hash-v1-64"
            } else {
                current.as_str()
            };
            assert_eq!(m.embedding_model.as_deref(), Some(expected), "{tenant}");
        }
    }
}
