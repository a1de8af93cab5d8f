//! `MeteredSearchBackend`: a [`SearchBackend`] that reports every indexing request and every
//! query through core telemetry (`observer_search_indexed_total`,
//! `observer_search_index_duration_seconds`, `observer_search_queries_total`,
//! `observer_search_query_duration_seconds`). `observers run` puts it in front of the backend
//! that both the indexer and `GET /api/observers/search` use.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use observers_core::Result;
use observers_core::stores::search::{IndexedEvent, SearchBackend, SearchQuery, SearchResults};
use observers_core::telemetry::{SharedTelemetry, TelemetryEvent};

/// Wraps `inner`, labelling its telemetry with `name` (`postgres`, `elasticsearch`).
pub struct MeteredSearchBackend {
    inner: Arc<dyn SearchBackend>,
    name: String,
    telemetry: SharedTelemetry,
}

impl MeteredSearchBackend {
    pub fn new(
        inner: Arc<dyn SearchBackend>,
        name: impl Into<String>,
        telemetry: SharedTelemetry,
    ) -> Self {
        Self {
            inner,
            name: name.into(),
            telemetry,
        }
    }

    /// The backend's label in telemetry.
    pub fn name(&self) -> &str {
        &self.name
    }
}

#[async_trait]
impl SearchBackend for MeteredSearchBackend {
    async fn index(&self, events: &[IndexedEvent]) -> Result<()> {
        let started = Instant::now();
        let result = self.inner.index(events).await;
        self.telemetry.emit(&TelemetryEvent::SearchIndexed {
            backend: &self.name,
            ok: result.is_ok(),
            events: events.len(),
            duration: started.elapsed(),
        });
        result
    }

    async fn search(&self, q: &SearchQuery) -> Result<SearchResults> {
        let started = Instant::now();
        let result = self.inner.search(q).await;
        self.telemetry.emit(&TelemetryEvent::SearchQueried {
            backend: &self.name,
            duration: started.elapsed(),
        });
        result
    }

    async fn delete_older_than(&self, cutoff: DateTime<Utc>) -> Result<u64> {
        self.inner.delete_older_than(cutoff).await
    }

    async fn delete_older_than_reporting(
        &self,
        cutoff: DateTime<Utc>,
        on_batch: &mut (dyn FnMut(u64) + Send),
    ) -> Result<u64> {
        self.inner
            .delete_older_than_reporting(cutoff, on_batch)
            .await
    }

    async fn health(&self) -> Result<()> {
        self.inner.health().await
    }
}

#[cfg(test)]
mod tests {
    use observers_core::EntityEvent;
    use observers_core::EventKind;
    use observers_core::stores::search::MemorySearchBackend;
    use observers_core::telemetry::CountingTelemetry;

    use super::*;

    #[tokio::test]
    async fn every_request_and_query_is_reported() {
        let counts = CountingTelemetry::new();
        let backend = MeteredSearchBackend::new(
            Arc::new(MemorySearchBackend::new(100)),
            "memory",
            counts.clone(),
        );
        let event = EntityEvent::new(1, "Order", "1", EventKind::Insert, None, None);
        backend
            .index(&[IndexedEvent::from_event(&event)])
            .await
            .unwrap();
        let found = backend.search(&SearchQuery::new()).await.unwrap();
        assert_eq!(found.total, 1);
        assert_eq!(counts.count("search_indexed"), 1);
        assert_eq!(counts.count("search_queried"), 1);
    }
}
