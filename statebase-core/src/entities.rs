//! Entities: versioned records an agent keeps about the things of its session, under the
//! application's own type and id.

use crate::action;
use crate::error::{Error, ResourceKind, Result};
use crate::model::*;
use crate::statebase::{page, page_limit, StateBase};
use crate::store::{Cursor, EntityQuery, EntityUpdate, NewEntity, Store};
use crate::Timestamp;
use serde_json::{json, Value};

impl<S: Store> StateBase<S> {
    /// Creates an entity of a live session, at version 1.
    ///
    /// Errors: `NotFound` for a missing or expired session; `DuplicateEntity` if the session
    /// has an entity of the same type and application id (also when two creates race);
    /// `InvalidInput` for a blank type or id or attributes that are not an object;
    /// `PayloadTooLarge` over the document limit.
    pub async fn create_entity(&self, req: CreateEntity) -> Result<Entity> {
        let entity_type = self.identifier("entity_type", req.entity_type)?;
        let entity_id = self.identifier("entity_id", req.entity_id)?;
        let attributes = self.document("attributes", req.attributes)?;
        self.live_session(&req.session_id).await?;
        let now = self.now();
        let entity = Entity {
            id: self.new_id("ent_"),
            session_id: req.session_id,
            entity_type,
            entity_id,
            attributes,
            version: 1,
            created_at: now,
            updated_at: now,
        };
        let trace = self.entity_trace(&entity, action::ENTITY_CREATED, now);
        let new = NewEntity {
            entity: entity.clone(),
            trace,
        };
        match self.store().insert_entity(&self.tenant, new).await? {
            Some(existing) => Err(Error::DuplicateEntity { other: existing.id }),
            None => Ok(entity),
        }
    }

    /// The entity at its current version.
    pub async fn get_entity(&self, id: &str) -> Result<Entity> {
        self.store()
            .entity(&self.tenant, id)
            .await?
            .ok_or_else(|| Error::not_found(ResourceKind::Entity, id))
    }

    /// The entity as it was at `version`: its attributes and `updated_at` then.
    ///
    /// Errors: `NotFound` (kind `Version`, id `<entity id>@<version>`) for a version it
    /// never had.
    pub async fn get_entity_at(&self, id: &str, version: u64) -> Result<Entity> {
        let mut entity = self.get_entity(id).await?;
        let end = version.saturating_add(1);
        let then = self
            .store()
            .entity_versions(&self.tenant, id, version..end)
            .await?
            .pop()
            .ok_or_else(|| Error::not_found(ResourceKind::Version, &format!("{id}@{version}")))?;
        entity.version = then.version;
        entity.attributes = then.attributes;
        entity.updated_at = then.updated_at;
        Ok(entity)
    }

    /// The entity's versions, oldest first, one page at a time: a page's ids are version
    /// numbers, so its `last_id` is the next page's `starting_after`.
    pub async fn entity_history(
        &self,
        id: &str,
        req: ListEntityVersions,
    ) -> Result<Page<EntityVersion>> {
        let limit = page_limit(req.limit, 20, 100)?;
        self.get_entity(id).await?;
        let from = req.starting_after.map_or(1, |v| v.saturating_add(1));
        let to = from.saturating_add(limit as u64 + 1);
        let mut data = self
            .store()
            .entity_versions(&self.tenant, id, from..to)
            .await?;
        let has_more = data.len() > limit;
        data.truncate(limit);
        Ok(Page {
            first_id: data.first().map(|v| v.version.to_string()),
            last_id: data.last().map(|v| v.version.to_string()),
            has_more,
            data,
        })
    }

    /// Replaces the entity's attributes whole: its `version` goes up by one and the old
    /// attributes stay readable ([`get_entity_at`](Self::get_entity_at)).
    ///
    /// Errors: `Conflict` if `expected_version` is given and is not the current version.
    pub async fn update_entity(&self, id: &str, req: UpdateEntity) -> Result<Entity> {
        let attributes = match req.attributes {
            Value::Object(o) => o,
            _ => return Err(Error::invalid("attributes", "must be a JSON object")),
        };
        self.check_size("attributes", &attributes)?;
        loop {
            let old = self.get_entity(id).await?;
            if let Some(expected) = req.expected_version {
                if expected != old.version {
                    return Err(Error::Conflict {
                        expected,
                        actual: old.version,
                    });
                }
            }
            let now = self.now();
            let entity = Entity {
                attributes: attributes.clone(),
                version: old.version + 1,
                updated_at: now,
                ..old.clone()
            };
            let update = EntityUpdate {
                trace: self.entity_trace(&entity, action::ENTITY_UPDATED, now),
                entity: entity.clone(),
                expected_version: old.version,
            };
            match self.store().update_entity(&self.tenant, update).await {
                // Changed meanwhile: without an expected version, the last write wins.
                Err(Error::Conflict { .. }) if req.expected_version.is_none() => continue,
                Err(e) => return Err(e),
                Ok(stored) => return Ok(stored),
            }
        }
    }

    /// Deletes the entity and its versions.
    pub async fn delete_entity(&self, id: &str) -> Result<()> {
        let entity = self.get_entity(id).await?;
        let trace = self.entity_trace(&entity, action::ENTITY_DELETED, self.now());
        self.store().delete_entity(&self.tenant, id, trace).await?;
        Ok(())
    }

    /// Entities newest first, filtered by session, type and application id, one page at a
    /// time.
    pub async fn list_entities(&self, req: ListEntities) -> Result<Page<Entity>> {
        let limit = page_limit(req.limit, 20, 100)?;
        let after = match &req.starting_after {
            None => None,
            Some(id) => {
                let e = self.get_entity(id).await?;
                Some(Cursor {
                    at: e.created_at,
                    id: e.id,
                })
            }
        };
        let query = EntityQuery {
            limit: limit + 1,
            after,
            session_id: req.session_id,
            entity_type: req.entity_type,
            entity_id: req.entity_id,
        };
        let entities = self.store().list_entities(&self.tenant, &query).await?;
        Ok(page(entities, limit, |e| &e.id))
    }

    fn entity_trace(&self, e: &Entity, action: &str, now: Timestamp) -> Trace {
        let details = json!({
            "entity_type": e.entity_type,
            "entity_id": e.entity_id,
            "version": e.version,
        });
        self.resource_trace(Some(&e.session_id), ("entity", &e.id), action, details, now)
    }
}
