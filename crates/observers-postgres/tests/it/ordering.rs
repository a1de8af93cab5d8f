//! Commit order per entity and no stall behind unrelated transactions, on real PostgreSQL and
//! real capture triggers: the interleavings that broke the old `(txid, id)` cursor, and randomized
//! concurrent writers checked against a model of each entity's committed sequence.

use std::collections::BTreeMap;
use std::time::Duration;

use observers_core::Cursor;
use observers_core::stores::source::{EventSource, SourceItem};
use observers_postgres::PgEventSource;
use observers_postgres::capture::{self, CaptureSpec};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::{Connection, PgConnection, PgPool};

async fn captured_table(pool: &PgPool, table: &str, entity: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, status text, n int NOT NULL DEFAULT 0)"
    )))
    .execute(pool)
    .await
    .unwrap();
    capture::enable(
        pool,
        &CaptureSpec {
            table: table.into(),
            entity: entity.into(),
            id_column: "id".into(),
            tenant_column: None,
        },
    )
    .await
    .unwrap();
}

async fn connect(pool: &PgPool) -> PgConnection {
    PgConnection::connect_with(&pool.connect_options())
        .await
        .unwrap()
}

/// Runs one statement of the test's own text.
async fn exec(conn: &mut PgConnection, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut *conn)
        .await
        .unwrap();
}

/// Everything final after `cursor`, in delivery order, and the cursor after it.
async fn drain(src: &dyn EventSource, mut cursor: Cursor) -> (Vec<SourceItem>, Cursor) {
    let mut all = Vec::new();
    loop {
        let batch = src.fetch(cursor, 7).await.unwrap();
        let Some(last) = batch.last() else {
            return (all, cursor);
        };
        cursor = last.cursor();
        all.extend(batch);
    }
}

/// `(entity id, after.field)` of every event, in delivery order.
fn values(items: &[SourceItem], field: &str) -> Vec<(String, String)> {
    items
        .iter()
        .map(|i| match i {
            SourceItem::Event(e) => (
                e.entity_id.clone(),
                e.after
                    .as_ref()
                    .and_then(|a| a.get(field))
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            ),
            SourceItem::Poison { error, .. } => panic!("poison row: {error}"),
        })
        .collect()
}

fn statuses_of(items: &[SourceItem], entity_id: &str) -> Vec<String> {
    values(items, "status")
        .into_iter()
        .filter(|(e, _)| e == entity_id)
        .map(|(_, s)| s.trim_matches('"').to_owned())
        .collect()
}

/// Transaction 1 writes first (so it has the older transaction id) and sets order 1 to
/// `shipped` last; transaction 2 sets it to `paid` in between. The row ends `shipped`, so the
/// last event delivered for it must say `shipped`. Both with the first write on an uncaptured
/// table and on a captured one.
#[sqlx::test(migrations = "../../migrations")]
async fn per_entity_order_is_commit_order_not_transaction_id_order(pool: PgPool) {
    captured_table(&pool, "orders", "Order").await;
    captured_table(&pool, "customers", "Customer").await;
    exec(
        &mut pool.acquire().await.unwrap(),
        "CREATE TABLE audit (note text)",
    )
    .await;
    let src = PgEventSource::new(pool.clone());
    let mut cursor = Cursor::START;

    for (round, first_write) in [
        "INSERT INTO audit VALUES ('uncaptured')",
        "INSERT INTO customers (id, status) VALUES (7, 'captured')",
    ]
    .into_iter()
    .enumerate()
    {
        let order = i32::try_from(round).unwrap() + 1;
        sqlx::query("INSERT INTO orders (id, status) VALUES ($1, 'new')")
            .bind(order)
            .execute(&pool)
            .await
            .unwrap();
        let mut t1 = connect(&pool).await;
        let mut t2 = connect(&pool).await;
        exec(&mut t1, "BEGIN").await;
        exec(&mut t1, first_write).await;
        exec(&mut t2, "BEGIN").await;
        exec(
            &mut t2,
            &format!("UPDATE orders SET status = 'paid' WHERE id = {order}"),
        )
        .await;
        exec(&mut t2, "COMMIT").await;
        exec(
            &mut t1,
            &format!("UPDATE orders SET status = 'shipped' WHERE id = {order}"),
        )
        .await;
        exec(&mut t1, "COMMIT").await;

        let (items, next) = drain(&src, cursor).await;
        cursor = next;
        assert_eq!(
            statuses_of(&items, &order.to_string()),
            ["new", "paid", "shipped"],
            "first write of transaction 1: {first_write}"
        );
    }
}

/// A transaction that wrote only to an uncaptured table, left open, delays nothing; one that
/// wrote a captured row delays only the changes ordered after its own.
#[sqlx::test(migrations = "../../migrations")]
async fn open_transactions_delay_only_what_they_must(pool: PgPool) {
    captured_table(&pool, "orders", "Order").await;
    exec(
        &mut pool.acquire().await.unwrap(),
        "CREATE TABLE batch_job (n int)",
    )
    .await;
    let src = PgEventSource::new(pool.clone());

    let mut unrelated = connect(&pool).await;
    exec(&mut unrelated, "BEGIN").await;
    exec(&mut unrelated, "INSERT INTO batch_job VALUES (1)").await;
    exec(
        &mut pool.acquire().await.unwrap(),
        "INSERT INTO orders (id, status) VALUES (1, 'new')",
    )
    .await;
    let (items, cursor) = drain(&src, Cursor::START).await;
    assert_eq!(
        statuses_of(&items, "1"),
        ["new"],
        "an open transaction on an uncaptured table held the change back"
    );

    let mut captured = connect(&pool).await;
    exec(&mut captured, "BEGIN").await;
    exec(
        &mut captured,
        "INSERT INTO orders (id, status) VALUES (2, 'open')",
    )
    .await;
    exec(
        &mut pool.acquire().await.unwrap(),
        "INSERT INTO orders (id, status) VALUES (3, 'after')",
    )
    .await;
    let (held, cursor_while_open) = drain(&src, cursor).await;
    assert!(
        held.is_empty(),
        "a change ordered after an open capturing transaction's own was delivered: {:?}",
        values(&held, "status")
    );
    assert_eq!(cursor_while_open, cursor);

    exec(&mut captured, "COMMIT").await;
    let (released, _) = drain(&src, cursor).await;
    assert_eq!(
        values(&released, "status"),
        [
            ("2".to_owned(), "\"open\"".to_owned()),
            ("3".to_owned(), "\"after\"".to_owned())
        ]
    );
    exec(&mut unrelated, "ROLLBACK").await;
}

/// A rolled-back transaction and a rolled-back savepoint release the horizon; nothing of theirs
/// is delivered and nothing after them waits.
#[sqlx::test(migrations = "../../migrations")]
async fn rollbacks_release_the_horizon(pool: PgPool) {
    captured_table(&pool, "orders", "Order").await;
    let src = PgEventSource::new(pool.clone());
    let mut w = connect(&pool).await;
    exec(&mut w, "BEGIN").await;
    exec(&mut w, "SAVEPOINT s").await;
    exec(
        &mut w,
        "INSERT INTO orders (id, status) VALUES (1, 'undone')",
    )
    .await;
    exec(&mut w, "ROLLBACK TO SAVEPOINT s").await;
    exec(
        &mut pool.acquire().await.unwrap(),
        "INSERT INTO orders (id, status) VALUES (2, 'seen')",
    )
    .await;
    let (items, _) = drain(&src, Cursor::START).await;
    assert_eq!(
        values(&items, "status"),
        [("2".to_owned(), "\"seen\"".to_owned())],
        "the savepoint's rollback released its lock"
    );
    exec(&mut w, "INSERT INTO orders (id, status) VALUES (3, 'kept')").await;
    exec(&mut w, "COMMIT").await;
    let mut r = connect(&pool).await;
    exec(&mut r, "BEGIN").await;
    exec(
        &mut r,
        "INSERT INTO orders (id, status) VALUES (4, 'rolled back')",
    )
    .await;
    exec(&mut r, "ROLLBACK").await;
    exec(
        &mut pool.acquire().await.unwrap(),
        "INSERT INTO orders (id, status) VALUES (5, 'last')",
    )
    .await;
    let (items, _) = drain(&src, Cursor::START).await;
    let seen: Vec<String> = values(&items, "status")
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    assert_eq!(seen, ["\"seen\"", "\"kept\"", "\"last\""]);
}

/// One lock per transaction, however many rows it writes: a large transaction never runs the
/// server out of lock slots.
#[sqlx::test(migrations = "../../migrations")]
async fn a_large_transaction_takes_one_lock(pool: PgPool) {
    captured_table(&pool, "orders", "Order").await;
    let mut w = connect(&pool).await;
    exec(&mut w, "BEGIN").await;
    exec(
        &mut w,
        "INSERT INTO orders (id, status) SELECT g, 'bulk' FROM generate_series(1, 20000) g",
    )
    .await;
    for i in 0..200 {
        exec(
            &mut w,
            &format!("UPDATE orders SET n = n + 1 WHERE id = {}", i + 1),
        )
        .await;
    }
    let locks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
    )
    .fetch_one(&mut w)
    .await
    .unwrap();
    assert_eq!(locks, 1);
    exec(&mut w, "COMMIT").await;
    let (items, _) = drain(&PgEventSource::new(pool.clone()), Cursor::START).await;
    assert_eq!(items.len(), 20_200);
}

/// The lock key carries the sequence's last value mod 2^32 as a signed int4, and the horizon
/// reads it back from `pg_locks` (where it shows unsigned). Around every boundary of that
/// mapping (ids near 2^31, where the key turns negative, and near 2^32 and 2^33, where it wraps)
/// an open writer holds back exactly what it must: the horizon stops just below its id while it
/// is open, and a later writer's committed row waits for it.
#[sqlx::test(migrations = "../../migrations")]
async fn the_horizon_holds_where_the_lock_key_turns_negative_and_wraps(pool: PgPool) {
    captured_table(&pool, "orders", "Order").await;
    let src = PgEventSource::new(pool.clone());
    let horizon = |pool: PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT observers_change_horizon()")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let mut cursor = Cursor::START;
    let mut next_key = 0;
    for last in [
        // Each round draws two ids after `last`.
        (1_i64 << 31) - 1,
        (1 << 31) + 2,
        (1 << 32) - 1,
        (1 << 32) + 2,
        (1 << 32) + (1 << 31),
        (1 << 33) + 5,
    ] {
        exec(
            &mut pool.acquire().await.unwrap(),
            &format!("SELECT setval(pg_get_serial_sequence('observer_change_log', 'id'), {last})"),
        )
        .await;
        let mut open = connect(&pool).await;
        exec(&mut open, "BEGIN").await;
        next_key += 1;
        exec(
            &mut open,
            &format!("INSERT INTO orders (id, status) VALUES ({next_key}, 'open')"),
        )
        .await;
        next_key += 1;
        exec(
            &mut pool.acquire().await.unwrap(),
            &format!("INSERT INTO orders (id, status) VALUES ({next_key}, 'later')"),
        )
        .await;
        assert_eq!(
            horizon(pool.clone()).await,
            last,
            "the open writer (id {}) holds the horizon at {last}",
            last + 1
        );
        let (items, at) = drain(&src, cursor).await;
        assert!(items.is_empty(), "nothing passes the open writer at {last}");
        exec(&mut open, "COMMIT").await;
        let (items, at) = drain(&src, at).await;
        assert_eq!(
            values(&items, "status"),
            [
                ((next_key - 1).to_string(), "\"open\"".to_owned()),
                (next_key.to_string(), "\"later\"".to_owned())
            ],
            "both delivered, in id order, once the writer at {last} commits"
        );
        assert_eq!(items[0].cursor().id, last + 1);
        cursor = at;
    }
}

/// Randomized concurrent writers: each transaction increments counters of random entities (in
/// key order, so writers wait on each other's row locks rather than deadlock), sometimes writes
/// an uncaptured table first, sometimes rolls back a savepoint or the whole transaction, and
/// pauses between statements. A reader runs all along. Each entity's committed values are
/// 1, 2, 3, …; the reader must see exactly that sequence per entity: a gap is a skip, a value out
/// of order is a reorder, a repeat a duplicate.
#[sqlx::test(migrations = "../../migrations")]
async fn randomized_writers_never_skip_or_reorder_an_entity(pool: PgPool) {
    captured_table(&pool, "counters", "Counter").await;
    randomized_writers_against(&pool, &PgEventSource::new(pool.clone())).await;
}

/// The randomized writers of the test above, on `counters` (`id int PRIMARY KEY, n int`), which
/// the caller has created and captured (by trigger, or through the WAL with a relay running),
/// read through `src` while they write. Changes may reach the change log after their commit
/// (the WAL relay copies them), so the reader waits, with a deadline, until it has seen as many
/// events as the table's final state implies, then checks each entity's sequence.
pub(crate) async fn randomized_writers_against(pool: &PgPool, src: &dyn EventSource) {
    const ENTITIES: i32 = 12;
    const WRITERS: u64 = 6;
    const TRANSACTIONS: usize = 120;
    exec(
        &mut pool.acquire().await.unwrap(),
        "CREATE TABLE noise (n int)",
    )
    .await;
    sqlx::query("INSERT INTO counters (id, n) SELECT g, 0 FROM generate_series(1, $1) g")
        .bind(ENTITIES)
        .execute(pool)
        .await
        .unwrap();
    let entities = usize::try_from(ENTITIES).unwrap();
    let (start_items, start) = drain_at_least(src, Cursor::START, entities).await;
    assert_eq!(start_items.len(), entities);

    let seed: u64 = rand::rng().random();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let pool = pool.clone();
        writers.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ w);
            let mut conn = connect(&pool).await;
            for _ in 0..TRANSACTIONS {
                let mut keys: Vec<i32> = (0..rng.random_range(1..4))
                    .map(|_| rng.random_range(1..=ENTITIES))
                    .collect();
                keys.sort_unstable();
                exec(&mut conn, "BEGIN").await;
                if rng.random_bool(0.3) {
                    exec(&mut conn, "INSERT INTO noise VALUES (1)").await;
                }
                for (i, key) in keys.iter().enumerate() {
                    let undo = i > 0 && rng.random_bool(0.15);
                    if undo {
                        exec(&mut conn, "SAVEPOINT s").await;
                    }
                    exec(
                        &mut conn,
                        &format!("UPDATE counters SET n = n + 1 WHERE id = {key}"),
                    )
                    .await;
                    if undo {
                        exec(&mut conn, "ROLLBACK TO SAVEPOINT s").await;
                    }
                    if rng.random_bool(0.5) {
                        tokio::time::sleep(Duration::from_micros(rng.random_range(0..3000))).await;
                    }
                }
                let end = if rng.random_bool(0.1) {
                    "ROLLBACK"
                } else {
                    "COMMIT"
                };
                exec(&mut conn, end).await;
            }
        }));
    }

    let mut delivered: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut cursor = start;
    let record = |delivered: &mut BTreeMap<String, Vec<i64>>, items: Vec<SourceItem>| {
        for (entity, n) in values(&items, "n") {
            delivered
                .entry(entity)
                .or_default()
                .push(n.parse().unwrap());
        }
    };
    while writers.iter().any(|w| !w.is_finished()) {
        let (items, next) = drain(src, cursor).await;
        cursor = next;
        record(&mut delivered, items);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for w in writers {
        w.await.unwrap();
    }
    let finals: Vec<(i32, i32)> = sqlx::query_as("SELECT id, n FROM counters ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap();
    let total: usize = finals.iter().map(|f| usize::try_from(f.1).unwrap()).sum();
    let seen: usize = delivered.values().map(Vec::len).sum();
    let (items, _) = drain_at_least(src, cursor, total.saturating_sub(seen)).await;
    record(&mut delivered, items);

    for (id, n) in finals {
        let expected: Vec<i64> = (1..=i64::from(n)).collect();
        let got = delivered.get(&id.to_string()).cloned().unwrap_or_default();
        assert_eq!(got, expected, "entity {id} (seed {seed})");
    }
}

/// Drains after `cursor` until at least `n` items have come (or 60 s have passed: the caller's
/// assertions then say what is missing), then whatever else is final.
async fn drain_at_least(
    src: &dyn EventSource,
    cursor: Cursor,
    n: usize,
) -> (Vec<SourceItem>, Cursor) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (mut all, mut cursor) = drain(src, cursor).await;
    while all.len() < n && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (more, next) = drain(src, cursor).await;
        cursor = next;
        all.extend(more);
    }
    (all, cursor)
}
