//! Tests of `PostgresDeadLetterQueue`: round trip of the event, every filter field, retries,
//! counts and purges.

use chrono::{Duration, Utc};
use observers_core::stores::dlq::{DeadLetterQueue, DlqEntry, DlqFilter, DlqStatus};
use observers_core::{Cursor, EntityEvent, EventKind};
use observers_postgres::PostgresDeadLetterQueue;
use serde_json::json;
use sqlx::PgPool;

fn entry(observer: &str, entity: &str, action: &str) -> DlqEntry {
    DlqEntry {
        event: EntityEvent::new(
            7,
            entity,
            "42",
            EventKind::Update,
            Some(json!({"id": 42, "status": "new"})),
            Some(json!({"id": 42, "status": "paid"})),
        )
        .with_cursor(Cursor::new(7))
        .with_tenant("acme")
        .with_user("u1"),
        observer: observer.into(),
        action_index: 2,
        action_type: action.into(),
        error_code: "OBS-WEBHOOK-5XX".into(),
        error: "502 Bad Gateway".into(),
        attempts: 5,
    }
}

/// Pushes the fixture set: ids in push order.
async fn fill(q: &PostgresDeadLetterQueue) -> [i64; 4] {
    [
        q.push(entry("notify", "Order", "webhook")).await.unwrap(),
        q.push(entry("notify", "User", "email")).await.unwrap(),
        q.push(entry("audit", "Order", "email")).await.unwrap(),
        q.push(entry("audit", "User", "webhook")).await.unwrap(),
    ]
}

async fn ids(q: &PostgresDeadLetterQueue, f: &DlqFilter) -> Vec<i64> {
    q.list(f).await.unwrap().iter().map(|i| i.id).collect()
}

async fn age(pool: &PgPool, id: i64, days: i64) {
    sqlx::query("UPDATE observer_dlq_items SET created_at = now() - make_interval(days => $2) WHERE id = $1")
        .bind(id)
        .bind(i32::try_from(days).unwrap())
        .execute(pool)
        .await
        .unwrap();
}

#[sqlx::test(migrations = "../../migrations")]
async fn push_and_get_round_trip_the_entry(pool: PgPool) {
    let q = PostgresDeadLetterQueue::new(pool.clone());
    let e = entry("notify", "Order", "webhook");
    let id = q.push(e.clone()).await.unwrap();

    let item = q.get(id).await.unwrap().unwrap();
    assert_eq!(item.entry, e);
    assert_eq!(item.status, DlqStatus::Pending);
    assert_eq!((item.retry_count, item.last_retry_at), (0, None));
    assert!((Utc::now() - item.created_at).num_seconds().abs() < 60);
    assert_eq!(q.get(id + 1000).await.unwrap(), None);

    let (entity_type, entity_id, event_id): (String, String, i64) = sqlx::query_as(
        "SELECT entity_type, entity_id, event_id FROM observer_dlq_items WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (entity_type.as_str(), entity_id.as_str(), event_id),
        ("Order", "42", 7)
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn list_honours_every_filter_field(pool: PgPool) {
    let q = PostgresDeadLetterQueue::new(pool.clone());
    let [a, b, c, d] = fill(&q).await;
    q.record_retry(b, true, None).await.unwrap();
    age(&pool, a, 10).await;
    age(&pool, c, 3).await;

    let cutoff = Utc::now() - Duration::days(1);
    let cases: Vec<(&str, DlqFilter, Vec<i64>)> = vec![
        ("everything", DlqFilter::default(), vec![a, b, c, d]),
        (
            "observer",
            DlqFilter {
                observer: Some("audit".into()),
                ..DlqFilter::default()
            },
            vec![c, d],
        ),
        (
            "entity_type",
            DlqFilter {
                entity_type: Some("Order".into()),
                ..DlqFilter::default()
            },
            vec![a, c],
        ),
        (
            "action_type",
            DlqFilter {
                action_type: Some("email".into()),
                ..DlqFilter::default()
            },
            vec![b, c],
        ),
        (
            "status pending",
            DlqFilter {
                status: Some(DlqStatus::Pending),
                ..DlqFilter::default()
            },
            vec![a, c, d],
        ),
        (
            "status resolved",
            DlqFilter {
                status: Some(DlqStatus::Resolved),
                ..DlqFilter::default()
            },
            vec![b],
        ),
        (
            "older_than",
            DlqFilter {
                older_than: Some(cutoff),
                ..DlqFilter::default()
            },
            vec![a, c],
        ),
        (
            "ids",
            DlqFilter {
                ids: Some(vec![d, b, 999_999]),
                ..DlqFilter::default()
            },
            vec![b, d],
        ),
        (
            "no ids",
            DlqFilter {
                ids: Some(vec![]),
                ..DlqFilter::default()
            },
            vec![],
        ),
        (
            "limit",
            DlqFilter {
                limit: Some(2),
                ..DlqFilter::default()
            },
            vec![a, b],
        ),
        (
            "combined",
            DlqFilter {
                observer: Some("audit".into()),
                entity_type: Some("Order".into()),
                action_type: Some("email".into()),
                status: Some(DlqStatus::Pending),
                older_than: Some(cutoff),
                ids: Some(vec![a, c, d]),
                limit: Some(5),
            },
            vec![c],
        ),
        (
            "combined, nothing matches",
            DlqFilter {
                observer: Some("notify".into()),
                action_type: Some("webhook".into()),
                status: Some(DlqStatus::Resolved),
                ..DlqFilter::default()
            },
            vec![],
        ),
    ];
    for (name, filter, expected) in cases {
        assert_eq!(ids(&q, &filter).await, expected, "{name}");
        // The PostgreSQL filter agrees with core's own definition of a match.
        let all = q.list(&DlqFilter::default()).await.unwrap();
        let by_core: Vec<i64> = all
            .iter()
            .filter(|i| filter.matches(i))
            .take(filter.limit.unwrap_or(usize::MAX))
            .map(|i| i.id)
            .collect();
        assert_eq!(by_core, expected, "{name} (core)");
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn record_retry_resolves_or_keeps_the_latest_error(pool: PgPool) {
    let q = PostgresDeadLetterQueue::new(pool);
    let [a, b, ..] = fill(&q).await;

    q.record_retry(a, false, Some("503 Service Unavailable"))
        .await
        .unwrap();
    let item = q.get(a).await.unwrap().unwrap();
    assert_eq!(item.status, DlqStatus::Pending);
    assert_eq!(item.retry_count, 1);
    assert_eq!(item.entry.error, "503 Service Unavailable");
    assert!(item.last_retry_at.is_some());

    q.record_retry(a, false, None).await.unwrap();
    let item = q.get(a).await.unwrap().unwrap();
    assert_eq!(
        (item.retry_count, item.entry.error.as_str()),
        (2, "503 Service Unavailable")
    );

    q.record_retry(b, true, None).await.unwrap();
    let item = q.get(b).await.unwrap().unwrap();
    assert_eq!((item.status, item.retry_count), (DlqStatus::Resolved, 1));
    assert_eq!(
        item.entry.error, "502 Bad Gateway",
        "the last failure is kept for the record"
    );

    // An item purged meanwhile is not an error.
    q.record_retry(999_999, true, None).await.unwrap();
}

#[sqlx::test(migrations = "../../migrations")]
async fn count_by_status(pool: PgPool) {
    let q = PostgresDeadLetterQueue::new(pool);
    assert_eq!(q.count(None).await.unwrap(), 0);
    let [a, b, ..] = fill(&q).await;
    q.record_retry(a, true, None).await.unwrap();
    q.record_retry(b, true, None).await.unwrap();
    assert_eq!(q.count(None).await.unwrap(), 4);
    assert_eq!(q.count(Some(DlqStatus::Pending)).await.unwrap(), 2);
    assert_eq!(q.count(Some(DlqStatus::Resolved)).await.unwrap(), 2);
}

#[sqlx::test(migrations = "../../migrations")]
async fn purge_by_older_than_keeps_recent_items(pool: PgPool) {
    let q = PostgresDeadLetterQueue::new(pool.clone());
    let [a, b, c, d] = fill(&q).await;
    age(&pool, a, 40).await;
    age(&pool, b, 31).await;
    age(&pool, c, 29).await;

    let month = DlqFilter {
        older_than: Some(Utc::now() - Duration::days(30)),
        ..DlqFilter::default()
    };
    assert_eq!(q.purge(&month).await.unwrap(), 2);
    assert_eq!(ids(&q, &DlqFilter::default()).await, [c, d]);
    assert_eq!(q.purge(&month).await.unwrap(), 0);
}

#[sqlx::test(migrations = "../../migrations")]
async fn purge_honours_the_other_filter_fields(pool: PgPool) {
    let q = PostgresDeadLetterQueue::new(pool);
    let [a, b, c, d] = fill(&q).await;
    q.record_retry(c, true, None).await.unwrap();

    let resolved = DlqFilter {
        status: Some(DlqStatus::Resolved),
        ..DlqFilter::default()
    };
    assert_eq!(q.purge(&resolved).await.unwrap(), 1);
    assert_eq!(ids(&q, &DlqFilter::default()).await, [a, b, d]);

    let notify_email = DlqFilter {
        observer: Some("notify".into()),
        action_type: Some("email".into()),
        ..DlqFilter::default()
    };
    assert_eq!(q.purge(&notify_email).await.unwrap(), 1);
    assert_eq!(ids(&q, &DlqFilter::default()).await, [a, d]);

    let users = DlqFilter {
        entity_type: Some("User".into()),
        ..DlqFilter::default()
    };
    assert_eq!(q.purge(&users).await.unwrap(), 1);

    let by_id = DlqFilter {
        ids: Some(vec![a]),
        ..DlqFilter::default()
    };
    assert_eq!(q.purge(&by_id).await.unwrap(), 1);
    assert_eq!(q.count(None).await.unwrap(), 0);
}

#[sqlx::test(migrations = "../../migrations")]
async fn purge_with_a_limit_removes_the_oldest_first(pool: PgPool) {
    let q = PostgresDeadLetterQueue::new(pool);
    let [_, _, c, d] = fill(&q).await;
    let two = DlqFilter {
        limit: Some(2),
        ..DlqFilter::default()
    };
    assert_eq!(q.purge(&two).await.unwrap(), 2);
    assert_eq!(ids(&q, &DlqFilter::default()).await, [c, d]);
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_corrupt_event_is_reported_with_its_id_and_can_be_purged(pool: PgPool) {
    let q = PostgresDeadLetterQueue::new(pool.clone());
    let id = q.push(entry("notify", "Order", "webhook")).await.unwrap();
    sqlx::query("UPDATE observer_dlq_items SET event = '{\"not\": \"an event\"}' WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    let err = q.get(id).await.unwrap_err();
    assert!(err.to_string().contains(&format!("DLQ item {id}")), "{err}");
    let by_id = DlqFilter {
        ids: Some(vec![id]),
        ..DlqFilter::default()
    };
    assert_eq!(q.purge(&by_id).await.unwrap(), 1);
}
