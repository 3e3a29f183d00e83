//! The dashboard API: the caller's tenant's API keys and numbers.

use super::*;

/// An API key (never its secret, but once at creation).
#[derive(Serialize, ToSchema)]
pub struct KeyOut<'a> {
    id: &'a str,
    /// The first characters of the key, to recognise it.
    key_prefix: &'a str,
    name: &'a str,
    is_active: bool,
    /// Requests a minute.
    rate_limit: u32,
    /// Requests at once before the per-minute rate applies.
    burst: u32,
    created_at: chrono::DateTime<chrono::Utc>,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The last request with it since the server started.
    last_used_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Requests made with it since the server started.
    total_requests: u64,
    /// The whole key: in the answer that creates it, and never again.
    full_key: Option<&'a str>,
}

impl<'a> KeyOut<'a> {
    fn new(app: &AppState, k: &'a ApiKey, full_key: Option<&'a str>) -> Self {
        let usage = app.limiter.usage(&k.id);
        let rate = app.limiter.rate_of(k);
        Self {
            id: &k.id,
            key_prefix: &k.key_prefix,
            name: &k.name,
            is_active: k.is_active,
            rate_limit: rate.per_minute,
            burst: rate.burst,
            created_at: k.created_at,
            expires_at: k.expires_at,
            last_used_at: usage.last_used,
            total_requests: usage.requests,
            full_key,
        }
    }
}

/// The caller's tenant's keys, as a bare array (as the dashboard API returns them).
#[utoipa::path(get, path = "/dashboard/keys", responses((status = 200, body = Vec<KeyOut>)))]
pub async fn list_keys(State(app): State<AppState>, Extension(caller): Extension<Caller>) -> Reply {
    let keys = app.sb.list_api_keys(Some(&caller.key.tenant)).await?;
    ok(keys
        .iter()
        .map(|k| KeyOut::new(&app, k, None))
        .collect::<Vec<_>>())
}

/// The largest rate or burst a key may be asked for (a 32-bit integer, as clients have it).
const MAX_KEY_RATE: u32 = i32::MAX as u32;

/// A new key.
#[derive(Deserialize, ToSchema)]
pub struct KeyBody {
    #[schema(min_length = 1, max_length = 200)]
    name: String,
    /// Requests a minute; more than the calling key's is granted as the calling key's
    /// (default the calling key's).
    #[schema(minimum = 1, maximum = 2_147_483_647)]
    rate_limit: Option<u32>,
    /// Requests at once, likewise at most the calling key's.
    #[schema(minimum = 1, maximum = 2_147_483_647)]
    burst: Option<u32>,
    /// Days until it expires, 1..=3650 (default never).
    #[schema(minimum = 1, maximum = 3650)]
    expires_days: Option<i64>,
}

/// A new key for the caller's tenant; its secret is in `full_key`, this once. It gets at
/// most the calling key's rate and burst (the answer says what it got), so that no key
/// can raise its own limits.
#[utoipa::path(post, path = "/dashboard/keys", request_body = KeyBody,
    responses((status = 200, body = KeyOut)))]
pub async fn create_key(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(b): Body<KeyBody>,
) -> Reply {
    let expires_at = match b.expires_days {
        None => None,
        Some(d @ 1..=3650) => Some(caller.sb.now() + chrono::Duration::days(d)),
        Some(d) => {
            return Err(ApiError::validation(
                "expires_days",
                "body",
                format!("{d} is outside 1..=3650"),
            ))
        }
    };
    let name_chars = b.name.chars().count();
    if !(1..=200).contains(&name_chars) {
        return Err(ApiError::validation(
            "name",
            "body",
            format!("{name_chars} characters, outside 1..=200"),
        ));
    }
    for (field, n) in [("rate_limit", b.rate_limit), ("burst", b.burst)] {
        if n.is_some_and(|n| n == 0 || n > MAX_KEY_RATE) {
            return Err(ApiError::validation(
                field,
                "body",
                format!("must be 1..={MAX_KEY_RATE}"),
            ));
        }
    }
    let own = app.limiter.rate_of(&caller.key);
    // What is asked above the calling key's is granted at the calling key's (the answer
    // says what was granted); unset, a new key follows what limits the calling key.
    let limits = KeyLimits {
        rate_limit: b
            .rate_limit
            .map(|n| n.min(own.per_minute))
            .or(caller.key.rate_limit),
        burst: b.burst.map(|n| n.min(own.burst)).or(caller.key.burst),
    };
    let (key, secret) = app
        .sb
        .create_api_key(&caller.key.tenant, &b.name, limits, expires_at)
        .await?;
    ok(KeyOut::new(&app, &key, Some(&secret)))
}

/// Revoking the calling key itself needs `confirm=true`.
#[derive(Deserialize, IntoParams)]
pub struct RevokeQuery {
    /// Must be true to revoke the key that makes this request.
    confirm: Option<bool>,
}

/// Revoke a key of the caller's tenant (the calling key itself only with `?confirm=true`).
#[utoipa::path(delete, path = "/dashboard/keys/{id}", params(RevokeQuery),
    responses((status = 204), (status = 409, body = crate::error::ErrorBody,
        description = "the calling key, without confirm=true")))]
pub async fn revoke_key(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<RevokeQuery>,
) -> Reply {
    if id == caller.key.id && q.confirm != Some(true) {
        return Err(ApiError::confirmation_required(
            "this is the key making the request: add ?confirm=true to revoke it",
        ));
    }
    app.sb.revoke_api_key(&id, Some(&caller.key.tenant)).await?;
    app.keys.forget(&id);
    no_content()
}

/// A tenant's totals.
#[derive(Serialize, ToSchema)]
pub struct Totals {
    total_sessions: u64,
    total_turns: u64,
    total_memories: u64,
    total_entities: u64,
    /// Sessions changed in the last 24 hours.
    active_sessions_24h: u64,
    /// Not measured per tenant: always null.
    storage_usage_bytes: Option<u64>,
}

/// Changes in one hour.
#[derive(Serialize, ToSchema)]
pub struct HourOfActivity {
    /// The hour's start, ISO 8601.
    timestamp: String,
    count: u64,
}

/// The dashboard's numbers.
#[derive(Serialize, ToSchema)]
pub struct StatsOut {
    stats: Totals,
    /// Changes per hour over the last 24 hours, oldest first.
    recent_activity: Vec<HourOfActivity>,
}

/// Totals of the caller's tenant, and its changes per hour over the last 24 hours.
#[utoipa::path(get, path = "/dashboard/stats", responses((status = 200, body = StatsOut)))]
pub async fn stats(Tenant(sb): Tenant) -> Reply {
    let stats = sb.stats().await?;
    ok(StatsOut {
        stats: Totals {
            total_sessions: stats.sessions,
            total_turns: stats.turns,
            total_memories: stats.memories,
            total_entities: stats.entities,
            active_sessions_24h: stats.active_sessions_24h,
            storage_usage_bytes: None,
        },
        recent_activity: stats
            .recent_activity
            .into_iter()
            .map(|(hour, count)| HourOfActivity {
                timestamp: hour.format("%Y-%m-%dT%H:00:00Z").to_string(),
                count,
            })
            .collect(),
    })
}

/// These routes, under `/v1`.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_keys, create_key))
        .routes(routes!(revoke_key))
        .routes(routes!(stats))
}
