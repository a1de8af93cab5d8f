//! Decoding one change-log row into a `SourceItem`, column by column, so a row PostgreSQL
//! accepted but Observers cannot read (JSON nested deeper than the parser allows, an unknown
//! operation, a missing row image) becomes a poison item for the DLQ instead of failing the
//! whole batch and stalling the stream.
//!
//! The row images arrive as text (`before::text`) and are parsed here, one row at a time.

use chrono::{DateTime, Utc};
use observers_core::stores::source::SourceItem;
use observers_core::{Cursor, EntityEvent, EventKind};
use serde_json::{Map, Value};
use sqlx::Row as _;
use sqlx::postgres::PgRow;

use crate::error::PgError;

/// The columns every change-log read selects, in the order [`decode`] reads them. The row images
/// are selected as text: they are parsed row by row, so one unparseable value spoils only its
/// own row.
macro_rules! change_columns {
    () => {
        "id, txid::text::bigint AS txid, entity_type, entity_id, operation, tenant_id, user_id, \
         before::text AS before, after::text AS after, created_at"
    };
}
pub(crate) use change_columns;

/// The bytes a row arrived as (the sum of its values' encodings): what the batch byte budget
/// counts.
pub(crate) fn wire_size(row: &PgRow) -> usize {
    (0..row.len())
        .filter_map(|i| row.try_get_raw(i).ok())
        .filter_map(|v| v.as_bytes().ok().map(<[u8]>::len))
        .sum()
}

/// Decodes one row. Fails only when the row has no usable cursor (`id`, `txid` are `NOT NULL
/// bigint` in the schema, so only a broken schema gets there); every other problem becomes a
/// `SourceItem::Poison` carrying what could be read, raw text included.
pub(crate) fn decode(row: &PgRow) -> Result<SourceItem, PgError> {
    let id: i64 = row.try_get("id")?;
    let txid: i64 = row.try_get("txid")?;
    let mut problems = Vec::new();
    let mut text = |col: &str| text_cell(row, col, &mut problems);
    let entity_type = text("entity_type");
    let entity_id = text("entity_id");
    let operation = text("operation");
    let tenant_id = text("tenant_id");
    let user_id = text("user_id");
    let before_text = text("before");
    let after_text = text("after");
    let created_at = match row.try_get::<DateTime<Utc>, _>("created_at") {
        Ok(t) => Some(t),
        Err(e) => {
            problems.push(format!("column `created_at` cannot be read: {e}"));
            None
        }
    };
    let columns = TextColumns {
        entity_type,
        entity_id,
        operation,
        tenant_id,
        user_id,
        before: before_text,
        after: after_text,
        created_at,
    };
    Ok(decode_text(id, txid, columns, problems))
}

/// A change-log row's columns as read from PostgreSQL, row images still as text.
#[derive(Debug, Clone, Default)]
pub struct TextColumns {
    pub entity_type: Option<String>,
    pub entity_id: Option<String>,
    pub operation: Option<String>,
    pub tenant_id: Option<String>,
    pub user_id: Option<String>,
    pub before: Option<String>,
    pub after: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
}

/// Decodes a row from its text columns (what [`decode`] does once the columns are read):
/// never fails; `problems` already found reading the columns make the row a poison item.
/// Public for the fuzz targets.
pub fn decode_text(
    id: i64,
    txid: i64,
    columns: TextColumns,
    mut problems: Vec<String>,
) -> SourceItem {
    let cursor = Cursor::new(id);
    let before = json_cell("before", columns.before, &mut problems);
    let after = json_cell("after", columns.after, &mut problems);

    let fields = Fields {
        id,
        txid,
        entity_type: columns.entity_type,
        entity_id: columns.entity_id,
        operation: columns.operation,
        tenant_id: columns.tenant_id,
        user_id: columns.user_id,
        before,
        after,
        created_at: columns.created_at,
    };
    fields.finish(cursor, &problems)
}

/// A change the WAL stream gave, with its row images as JSON text (see [`decode_stream`]).
pub(crate) struct StreamChange<'a> {
    pub id: i64,
    pub txid: i64,
    pub entity_type: &'a str,
    pub id_column: &'a str,
    pub tenant_column: Option<&'a str>,
    pub operation: &'a str,
    /// The tenant and user of an `observers` logical message earlier in the transaction.
    pub tenant: Option<&'a str>,
    pub user: Option<&'a str>,
    pub before: Option<String>,
    pub after: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Decodes a change the WAL stream gave into what the change log's row of it would decode to:
/// the entity id is the id column's value in the row image (`after`, else `before`) as `->>`
/// reads it (`''` when missing), the tenant the tenant column's value, else the logical
/// message's.
pub(crate) fn decode_stream(change: StreamChange<'_>) -> SourceItem {
    let mut problems = Vec::new();
    let before = json_cell("before", change.before, &mut problems);
    let after = json_cell("after", change.after, &mut problems);
    let field = |column: &str| -> Option<String> {
        let image = after.as_ref().or(before.as_ref())?;
        let Image::Json(Value::Object(row)) = image else {
            return None;
        };
        match row.get(column)? {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    };
    let entity_id = field(change.id_column).unwrap_or_default();
    let tenant_id = change
        .tenant_column
        .and_then(field)
        .or_else(|| change.tenant.map(str::to_owned));
    let fields = Fields {
        id: change.id,
        txid: change.txid,
        entity_type: Some(change.entity_type.to_owned()),
        entity_id: Some(entity_id),
        operation: Some(change.operation.to_owned()),
        tenant_id,
        user_id: change.user.map(str::to_owned),
        before,
        after,
        created_at: Some(change.created_at),
    };
    fields.finish(Cursor::new(change.id), &problems)
}

/// A text column, or (when it is not valid UTF-8, which a `SQL_ASCII` database lets through) its
/// bytes decoded lossily with the problem recorded.
fn text_cell(row: &PgRow, col: &str, problems: &mut Vec<String>) -> Option<String> {
    match row.try_get::<Option<String>, _>(col) {
        Ok(v) => v,
        Err(e) => {
            problems.push(format!("column `{col}` cannot be read as text: {e}"));
            row.try_get_unchecked::<Option<Vec<u8>>, _>(col)
                .ok()
                .flatten()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        }
    }
}

/// A row image: parsed JSON, or the raw text (kept whole for the DLQ) when it does not parse.
enum Image {
    Json(Value),
    Raw(String),
}

fn json_cell(col: &str, text: Option<String>, problems: &mut Vec<String>) -> Option<Image> {
    let text = text?;
    match serde_json::from_str::<Value>(&text) {
        Ok(v) => Some(Image::Json(v)),
        Err(e) => {
            problems.push(format!(
                "column `{col}` holds JSON Observers cannot parse ({e}); the raw text is kept"
            ));
            Some(Image::Raw(text))
        }
    }
}

impl Image {
    fn into_value(self) -> Value {
        match self {
            Image::Json(v) => v,
            Image::Raw(s) => Value::String(s),
        }
    }
}

struct Fields {
    id: i64,
    txid: i64,
    entity_type: Option<String>,
    entity_id: Option<String>,
    operation: Option<String>,
    tenant_id: Option<String>,
    user_id: Option<String>,
    before: Option<Image>,
    after: Option<Image>,
    created_at: Option<DateTime<Utc>>,
}

impl Fields {
    /// The event, or a poison item when reading the columns found `problems`.
    fn finish(self, cursor: Cursor, problems: &[String]) -> SourceItem {
        if problems.is_empty() {
            self.into_item(cursor)
        } else {
            self.poison(cursor, problems.join("; "))
        }
    }

    /// Called only when every column decoded.
    fn into_item(self, cursor: Cursor) -> SourceItem {
        let kind = match self.operation.as_deref().unwrap_or("").parse::<EventKind>() {
            Ok(k) => k,
            Err(error) => return self.poison(cursor, error),
        };
        let shape_error = match kind {
            EventKind::Insert if self.after.is_none() => Some("insert without `after`"),
            EventKind::Update if self.after.is_none() => Some("update without `after`"),
            EventKind::Delete if self.before.is_none() => Some("delete without `before`"),
            _ => None,
        };
        if let Some(error) = shape_error {
            return self.poison(cursor, error.to_owned());
        }
        if self.entity_type.is_none() || self.entity_id.is_none() {
            // NOT NULL in the schema; a hand-altered table could still deliver a null.
            return self.poison(cursor, "entity_type or entity_id is null".into());
        }
        let mut event = EntityEvent::new(
            self.id,
            self.entity_type.unwrap_or_default(),
            self.entity_id.unwrap_or_default(),
            kind,
            self.before.map(Image::into_value),
            self.after.map(Image::into_value),
        )
        .with_cursor(cursor);
        event.txid = u64::try_from(self.txid).unwrap_or_default();
        // An empty id is none: the capture trigger records the session settings as they read,
        // and a setting after `RESET` reads '' (migration 033).
        event.tenant_id = self.tenant_id.filter(|t| !t.is_empty());
        event.user_id = self.user_id.filter(|u| !u.is_empty());
        if let Some(t) = self.created_at {
            event.timestamp = t;
        }
        SourceItem::Event(event)
    }

    fn poison(self, cursor: Cursor, error: String) -> SourceItem {
        let mut raw = Map::new();
        raw.insert("id".into(), self.id.into());
        raw.insert("txid".into(), self.txid.into());
        let mut put = |k: &str, v: Option<Value>| {
            raw.insert(k.into(), v.unwrap_or(Value::Null));
        };
        put("entity_type", self.entity_type.map(Value::String));
        put("entity_id", self.entity_id.map(Value::String));
        put("operation", self.operation.map(Value::String));
        put("tenant_id", self.tenant_id.map(Value::String));
        put("user_id", self.user_id.map(Value::String));
        put("before", self.before.map(Image::into_value));
        put("after", self.after.map(Image::into_value));
        put(
            "created_at",
            self.created_at.map(|t| Value::String(t.to_rfc3339())),
        );
        SourceItem::Poison {
            cursor,
            raw: Value::Object(raw),
            error,
        }
    }
}
