//! Group `condition`: evaluating a compiled CEL condition against a prepared context, and
//! building that context, against the same work written by hand over `serde_json::Value`.

use std::hint::black_box;

use criterion::Criterion;
use observers_core::condition::{Condition, ConditionContext, Variables};
use serde_json::Value;

use crate::{CONDITION, order_event};

/// The condition as a programmer would write it without a condition language.
fn handwritten(row: &Value) -> bool {
    row["total"].as_f64().is_some_and(|total| total > 100.0) && row["status"] == "paid"
}

pub fn bench(c: &mut Criterion) {
    let event = order_event();
    let condition = Condition::compile(CONDITION).expect("the benchmark condition compiles");
    let ctx = ConditionContext::new(&event);
    let row = event.after.clone().expect("the event has an after row");
    assert!(condition.evaluate(&ctx).expect("the condition evaluates"));
    assert!(handwritten(&row));

    let mut group = c.benchmark_group("condition");
    group.bench_function("evaluate", |b| {
        b.iter(|| condition.evaluate(black_box(&ctx)));
    });
    group.bench_function("evaluate_baseline_serde_json", |b| {
        b.iter(|| handwritten(black_box(&row)));
    });
    // Built once per event and shared by every observer's condition; the baseline is a deep copy
    // of the row, the least any owned context must do.
    group.bench_function("context_new", |b| {
        b.iter(|| ConditionContext::new(black_box(&event)));
    });
    // What the executor builds: only the variables its conditions read (here `total` and
    // `status`), against the same baseline.
    let variables = Variables::of([&condition]);
    assert!(
        condition
            .evaluate(&ConditionContext::for_variables(&event, &variables))
            .expect("the condition evaluates")
    );
    group.bench_function("context_for_variables", |b| {
        b.iter(|| ConditionContext::for_variables(black_box(&event), &variables));
    });
    group.bench_function("context_new_baseline_clone_row", |b| {
        b.iter(|| black_box(&event).after.clone());
    });
    group.finish();
}
