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

/// Whether the server is up (no key needed). Also at `/health/live` and `/health/ready`.
#[utoipa::path(get, path = "/health", security(()), responses((status = 200, body = HealthOut)))]
pub async fn health(State(app): State<AppState>) -> Reply {
    ok(HealthOut {
        status: "healthy",
        timestamp: chrono::Utc::now(),
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: app.started.elapsed().as_secs_f64(),
        services: json!({"store": {"status": "healthy"}}),
    })
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
    let router = OpenApiRouter::new().routes(routes!(root));
    also_at(router, routes!(health), &["/health/live", "/health/ready"])
}
