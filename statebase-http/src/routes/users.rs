//! `DELETE /v1/users/{user_id}`: a user's right to erasure, in one call.

use super::*;

/// What erasing a user did.
#[derive(Serialize, ToSchema)]
pub struct ErasureOut {
    /// Always `user`.
    object: &'static str,
    /// The user.
    id: String,
    /// Always true: nothing of the user is left (also when there was nothing).
    deleted: bool,
    /// What went, by kind: counts, never content.
    erased: Erasure,
}

/// Erase everything of a user in the caller's tenant at once: their sessions with every
/// version, turn and entity, their memories with vectors, the traces of all those, and the
/// responses kept for idempotent retries that named them. Leaves one `user.erased` trace
/// with the counts, announced to webhooks. Erased ids stay erased: an import of an older
/// archive does not bring them back, and a late write finds nothing. Erasing again is
/// harmless: it erases nothing.
#[utoipa::path(delete, path = "/users/{user_id}",
    params(("user_id" = String, Path, description = "The user, as the application names it",
        min_length = 1, max_length = 256, pattern = r"\S")),
    responses((status = 200, body = ErasureOut)))]
pub async fn erase_user(Tenant(sb): Tenant, Path(user_id): Path<String>) -> Reply {
    let erased = sb.erase_user(&user_id).await?;
    ok(ErasureOut {
        object: "user",
        id: user_id,
        deleted: true,
        erased,
    })
}

/// This route, under `/v1`.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(erase_user))
}
