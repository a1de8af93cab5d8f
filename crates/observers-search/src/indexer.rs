//! `EventSearchIndexer`: hands each processed event and its outcome to a search backend in
//! buffered bulk writes, off the executor's hot path.
//!
//! The executor calls [`SummarySink::accept`], which only converts the event and `try_send`s it
//! onto a bounded channel. `writers` tasks (each owning the events whose id falls to it, so that
//! the writes of one event stay in order) drain their channel into batches and write a batch
//! when it holds `batch_size` events or `flush_interval` after its first event, whichever comes
//! first; the writers' batches are written concurrently.
//! The executor is never slowed down by search: when the channel is full (the backend is down
//! or slower than the event rate), the event is dropped from the index, counted in
//! [`IndexerStats::dropped`] and logged (the first drop and every 1000th). Search is an audit
//! aid, not the delivery path: the change log and the DLQ stay the record of truth.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use observers_core::executor::{ExecutionSummary, SummarySink};
use observers_core::stores::search::{IndexedEvent, SearchBackend};
use observers_core::telemetry::ActionOutcome;
use observers_core::{EntityEvent, ObserverError};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Buffering of the indexer.
#[derive(Debug, Clone, Copy)]
pub struct IndexerConfig {
    /// Events waiting to be written; beyond this they are dropped (and counted).
    pub capacity: usize,
    /// Events per bulk write.
    pub batch_size: usize,
    /// The longest an event waits in a partial batch.
    pub flush_interval: Duration,
    /// Attempts of one batch write when the backend fails transiently.
    pub max_attempts: u32,
    /// First wait between attempts (doubles, at most 5 s).
    pub retry_backoff: Duration,
    /// Writer tasks, each with `capacity / writers` of the buffer and one write in flight
    /// (at least 1). Events are assigned by id, so one event's writes are never reordered.
    pub writers: usize,
}

impl Default for IndexerConfig {
    fn default() -> Self {
        Self {
            capacity: 10_000,
            batch_size: 500,
            flush_interval: Duration::from_millis(200),
            max_attempts: 5,
            retry_backoff: Duration::from_millis(100),
            writers: 2,
        }
    }
}

/// Counters of an indexer since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct IndexerStats {
    /// Events taken into the buffer.
    pub accepted: u64,
    /// Events not indexed because the buffer was full.
    pub dropped: u64,
    /// Events written to the backend.
    pub indexed: u64,
    /// Events whose batch the backend refused (after retries).
    pub failed: u64,
    /// Bulk writes made.
    pub batches: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    dropped: AtomicU64,
    indexed: AtomicU64,
    failed: AtomicU64,
    batches: AtomicU64,
}

/// The search document of a processed event: the change plus its outcome (seed 003's mapping:
/// matching observers, successful and failed actions as `observer:action_type`, errors as
/// `observer: [CODE] message`, processing duration).
pub fn indexed_event(event: &EntityEvent, summary: &ExecutionSummary) -> IndexedEvent {
    let mut doc = IndexedEvent::from_event(event);
    doc.matched_observers.clone_from(&summary.matched);
    for a in &summary.actions {
        let label = format!("{}:{}", a.observer, a.action_type);
        if a.succeeded() {
            doc.successful_actions.push(label);
        } else if matches!(
            a.outcome,
            ActionOutcome::DeadLettered | ActionOutcome::ShortCircuited
        ) {
            doc.failed_actions.push(label);
        }
        if let Some(error) = &a.error {
            // Error texts come from remote peers; PostgreSQL rejects NUL in text.
            doc.errors
                .push(observers_core::text::storable_owned(format!(
                    "{}: {error}",
                    a.observer
                )));
        }
    }
    // jsonb rejects `\u0000`; rows read from PostgreSQL never hold one, other sources may.
    observers_core::text::make_json_storable(&mut doc.data);
    doc.duration_ms = u64::try_from(summary.duration.as_millis()).unwrap_or(u64::MAX);
    doc
}

/// The [`SummarySink`] that feeds a [`SearchBackend`]; attach it with
/// `ExecutorBuilder::summaries`.
pub struct EventSearchIndexer {
    /// One channel per writer; an event goes to `event_id mod writers`.
    txs: Vec<mpsc::Sender<IndexedEvent>>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for EventSearchIndexer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSearchIndexer")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// The indexer's writer task; [`IndexerTask::shutdown`] writes what is buffered and stops it.
#[derive(Debug)]
pub struct IndexerTask {
    stops: Vec<oneshot::Sender<()>>,
    handles: Vec<JoinHandle<()>>,
}

impl IndexerTask {
    /// Flushes every buffered event (with retries) and ends the writer tasks.
    pub async fn shutdown(self) {
        for stop in self.stops {
            let _ = stop.send(());
        }
        for handle in self.handles {
            if let Err(e) = handle.await {
                tracing::error!(error = %e, "search indexer task failed");
            }
        }
    }
}

impl EventSearchIndexer {
    /// Starts the writer tasks on the current runtime.
    pub fn start(
        backend: Arc<dyn SearchBackend>,
        config: IndexerConfig,
    ) -> (Arc<Self>, IndexerTask) {
        let writers = config.writers.max(1);
        let per_writer = config.capacity.div_ceil(writers).max(1);
        let counters = Arc::new(Counters::default());
        let mut txs = Vec::with_capacity(writers);
        let mut task = IndexerTask {
            stops: Vec::with_capacity(writers),
            handles: Vec::with_capacity(writers),
        };
        for backend in std::iter::repeat_n(backend, writers) {
            let (tx, rx) = mpsc::channel(per_writer);
            let (stop_tx, stop_rx) = oneshot::channel();
            let writer = Writer {
                backend,
                config,
                counters: counters.clone(),
            };
            txs.push(tx);
            task.stops.push(stop_tx);
            task.handles.push(tokio::spawn(writer.run(rx, stop_rx)));
        }
        (Arc::new(Self { txs, counters }), task)
    }

    /// Queues one document (never waits); `false` when it was dropped.
    pub fn offer(&self, doc: IndexedEvent) -> bool {
        let writers = i64::try_from(self.txs.len()).unwrap_or(1);
        let slot = usize::try_from(doc.event_id.rem_euclid(writers)).unwrap_or(0);
        let Some(tx) = self.txs.get(slot) else {
            return false;
        };
        match tx.try_send(doc) {
            Ok(()) => {
                self.counters.accepted.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                let dropped = self.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped == 1 || dropped.is_multiple_of(1000) {
                    let reason = match e {
                        mpsc::error::TrySendError::Full(_) => "the indexing buffer is full",
                        mpsc::error::TrySendError::Closed(_) => "the indexer has stopped",
                    };
                    tracing::warn!(
                        dropped,
                        reason,
                        "search: event not indexed (the executor is never held up by search)"
                    );
                }
                false
            }
        }
    }

    pub fn stats(&self) -> IndexerStats {
        let c = &self.counters;
        IndexerStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            indexed: c.indexed.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
        }
    }
}

impl SummarySink for EventSearchIndexer {
    fn accept(&self, event: &EntityEvent, summary: &ExecutionSummary) {
        self.offer(indexed_event(event, summary));
    }
}

struct Writer {
    backend: Arc<dyn SearchBackend>,
    config: IndexerConfig,
    counters: Arc<Counters>,
}

impl Writer {
    async fn run(self, mut rx: mpsc::Receiver<IndexedEvent>, mut stop: oneshot::Receiver<()>) {
        let batch_size = self.config.batch_size.max(1);
        let mut batch = Vec::with_capacity(batch_size);
        let mut stopping = false;
        while !stopping {
            tokio::select! {
                item = rx.recv() => match item {
                    Some(doc) => batch.push(doc),
                    None => break,
                },
                _ = &mut stop => break,
            }
            let deadline = Instant::now() + self.config.flush_interval;
            while batch.len() < batch_size {
                tokio::select! {
                    item = rx.recv() => match item {
                        Some(doc) => batch.push(doc),
                        None => break,
                    },
                    () = tokio::time::sleep_until(deadline) => break,
                    _ = &mut stop => {
                        stopping = true;
                        break;
                    }
                }
            }
            self.flush(&mut batch).await;
        }
        // Stopping: write everything already accepted.
        rx.close();
        while let Some(doc) = rx.recv().await {
            batch.push(doc);
            if batch.len() >= batch_size {
                self.flush(&mut batch).await;
            }
        }
        self.flush(&mut batch).await;
    }

    async fn flush(&self, batch: &mut Vec<IndexedEvent>) {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        let mut delay = self.config.retry_backoff;
        let mut attempt = 1;
        let result = loop {
            match self.backend.index(batch).await {
                Ok(()) => break Ok(()),
                Err(e) if e.is_transient() && attempt < self.config.max_attempts => {
                    tracing::warn!(error = %e, attempt, events = n, "search: bulk write failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    attempt += 1;
                }
                Err(e) => break Err::<(), ObserverError>(e),
            }
        };
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => {
                self.counters.indexed.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                self.counters.failed.fetch_add(n, Ordering::Relaxed);
                tracing::error!(error = %e, events = n, attempts = attempt, "search: events not indexed");
            }
        }
        batch.clear();
    }
}
