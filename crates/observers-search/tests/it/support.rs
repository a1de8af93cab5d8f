//! Shared test plumbing: a generated data set and polling with deadlines.

use chrono::{DateTime, TimeZone, Utc};
use observers_core::stores::search::IndexedEvent;
use observers_core::{EntityEvent, EventKind};
use serde_json::json;

/// Polls a condition with a deadline (shared by every store crate's tests).
pub use observers_core::testkit::eventually;

pub const ENTITIES: [&str; 3] = ["Order", "User", "Invoice"];

pub fn at(minutes: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::minutes(minutes)
}

/// Event `i` of the generated set: entity types, kinds, tenants and statuses cycle with
/// different periods; every 7th failed with a gateway timeout; pairs share a timestamp.
pub fn generated(i: i64) -> IndexedEvent {
    let entity = ENTITIES[usize::try_from(i % 3).unwrap()];
    let kind = EventKind::ALL[usize::try_from(i % 4 % 3).unwrap()];
    let status =
        ["paid", "pending", "refunded", "shipped", "cancelled"][usize::try_from(i % 5).unwrap()];
    let mut e = IndexedEvent::from_event(&EntityEvent::new(
        i,
        entity,
        format!("{}", i % 40),
        kind,
        None,
        Some(
            json!({"email": format!("customer{i}@example.com"), "status": status, "total": i * 3}),
        ),
    ));
    e.timestamp = at(i / 2);
    e.tenant_id = match i % 3 {
        0 => Some("acme".into()),
        1 => Some("globex".into()),
        _ => None,
    };
    e.matched_observers = vec![format!("notify-{}", entity.to_lowercase())];
    if i % 7 == 0 {
        e.failed_actions = vec![format!("notify-{}:webhook", entity.to_lowercase())];
        e.errors = vec![format!(
            "notify-{}: [OBS-WEBHOOK-5XX] Gateway Timeout from hooks.example.com",
            entity.to_lowercase()
        )];
    } else {
        e.successful_actions = vec![format!("notify-{}:webhook", entity.to_lowercase())];
    }
    e.duration_ms = u64::try_from(i % 50).unwrap();
    e
}

pub fn generated_set(n: i64) -> Vec<IndexedEvent> {
    (1..=n).map(generated).collect()
}
