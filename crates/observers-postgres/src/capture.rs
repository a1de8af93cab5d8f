//! Capture management: installs, removes and lists the generic `observers_capture()` trigger that
//! writes a table's row changes into `observer_change_log` (`observers capture enable|disable|list`).
//!
//! Table and column names come from operators, so they are parsed here with PostgreSQL's own
//! rules (unquoted names fold to lower case, `"Quoted Names"` are taken exactly), resolved in the
//! catalog with bind parameters, and only then put into DDL through `format('%I')`: a name is
//! never pasted into SQL by this crate.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::postgres::types::Oid;
use sqlx::{AssertSqlSafe, PgConnection, PgPool};

use crate::error::PgError;

/// Name of the row trigger `enable` installs on a captured table.
pub const TRIGGER_NAME: &str = "observers_capture";

/// Name of the row trigger for inserts that `enable` installs beside it on tables without a
/// column that can hold `json` (migration 034): `observers_capture_insert()` does less than the
/// general function. There, `TRIGGER_NAME` fires on updates and deletes only.
pub const INSERT_TRIGGER_NAME: &str = "observers_capture_insert";

/// Name of the statement trigger `enable` installs beside it: `TRUNCATE` fires no row trigger.
pub const TRUNCATE_TRIGGER_NAME: &str = "observers_capture_truncate";

/// The change log itself: capturing it would make every change-log insert log another one.
const CHANGE_LOG_TABLE: &str = "observer_change_log";

/// PostgreSQL truncates longer identifiers (NAMEDATALEN - 1), so no catalog name is longer.
const MAX_IDENTIFIER_BYTES: usize = 63;

/// What to capture: `observers capture enable --table orders --entity Order [--id-column id]
/// [--tenant-column tenant_id]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureSpec {
    /// `orders`, `sales.orders`, `"Order Items"` or `sales."Order Items"`.
    pub table: String,
    /// The entity type written to the change log (what observers match on), e.g. `Order`.
    pub entity: String,
    /// The column whose value becomes the event's entity id.
    #[serde(default = "default_id_column")]
    pub id_column: String,
    /// A column holding the tenant; without it the tenant comes from the session setting
    /// `observers.tenant_id`.
    #[serde(default)]
    pub tenant_column: Option<String>,
}

fn default_id_column() -> String {
    "id".to_owned()
}

impl CaptureSpec {
    /// Captures `table` as `entity`, keyed by its `id` column, without a tenant column.
    pub fn new(table: impl Into<String>, entity: impl Into<String>) -> Self {
        Self {
            table: table.into(),
            entity: entity.into(),
            id_column: default_id_column(),
            tenant_column: None,
        }
    }

    #[must_use]
    pub fn with_id_column(mut self, column: impl Into<String>) -> Self {
        self.id_column = column.into();
        self
    }

    #[must_use]
    pub fn with_tenant_column(mut self, column: impl Into<String>) -> Self {
        self.tenant_column = Some(column.into());
        self
    }
}

/// A captured table as recorded in `observer_captures`, with what the catalog says about it now:
/// a trigger dropped or disabled by hand, a key or tenant column renamed or dropped, the table
/// itself gone, changes the trigger could not key. `drift` says each in words, with the fix.
// Each bool is an independent catalog fact, reported as such in `capture list --format json`.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct CaptureInfo {
    pub schema: String,
    pub table: String,
    pub entity_type: String,
    pub id_column: String,
    pub tenant_column: Option<String>,
    pub enabled_at: DateTime<Utc>,
    /// The table still exists under this name.
    pub table_present: bool,
    /// The capture trigger is installed on the table.
    pub trigger_present: bool,
    /// ... and fires (not `DISABLE`d, not `ENABLE REPLICA` only).
    pub trigger_enabled: bool,
    /// The `TRUNCATE` trigger is installed and fires.
    #[serde(default)]
    pub truncate_trigger_enabled: bool,
    /// The configured id column still exists.
    pub id_column_present: bool,
    /// The configured tenant column still exists (true when there is none).
    pub tenant_column_present: bool,
    /// The columns rows are keyed by now: the id column, else the primary key; empty when the
    /// trigger has nothing to key rows by (they are logged with an empty entity id).
    pub key_columns: Vec<String>,
    /// Kind `trigger`: the table has a column that can hold `json`, and its trigger is the one
    /// that fails the application's write on a value jsonb cannot hold (it was created before
    /// the table had such a column).
    #[serde(default)]
    pub json_unguarded: bool,
    /// Types of the table's columns (directly, through a domain, or as array elements) with a
    /// user-defined cast to `json`: `to_jsonb` calls the cast's function for every captured
    /// change, with the rights of the capture function's owner (kind `trigger`) or of the
    /// relay's role (kind `wal`). One entry per type, naming the function and its owner.
    #[serde(default)]
    pub json_casts: Vec<String>,
    /// Changes logged with an empty entity id because they could not be keyed (counted up to
    /// [`UNKEYED_COUNT_CAP`]), and the latest reason.
    #[sqlx(try_from = "i64")]
    pub unkeyed_changes: u64,
    pub last_unkeyed_error: Option<String>,
    /// `trigger` or `wal`.
    #[serde(default = "trigger_kind")]
    pub kind: String,
    /// Kind `wal`: the publication the table was added to.
    #[serde(default)]
    pub publication: Option<String>,
    /// Kind `wal`: the table is in its publication now.
    #[serde(default)]
    pub published: bool,
    /// The table's replica identity is FULL (kind `wal` needs it for `before`).
    #[serde(default)]
    pub replica_identity_full: bool,
    /// What drifted, one sentence each with the fix; empty when all is well.
    #[sqlx(skip)]
    #[serde(default)]
    pub drift: Vec<String>,
}

fn trigger_kind() -> String {
    "trigger".to_owned()
}

/// `list` counts a table's unkeyed changes up to this many, so it stays cheap.
pub const UNKEYED_COUNT_CAP: i64 = 10_000;

impl CaptureInfo {
    /// `schema.table`, each part quoted only where PostgreSQL would need it.
    pub fn qualified_name(&self) -> String {
        format!(
            "{}.{}",
            display_ident(&self.schema),
            display_ident(&self.table)
        )
    }

    /// Whether the table's changes reach the change log now: its trigger fires (kind
    /// `trigger`), or it is in its publication (kind `wal`).
    pub fn is_capturing(&self) -> bool {
        if self.kind == "wal" {
            self.published
        } else {
            self.trigger_enabled
        }
    }

    /// Whether everything is as `capture enable` left it.
    pub fn is_healthy(&self) -> bool {
        self.drift.is_empty()
    }

    /// Drift of the table's json columns: a json column the trigger predates, casts to json.
    fn json_drift(&self, name: &str) -> Vec<String> {
        let mut drift = Vec::new();
        if self.kind != "wal" && self.trigger_present && self.json_unguarded {
            drift.push(format!(
                "table has a json column but its trigger was created before it: a json value \
                 jsonb cannot hold (an escaped NUL, a number beyond numeric's range) would fail \
                 the application's write; run `observers capture enable --table {name} --entity \
                 {}` again",
                self.entity_type
            ));
        }
        for cast in &self.json_casts {
            let runs_as = if self.kind == "wal" {
                "the WAL relay's role"
            } else {
                "the capture functions' owner (`observers_capture_owner`, which may only insert \
                 into the change log, unless `observers migrate` could not create that role)"
            };
            drift.push(format!(
                "column type {cast}: to_jsonb calls that function for every captured change of \
                 this table, with the rights of {runs_as}; drop the cast unless its owner is \
                 trusted as much as that role"
            ));
        }
        drift
    }

    fn describe_drift(&self) -> Vec<String> {
        let mut drift = Vec::new();
        let name = self.qualified_name();
        if !self.table_present {
            drift.push(format!(
                "table no longer exists (dropped or renamed): enable capture on its new name, or \
                 `observers capture disable --table {name}`"
            ));
            return drift;
        }
        if self.kind == "wal" {
            let publication = self.publication.as_deref().unwrap_or("?");
            if !self.published {
                drift.push(format!(
                    "table is not in publication {publication}, changes are not captured: run \
                     `observers capture enable --table {name} --entity {} --kind wal` again",
                    self.entity_type
                ));
            }
            if !self.replica_identity_full {
                drift.push(format!(
                    "replica identity is not FULL: updates and deletes arrive without the whole \
                     old row (`before`): `ALTER TABLE {name} REPLICA IDENTITY FULL`"
                ));
            }
        } else if !self.trigger_present {
            drift.push(format!(
                "trigger is missing, changes are not captured: run `observers capture enable \
                 --table {name} --entity {}` again",
                self.entity_type
            ));
        } else if !self.trigger_enabled {
            drift.push(format!(
                "trigger is disabled, changes are not captured: `ALTER TABLE {name} ENABLE \
                 TRIGGER {TRIGGER_NAME}` (and `ENABLE TRIGGER {INSERT_TRIGGER_NAME}` where the \
                 table has it), or run `observers capture enable --table {name} --entity {}` \
                 again",
                self.entity_type
            ));
        }
        drift.extend(self.json_drift(&name));
        if self.kind != "wal" && !self.truncate_trigger_enabled {
            drift.push(format!(
                "TRUNCATE is not captured (trigger {TRUNCATE_TRIGGER_NAME} is missing or \
                 disabled): run `observers capture enable --table {name} --entity {}` again",
                self.entity_type
            ));
        }
        if !self.id_column_present {
            let id = display_ident(&self.id_column);
            let keys: Vec<String> = self.key_columns.iter().map(|c| display_ident(c)).collect();
            drift.push(match keys.as_slice() {
                [] => format!(
                    "id column `{id}` no longer exists (renamed or dropped) and the table has no \
                     primary key: changes are logged with an empty entity id; run `observers \
                     capture enable --table {name} --entity {} --id-column <column>`",
                    self.entity_type
                ),
                [one] => format!(
                    "id column `{id}` no longer exists (renamed or dropped): rows are keyed by the \
                     primary key ({one}); run `observers capture enable --table {name} --entity {} \
                     --id-column {one}` to make that explicit",
                    self.entity_type
                ),
                many => format!(
                    "id column `{id}` no longer exists (renamed or dropped): rows are keyed by the \
                     primary key ({}) as a JSON array of its values; run `observers capture \
                     enable --table {name} --entity {} --id-column <column>`",
                    many.join(", "),
                    self.entity_type
                ),
            });
        }
        if let Some(tenant) = &self.tenant_column
            && !self.tenant_column_present
        {
            drift.push(format!(
                "tenant column `{}` no longer exists (renamed or dropped): the tenant comes from \
                 the session setting observers.tenant_id",
                display_ident(tenant)
            ));
        }
        if self.unkeyed_changes > 0 {
            let n = if i64::try_from(self.unkeyed_changes).is_ok_and(|n| n >= UNKEYED_COUNT_CAP) {
                format!("at least {UNKEYED_COUNT_CAP}")
            } else {
                self.unkeyed_changes.to_string()
            };
            drift.push(format!(
                "{n} change(s) were logged with a problem recorded in observer_capture_errors \
                 (could not be keyed, or values kept as text; latest: {})",
                self.last_unkeyed_error.as_deref().unwrap_or("?")
            ));
        }
        drift
    }
}

/// A table name split into its optional schema and its name, both unquoted and case-folded the
/// way PostgreSQL reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    pub schema: Option<String>,
    pub name: String,
}

impl TableName {
    /// Parses `table`, `schema.table` or their double-quoted forms (`"My Table"`, with `""` for a
    /// quote inside). Unquoted parts may hold letters, digits, `_` and `$` and fold to lower case.
    pub fn parse(input: &str) -> Result<Self, PgError> {
        let invalid = |why: String| {
            PgError::Invalid(format!(
                "table name `{input}` is not valid: {why}; write `table` or `schema.table`, \
                 quoting names with capitals, spaces or punctuation: \"Order Items\""
            ))
        };
        let mut parts = split_identifiers(input).map_err(invalid)?;
        match parts.len() {
            1 => Ok(Self {
                schema: None,
                name: parts.remove(0),
            }),
            2 => {
                let name = parts.remove(1);
                Ok(Self {
                    schema: Some(parts.remove(0)),
                    name,
                })
            }
            _ => Err(invalid(
                "it has more than two dot-separated parts".to_owned(),
            )),
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(schema) = &self.schema {
            write!(f, "{}.", display_ident(schema))?;
        }
        f.write_str(&display_ident(&self.name))
    }
}

/// Parses one column name with the same rules as a table name part.
fn parse_column(input: &str, role: &str) -> Result<String, PgError> {
    let invalid = |why: String| {
        PgError::Invalid(format!(
            "{role} `{input}` is not valid: {why}; quote names with capitals, spaces or \
             punctuation: \"orderId\""
        ))
    };
    let mut parts = split_identifiers(input).map_err(invalid)?;
    if parts.len() == 1 {
        Ok(parts.remove(0))
    } else {
        Err(invalid(
            "a column name cannot contain an unquoted `.`".to_owned(),
        ))
    }
}

/// Splits on unquoted dots, unquoting `"..."` parts and folding unquoted ones to lower case.
fn split_identifiers(input: &str) -> Result<Vec<String>, String> {
    let mut parts = Vec::new();
    let mut chars = input.trim().chars().peekable();
    loop {
        let part = if chars.peek() == Some(&'"') {
            chars.next();
            let mut part = String::new();
            loop {
                match chars.next() {
                    None => return Err("a double quote is not closed".to_owned()),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                }
            }
            if part.is_empty() {
                return Err("`\"\"` is an empty name".to_owned());
            }
            part
        } else {
            let mut part = String::new();
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                part.push(c);
                chars.next();
            }
            check_unquoted(&part)?;
            // PostgreSQL folds only ASCII letters of unquoted names.
            part.to_ascii_lowercase()
        };
        if part.len() > MAX_IDENTIFIER_BYTES {
            return Err(format!(
                "`{part}` is longer than {MAX_IDENTIFIER_BYTES} bytes, the longest name PostgreSQL keeps"
            ));
        }
        parts.push(part);
        match chars.next() {
            None => return Ok(parts),
            Some('.') => {}
            Some(c) => return Err(format!("unexpected `{c}` after a quoted name")),
        }
    }
}

fn check_unquoted(part: &str) -> Result<(), String> {
    let mut chars = part.chars();
    let Some(first) = chars.next() else {
        return Err("a name part is empty".to_owned());
    };
    let plain = (first.is_alphabetic() || first == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_' || c == '$');
    if plain {
        Ok(())
    } else {
        Err(format!(
            "`{part}` holds characters other than letters, digits, `_` and `$`"
        ))
    }
}

/// An identifier as a person would type it: bare when PostgreSQL reads it back unchanged,
/// double-quoted otherwise. For messages only; SQL is always quoted by `format('%I')`.
fn display_ident(ident: &str) -> String {
    let mut chars = ident.chars();
    let bare = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if bare {
        ident.to_owned()
    } else {
        format!("\"{}\"", ident.replace('"', "\"\""))
    }
}

/// A table found in the catalog, with the names exactly as stored there.
pub(crate) struct ResolvedTable {
    pub(crate) oid: Oid,
    pub(crate) schema: String,
    pub(crate) name: String,
}

impl ResolvedTable {
    pub(crate) fn display(&self) -> String {
        format!(
            "{}.{}",
            display_ident(&self.schema),
            display_ident(&self.name)
        )
    }
}

/// The schema an unqualified name refers to: `current_schema()`, or `None` when the search
/// path names no existing schema.
async fn schema_of(conn: &mut PgConnection, name: &TableName) -> Result<Option<String>, PgError> {
    Ok(
        sqlx::query_scalar("SELECT coalesce($1::text, current_schema()::text)")
            .bind(name.schema.as_deref())
            .fetch_one(conn)
            .await?,
    )
}

pub(crate) async fn resolve_table(
    conn: &mut PgConnection,
    name: &TableName,
    input: &str,
) -> Result<ResolvedTable, PgError> {
    let Some(schema) = schema_of(&mut *conn, name).await? else {
        return Err(PgError::Invalid(format!(
            "table `{input}` does not exist (no schema given and the search_path names no \
             existing schema; write it as schema.table)"
        )));
    };
    let found: Option<(Oid, String)> = sqlx::query_as(
        "SELECT c.oid, c.relkind::text
           FROM pg_catalog.pg_class c
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = $1 AND c.relname = $2",
    )
    .bind(&schema)
    .bind(&name.name)
    .fetch_optional(&mut *conn)
    .await?;
    let shown = format!("{}.{}", display_ident(&schema), display_ident(&name.name));
    match found {
        Some((oid, kind)) if kind == "r" || kind == "p" => Ok(ResolvedTable {
            oid,
            schema,
            name: name.name.clone(),
        }),
        Some((_, kind)) => Err(PgError::Invalid(format!(
            "`{shown}` is {}, not a table; only tables and partitioned tables can be captured",
            relkind_name(&kind)
        ))),
        None => {
            let hint = similar_tables(conn, name).await?;
            Err(PgError::Invalid(format!(
                "table `{input}` does not exist (looked in schema `{schema}` for `{}`){hint}",
                name.name
            )))
        }
    }
}

fn relkind_name(kind: &str) -> &'static str {
    match kind {
        "v" => "a view",
        "m" => "a materialized view",
        "f" => "a foreign table",
        "i" | "I" => "an index",
        "S" => "a sequence",
        "c" => "a composite type",
        "t" => "a TOAST table",
        _ => "not a plain relation",
    }
}

/// "; did you mean ..." for tables of the same name in other schemas or differing only in case
/// (a wrong schema or a missing pair of quotes is the usual reason a table is not found).
async fn similar_tables(conn: &mut PgConnection, name: &TableName) -> Result<String, PgError> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text
           FROM pg_catalog.pg_class c
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE lower(c.relname) = lower($1) AND c.relkind IN ('r', 'p')
            AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          ORDER BY 1, 2
          LIMIT 5",
    )
    .bind(&name.name)
    .fetch_all(conn)
    .await?;
    if rows.is_empty() {
        return Ok(String::new());
    }
    let names: Vec<String> = rows
        .iter()
        .map(|(s, t)| format!("{}.{}", display_ident(s), display_ident(t)))
        .collect();
    let case_differs = rows.iter().any(|(_, t)| *t != name.name);
    Ok(format!(
        "; did you mean {}?{}",
        names.join(", "),
        if case_differs {
            " (names with capitals or spaces need double quotes)"
        } else {
            ""
        }
    ))
}

async fn columns_of(
    conn: &mut PgConnection,
    table: &ResolvedTable,
) -> Result<Vec<String>, PgError> {
    Ok(sqlx::query_scalar(
        "SELECT attname::text FROM pg_catalog.pg_attribute
          WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped
          ORDER BY attnum",
    )
    .bind(table.oid)
    .fetch_all(conn)
    .await?)
}

fn require_column(
    columns: &[String],
    column: &str,
    role: &str,
    table: &ResolvedTable,
) -> Result<(), PgError> {
    if columns.iter().any(|c| c == column) {
        return Ok(());
    }
    let listed: Vec<String> = columns.iter().map(|c| display_ident(c)).collect();
    Err(PgError::Invalid(format!(
        "{role} `{column}` does not exist in table {}; its columns are: {}",
        table.display(),
        if listed.is_empty() {
            "(none)".to_owned()
        } else {
            listed.join(", ")
        }
    )))
}

/// How a table is captured: by the row trigger, or by the logical-replication relay through a
/// publication and slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptureKind {
    Trigger,
    Wal { publication: String, slot: String },
}

/// Installs (or re-installs with new settings) the capture trigger on `spec.table` and records it
/// in `observer_captures`, in one transaction.
pub async fn enable(pool: &PgPool, spec: &CaptureSpec) -> Result<CaptureInfo, PgError> {
    enable_as(pool, spec, &CaptureKind::Trigger).await
}

/// Captures `spec.table` the way `kind` says. For `Wal`: the table gets `REPLICA IDENTITY FULL`
/// (so updates and deletes carry the whole old row as `before`), joins the publication (created
/// on first use), loses any capture trigger, and the slot is created when missing, all before
/// this returns, so every change committed after it is delivered even if `run` starts later.
#[allow(clippy::too_many_lines)] // one transaction, read top to bottom
pub async fn enable_as(
    pool: &PgPool,
    spec: &CaptureSpec,
    kind: &CaptureKind,
) -> Result<CaptureInfo, PgError> {
    if let CaptureKind::Wal { publication, slot } = kind {
        crate::wal::validate_name("publication", publication).map_err(PgError::Invalid)?;
        crate::wal::validate_name("slot", slot).map_err(PgError::Invalid)?;
        crate::wal::slot::require_logical(pool).await?;
    }
    let entity = spec.entity.trim();
    if entity.is_empty() {
        return Err(PgError::Invalid(
            "entity type must not be empty; pass the name observers match on, e.g. --entity Order"
                .to_owned(),
        ));
    }
    let name = TableName::parse(&spec.table)?;
    let id_column = parse_column(&spec.id_column, "id column")?;
    let tenant_column = spec
        .tenant_column
        .as_deref()
        .map(|c| parse_column(c, "tenant column"))
        .transpose()?;

    let mut tx = pool.begin().await?;
    let table = resolve_table(&mut tx, &name, &spec.table).await?;
    if table.name == CHANGE_LOG_TABLE {
        return Err(PgError::Invalid(format!(
            "{} is the change log itself and cannot be captured",
            table.display()
        )));
    }
    let columns = columns_of(&mut tx, &table).await?;
    require_column(&columns, &id_column, "id column", &table)?;
    if let Some(tenant) = &tenant_column {
        require_column(&columns, tenant, "tenant column", &table)?;
    }

    if let CaptureKind::Wal { publication, .. } = kind {
        install_wal(&mut tx, &table, publication).await?;
    } else {
        install_triggers(
            &mut tx,
            &table,
            entity,
            &id_column,
            tenant_column.as_deref(),
        )
        .await?;
    }
    let (kind_name, publication) = match kind {
        CaptureKind::Trigger => ("trigger", None),
        CaptureKind::Wal { publication, .. } => ("wal", Some(publication.as_str())),
    };

    let enabled_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO observer_captures
             (table_schema, table_name, entity_type, id_column, tenant_column, kind, publication)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (table_schema, table_name) DO UPDATE
            SET entity_type = EXCLUDED.entity_type,
                id_column = EXCLUDED.id_column,
                tenant_column = EXCLUDED.tenant_column,
                kind = EXCLUDED.kind,
                publication = EXCLUDED.publication,
                enabled_at = now()
         RETURNING enabled_at",
    )
    .bind(&table.schema)
    .bind(&table.name)
    .bind(entity)
    .bind(&id_column)
    .bind(tenant_column.as_deref())
    .bind(kind_name)
    .bind(publication)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    if let CaptureKind::Wal { slot, .. } = kind {
        crate::wal::slot::ensure_slot(pool, slot).await?;
    }

    tracing::info!(table = %table.display(), entity = %entity, id_column = %id_column, kind = kind_name, "capture enabled");
    let fallback = CaptureInfo {
        schema: table.schema.clone(),
        table: table.name.clone(),
        entity_type: entity.to_owned(),
        key_columns: vec![id_column.clone()],
        id_column,
        tenant_column,
        enabled_at,
        table_present: true,
        trigger_present: kind_name == "trigger",
        trigger_enabled: kind_name == "trigger",
        truncate_trigger_enabled: kind_name == "trigger",
        id_column_present: true,
        tenant_column_present: true,
        json_unguarded: false,
        json_casts: Vec::new(),
        unkeyed_changes: 0,
        last_unkeyed_error: None,
        kind: kind_name.to_owned(),
        publication: publication.map(str::to_owned),
        published: kind_name == "wal",
        replica_identity_full: kind_name == "wal",
        drift: Vec::new(),
    };
    // Read back through the catalog, so what enable reports is what list will report (a
    // concurrent disable may already have removed it: then what was installed).
    Ok(list_where(pool, Some((&table.schema, &table.name)))
        .await?
        .pop()
        .unwrap_or(fallback))
}

/// The table joins `publication` (created when missing) with `REPLICA IDENTITY FULL`; a capture
/// trigger left from kind `trigger` is dropped (the relay now writes its changes).
async fn install_wal(
    tx: &mut PgConnection,
    table: &ResolvedTable,
    publication: &str,
) -> Result<(), PgError> {
    let statements: Vec<String> = sqlx::query_scalar::<_, Option<String>>(
        "SELECT format('DROP TRIGGER IF EXISTS %I ON %I.%I', $1, $3, $4)
         UNION ALL SELECT format('DROP TRIGGER IF EXISTS %I ON %I.%I', $2, $3, $4)
         UNION ALL SELECT format('DROP TRIGGER IF EXISTS %I ON %I.%I', $6, $3, $4)
         UNION ALL SELECT format('ALTER TABLE %I.%I REPLICA IDENTITY FULL', $3, $4)
         UNION ALL SELECT CASE
             WHEN NOT EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $5)
                 THEN format('CREATE PUBLICATION %I FOR TABLE %I.%I', $5, $3, $4)
             WHEN NOT EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables
                               WHERE pubname = $5 AND schemaname = $3 AND tablename = $4)
                 THEN format('ALTER PUBLICATION %I ADD TABLE %I.%I', $5, $3, $4)
             END",
    )
    .bind(TRIGGER_NAME)
    .bind(TRUNCATE_TRIGGER_NAME)
    .bind(&table.schema)
    .bind(&table.name)
    .bind(publication)
    .bind(INSERT_TRIGGER_NAME)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .flatten()
    .collect();
    for sql in statements {
        sqlx::query(AssertSqlSafe(sql)).execute(&mut *tx).await?;
    }
    Ok(())
}

/// The row and `TRUNCATE` triggers, re-created with the capture's arguments.
async fn install_triggers(
    tx: &mut PgConnection,
    table: &ResolvedTable,
    entity: &str,
    id_column: &str,
    tenant_column: Option<&str>,
) -> Result<(), PgError> {
    // PostgreSQL quotes every name (%I) and trigger argument (%L); CREATE OR REPLACE TRIGGER
    // needs 14+, DROP + CREATE in one transaction works from 13 on. The function is named with
    // its schema (the change log's), so the session's search_path cannot pick another one. A
    // table with a column that can hold `json` gets the function that keeps values jsonb cannot
    // hold as strings instead of failing the write (migration 027).
    // Other tables get two row triggers: inserts on `observers_capture_insert()`, which reads a
    // tenant column only when given one (migration 034), updates and deletes on the general one.
    let statements: Vec<Option<String>> = sqlx::query_scalar(
        "WITH f AS (
             SELECT n.nspname AS schema,
                    observers_holds_json(format('%I.%I', $2, $3)::regclass) AS json
               FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE c.oid = 'observer_change_log'::regclass
         )
         SELECT s FROM f, LATERAL (VALUES
             (1, format('DROP TRIGGER IF EXISTS %I ON %I.%I', $1, $2, $3)),
             (2, format('CREATE TRIGGER %I AFTER %s ON %I.%I '
                        'FOR EACH ROW EXECUTE FUNCTION %I.%I(%L, %L, %L)',
                        $1,
                        CASE WHEN f.json THEN 'INSERT OR UPDATE OR DELETE' ELSE 'UPDATE OR DELETE' END,
                        $2, $3, f.schema,
                        CASE WHEN f.json THEN 'observers_capture_json' ELSE 'observers_capture' END,
                        $4, $5, $6)),
             (3, format('DROP TRIGGER IF EXISTS %I ON %I.%I', $8, $2, $3)),
             (4, CASE WHEN NOT f.json THEN
                     format('CREATE TRIGGER %I AFTER INSERT ON %I.%I '
                            'FOR EACH ROW EXECUTE FUNCTION %I.observers_capture_insert(%L, %L%s)',
                            $8, $2, $3, f.schema, $4, $5,
                            CASE WHEN $6 <> '' THEN format(', %L', $6) ELSE '' END) END),
             (5, format('DROP TRIGGER IF EXISTS %I ON %I.%I', $7, $2, $3)),
             (6, format('CREATE TRIGGER %I AFTER TRUNCATE ON %I.%I '
                        'FOR EACH STATEMENT EXECUTE FUNCTION %I.observers_capture_truncate(%L)',
                        $7, $2, $3, f.schema, $4))) AS v(n, s)
          ORDER BY v.n",
    )
    .bind(TRIGGER_NAME)
    .bind(&table.schema)
    .bind(&table.name)
    .bind(entity)
    .bind(id_column)
    .bind(tenant_column.unwrap_or(""))
    .bind(TRUNCATE_TRIGGER_NAME)
    .bind(INSERT_TRIGGER_NAME)
    .fetch_all(&mut *tx)
    .await?;
    for sql in statements.into_iter().flatten() {
        sqlx::query(AssertSqlSafe(sql)).execute(&mut *tx).await?;
    }
    Ok(())
}

/// Drops the capture trigger of `table` and its `observer_captures` row. Returns `false` when the
/// table was not captured (neither a row nor a trigger). A row whose table was dropped since is
/// still removed.
pub async fn disable(pool: &PgPool, table: &str) -> Result<bool, PgError> {
    let name = TableName::parse(table)?;
    let mut tx = pool.begin().await?;
    let Some(schema) = schema_of(&mut tx, &name).await? else {
        return Err(PgError::Invalid(format!(
            "table `{table}` has no schema (the search_path names no existing schema; write it \
             as schema.table)"
        )));
    };
    // A wal capture leaves its publication (the relay ignores the table's changes from then).
    let leave: Vec<String> = sqlx::query_scalar(
        "SELECT format('ALTER PUBLICATION %I DROP TABLE %I.%I', p.pubname, p.schemaname, p.tablename)
           FROM pg_catalog.pg_publication_tables p
          WHERE p.schemaname = $1 AND p.tablename = $2
            AND p.pubname IN (SELECT k.publication FROM observer_captures k
                               WHERE k.kind = 'wal' AND k.publication IS NOT NULL)",
    )
    .bind(&schema)
    .bind(&name.name)
    .fetch_all(&mut *tx)
    .await?;
    for sql in leave {
        sqlx::query(AssertSqlSafe(sql)).execute(&mut *tx).await?;
    }
    let removed_row =
        sqlx::query("DELETE FROM observer_captures WHERE table_schema = $1 AND table_name = $2")
            .bind(&schema)
            .bind(&name.name)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            > 0;
    let drops: Vec<String> = sqlx::query_scalar(
        "SELECT format('DROP TRIGGER %I ON %I.%I', t.tgname, n.nspname, c.relname)
           FROM pg_catalog.pg_trigger t
           JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = $1 AND c.relname = $2 AND t.tgname IN ($3, $4, $5)
            AND NOT t.tgisinternal",
    )
    .bind(&schema)
    .bind(&name.name)
    .bind(TRIGGER_NAME)
    .bind(TRUNCATE_TRIGGER_NAME)
    .bind(INSERT_TRIGGER_NAME)
    .fetch_all(&mut *tx)
    .await?;
    let dropped_trigger = !drops.is_empty();
    for sql in drops {
        sqlx::query(AssertSqlSafe(sql)).execute(&mut *tx).await?;
    }
    tx.commit().await?;

    let shown = format!("{}.{}", display_ident(&schema), display_ident(&name.name));
    if removed_row || dropped_trigger {
        tracing::info!(table = %shown, "capture disabled");
    }
    Ok(removed_row || dropped_trigger)
}

/// Every captured table, ordered by schema and name, checked against the catalog.
pub async fn list(pool: &PgPool) -> Result<Vec<CaptureInfo>, PgError> {
    list_where(pool, None).await
}

/// The catalog's view of the captured tables (`$2`/`$3`: only that one); see [`list_where`].
const LIST_SQL: &str = "WITH k AS (
             SELECT k.*,
                    (SELECT c.oid FROM pg_catalog.pg_class c
                       JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                      WHERE n.nspname = k.table_schema AND c.relname = k.table_name
                        AND c.relkind IN ('r', 'p')) AS rel
               FROM observer_captures k
              WHERE $2::text IS NULL OR (k.table_schema = $2 AND k.table_name = $3)
         ), t AS (
             SELECT k.*,
                    rt.state AS trigger_state,
                    k.rel IS NOT NULL AND observers_holds_json(k.rel)
                        AND rt.function IS DISTINCT FROM 'observers_capture_json' AS json_unguarded,
                    coalesce((
                        SELECT array_agg(DISTINCT format('%s (cast to json by %s, owned by %s)',
                                                         ct.oid::regtype, c.castfunc::regprocedure,
                                                         pg_catalog.pg_get_userbyid(f.proowner)))
                          FROM observers_column_types(k.rel) ct(oid)
                          JOIN pg_catalog.pg_cast c
                            ON c.castsource = ct.oid AND c.casttarget = 'json'::regtype
                           AND c.castfunc <> 0
                          JOIN pg_catalog.pg_proc f ON f.oid = c.castfunc
                         WHERE ct.oid >= 16384), '{}') AS json_casts,
                    (SELECT t.tgenabled::text
                       FROM pg_catalog.pg_trigger t
                       JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
                      WHERE t.tgrelid = k.rel AND t.tgname = $5 AND NOT t.tgisinternal
                        AND p.proname = 'observers_capture_truncate') AS truncate_state,
                    EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                             WHERE a.attrelid = k.rel AND a.attname = k.id_column
                               AND a.attnum > 0 AND NOT a.attisdropped) AS id_column_present,
                    k.tenant_column IS NULL OR EXISTS (
                           SELECT 1 FROM pg_catalog.pg_attribute a
                            WHERE a.attrelid = k.rel AND a.attname = k.tenant_column
                              AND a.attnum > 0 AND NOT a.attisdropped) AS tenant_column_present,
                    coalesce((SELECT array_agg(a.attname::text ORDER BY x.ord)
                                FROM pg_catalog.pg_index i
                               CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS x(attnum, ord)
                                JOIN pg_catalog.pg_attribute a
                                  ON a.attrelid = i.indrelid AND a.attnum = x.attnum
                               WHERE i.indrelid = k.rel AND i.indisprimary), '{}') AS primary_key,
                    ARRAY(SELECT e.id FROM observer_capture_errors e
                           WHERE (e.table_schema, e.table_name) IN (
                                     SELECT n.nspname::text, c.relname::text
                                       FROM pg_catalog.pg_partition_tree(k.rel) pt
                                       JOIN pg_catalog.pg_class c ON c.oid = pt.relid
                                       JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                                     UNION ALL SELECT k.table_schema, k.table_name)
                           ORDER BY e.id DESC
                           LIMIT $4) AS unkeyed
               FROM k
               -- The row trigger: its state, and which capture function it runs; with the
               -- general function, the insert trigger beside it counts too (the worse state:
               -- the row trigger's unless it fires here, then the insert trigger's).
               LEFT JOIN LATERAL (
                   SELECT CASE WHEN p.proname = 'observers_capture_json'
                                 OR t.tgenabled NOT IN ('O', 'A') THEN t.tgenabled::text
                               ELSE it.tgenabled::text END AS state,
                          p.proname::text AS function
                     FROM pg_catalog.pg_trigger t
                     JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
                     LEFT JOIN LATERAL (
                         SELECT i.tgenabled
                           FROM pg_catalog.pg_trigger i
                           JOIN pg_catalog.pg_proc ip ON ip.oid = i.tgfoid
                          WHERE i.tgrelid = k.rel AND i.tgname = $6 AND NOT i.tgisinternal
                            AND ip.proname = 'observers_capture_insert') it ON true
                    WHERE t.tgrelid = k.rel AND t.tgname = $1 AND NOT t.tgisinternal
                      AND p.proname IN ('observers_capture', 'observers_capture_json')) rt ON true
         )
         SELECT t.table_schema AS schema, t.table_name AS table, t.entity_type, t.id_column,
                t.tenant_column, t.enabled_at,
                t.rel IS NOT NULL AS table_present,
                t.trigger_state IS NOT NULL AS trigger_present,
                coalesce(t.trigger_state IN ('O', 'A'), false) AS trigger_enabled,
                coalesce(t.truncate_state IN ('O', 'A'), false) AS truncate_trigger_enabled,
                t.id_column_present, t.tenant_column_present, t.json_unguarded, t.json_casts,
                CASE WHEN t.id_column_present THEN ARRAY[t.id_column] ELSE t.primary_key END
                    AS key_columns,
                cardinality(t.unkeyed)::int8 AS unkeyed_changes,
                (SELECT e.error FROM observer_capture_errors e WHERE e.id = t.unkeyed[1])
                    AS last_unkeyed_error,
                t.kind, t.publication,
                coalesce(EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables p
                                  WHERE p.pubname = t.publication
                                    AND p.schemaname = t.table_schema
                                    AND p.tablename = t.table_name), false) AS published,
                coalesce((SELECT c.relreplident = 'f' FROM pg_catalog.pg_class c
                           WHERE c.oid = t.rel), false) AS replica_identity_full
           FROM t
          ORDER BY t.table_schema, t.table_name";

/// The state of captured tables (all, or the one named `only`) as the catalog has it now.
pub(crate) async fn list_where(
    pool: &PgPool,
    only: Option<(&str, &str)>,
) -> Result<Vec<CaptureInfo>, PgError> {
    let mut list: Vec<CaptureInfo> = sqlx::query_as(LIST_SQL)
        .bind(TRIGGER_NAME)
        .bind(only.map(|o| o.0))
        .bind(only.map(|o| o.1))
        .bind(UNKEYED_COUNT_CAP)
        .bind(TRUNCATE_TRIGGER_NAME)
        .bind(INSERT_TRIGGER_NAME)
        .fetch_all(pool)
        .await?;
    for c in &mut list {
        c.drift = c.describe_drift();
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `expected` is `schema|name` (`-` for no schema), or `ERR:<fragment of the message>`.
    fn check(input: &str, expected: &str) {
        let got = match TableName::parse(input) {
            Ok(t) => format!("{}|{}", t.schema.as_deref().unwrap_or("-"), t.name),
            Err(e) => format!("ERR:{e}"),
        };
        if let Some(fragment) = expected.strip_prefix("ERR:") {
            assert!(
                got.starts_with("ERR:") && got.contains(fragment),
                "{input:?}: expected an error containing {fragment:?}, got {got:?}"
            );
        } else {
            assert_eq!(got, expected, "{input:?}");
        }
    }

    #[test]
    fn table_names_parse_like_postgresql_reads_them() {
        check("orders", "-|orders");
        check("  Orders ", "-|orders");
        check("sales.orders", "sales|orders");
        check("Sales.Orders", "sales|orders");
        check("\"Order Items\"", "-|Order Items");
        check("sales.\"Order Items\"", "sales|Order Items");
        check("\"My.Schema\".\"a.b\"", "My.Schema|a.b");
        check("\"say \"\"hi\"\"\"", "-|say \"hi\"");
        check("\"x; drop table y\"", "-|x; drop table y");
        check("_t$1", "-|_t$1");
        check("tëst", "-|tëst");
    }

    #[test]
    fn malformed_table_names_are_rejected() {
        check("x; drop table y", "ERR:holds characters other than");
        check("orders--", "ERR:holds characters other than");
        check("1orders", "ERR:holds characters other than");
        check("", "ERR:empty");
        check("sales.", "ERR:empty");
        check(".orders", "ERR:empty");
        check("a.b.c", "ERR:more than two");
        check("\"open", "ERR:not closed");
        check("\"\"", "ERR:empty name");
        check("\"a\"b", "ERR:unexpected `b`");
        check(&"t".repeat(64), "ERR:longer than 63 bytes");
    }

    #[test]
    fn columns_parse_as_single_identifiers() {
        assert_eq!(parse_column("ID", "id column").ok().as_deref(), Some("id"));
        assert_eq!(
            parse_column("\"orderId\"", "id column").ok().as_deref(),
            Some("orderId")
        );
        let err = parse_column("a.b", "tenant column")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tenant column `a.b`"), "{err}");
    }

    #[test]
    fn names_display_quoted_only_when_needed() {
        assert_eq!(display_ident("orders"), "orders");
        assert_eq!(display_ident("Order Items"), "\"Order Items\"");
        assert_eq!(display_ident("a\"b"), "\"a\"\"b\"");
        let t = TableName::parse("Sales.\"Order Items\"").unwrap();
        assert_eq!(t.to_string(), "sales.\"Order Items\"");
    }
}
