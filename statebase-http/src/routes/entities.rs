//! `/v1/entities`: versioned records of a session, under the application's type and id.

use super::*;
use chrono::{DateTime, Utc};

/// An entity at one version.
#[derive(Serialize, ToSchema)]
pub struct EntityOut<'a> {
    /// `entity`.
    #[schema(example = "entity")]
    object: &'static str,
    /// `ent_` + 12 characters: the id the routes take.
    id: &'a str,
    session_id: &'a str,
    entity_type: &'a str,
    /// The application's id, unique per session and type.
    entity_id: &'a str,
    attributes: &'a Object,
    /// 1 at creation, +1 per update.
    version: u64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl<'a> From<&'a Entity> for EntityOut<'a> {
    fn from(e: &'a Entity) -> Self {
        Self {
            object: "entity",
            id: &e.id,
            session_id: &e.session_id,
            entity_type: &e.entity_type,
            entity_id: &e.entity_id,
            attributes: &e.attributes,
            version: e.version,
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

/// One version of an entity's attributes.
#[derive(Serialize, ToSchema)]
pub struct EntityVersionOut<'a> {
    /// `entity_version`.
    #[schema(example = "entity_version")]
    object: &'static str,
    /// The entity's `id`.
    entity: &'a str,
    version: u64,
    attributes: &'a Object,
    /// When this version was written.
    updated_at: DateTime<Utc>,
}

/// A new entity.
#[derive(Deserialize, ToSchema)]
pub struct EntityBody {
    /// The session it belongs to (live, the caller's).
    session_id: String,
    /// The application's kind of record, e.g. `customer`.
    #[schema(min_length = 1, max_length = 256, pattern = r"\S")]
    entity_type: String,
    /// The application's id, unique per session and type (409 `duplicate_entity`).
    #[schema(min_length = 1, max_length = 256, pattern = r"\S")]
    entity_id: String,
    #[schema(value_type = Object)]
    attributes: Object,
}

/// Create an entity.
#[utoipa::path(post, path = "/entities", request_body = EntityBody,
    responses((status = 201, body = EntityOut)))]
pub async fn create_entity(Tenant(sb): Tenant, Body(b): Body<EntityBody>) -> Reply {
    let e = sb
        .create_entity(CreateEntity {
            session_id: b.session_id,
            entity_type: b.entity_type,
            entity_id: b.entity_id,
            attributes: Some(b.attributes.into()),
        })
        .await?;
    created(EntityOut::from(&e))
}

/// Filters and paging of the entity list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EntityListQuery {
    session_id: Option<String>,
    entity_type: Option<String>,
    /// The application's id.
    entity_id: Option<String>,
    /// Page size, 1..=100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// The `last_id` of the previous page.
    starting_after: Option<String>,
}

/// Entities newest first, filtered by session, type and application id.
#[utoipa::path(get, path = "/entities", params(EntityListQuery),
    responses((status = 200, body = ListOut<EntityOut>)))]
pub async fn list_entities(Tenant(sb): Tenant, Query(q): Query<EntityListQuery>) -> Reply {
    let page = sb
        .list_entities(ListEntities {
            limit: q.limit,
            starting_after: q.starting_after,
            session_id: q.session_id,
            entity_type: q.entity_type,
            entity_id: q.entity_id,
        })
        .await?;
    ok(ListOut::<EntityOut>::page(&page))
}

/// Which version of an entity to read.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EntityVersionQuery {
    /// An earlier version (default: the current one).
    #[param(minimum = 1)]
    version: Option<u64>,
}

/// One entity, at its current version or at `?version=`.
#[utoipa::path(get, path = "/entities/{id}", params(EntityVersionQuery),
    responses((status = 200, body = EntityOut)))]
pub async fn get_entity(
    Tenant(sb): Tenant,
    Path(id): Path<String>,
    Query(q): Query<EntityVersionQuery>,
) -> Reply {
    let e = match q.version {
        Some(v) => sb.get_entity_at(&id, v).await?,
        None => sb.get_entity(&id).await?,
    };
    ok(EntityOut::from(&e))
}

/// New attributes for an entity.
#[derive(Deserialize, ToSchema)]
pub struct EntityUpdateBody {
    /// They replace the old attributes whole.
    #[schema(value_type = Object)]
    attributes: Object,
    /// Write only if the entity is still at this version (409 otherwise); `If-Match` does
    /// the same.
    expected_version: Option<u64>,
}

/// Replace an entity's attributes: its version goes up by one, the old one stays readable.
#[utoipa::path(put, path = "/entities/{id}", params(IfMatch), request_body = EntityUpdateBody,
    responses((status = 200, body = EntityOut)))]
pub async fn update_entity(
    Tenant(sb): Tenant,
    Path(id): Path<String>,
    headers: HeaderMap,
    Body(b): Body<EntityUpdateBody>,
) -> Reply {
    let req = UpdateEntity {
        attributes: b.attributes.into(),
        expected_version: b.expected_version.or(if_match(&headers)?),
    };
    ok(EntityOut::from(&sb.update_entity(&id, req).await?))
}

/// Delete an entity and its versions.
#[utoipa::path(delete, path = "/entities/{id}", responses((status = 204)))]
pub async fn delete_entity(Tenant(sb): Tenant, Path(id): Path<String>) -> Reply {
    sb.delete_entity(&id).await?;
    no_content()
}

/// Paging of an entity's versions.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EntityVersionsQuery {
    /// Page size, 1..=100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// The `last_id` (a version number) of the previous page.
    starting_after: Option<u64>,
}

/// An entity's versions, oldest first.
#[utoipa::path(get, path = "/entities/{id}/versions", params(EntityVersionsQuery),
    responses((status = 200, body = ListOut<EntityVersionOut>)))]
pub async fn entity_versions(
    Tenant(sb): Tenant,
    Path(id): Path<String>,
    Query(q): Query<EntityVersionsQuery>,
) -> Reply {
    let req = ListEntityVersions {
        limit: q.limit,
        starting_after: q.starting_after,
    };
    let page = sb.entity_history(&id, req).await?;
    ok(ListOut::page_with(&page, |v| EntityVersionOut {
        object: "entity_version",
        entity: &id,
        version: v.version,
        attributes: &v.attributes,
        updated_at: v.updated_at,
    }))
}

/// These routes, under `/v1`.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_entity, list_entities))
        .routes(routes!(get_entity, update_entity, delete_entity))
        .routes(routes!(entity_versions))
}
