//! Where events come from: the `EventSource` trait and an in-memory source.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use super::lock;
use crate::error::Result;
use crate::event::{Cursor, EntityEvent};

/// One item read from a source: an event, or a row that could not be decoded (it goes to the
/// dead-letter queue and the cursor moves past it).
#[derive(Debug, Clone)]
pub enum SourceItem {
    Event(EntityEvent),
    Poison {
        cursor: Cursor,
        raw: serde_json::Value,
        error: String,
    },
}

impl SourceItem {
    pub fn cursor(&self) -> Cursor {
        match self {
            SourceItem::Event(e) => e.cursor(),
            SourceItem::Poison { cursor, .. } => *cursor,
        }
    }
}

/// An ordered stream of changes, read in batches after a cursor.
#[async_trait]
pub trait EventSource: Send + Sync {
    /// Up to `limit` items strictly after `after`, in cursor order. Every item returned is final:
    /// no item with a smaller cursor may appear later.
    async fn fetch(&self, after: Cursor, limit: usize) -> Result<Vec<SourceItem>>;

    /// Returns when new items may be available (`true`), or after `timeout` (`false`).
    async fn wait_for_changes(&self, timeout: Duration) -> bool;
}

/// An in-memory source: events appended with increasing cursors.
#[derive(Debug, Default)]
pub struct MemoryEventSource {
    items: Mutex<Vec<SourceItem>>,
    notify: Notify,
}

impl MemoryEventSource {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an event, assigning the next id (and txid = id); returns its cursor.
    pub fn push(&self, mut event: EntityEvent) -> Cursor {
        let cursor = {
            let mut items = lock(&self.items);
            let next = items.last().map_or(1, |i| i.cursor().id + 1);
            let cursor = Cursor::new(next);
            event = event.with_cursor(cursor);
            items.push(SourceItem::Event(event));
            cursor
        };
        self.notify.notify_waiters();
        cursor
    }

    /// Appends an undecodable row.
    pub fn push_poison(&self, raw: serde_json::Value, error: impl Into<String>) -> Cursor {
        let cursor = {
            let mut items = lock(&self.items);
            let next = items.last().map_or(1, |i| i.cursor().id + 1);
            let cursor = Cursor::new(next);
            items.push(SourceItem::Poison {
                cursor,
                raw,
                error: error.into(),
            });
            cursor
        };
        self.notify.notify_waiters();
        cursor
    }

    pub fn len(&self) -> usize {
        lock(&self.items).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl EventSource for MemoryEventSource {
    async fn fetch(&self, after: Cursor, limit: usize) -> Result<Vec<SourceItem>> {
        let items = lock(&self.items);
        let start = items.partition_point(|i| i.cursor() <= after);
        Ok(items[start..].iter().take(limit).cloned().collect())
    }

    async fn wait_for_changes(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.notify.notified())
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;

    #[tokio::test]
    async fn fetch_reads_strictly_after_the_cursor_in_order() {
        let src = MemoryEventSource::new();
        for i in 0..5 {
            src.push(EntityEvent::new(
                0,
                "T",
                i.to_string(),
                EventKind::Insert,
                None,
                None,
            ));
        }
        let first = src.fetch(Cursor::START, 2).await.unwrap();
        assert_eq!(
            first.iter().map(|i| i.cursor().id).collect::<Vec<_>>(),
            [1, 2]
        );
        let rest = src.fetch(first[1].cursor(), 10).await.unwrap();
        assert_eq!(
            rest.iter().map(|i| i.cursor().id).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        assert!(src.fetch(rest[2].cursor(), 10).await.unwrap().is_empty());
    }
}
