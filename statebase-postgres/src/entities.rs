//! Entities with their versions. A version's attributes are stored once, in
//! `entity_versions`: the entity row names its current version.

use crate::query::{self, clamp, get_uint, int, Filtered, Res};
use crate::traces::insert_trace;
use crate::PostgresStore;
use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use statebase_core::store::*;
use statebase_core::{Entity, EntityVersion, Error, Object, ResourceKind, Result, Trace};
use std::ops::Range;
use tokio_postgres::types::Json;
use tokio_postgres::Row;

/// An entity with the attributes of its current version.
const SELECT: &str = "SELECT e.id, e.session_id, e.entity_type, e.entity_id, v.attributes, \
     e.version, e.created_at, e.updated_at FROM entities e \
     JOIN entity_versions v ON v.tenant = e.tenant AND v.entity = e.id AND v.version = e.version";

fn read_entity(r: &Row) -> Res<Entity> {
    Ok(Entity {
        id: r.try_get("id")?,
        session_id: r.try_get("session_id")?,
        entity_type: r.try_get("entity_type")?,
        entity_id: r.try_get("entity_id")?,
        attributes: r.try_get::<_, Json<Object>>("attributes")?.0,
        version: get_uint(r, "version")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

async fn entity(c: &impl GenericClient, tenant: &str, id: &str) -> Res<Option<Entity>> {
    let found = query::row(
        c,
        &format!("{SELECT} WHERE e.tenant = $1 AND e.id = $2"),
        &[&tenant, &id],
    )
    .await?;
    found.as_ref().map(read_entity).transpose()
}

async fn insert_version(c: &impl GenericClient, tenant: &str, e: &Entity) -> Res<()> {
    query::execute(
        c,
        "INSERT INTO entity_versions (tenant, entity, version, attributes, updated_at)
         VALUES ($1, $2, $3, $4, $5)",
        &[
            &tenant,
            &e.id,
            &int(e.version)?,
            &Json(&e.attributes),
            &e.updated_at,
        ],
    )
    .await?;
    Ok(())
}

/// Inserts the entity's row (not its version) unless it clashes on `conflict` (columns, or
/// empty for any unique key), and says whether it did.
async fn insert_row(c: &impl GenericClient, tenant: &str, e: &Entity, conflict: &str) -> Res<bool> {
    let inserted = query::execute(
        c,
        &format!(
            "INSERT INTO entities (tenant, id, session_id, entity_type, entity_id, version,
                 created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT {conflict} DO NOTHING"
        ),
        &[
            &tenant,
            &e.id,
            &e.session_id,
            &e.entity_type,
            &e.entity_id,
            &int(e.version)?,
            &e.created_at,
            &e.updated_at,
        ],
    )
    .await?;
    Ok(inserted == 1)
}

/// Inserts the archived entity with its versions, in the caller's transaction. `Backend`
/// if its id or name is taken.
pub async fn import_entity(c: &impl GenericClient, tenant: &str, a: &EntityArchive) -> Res<()> {
    let e = &a.entity;
    if !insert_row(c, tenant, e, "").await? {
        return Err(Error::backend(format!("entity id {} already exists", e.id)).into());
    }
    let numbers = a
        .versions
        .iter()
        .map(|v| int(v.version))
        .collect::<Res<Vec<_>>>()?;
    let attributes: Vec<_> = a.versions.iter().map(|v| Json(&v.attributes)).collect();
    let times: Vec<_> = a.versions.iter().map(|v| v.updated_at).collect();
    query::execute(
        c,
        "INSERT INTO entity_versions (tenant, entity, version, attributes, updated_at)
         SELECT $1, $2, * FROM unnest($3::bigint[], $4::json[], $5::timestamptz[])",
        &[&tenant, &e.id, &numbers, &attributes, &times],
    )
    .await?;
    Ok(())
}

#[async_trait]
impl EntityRecords for PostgresStore {
    async fn insert_entity(&self, tenant: &str, new: NewEntity) -> Result<Option<Entity>> {
        let e = &new.entity;
        loop {
            let mut conn = self.conn().await?;
            let tx = query::begin(&mut conn).await?;
            // Holds the session while the entity goes in: a session deleted meanwhile
            // either goes first (then `NotFound`) or waits for this insert.
            let session = query::row(
                &tx,
                "SELECT 1 FROM sessions WHERE tenant = $1 AND id = $2 FOR SHARE",
                &[&tenant, &e.session_id],
            )
            .await?;
            if session.is_none() {
                return Err(Error::not_found(ResourceKind::Session, &e.session_id));
            }
            let name = "(tenant, session_id, entity_type, entity_id)";
            if insert_row(&tx, tenant, e, name).await? {
                insert_version(&tx, tenant, e).await?;
                insert_trace(&tx, tenant, &new.trace).await?;
                query::commit(tx).await?;
                return Ok(None);
            }
            let existing = query::row(
                &tx,
                &format!(
                    "{SELECT} WHERE e.tenant = $1 AND e.session_id = $2 AND e.entity_type = $3
                     AND e.entity_id = $4"
                ),
                &[&tenant, &e.session_id, &e.entity_type, &e.entity_id],
            )
            .await?;
            // Else it went between the insert and the read: try again.
            if let Some(existing) = existing {
                return Ok(Some(read_entity(&existing)?));
            }
        }
    }

    async fn count_entities(&self, tenant: &str) -> Result<u64> {
        Ok(self.count("entities", tenant).await?)
    }

    async fn entity(&self, tenant: &str, id: &str) -> Result<Option<Entity>> {
        let conn = self.conn().await?;
        Ok(entity(&conn, tenant, id).await?)
    }

    async fn list_entities(&self, tenant: &str, q: &EntityQuery) -> Result<Vec<Entity>> {
        let mut f = Filtered::new(SELECT, "e.tenant", tenant);
        f.before("e.created_at", "e.id", q.after.as_ref());
        f.eq("e.session_id", q.session_id.as_ref());
        f.eq("e.entity_type", q.entity_type.as_ref());
        f.eq("e.entity_id", q.entity_id.as_ref());
        let conn = self.conn().await?;
        let found = f
            .newest_first(&conn, "e.created_at", "e.id", q.limit)
            .await?;
        Ok(found.iter().map(read_entity).collect::<Res<_>>()?)
    }

    async fn update_entity(&self, tenant: &str, u: EntityUpdate) -> Result<Entity> {
        let e = &u.entity;
        let mut conn = self.conn().await?;
        let tx = query::begin(&mut conn).await?;
        let changed = query::execute(
            &tx,
            "UPDATE entities SET version = $4, updated_at = $5
             WHERE tenant = $1 AND id = $2 AND version = $3",
            &[
                &tenant,
                &e.id,
                &int(u.expected_version)?,
                &int(e.version)?,
                &e.updated_at,
            ],
        )
        .await?;
        if changed == 0 {
            let current = query::row(
                &tx,
                "SELECT version FROM entities WHERE tenant = $1 AND id = $2",
                &[&tenant, &e.id],
            )
            .await?
            .ok_or_else(|| Error::not_found(ResourceKind::Entity, &e.id))?;
            return Err(Error::Conflict {
                expected: u.expected_version,
                actual: get_uint(&current, "version")?,
            });
        }
        insert_version(&tx, tenant, e).await?;
        insert_trace(&tx, tenant, &u.trace).await?;
        query::commit(tx).await?;
        Ok(u.entity)
    }

    async fn delete_entity(&self, tenant: &str, id: &str, trace: Trace) -> Result<Entity> {
        let mut conn = self.conn().await?;
        let tx = query::begin(&mut conn).await?;
        let found = query::row(
            &tx,
            &format!("{SELECT} WHERE e.tenant = $1 AND e.id = $2 FOR UPDATE OF e"),
            &[&tenant, &id],
        )
        .await?
        .ok_or_else(|| Error::not_found(ResourceKind::Entity, id))?;
        // Its versions go by ON DELETE CASCADE.
        query::execute(
            &tx,
            "DELETE FROM entities WHERE tenant = $1 AND id = $2",
            &[&tenant, &id],
        )
        .await?;
        insert_trace(&tx, tenant, &trace).await?;
        query::commit(tx).await?;
        Ok(read_entity(&found)?)
    }

    async fn entity_versions(
        &self,
        tenant: &str,
        id: &str,
        range: Range<u64>,
    ) -> Result<Vec<EntityVersion>> {
        let conn = self.conn().await?;
        let found = query::rows(
            &conn,
            "SELECT version, attributes, updated_at FROM entity_versions
             WHERE tenant = $1 AND entity = $2 AND version >= $3 AND version < $4
             ORDER BY version",
            &[&tenant, &id, &clamp(range.start), &clamp(range.end)],
        )
        .await?;
        let versions = found
            .iter()
            .map(|r| {
                Ok(EntityVersion {
                    version: get_uint(r, "version")?,
                    attributes: r.try_get::<_, Json<Object>>("attributes")?.0,
                    updated_at: r.try_get("updated_at")?,
                })
            })
            .collect::<Res<_>>()?;
        Ok(versions)
    }
}
