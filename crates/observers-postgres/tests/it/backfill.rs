//! `observers capture backfill`'s library side against a real PostgreSQL: existing rows become
//! `read` changes once each, in keyset batches that resume after an interruption, filtered by
//! `--where`, and concurrent writes are neither lost nor ordered before a stale read.

use std::collections::BTreeMap;
use std::time::Duration;

use observers_core::stores::source::{EventSource, SourceItem};
use observers_core::{Cursor, EventKind};
use observers_postgres::PgError;
use observers_postgres::PgEventSource;
use observers_postgres::backfill::{Backfill, BackfillRequest};
use observers_postgres::capture::{self, CaptureSpec};
use serde_json::{Value, json};
use sqlx::PgPool;

fn request(table: &str, batch: i64) -> BackfillRequest {
    BackfillRequest {
        table: table.to_owned(),
        filter: None,
        batch,
        restart: false,
    }
}

/// A captured `items` table with rows 1..=n written before capture was enabled.
async fn items(pool: &PgPool, n: i64) {
    sqlx::raw_sql("CREATE TABLE items (id bigint PRIMARY KEY, status text NOT NULL, n int NOT NULL DEFAULT 0)")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO items SELECT g, CASE WHEN g % 3 = 0 THEN 'paid' ELSE 'new' END FROM generate_series(1, $1) g")
        .bind(n)
        .execute(pool)
        .await
        .unwrap();
    capture::enable(pool, &CaptureSpec::new("items", "Item"))
        .await
        .unwrap();
}

async fn run_to_end(backfill: &mut Backfill) -> u64 {
    let mut total = 0;
    while let Some(n) = backfill.next_batch().await.unwrap() {
        total += n;
    }
    total
}

/// (operation, entity id) of every change-log row, in id order.
async fn logged(pool: &PgPool) -> Vec<(String, String)> {
    sqlx::query_as("SELECT operation, entity_id FROM observer_change_log ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

fn read_ids(log: &[(String, String)]) -> Vec<i64> {
    let mut ids: Vec<i64> = log
        .iter()
        .filter(|(op, _)| op == "read")
        .map(|(_, id)| id.parse().unwrap())
        .collect();
    ids.sort_unstable();
    ids
}

#[sqlx::test(migrations = "../../migrations")]
async fn existing_rows_become_read_changes_once(pool: PgPool) {
    items(&pool, 25).await;
    let mut backfill = Backfill::prepare(&pool, &request("items", 10))
        .await
        .unwrap();
    assert_eq!(backfill.remaining(), 25);
    assert!(!backfill.resumed());
    assert_eq!(run_to_end(&mut backfill).await, 25);
    let state = backfill.state();
    assert_eq!((state.rows_emitted, state.batches), (25, 3));
    assert!(state.finished_at.is_some());
    assert_eq!(state.last_key, Some(json!([25])));
    assert_eq!(read_ids(&logged(&pool).await), (1..=25).collect::<Vec<_>>());

    // The listener reads them as kind `read`, with the row in `after` and no `before`.
    let items = PgEventSource::new(pool.clone())
        .fetch(Cursor::START, 100)
        .await
        .unwrap();
    assert_eq!(items.len(), 25);
    let SourceItem::Event(first) = &items[0] else {
        panic!("event expected")
    };
    assert_eq!(first.kind, EventKind::Read);
    assert_eq!(first.entity_type, "Item");
    assert_eq!(first.entity_id, "1");
    assert_eq!(first.before, None);
    assert_eq!(first.after, Some(json!({"id": 1, "status": "new", "n": 0})));

    // Running it again finds it finished and emits nothing; --restart emits everything again.
    let mut again = Backfill::prepare(&pool, &request("items", 10))
        .await
        .unwrap();
    assert!(again.resumed());
    assert_eq!(again.next_batch().await.unwrap(), None);
    assert_eq!(logged(&pool).await.len(), 25);
    let mut restart = request("items", 100);
    restart.restart = true;
    let mut over = Backfill::prepare(&pool, &restart).await.unwrap();
    assert!(!over.resumed());
    assert_eq!(run_to_end(&mut over).await, 25);
    assert_eq!(logged(&pool).await.len(), 50);
}

#[sqlx::test(migrations = "../../migrations")]
async fn an_interrupted_backfill_resumes_without_duplicates_or_gaps(pool: PgPool) {
    items(&pool, 23).await;
    let mut first = Backfill::prepare(&pool, &request("items", 4))
        .await
        .unwrap();
    assert_eq!(first.next_batch().await.unwrap(), Some(4));
    assert_eq!(first.next_batch().await.unwrap(), Some(4));
    drop(first); // interrupted after two batches

    let mut second = Backfill::prepare(&pool, &request("items", 4))
        .await
        .unwrap();
    assert!(second.resumed());
    assert_eq!(second.remaining(), 15);
    assert_eq!(second.state().last_key, Some(json!([8])));
    assert_eq!(run_to_end(&mut second).await, 15);
    assert_eq!(second.state().rows_emitted, 23);
    assert_eq!(read_ids(&logged(&pool).await), (1..=23).collect::<Vec<_>>());
}

#[sqlx::test(migrations = "../../migrations")]
async fn two_runs_of_one_backfill_take_turns(pool: PgPool) {
    items(&pool, 40).await;
    let mut a = Backfill::prepare(&pool, &request("items", 3))
        .await
        .unwrap();
    let mut b = Backfill::prepare(&pool, &request("items", 3))
        .await
        .unwrap();
    let (na, nb) = tokio::join!(run_to_end(&mut a), run_to_end(&mut b));
    assert_eq!(na + nb, 40);
    assert_eq!(read_ids(&logged(&pool).await), (1..=40).collect::<Vec<_>>());
}

#[sqlx::test(migrations = "../../migrations")]
async fn where_filters_rows_and_is_a_backfill_of_its_own(pool: PgPool) {
    items(&pool, 20).await;
    let mut paid = request("items", 2);
    paid.filter = Some("status = 'paid' -- a comment ends at the line break".into());
    let mut backfill = Backfill::prepare(&pool, &paid).await.unwrap();
    assert_eq!(backfill.remaining(), 6);
    assert_eq!(run_to_end(&mut backfill).await, 6);
    assert_eq!(read_ids(&logged(&pool).await), [3, 6, 9, 12, 15, 18]);

    // Without the filter it is another backfill, which starts from the beginning.
    let mut all = Backfill::prepare(&pool, &request("items", 50))
        .await
        .unwrap();
    assert!(!all.resumed());
    assert_eq!(run_to_end(&mut all).await, 20);

    paid.filter = Some("no_such_column > 1".into());
    let err = invalid(Backfill::prepare(&pool, &paid).await);
    assert!(err.contains("--where `no_such_column > 1`"), "{err}");
    assert!(err.contains("no_such_column"), "{err}");
}

#[sqlx::test(migrations = "../../migrations")]
async fn composite_keys_page_in_key_order(pool: PgPool) {
    sqlx::raw_sql(
        "CREATE TABLE lines (order_id int, line text, qty int, PRIMARY KEY (order_id, line));
         INSERT INTO lines SELECT o, l, 1 FROM generate_series(1, 4) o, unnest(ARRAY['a', 'b', 'c']) l;",
    )
    .execute(&pool)
    .await
    .unwrap();
    capture::enable(
        &pool,
        &CaptureSpec::new("lines", "Line").with_id_column("order_id"),
    )
    .await
    .unwrap();
    let mut backfill = Backfill::prepare(&pool, &request("lines", 5))
        .await
        .unwrap();
    assert_eq!(run_to_end(&mut backfill).await, 12);
    assert_eq!(backfill.state().last_key, Some(json!([4, "c"])));
    let pairs: Vec<(i32, String)> = sqlx::query_as(
        "SELECT (after->>'order_id')::int, after->>'line' FROM observer_change_log ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(pairs.len(), 12);
    let mut sorted = pairs.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 12, "each row once");
}

fn invalid<T: std::fmt::Debug>(result: Result<T, PgError>) -> String {
    match result {
        Err(PgError::Invalid(message)) => message,
        other => panic!("expected PgError::Invalid, got {other:?}"),
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn refuses_tables_it_cannot_backfill_safely(pool: PgPool) {
    sqlx::raw_sql("CREATE TABLE plain (id int PRIMARY KEY); CREATE TABLE heap (id int, v text);")
        .execute(&pool)
        .await
        .unwrap();
    let err = invalid(Backfill::prepare(&pool, &request("plain", 10)).await);
    assert!(
        err.contains("not captured") && err.contains("capture enable"),
        "{err}"
    );
    capture::enable(&pool, &CaptureSpec::new("heap", "Heap"))
        .await
        .unwrap();
    let err = invalid(Backfill::prepare(&pool, &request("heap", 10)).await);
    assert!(err.contains("no primary key"), "{err}");
    let err = invalid(Backfill::prepare(&pool, &request("plain", 0)).await);
    assert!(err.contains("batch size"), "{err}");
}

/// The table's rows as the change log tells them: each entity's changes applied in id order
/// (`read`, `insert` and `update` set the row, `delete` removes it).
async fn folded(pool: &PgPool) -> BTreeMap<String, Value> {
    let rows: Vec<(String, String, Option<Value>)> =
        sqlx::query_as("SELECT operation, entity_id, after FROM observer_change_log ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap();
    let mut state = BTreeMap::new();
    for (op, id, after) in rows {
        match op.as_str() {
            "delete" => {
                state.remove(&id);
            }
            _ => {
                state.insert(id, after.unwrap());
            }
        }
    }
    state
}

async fn table_rows(pool: &PgPool) -> BTreeMap<String, Value> {
    let rows: Vec<(String, Value)> = sqlx::query_as("SELECT id::text, to_jsonb(i) FROM items i")
        .fetch_all(pool)
        .await
        .unwrap();
    rows.into_iter().collect()
}

/// Writers update, insert and delete rows while the backfill runs. Folding the log per entity in
/// id order gives the table as it ends: no change is lost, and no `read` of an old row version
/// comes after a change that replaced it.
#[sqlx::test(migrations = "../../migrations")]
async fn concurrent_writes_are_not_lost_and_never_precede_a_stale_read(pool: PgPool) {
    items(&pool, 400).await;
    let writer = {
        let pool = pool.clone();
        tokio::spawn(async move {
            for round in 0..300i64 {
                let id = (round * 37) % 420 + 1;
                sqlx::query(
                    "INSERT INTO items (id, status) VALUES ($1, 'new')
                     ON CONFLICT (id) DO UPDATE SET n = items.n + 1",
                )
                .bind(id)
                .execute(&pool)
                .await
                .unwrap();
                if round % 10 == 0 {
                    sqlx::query("DELETE FROM items WHERE id = $1")
                        .bind((round * 11) % 400 + 1)
                        .execute(&pool)
                        .await
                        .unwrap();
                }
            }
        })
    };
    let mut backfill = Backfill::prepare(&pool, &request("items", 7))
        .await
        .unwrap();
    let emitted = run_to_end(&mut backfill).await;
    writer.await.unwrap();
    assert!(emitted > 0);
    let (log, table) = (folded(&pool).await, table_rows(&pool).await);
    let differ: Vec<(&String, Option<&Value>, Option<&Value>)> = log
        .keys()
        .chain(table.keys())
        .filter(|k| log.get(*k) != table.get(*k))
        .map(|k| (k, log.get(k), table.get(k)))
        .collect();
    assert!(
        differ.is_empty(),
        "log vs table (id, log, table): {differ:?}"
    );
    // Every row alive at the end was read or inserted: none is missing from the log.
    let source = PgEventSource::new(pool.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM observer_change_log")
        .fetch_one(&pool)
        .await
        .unwrap();
    let mut after = Cursor::START;
    let mut seen = 0i64;
    while seen < total {
        assert!(tokio::time::Instant::now() < deadline, "log not all final");
        let batch = source.fetch(after, 1000).await.unwrap();
        if let Some(last) = batch.last() {
            after = last.cursor();
        }
        seen += i64::try_from(batch.len()).unwrap();
    }
}
