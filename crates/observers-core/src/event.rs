//! The change event every observer reacts to, and the cursor that orders them.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What happened to the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Insert,
    Update,
    Delete,
    /// `TRUNCATE` of a captured table: one event for the entity type, with an empty entity id
    /// and no row images. Delivered only to observers whose `events` name it.
    Truncate,
    /// A row as it already was, emitted by `observers capture backfill` (or a Debezium snapshot,
    /// `op = "r"`): the row in `after`, no `before`. Delivered only to observers whose `events`
    /// name it.
    Read,
}

impl EventKind {
    /// The row kinds: what an observer receives when its `events` list is empty or absent.
    pub const ALL: [EventKind; 3] = [EventKind::Insert, EventKind::Update, EventKind::Delete];

    /// Every kind, `truncate` and `read` included.
    pub const EVERY: [EventKind; 5] = [
        EventKind::Insert,
        EventKind::Update,
        EventKind::Delete,
        EventKind::Truncate,
        EventKind::Read,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Insert => "insert",
            EventKind::Update => "update",
            EventKind::Delete => "delete",
            EventKind::Truncate => "truncate",
            EventKind::Read => "read",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "insert" | "created" | "create" | "c" => Ok(EventKind::Insert),
            "update" | "updated" | "u" => Ok(EventKind::Update),
            "delete" | "deleted" | "d" => Ok(EventKind::Delete),
            "truncate" | "truncated" | "t" => Ok(EventKind::Truncate),
            "read" | "r" | "snapshot" => Ok(EventKind::Read),
            other => Err(format!(
                "unknown event kind `{other}`; expected one of insert, update, delete, truncate, read"
            )),
        }
    }
}

/// The position of a change-log row: its id. Readers take ids in order, only up to a horizon
/// below which every id is final (docs/postgres.md, "The cursor"), so an id at or below a saved
/// cursor never becomes visible later.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub struct Cursor {
    pub id: i64,
}

impl Cursor {
    pub const START: Cursor = Cursor { id: 0 };

    pub fn new(id: i64) -> Self {
        Self { id }
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.id)
    }
}

impl FromStr for Cursor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.contains(':') {
            return Err(format!(
                "cursor `{s}` has the old TXID:ID form; a cursor is now the change-log id alone, \
                 for example 56"
            ));
        }
        match s.parse::<i64>() {
            Ok(id) if id >= 0 => Ok(Cursor { id }),
            _ => Err(format!(
                "cursor `{s}` must be a change-log id, a non-negative integer such as 56"
            )),
        }
    }
}

/// One column whose value differs between `before` and `after`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldChange {
    pub field: String,
    pub old: Value,
    pub new: Value,
}

/// A row change, as read from the change log (or built in memory).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntityEvent {
    /// The change-log id.
    pub id: i64,
    /// The writing transaction's id (0 where unknown, e.g. events built by hand).
    #[serde(default)]
    pub txid: u64,
    pub entity_type: String,
    pub entity_id: String,
    pub kind: EventKind,
    #[serde(default)]
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    pub timestamp: DateTime<Utc>,
    #[serde(default)]
    pub before: Option<Value>,
    #[serde(default)]
    pub after: Option<Value>,
    /// Field-level changes computed from `before` and `after`.
    #[serde(default)]
    pub changes: Vec<FieldChange>,
}

impl EntityEvent {
    /// Builds an event and computes its field-level changes (none for a `read`: the row did not
    /// change).
    pub fn new(
        id: i64,
        entity_type: impl Into<String>,
        entity_id: impl Into<String>,
        kind: EventKind,
        before: Option<Value>,
        after: Option<Value>,
    ) -> Self {
        let changes = if kind == EventKind::Read {
            Vec::new()
        } else {
            compute_changes(before.as_ref(), after.as_ref())
        };
        Self {
            id,
            txid: 0,
            entity_type: entity_type.into(),
            entity_id: entity_id.into(),
            kind,
            tenant_id: None,
            user_id: None,
            timestamp: Utc::now(),
            before,
            after,
            changes,
        }
    }

    #[must_use]
    pub fn with_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant_id = Some(tenant.into());
        self
    }

    #[must_use]
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user_id = Some(user.into());
        self
    }

    #[must_use]
    pub fn with_cursor(mut self, cursor: Cursor) -> Self {
        self.id = cursor.id;
        self
    }

    pub fn cursor(&self) -> Cursor {
        Cursor::new(self.id)
    }

    /// Recomputes `changes` from `before`/`after` (for events deserialized without them).
    pub fn recompute_changes(&mut self) {
        if self.kind != EventKind::Read {
            self.changes = compute_changes(self.before.as_ref(), self.after.as_ref());
        }
    }

    /// Names of the changed columns.
    pub fn changed_fields(&self) -> Vec<&str> {
        self.changes.iter().map(|c| c.field.as_str()).collect()
    }

    /// The row as it is now: `after`, or `before` for a delete.
    pub fn current_row(&self) -> Option<&Value> {
        self.after.as_ref().or(self.before.as_ref())
    }

    /// The key that orders events: same key, same sequence.
    pub fn ordering_key(&self) -> (&str, &str) {
        (&self.entity_type, &self.entity_id)
    }
}

/// Field-level difference of two JSON objects; keys in either side, sorted by name. Numbers
/// compare by value, as jsonb's do in the capture trigger's `changed` column.
pub fn compute_changes(before: Option<&Value>, after: Option<&Value>) -> Vec<FieldChange> {
    let empty = Map::new();
    let b = before.and_then(Value::as_object).unwrap_or(&empty);
    let a = after.and_then(Value::as_object).unwrap_or(&empty);
    let mut keys: Vec<&String> = b.keys().chain(a.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let old = b.get(k).cloned().unwrap_or(Value::Null);
            let new = a.get(k).cloned().unwrap_or(Value::Null);
            (!crate::numbers::same_json(&old, &new)).then(|| FieldChange {
                field: k.clone(),
                old,
                new,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changes_cover_added_removed_and_modified_fields() {
        let before = json!({"a": 1, "b": "x", "c": true});
        let after = json!({"a": 2, "b": "x", "d": null, "e": [1]});
        let changes = compute_changes(Some(&before), Some(&after));
        let fields: Vec<_> = changes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["a", "c", "e"]);
        assert_eq!(changes[0].old, json!(1));
        assert_eq!(changes[0].new, json!(2));
        assert_eq!(changes[1].new, Value::Null);
    }

    #[test]
    fn numbers_change_by_value_not_by_spelling() {
        let n = |t: &str| Value::Number(t.parse().unwrap());
        let before = json!({"a": n("100.0"), "b": n("12345678901234567.89")});
        let after = json!({"a": n("100.00"), "b": n("12345678901234567.88")});
        let changes = compute_changes(Some(&before), Some(&after));
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].field, "b");
        assert_eq!(changes[0].new.to_string(), "12345678901234567.88");
    }

    #[test]
    fn insert_changes_every_non_null_field() {
        let ev = EntityEvent::new(
            1,
            "Order",
            "1",
            EventKind::Insert,
            None,
            Some(json!({"id": 1, "n": null})),
        );
        assert_eq!(ev.changed_fields(), ["id"]);
    }

    #[test]
    fn cursor_is_the_id_and_refuses_the_old_pair() {
        assert!(Cursor::new(5) < Cursor::new(10));
        assert_eq!("10".parse::<Cursor>(), Ok(Cursor::new(10)));
        assert_eq!(Cursor::new(10).to_string(), "10");
        assert!(
            "10:1"
                .parse::<Cursor>()
                .unwrap_err()
                .contains("old TXID:ID form")
        );
        assert!("-1".parse::<Cursor>().unwrap_err().contains("non-negative"));
        assert!("x".parse::<Cursor>().is_err());
    }

    #[test]
    fn kind_parses_aliases_and_rejects_unknown() {
        assert_eq!("INSERT".parse::<EventKind>(), Ok(EventKind::Insert));
        assert_eq!("u".parse::<EventKind>(), Ok(EventKind::Update));
        assert!(
            "upsert"
                .parse::<EventKind>()
                .unwrap_err()
                .contains("insert, update, delete")
        );
    }
}
