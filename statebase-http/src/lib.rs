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
mod routes;
pub mod webhooks;
mod wire;

pub use auth::{KeyCache, RateLimiter};
pub use error::ApiError;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use statebase_core::{ObservedStore, StateBase, Store};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The largest request body accepted, in bytes (a state of 1 MiB plus its envelope).
pub const MAX_BODY_BYTES: usize = 2 << 20;

/// What every handler shares.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Statebase over the server's store.
    pub sb: StateBase<Arc<dyn Store>>,
    /// Keys recently authenticated.
    pub keys: Arc<auth::KeyCache>,
    /// The per-key rate limits.
    pub limiter: Arc<RateLimiter>,
    /// Request counters and latencies for `/metrics`.
    pub metrics: Arc<observe::Metrics>,
    /// Responses kept for `Idempotency-Key` retries.
    pub idempotency: Arc<idempotency::Idempotency>,
    /// When the server started.
    pub started: Instant,
}

impl AppState {
    /// State over `store` (timed for `/metrics`) with `limit` requests a minute per key and
    /// bursts of `burst`.
    pub fn new(store: Arc<dyn Store>, limit: u32, burst: u32) -> Self {
        let metrics: Arc<observe::Metrics> = Arc::default();
        let observed: Arc<dyn Store> = Arc::new(ObservedStore::new(store, metrics.clone()));
        Self {
            idempotency: Arc::new(idempotency::Idempotency::new(observed.clone())),
            sb: StateBase::new(observed),
            keys: Arc::default(),
            limiter: Arc::new(RateLimiter::new(limit, burst)),
            metrics,
            started: Instant::now(),
        }
    }
}

/// Every record of `space` under `prefix`, read a page at a time.
pub(crate) async fn scan_all_meta(
    store: &dyn Store,
    space: &str,
    prefix: &str,
) -> statebase_core::Result<Vec<(String, Vec<u8>)>> {
    const PAGE: usize = 500;
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    loop {
        let after = out.last().map(|(k, _)| k.clone());
        let page = store
            .scan_meta(space, prefix, after.as_deref(), PAGE)
            .await?;
        let done = page.len() < PAGE;
        out.extend(page);
        if done {
            return Ok(out);
        }
    }
}

/// Every `interval`, forever: deletes expired sessions (each emits `session.expired`) and
/// forgets idempotent responses past their 24 hours.
pub fn spawn_maintenance(state: &AppState, interval: Duration) -> tokio::task::JoinHandle<()> {
    let (sb, idempotency) = (state.sb.clone(), state.idempotency.clone());
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            match sb.sweep_expired().await {
                Ok(gone) if !gone.is_empty() => {
                    tracing::info!(count = gone.len(), "expired sessions deleted")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "TTL sweep failed; retrying"),
            }
            if let Err(e) = idempotency.prune().await {
                tracing::warn!(error = %e, "pruning idempotent responses failed; retrying");
            }
        }
    })
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    use routes::*;
    // Both memory families (`/v1/memories` and `/v1/memory`) serve one item the same way.
    let memory = get(get_memory)
        .put(update_memory)
        .patch(update_memory)
        .delete(delete_memory);
    let v1 = Router::new()
        .route("/sessions", post(create_session).get(list_sessions))
        .route(
            "/sessions/{id}",
            get(get_session)
                .patch(update_session)
                .delete(delete_session),
        )
        .route("/sessions/{id}/context", post(context))
        .route("/sessions/{id}/fork", post(fork))
        .route("/sessions/{id}/history", get(state_history))
        .route("/sessions/{id}/rollback", post(rollback))
        .route(
            "/sessions/{id}/state",
            get(get_state)
                .patch(merge_state)
                .put(replace_state)
                .post(post_state),
        )
        .route("/sessions/{id}/state/history", get(state_history))
        .route("/sessions/{id}/state/rollback", post(rollback))
        .route("/sessions/{id}/turns", post(add_turn).get(list_turns))
        .route("/sessions/{id}/turns/{turn_id}", get(get_turn))
        .route("/sessions/{id}/memories", post(add_session_memory))
        .route(
            "/sessions/{id}/memories/search",
            post(search_session_memories),
        )
        .route("/sessions/{id}/traces", get(session_traces))
        .route("/memories", post(add_memory).get(search_or_list_memories))
        .route("/memories/search", get(search_or_list_memories))
        .route("/memories/{id}", memory.clone())
        .route("/memories/{id}/history", get(memory_history))
        .route("/memory", post(add_memory).get(search_or_list_memories))
        .route("/memory/search", post(search_memories))
        .route("/memory/{id}", memory)
        .route("/memory/{id}/history", get(memory_history))
        .route("/dashboard/keys", get(list_keys).post(create_key))
        .route("/dashboard/keys/{id}", axum::routing::delete(revoke_key))
        .route("/dashboard/stats", get(stats))
        .route("/traces", get(list_traces))
        .route("/traces/{id}", get(get_trace))
        .route("/traces/sessions/{id}/traces", get(session_traces))
        .route("/webhooks", post(create_webhook).get(list_webhooks))
        .route("/webhooks/{id}", axum::routing::delete(delete_webhook))
        .route("/webhooks/{id}/deliveries", get(webhook_deliveries))
        .route(
            "/webhooks/{id}/deliveries/{event_id}/retry",
            post(retry_delivery),
        )
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.idempotency.clone(),
            idempotency::idempotent,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ));
    Router::new()
        .nest("/v1", v1)
        .route("/", get(root))
        .route("/health", get(health))
        .route("/health/live", get(health))
        .route("/health/ready", get(health))
        .route("/metrics", get(metrics))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            observe::observe,
        ))
        .with_state(state)
}

async fn metrics(axum::extract::State(state): axum::extract::State<AppState>) -> String {
    state.metrics.render()
}

async fn no_route() -> ApiError {
    ApiError::no_route()
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}
