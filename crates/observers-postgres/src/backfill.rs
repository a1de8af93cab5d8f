//! `observers capture backfill`: a captured table's existing rows written into the change log as
//! `read` changes, in keyset batches by primary key, each batch one short transaction that also
//! records how far it got (`observer_backfills`), so an interrupted backfill resumes where it
//! stopped.
//!
//! - **Never a skipped change.** Batches insert through the change log's own statement trigger,
//!   which takes the read-horizon lock before the first id is drawn, like every writer
//!   (docs/postgres.md, "The cursor").
//! - **Per-entity order.** A batch reads its rows `FOR SHARE`: a concurrent update of a row
//!   either commits first (the batch waits for it, reads the new version, and its `read` change
//!   gets the later id) or waits for the batch (its change follows the `read`). The locks last one
//!   batch.
//! - **Resumable, once.** The batch's change-log rows and the new `last_key` commit together;
//!   the state row is locked for the batch, so two runs of one backfill take turns.

use serde::Serialize;
use sqlx::{AssertSqlSafe, PgPool, Row as _};

use crate::capture::{self, TableName};
use crate::error::PgError;

/// The most rows one batch may take.
pub const MAX_BATCH: i64 = 100_000;

/// What to backfill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillRequest {
    /// A captured table, as `capture enable` takes it.
    pub table: String,
    /// An SQL condition on the table's columns (`--where`); only matching rows are emitted.
    pub filter: Option<String>,
    /// Rows per batch (one transaction each).
    pub batch: i64,
    /// Start over instead of continuing a backfill of the same table and filter.
    pub restart: bool,
}

/// The recorded progress of one backfill (`observer_backfills`).
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct BackfillState {
    pub id: i64,
    pub table_schema: String,
    pub table_name: String,
    /// The `--where` condition, `""` for none.
    pub filter: String,
    pub entity_type: String,
    pub key_columns: Vec<String>,
    /// The primary-key values of the last row emitted (a JSON array); `None` before the first.
    pub last_key: Option<serde_json::Value>,
    pub rows_emitted: i64,
    pub batches: i64,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A prepared backfill: call [`Backfill::next_batch`] until it returns `None`.
#[derive(Debug)]
pub struct Backfill {
    pool: PgPool,
    state: BackfillState,
    batch: i64,
    /// The batch statement: `$1` last key, `$2` limit, `$3` entity type, `$4` id column, `$5`
    /// tenant column (`''` for none).
    batch_sql: String,
    id_column: String,
    tenant_column: String,
    /// Matching rows after `last_key` when prepared.
    remaining: u64,
    /// Whether this run continues an earlier one.
    resumed: bool,
}

/// What the catalog gives for building the batch statement; every name quoted by PostgreSQL.
#[derive(sqlx::FromRow)]
struct KeyParts {
    from: String,
    key_columns: Vec<String>,
    key_list: String,
    key_params: String,
    key_json: String,
    key_aliased: String,
    key_desc: String,
    key_fallback: String,
}

impl Backfill {
    /// Resolves the table and its capture, checks the filter, and loads (or starts) the
    /// recorded progress.
    pub async fn prepare(pool: &PgPool, request: &BackfillRequest) -> Result<Self, PgError> {
        if !(1..=MAX_BATCH).contains(&request.batch) {
            return Err(PgError::Invalid(format!(
                "batch size must be between 1 and {MAX_BATCH}, got {}",
                request.batch
            )));
        }
        let filter = request.filter.as_deref().map_or("", str::trim).to_owned();
        let name = TableName::parse(&request.table)?;
        let mut conn = pool.acquire().await?;
        let table = capture::resolve_table(&mut conn, &name, &request.table).await?;
        let shown = table.display();
        let Some(info) = capture::list_where(pool, Some((&table.schema, &table.name)))
            .await?
            .pop()
        else {
            return Err(PgError::Invalid(format!(
                "{shown} is not captured: run `observers capture enable --table {shown} --entity \
                 <Entity>` first, so changes made during the backfill are captured too"
            )));
        };
        if !info.is_capturing() {
            return Err(PgError::Invalid(format!(
                "the capture of {shown} is not in force (its trigger is missing or disabled, or \
                 it left its publication), so changes made during the backfill would be lost: {}",
                info.drift.join("; ")
            )));
        }
        let parts = key_parts(&mut conn, &table).await?;
        let Some(parts) = parts else {
            return Err(PgError::Invalid(format!(
                "{shown} has no primary key: a backfill pages through the table by its primary key; \
                 add one (ALTER TABLE ... ADD PRIMARY KEY)"
            )));
        };
        let (batch_sql, count_sql) = statements(&parts, &filter);
        let existing = recorded(&mut conn, &table, &filter, request.restart).await?;
        if let Some(state) = &existing
            && state.key_columns != parts.key_columns
        {
            return Err(PgError::Invalid(format!(
                "the primary key of {shown} changed since this backfill started ({} then, {} now); \
                 pass --restart to start it over",
                state.key_columns.join(", "),
                parts.key_columns.join(", ")
            )));
        }
        let last_key = existing.as_ref().and_then(|s| s.last_key.clone());
        let remaining: i64 = sqlx::query_scalar(AssertSqlSafe(count_sql))
            .bind(&last_key)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| match e {
                sqlx::Error::Database(db) => PgError::Invalid(format!(
                    "--where `{filter}` cannot be used on {shown}: {}",
                    db.message()
                )),
                other => PgError::Database(other),
            })?;
        let resumed = existing.is_some();
        let state = match existing {
            Some(state) => state,
            None => {
                sqlx::query_as(
                    "INSERT INTO observer_backfills
                         (table_schema, table_name, filter, entity_type, key_columns)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (table_schema, table_name, filter)
                         DO UPDATE SET updated_at = observer_backfills.updated_at
                     RETURNING *",
                )
                .bind(&table.schema)
                .bind(&table.name)
                .bind(&filter)
                .bind(&info.entity_type)
                .bind(&parts.key_columns)
                .fetch_one(&mut *conn)
                .await?
            }
        };
        Ok(Self {
            pool: pool.clone(),
            state,
            batch: request.batch,
            batch_sql,
            id_column: info.id_column,
            tenant_column: info.tenant_column.unwrap_or_default(),
            remaining: u64::try_from(remaining).unwrap_or_default(),
            resumed,
        })
    }

    /// The progress as last recorded.
    pub fn state(&self) -> &BackfillState {
        &self.state
    }

    /// Matching rows after the recorded key when prepared (rows written since may add some).
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Whether this run continues an earlier, interrupted one.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// Emits the next batch in its own transaction and returns how many rows it wrote to the
    /// change log; `None` once the table is done.
    pub async fn next_batch(&mut self) -> Result<Option<u64>, PgError> {
        if self.state.finished_at.is_some() {
            return Ok(None);
        }
        let mut tx = self.pool.begin().await?;
        // Locked for the batch: another run of the same backfill waits, then sees this key.
        let current: BackfillState =
            sqlx::query_as("SELECT * FROM observer_backfills WHERE id = $1 FOR UPDATE")
                .bind(self.state.id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| {
                    PgError::Invalid(format!(
                        "backfill {} was removed while it ran (another run passed --restart?)",
                        self.state.id
                    ))
                })?;
        if current.finished_at.is_some() {
            self.state = current;
            return Ok(None);
        }
        let row = sqlx::query(AssertSqlSafe(self.batch_sql.clone()))
            .bind(&current.last_key)
            .bind(self.batch)
            .bind(&current.entity_type)
            .bind(&self.id_column)
            .bind(&self.tenant_column)
            .fetch_one(&mut *tx)
            .await?;
        let rows: i64 = row.try_get("rows")?;
        let last_key: Option<serde_json::Value> = row.try_get("last_key")?;
        self.state = sqlx::query_as(
            "UPDATE observer_backfills
                SET last_key = coalesce($2, last_key),
                    rows_emitted = rows_emitted + $3,
                    batches = batches + 1,
                    updated_at = now(),
                    finished_at = CASE WHEN $3 < $4 THEN now() END
              WHERE id = $1
          RETURNING *",
        )
        .bind(self.state.id)
        .bind(&last_key)
        .bind(rows)
        .bind(self.batch)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(u64::try_from(rows).unwrap_or_default()))
    }
}

/// The recorded progress of the backfill of `table` with `filter`, forgotten first when
/// `restart`.
async fn recorded(
    conn: &mut sqlx::PgConnection,
    table: &capture::ResolvedTable,
    filter: &str,
    restart: bool,
) -> Result<Option<BackfillState>, PgError> {
    if restart {
        sqlx::query(
            "DELETE FROM observer_backfills
              WHERE table_schema = $1 AND table_name = $2 AND filter = $3",
        )
        .bind(&table.schema)
        .bind(&table.name)
        .bind(filter)
        .execute(&mut *conn)
        .await?;
    }
    Ok(sqlx::query_as(
        "SELECT * FROM observer_backfills
          WHERE table_schema = $1 AND table_name = $2 AND filter = $3",
    )
    .bind(&table.schema)
    .bind(&table.name)
    .bind(filter)
    .fetch_optional(conn)
    .await?)
}

/// The pieces of the batch statement for `table`'s primary key; `None` when it has none.
async fn key_parts(
    conn: &mut sqlx::PgConnection,
    table: &capture::ResolvedTable,
) -> Result<Option<KeyParts>, PgError> {
    Ok(sqlx::query_as(
        "SELECT format('%I.%I t', $2::text, $3::text) AS from,
                array_agg(a.attname::text ORDER BY k.ord) AS key_columns,
                string_agg(format('t.%I', a.attname), ', ' ORDER BY k.ord) AS key_list,
                string_agg(format('($1::jsonb ->> %s)::%s', k.ord - 1,
                                  format_type(a.atttypid, a.atttypmod)), ', ' ORDER BY k.ord)
                    AS key_params,
                string_agg(format('to_jsonb(t.%I)', a.attname), ', ' ORDER BY k.ord) AS key_json,
                string_agg(format('t.%I AS _k%s', a.attname, k.ord), ', ' ORDER BY k.ord)
                    AS key_aliased,
                string_agg(format('_k%s DESC', k.ord), ', ' ORDER BY k.ord) AS key_desc,
                CASE WHEN count(*) = 1 THEN format('_r ->> %L', min(a.attname::text))
                     ELSE format('jsonb_build_array(%s)::text',
                                 string_agg(format('_r -> %L', a.attname), ', ' ORDER BY k.ord))
                END AS key_fallback
           FROM pg_catalog.pg_index i
          CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
           JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
          WHERE i.indrelid = $1 AND i.indisprimary
         HAVING count(*) > 0",
    )
    .bind(table.oid)
    .bind(&table.schema)
    .bind(&table.name)
    .fetch_optional(conn)
    .await?)
}

/// The batch statement and the count of rows left, for the key `parts` and the `--where`
/// condition (`""` for none).
fn statements(parts: &KeyParts, filter: &str) -> (String, String) {
    // A line break after the condition, so a `--` comment in it ends there.
    let condition = if filter.is_empty() {
        "true".to_owned()
    } else {
        format!("({filter}\n)")
    };
    let after_key = format!(
        "($1::jsonb IS NULL OR ({}) > ({}))",
        parts.key_list, parts.key_params
    );
    let batch_sql = format!(
        "WITH batch AS (
             SELECT to_jsonb(t) AS _r, jsonb_build_array({json}) AS _key, {aliased}
               FROM {from}
              WHERE {after_key} AND {condition}
              ORDER BY {list}
              LIMIT $2
              FOR SHARE OF t
         ), logged AS (
             INSERT INTO observer_change_log (entity_type, entity_id, operation, tenant_id, after)
             SELECT $3, coalesce(_r ->> $4, {fallback}, ''), 'read',
                    coalesce(_r ->> nullif($5, ''),
                             nullif(current_setting('observers.tenant_id', true), '')),
                    _r
               FROM batch
              RETURNING 1
         )
         SELECT (SELECT count(*) FROM logged) AS rows,
                (SELECT _key FROM batch ORDER BY {desc} LIMIT 1) AS last_key",
        json = parts.key_json,
        aliased = parts.key_aliased,
        from = parts.from,
        list = parts.key_list,
        fallback = parts.key_fallback,
        desc = parts.key_desc,
    );
    let count_sql = format!(
        "SELECT count(*) FROM {} WHERE {after_key} AND {condition}",
        parts.from
    );

    (batch_sql, count_sql)
}

/// Every recorded backfill, newest first.
pub async fn list(pool: &PgPool) -> Result<Vec<BackfillState>, PgError> {
    Ok(
        sqlx::query_as("SELECT * FROM observer_backfills ORDER BY id DESC")
            .fetch_all(pool)
            .await?,
    )
}
