//! Group `executor`: what `ObserverExecutor::process` adds around one matching no-op action
//! (match, condition, template context, concurrency permit, timeout, report), against calling
//! that action directly. Both run on the same current-thread tokio runtime.

use std::hint::black_box;
use std::sync::Arc;

use criterion::Criterion;
use observers_benches::{Noop, OBSERVER, executor};
use observers_core::actions::{Action, Invocation, idempotency_key};
use observers_core::telemetry::NoopTelemetry;
use observers_core::template::TemplateContext;

use crate::order_event;

pub fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime starts");
    let event = order_event();
    let action: Arc<dyn Action> = Arc::new(Noop);
    let executor = executor(Arc::new(NoopTelemetry));
    let summary = runtime
        .block_on(executor.process(&event))
        .expect("the event is processed");
    assert_eq!(summary.matched, [OBSERVER]);
    assert_eq!(summary.actions.len(), 1);

    let template = TemplateContext::new(&event, OBSERVER);
    let key = idempotency_key(event.id, OBSERVER, 0);
    let invocation = Invocation {
        event: &event,
        observer: OBSERVER,
        action_index: 0,
        idempotency_key: &key,
        template: &template,
        attempt: 1,
    };

    let mut group = c.benchmark_group("executor");
    group.bench_function("process_one_noop_action", |b| {
        b.to_async(&runtime)
            .iter(|| async { executor.process(black_box(&event)).await.unwrap() });
    });
    group.bench_function("process_baseline_direct_execute", |b| {
        b.to_async(&runtime)
            .iter(|| async { action.execute(black_box(&invocation)).await.unwrap() });
    });
    group.finish();
}
