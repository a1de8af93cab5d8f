//! The listener loop over the in-memory source: order per entity, checkpoints over the
//! completed prefix, poison rows to the DLQ, graceful stop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use observers_core::actions::{Action, ActionResult, Invocation};
use observers_core::executor::{ActionSlot, CompiledObserver};
use observers_core::listener::{Listener, ListenerConfig};
use observers_core::retry::RetryPolicy;
use observers_core::stores::checkpoint::{CheckpointStore, MemoryCheckpointStore};
use observers_core::stores::dlq::{DeadLetterQueue, DlqFilter, MemoryDeadLetterQueue};
use observers_core::stores::source::MemoryEventSource;
use observers_core::{Cursor, EntityEvent, EventKind, ObserverExecutor, ObserverSet};

use crate::support::wait_until;

/// Records (entity_id, event id) in delivery order, after a small per-entity delay.
struct Recorder(Arc<Mutex<Vec<(String, i64)>>>);

#[async_trait::async_trait]
impl Action for Recorder {
    fn type_name(&self) -> &'static str {
        "record"
    }

    async fn execute(&self, inv: &Invocation<'_>) -> observers_core::Result<ActionResult> {
        tokio::time::sleep(Duration::from_millis(inv.event.id.unsigned_abs() % 3)).await;
        self.0
            .lock()
            .unwrap()
            .push((inv.event.entity_id.clone(), inv.event.id));
        Ok(ActionResult::default())
    }
}

type Setup = (
    Arc<MemoryEventSource>,
    Arc<MemoryCheckpointStore>,
    Arc<MemoryDeadLetterQueue>,
    Arc<Mutex<Vec<(String, i64)>>>,
    Listener,
);

fn setup() -> Setup {
    let log = Arc::new(Mutex::new(Vec::new()));
    let observer = CompiledObserver::new("rec", "*", EventKind::ALL.to_vec())
        .with_action(ActionSlot::new(Arc::new(Recorder(log.clone())), "record"));
    let set = ObserverSet::new(vec![observer], RetryPolicy::none(), Duration::from_secs(5));
    let dlq = Arc::new(MemoryDeadLetterQueue::default());
    let executor = Arc::new(ObserverExecutor::builder(set).dlq(dlq.clone()).build());
    let source = Arc::new(MemoryEventSource::new());
    let checkpoints = Arc::new(MemoryCheckpointStore::new());
    let listener = Listener::new(
        source.clone(),
        checkpoints.clone(),
        executor,
        ListenerConfig {
            batch_size: 25,
            poll_interval: Duration::from_millis(50),
            max_in_flight: 8,
            ..ListenerConfig::default()
        },
    );
    (source, checkpoints, dlq, log, listener)
}

#[tokio::test]
async fn delivers_everything_in_order_per_entity_and_checkpoints() {
    let (source, checkpoints, dlq, log, listener) = setup();
    for i in 0..200 {
        source.push(EntityEvent::new(
            0,
            "Order",
            (i % 7).to_string(),
            EventKind::Update,
            None,
            None,
        ));
    }
    source.push_poison(
        serde_json::json!({"entity_type": "Order", "operation": "merge"}),
        "unknown operation `merge`",
    );
    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move { listener.run(rx).await });
    wait_until("all events delivered", Duration::from_secs(20), || {
        log.lock().unwrap().len() == 200
    })
    .await;
    // More events after the listener went idle: the wake-up delivers them.
    source.push(EntityEvent::new(
        0,
        "Order",
        "late",
        EventKind::Insert,
        None,
        None,
    ));
    wait_until("late event", Duration::from_secs(20), || {
        log.lock().unwrap().len() == 201
    })
    .await;
    tx.send(true).unwrap();
    let stats = task.await.unwrap().unwrap();
    assert_eq!(stats.cursor, Cursor::new(202));
    assert_eq!(
        checkpoints.load("default").await.unwrap().unwrap().cursor,
        Cursor::new(202)
    );
    let log = log.lock().unwrap().clone();
    for entity in 0..7 {
        let ids: Vec<i64> = log
            .iter()
            .filter(|(e, _)| *e == entity.to_string())
            .map(|(_, i)| *i)
            .collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "entity {entity} out of order"
        );
    }
    let poison = dlq.list(&DlqFilter::default()).await.unwrap();
    assert_eq!(poison.len(), 1);
    assert_eq!(poison[0].entry.error_code, "OBS-INVALID-EVENT");
    assert_eq!(poison[0].entry.event.id, 201);
}

#[tokio::test]
async fn restart_resumes_from_the_checkpoint_without_redelivery() {
    let (source, checkpoints, _dlq, log, listener) = setup();
    for i in 0..30 {
        source.push(EntityEvent::new(
            0,
            "T",
            i.to_string(),
            EventKind::Insert,
            None,
            None,
        ));
    }
    let first = listener.run_once().await.unwrap();
    assert_eq!(first.cursor, Cursor::new(25));
    let second = listener.run_once().await.unwrap();
    assert_eq!(second.cursor, Cursor::new(30));
    let third = listener.run_once().await.unwrap();
    assert_eq!(third.events, 0);
    let ids: Vec<i64> = log.lock().unwrap().iter().map(|(_, i)| *i).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), ids.len(), "nothing delivered twice");
    assert_eq!(
        checkpoints
            .load("default")
            .await
            .unwrap()
            .unwrap()
            .events_processed,
        30
    );
}

#[tokio::test]
async fn a_failing_guard_stops_reading_and_starting_events() {
    let (source, _checkpoints, _dlq, log, listener) = setup();
    for i in 0..200 {
        source.push(EntityEvent::new(
            0,
            "Order",
            i.to_string(),
            EventKind::Insert,
            None,
            None,
        ));
    }
    // The lease "runs out" after ten deliveries: events in flight finish, no new one starts.
    let seen = log.clone();
    let listener = listener.with_guard(Arc::new(move || seen.lock().unwrap().len() < 10));
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let err = listener.run(rx).await.unwrap_err();
    assert_eq!(err.code(), "OBS-FENCED", "{err}");
    let delivered = log.lock().unwrap().len();
    assert!(
        (10..10 + 8).contains(&delivered),
        "at most max_in_flight past the guard: {delivered}"
    );
}

#[tokio::test]
async fn a_guard_that_never_held_reads_nothing() {
    let (source, checkpoints, _dlq, log, listener) = setup();
    source.push(EntityEvent::new(
        0,
        "Order",
        "1",
        EventKind::Insert,
        None,
        None,
    ));
    let listener = listener.with_guard(Arc::new(|| false));
    let (_tx, rx) = tokio::sync::watch::channel(false);
    assert!(listener.run(rx).await.is_err());
    assert!(log.lock().unwrap().is_empty());
    assert_eq!(checkpoints.load("default").await.unwrap(), None);
}

/// Checkpoints whose saves fail while `failing` is set; the store records every failed save it
/// is told of, as the PostgreSQL store keeps `consecutive_errors` and `last_error`.
#[derive(Default)]
struct FlakyCheckpoints {
    inner: MemoryCheckpointStore,
    failing: std::sync::atomic::AtomicBool,
    recorded: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl CheckpointStore for FlakyCheckpoints {
    async fn load(
        &self,
        listener_id: &str,
    ) -> observers_core::Result<Option<observers_core::stores::checkpoint::Checkpoint>> {
        self.inner.load(listener_id).await
    }

    async fn save(
        &self,
        listener_id: &str,
        cursor: Cursor,
        processed: u64,
    ) -> observers_core::Result<()> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(observers_core::ObserverError::transient(
                "OBS-TEST",
                "checkpoint table locked",
            ));
        }
        self.recorded.lock().unwrap().clear();
        self.inner.save(listener_id, cursor, processed).await
    }

    async fn record_save_error(
        &self,
        _listener_id: &str,
        error: &str,
    ) -> observers_core::Result<()> {
        self.recorded.lock().unwrap().push(error.to_owned());
        Ok(())
    }

    async fn compare_and_swap(
        &self,
        listener_id: &str,
        expected: Option<Cursor>,
        new: Cursor,
    ) -> observers_core::Result<bool> {
        self.inner
            .compare_and_swap(listener_id, expected, new)
            .await
    }

    async fn delete(&self, listener_id: &str) -> observers_core::Result<bool> {
        self.inner.delete(listener_id).await
    }

    async fn list(
        &self,
    ) -> observers_core::Result<Vec<observers_core::stores::checkpoint::Checkpoint>> {
        self.inner.list().await
    }
}

#[tokio::test]
async fn a_failed_save_is_reported_and_recorded_and_the_next_save_clears_it() {
    let counts = observers_core::telemetry::CountingTelemetry::new();
    let observer = CompiledObserver::new("rec", "*", EventKind::ALL.to_vec()).with_action(
        ActionSlot::new(Arc::new(Recorder(Arc::default())), "record"),
    );
    let set = ObserverSet::new(vec![observer], RetryPolicy::none(), Duration::from_secs(5));
    let executor = Arc::new(
        ObserverExecutor::builder(set)
            .telemetry(counts.clone())
            .build(),
    );
    let source = Arc::new(MemoryEventSource::new());
    let checkpoints = Arc::new(FlakyCheckpoints::default());
    let listener = Listener::new(
        source.clone(),
        checkpoints.clone(),
        executor,
        ListenerConfig::default(),
    );
    source.push(EntityEvent::new(0, "T", "1", EventKind::Insert, None, None));

    checkpoints
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    listener.run_once().await.unwrap();
    listener.run_once().await.unwrap();
    assert_eq!(counts.count("checkpoint_save_failed"), 2);
    assert_eq!(counts.count("checkpoint_saved"), 0);
    let recorded = checkpoints.recorded.lock().unwrap().clone();
    assert_eq!(recorded.len(), 2, "{recorded:?}");
    assert!(
        recorded[0].contains("checkpoint table locked"),
        "{recorded:?}"
    );
    assert_eq!(checkpoints.load("default").await.unwrap(), None);

    checkpoints
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    listener.run_once().await.unwrap();
    assert_eq!(counts.count("checkpoint_saved"), 1);
    assert!(checkpoints.recorded.lock().unwrap().is_empty());
    assert!(checkpoints.load("default").await.unwrap().is_some());
}
