//! A session's state: read, write (merge or replace), history, rollback.

use super::*;

/// A state write.
#[derive(Deserialize, ToSchema)]
pub struct StateBody {
    /// The new state (PUT, POST) or an RFC 7386 merge patch (PATCH). Required, here or as
    /// `updates`.
    #[schema(value_type = Option<Object>)]
    state: Option<Object>,
    /// The same as `state`.
    #[schema(value_type = Option<Object>)]
    updates: Option<Object>,
    /// Why, kept on the version and in the audit trail.
    #[schema(max_length = 65_536)]
    reasoning: Option<String>,
    /// Write only if this is still the current version (else 409 `version_conflict`).
    expected_version: Option<u64>,
}

impl StateBody {
    /// The write, with the body's `expected_version` or else the `If-Match` header's.
    fn write(self, headers: &HeaderMap) -> Result<StateWrite, ApiError> {
        let state = self
            .state
            .or(self.updates)
            .ok_or_else(|| ApiError::validation("state", "body", "missing field `state`".into()))?;
        Ok(StateWrite {
            expected_version: self.expected_version.or(if_match(headers)?),
            state: Value::Object(state),
            reasoning: self.reasoning,
        })
    }
}

/// A session's current state.
#[utoipa::path(get, path = "/sessions/{id}/state", responses((status = 200, body = StateOut)))]
pub async fn get_state(Tenant(sb): Tenant, Path(id): Path<String>) -> Reply {
    ok(StateOut::from(&sb.get_session(&id).await?))
}

/// Merge a patch into the state (RFC 7386): a new version.
#[utoipa::path(patch, path = "/sessions/{id}/state", params(IfMatch), request_body = StateBody,
    responses((status = 200, body = StateOut)))]
pub async fn merge_state(
    Tenant(sb): Tenant,
    Path(id): Path<String>,
    headers: HeaderMap,
    Body(body): Body<StateBody>,
) -> Reply {
    let s = sb.merge_state(&id, body.write(&headers)?).await?;
    ok(StateOut::from(&s))
}

/// Replace the whole state: a new version.
#[utoipa::path(put, path = "/sessions/{id}/state", params(IfMatch), request_body = StateBody,
    responses((status = 200, body = StateOut)))]
pub async fn replace_state(
    Tenant(sb): Tenant,
    Path(id): Path<String>,
    headers: HeaderMap,
    Body(body): Body<StateBody>,
) -> Reply {
    let s = sb.replace_state(&id, body.write(&headers)?).await?;
    ok(StateOut::from(&s))
}

/// Replace the whole state (the seed page's form): answers with the session.
#[utoipa::path(post, path = "/sessions/{id}/state", params(IfMatch), request_body = StateBody,
    responses((status = 200, body = StateReplaced)))]
pub async fn post_state(
    Tenant(sb): Tenant,
    Path(id): Path<String>,
    headers: HeaderMap,
    Body(body): Body<StateBody>,
) -> Reply {
    let s = sb.replace_state(&id, body.write(&headers)?).await?;
    ok(StateReplaced::from(&s))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    /// How many versions, 1..=1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// Only the versions after this one; without it (or `from_version`), the latest.
    since_version: Option<u64>,
    /// The first version of the window: 0 for the start of a long history (with
    /// `since_version` too, the later of the two).
    from_version: Option<u64>,
}

/// A window of the state's versions, oldest first. Also at `/sessions/{id}/state/history`.
#[utoipa::path(get, path = "/sessions/{id}/history", params(HistoryParams),
    responses((status = 200, body = HistoryOut)))]
pub async fn state_history(
    Tenant(sb): Tenant,
    Path(id): Path<String>,
    Query(q): Query<HistoryParams>,
) -> Reply {
    let h = sb
        .history(
            &id,
            HistoryQuery {
                limit: q.limit,
                since_version: q.since_version,
                from_version: q.from_version,
            },
        )
        .await?;
    ok(HistoryOut::new(&id, &h))
}

/// A rollback.
#[derive(Deserialize, ToSchema)]
pub struct RollbackBody {
    /// The version to restore; negative counts back from the current one.
    version: i64,
    /// Why. Alias: `reasoning`.
    #[serde(alias = "reasoning")]
    #[schema(max_length = 65_536)]
    reason: Option<String>,
    /// Roll back only if this is still the current version.
    expected_version: Option<u64>,
}

/// Restore an earlier version as a new version (history is kept). Also at
/// `/sessions/{id}/state/rollback`.
#[utoipa::path(post, path = "/sessions/{id}/rollback", params(IfMatch), request_body = RollbackBody,
    responses((status = 200, body = RollbackOut)))]
pub async fn rollback(
    Tenant(sb): Tenant,
    Path(id): Path<String>,
    headers: HeaderMap,
    Body(b): Body<RollbackBody>,
) -> Reply {
    let r = sb
        .rollback(
            &id,
            RollbackTo {
                version: b.version,
                reason: b.reason,
                expected_version: b.expected_version.or(if_match(&headers)?),
            },
        )
        .await?;
    ok(RollbackOut::from(&r))
}

/// These routes, under `/v1`.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    let router =
        OpenApiRouter::new().routes(routes!(get_state, merge_state, replace_state, post_state));
    let router = also_at(
        router,
        routes!(state_history),
        &["/sessions/{id}/state/history"],
    );
    also_at(
        router,
        routes!(rollback),
        &["/sessions/{id}/state/rollback"],
    )
}
