//! Debezium change events to change-log rows, pure (no IO): the JSON envelope
//! (`before`, `after`, `op`, `source`) as Debezium Server's HTTP sink posts it, one event or a
//! batched array, with or without the converter's `{"schema", "payload"}` wrapper.
//!
//! - `op`: `c` insert, `u` update, `d` delete, `r` (snapshot read) read (the kind
//!   `observers capture backfill` emits: observers get it only when their `events` name
//!   `read`), `t` truncate; `m` (message) is skipped, as are tombstones (`null`).
//! - Entity type: `[metrics.debezium] entities` by `schema.table` (or `db.table`), then by
//!   `table`; otherwise the table name.
//! - Entity id: the configured id column(s) (default `id`), read from `after` (from `before`
//!   for deletes); several columns are joined with `:`.
//!
//! One bad event rejects the whole request, naming the event and the problem, so nothing of a
//! malformed batch is written.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use crate::config::DebeziumConfig;
use crate::event::EventKind;
use crate::stores::changelog::NewChange;

/// How tables map to entities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebeziumMapping {
    pub entities: BTreeMap<String, String>,
    pub id_columns: BTreeMap<String, String>,
    pub default_id_column: String,
    pub tenant_column: Option<String>,
}

impl Default for DebeziumMapping {
    fn default() -> Self {
        Self::from(&DebeziumConfig::default())
    }
}

impl From<&DebeziumConfig> for DebeziumMapping {
    fn from(c: &DebeziumConfig) -> Self {
        Self {
            entities: c.entities.clone(),
            id_columns: c.id_columns.clone(),
            default_id_column: c.default_id_column.clone(),
            tenant_column: c.tenant_column.clone(),
        }
    }
}

/// Why a request was refused. `index` is the event's position in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebeziumError {
    pub index: Option<usize>,
    pub problem: String,
}

impl fmt::Display for DebeziumError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            Some(i) => write!(f, "event {i}: {}", self.problem),
            None => f.write_str(&self.problem),
        }
    }
}

impl std::error::Error for DebeziumError {}

/// What a request holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    pub changes: Vec<NewChange>,
    /// Tombstones, truncates and messages.
    pub skipped: usize,
}

/// Parses a request body.
pub fn parse(body: &[u8], mapping: &DebeziumMapping) -> Result<Parsed, DebeziumError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| DebeziumError {
        index: None,
        problem: format!("the body is not valid JSON: {e}"),
    })?;
    let (items, batched) = match value {
        Value::Array(items) => (items, true),
        other => (vec![other], false),
    };
    let mut parsed = Parsed::default();
    for (i, item) in items.into_iter().enumerate() {
        let index = batched.then_some(i);
        match parse_event(item, mapping).map_err(|problem| DebeziumError { index, problem })? {
            Some(change) => parsed.changes.push(change),
            None => parsed.skipped += 1,
        }
    }
    Ok(parsed)
}

fn parse_event(item: Value, mapping: &DebeziumMapping) -> Result<Option<NewChange>, String> {
    if crate::text::json_has_nul(&item) {
        return Err(
            "a string or key holds a NUL character (\\u0000), which PostgreSQL cannot store \
             in text or jsonb; remove it at the source"
                .into(),
        );
    }
    let mut obj = match item {
        Value::Null => return Ok(None),
        Value::Object(o) => o,
        other => {
            return Err(format!(
                "expected a Debezium change event (a JSON object), got {}",
                kind_of(&other)
            ));
        }
    };
    if obj.contains_key("payload") && obj.contains_key("schema") {
        match obj.remove("payload") {
            Some(Value::Object(p)) => obj = p,
            Some(Value::Null) | None => return Ok(None),
            Some(other) => {
                return Err(format!(
                    "`payload` must be an object, got {}",
                    kind_of(&other)
                ));
            }
        }
    }
    let Some((op, kind)) = op_of(&obj)? else {
        return Ok(None);
    };
    let (table, qualified) = table_of(&obj)?;
    let table = table.as_str();
    let lookup =
        |map: &BTreeMap<String, String>| map.get(&qualified).or_else(|| map.get(table)).cloned();
    let entity_type = lookup(&mapping.entities).unwrap_or_else(|| table.to_owned());
    if kind == EventKind::Truncate {
        return Ok(Some(truncate_change(entity_type)));
    }
    let image = |key: &str| -> Result<Option<Value>, String> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v @ Value::Object(_)) => Ok(Some(v.clone())),
            Some(other) => Err(format!(
                "`{key}` must be an object or null, got {}",
                kind_of(other)
            )),
        }
    };
    let before = image("before")?;
    let after = image("after")?;
    let row = match kind {
        EventKind::Insert | EventKind::Update | EventKind::Read => after
            .as_ref()
            .ok_or_else(|| format!("op \"{op}\" needs an `after` image"))?,
        EventKind::Delete | EventKind::Truncate => before
            .as_ref()
            .ok_or("op \"d\" needs a `before` image (set REPLICA IDENTITY on the table)")?,
    };
    let id_columns =
        lookup(&mapping.id_columns).unwrap_or_else(|| mapping.default_id_column.clone());
    let image_name = if kind == EventKind::Delete {
        "before"
    } else {
        "after"
    };
    let entity_id = entity_id(row, &id_columns, image_name, &qualified)?;
    let tenant_id = mapping
        .tenant_column
        .as_deref()
        .and_then(|c| row.get(c))
        .and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
    let changed = (kind == EventKind::Update)
        .then(|| changed_columns(before.as_ref(), after.as_ref()))
        .flatten();
    Ok(Some(NewChange {
        entity_type,
        entity_id,
        kind,
        tenant_id,
        user_id: None,
        before,
        after,
        changed,
    }))
}

/// The event's `op` and its kind; `None` for what is skipped (`m`, a logical message).
fn op_of(obj: &serde_json::Map<String, Value>) -> Result<Option<(&str, EventKind)>, String> {
    let op = match obj.get("op") {
        Some(Value::String(op)) => op.as_str(),
        Some(other) => return Err(format!("`op` must be a string, got {}", kind_of(other))),
        None => return Err("missing `op` (expected c, u, d, r or t)".into()),
    };
    let kind = match op {
        "c" => EventKind::Insert,
        "r" => EventKind::Read,
        "u" => EventKind::Update,
        "d" => EventKind::Delete,
        "t" => EventKind::Truncate,
        "m" => return Ok(None),
        other => {
            return Err(format!(
                "unknown `op` \"{other}\" (expected c, u, d, r or t; m is skipped)"
            ));
        }
    };
    Ok(Some((op, kind)))
}

/// A `TRUNCATE` of the table: the entity type alone, no key, no images.
fn truncate_change(entity_type: String) -> NewChange {
    NewChange {
        entity_type,
        entity_id: String::new(),
        kind: EventKind::Truncate,
        tenant_id: None,
        user_id: None,
        before: None,
        after: None,
        changed: None,
    }
}

/// The id column(s) of `row`, joined with `:`.
fn entity_id(row: &Value, columns: &str, image: &str, table: &str) -> Result<String, String> {
    let mut parts = Vec::new();
    for col in columns.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        match row.get(col) {
            Some(Value::String(s)) => parts.push(s.clone()),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => parts.push(v.to_string()),
            _ => {
                return Err(format!(
                    "no id column `{col}` in `{image}` of table {table}: \
                     set [metrics.debezium] id_columns for it"
                ));
            }
        }
    }
    if parts.is_empty() {
        return Err(format!("no id column configured for table {table}"));
    }
    Ok(parts.join(":"))
}

/// Columns whose value differs between the images (sorted), when both are objects.
fn changed_columns(before: Option<&Value>, after: Option<&Value>) -> Option<Vec<String>> {
    let (Some(Value::Object(b)), Some(Value::Object(a))) = (before, after) else {
        return None;
    };
    let mut cols: Vec<String> = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, _)| k.clone())
        .collect();
    cols.sort();
    Some(cols)
}

/// The table an event is about: (bare name, `schema.table` or `db.table`).
fn table_of(obj: &serde_json::Map<String, Value>) -> Result<(String, String), String> {
    let source = match obj.get("source") {
        Some(Value::Object(s)) => s,
        Some(other) => {
            return Err(format!(
                "`source` must be an object, got {}",
                kind_of(other)
            ));
        }
        None => return Err("missing `source` (it names the table)".into()),
    };
    let table = source
        .get("table")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or("missing `source.table`")?;
    let qualified = source
        .get("schema")
        .or_else(|| source.get("db"))
        .and_then(Value::as_str)
        .map_or_else(|| table.to_owned(), |s| format!("{s}.{table}"));
    Ok((table.to_owned(), qualified))
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(body: &Value) -> Result<Parsed, String> {
        parse(body.to_string().as_bytes(), &DebeziumMapping::default()).map_err(|e| e.to_string())
    }

    fn event(op: &str, before: &Value, after: &Value) -> Value {
        json!({"op": op, "before": before, "after": after,
               "source": {"schema": "public", "table": "orders"}, "ts_ms": 1})
    }

    #[test]
    fn ops_map_to_kinds_and_ids() {
        let b = json!({"id": 7, "total": 1});
        let a = json!({"id": 7, "total": 2});
        let cases = [
            ("c", Value::Null, a.clone(), EventKind::Insert),
            ("r", Value::Null, a.clone(), EventKind::Read),
            ("u", b.clone(), a.clone(), EventKind::Update),
            ("d", b.clone(), Value::Null, EventKind::Delete),
        ];
        for (op, before, after, kind) in cases {
            let p = check(&event(op, &before, &after)).unwrap();
            assert_eq!(p.changes.len(), 1, "{op}");
            let c = &p.changes[0];
            assert_eq!(
                (c.kind, c.entity_id.as_str(), c.entity_type.as_str()),
                (kind, "7", "orders"),
                "{op}"
            );
        }
        let u = check(&event("u", &b, &a)).unwrap();
        assert_eq!(u.changes[0].changed, Some(vec!["total".to_owned()]));
    }

    #[test]
    fn batches_wrappers_tombstones_and_skips() {
        let a = json!({"id": "x"});
        let body = json!([
            {"schema": {}, "payload": event("c", &Value::Null, &a)},
            null,
            {"op": "t", "source": {"table": "orders"}},
            {"op": "m", "source": {"table": "orders"}},
            event("c", &Value::Null, &a),
        ]);
        let p = check(&body).unwrap();
        assert_eq!((p.changes.len(), p.skipped), (3, 2));
        let t = &p.changes[1];
        assert_eq!(
            (t.kind, t.entity_id.as_str(), t.entity_type.as_str()),
            (EventKind::Truncate, "", "orders"),
            "a Debezium truncate is one truncate event for the table"
        );
        assert_eq!((&t.before, &t.after), (&None, &None));
    }

    /// PostgreSQL cannot store NUL in text or jsonb: such an event is refused by name (400),
    /// never accepted and then failed at the write (which would make the sender retry forever).
    #[test]
    fn a_nul_anywhere_refuses_the_event_by_index() {
        let good = event("c", &Value::Null, &json!({"id": 1}));
        for bad in [
            event("c", &Value::Null, &json!({"id": 2, "note": "a\u{0}b"})),
            event("c", &Value::Null, &json!({"id": "2\u{0}"})),
            event("c", &Value::Null, &json!({"id": 2, "k\u{0}": 1})),
        ] {
            let body = json!([good, bad]).to_string();
            let err = parse(body.as_bytes(), &DebeziumMapping::default()).unwrap_err();
            assert_eq!(err.index, Some(1), "{err}");
            assert!(err.problem.contains("NUL"), "{err}");
        }
    }

    #[test]
    fn mapping_and_composite_ids() {
        let mut m = DebeziumMapping::default();
        m.entities.insert("public.orders".into(), "Order".into());
        m.id_columns.insert("orders".into(), "region, no".into());
        m.tenant_column = Some("tenant".into());
        let body = event(
            "c",
            &Value::Null,
            &json!({"region": "eu", "no": 5, "tenant": "t1"}),
        );
        let p = parse(body.to_string().as_bytes(), &m).unwrap();
        let c = &p.changes[0];
        assert_eq!(
            (c.entity_type.as_str(), c.entity_id.as_str()),
            ("Order", "eu:5")
        );
        assert_eq!(c.tenant_id.as_deref(), Some("t1"));
    }

    #[test]
    fn malformed_input_names_the_problem() {
        let cases: [(Value, &str); 7] = [
            (json!(3), "a JSON object"),
            (json!({"before": null}), "missing `op`"),
            (
                json!({"op": "x", "source": {"table": "t"}}),
                "unknown `op` \"x\"",
            ),
            (json!({"op": "c", "after": {"id": 1}}), "missing `source`"),
            (
                json!({"op": "c", "source": {"table": "t"}}),
                "needs an `after` image",
            ),
            (
                json!({"op": "c", "source": {"table": "t"}, "after": {"x": 1}}),
                "no id column `id`",
            ),
            (
                json!([event("c", &Value::Null, &json!({"id": 1})), {"op": "d", "source": {"table": "t"}}]),
                "event 1: op \"d\" needs a `before`",
            ),
        ];
        for (body, want) in cases {
            let e = check(&body).unwrap_err();
            assert!(e.contains(want), "{body}: {e}");
        }
        let e = parse(b"{not json", &DebeziumMapping::default()).unwrap_err();
        assert!(e.to_string().contains("not valid JSON"), "{e}");
    }
}
