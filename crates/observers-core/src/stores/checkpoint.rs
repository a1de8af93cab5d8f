//! Listener progress: the `CheckpointStore` trait and an in-memory store.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::lock;
use crate::error::Result;
use crate::event::Cursor;

/// How far a listener has got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub listener_id: String,
    pub cursor: Cursor,
    pub events_processed: u64,
    pub updated_at: DateTime<Utc>,
}

impl Checkpoint {
    pub fn new(listener_id: impl Into<String>, cursor: Cursor) -> Self {
        Self {
            listener_id: listener_id.into(),
            cursor,
            events_processed: 0,
            updated_at: Utc::now(),
        }
    }
}

/// Durable listener positions.
#[async_trait]
pub trait CheckpointStore: Send + Sync {
    async fn load(&self, listener_id: &str) -> Result<Option<Checkpoint>>;

    /// Stores the position; `processed` is added to the running count.
    async fn save(&self, listener_id: &str, cursor: Cursor, processed: u64) -> Result<()>;

    /// Moves the position only if it currently is `expected` (`None`: no checkpoint yet).
    /// Returns whether it moved.
    async fn compare_and_swap(
        &self,
        listener_id: &str,
        expected: Option<Cursor>,
        new: Cursor,
    ) -> Result<bool>;

    /// Counts a failed save against the listener's checkpoint (its error streak and last
    /// error, which the next successful save clears), where the store keeps such a record. The
    /// default keeps none.
    async fn record_save_error(&self, _listener_id: &str, _error: &str) -> Result<()> {
        Ok(())
    }

    /// Returns whether a checkpoint existed.
    async fn delete(&self, listener_id: &str) -> Result<bool>;

    /// Every checkpoint, for status and retention.
    async fn list(&self) -> Result<Vec<Checkpoint>>;
}

/// Checkpoints in memory (lost at exit): for tests and library use.
#[derive(Debug, Default)]
pub struct MemoryCheckpointStore {
    map: Mutex<HashMap<String, Checkpoint>>,
}

impl MemoryCheckpointStore {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl CheckpointStore for MemoryCheckpointStore {
    async fn load(&self, listener_id: &str) -> Result<Option<Checkpoint>> {
        Ok(lock(&self.map).get(listener_id).cloned())
    }

    async fn save(&self, listener_id: &str, cursor: Cursor, processed: u64) -> Result<()> {
        let mut map = lock(&self.map);
        let cp = map
            .entry(listener_id.to_owned())
            .or_insert_with(|| Checkpoint::new(listener_id, cursor));
        cp.cursor = cursor;
        cp.events_processed += processed;
        cp.updated_at = Utc::now();
        Ok(())
    }

    async fn compare_and_swap(
        &self,
        listener_id: &str,
        expected: Option<Cursor>,
        new: Cursor,
    ) -> Result<bool> {
        let mut map = lock(&self.map);
        let current = map.get(listener_id).map(|c| c.cursor);
        if current != expected {
            return Ok(false);
        }
        let cp = map
            .entry(listener_id.to_owned())
            .or_insert_with(|| Checkpoint::new(listener_id, new));
        cp.cursor = new;
        cp.updated_at = Utc::now();
        Ok(true)
    }

    async fn delete(&self, listener_id: &str) -> Result<bool> {
        Ok(lock(&self.map).remove(listener_id).is_some())
    }

    async fn list(&self) -> Result<Vec<Checkpoint>> {
        let mut all: Vec<_> = lock(&self.map).values().cloned().collect();
        all.sort_by(|a, b| a.listener_id.cmp(&b.listener_id));
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn save_load_cas_delete() {
        let s = MemoryCheckpointStore::new();
        assert_eq!(s.load("l").await.unwrap(), None);
        assert!(s.compare_and_swap("l", None, Cursor::new(1)).await.unwrap());
        assert!(!s.compare_and_swap("l", None, Cursor::new(2)).await.unwrap());
        assert!(
            !s.compare_and_swap("l", Some(Cursor::new(9)), Cursor::new(2))
                .await
                .unwrap()
        );
        assert!(
            s.compare_and_swap("l", Some(Cursor::new(1)), Cursor::new(2))
                .await
                .unwrap()
        );
        s.save("l", Cursor::new(3), 5).await.unwrap();
        s.save("l", Cursor::new(4), 2).await.unwrap();
        let cp = s.load("l").await.unwrap().unwrap();
        assert_eq!((cp.cursor, cp.events_processed), (Cursor::new(4), 7));
        assert!(s.delete("l").await.unwrap());
        assert!(!s.delete("l").await.unwrap());
    }
}
