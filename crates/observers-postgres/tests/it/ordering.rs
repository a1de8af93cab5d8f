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

/// Writers take no lock of their own (the horizon comes from the write lock PostgreSQL takes
/// anyway): a large open transaction holds no advisory lock, holds back a change committed after
/// its own, and arrives whole, in id order, once it commits.
#[sqlx::test(migrations = "../../migrations")]
async fn writers_take_no_lock_and_a_large_transaction_arrives_whole(pool: PgPool) {
    captured_table(&pool, "orders", "Order").await;
    let src = PgEventSource::new(pool.clone());
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
    assert_eq!(locks, 0, "the writer took an advisory lock");
    exec(
        &mut pool.acquire().await.unwrap(),
        "INSERT INTO orders (id, status) VALUES (20001, 'after')",
    )
    .await;
    let (held, cursor) = drain(&src, Cursor::START).await;
    assert!(
        held.is_empty(),
        "{} changes passed the open writer",
        held.len()
    );
    exec(&mut w, "COMMIT").await;
    let (items, _) = drain(&src, cursor).await;
    assert_eq!(items.len(), 20_201);
    assert!(
        items
            .windows(2)
            .all(|p| p[0].cursor().id < p[1].cursor().id),
        "not in id order"
    );
    assert_eq!(
        values(&items[20_200..], "status"),
        [("20001".to_owned(), "\"after\"".to_owned())]
    );
}

/// The horizon holds for every writer of the change log, not only the capture trigger: an open
/// transaction inserting into the log itself (as an application's outbox or an ingest would)
/// holds back what was committed after its id, while a reader's open transaction on the log (a
/// report, `observers changelog`) holds back nothing.
#[sqlx::test(migrations = "../../migrations")]
async fn any_writer_of_the_log_holds_back_what_follows_and_readers_hold_nothing(pool: PgPool) {
    captured_table(&pool, "orders", "Order").await;
    let src = PgEventSource::new(pool.clone());
    let mut report = connect(&pool).await;
    exec(&mut report, "BEGIN").await;
    exec(&mut report, "SELECT count(*) FROM observer_change_log").await;
    exec(
        &mut pool.acquire().await.unwrap(),
        "INSERT INTO orders (id, status) VALUES (1, 'first')",
    )
    .await;
    let (items, cursor) = drain(&src, Cursor::START).await;
    assert_eq!(
        statuses_of(&items, "1"),
        ["first"],
        "an open reader held the change back"
    );

    let mut outbox = connect(&pool).await;
    exec(&mut outbox, "BEGIN").await;
    exec(
        &mut outbox,
        "INSERT INTO observer_change_log (entity_type, entity_id, operation, after)
         VALUES ('Mail', 'm1', 'insert', '{\"status\": \"queued\"}')",
    )
    .await;
    exec(
        &mut pool.acquire().await.unwrap(),
        "INSERT INTO orders (id, status) VALUES (2, 'later')",
    )
    .await;
    let (held, at) = drain(&src, cursor).await;
    assert!(
        held.is_empty(),
        "a change committed after the open outbox write was delivered: {:?}",
        values(&held, "status")
    );
    exec(&mut outbox, "COMMIT").await;
    let (items, _) = drain(&src, at).await;
    assert_eq!(
        values(&items, "status"),
        [
            ("m1".to_owned(), "\"queued\"".to_owned()),
            ("2".to_owned(), "\"later\"".to_owned())
        ]
    );
    exec(&mut report, "COMMIT").await;
}

/// Writers in flight hold back only the ids they may own: a writer first seen by a look draws
/// above the sequence value of the look before. With a rolled-back id right after the cursor
/// (so every read asks for the horizon), the first writer's commit releases what it held back up
/// to the second writer, which holds back only what follows it.
#[sqlx::test(migrations = "../../migrations")]
async fn a_later_writer_holds_back_only_what_follows_it(pool: PgPool) {
    captured_table(&pool, "orders", "Order").await;
    let src = PgEventSource::new(pool.clone());
    let write = |sql: &'static str| {
        let pool = pool.clone();
        async move { exec(&mut pool.acquire().await.unwrap(), sql).await }
    };
    write("INSERT INTO orders (id, status) VALUES (1, 'a')").await;
    let (items, cursor) = drain(&src, Cursor::START).await;
    assert_eq!(items.len(), 1);
    write("BEGIN; INSERT INTO orders (id, status) VALUES (2, 'rolled back'); ROLLBACK").await;
    let mut first = connect(&pool).await;
    exec(&mut first, "BEGIN").await;
    exec(
        &mut first,
        "INSERT INTO orders (id, status) VALUES (3, 'first')",
    )
    .await;
    write("INSERT INTO orders (id, status) VALUES (4, 'b')").await;
    let (held, at) = drain(&src, cursor).await;
    assert!(held.is_empty(), "passed the first writer");
    let mut second = connect(&pool).await;
    exec(&mut second, "BEGIN").await;
    exec(
        &mut second,
        "INSERT INTO orders (id, status) VALUES (5, 'second')",
    )
    .await;
    write("INSERT INTO orders (id, status) VALUES (6, 'c')").await;
    exec(&mut first, "COMMIT").await;
    let (items, at) = drain(&src, at).await;
    assert_eq!(
        values(&items, "status"),
        [
            ("3".to_owned(), "\"first\"".to_owned()),
            ("4".to_owned(), "\"b\"".to_owned())
        ],
        "up to the second writer, not past it"
    );
    exec(&mut second, "COMMIT").await;
    let (items, _) = drain(&src, at).await;
    assert_eq!(
        values(&items, "status"),
        [
            ("5".to_owned(), "\"second\"".to_owned()),
            ("6".to_owned(), "\"c\"".to_owned())
        ]
    );
}

/// `observer_cutoff_lag_seconds` is the age of the oldest open transaction writing the change
/// log: it grows while one is open, a reader's open transaction on the log does not count, and
/// it is back to zero once the writer commits.
#[sqlx::test(migrations = "../../migrations")]
async fn the_cutoff_lag_is_the_age_of_the_oldest_open_writer(pool: PgPool) {
    let lag = |pool: PgPool| async move {
        observers_postgres::monitoring::source_gauges(&pool, "default")
            .await
            .unwrap()
            .cutoff_lag
    };
    let mut report = connect(&pool).await;
    exec(&mut report, "BEGIN").await;
    exec(&mut report, "SELECT count(*) FROM observer_change_log").await;
    assert_eq!(lag(pool.clone()).await, Duration::ZERO, "a reader counted");
    let mut writer = connect(&pool).await;
    exec(&mut writer, "BEGIN").await;
    exec(
        &mut writer,
        "INSERT INTO observer_change_log (entity_type, entity_id, operation, after)
         VALUES ('T', '1', 'insert', '{}')",
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while lag(pool.clone()).await < Duration::from_millis(200) {
        assert!(std::time::Instant::now() < deadline, "the lag never grew");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    exec(&mut writer, "COMMIT").await;
    assert_eq!(lag(pool.clone()).await, Duration::ZERO, "the writer ended");
    exec(&mut report, "COMMIT").await;
}

/// Two-phase commit: a writer that prepares hands its locks to the prepared transaction, which
/// PostgreSQL may list under another virtual id. The reader saw the writer in flight, looked again
/// after the PREPARE, and must still hold back what follows until COMMIT PREPARED; a rolled-back
/// prepared transaction releases it with nothing delivered. Needs `max_prepared_transactions > 0`
/// (the private cluster `cargo xtask test` starts has it).
#[tokio::test]
async fn a_prepared_transaction_holds_back_what_follows_until_it_commits() {
    let Some(db) = crate::wal::WalDb::new("twophase").await else {
        return;
    };
    let pool = db.pool.clone();
    let prepared: i64 =
        sqlx::query_scalar("SELECT current_setting('max_prepared_transactions')::int8")
            .fetch_one(&pool)
            .await
            .unwrap();
    if prepared == 0 {
        eprintln!("SKIPPED: the logical cluster has max_prepared_transactions = 0");
        return;
    }
    captured_table(&pool, "orders", "Order").await;
    let src = PgEventSource::new(pool.clone());
    let mut cursor = Cursor::START;
    for (round, (end, kept)) in [("COMMIT PREPARED", true), ("ROLLBACK PREPARED", false)]
        .into_iter()
        .enumerate()
    {
        let (mine, later) = (round * 2 + 1, round * 2 + 2);
        let gid = format!("observers_{}_{round}", db.settings.slot);
        let mut w = connect(&pool).await;
        exec(&mut w, "BEGIN").await;
        exec(
            &mut w,
            &format!("INSERT INTO orders (id, status) VALUES ({mine}, 'prepared')"),
        )
        .await;
        exec(
            &mut pool.acquire().await.unwrap(),
            &format!("INSERT INTO orders (id, status) VALUES ({later}, 'later')"),
        )
        .await;
        let (held, at) = drain(&src, cursor).await;
        assert!(held.is_empty(), "passed the writer in flight ({end})");
        exec(&mut w, &format!("PREPARE TRANSACTION '{gid}'")).await;
        let (held, at) = drain(&src, at).await;
        assert!(held.is_empty(), "passed the prepared transaction ({end})");
        exec(
            &mut pool.acquire().await.unwrap(),
            &format!("{end} '{gid}'"),
        )
        .await;
        let (items, at) = drain(&src, at).await;
        let mut expected = Vec::new();
        if kept {
            expected.push((mine.to_string(), "\"prepared\"".to_owned()));
        }
        expected.push((later.to_string(), "\"later\"".to_owned()));
        assert_eq!(values(&items, "status"), expected, "after {end}");
        cursor = at;
    }
    drop(src);
    db.drop().await;
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
