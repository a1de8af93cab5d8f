//! The change-log source against a real PostgreSQL: the horizon-bounded id cursor, poison rows, NOTIFY.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use observers_core::actions::{Action, ActionResult, Invocation};
use observers_core::executor::{ActionSlot, CompiledObserver};
use observers_core::listener::ListenerConfig;
use observers_core::retry::RetryPolicy;
use observers_core::stores::checkpoint::CheckpointStore;
use observers_core::stores::dlq::{DeadLetterQueue, DlqFilter};
use observers_core::stores::source::{EventSource, SourceItem};
use observers_core::{Cursor, EventKind, ObserverExecutor, ObserverSet};
use observers_postgres::{
    ChangeLogListener, PgEventSource, PostgresCheckpointStore, PostgresDeadLetterQueue,
};
use sqlx::{Connection, PgPool};
use tokio::sync::watch;

async fn log_row(pool: &PgPool, entity_id: &str, op: &str) {
    sqlx::query("INSERT INTO observer_change_log (entity_type, entity_id, operation, after) VALUES ('Order', $1, $2, '{\"id\": 1}')")
        .bind(entity_id)
        .bind(op)
        .execute(pool)
        .await
        .unwrap();
}

/// Reads until `want` items are final, with a deadline (a row is delivered only once its
/// transaction is over).
/// Logs an insert of `entity_id` 100 ms from now, from a task of its own.
fn log_row_later(pool: &PgPool, entity_id: &'static str) -> tokio::task::JoinHandle<()> {
    let pool = pool.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        log_row(&pool, entity_id, "insert").await;
    })
}

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

/// A transaction takes its change-log id first and commits last. A reader that passed ids as it
/// saw them would skip it; the horizon (the open transaction's lock) holds the reader before it.
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
        "nothing after the open transaction's first id is final yet: {while_open:?}"
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
        "the slow transaction (smaller id) comes first, nothing skipped"
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

/// Writers send no `NOTIFY` (a notifying commit takes a cluster-wide lock); the reader is woken
/// by polling the horizon instead, and only when it moves.
#[sqlx::test(migrations = "../../migrations")]
async fn a_commit_wakes_a_waiting_reader_without_notify(pool: PgPool) {
    let notifying_triggers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
          WHERE t.tgrelid = 'observer_change_log'::regclass AND p.prosrc LIKE '%pg_notify%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(notifying_triggers, 0);

    let src = PgEventSource::new(pool.clone()).with_poll_interval(Duration::from_secs(30));
    // The first wake-up is the poller's start: read from the cursor.
    assert!(src.wait_for_changes(Duration::from_secs(30)).await);
    // Let the poller back off to idle before the write.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let writer = log_row_later(&pool, "1");
    assert!(
        src.wait_for_changes(Duration::from_secs(30)).await,
        "woken by the poller, not by the timeout"
    );
    writer.await.unwrap();
    assert!(
        !src.wait_for_changes(Duration::from_millis(200)).await,
        "no write, no wake-up"
    );
}

/// The wake-up poller asks for the horizon (a scan of `pg_locks`) only while the reader waits:
/// a reader working through a backlog reads the horizon itself with every batch, and under a
/// steady stream the poller's queries were most of the horizon reads, all for nothing. Once the
/// reader waits again, a commit still wakes it.
#[sqlx::test(migrations = "../../migrations")]
async fn the_poller_is_quiet_while_the_reader_reads(pool: PgPool) {
    sqlx::query(
        "INSERT INTO observer_change_log (entity_type, entity_id, operation, after)
         SELECT 'T', g::text, 'insert', '{}' FROM generate_series(1, 300) g",
    )
    .execute(&pool)
    .await
    .unwrap();
    let src = PgEventSource::new(pool.clone());
    assert!(src.wait_for_changes(Duration::from_secs(30)).await);
    let before = src.horizon_polls();
    // 30 batches, 10 ms apart: the old poller looked every few milliseconds meanwhile.
    let mut cursor = Cursor::START;
    let mut read = 0;
    loop {
        let batch = src.fetch(cursor, 10).await.unwrap();
        let Some(last) = batch.last() else { break };
        cursor = last.cursor();
        read += batch.len();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(read, 300);
    assert_eq!(
        src.horizon_polls() - before,
        0,
        "no poll while the reader was reading"
    );

    let writer = log_row_later(&pool, "301");
    assert!(
        src.wait_for_changes(Duration::from_secs(30)).await,
        "a waiting reader is woken by the poller"
    );
    writer.await.unwrap();
    assert!(
        src.horizon_polls() > before,
        "it polled while the reader waited"
    );
    assert!(
        src.horizon_poll_scans() >= 1,
        "a new id makes the poll read the horizon"
    );
    let batch = src.fetch(cursor, 10).await.unwrap();
    assert_eq!(batch.len(), 1);
    cursor = batch[0].cursor();

    // Idle: a reader that waits, times out and reads nothing, again and again, keeps the
    // poller's back-off (it does not start over at every wait).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = src.horizon_polls();
    let idle_scans = src.horizon_poll_scans();
    for _ in 0..8 {
        assert!(!src.wait_for_changes(Duration::from_millis(125)).await);
        assert!(src.fetch(cursor, 10).await.unwrap().is_empty());
    }
    let polls = src.horizon_polls() - idle;
    assert!(
        polls <= 20,
        "an idle second costs a few polls, not one every 2 ms: {polls}"
    );
    assert!(polls >= 1, "it polled while the reader waited");
    assert_eq!(
        src.horizon_poll_scans() - idle_scans,
        0,
        "with no id drawn, a poll reads the sequence, not pg_locks"
    );
}

/// Records the entity ids it is run for.
struct Recorder(Arc<Mutex<Vec<String>>>);

#[async_trait::async_trait]
impl Action for Recorder {
    fn type_name(&self) -> &'static str {
        "record"
    }

    async fn execute(&self, inv: &Invocation<'_>) -> observers_core::Result<ActionResult> {
        self.0.lock().unwrap().push(inv.event.entity_id.clone());
        Ok(ActionResult::default())
    }
}

/// A JSON object nested `depth` levels deep: `{"a": {"a": ... 1 ...}}`.
fn nested(depth: usize) -> String {
    format!("{}1{}", "{\"a\": ".repeat(depth), "}".repeat(depth))
}

/// A `jsonb` value PostgreSQL accepts but serde_json's parser refuses (nested deeper than its
/// recursion limit of 128) used to fail the whole batch decode, so the listener re-read the same
/// batch forever and nothing after it was delivered. Now only that row is poison: it goes to the
/// DLQ with its raw text, and the rows around it are delivered and checkpointed past.
#[sqlx::test(migrations = "../../migrations")]
async fn a_row_too_deep_to_parse_is_dead_lettered_and_the_stream_goes_on(pool: PgPool) {
    log_row(&pool, "good-1", "insert").await;
    sqlx::query("INSERT INTO observer_change_log (entity_type, entity_id, operation, after) VALUES ('Order', 'deep', 'insert', $1::text::jsonb)")
        .bind(nested(200))
        .execute(&pool)
        .await
        .unwrap();
    log_row(&pool, "good-3", "insert").await;

    let seen = Arc::new(Mutex::new(Vec::new()));
    let observer = CompiledObserver::new("rec", "*", EventKind::ALL.to_vec())
        .with_action(ActionSlot::new(Arc::new(Recorder(seen.clone())), "record"));
    let set = ObserverSet::new(vec![observer], RetryPolicy::none(), Duration::from_secs(5));
    let dlq = Arc::new(PostgresDeadLetterQueue::new(pool.clone()));
    let executor = Arc::new(ObserverExecutor::builder(set).dlq(dlq.clone()).build());
    let checkpoints = Arc::new(PostgresCheckpointStore::new(pool.clone()));
    let listener = ChangeLogListener::new(
        pool.clone(),
        checkpoints.clone(),
        executor,
        ListenerConfig {
            listener_id: "deep".into(),
            poll_interval: Duration::from_millis(50),
            ..ListenerConfig::default()
        },
    );
    let (stop, stop_rx) = watch::channel(false);
    let run = tokio::spawn(async move { listener.run(stop_rx).await });
    observers_core::testkit::eventually("checkpoint past row 3", Duration::from_secs(30), || {
        let checkpoints = checkpoints.clone();
        async move {
            checkpoints
                .load("deep")
                .await
                .unwrap()
                .is_some_and(|c| c.cursor.id >= 3)
        }
    })
    .await;
    stop.send(true).unwrap();
    let stats = run.await.unwrap().unwrap();
    assert_eq!(stats.poison, 1);
    assert_eq!(*seen.lock().unwrap(), ["good-1", "good-3"]);

    let items = dlq.list(&DlqFilter::default()).await.unwrap();
    assert_eq!(items.len(), 1, "{items:?}");
    let entry = &items[0].entry;
    assert_eq!(entry.error_code, "OBS-INVALID-EVENT");
    assert_eq!(entry.event.id, 2);
    assert_eq!(entry.event.entity_id, "deep");
    assert!(
        entry.error.contains("after"),
        "names the column: {}",
        entry.error
    );
    let raw = entry.event.after.as_ref().unwrap();
    let kept = raw["after"]
        .as_str()
        .expect("the unparseable value kept as text");
    assert_eq!(kept, nested(200), "the raw text is kept whole");
}

/// Writes `n` rows whose `after` holds a string of `len` bytes: `random` ones (hex of md5s,
/// which TOAST compression barely shrinks) or one repeated letter (which it shrinks a
/// hundredfold, so the stored size says little about what a reader receives).
async fn big_rows(pool: &PgPool, n: i32, len: i32, random: bool) {
    sqlx::query(
        "INSERT INTO observer_change_log (entity_type, entity_id, operation, after)
         SELECT 'Blob', g::text, 'insert',
                jsonb_build_object('data', CASE WHEN $3
                    THEN left((SELECT string_agg(md5(g::text || ':' || i::text), '')
                                 FROM generate_series(1, $2 / 32 + 1) i), $2)
                    ELSE repeat('x', $2) END)
           FROM generate_series(1, $1) g",
    )
    .bind(n)
    .bind(len)
    .bind(random)
    .execute(pool)
    .await
    .unwrap();
}

/// Reads everything after the start, batch by batch; returns the batch sizes.
async fn drain_batches(src: &PgEventSource, total: usize) -> Vec<usize> {
    let mut cursor = Cursor::START;
    let mut sizes = Vec::new();
    let mut ids = Vec::new();
    while ids.len() < total {
        let batch = fetch_final(src, cursor, 1000, 1).await;
        assert!(!batch.is_empty(), "stalled after {ids:?}");
        sizes.push(batch.len());
        ids.extend(batch.iter().map(|i| i.cursor().id));
        cursor = batch.last().unwrap().cursor();
    }
    let want: Vec<i64> = (1..=i64::try_from(total).unwrap()).collect();
    assert_eq!(ids, want, "every row once, in order");
    sizes
}

/// A backlog of big rows used to be read `batch_size` rows at a time whatever their size (300
/// rows of 2 MB took `observers run` to 1.5 GB). A batch now ends at the byte budget: ten rows
/// of 100 kB with a 250 kB budget come in batches of two.
#[sqlx::test(migrations = "../../migrations")]
async fn a_batch_is_bounded_in_bytes_as_well_as_rows(pool: PgPool) {
    big_rows(&pool, 10, 100_000, true).await;
    let src = PgEventSource::new(pool.clone()).with_max_batch_bytes(250_000);
    assert_eq!(drain_batches(&src, 10).await, [2, 2, 2, 2, 2]);
}

/// Stored sizes are compressed: rows of 1 MB that TOAST keeps in a few kB all pass the query's
/// budget, and the reader's own count of the bytes received still ends the batch at the budget.
#[sqlx::test(migrations = "../../migrations")]
async fn the_byte_budget_counts_what_arrives_not_what_is_stored(pool: PgPool) {
    big_rows(&pool, 5, 1_000_000, false).await;
    let stored: i64 =
        sqlx::query_scalar("SELECT sum(pg_column_size(after))::int8 FROM observer_change_log")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(stored < 500_000, "compressed as expected: {stored}");
    let src = PgEventSource::new(pool.clone()).with_max_batch_bytes(2_500_000);
    assert_eq!(drain_batches(&src, 5).await, [2, 2, 1]);
}

/// A single row bigger than the whole budget still goes through, alone.
#[sqlx::test(migrations = "../../migrations")]
async fn a_row_bigger_than_the_budget_still_progresses(pool: PgPool) {
    big_rows(&pool, 3, 300_000, true).await;
    let src = PgEventSource::new(pool.clone()).with_max_batch_bytes(1024);
    assert_eq!(drain_batches(&src, 3).await, [1, 1, 1]);
}

/// Rows whose ids follow the cursor one by one are final, so a read of them needs no horizon (a
/// scan of `pg_locks`). A gap right after the cursor needs it: an id a writer still holds is
/// not read past until the writer commits, and then its row and the rows committed behind it
/// arrive in id order; an id rolled back is passed.
#[sqlx::test(migrations = "../../migrations")]
async fn unbroken_rows_are_read_without_the_horizon_and_a_gap_is_waited_for(pool: PgPool) {
    for id in ["1", "2", "3"] {
        log_row(&pool, id, "insert").await;
    }
    let src = PgEventSource::new(pool.clone());
    let ids = |items: &[SourceItem]| -> Vec<String> {
        items
            .iter()
            .map(|i| match i {
                SourceItem::Event(e) => e.entity_id.clone(),
                SourceItem::Poison { error, .. } => panic!("poison: {error}"),
            })
            .collect()
    };
    let batch = src.fetch(Cursor::START, 100).await.unwrap();
    assert_eq!(ids(&batch), ["1", "2", "3"]);
    assert_eq!(src.read_horizons(), 0, "an unbroken run needs no horizon");
    let cursor = batch[2].cursor();

    // A writer in flight holds the next id; another commits the one after it.
    let held = row_in_flight(&pool, "held").await;
    log_row(&pool, "behind", "insert").await;
    for _ in 0..3 {
        assert!(
            src.fetch(cursor, 100).await.unwrap().is_empty(),
            "nothing is read past an id in flight"
        );
    }
    assert!(src.read_horizons() >= 1, "the gap asked for the horizon");
    held.commit().await.unwrap();
    let batch = fetch_final(&src, cursor, 100, 2).await;
    assert_eq!(ids(&batch), ["held", "behind"], "in id order");
    let cursor = batch[1].cursor();

    // An id rolled back is a gap for good: the horizon lets the reader pass it.
    row_in_flight(&pool, "gone").await.rollback().await.unwrap();
    log_row(&pool, "after gap", "insert").await;
    let batch = fetch_final(&src, cursor, 100, 1).await;
    assert_eq!(ids(&batch), ["after gap"]);
}

/// An open transaction that logged an insert of `entity_id` (its id drawn, not yet final).
async fn row_in_flight(
    pool: &PgPool,
    entity_id: &str,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO observer_change_log (entity_type, entity_id, operation, after)
         VALUES ('T', $1, 'insert', '{}')",
    )
    .bind(entity_id)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx
}

/// The poller reads only the sequence while no id was drawn past what the reader has; an id
/// drawn before the reader began to wait, by a transaction that commits while it waits, draws
/// no new id at commit. The poller still wakes the reader then (the sequence is past what it
/// knows final, so it reads the horizon), and the row is read.
#[sqlx::test(migrations = "../../migrations")]
async fn a_waiting_reader_is_woken_when_an_id_drawn_earlier_commits(pool: PgPool) {
    log_row(&pool, "first", "insert").await;
    let src = PgEventSource::new(pool.clone());
    let batch = fetch_final(&src, Cursor::START, 10, 1).await;
    let cursor = batch[0].cursor();
    let held = row_in_flight(&pool, "late").await;
    assert!(src.fetch(cursor, 10).await.unwrap().is_empty());
    let commit = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        held.commit().await.unwrap();
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (mut read, mut woken) = (Vec::new(), false);
    while read.is_empty() && tokio::time::Instant::now() < deadline {
        woken = src.wait_for_changes(Duration::from_secs(30)).await;
        read = src.fetch(cursor, 10).await.unwrap();
    }
    commit.await.unwrap();
    assert!(
        woken,
        "the reader was woken for it, not by its wait running out"
    );
    assert_eq!(
        read.len(),
        1,
        "the row committed while the reader waited is read"
    );
    assert!(
        src.horizon_poll_scans() >= 1,
        "the poller read the horizon for the drawn id"
    );
}
