//! Group `metrics`: the cost of Prometheus metrics on the hot path. `ObserverExecutor::process`
//! on one matching no-op action with `ObserverMetrics` as its telemetry, against the same
//! executor with `NoopTelemetry`, in the same run (goal: < 1 % slower). Also the raw cost of
//! the telemetry one such event emits (`EventProcessed` + `ActionFinished`), against the no-op
//! sink, each event's share, and one (sharded) histogram observation against prometheus-client's.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use observers_benches::{event, executor};
use observers_core::ObserverExecutor;
use observers_core::telemetry::{ActionOutcome, NoopTelemetry, Telemetry, TelemetryEvent};
use observers_metrics::ObserverMetrics;

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
            failed: 0,
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
    let ours = observers_metrics::sharded::ShardedHistogram::new(bounds);
    let theirs = prometheus_client::metrics::histogram::Histogram::new(bounds.iter().copied());
    group.bench_function("histogram_observe_sharded", |b| {
        b.iter(|| ours.observe(black_box(0.003)));
    });
    group.bench_function("histogram_observe_baseline_prometheus_client", |b| {
        b.iter(|| theirs.observe(black_box(0.003)));
    });
    group.finish();
    paired(&runtime, &off, &on);
}

/// Metrics on against off in many short back-to-back pairs (order alternating), so drift in
/// the machine's load hits both halves of a pair alike; prints the median of the per-pair
/// ratios. Criterion's medians of two long runs cannot resolve a 1 % difference on a busy
/// machine; this can.
fn paired(runtime: &tokio::runtime::Runtime, off: &ObserverExecutor, on: &ObserverExecutor) {
    const PAIRS: usize = 400;
    const CALLS: u32 = 2_000;
    let ev = event();
    let time = |x: &ObserverExecutor| {
        runtime.block_on(async {
            let t = std::time::Instant::now();
            for _ in 0..CALLS {
                x.process(black_box(&ev)).await.unwrap();
            }
            t.elapsed().as_secs_f64() / f64::from(CALLS)
        })
    };
    time(off);
    time(on);
    let mut ratios: Vec<f64> = (0..PAIRS)
        .map(|i| {
            let (off_s, on_s) = if i % 2 == 0 {
                let a = time(off);
                (a, time(on))
            } else {
                let b = time(on);
                (time(off), b)
            };
            on_s / off_s
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    // Quartiles by index: PAIRS / 4, / 2 and * 3 / 4.
    let q = |quarters: usize| (ratios[(PAIRS - 1) * quarters / 4] - 1.0) * 100.0;
    println!(
        "metrics/paired_on_vs_off: {PAIRS} pairs of {CALLS} calls: median {:+.2} % (quartiles {:+.2} % / {:+.2} %)",
        q(2),
        q(1),
        q(3)
    );
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
