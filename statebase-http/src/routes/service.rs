//! What the server says of itself without a key: `/` and `/health`.

use super::*;

/// The server's health.
#[derive(Serialize, ToSchema)]
pub struct HealthOut {
    /// `healthy`.
    #[schema(example = "healthy")]
    status: &'static str,
    timestamp: chrono::DateTime<chrono::Utc>,
    /// The server's version.
    version: &'static str,
    uptime_seconds: f64,
    /// `{"store": {"status": "healthy"}}`.
    #[schema(value_type = Object)]
    services: Value,
}

impl HealthOut {
    fn of(app: &AppState, status: &'static str) -> Self {
        HealthOut {
            status,
            timestamp: chrono::Utc::now(),
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: app.started.elapsed().as_secs_f64(),
            services: json!({"store": {"status": status}}),
        }
    }
}

/// Whether the server is up (no key needed), whatever its store's state. Also at
/// `/health/live`.
#[utoipa::path(get, path = "/health", security(()), responses((status = 200, body = HealthOut)))]
pub async fn health(State(app): State<AppState>) -> Reply {
    ok(HealthOut::of(&app, "healthy"))
}

/// How long readiness waits for the store.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether the server can serve requests now (no key needed): its store answers a read
/// within two seconds. 503 `unavailable` otherwise, so a load balancer sends requests
/// elsewhere.
#[utoipa::path(get, path = "/health/ready", security(()), responses(
    (status = 200, body = HealthOut),
    (status = 503, body = HealthOut),
))]
pub async fn ready(State(app): State<AppState>) -> Response {
    let read = app.sb.store().session("", "");
    match tokio::time::timeout(READY_TIMEOUT, read).await {
        Ok(Ok(_)) => Json(HealthOut::of(&app, "healthy")).into_response(),
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no answer within {READY_TIMEOUT:?}"),
            };
            tracing::warn!(error = %why, "not ready: the store does not answer");
            let body = Json(HealthOut::of(&app, "unavailable"));
            (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
        }
    }
}

/// What this server is.
#[derive(Serialize, ToSchema)]
pub struct RootOut {
    name: &'static str,
    version: &'static str,
    /// The API's prefix, `/v1`.
    api: &'static str,
    health: &'static str,
    /// This server's OpenAPI document.
    openapi: &'static str,
    /// The dashboard, a web app for people.
    dashboard: &'static str,
}

/// The server's name and where its API is (no key needed).
#[utoipa::path(get, path = "/", security(()), responses((status = 200, body = RootOut)))]
pub async fn root() -> Reply {
    ok(RootOut {
        name: "statebase",
        version: env!("CARGO_PKG_VERSION"),
        api: "/v1",
        health: "/health",
        openapi: "/openapi.json",
        dashboard: "/dashboard",
    })
}

/// These routes, outside `/v1`.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    let router = OpenApiRouter::new()
        .routes(routes!(root))
        .routes(routes!(ready));
    also_at(router, routes!(health), &["/health/live"])
}
