//! Group `metrics`: the cost of Prometheus metrics on the hot path. `ObserverExecutor::process`
//! on one matching no-op action with `ObserverMetrics` as its telemetry, against the same
//! executor with `NoopTelemetry`, in the same run (goal: < 1 % slower). Also the raw cost of
//! the telemetry one such event emits (`EventProcessed` + `ActionFinished`), against the no-op
//! sink, each event's share, and one histogram observation against prometheus-client's.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use criterion::{Criterion, criterion_group, criterion_main};
use observers_core::actions::{Action, ActionResult, Invocation};
use observers_core::condition::Condition;
use observers_core::executor::{ActionSlot, CompiledObserver, ObserverSet};
use observers_core::retry::RetryPolicy;
use observers_core::telemetry::{
    ActionOutcome, NoopTelemetry, SharedTelemetry, Telemetry, TelemetryEvent,
};
use observers_core::{EntityEvent, EventKind, ObserverExecutor};
use observers_metrics::ObserverMetrics;
use serde_json::json;

struct Noop;

#[async_trait]
impl Action for Noop {
    fn type_name(&self) -> &'static str {
        "noop"
    }

    async fn execute(&self, _inv: &Invocation<'_>) -> observers_core::Result<ActionResult> {
        Ok(ActionResult::default())
    }
}

fn event() -> EntityEvent {
    let before = json!({"id": 42, "status": "pending", "total": 150.5, "currency": "EUR"});
    let after = json!({"id": 42, "status": "paid", "total": 150.5, "currency": "EUR"});
    EntityEvent::new(
        42,
        "Order",
        "42",
        EventKind::Update,
        Some(before),
        Some(after),
    )
}

fn executor(telemetry: SharedTelemetry) -> ObserverExecutor {
    let observer = CompiledObserver::new("paid-orders", "Order", vec![EventKind::Update])
        .with_condition(Condition::compile("total > 100 && status == 'paid'").unwrap())
        .with_action(ActionSlot::new(Arc::new(Noop), "noop"));
    let set = ObserverSet::new(vec![observer], RetryPolicy::none(), Duration::from_secs(1));
    ObserverExecutor::builder(set).telemetry(telemetry).build()
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let ev = event();
    let metrics = Arc::new(ObserverMetrics::new());
    let off = executor(Arc::new(NoopTelemetry));
    let on = executor(metrics.clone());
    runtime.block_on(on.process(&ev)).unwrap();
    assert!(
        metrics
            .encode()
            .contains("observer_events_processed_total{entity_type=\"Order\"} 1")
    );

    let mut group = c.benchmark_group("metrics");
    // Alternate the two several times so machine noise (other builds) hits both alike.
    for round in 0..2 {
        group.bench_function(format!("process_metrics_off_{round}"), |b| {
            b.to_async(&runtime)
                .iter(|| async { off.process(black_box(&ev)).await.unwrap() });
        });
        group.bench_function(format!("process_metrics_on_{round}"), |b| {
            b.to_async(&runtime)
                .iter(|| async { on.process(black_box(&ev)).await.unwrap() });
        });
    }
    let per_event = [
        TelemetryEvent::EventProcessed {
            entity_type: "Order",
            matched: 1,
            duration: Duration::from_micros(5),
        },
        TelemetryEvent::ActionFinished {
            observer: "paid-orders",
            action_type: "noop",
            outcome: ActionOutcome::Success,
            attempts: 1,
            duration: Duration::from_micros(2),
        },
    ];
    let noop = NoopTelemetry;
    group.bench_function("emit_per_event_observer_metrics", |b| {
        b.iter(|| {
            for e in &per_event {
                metrics.emit(black_box(e));
            }
        });
    });
    group.bench_function("emit_per_event_baseline_noop", |b| {
        b.iter(|| {
            for e in &per_event {
                noop.emit(black_box(e));
            }
        });
    });
    for (i, e) in per_event.iter().enumerate() {
        group.bench_function(format!("emit_{}", e.name()), |b| {
            b.iter(|| metrics.emit(black_box(&per_event[i])));
        });
    }
    let bounds = &observers_metrics::families::LATENCY_BUCKETS;
    let ours = observers_metrics::histogram::AtomicHistogram::new(bounds);
    let theirs = prometheus_client::metrics::histogram::Histogram::new(bounds.iter().copied());
    group.bench_function("histogram_observe_atomic", |b| {
        b.iter(|| ours.observe(black_box(0.003)));
    });
    group.bench_function("histogram_observe_baseline_prometheus_client", |b| {
        b.iter(|| theirs.observe(black_box(0.003)));
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(60)
}

criterion_group! {
    name = metrics;
    config = config();
    targets = bench
}
criterion_main!(metrics);
