//! Retention policies (the tenant's at `/v1/retention`, a session's at
//! `/v1/sessions/{id}/retention`), applied by the server's sweeper and on demand, and
//! pruning one session now. An extension of the API.

use super::*;

/// What a session's retention keeps: as [`Retention`], without the traces' limit, which is
/// the tenant's.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionRetention {
    /// Keep at least this many of the latest versions (at least 1).
    #[schema(minimum = 1, maximum = 9223372036854775807_i64)]
    keep_versions: Option<u64>,
    /// Keep the versions written in the last this many days (1 to 36,500).
    #[schema(minimum = 1, maximum = 36500)]
    keep_days: Option<u32>,
    /// Keep the turns logged in the last this many days (1 to 36,500).
    #[schema(minimum = 1, maximum = 36500)]
    keep_turn_days: Option<u32>,
}

impl From<SessionRetention> for Retention {
    fn from(r: SessionRetention) -> Self {
        Retention {
            keep_versions: r.keep_versions,
            keep_days: r.keep_days,
            keep_turn_days: r.keep_turn_days,
            keep_trace_days: None,
        }
    }
}

/// A retention policy; each limit `null` when there is none.
#[derive(Serialize, ToSchema)]
pub struct RetentionOut {
    /// Always `retention_policy`.
    object: &'static str,
    /// The session it is for; `null`: the tenant's.
    session_id: Option<String>,
    /// Keeps at least this many of the latest versions.
    keep_versions: Option<u64>,
    /// Keeps the versions written in the last this many days.
    keep_days: Option<u32>,
    /// Keeps the turns logged in the last this many days.
    keep_turn_days: Option<u32>,
    /// Keeps the traces written in the last this many days (a tenant's only).
    keep_trace_days: Option<u32>,
}

/// The policy of the session (or, without one, the tenant's) as answered; a 404
/// `retention_policy_not_found` when there is none.
fn policy(sb: &Sb, session_id: Option<String>, retention: Option<Retention>) -> Reply {
    let owner = session_id.as_deref().unwrap_or(sb.tenant_id());
    let r = retention.ok_or_else(|| Error::not_found(ResourceKind::RetentionPolicy, owner))?;
    ok(RetentionOut {
        object: "retention_policy",
        session_id,
        keep_versions: r.keep_versions,
        keep_days: r.keep_days,
        keep_turn_days: r.keep_turn_days,
        keep_trace_days: r.keep_trace_days,
    })
}

/// The tenant's retention policy: it applies to each of its sessions without one of its
/// own, and its `keep_trace_days` to all its traces.
#[utoipa::path(get, path = "/retention", responses((status = 200, body = RetentionOut)))]
pub async fn get_retention(Tenant(sb): Tenant) -> Reply {
    let kept = sb.retention().await?;
    policy(&sb, None, kept)
}

/// Set the tenant's retention policy. The server's sweeper applies it (and every session's
/// own) at each sweep; `POST /v1/retention/apply` applies it now.
#[utoipa::path(put, path = "/retention", request_body = Retention,
    responses((status = 200, body = RetentionOut)))]
pub async fn put_retention(Tenant(sb): Tenant, Body(keep): Body<Retention>) -> Reply {
    let kept = sb.set_retention(Some(keep)).await?;
    policy(&sb, None, kept)
}

/// Remove the tenant's retention policy, answering it: its sessions without their own keep
/// everything.
#[utoipa::path(delete, path = "/retention", responses((status = 200, body = RetentionOut)))]
pub async fn delete_retention(Tenant(sb): Tenant) -> Reply {
    let kept = sb.retention().await?;
    if kept.is_some() {
        sb.set_retention(None).await?;
    }
    policy(&sb, None, kept)
}

/// Apply the tenant's retention policies now (its own and its sessions'), and say what
/// went.
#[utoipa::path(post, path = "/retention/apply",
    responses((status = 200, body = RetentionApplied)))]
pub async fn apply_retention(Tenant(sb): Tenant) -> Reply {
    ok(sb.apply_retention().await?)
}

/// The session's own retention policy, which replaces the tenant's for it.
#[utoipa::path(get, path = "/sessions/{id}/retention",
    responses((status = 200, body = RetentionOut)))]
pub async fn get_session_retention(Tenant(sb): Tenant, Path(id): Path<String>) -> Reply {
    let kept = sb.session_retention(&id).await?;
    policy(&sb, Some(id), kept)
}

/// Set the session's own retention policy; it replaces the tenant's for the session and
/// goes with it.
#[utoipa::path(put, path = "/sessions/{id}/retention", request_body = SessionRetention,
    responses((status = 200, body = RetentionOut)))]
pub async fn put_session_retention(
    Tenant(sb): Tenant,
    Path(id): Path<String>,
    Body(keep): Body<SessionRetention>,
) -> Reply {
    let kept = sb.set_session_retention(&id, Some(keep.into())).await?;
    policy(&sb, Some(id), kept)
}

/// Remove the session's own retention policy, answering it: the tenant's applies to the
/// session again.
#[utoipa::path(delete, path = "/sessions/{id}/retention",
    responses((status = 200, body = RetentionOut)))]
pub async fn delete_session_retention(Tenant(sb): Tenant, Path(id): Path<String>) -> Reply {
    let kept = sb.session_retention(&id).await?;
    if kept.is_some() {
        sb.set_session_retention(&id, None).await?;
    }
    policy(&sb, Some(id), kept)
}

/// Prune the session now: its oldest state versions (keep the last `keep_versions`, and
/// those younger than `keep_days`; a version either keeps stays), back to the snapshot the
/// oldest kept one is read from, and its turns older than `keep_turn_days`. Kept versions
/// read exactly; a pruned one is `version_not_found`.
#[utoipa::path(post, path = "/sessions/{id}/prune", request_body = SessionRetention,
    responses((status = 200, body = Pruned)))]
pub async fn prune_session(
    Tenant(sb): Tenant,
    Path(id): Path<String>,
    Body(keep): Body<SessionRetention>,
) -> Reply {
    ok(sb.prune_session(&id, keep.into()).await?)
}

/// These routes, under `/v1`.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_retention, put_retention, delete_retention))
        .routes(routes!(apply_retention))
        .routes(routes!(
            get_session_retention,
            put_session_retention,
            delete_session_retention
        ))
        .routes(routes!(prune_session))
}
