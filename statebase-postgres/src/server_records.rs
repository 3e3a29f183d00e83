//! What the HTTP server keeps: API keys, webhook endpoints with their deliveries and
//! cursor, and idempotent responses.

use crate::query::{self, int, uint, Res};
use crate::{PostgresError, PostgresStore};
use async_trait::async_trait;
use statebase_core::store::*;
use statebase_core::{ApiKey, Error, ResourceKind, Result, Timestamp, WebhookEndpoint};
use tokio_postgres::types::{FromSqlOwned, Json};
use tokio_postgres::Row;

/// The JSON `body` column of each row.
fn bodies<T: serde::de::DeserializeOwned>(found: &[Row]) -> Res<Vec<T>> {
    found
        .iter()
        .map(|r| Ok(r.try_get::<_, Json<T>>("body")?.0))
        .collect()
}

fn read_delivery(r: &Row) -> Res<DeliveryRecord> {
    Ok(DeliveryRecord {
        endpoint_id: r.try_get("endpoint_id")?,
        position: uint(r.try_get("position")?)?,
        done_at: r.try_get("done_at")?,
        body: r.try_get("body")?,
    })
}

impl PostgresStore {
    /// The rows of `sql`, read by `read`.
    async fn read_all<T>(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        read: impl Fn(&[Row]) -> Res<Vec<T>>,
    ) -> Result<Vec<T>> {
        let conn = self.conn().await?;
        Ok(read(&query::rows(&conn, sql, params).await?)?)
    }

    /// The first column of the first row of `sql`, if any.
    async fn read_one<T: FromSqlOwned>(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<T>> {
        let conn = self.conn().await?;
        let found = query::row(&conn, sql, params).await?;
        Ok(found
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(PostgresError::from)?)
    }

    /// Runs `sql` and says how many rows it changed.
    async fn change(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64> {
        let conn = self.conn().await?;
        Ok(query::execute(&conn, sql, params).await?)
    }
}

#[async_trait]
impl ServerRecords for PostgresStore {
    async fn put_api_key(&self, key: ApiKey) -> Result<()> {
        self.change(
            "INSERT INTO api_keys (id, tenant, key_hash, created_at, body)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET body = excluded.body",
            &[
                &key.id,
                &key.tenant,
                &key.key_hash,
                &key.created_at,
                &Json(&key),
            ],
        )
        .await?;
        Ok(())
    }

    async fn api_key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>> {
        let found: Option<Json<ApiKey>> = self
            .read_one("SELECT body FROM api_keys WHERE key_hash = $1", &[&hash])
            .await?;
        Ok(found.map(|j| j.0))
    }

    async fn api_key(&self, id: &str) -> Result<Option<ApiKey>> {
        let found: Option<Json<ApiKey>> = self
            .read_one("SELECT body FROM api_keys WHERE id = $1", &[&id])
            .await?;
        Ok(found.map(|j| j.0))
    }

    async fn list_api_keys(&self, tenant: Option<&str>) -> Result<Vec<ApiKey>> {
        self.read_all(
            "SELECT body FROM api_keys WHERE $1::text IS NULL OR tenant = $1
             ORDER BY created_at, id",
            &[&tenant],
            bodies,
        )
        .await
    }

    async fn put_webhook(&self, e: WebhookEndpoint) -> Result<()> {
        self.change(
            "INSERT INTO webhooks (id, tenant, created_at, body) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET tenant = excluded.tenant,
                 created_at = excluded.created_at, body = excluded.body",
            &[&e.id, &e.tenant, &e.created_at, &Json(&e)],
        )
        .await?;
        Ok(())
    }

    async fn webhook(&self, tenant: &str, id: &str) -> Result<Option<WebhookEndpoint>> {
        let found: Option<Json<WebhookEndpoint>> = self
            .read_one(
                "SELECT body FROM webhooks WHERE id = $1 AND tenant = $2",
                &[&id, &tenant],
            )
            .await?;
        Ok(found.map(|j| j.0))
    }

    async fn list_webhooks(&self, tenant: Option<&str>) -> Result<Vec<WebhookEndpoint>> {
        self.read_all(
            "SELECT body FROM webhooks WHERE $1::text IS NULL OR tenant = $1
             ORDER BY created_at, id",
            &[&tenant],
            bodies,
        )
        .await
    }

    async fn delete_webhook(&self, tenant: &str, id: &str) -> Result<()> {
        // Its deliveries go by ON DELETE CASCADE.
        let gone = self
            .change(
                "DELETE FROM webhooks WHERE id = $1 AND tenant = $2",
                &[&id, &tenant],
            )
            .await?;
        if gone == 0 {
            return Err(Error::not_found(ResourceKind::Webhook, id));
        }
        Ok(())
    }

    async fn put_deliveries(
        &self,
        deliveries: Vec<DeliveryRecord>,
        cursor: Option<u64>,
    ) -> Result<()> {
        let mut conn = self.conn().await?;
        let tx = query::begin(&mut conn).await?;
        for d in &deliveries {
            query::execute(
                &tx,
                "INSERT INTO webhook_deliveries (endpoint_id, position, done_at, body)
                 SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM webhooks WHERE id = $1)
                 ON CONFLICT (endpoint_id, position)
                 DO UPDATE SET done_at = excluded.done_at, body = excluded.body",
                &[&d.endpoint_id, &int(d.position)?, &d.done_at, &d.body],
            )
            .await?;
        }
        if let Some(c) = cursor {
            query::execute(
                &tx,
                "INSERT INTO webhook_cursor (id, position) VALUES (0, $1)
                 ON CONFLICT (id) DO UPDATE SET position = excluded.position",
                &[&int(c)?],
            )
            .await?;
        }
        query::commit(tx).await?;
        Ok(())
    }

    async fn delivery_cursor(&self) -> Result<u64> {
        let found: Option<i64> = self
            .read_one("SELECT position FROM webhook_cursor WHERE id = 0", &[])
            .await?;
        Ok(uint(found.unwrap_or(0))?)
    }

    async fn deliveries(
        &self,
        endpoint_id: Option<&str>,
        owed_only: bool,
    ) -> Result<Vec<DeliveryRecord>> {
        let owed = if owed_only { "AND done_at IS NULL" } else { "" };
        self.read_all(
            &format!(
                "SELECT endpoint_id, position, done_at, body FROM webhook_deliveries
                 WHERE ($1::text IS NULL OR endpoint_id = $1) {owed}
                 ORDER BY endpoint_id, position"
            ),
            &[&endpoint_id],
            |found| found.iter().map(read_delivery).collect(),
        )
        .await
    }

    async fn prune_deliveries(&self, before: Timestamp) -> Result<u64> {
        self.change(
            "DELETE FROM webhook_deliveries WHERE done_at < $1",
            &[&before],
        )
        .await
    }

    async fn idempotent_response(&self, key: &str) -> Result<Option<IdempotentResponse>> {
        let conn = self.conn().await?;
        let found = query::row(
            &conn,
            "SELECT key, tenant, subjects, at, body FROM idempotent_responses WHERE key = $1",
            &[&key],
        )
        .await?;
        let read = |r: Row| -> Res<IdempotentResponse> {
            Ok(IdempotentResponse {
                key: r.try_get("key")?,
                tenant: r.try_get("tenant")?,
                subjects: r.try_get("subjects")?,
                at: r.try_get("at")?,
                body: r.try_get("body")?,
            })
        };
        Ok(found.map(read).transpose()?)
    }

    async fn put_idempotent_response(&self, kept: IdempotentResponse) -> Result<()> {
        self.change(
            // Not one naming what was erased meanwhile (its write came before the erasure).
            "INSERT INTO idempotent_responses (key, tenant, subjects, at, body)
             SELECT $1, $2, $3, $4, $5 WHERE NOT EXISTS
                 (SELECT 1 FROM erased WHERE tenant = $2 AND id = ANY ($3))
             ON CONFLICT (key) DO UPDATE SET tenant = excluded.tenant,
                 subjects = excluded.subjects, at = excluded.at, body = excluded.body",
            &[
                &kept.key,
                &kept.tenant,
                &kept.subjects,
                &kept.at,
                &kept.body,
            ],
        )
        .await?;
        Ok(())
    }

    async fn take_lease(&self, name: &str, holder: &str, ttl: std::time::Duration) -> Result<bool> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let taken = self
            .change(
                "INSERT INTO leases (name, holder, expires_at)
                 VALUES ($1, $2, now() + $3 * interval '1 millisecond')
                 ON CONFLICT (name) DO UPDATE
                 SET holder = excluded.holder, expires_at = excluded.expires_at
                 WHERE leases.holder = excluded.holder OR leases.expires_at < now()",
                &[&name, &holder, &(ttl_ms as f64)],
            )
            .await?;
        Ok(taken == 1)
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        self.change(
            "DELETE FROM leases WHERE name = $1 AND holder = $2",
            &[&name, &holder],
        )
        .await?;
        Ok(())
    }

    async fn take_tokens(&self, buckets: Vec<RateBucket>) -> Result<Option<Vec<BucketState>>> {
        Ok(Some(self.take_tokens_shared(&buckets).await?))
    }

    async fn prune_idempotent_responses(&self, before: Timestamp) -> Result<u64> {
        self.change("DELETE FROM idempotent_responses WHERE at < $1", &[&before])
            .await
    }
}
