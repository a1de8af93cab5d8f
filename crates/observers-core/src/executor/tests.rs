//! Executor unit tests with in-process actions: dedup, queued mode, reload, condition errors.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;

use super::*;
use crate::actions::{Action, ActionResult};
use crate::clock::ManualClock;
use crate::condition::Condition;
use crate::event::EventKind;
use crate::retry::RetryPolicy;
use crate::stores::dedup::MemoryDedupStore;
use crate::stores::jobs::{JobQueue, MemoryJobQueue};
use crate::telemetry::CountingTelemetry;

#[derive(Default)]
struct Counter(AtomicUsize);

#[async_trait]
impl Action for Counter {
    fn type_name(&self) -> &'static str {
        "count"
    }

    async fn execute(&self, _inv: &Invocation<'_>) -> Result<ActionResult> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(ActionResult::default())
    }
}

fn set_with(counter: &Arc<Counter>, mode: ActionMode, condition: Option<&str>) -> ObserverSet {
    let mut o = CompiledObserver::new("o", "Order", EventKind::ALL.to_vec())
        .with_action(ActionSlot::new(counter.clone(), "count").with_mode(mode));
    if let Some(c) = condition {
        o = o.with_condition(Condition::compile(c).unwrap());
    }
    ObserverSet::new(vec![o], RetryPolicy::none(), Duration::from_secs(1))
}

fn order(id: i64, total: i64) -> EntityEvent {
    EntityEvent::new(
        id,
        "Order",
        id.to_string(),
        EventKind::Insert,
        None,
        Some(json!({"total": total})),
    )
}

#[tokio::test]
async fn dedup_skips_a_processed_event_but_not_a_new_one() {
    let counter = Arc::new(Counter::default());
    let telemetry = CountingTelemetry::new();
    let exec = ObserverExecutor::builder(set_with(&counter, ActionMode::Inline, None))
        .telemetry(telemetry.clone())
        .dedup(Dedup {
            store: Arc::new(MemoryDedupStore::new(100, Arc::new(ManualClock::new()))),
            window: Duration::from_secs(60),
            namespace: "l".into(),
        })
        .build();
    assert!(!exec.process(&order(1, 5)).await.unwrap().deduplicated);
    assert!(exec.process(&order(1, 5)).await.unwrap().deduplicated);
    assert!(!exec.process(&order(2, 5)).await.unwrap().deduplicated);
    assert_eq!(counter.0.load(Ordering::SeqCst), 2);
    assert_eq!(telemetry.count("event_deduplicated"), 1);
}

#[tokio::test]
async fn queued_actions_are_enqueued_once_with_the_idempotency_key() {
    let counter = Arc::new(Counter::default());
    let jobs = Arc::new(MemoryJobQueue::new());
    let exec = ObserverExecutor::builder(set_with(&counter, ActionMode::Queued, None))
        .jobs(jobs.clone())
        .build();
    let s = exec.process(&order(9, 5)).await.unwrap();
    assert_eq!(s.actions[0].outcome, ActionOutcome::Queued);
    exec.process(&order(9, 5)).await.unwrap();
    assert_eq!(
        counter.0.load(Ordering::SeqCst),
        0,
        "queued, not run inline"
    );
    let listed = jobs.list(None, 10).await.unwrap();
    assert_eq!(
        listed.len(),
        1,
        "a redelivered event enqueues nothing twice"
    );
    assert_eq!(listed[0].unique_key.as_deref(), Some("9:o:0"));
    assert_eq!(listed[0].payload["event"]["id"], 9);
}

#[tokio::test]
async fn reload_swaps_observers() {
    let counter = Arc::new(Counter::default());
    let exec =
        ObserverExecutor::builder(set_with(&counter, ActionMode::Inline, Some("total > 10")))
            .build();
    assert!(exec.process(&order(1, 5)).await.unwrap().matched.is_empty());
    exec.reload(set_with(&counter, ActionMode::Inline, Some("total > 1")));
    assert_eq!(exec.process(&order(2, 5)).await.unwrap().matched, ["o"]);
}

#[tokio::test]
async fn condition_errors_skip_the_observer_and_are_reported() {
    let counter = Arc::new(Counter::default());
    let telemetry = CountingTelemetry::new();
    let exec = ObserverExecutor::builder(set_with(
        &counter,
        ActionMode::Inline,
        Some("missing_column > 1"),
    ))
    .telemetry(telemetry.clone())
    .build();
    let s = exec.process(&order(1, 5)).await.unwrap();
    assert!(s.matched.is_empty());
    assert_eq!(telemetry.count("condition_failed"), 1);
}

#[tokio::test]
async fn retry_action_reruns_one_action_without_a_new_dlq_item() {
    let counter = Arc::new(Counter::default());
    let exec = ObserverExecutor::builder(set_with(&counter, ActionMode::Inline, None)).build();
    let report = exec.retry_action(&order(1, 5), "o", 0).await.unwrap();
    assert_eq!(report.outcome, ActionOutcome::Success);
    assert!(exec.retry_action(&order(1, 5), "gone", 0).await.is_err());
    assert!(exec.retry_action(&order(1, 5), "o", 3).await.is_err());
    assert_eq!(exec.dlq().count(None).await.unwrap(), 0);
}

#[derive(Default)]
struct Sink(std::sync::Mutex<Vec<(i64, Vec<String>, usize)>>);

impl SummarySink for Sink {
    fn accept(&self, event: &EntityEvent, summary: &ExecutionSummary) {
        self.0
            .lock()
            .unwrap()
            .push((event.id, summary.matched.clone(), summary.actions.len()));
    }
}

#[tokio::test]
async fn the_summary_sink_sees_every_processed_event_but_no_duplicate() {
    let counter = Arc::new(Counter::default());
    let sink = Arc::new(Sink::default());
    let exec = ObserverExecutor::builder(set_with(&counter, ActionMode::Inline, Some("total > 3")))
        .summaries(sink.clone())
        .dedup(Dedup {
            store: Arc::new(MemoryDedupStore::new(100, Arc::new(ManualClock::new()))),
            window: Duration::from_secs(60),
            namespace: "l".into(),
        })
        .build();
    exec.process(&order(1, 5)).await.unwrap();
    exec.process(&order(1, 5)).await.unwrap();
    exec.process(&order(2, 1)).await.unwrap();
    assert_eq!(
        *sink.0.lock().unwrap(),
        vec![(1, vec!["o".to_owned()], 1), (2, vec![], 0)],
        "unmatched events are reported too; the duplicate is not"
    );
}

#[tokio::test]
async fn time_bucketed_dedup_keys_drop_repeats_within_a_bucket() {
    let counter = Arc::new(Counter::default());
    let exec = ObserverExecutor::builder(set_with(&counter, ActionMode::Inline, None))
        .dedup_key(DedupKey::TimeBucket(Duration::from_secs(60)))
        .dedup(Dedup {
            store: Arc::new(MemoryDedupStore::new(100, Arc::new(ManualClock::new()))),
            window: Duration::from_secs(300),
            namespace: "l".into(),
        })
        .build();
    let at = |id: i64, entity: &str, secs: i64| {
        let mut e = order(id, 5);
        e.entity_id = entity.into();
        e.timestamp = chrono::DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap();
        e
    };
    // 1_800_000_000 is a multiple of 60: seconds 0..59 share a bucket.
    assert!(!exec.process(&at(1, "a", 0)).await.unwrap().deduplicated);
    assert!(
        exec.process(&at(2, "a", 59)).await.unwrap().deduplicated,
        "same bucket"
    );
    assert!(
        !exec.process(&at(3, "b", 59)).await.unwrap().deduplicated,
        "other entity"
    );
    assert!(
        !exec.process(&at(4, "a", 60)).await.unwrap().deduplicated,
        "next bucket"
    );
    assert_eq!(counter.0.load(Ordering::SeqCst), 3);
    assert_eq!(
        DedupKey::EventId.key("l", &at(9, "a", 0)),
        "l:9",
        "the default key"
    );
}
