//! Criterion benchmarks live in `benches/`, instruction-count measurements in `examples/`;
//! this library holds what both set up: the one-observer executor of the metrics benchmarks.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use observers_core::actions::{Action, ActionResult, Invocation};
use observers_core::condition::Condition;
use observers_core::executor::{ActionSlot, CompiledObserver, ObserverSet};
use observers_core::retry::RetryPolicy;
use observers_core::telemetry::SharedTelemetry;
use observers_core::{EntityEvent, EventKind, ObserverExecutor};
use serde_json::json;

/// The one observer of [`executor`].
pub const OBSERVER: &str = "paid-orders";

/// Its condition: true for [`event`] (and for the core benchmarks' richer order event).
pub const CONDITION: &str = "total > 100 && status == 'paid'";

/// An action that does nothing, so what is measured is the executor and its telemetry.
pub struct Noop;

#[async_trait]
impl Action for Noop {
    fn type_name(&self) -> &'static str {
        "noop"
    }

    async fn execute(&self, _inv: &Invocation<'_>) -> observers_core::Result<ActionResult> {
        Ok(ActionResult::default())
    }
}

/// An order update that the executor's one observer matches.
pub fn event() -> EntityEvent {
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

/// An executor with one observer (a condition, one no-op action) reporting to `telemetry`.
///
/// # Panics
/// Never: the condition is a constant that compiles.
pub fn executor(telemetry: SharedTelemetry) -> ObserverExecutor {
    #[allow(clippy::expect_used)]
    let condition = Condition::compile(CONDITION).expect("constant condition");
    let observer = CompiledObserver::new(OBSERVER, "Order", vec![EventKind::Update])
        .with_condition(condition)
        .with_action(ActionSlot::new(Arc::new(Noop), "noop"));
    let set = ObserverSet::new(vec![observer], RetryPolicy::none(), Duration::from_secs(1));
    ObserverExecutor::builder(set).telemetry(telemetry).build()
}
