//! Writing into the change log from outside a capture trigger (Debezium ingest): the
//! `ChangeLogSink` trait, implemented by observers-postgres and by the in-memory source.

use async_trait::async_trait;
use serde::Serialize;

use crate::error::Result;
use crate::event::{EntityEvent, EventKind};
use crate::stores::source::MemoryEventSource;

/// One change to append, shaped like a change-log row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewChange {
    pub entity_type: String,
    pub entity_id: String,
    pub kind: EventKind,
    pub tenant_id: Option<String>,
    pub user_id: Option<String>,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    /// Columns whose value changed (updates with a `before` image only).
    pub changed: Option<Vec<String>>,
}

/// Appends changes to the change log.
#[async_trait]
pub trait ChangeLogSink: Send + Sync {
    /// Appends every change, in order, atomically: all are written or none. Returns their ids.
    async fn append(&self, changes: &[NewChange]) -> Result<Vec<i64>>;
}

#[async_trait]
impl ChangeLogSink for MemoryEventSource {
    async fn append(&self, changes: &[NewChange]) -> Result<Vec<i64>> {
        Ok(changes
            .iter()
            .map(|c| {
                let mut event = EntityEvent::new(
                    0,
                    c.entity_type.clone(),
                    c.entity_id.clone(),
                    c.kind,
                    c.before.clone(),
                    c.after.clone(),
                );
                event.tenant_id.clone_from(&c.tenant_id);
                event.user_id.clone_from(&c.user_id);
                self.push(event).id
            })
            .collect())
    }
}
