//! Failed actions kept for inspection and retry: the `DeadLetterQueue` trait and an in-memory one.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::lock;
use crate::error::Result;
use crate::event::EntityEvent;

/// What to dead-letter: the event, which action failed, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DlqEntry {
    pub event: EntityEvent,
    /// Empty for a poison source row (no observer ran).
    pub observer: String,
    pub action_index: usize,
    pub action_type: String,
    pub error_code: String,
    pub error: String,
    pub attempts: u32,
}

/// Lifecycle of a dead-lettered item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DlqStatus {
    Pending,
    /// Retried successfully.
    Resolved,
}

impl DlqStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DlqStatus::Pending => "pending",
            DlqStatus::Resolved => "resolved",
        }
    }
}

/// A stored entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DlqItem {
    pub id: i64,
    #[serde(flatten)]
    pub entry: DlqEntry,
    pub status: DlqStatus,
    pub retry_count: u32,
    pub created_at: DateTime<Utc>,
    pub last_retry_at: Option<DateTime<Utc>>,
}

/// Which items a listing, retry or purge applies to. Empty filter: everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DlqFilter {
    pub observer: Option<String>,
    pub entity_type: Option<String>,
    pub action_type: Option<String>,
    pub status: Option<DlqStatus>,
    pub older_than: Option<DateTime<Utc>>,
    pub ids: Option<Vec<i64>>,
    pub limit: Option<usize>,
}

impl DlqFilter {
    pub fn matches(&self, item: &DlqItem) -> bool {
        self.observer
            .as_ref()
            .is_none_or(|o| *o == item.entry.observer)
            && self
                .entity_type
                .as_ref()
                .is_none_or(|e| *e == item.entry.event.entity_type)
            && self
                .action_type
                .as_ref()
                .is_none_or(|a| *a == item.entry.action_type)
            && self.status.is_none_or(|s| s == item.status)
            && self.older_than.is_none_or(|t| item.created_at < t)
            && self.ids.as_ref().is_none_or(|ids| ids.contains(&item.id))
    }
}

/// Durable store of failed actions.
#[async_trait]
pub trait DeadLetterQueue: Send + Sync {
    async fn push(&self, entry: DlqEntry) -> Result<i64>;
    /// Matching items, oldest first.
    async fn list(&self, filter: &DlqFilter) -> Result<Vec<DlqItem>>;
    async fn get(&self, id: i64) -> Result<Option<DlqItem>>;
    /// Records a retry: resolved when it succeeded, otherwise pending with the new error.
    async fn record_retry(&self, id: i64, succeeded: bool, error: Option<&str>) -> Result<()>;
    /// Deletes matching items (oldest first, at most `limit`); returns how many.
    async fn purge(&self, filter: &DlqFilter) -> Result<u64>;
    async fn count(&self, status: Option<DlqStatus>) -> Result<u64>;
}

/// A bounded in-memory DLQ: when full, the oldest resolved item goes first, then the oldest.
#[derive(Debug)]
pub struct MemoryDeadLetterQueue {
    inner: Mutex<(i64, BTreeMap<i64, DlqItem>)>,
    max_items: usize,
}

impl Default for MemoryDeadLetterQueue {
    fn default() -> Self {
        Self::new(100_000)
    }
}

impl MemoryDeadLetterQueue {
    pub fn new(max_items: usize) -> Self {
        Self {
            inner: Mutex::new((0, BTreeMap::new())),
            max_items: max_items.max(1),
        }
    }
}

#[async_trait]
impl DeadLetterQueue for MemoryDeadLetterQueue {
    async fn push(&self, entry: DlqEntry) -> Result<i64> {
        let mut guard = lock(&self.inner);
        let (next, items) = &mut *guard;
        *next += 1;
        let id = *next;
        if items.len() >= self.max_items {
            let victim = items
                .values()
                .find(|i| i.status == DlqStatus::Resolved)
                .or_else(|| items.values().next())
                .map(|i| i.id);
            if let Some(v) = victim {
                items.remove(&v);
            }
        }
        items.insert(
            id,
            DlqItem {
                id,
                entry,
                status: DlqStatus::Pending,
                retry_count: 0,
                created_at: Utc::now(),
                last_retry_at: None,
            },
        );
        Ok(id)
    }

    async fn list(&self, filter: &DlqFilter) -> Result<Vec<DlqItem>> {
        let guard = lock(&self.inner);
        Ok(guard
            .1
            .values()
            .filter(|i| filter.matches(i))
            .take(filter.limit.unwrap_or(usize::MAX))
            .cloned()
            .collect())
    }

    async fn get(&self, id: i64) -> Result<Option<DlqItem>> {
        Ok(lock(&self.inner).1.get(&id).cloned())
    }

    async fn record_retry(&self, id: i64, succeeded: bool, error: Option<&str>) -> Result<()> {
        if let Some(item) = lock(&self.inner).1.get_mut(&id) {
            item.retry_count += 1;
            item.last_retry_at = Some(Utc::now());
            if succeeded {
                item.status = DlqStatus::Resolved;
            } else if let Some(e) = error {
                e.clone_into(&mut item.entry.error);
            }
        }
        Ok(())
    }

    async fn purge(&self, filter: &DlqFilter) -> Result<u64> {
        let mut guard = lock(&self.inner);
        // Oldest first, at most `limit`, as the PostgreSQL queue does.
        let victims: Vec<i64> = guard
            .1
            .values()
            .filter(|i| filter.matches(i))
            .take(filter.limit.unwrap_or(usize::MAX))
            .map(|i| i.id)
            .collect();
        for id in &victims {
            guard.1.remove(id);
        }
        Ok(victims.len() as u64)
    }

    async fn count(&self, status: Option<DlqStatus>) -> Result<u64> {
        let guard = lock(&self.inner);
        Ok(guard
            .1
            .values()
            .filter(|i| status.is_none_or(|s| s == i.status))
            .count() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;

    fn entry(observer: &str) -> DlqEntry {
        DlqEntry {
            event: EntityEvent::new(1, "Order", "1", EventKind::Insert, None, None),
            observer: observer.into(),
            action_index: 0,
            action_type: "webhook".into(),
            error_code: "OBS-WEBHOOK-5XX".into(),
            error: "502".into(),
            attempts: 3,
        }
    }

    #[tokio::test]
    async fn push_filter_retry_purge() {
        let q = MemoryDeadLetterQueue::new(10);
        let a = q.push(entry("a")).await.unwrap();
        let b = q.push(entry("b")).await.unwrap();
        let only_a = DlqFilter {
            observer: Some("a".into()),
            ..DlqFilter::default()
        };
        assert_eq!(
            q.list(&only_a)
                .await
                .unwrap()
                .iter()
                .map(|i| i.id)
                .collect::<Vec<_>>(),
            [a]
        );
        q.record_retry(b, true, None).await.unwrap();
        assert_eq!(q.count(Some(DlqStatus::Pending)).await.unwrap(), 1);
        assert_eq!(q.get(b).await.unwrap().unwrap().retry_count, 1);
        let resolved = DlqFilter {
            status: Some(DlqStatus::Resolved),
            ..DlqFilter::default()
        };
        assert_eq!(q.purge(&resolved).await.unwrap(), 1);
        assert_eq!(q.count(None).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn purge_honours_the_limit_oldest_first() {
        let q = MemoryDeadLetterQueue::new(10);
        let a = q.push(entry("a")).await.unwrap();
        let b = q.push(entry("b")).await.unwrap();
        let one = DlqFilter {
            limit: Some(1),
            ..DlqFilter::default()
        };
        assert_eq!(q.purge(&one).await.unwrap(), 1);
        assert!(q.get(a).await.unwrap().is_none());
        assert!(q.get(b).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn bounded_evicts_resolved_first() {
        let q = MemoryDeadLetterQueue::new(2);
        let a = q.push(entry("a")).await.unwrap();
        let b = q.push(entry("b")).await.unwrap();
        q.record_retry(b, true, None).await.unwrap();
        let c = q.push(entry("c")).await.unwrap();
        let ids: Vec<_> = q
            .list(&DlqFilter::default())
            .await
            .unwrap()
            .iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(ids, [a, c]);
    }
}
