//! The partitioned read: partitions split the change log exactly (every row in one partition),
//! an entity always lands in the same partition, and each partition reads in cursor order.

use std::collections::{BTreeMap, BTreeSet};

use observers_core::Cursor;
use observers_core::stores::source::SourceItem;
use observers_postgres::PgEventSource;
use sqlx::PgPool;

#[sqlx::test(migrations = "../../migrations")]
async fn partitions_split_the_log_by_entity(pool: PgPool) {
    for round in 0..3 {
        for e in 0..30 {
            sqlx::query(
                "INSERT INTO observer_change_log (entity_type, entity_id, operation, after) \
                 VALUES ('T', $1, 'insert', jsonb_build_object('round', $2::int))",
            )
            .bind(format!("e{e}"))
            .bind(round)
            .execute(&pool)
            .await
            .unwrap();
        }
    }
    let src = PgEventSource::new(pool.clone());
    // Rows are read only up to the horizon: wait until they are all final.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while src.fetch_rows(Cursor::START, 1000).await.unwrap().len() < 90 {
        assert!(
            std::time::Instant::now() < deadline,
            "rows never became final"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let n = 4;
    let mut seen = BTreeSet::new();
    let mut home: BTreeMap<String, u32> = BTreeMap::new();
    for p in 0..n {
        // Small batches: the cursor walks the partition in order.
        let mut cursor = Cursor::START;
        loop {
            let batch = src.fetch_partition(cursor, 7, p, n).await.unwrap();
            let Some(last) = batch.last() else { break };
            for item in &batch {
                assert!(item.cursor() > cursor, "in cursor order");
                cursor = item.cursor();
                let SourceItem::Event(e) = item else {
                    panic!("event expected")
                };
                assert!(seen.insert(e.id), "row {} read twice", e.id);
                let at = *home.entry(e.entity_id.clone()).or_insert(p);
                assert_eq!(at, p, "{} in two partitions", e.entity_id);
            }
            cursor = last.cursor();
        }
    }
    assert_eq!(seen.len(), 90, "every row in exactly one partition");
    let used: BTreeSet<u32> = home.values().copied().collect();
    assert!(
        used.len() > 1,
        "30 entities spread over partitions: {home:?}"
    );
    // One partition reads like the unpartitioned source.
    assert_eq!(
        src.fetch_partition(Cursor::START, 1000, 0, 1)
            .await
            .unwrap()
            .len(),
        90
    );
}
