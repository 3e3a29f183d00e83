//! The audit trail and its feed.
//!
//! A feed position must grow with commit order, which a sequence read inside concurrent
//! transactions does not give: a transaction holding position 7 may commit after the one
//! holding 8, and a reader past 8 would miss 7. So writes insert their traces without a
//! position, and readers of the feed first number every committed trace that has none, one
//! reader at a time (an advisory lock): whatever commits later gets a higher number.
//! Writers never wait for one another on the feed; traces written at once may be numbered
//! in either order. Imported traces have no `seq` and are never numbered.

use crate::query::{self, get_uint, int, Filtered, Res};
use crate::{PostgresError, PostgresStore};
use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use statebase_core::store::{FeedEntry, TraceLog, TraceQuery};
use statebase_core::{Result, Timestamp, Trace};
use tokio_postgres::types::{Json, ToSql};
use tokio_postgres::Row;

const COLUMNS: &str =
    "id, session_id, action, resource_type, resource_id, actor, timestamp, details";
const COLUMN_COUNT: usize = 8;

/// Serialises the numbering of the feed ("feed" in ASCII, under statebase's lock space).
const FEED_LOCK: i64 = 0x7374_6174_6566_6565;

pub fn read_trace(r: &Row) -> Res<Trace> {
    Ok(Trace {
        id: r.try_get("id")?,
        session_id: r.try_get("session_id")?,
        action: r.try_get("action")?,
        resource_type: r.try_get("resource_type")?,
        resource_id: r.try_get("resource_id")?,
        actor: r.try_get("actor")?,
        timestamp: r.try_get("timestamp")?,
        details: r.try_get::<_, Json<serde_json::Value>>("details")?.0,
    })
}

/// A trace's values after its tenant, in `COLUMNS`' order: statement parameters.
pub struct TraceValues<'a> {
    t: &'a Trace,
    details: Json<&'a serde_json::Value>,
}

impl<'a> TraceValues<'a> {
    pub fn new(t: &'a Trace) -> Self {
        Self {
            t,
            details: Json(&t.details),
        }
    }

    pub fn params(&self) -> [&(dyn ToSql + Sync); 8] {
        let t = self.t;
        [
            &t.id,
            &t.session_id,
            &t.action,
            &t.resource_type,
            &t.resource_id,
            &t.actor,
            &t.timestamp,
            &self.details,
        ]
    }
}

/// The part of a statement that writes a trace for the tenant `$1` whose values are the
/// parameters from `$first` on, once for each row of `source` (a compare-and-set's rows,
/// or an earlier trace's: the parts of a statement run in no set order, but one that reads
/// another's rows runs after it, and the feed keeps the order traces were written in).
pub fn insert_trace_for(source: &str, first: usize) -> String {
    let values: Vec<String> = (first..first + COLUMN_COUNT)
        .map(|n| format!("${n}"))
        .collect();
    format!(
        "INSERT INTO traces (tenant, {COLUMNS}) SELECT $1, {} FROM {source} RETURNING tenant",
        values.join(", ")
    )
}

/// Writes the trace of a change, in the change's transaction.
pub async fn insert_trace(c: &impl GenericClient, tenant: &str, t: &Trace) -> Res<()> {
    let values = TraceValues::new(t);
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&tenant];
    params.extend(values.params());
    query::execute(
        c,
        &format!(
            "INSERT INTO traces (tenant, {COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ),
        &params,
    )
    .await?;
    Ok(())
}

impl PostgresStore {
    /// Numbers the committed traces that have no feed position yet, in the order they were
    /// written: of two writes one after the other, the first is numbered first.
    async fn sequence_feed(&self) -> Res<()> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        query::execute(&tx, "SELECT pg_advisory_xact_lock($1)", &[&FEED_LOCK]).await?;
        query::execute(
            &tx,
            "WITH pending AS (
                 SELECT tenant, id FROM traces WHERE position IS NULL AND seq IS NOT NULL
                 ORDER BY seq
             ), numbered AS (
                 SELECT tenant, id, nextval('statebase_feed') AS position FROM pending
             )
             UPDATE traces t SET position = numbered.position FROM numbered
             WHERE t.tenant = numbered.tenant AND t.id = numbered.id",
            &[],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

#[async_trait]
impl TraceLog for PostgresStore {
    async fn import_traces(&self, tenant: &str, traces: Vec<Trace>) -> Result<u64> {
        let column = |f: fn(&Trace) -> &String| traces.iter().map(f).collect::<Vec<_>>();
        let (ids, actions) = (column(|t| &t.id), column(|t| &t.action));
        let (types, resources) = (column(|t| &t.resource_type), column(|t| &t.resource_id));
        let actors = column(|t| &t.actor);
        let sessions: Vec<_> = traces.iter().map(|t| t.session_id.as_deref()).collect();
        let times: Vec<_> = traces.iter().map(|t| t.timestamp).collect();
        let details: Vec<_> = traces.iter().map(|t| Json(&t.details)).collect();
        let conn = self.conn().await?;
        let inserted = query::execute(
            &conn,
            &format!(
                "INSERT INTO traces (tenant, {COLUMNS}, seq)
                 SELECT $1, t.*, NULL FROM unnest($2::text[], $3::text[], $4::text[], $5::text[],
                     $6::text[], $7::text[], $8::timestamptz[], $9::json[]) AS t ({COLUMNS})
                 WHERE NOT EXISTS (SELECT 1 FROM erased e WHERE e.tenant = $1
                     AND (e.id = t.session_id OR e.id = t.resource_id))
                 ON CONFLICT DO NOTHING"
            ),
            &[
                &tenant, &ids, &sessions, &actions, &types, &resources, &actors, &times, &details,
            ],
        )
        .await?;
        Ok(inserted)
    }

    async fn prune_traces(&self, tenant: &str, before: Timestamp, trace: Trace) -> Result<u64> {
        let mut conn = self.conn().await?;
        let tx = query::begin(&mut conn).await?;
        let gone = query::execute(
            &tx,
            "DELETE FROM traces WHERE tenant = $1 AND timestamp < $2",
            &[&tenant, &before],
        )
        .await?;
        // Feed positions come from a sequence: none is given out again.
        if gone > 0 {
            insert_trace(&tx, tenant, &trace).await?;
        }
        query::commit(tx).await?;
        Ok(gone)
    }

    async fn tenants(&self) -> Result<Vec<String>> {
        let conn = self.conn().await?;
        let found = query::rows(
            &conn,
            "SELECT tenant FROM sessions UNION SELECT tenant FROM memories
             UNION SELECT tenant FROM traces ORDER BY 1",
            &[],
        )
        .await?;
        Ok(found
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(PostgresError::from)?)
    }

    async fn trace(&self, tenant: &str, id: &str) -> Result<Option<Trace>> {
        let conn = self.conn().await?;
        let found = query::row(
            &conn,
            &format!("SELECT {COLUMNS} FROM traces WHERE tenant = $1 AND id = $2"),
            &[&tenant, &id],
        )
        .await?;
        Ok(found.as_ref().map(read_trace).transpose()?)
    }

    async fn list_traces(&self, tenant: &str, q: &TraceQuery) -> Result<Vec<Trace>> {
        let mut f = Filtered::new(&format!("SELECT {COLUMNS} FROM traces"), "tenant", tenant);
        f.before("timestamp", "id", q.after.as_ref());
        f.eq("session_id", q.session_id.as_ref());
        f.eq("action", q.action.as_ref());
        f.eq("resource_type", q.resource_type.as_ref());
        f.eq("resource_id", q.resource_id.as_ref());
        f.time("timestamp", ">", q.created_after);
        f.time("timestamp", "<", q.created_before);
        let conn = self.conn().await?;
        let found = f.newest_first(&conn, "timestamp", "id", q.limit).await?;
        Ok(found.iter().map(read_trace).collect::<Res<_>>()?)
    }

    async fn trace_activity(
        &self,
        tenant: &str,
        after: Timestamp,
    ) -> Result<Vec<(Timestamp, u64)>> {
        let conn = self.conn().await?;
        let found = query::rows(
            &conn,
            "SELECT date_trunc('hour', timestamp, 'UTC') AS hour, count(*) AS n FROM traces
             WHERE tenant = $1 AND timestamp > $2 GROUP BY hour ORDER BY hour",
            &[&tenant, &after],
        )
        .await?;
        let hours = found
            .iter()
            .map(|r| Ok((r.try_get("hour")?, get_uint(r, "n")?)))
            .collect::<Res<_>>()?;
        Ok(hours)
    }

    async fn trace_feed(&self, after: u64, limit: usize) -> Result<Vec<FeedEntry>> {
        self.sequence_feed().await?;
        let conn = self.conn().await?;
        let found = query::rows(
            &conn,
            &format!(
                "SELECT {COLUMNS}, position, tenant FROM traces WHERE position > $1
                 ORDER BY position LIMIT $2"
            ),
            &[&int(after)?, &query::limit(limit)],
        )
        .await?;
        let entries = found
            .iter()
            .map(|r| {
                Ok(FeedEntry {
                    position: get_uint(r, "position")?,
                    tenant: r.try_get("tenant")?,
                    trace: read_trace(r)?,
                })
            })
            .collect::<Res<_>>()?;
        Ok(entries)
    }

    async fn trace_feed_end(&self) -> Result<u64> {
        self.sequence_feed().await?;
        let conn = self.conn().await?;
        let end = query::row(
            &conn,
            "SELECT coalesce(max(position), 0) AS end FROM traces",
            &[],
        )
        .await?;
        Ok(end.map(|r| get_uint(&r, "end")).transpose()?.unwrap_or(0))
    }
}
