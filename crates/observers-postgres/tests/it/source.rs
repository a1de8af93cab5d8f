//! The change-log source against a real PostgreSQL: snapshot-safe cursor, poison rows, NOTIFY.

use std::time::Duration;

use observers_core::Cursor;
use observers_core::stores::source::{EventSource, SourceItem};
use observers_postgres::PgEventSource;
use sqlx::{Connection, PgPool};

async fn log_row(pool: &PgPool, entity_id: &str, op: &str) {
    sqlx::query("INSERT INTO observer_change_log (entity_type, entity_id, operation, after) VALUES ('Order', $1, $2, '{\"id\": 1}')")
        .bind(entity_id)
        .bind(op)
        .execute(pool)
        .await
        .unwrap();
}

/// Reads until `want` items are final. The cutoff is the cluster-wide snapshot xmin, so a write
/// transaction open in another test's database holds every reader back for a moment: wait for
/// the rows with a deadline instead of expecting them on the first read.
async fn fetch_final(
    src: &PgEventSource,
    after: Cursor,
    limit: usize,
    want: usize,
) -> Vec<SourceItem> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let items = src.fetch(after, limit).await.unwrap();
        if items.len() >= want || tokio::time::Instant::now() > deadline {
            return items;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ids(items: &[SourceItem]) -> Vec<i64> {
    items.iter().map(|i| i.cursor().id).collect()
}

#[sqlx::test(migrations = "../../migrations")]
async fn reads_in_cursor_order_after_the_cursor(pool: PgPool) {
    for i in 0..5 {
        log_row(&pool, &i.to_string(), "insert").await;
    }
    let src = PgEventSource::new(pool.clone());
    let first = fetch_final(&src, Cursor::START, 3, 3).await;
    assert_eq!(ids(&first), [1, 2, 3]);
    let rest = fetch_final(&src, first[2].cursor(), 10, 2).await;
    assert_eq!(ids(&rest), [4, 5]);
    assert!(src.fetch(rest[1].cursor(), 10).await.unwrap().is_empty());
    let SourceItem::Event(e) = &rest[0] else {
        panic!("event expected")
    };
    assert_eq!(
        (e.entity_type.as_str(), e.entity_id.as_str()),
        ("Order", "3")
    );
    assert!(e.txid > 0);
}

/// The id-only cursor bug: a transaction takes its change-log id first and commits last. A
/// reader that remembered only `id` would skip it; the `(txid, id)` cursor below the snapshot
/// xmin delivers it.
#[sqlx::test(migrations = "../../migrations")]
async fn late_committing_transaction_is_not_skipped(pool: PgPool) {
    let opts = pool.connect_options();
    let mut slow = sqlx::PgConnection::connect_with(&opts).await.unwrap();
    let mut slow_tx = slow.begin().await.unwrap();
    sqlx::query("INSERT INTO observer_change_log (entity_type, entity_id, operation, after) VALUES ('Order', 'slow', 'insert', '{}')")
        .execute(&mut *slow_tx)
        .await
        .unwrap();
    log_row(&pool, "fast", "insert").await;

    let src = PgEventSource::new(pool.clone());
    let while_open = src.fetch(Cursor::START, 100).await.unwrap();
    assert!(
        while_open.is_empty(),
        "nothing at or above the open transaction's xid is final yet: {while_open:?}"
    );

    slow_tx.commit().await.unwrap();
    let after_commit = fetch_final(&src, Cursor::START, 100, 2).await;
    let entity_ids: Vec<_> = after_commit
        .iter()
        .map(|i| match i {
            SourceItem::Event(e) => e.entity_id.clone(),
            SourceItem::Poison { .. } => "poison".into(),
        })
        .collect();
    assert_eq!(
        entity_ids,
        ["slow", "fast"],
        "the slow transaction (smaller txid) comes first, nothing skipped"
    );
    assert_eq!(ids(&after_commit), [1, 2]);
}

#[sqlx::test(migrations = "../../migrations")]
async fn rows_that_cannot_be_decoded_are_poison(pool: PgPool) {
    log_row(&pool, "1", "insert").await;
    log_row(&pool, "2", "merge").await;
    sqlx::query("INSERT INTO observer_change_log (entity_type, entity_id, operation) VALUES ('Order', '3', 'delete')")
        .execute(&pool)
        .await
        .unwrap();
    log_row(&pool, "4", "update").await;
    let items = fetch_final(&PgEventSource::new(pool.clone()), Cursor::START, 10, 4).await;
    let kinds: Vec<String> = items
        .iter()
        .map(|i| match i {
            SourceItem::Event(e) => e.kind.to_string(),
            SourceItem::Poison { error, .. } => format!("poison: {error}"),
        })
        .collect();
    assert_eq!(kinds[0], "insert");
    assert!(kinds[1].contains("merge"), "{kinds:?}");
    assert!(kinds[2].contains("delete without `before`"), "{kinds:?}");
    assert_eq!(kinds[3], "update");
}

#[sqlx::test(migrations = "../../migrations")]
async fn notify_wakes_a_waiting_reader(pool: PgPool) {
    let src = PgEventSource::new(pool.clone());
    // The first wake-up is the one the LISTEN task sends once it is listening.
    assert!(
        src.wait_for_changes(Duration::from_secs(30)).await,
        "LISTEN did not start"
    );
    let writer = {
        let pool = pool.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            log_row(&pool, "1", "insert").await;
        })
    };
    assert!(
        src.wait_for_changes(Duration::from_secs(30)).await,
        "woken by NOTIFY, not by the timeout"
    );
    writer.await.unwrap();
    assert!(
        !src.wait_for_changes(Duration::from_millis(200)).await,
        "no write, no wake-up"
    );
}
