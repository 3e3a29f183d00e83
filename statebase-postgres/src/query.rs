//! What every part of the store shares: conversions between statebase's values and
//! PostgreSQL's, statements run through the connection's cache of prepared statements, and
//! the filters of list queries.

use crate::PostgresError;
use deadpool_postgres::GenericClient;
use statebase_core::store::Cursor;
use statebase_core::Timestamp;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

pub type Res<T> = Result<T, PostgresError>;

/// A parameter of a statement built at run time.
pub type Param = Box<dyn ToSql + Sync + Send>;

/// A stored count or number, which statebase keeps in `0..=i64::MAX`.
pub fn int(n: u64) -> Res<i64> {
    i64::try_from(n).map_err(|_| PostgresError::Corrupt(format!("integer {n} out of range")))
}

/// A number read back.
pub fn uint(n: i64) -> Res<u64> {
    u64::try_from(n).map_err(|_| PostgresError::Corrupt(format!("stored integer {n}")))
}

/// A range bound: numbers past `i64::MAX` are past every stored one.
pub fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A `LIMIT`.
pub fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The column `name` of `row` as a count or number.
pub fn get_uint(row: &Row, name: &str) -> Res<u64> {
    uint(row.try_get(name)?)
}

/// Begins a transaction on `conn`.
pub async fn begin(
    conn: &mut deadpool_postgres::Object,
) -> Res<deadpool_postgres::Transaction<'_>> {
    Ok(conn.transaction().await?)
}

/// Commits `tx`.
pub async fn commit(tx: deadpool_postgres::Transaction<'_>) -> Res<()> {
    Ok(tx.commit().await?)
}

/// Runs `sql`, prepared once per connection, and returns its rows.
pub async fn rows(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Res<Vec<Row>> {
    let statement = c.prepare_cached(sql).await?;
    Ok(c.query(&statement, params).await?)
}

/// Runs `sql` and returns its first row, if any.
pub async fn row(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Res<Option<Row>> {
    let statement = c.prepare_cached(sql).await?;
    Ok(c.query_opt(&statement, params).await?)
}

/// Runs `sql` and returns how many rows it changed.
pub async fn execute(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Res<u64> {
    let statement = c.prepare_cached(sql).await?;
    Ok(c.execute(&statement, params).await?)
}

/// A `SELECT` whose filters depend on the request: conditions joined by `AND`, each with
/// its own `$n` parameters.
pub struct Filtered {
    select: String,
    conditions: String,
    params: Vec<Param>,
}

impl Filtered {
    /// `select` is the statement up to its `WHERE`, whose first condition is
    /// `{tenant_column} = $1`.
    pub fn new(select: &str, tenant_column: &str, tenant: &str) -> Self {
        Self {
            select: select.to_owned(),
            conditions: format!("{tenant_column} = $1"),
            params: vec![Box::new(tenant.to_owned())],
        }
    }

    /// Replaces the statement up to its `WHERE`.
    pub fn select(&mut self, select: String) {
        self.select = select;
    }

    /// The next parameter's placeholder, for `value`.
    pub fn bind(&mut self, value: impl ToSql + Sync + Send + 'static) -> String {
        self.params.push(Box::new(value));
        format!("${}", self.params.len())
    }

    /// Adds `AND {condition}`.
    pub fn and(&mut self, condition: &str) {
        self.conditions.push_str(" AND ");
        self.conditions.push_str(condition);
    }

    /// `AND column = value`, when there is a value.
    pub fn eq(&mut self, column: &str, value: Option<&String>) {
        if let Some(v) = value {
            let p = self.bind(v.clone());
            self.and(&format!("{column} = {p}"));
        }
    }

    /// `AND column {op} t`, when there is an instant.
    pub fn time(&mut self, column: &str, op: &str, t: Option<Timestamp>) {
        if let Some(t) = t {
            let p = self.bind(t);
            self.and(&format!("{column} {op} {p}"));
        }
    }

    /// `AND ({at}, {id}) < cursor`: newest first, strictly after the cursor.
    pub fn before(&mut self, at: &str, id: &str, after: Option<&Cursor>) {
        if let Some(c) = after {
            let (t, i) = (self.bind(c.at), self.bind(c.id.clone()));
            self.and(&format!("({at}, {id}) < ({t}, {i})"));
        }
    }

    /// Runs it with `tail` (ordering and limit) appended.
    pub async fn rows(self, c: &impl GenericClient, tail: &str) -> Res<Vec<Row>> {
        let sql = format!("{} WHERE {} {tail}", self.select, self.conditions);
        let params: Vec<&(dyn ToSql + Sync)> = self
            .params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        rows(c, &sql, &params).await
    }

    /// `ORDER BY {at} DESC, {id} DESC LIMIT limit`, run.
    pub async fn newest_first(
        mut self,
        c: &impl GenericClient,
        at: &str,
        id: &str,
        limit: usize,
    ) -> Res<Vec<Row>> {
        let p = self.bind(self::limit(limit));
        self.rows(c, &format!("ORDER BY {at} DESC, {id} DESC LIMIT {p}"))
            .await
    }
}
