//! CEL conditions: `expression NUL row-json`; compile, then evaluate and explain against an
//! event whose row is the JSON (or a fixed row). An error, never a panic or stack overflow.
#![no_main]
use libfuzzer_sys::fuzz_target;
use observers_core::condition::{Condition, ConditionContext};
use observers_core::{EntityEvent, EventKind};

fuzz_target!(|data: &[u8]| {
    let (expr, row) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let expr = String::from_utf8_lossy(expr);
    let Ok(condition) = Condition::compile(&expr) else {
        return;
    };
    let row = serde_json::from_slice::<serde_json::Value>(row).unwrap_or_else(
        |_| serde_json::json!({"total": 150, "status": "paid", "a": [1, 2.5, "x"]}),
    );
    let event = EntityEvent::new(
        7,
        "order".to_owned(),
        "42".to_owned(),
        EventKind::Update,
        Some(serde_json::json!({"total": 1})),
        Some(row),
    );
    let ctx = ConditionContext::new(&event);
    let _ = condition.evaluate(&ctx);
    let _ = condition.explain(&ctx);
});
