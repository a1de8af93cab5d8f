//! Criterion benchmarks of observers-core's hot paths. Every group measures our code next to a
//! plain-Rust baseline in the same run, so a result reads as a ratio that survives a change of
//! machine; the figures are recorded in docs/benchmarks.md.
#![allow(clippy::expect_used, clippy::unwrap_used)]

// One file per group under `core/`; there, and not beside this file, because Cargo would take
// any `.rs` file directly in `benches/` for a bench target of its own.
#[path = "core/breaker.rs"]
mod breaker;
#[path = "core/condition.rs"]
mod condition;
#[path = "core/executor.rs"]
mod executor;
#[path = "core/matcher.rs"]
mod matcher;

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use observers_core::{EntityEvent, EventKind};
use serde_json::json;

// The condition of groups `condition` and `executor`: true for `order_event`.
use observers_benches::CONDITION;

/// An `Order` update with ten columns, the shape a change-log row of a small table has.
fn order_event() -> EntityEvent {
    let before = json!({
        "id": 42,
        "customer_id": 7001,
        "status": "pending",
        "total": 150.5,
        "currency": "EUR",
        "items": 3,
        "shipping_country": "DE",
        "notes": null,
        "created_at": "2026-11-02T09:14:00Z",
        "updated_at": "2026-11-02T09:14:00Z",
    });
    let after = json!({
        "id": 42,
        "customer_id": 7001,
        "status": "paid",
        "total": 150.5,
        "currency": "EUR",
        "items": 3,
        "shipping_country": "DE",
        "notes": null,
        "created_at": "2026-11-02T09:14:00Z",
        "updated_at": "2026-11-02T09:20:31Z",
    });
    EntityEvent::new(
        42,
        "Order",
        "42",
        EventKind::Update,
        Some(before),
        Some(after),
    )
}

/// Short enough that the whole run stays around two minutes on a 2-core machine.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

criterion_group! {
    name = core;
    config = config();
    targets = condition::bench, matcher::bench, breaker::bench, executor::bench
}
criterion_main!(core);
