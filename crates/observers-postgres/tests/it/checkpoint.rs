//! Tests of `PostgresCheckpointStore`: saves, compare-and-swap under contention, operator moves
//! with history, error streaks, and lease-fenced saves.

use std::sync::Arc;

use observers_core::stores::checkpoint::CheckpointStore;
use observers_core::{Cursor, ObserverError};
use observers_postgres::PostgresCheckpointStore;
use sqlx::PgPool;

fn store(pool: PgPool) -> PostgresCheckpointStore {
    PostgresCheckpointStore::new(pool).with_instance("test-host:1")
}

#[sqlx::test(migrations = "../../migrations")]
async fn save_load_list_delete_round_trip(pool: PgPool) {
    let s = store(pool);
    assert_eq!(s.load("orders").await.unwrap(), None);

    s.save("orders", Cursor::new(3), 3).await.unwrap();
    s.save("orders", Cursor::new(9), 6).await.unwrap();
    s.save("users", Cursor::new(1), 1).await.unwrap();

    let cp = s.load("orders").await.unwrap().unwrap();
    assert_eq!(cp.cursor, Cursor::new(9));
    assert_eq!(cp.events_processed, 9);

    let d = s.details("orders").await.unwrap().unwrap();
    assert_eq!(d.batch_size, 6);
    assert_eq!(d.event_count, 9);
    assert_eq!(d.updated_by.as_deref(), Some("test-host:1"));
    assert_eq!(d.lease_epoch, None);

    let listed: Vec<_> = s
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.listener_id, c.cursor))
        .collect();
    assert_eq!(
        listed,
        [
            ("orders".to_owned(), Cursor::new(9)),
            ("users".to_owned(), Cursor::new(1))
        ]
    );

    assert!(s.delete("orders").await.unwrap());
    assert!(!s.delete("orders").await.unwrap());
    assert_eq!(s.load("orders").await.unwrap(), None);
    assert_eq!(s.list().await.unwrap().len(), 1);
}

#[sqlx::test(migrations = "../../migrations")]
async fn last_processed_id_mirrors_the_cursor_id(pool: PgPool) {
    let s = store(pool.clone());
    s.save("l", Cursor::new(42), 1).await.unwrap();
    let (last_id,): (i64,) = sqlx::query_as(
        "SELECT last_processed_id FROM observer_checkpoints WHERE listener_id = 'l'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(last_id, 42);
}

#[sqlx::test(migrations = "../../migrations")]
async fn compare_and_swap_follows_the_expected_value(pool: PgPool) {
    let s = store(pool);
    let (a, b, c) = (Cursor::new(1), Cursor::new(2), Cursor::new(3));
    let cases: [(Option<Cursor>, Cursor, bool, Cursor); 5] = [
        (None, a, true, a),     // creates
        (None, b, false, a),    // already exists
        (Some(c), b, false, a), // wrong expectation
        (Some(a), b, true, b),  // moves
        (Some(b), a, true, a),  // backwards is allowed when expected matches
    ];
    for (i, (expected, new, moved, now)) in cases.into_iter().enumerate() {
        assert_eq!(
            s.compare_and_swap("l", expected, new).await.unwrap(),
            moved,
            "case {i}"
        );
        assert_eq!(s.load("l").await.unwrap().unwrap().cursor, now, "case {i}");
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn concurrent_compare_and_swap_has_exactly_one_winner(pool: PgPool) {
    let s = Arc::new(store(pool));

    // From nothing: 16 racers create the checkpoint.
    let mut tasks = Vec::new();
    for i in 0..16_i64 {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            let new = Cursor::new(i + 1);
            (new, s.compare_and_swap("race", None, new).await.unwrap())
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (new, won) = t.await.unwrap();
        if won {
            winners.push(new);
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let first = winners[0];
    assert_eq!(s.load("race").await.unwrap().unwrap().cursor, first);

    // From a known value: 16 racers expect it.
    let mut tasks = Vec::new();
    for i in 0..16_i64 {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            let new = Cursor::new(100 + i + 1);
            (
                new,
                s.compare_and_swap("race", Some(first), new).await.unwrap(),
            )
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (new, won) = t.await.unwrap();
        if won {
            winners.push(new);
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert_eq!(s.load("race").await.unwrap().unwrap().cursor, winners[0]);
}

#[sqlx::test(migrations = "../../migrations")]
async fn negative_ids_are_rejected_and_write_nothing(pool: PgPool) {
    let s = store(pool);
    let max = Cursor::new(i64::MAX);
    s.save("l", max, 1).await.unwrap();
    assert_eq!(s.load("l").await.unwrap().unwrap().cursor, max);

    let negative = Cursor::new(-5);
    assert!(s.compare_and_swap("l", Some(max), negative).await.is_err());
    assert!(s.compare_and_swap("other", None, negative).await.is_err());
    assert!(s.set("l", negative, "too far").await.is_err());
    assert!(
        s.save_fenced("l", negative, 1, "leader", "me", 1)
            .await
            .is_err_and(|e| e.code() == "OBS-PG-INVALID")
    );
    let err = s.save("l", Cursor::new(-5), 1).await.unwrap_err();
    assert!(err.to_string().contains("negative"), "{err}");

    assert_eq!(s.load("l").await.unwrap().unwrap().cursor, max);
    assert_eq!(s.load("other").await.unwrap(), None);
    assert!(s.history("l", 10).await.unwrap().is_empty());
}

#[sqlx::test(migrations = "../../migrations")]
async fn set_moves_backwards_and_writes_history(pool: PgPool) {
    let s = store(pool);

    assert_eq!(
        s.set("l", Cursor::new(5), "initial position")
            .await
            .unwrap(),
        None
    );
    s.save("l", Cursor::new(60), 10).await.unwrap();
    assert_eq!(
        s.set("l", Cursor::new(1), "replay after outage")
            .await
            .unwrap(),
        Some(Cursor::new(60))
    );
    let cp = s.load("l").await.unwrap().unwrap();
    assert_eq!(cp.cursor, Cursor::new(1));
    assert_eq!(cp.events_processed, 10, "a move does not change the count");

    let history = s.history("l", 10).await.unwrap();
    let rows: Vec<_> = history
        .iter()
        .map(|h| (h.old, h.new, h.reason.as_str(), h.changed_by.as_deref()))
        .collect();
    assert_eq!(
        rows,
        [
            (
                Some(Cursor::new(60)),
                Cursor::new(1),
                "replay after outage",
                Some("test-host:1")
            ),
            (
                None,
                Cursor::new(5),
                "initial position",
                Some("test-host:1")
            ),
        ]
    );
    assert_eq!(s.history("l", 1).await.unwrap().len(), 1);
    assert!(s.history("other", 10).await.unwrap().is_empty());

    // Serializable for `status --json`.
    let json = serde_json::to_value(&history[0]).unwrap();
    assert_eq!(json["new"]["id"], 1);
    assert_eq!(json["reason"], "replay after outage");
}

#[sqlx::test(migrations = "../../migrations")]
async fn errors_are_counted_and_cleared_by_a_save(pool: PgPool) {
    let s = store(pool);
    assert!(
        !s.record_error("l", "boom").await.unwrap(),
        "no checkpoint is created by an error"
    );
    assert_eq!(s.load("l").await.unwrap(), None);

    s.save("l", Cursor::new(1), 1).await.unwrap();
    assert!(s.record_error("l", "first").await.unwrap());
    assert!(s.record_error("l", "second").await.unwrap());
    let d = s.details("l").await.unwrap().unwrap();
    assert_eq!(
        (d.consecutive_errors, d.last_error.as_deref()),
        (2, Some("second"))
    );

    let long = "é".repeat(5000);
    s.record_error("l", &long).await.unwrap();
    let d = s.details("l").await.unwrap().unwrap();
    assert!(d.last_error.unwrap().len() <= 4096);

    s.save("l", Cursor::new(2), 1).await.unwrap();
    let d = s.details("l").await.unwrap().unwrap();
    assert_eq!((d.consecutive_errors, d.last_error), (0, None));
}

const LEASES: &str = "CREATE TABLE IF NOT EXISTS observer_leases ( \
     name text PRIMARY KEY, holder text NOT NULL, epoch bigint NOT NULL, \
     expires_at timestamptz NOT NULL)";

async fn lease(pool: &PgPool, holder: &str, epoch: i64, ttl_secs: i64) {
    sqlx::query(LEASES).execute(pool).await.unwrap();
    sqlx::query(
        "INSERT INTO observer_leases (name, holder, epoch, expires_at) \
         VALUES ('leader', $1, $2, now() + make_interval(secs => $3)) \
         ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, epoch = EXCLUDED.epoch, \
           expires_at = EXCLUDED.expires_at",
    )
    .bind(holder)
    .bind(epoch)
    .bind(ttl_secs)
    .execute(pool)
    .await
    .unwrap();
}

fn is_fenced(r: &Result<(), ObserverError>) -> bool {
    matches!(r, Err(ObserverError::Fenced(_)))
}

#[sqlx::test(migrations = "../../migrations")]
async fn fenced_save_needs_the_current_lease(pool: PgPool) {
    let s = store(pool.clone());
    lease(&pool, "a", 3, 30).await;

    s.save_fenced("l", Cursor::new(1), 4, "leader", "a", 3)
        .await
        .unwrap();
    let d = s.details("l").await.unwrap().unwrap();
    assert_eq!(
        (d.cursor, d.event_count, d.lease_epoch),
        (Cursor::new(1), 4, Some(3))
    );

    // Refused: stale epoch, another holder, unknown lease name.
    let refused = [("leader", "a", 2), ("leader", "b", 3), ("follower", "a", 3)];
    for (name, holder, epoch) in refused {
        assert!(
            is_fenced(
                &s.save_fenced("l", Cursor::new(9), 1, name, holder, epoch)
                    .await
            ),
            "{name}/{holder}/{epoch}"
        );
    }

    // Taken over by b under epoch 4: a's epoch 3 is now stale, b's writes go through.
    lease(&pool, "b", 4, 30).await;
    assert!(is_fenced(
        &s.save_fenced("l", Cursor::new(9), 1, "leader", "a", 3)
            .await
    ));
    s.save_fenced("l", Cursor::new(1), 1, "leader", "b", 4)
        .await
        .unwrap();

    // Expired by the database clock.
    lease(&pool, "b", 4, -1).await;
    let err = s
        .save_fenced("l", Cursor::new(9), 1, "leader", "b", 4)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "OBS-FENCED");
    assert!(err.to_string().contains("re-acquire"), "{err}");

    let d = s.details("l").await.unwrap().unwrap();
    assert_eq!(
        (d.cursor, d.event_count, d.lease_epoch),
        (Cursor::new(1), 5, Some(4))
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn fenced_save_never_moves_backwards(pool: PgPool) {
    let s = store(pool.clone());
    lease(&pool, "a", 1, 30).await;

    s.save_fenced("l", Cursor::new(5), 2, "leader", "a", 1)
        .await
        .unwrap();
    for older in [Cursor::new(4), Cursor::new(1), Cursor::START] {
        s.save_fenced("l", older, 1, "leader", "a", 1)
            .await
            .unwrap();
        assert_eq!(s.load("l").await.unwrap().unwrap().cursor, Cursor::new(5));
    }
    s.save_fenced("l", Cursor::new(11), 1, "leader", "a", 1)
        .await
        .unwrap();
    let cp = s.load("l").await.unwrap().unwrap();
    assert_eq!((cp.cursor, cp.events_processed), (Cursor::new(11), 6));
}

#[sqlx::test(migrations = "../../migrations")]
async fn fenced_save_refuses_a_row_written_under_a_newer_epoch(pool: PgPool) {
    let s = store(pool.clone());
    lease(&pool, "b", 7, 30).await;
    s.save_fenced("l", Cursor::new(5), 1, "leader", "b", 7)
        .await
        .unwrap();

    // Even if the lease table were reset to an older epoch, the row's epoch fences the write.
    lease(&pool, "a", 6, 30).await;
    assert!(is_fenced(
        &s.save_fenced("l", Cursor::new(6), 1, "leader", "a", 6)
            .await
    ));
    assert_eq!(s.load("l").await.unwrap().unwrap().cursor, Cursor::new(5));

    // A plain save is unfenced and clears the epoch.
    s.save("l", Cursor::new(6), 1).await.unwrap();
    assert_eq!(s.details("l").await.unwrap().unwrap().lease_epoch, None);
}

fn names(consumer: &str, n: u32) -> Vec<String> {
    if n <= 1 {
        return vec![consumer.to_owned()];
    }
    (0..n).map(|p| format!("{consumer}#p{p}")).collect()
}

async fn cursors(store: &PostgresCheckpointStore) -> Vec<(String, Cursor)> {
    store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.listener_id, c.cursor))
        .collect()
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_partition_count_change_restarts_every_partition_from_the_lowest_cursor(pool: PgPool) {
    let store = PostgresCheckpointStore::new(pool.clone()).with_instance("t");
    // A fresh single listener keeps its start-position policy: no checkpoint is created.
    assert_eq!(
        store
            .adopt_partitions("c", 1, &names("c", 1))
            .await
            .unwrap(),
        None
    );
    assert!(cursors(&store).await.is_empty());
    // Fresh with four: every partition from the start of the log, no handover.
    assert_eq!(
        store
            .adopt_partitions("c", 4, &names("c", 4))
            .await
            .unwrap(),
        None
    );
    assert_eq!(cursors(&store).await.len(), 4);
    for (p, id) in [(0, 50), (1, 90), (2, 10), (3, 70)] {
        store
            .save(&format!("c#p{p}"), Cursor::new(id), 1)
            .await
            .unwrap();
    }
    // An unrelated consumer whose name shares the prefix is left alone.
    store.save("c#pX", Cursor::new(9), 1).await.unwrap();
    store.save("cc", Cursor::new(9), 1).await.unwrap();
    // Same count again: nothing moves.
    assert_eq!(
        store
            .adopt_partitions("c", 4, &names("c", 4))
            .await
            .unwrap(),
        None
    );
    // 4 → 2: both start from the lowest (p2's), p2 and p3 are retired, all on record.
    let h = store
        .adopt_partitions("c", 2, &names("c", 2))
        .await
        .unwrap()
        .expect("a handover");
    assert_eq!((h.from, h.to, h.start), (Some(4), 2, Cursor::new(10)));
    assert_eq!(h.retired, vec!["c#p2".to_owned(), "c#p3".to_owned()]);
    assert_eq!(
        cursors(&store).await,
        vec![
            ("c#p0".to_owned(), Cursor::new(10)),
            ("c#p1".to_owned(), Cursor::new(10)),
            ("c#pX".to_owned(), Cursor::new(9)),
            ("cc".to_owned(), Cursor::new(9)),
        ]
    );
    for name in ["c#p0", "c#p1", "c#p2", "c#p3"] {
        let moves = store.history(name, 10).await.unwrap();
        assert_eq!(moves.len(), 1, "{name}");
        assert!(
            moves[0].reason.contains("from 4 to 2"),
            "{}",
            moves[0].reason
        );
        assert_eq!(moves[0].new, Cursor::new(10));
    }
    // 2 → 1 (the unpartitioned listener): its own checkpoint from the lowest.
    store.save("c#p0", Cursor::new(11), 1).await.unwrap();
    let h = store
        .adopt_partitions("c", 1, &names("c", 1))
        .await
        .unwrap()
        .expect("a handover");
    assert_eq!(h.start, Cursor::new(10));
    assert_eq!(
        store.load("c").await.unwrap().unwrap().cursor,
        Cursor::new(10)
    );
    assert!(store.load("c#p0").await.unwrap().is_none());
}

#[sqlx::test(migrations = "../../migrations")]
async fn checkpoints_from_before_layouts_were_recorded_are_handed_over(pool: PgPool) {
    let store = PostgresCheckpointStore::new(pool.clone()).with_instance("t");
    // Written by a version that recorded no layout: two partitions, restarted with four.
    store.save("c#p0", Cursor::new(30), 1).await.unwrap();
    store.save("c#p1", Cursor::new(20), 1).await.unwrap();
    let h = store
        .adopt_partitions("c", 4, &names("c", 4))
        .await
        .unwrap()
        .expect("a handover");
    assert_eq!((h.from, h.start), (None, Cursor::new(20)));
    assert!(h.retired.is_empty());
    let all = cursors(&store).await;
    assert_eq!(all.len(), 4);
    assert!(all.iter().all(|(_, c)| *c == Cursor::new(20)), "{all:?}");
}

#[sqlx::test(migrations = "../../migrations")]
async fn concurrent_starts_hand_over_once(pool: PgPool) {
    let store = Arc::new(PostgresCheckpointStore::new(pool.clone()).with_instance("t"));
    store
        .adopt_partitions("c", 4, &names("c", 4))
        .await
        .unwrap();
    for p in 0..4 {
        store
            .save(&format!("c#p{p}"), Cursor::new(100 - i64::from(p)), 1)
            .await
            .unwrap();
    }
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let s = store.clone();
            tokio::spawn(async move { s.adopt_partitions("c", 2, &names("c", 2)).await.unwrap() })
        })
        .collect();
    let mut handovers = 0;
    for t in tasks {
        handovers += usize::from(t.await.unwrap().is_some());
    }
    assert_eq!(
        handovers, 1,
        "one instance hands over, the others find it done"
    );
    assert_eq!(
        cursors(&store).await,
        vec![
            ("c#p0".to_owned(), Cursor::new(97)),
            ("c#p1".to_owned(), Cursor::new(97)),
        ]
    );
}

/// `observers migrate` converts checkpoints of the old `(txid, id)` cursor: each consumer resumes
/// just before the first row it had not passed in the old order (rows it had passed above that
/// are delivered again, none is skipped), and one that had passed everything resumes after every
/// id drawn.
#[sqlx::test(migrations = false)]
async fn old_pair_cursors_are_converted_without_skipping(pool: PgPool) {
    let migrator = &observers_postgres::MIGRATOR;
    migrator.run_to(20_260_101_000_016, &pool).await.unwrap();
    // Old order: (100, 1), (101, 3), (102, 2), (103, 4).
    for (txid, entity) in [(100, "a"), (102, "b"), (101, "c"), (103, "d")] {
        sqlx::query(
            "INSERT INTO observer_change_log (txid, entity_type, entity_id, operation, after)
             VALUES ($1::text::xid8, 'Order', $2, 'insert', '{}')",
        )
        .bind(i64::from(txid).to_string())
        .bind(entity)
        .execute(&pool)
        .await
        .unwrap();
    }
    for (listener, txid, id) in [("midway", 101, 3), ("done", 103, 4), ("new", 0, 0)] {
        sqlx::query(
            "INSERT INTO observer_checkpoints (listener_id, cursor_txid, cursor_id, last_processed_id)
             VALUES ($1, $2, $3, $3)",
        )
        .bind(listener)
        .bind(i64::from(txid))
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    }

    migrator.run(&pool).await.unwrap();

    let s = store(pool.clone());
    let cursor = async |l: &str| s.load(l).await.unwrap().unwrap().cursor;
    assert_eq!(
        cursor("midway").await,
        Cursor::new(1),
        "rows 2 and 4 were not passed"
    );
    assert_eq!(cursor("done").await, Cursor::new(4));
    assert_eq!(cursor("new").await, Cursor::START);
    let moved = s.history("midway", 10).await.unwrap();
    assert_eq!(moved.len(), 1);
    assert_eq!(
        (moved[0].old, moved[0].new),
        (Some(Cursor::new(3)), Cursor::new(1))
    );
    assert!(moved[0].reason.contains("upgrade"), "{}", moved[0].reason);

    // New writers after the upgrade draw ids above every converted cursor.
    let horizon = observers_postgres::PgEventSource::new(pool.clone())
        .horizon()
        .await
        .unwrap();
    assert_eq!(horizon, 4);
}
