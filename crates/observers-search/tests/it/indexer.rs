//! The indexer: events processed by the executor reach the backend in batches; a full buffer
//! drops (and counts) instead of holding the executor up; transient failures are retried;
//! shutdown writes what is buffered.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use observers_core::actions::{Action, ActionResult, Invocation};
use observers_core::error::Result;
use observers_core::executor::{ActionSlot, CompiledObserver};
use observers_core::retry::RetryPolicy;
use observers_core::stores::search::{
    IndexedEvent, MemorySearchBackend, SearchBackend, SearchQuery, SearchResults,
};
use observers_core::{EntityEvent, EventKind, ObserverError, ObserverExecutor, ObserverSet};
use observers_search::{EventSearchIndexer, IndexerConfig};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::support::{eventually, generated};

const DEADLINE: Duration = Duration::from_secs(10);
const NEVER: Duration = Duration::from_secs(3600);

struct Fails;

#[async_trait]
impl Action for Fails {
    fn type_name(&self) -> &'static str {
        "webhook"
    }

    async fn execute(&self, _inv: &Invocation<'_>) -> Result<ActionResult> {
        Err(ObserverError::permanent(
            "OBS-WEBHOOK-4XX",
            "404 Not Found from hooks.example.com",
        ))
    }
}

struct Works;

#[async_trait]
impl Action for Works {
    fn type_name(&self) -> &'static str {
        "email"
    }

    async fn execute(&self, _inv: &Invocation<'_>) -> Result<ActionResult> {
        Ok(ActionResult::default())
    }
}

/// Records every batch; `gate` (when set) holds writes until permits are added; the first
/// `fail_first` writes fail transiently.
struct Recording {
    inner: MemorySearchBackend,
    batches: Mutex<Vec<usize>>,
    gate: Option<Semaphore>,
    fail_first: AtomicU32,
}

impl Recording {
    fn batches(&self) -> Vec<usize> {
        self.batches.lock().unwrap().clone()
    }
}

#[async_trait]
impl SearchBackend for Recording {
    async fn index(&self, events: &[IndexedEvent]) -> Result<()> {
        if let Some(gate) = &self.gate {
            gate.acquire().await.unwrap().forget();
        }
        if self
            .fail_first
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(ObserverError::store("search", "connection reset"));
        }
        self.batches.lock().unwrap().push(events.len());
        self.inner.index(events).await
    }

    async fn search(&self, q: &SearchQuery) -> Result<SearchResults> {
        self.inner.search(q).await
    }

    async fn delete_older_than(&self, cutoff: DateTime<Utc>) -> Result<u64> {
        self.inner.delete_older_than(cutoff).await
    }

    async fn health(&self) -> Result<()> {
        Ok(())
    }
}

fn recording() -> Recording {
    Recording {
        inner: MemorySearchBackend::new(10_000),
        batches: Mutex::default(),
        gate: None,
        fail_first: AtomicU32::new(0),
    }
}

fn config(batch_size: usize, flush_interval: Duration) -> IndexerConfig {
    IndexerConfig {
        capacity: 100,
        batch_size,
        flush_interval,
        max_attempts: 3,
        retry_backoff: Duration::from_millis(5),
        writers: 1,
    }
}

#[tokio::test]
async fn processed_events_are_indexed_with_their_outcome() {
    let backend = Arc::new(recording());
    let (indexer, task) =
        EventSearchIndexer::start(backend.clone(), config(100, Duration::from_millis(50)));
    let observer = CompiledObserver::new("notify-sales", "Order", EventKind::ALL.to_vec())
        .with_action(ActionSlot::new(Arc::new(Works), "email"))
        .with_action(ActionSlot::new(Arc::new(Fails), "webhook"));
    let set = ObserverSet::new(vec![observer], RetryPolicy::none(), Duration::from_secs(1));
    let exec = ObserverExecutor::builder(set)
        .summaries(indexer.clone())
        .build();
    let event = EntityEvent::new(
        42,
        "Order",
        "42",
        EventKind::Update,
        None,
        Some(json!({"status": "paid"})),
    )
    .with_tenant("acme");
    exec.process(&event).await.unwrap();
    let other = EntityEvent::new(
        43,
        "User",
        "7",
        EventKind::Insert,
        None,
        Some(json!({"name": "Ada"})),
    );
    exec.process(&other).await.unwrap();

    eventually("both events indexed", DEADLINE, || async {
        backend.search(&SearchQuery::new()).await.unwrap().total == 2
    })
    .await;
    let r = backend
        .search(&SearchQuery::new().with_text("not found"))
        .await
        .unwrap();
    assert_eq!(r.total, 1);
    let doc = &r.results[0];
    assert_eq!(doc.event_id, 42);
    assert_eq!(doc.tenant_id.as_deref(), Some("acme"));
    assert_eq!(doc.matched_observers, vec!["notify-sales"]);
    assert_eq!(doc.successful_actions, vec!["notify-sales:email"]);
    assert_eq!(doc.failed_actions, vec!["notify-sales:webhook"]);
    assert_eq!(
        doc.errors,
        vec!["notify-sales: [OBS-WEBHOOK-4XX] 404 Not Found from hooks.example.com"]
    );
    assert_eq!(doc.data, json!({"status": "paid"}));
    let unmatched = backend
        .search(&SearchQuery::new().with_entity_type("User"))
        .await
        .unwrap();
    assert!(
        unmatched.results[0].matched_observers.is_empty(),
        "unmatched events are indexed too"
    );
    task.shutdown().await;
    let s = indexer.stats();
    assert_eq!((s.accepted, s.indexed, s.dropped, s.failed), (2, 2, 0, 0));
}

#[tokio::test]
async fn a_full_batch_is_written_without_waiting_for_the_interval() {
    let backend = Arc::new(recording());
    let (indexer, task) = EventSearchIndexer::start(backend.clone(), config(3, NEVER));
    for i in 1..=7 {
        assert!(indexer.offer(generated(i)));
    }
    eventually("two full batches", DEADLINE, || async {
        backend.batches().len() == 2
    })
    .await;
    assert_eq!(backend.batches(), vec![3, 3]);
    // The partial batch waits for the interval (an hour): only shutdown writes it.
    task.shutdown().await;
    assert_eq!(backend.batches(), vec![3, 3, 1]);
    assert_eq!(indexer.stats().indexed, 7);
}

#[tokio::test]
async fn a_partial_batch_is_written_after_the_flush_interval() {
    let backend = Arc::new(recording());
    let (indexer, task) =
        EventSearchIndexer::start(backend.clone(), config(1000, Duration::from_millis(20)));
    assert!(indexer.offer(generated(1)));
    eventually("partial batch flushed", DEADLINE, || async {
        backend.batches() == vec![1]
    })
    .await;
    task.shutdown().await;
}

#[tokio::test]
async fn a_full_buffer_drops_and_counts_instead_of_blocking() {
    let mut backend = recording();
    backend.gate = Some(Semaphore::new(0));
    let backend = Arc::new(backend);
    let mut cfg = config(10, Duration::from_millis(1));
    cfg.capacity = 5;
    let (indexer, task) = EventSearchIndexer::start(backend.clone(), cfg);
    // The writer holds at most one batch (10) blocked on the gate; the buffer holds 5 more:
    // past that, offers return at once and count drops.
    let mut offered = 0_u64;
    while indexer.stats().dropped < 10 {
        offered += 1;
        indexer.offer(generated(i64::try_from(offered).unwrap()));
        assert!(offered < 1000, "the buffer never filled");
    }
    let s = indexer.stats();
    assert_eq!(s.accepted + s.dropped, offered);
    assert!((5..=15).contains(&s.accepted), "bounded: {}", s.accepted);
    // Once the backend recovers, every accepted event is written.
    backend.gate.as_ref().unwrap().add_permits(1000);
    task.shutdown().await;
    let s = indexer.stats();
    assert_eq!(s.indexed, s.accepted);
    assert_eq!(
        backend.search(&SearchQuery::new()).await.unwrap().total,
        s.accepted
    );
}

#[tokio::test]
async fn transient_failures_are_retried_and_exhaustion_is_counted() {
    let backend = Arc::new(recording());
    backend.fail_first.store(2, Ordering::SeqCst);
    let (indexer, task) = EventSearchIndexer::start(backend.clone(), config(2, NEVER));
    indexer.offer(generated(1));
    indexer.offer(generated(2));
    eventually("written after two failures", DEADLINE, || async {
        backend.batches() == vec![2]
    })
    .await;
    // Three failures exhaust max_attempts = 3: the batch is reported failed, not retried forever.
    backend.fail_first.store(3, Ordering::SeqCst);
    indexer.offer(generated(3));
    indexer.offer(generated(4));
    eventually("failure counted", DEADLINE, || async {
        indexer.stats().failed == 2
    })
    .await;
    task.shutdown().await;
    let s = indexer.stats();
    assert_eq!((s.indexed, s.failed), (2, 2));
}

#[tokio::test]
async fn several_writers_index_everything_and_keep_one_events_writes_in_order() {
    let backend = Arc::new(recording());
    let mut cfg = config(4, Duration::from_millis(5));
    cfg.writers = 3;
    cfg.capacity = 300;
    let (indexer, task) = EventSearchIndexer::start(backend.clone(), cfg);
    for i in 1..=60 {
        assert!(indexer.offer(generated(i)));
    }
    // Event 5 re-indexed with a new outcome, several times: the last offer must win.
    for n in 1..=20 {
        let mut again = generated(5);
        again.errors = vec![format!("attempt{n}")];
        assert!(indexer.offer(again));
    }
    task.shutdown().await;
    let s = indexer.stats();
    assert_eq!((s.accepted, s.indexed, s.dropped, s.failed), (80, 80, 0, 0));
    assert!(s.batches >= 3, "batches: {}", s.batches);
    let r = backend
        .search(&SearchQuery::new().with_per_page(100))
        .await
        .unwrap();
    assert_eq!(r.total, 60);
    let five = backend
        .search(&SearchQuery::new().with_text("attempt20"))
        .await
        .unwrap();
    assert_eq!(five.results.len(), 1);
    assert_eq!(five.results[0].errors, vec!["attempt20".to_string()]);
}
