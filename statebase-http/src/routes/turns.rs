//! Turns: a session's conversation log.

use super::*;

/// Log a turn; a `state_after` that differs from the state becomes a new version with it.
#[utoipa::path(post, path = "/sessions/{id}/turns", request_body = AddTurn,
    responses((status = 201, body = TurnOut)))]
pub async fn add_turn(
    Tenant(sb): Tenant,
    Path(id): Path<String>,
    Body(req): Body<AddTurn>,
) -> Reply {
    created(TurnOut::from(&sb.add_turn(&id, req).await?))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TurnListQuery {
    /// Page size, 1..=100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// The `last_id` of the previous page.
    starting_after: Option<String>,
    /// `desc` (newest first, the default) or `asc`.
    order: Option<Order>,
}

/// A session's turns.
#[utoipa::path(get, path = "/sessions/{id}/turns", params(TurnListQuery),
    responses((status = 200, body = ListOut<TurnOut>)))]
pub async fn list_turns(
    Tenant(sb): Tenant,
    Path(id): Path<String>,
    Query(q): Query<TurnListQuery>,
) -> Reply {
    let page = sb
        .list_turns(
            &id,
            ListTurns {
                limit: q.limit,
                starting_after: q.starting_after,
                order: q.order.unwrap_or_default(),
            },
        )
        .await?;
    ok(ListOut::<TurnOut>::page(&page))
}

/// One turn.
#[utoipa::path(get, path = "/sessions/{id}/turns/{turn_id}",
    responses((status = 200, body = TurnOut)))]
pub async fn get_turn(Tenant(sb): Tenant, Path((id, turn_id)): Path<(String, String)>) -> Reply {
    ok(TurnOut::from(&sb.get_turn(&id, &turn_id).await?))
}

/// These routes, under `/v1`.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(add_turn, list_turns))
        .routes(routes!(get_turn))
}
