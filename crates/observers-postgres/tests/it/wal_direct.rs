//! Direct delivery from the replication stream (`wal_delivery = "direct"`) against a real
//! PostgreSQL with `wal_level = logical` (`OBSERVERS_WAL_DATABASE_URL`, as the relay's suite).
//!
//! Checked: per-entity commit order under interleaved transactions and the ordering suite's
//! randomized writers; values equal the trigger's `to_jsonb` for every common type, numbers
//! beyond a double included; a consumer killed mid-stream loses nothing and redelivers with the
//! same ids (so the same idempotency keys), a clean stop redelivers nothing; a re-read gets the
//! same events again; every event reaches a listener that never polls; a transaction bigger
//! than the buffer; the switch from the relay delivers
//! nothing twice and skips nothing; nothing is written to the change log.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use observers_core::actions::{Action, ActionResult, Invocation};
use observers_core::executor::{ActionSlot, CompiledObserver};
use observers_core::listener::ListenerConfig;
use observers_core::retry::RetryPolicy;
use observers_core::stores::source::SourceItem;
use observers_core::{Cursor, EntityEvent, EventKind, ObserverExecutor, ObserverSet};
use observers_postgres::capture::{self, CaptureSpec};
use observers_postgres::wal::direct::{DIRECT_ID_BASE, WalDirect, WalDirectListener};
use serde_json::Value;
use tokio::sync::watch;

use crate::wal::{EVERY_TYPE, EVERY_VALUE, WalDb, stop};

/// Every event it runs for, with the idempotency key it was given.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(EntityEvent, String)>>>);

impl Seen {
    fn events(&self) -> Vec<(EntityEvent, String)> {
        self.0.lock().unwrap().clone()
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// Waits (with a deadline) until at least `n` events were run.
    async fn at_least(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {n} events delivered",
                self.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

struct Recorder(Seen);

#[async_trait::async_trait]
impl Action for Recorder {
    fn type_name(&self) -> &'static str {
        "record"
    }

    async fn execute(&self, inv: &Invocation<'_>) -> observers_core::Result<ActionResult> {
        (self.0)
            .0
            .lock()
            .unwrap()
            .push((inv.event.clone(), inv.idempotency_key.to_owned()));
        Ok(ActionResult::default())
    }
}

impl WalDb {
    fn direct(&self) -> WalDirect {
        WalDirect::new(
            self.pool.clone(),
            &self.url,
            self.settings.clone(),
            "direct",
            None,
        )
        .unwrap()
    }

    /// The stream of a direct consumer, running until the sender says stop, and the event source
    /// over it (nothing saves: a reader of its own drives it).
    fn stream(
        &self,
    ) -> (
        Arc<dyn observers_core::stores::source::EventSource>,
        (watch::Sender<bool>, tokio::task::JoinHandle<()>),
    ) {
        let direct = Arc::new(self.direct());
        let (source, _) = direct.parts();
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(async move { direct.run(rx).await });
        (source, (stop, task))
    }

    /// A direct consumer delivering to `seen`, running until the sender says stop.
    fn deliver(
        &self,
        seen: &Seen,
    ) -> (
        watch::Sender<bool>,
        tokio::task::JoinHandle<observers_core::Result<observers_core::listener::ListenerStats>>,
    ) {
        Self::deliver_with(seen, self.direct(), Duration::from_millis(50))
    }

    /// [`WalDb::deliver`] through `direct`, the listener polling every `poll_interval` (it is
    /// also woken by the stream).
    fn deliver_with(
        seen: &Seen,
        direct: WalDirect,
        poll_interval: Duration,
    ) -> (
        watch::Sender<bool>,
        tokio::task::JoinHandle<observers_core::Result<observers_core::listener::ListenerStats>>,
    ) {
        let observer = CompiledObserver::new("rec", "*", EventKind::EVERY.to_vec())
            .with_action(ActionSlot::new(Arc::new(Recorder(seen.clone())), "record"));
        let set = ObserverSet::new(vec![observer], RetryPolicy::none(), Duration::from_secs(5));
        let executor = Arc::new(ObserverExecutor::builder(set).build());
        let listener = WalDirectListener::new(
            direct,
            executor,
            &ListenerConfig {
                listener_id: "direct".into(),
                poll_interval,
                batch_size: 100,
                ..ListenerConfig::default()
            },
        );
        let (tx, rx) = watch::channel(false);
        (tx, tokio::spawn(async move { listener.run(rx).await }))
    }

    /// Whether the slot's confirmed position is at or past `lsn`.
    async fn confirmed(&self, lsn: &str) -> bool {
        sqlx::query_scalar(
            "SELECT $1::pg_lsn <= confirmed_flush_lsn FROM pg_replication_slots
              WHERE slot_name = $2",
        )
        .bind(lsn)
        .bind(&self.settings.slot)
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    async fn change_log_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM observer_change_log")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// The direct consumer's saved checkpoint: the event id and the LSN.
    async fn saved(&self) -> Option<(i64, String)> {
        sqlx::query_as(
            "SELECT cursor_id, wal_lsn::text FROM observer_checkpoints
              WHERE listener_id = 'direct:wal'",
        )
        .fetch_optional(&self.pool)
        .await
        .unwrap()
    }
}

async fn stop_listener(
    run: (
        watch::Sender<bool>,
        tokio::task::JoinHandle<observers_core::Result<observers_core::listener::ListenerStats>>,
    ),
) {
    run.0.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(30), run.1)
        .await
        .expect("the consumer stops on shutdown")
        .unwrap()
        .unwrap();
}

fn field(e: &EntityEvent, name: &str) -> String {
    e.after
        .as_ref()
        .or(e.before.as_ref())
        .and_then(|r| r.get(name))
        .map(ToString::to_string)
        .unwrap_or_default()
}

/// Two sessions whose transactions interleave (the later one to begin commits first), a
/// logical message with tenant and user, a delete and a TRUNCATE, on `orders`.
async fn write_interleaved(db: &WalDb) {
    db.interleave(&[
        (0, "BEGIN; INSERT INTO orders VALUES (2, 'a-first', 1)"),
        (1, "BEGIN; UPDATE orders SET status = 'paid' WHERE id = 1; COMMIT"),
        (0, "UPDATE orders SET status = 'shipped' WHERE id = 1; COMMIT"),
        (
            1,
            "BEGIN; SELECT pg_logical_emit_message(true, 'observers', '{\"tenant_id\":\"acme\",\"user_id\":\"u7\"}');
             DELETE FROM orders WHERE id = 2; COMMIT",
        ),
        (0, "INSERT INTO orders VALUES (3, 'x', 0); TRUNCATE orders"),
    ])
    .await;
}

/// Interleaved transactions (the later one to begin commits first), a numeric beyond a double,
/// the tenant and user from a logical message, deletes and TRUNCATE: delivered in commit order
/// with exact values, ids above the change log's range, nothing written to the change log; the
/// checkpoint row holds the last event's id and its transaction's LSN.
#[tokio::test]
async fn direct_delivery_keeps_commit_order_and_exact_values() {
    let Some(db) = WalDb::new("direct_order").await else {
        return;
    };
    db.exec("CREATE TABLE orders (id int PRIMARY KEY, status text, total numeric)")
        .await;
    db.capture("orders", "Order").await;
    db.exec("INSERT INTO orders VALUES (1, 'new', 123456789012345678901234567890.000000000000000000001)")
        .await;
    write_interleaved(&db).await;
    // The consumer starts after all of it: the slot kept everything since `capture enable`.
    let seen = Seen::default();
    let run = db.deliver(&seen);
    seen.at_least(7).await;
    // The save follows the batch; wait for it to cover the last event.
    let last_id = seen.events().iter().map(|(e, _)| e.id).max().unwrap();
    db.eventually(
        "the checkpoint covers the last event",
        "SELECT coalesce((SELECT cursor_id >= $1::bigint AND wal_lsn IS NOT NULL
                            FROM observer_checkpoints WHERE listener_id = 'direct:wal'), false)",
        &[&last_id.to_string()],
    )
    .await;
    // Once saved, the LSN is confirmed to the slot.
    db.eventually(
        "the saved LSN is confirmed to the slot",
        "SELECT coalesce((SELECT c.wal_lsn <= s.confirmed_flush_lsn
                            FROM observer_checkpoints c, pg_replication_slots s
                           WHERE c.listener_id = 'direct:wal' AND s.slot_name = $1), false)",
        &[&db.settings.slot],
    )
    .await;
    stop_listener(run).await;
    // Different entities run concurrently, so the order they ran in is per entity; the ids
    // follow the stream, in commit order.
    let mut events = seen.events();
    let ran: Vec<(String, String)> = events
        .iter()
        .filter(|(e, _)| e.entity_id == "1")
        .map(|(e, _)| (e.kind.as_str().to_owned(), field(e, "status")))
        .collect();
    assert_eq!(
        ran,
        [
            ("insert".to_owned(), "\"new\"".to_owned()),
            ("update".to_owned(), "\"paid\"".to_owned()),
            ("update".to_owned(), "\"shipped\"".to_owned()),
        ],
        "order 1's changes ran in commit order"
    );
    events.sort_by_key(|(e, _)| e.id);
    let got: Vec<(String, String, String, Option<String>)> = events
        .iter()
        .map(|(e, _)| {
            (
                e.kind.as_str().to_owned(),
                e.entity_id.clone(),
                field(e, "status"),
                e.tenant_id.clone(),
            )
        })
        .collect();
    let expected: Vec<(String, String, String, Option<String>)> = [
        ("insert", "1", "\"new\"", None),
        ("update", "1", "\"paid\"", None),
        ("insert", "2", "\"a-first\"", None),
        ("update", "1", "\"shipped\"", None),
        ("delete", "2", "\"a-first\"", Some("acme")),
        ("insert", "3", "\"x\"", None),
        ("truncate", "", "", None),
    ]
    .iter()
    .map(|(k, id, s, t)| {
        (
            (*k).to_owned(),
            (*id).to_owned(),
            (*s).to_owned(),
            t.map(str::to_owned),
        )
    })
    .collect();
    assert_eq!(got, expected, "commit order");
    assert_eq!(
        field(&events[0].0, "total"),
        "123456789012345678901234567890.000000000000000000001",
        "the numeric digit for digit"
    );
    assert_eq!(events[4].0.user_id.as_deref(), Some("u7"));
    assert_eq!(
        events[1].0.before.as_ref().unwrap()["status"],
        "new",
        "REPLICA IDENTITY FULL gives before"
    );
    let ids: Vec<i64> = events.iter().map(|(e, _)| e.id).collect();
    assert!(ids[0] > DIRECT_ID_BASE, "ids above the change log's range");
    assert_eq!(events[0].1, format!("{}:rec:0", ids[0]));
    assert_eq!(db.change_log_rows().await, 0, "nothing copied");
    let (saved, _) = db.saved().await.unwrap();
    assert_eq!(saved, *ids.last().unwrap());
    db.drop().await;
}

/// Consumers killed at random points (the task aborted: no final save, the connection drops)
/// while writers commit: every change is delivered, in commit order per entity; a change
/// delivered twice carries the same id and idempotency key both times. After a clean stop, a
/// restart delivers nothing again.
#[tokio::test]
async fn killed_consumers_lose_nothing_and_redeliver_with_the_same_ids() {
    let Some(db) = WalDb::new("direct_kill").await else {
        return;
    };
    db.exec("CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL)")
        .await;
    db.capture("counters", "Counter").await;
    let writer = {
        let pool = db.pool.clone();
        tokio::spawn(async move {
            for n in 0..400 {
                sqlx::query(
                    "INSERT INTO counters VALUES ($1, $2)
                     ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n",
                )
                .bind(n % 5)
                .bind(n)
                .execute(&pool)
                .await
                .unwrap();
                if n % 37 == 0 {
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
            }
        })
    };
    let seen = Seen::default();
    let mut kills = 0;
    while !writer.is_finished() {
        let run = db.deliver(&seen);
        tokio::time::sleep(Duration::from_millis(60 + 40 * kills)).await;
        run.1.abort();
        let _ = run.1.await;
        kills += 1;
    }
    writer.await.unwrap();
    let run = db.deliver(&seen);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let distinct: std::collections::BTreeSet<i64> =
            seen.events().iter().map(|(e, _)| e.id).collect();
        if distinct.len() >= 400 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of 400 changes delivered",
            distinct.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_listener(run).await;
    assert!(kills >= 2, "the consumer was killed {kills} times");

    let mut by_id: BTreeMap<i64, (String, String)> = BTreeMap::new();
    for (e, key) in seen.events() {
        let value = (field(&e, "n"), key);
        let first = by_id.entry(e.id).or_insert_with(|| value.clone());
        assert_eq!(
            *first, value,
            "event {} redelivered with another change or key",
            e.id
        );
    }
    let values: Vec<i64> = by_id.values().map(|(n, _)| n.parse().unwrap()).collect();
    assert_eq!(
        values,
        (0..400).collect::<Vec<_>>(),
        "every change, in commit order"
    );

    // A clean stop saved everything: a restart delivers nothing again.
    let again = Seen::default();
    let run = db.deliver(&again);
    db.exec("INSERT INTO counters VALUES (100, 1000)").await;
    again.at_least(1).await;
    stop_listener(run).await;
    let events = again.events();
    assert_eq!(
        events.len(),
        1,
        "only the new change: {:?}",
        events.iter().map(|(e, _)| e.id).collect::<Vec<_>>()
    );
    assert_eq!(field(&events[0].0, "n"), "1000");
    assert!(events[0].0.id > *by_id.keys().last().unwrap());
    assert_eq!(db.change_log_rows().await, 0);
    db.drop().await;
}

/// A reader that asks again for events it was handed (an outcome could not be recorded) gets
/// the same events again, ids included, and then the ones after them.
#[tokio::test]
async fn a_reread_gets_the_same_events_again() {
    let Some(db) = WalDb::new("direct_reread").await else {
        return;
    };
    db.exec("CREATE TABLE items (id int PRIMARY KEY, v int)")
        .await;
    db.capture("items", "Item").await;
    db.exec("INSERT INTO items SELECT g, g * 10 FROM generate_series(1, 5) g")
        .await;
    let (source, stream) = db.stream();
    let read = |after: Cursor, n: usize| {
        let source = source.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let items = source.fetch(after, n).await.unwrap();
                if !items.is_empty() {
                    return items;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "nothing after {after}"
                );
                source.wait_for_changes(Duration::from_millis(50)).await;
            }
        }
    };
    let key = |items: &[SourceItem]| -> Vec<(i64, String)> {
        items
            .iter()
            .map(|i| match i {
                SourceItem::Event(e) => (e.id, field(e, "v")),
                SourceItem::Poison { error, .. } => panic!("poison: {error}"),
            })
            .collect()
    };
    let first = key(&read(Cursor::START, 3).await);
    assert_eq!(first.len(), 3);
    let rest = key(&read(Cursor::new(first[2].0), 10).await);
    // Asked again after the first: the second and third come again, then the rest.
    let mut again = key(&read(Cursor::new(first[0].0), 2).await);
    again.extend(key(&read(Cursor::new(again[1].0), 10).await));
    assert_eq!(again[..2], first[1..]);
    assert_eq!(again[2..], rest[..]);
    assert_eq!(
        rest.iter()
            .chain(&first)
            .map(|(_, v)| v.parse::<i64>().unwrap())
            .sum::<i64>(),
        150
    );
    stream.0.send(true).unwrap();
    stream.1.await.unwrap();
    db.drop().await;
}

/// Every common type is delivered as the trigger's `to_jsonb` renders it: one table captured by
/// trigger (read from the change log), one through the stream, the same rows written to both.
#[tokio::test]
async fn direct_values_equal_the_triggers_to_jsonb_for_every_type() {
    let Some(db) = WalDb::new("direct_types").await else {
        return;
    };
    db.exec(&EVERY_TYPE.replace("{t}", "by_wal")).await;
    db.exec(
        &EVERY_TYPE
            .replace("CREATE TYPE mood AS ENUM ('ok', 'sad');", "")
            .replace("{t}", "by_trigger"),
    )
    .await;
    db.capture("by_wal", "Wal").await;
    capture::enable(&db.pool, &CaptureSpec::new("by_trigger", "Trigger"))
        .await
        .unwrap();
    for t in ["by_trigger", "by_wal"] {
        db.exec(&EVERY_VALUE.replace("{t}", t)).await;
    }
    db.exec("UPDATE by_wal SET b = true WHERE id = 3; UPDATE by_trigger SET b = true WHERE id = 3")
        .await;
    let seen = Seen::default();
    let run = db.deliver(&seen);
    seen.at_least(4).await;
    stop_listener(run).await;
    let wal: Vec<(String, Option<Value>, Option<Value>)> = seen
        .events()
        .into_iter()
        .map(|(e, _)| (e.entity_id, e.before, e.after))
        .collect();
    let trigger: Vec<(String, Option<Value>, Option<Value>)> = db
        .events(4)
        .await
        .into_iter()
        .map(|e| (e.entity_id, e.before, e.after))
        .collect();
    assert_eq!(wal.len(), 4, "{wal:?}");
    assert_eq!(wal, trigger, "both kinds give the same events");
    assert_eq!(
        wal[0].2.as_ref().unwrap()["n"].to_string(),
        "12345678901234567.89"
    );
    assert_eq!(
        wal[3].2.as_ref().unwrap()["t"].as_str().unwrap().len(),
        100_000
    );
    db.drop().await;
}

/// The listener learns of new events only from the stream (it would poll once an hour): bursts
/// of one-row transactions from 8 writers committing interleaved, each burst followed by a quiet
/// spell, then one transaction of more events than the session holds back before it tells the
/// listener. Every event arrives without a poll, once, and in commit order per entity.
#[tokio::test]
async fn every_event_reaches_the_listener_without_a_poll() {
    const WRITERS: i32 = 8;
    const COMMITS: i32 = 120;
    let Some(db) = WalDb::new("direct_announce").await else {
        return;
    };
    db.exec("CREATE TABLE items (id int PRIMARY KEY, v int)")
        .await;
    db.capture("items", "Item").await;
    let seen = Seen::default();
    let run = WalDb::deliver_with(&seen, db.direct(), Duration::from_secs(3600));
    let writers: Vec<_> = (1..=WRITERS)
        .map(|w| {
            let pool = db.pool.clone();
            tokio::spawn(async move {
                for v in 0..COMMITS {
                    let sql = if v == 0 {
                        format!("INSERT INTO items VALUES ({w}, 0)")
                    } else {
                        format!("UPDATE items SET v = {v} WHERE id = {w}")
                    };
                    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                        .execute(&pool)
                        .await
                        .unwrap();
                    if v % 30 == 29 {
                        // The burst ends: the stream runs dry before the next.
                        tokio::time::sleep(Duration::from_millis(
                            40 + 10 * u64::from(w.unsigned_abs()),
                        ))
                        .await;
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let small = usize::try_from(WRITERS * COMMITS).unwrap();
    seen.at_least(small).await;
    let big = 2_500;
    db.exec(&format!(
        "INSERT INTO items SELECT 100 + g, g FROM generate_series(1, {big}) g"
    ))
    .await;
    seen.at_least(small + big).await;
    stop_listener(run).await;
    let events = seen.events();
    assert_eq!(events.len(), small + big, "each change once");
    let mut values: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (e, _) in &events {
        values
            .entry(e.entity_id.clone())
            .or_default()
            .push(field(e, "v").parse().unwrap());
    }
    for w in 1..=WRITERS {
        assert_eq!(
            values[&w.to_string()],
            (0..i64::from(COMMITS)).collect::<Vec<_>>(),
            "writer {w}'s entity in commit order"
        );
    }
    assert_eq!(values.len(), usize::try_from(WRITERS).unwrap() + big);
    db.drop().await;
}

/// A transaction of more changes than the consumer buffers is delivered whole and in order
/// (the stream waits while the buffer is full).
#[tokio::test]
async fn a_transaction_bigger_than_the_buffer_is_delivered_in_order() {
    let Some(db) = WalDb::new("direct_big").await else {
        return;
    };
    db.exec("CREATE TABLE items (id int PRIMARY KEY, v int)")
        .await;
    db.capture("items", "Item").await;
    let n = observers_postgres::wal::direct::MAX_BUFFERED + 5_000;
    db.exec(&format!(
        "INSERT INTO items SELECT g, g FROM generate_series(1, {n}) g"
    ))
    .await;
    let seen = Seen::default();
    let run = db.deliver(&seen);
    seen.at_least(n).await;
    stop_listener(run).await;
    // Each row is an entity of its own, so they run concurrently: in id order (the stream's),
    // the values are the transaction's, each once.
    let mut events: Vec<(i64, i64)> = seen
        .events()
        .iter()
        .map(|(e, _)| (e.id, field(e, "v").parse().unwrap()))
        .collect();
    events.sort_unstable();
    let wrong = events
        .iter()
        .zip(1..)
        .find(|((_, v), expected)| *v != *expected)
        .map(|(e, expected)| (*e, expected));
    assert_eq!(events.len(), n, "each change once");
    assert_eq!(wrong, None, "(id, value) where the stream order breaks");
    db.drop().await;
}

/// The ordering suite's randomized writers (interleaved transactions, savepoint and whole
/// rollbacks, uncaptured writes, pauses) read straight from the stream: each entity's values
/// arrive exactly once and in commit order.
#[tokio::test]
async fn randomized_writers_never_skip_or_reorder_an_entity_from_the_stream() {
    let Some(db) = WalDb::new("direct_random").await else {
        return;
    };
    db.exec("CREATE TABLE counters (id int PRIMARY KEY, status text, n int NOT NULL DEFAULT 0)")
        .await;
    db.capture("counters", "Counter").await;
    let (source, stream) = db.stream();
    crate::ordering::randomized_writers_against(&db.pool, source.as_ref()).await;
    stream.0.send(true).unwrap();
    stream.1.await.unwrap();
    db.drop().await;
}

/// Switching a slot from the relay to direct delivery and back: what the relay copied into the
/// change log is not delivered from the stream, what the stream delivered is not copied by a
/// relay started later, and nothing in between is skipped.
#[tokio::test]
async fn switching_between_relay_and_direct_delivers_each_change_once() {
    let Some(db) = WalDb::new("direct_switch").await else {
        return;
    };
    db.exec("CREATE TABLE items (id int PRIMARY KEY, v int)")
        .await;
    db.capture("items", "Item").await;
    let relay = db.relay();
    db.exec("INSERT INTO items VALUES (1, 1), (2, 2)").await;
    assert_eq!(db.events(2).await.len(), 2);
    stop(relay).await;

    db.exec("INSERT INTO items VALUES (3, 3)").await;
    let seen = Seen::default();
    let run = db.deliver(&seen);
    seen.at_least(1).await;
    db.exec("INSERT INTO items VALUES (4, 4)").await;
    seen.at_least(2).await;
    let last_id = seen.events().iter().map(|(e, _)| e.id).max().unwrap();
    db.eventually(
        "the checkpoint covers the last event",
        "SELECT coalesce((SELECT cursor_id >= $1::bigint
                            FROM observer_checkpoints WHERE listener_id = 'direct:wal'), false)",
        &[&last_id.to_string()],
    )
    .await;
    stop_listener(run).await;
    let direct: Vec<String> = seen
        .events()
        .iter()
        .map(|(e, _)| e.entity_id.clone())
        .collect();
    assert_eq!(direct, ["3", "4"]);

    db.exec("INSERT INTO items VALUES (5, 5)").await;
    let relay = db.relay();
    let logged = db.events(3).await;
    stop(relay).await;
    let ids: Vec<String> = logged.iter().map(|e| e.entity_id.clone()).collect();
    assert_eq!(
        ids,
        ["1", "2", "5"],
        "the relay copies only what the stream did not deliver"
    );
    db.drop().await;
}

/// Under HA a save needs the group's leader lease: a consumer whose instance does not hold it
/// (another does, or it expired) saves nothing and stops with a fenced error, and the slot is
/// not confirmed past what was saved; the holder saves.
#[tokio::test]
async fn a_save_without_the_leader_lease_is_refused() {
    let Some(db) = WalDb::new("direct_fence").await else {
        return;
    };
    db.exec(
        "CREATE TABLE items (id int PRIMARY KEY, v int);
         INSERT INTO observer_leases (name, holder, epoch, expires_at)
         VALUES ('leader', 'b', 1, now() + interval '1 hour')",
    )
    .await;
    db.capture("items", "Item").await;
    db.exec("INSERT INTO items VALUES (1, 1)").await;
    let seen = Seen::default();
    let run = WalDb::deliver_with(
        &seen,
        db.direct().with_fence("leader", "a"),
        Duration::from_millis(50),
    );
    let ended = tokio::time::timeout(Duration::from_secs(30), run.1)
        .await
        .expect("the consumer stops on its refused save")
        .unwrap();
    let error = ended.expect_err("a refused save stops the consumer");
    assert!(
        matches!(error, observers_core::ObserverError::Fenced(_)),
        "{error}"
    );
    assert!(
        error.to_string().contains("leader lease `leader`"),
        "{error}"
    );
    assert_eq!(seen.len(), 1, "delivered, not saved");
    assert_eq!(db.saved().await, None, "nothing saved");

    // The holder saves, after the same event delivered again under the same id.
    let again = Seen::default();
    let run = WalDb::deliver_with(
        &again,
        db.direct().with_fence("leader", "b"),
        Duration::from_millis(50),
    );
    again.at_least(1).await;
    db.eventually(
        "the holder's checkpoint",
        "SELECT EXISTS (SELECT FROM observer_checkpoints WHERE listener_id = 'direct:wal')",
        &[],
    )
    .await;
    stop_listener(run).await;
    assert_eq!(again.events()[0].0.id, seen.events()[0].0.id);
    db.drop().await;
}

/// A clean stop right after a delivery writes the last save and reports it to the server before
/// the stream ends (the client reports at most once per status interval), so a restart does not
/// stream the transaction again.
#[tokio::test]
async fn a_clean_stop_confirms_the_last_save_to_the_slot() {
    let Some(db) = WalDb::new("direct_stop").await else {
        return;
    };
    db.exec("CREATE TABLE items (id int PRIMARY KEY, v int)")
        .await;
    db.capture("items", "Item").await;
    for round in 1..=3 {
        let seen = Seen::default();
        let run = db.deliver(&seen);
        db.exec(&format!("INSERT INTO items VALUES ({round}, {round})"))
            .await;
        seen.at_least(1).await;
        stop_listener(run).await;
        let (_, lsn) = db.saved().await.expect("saved at the stop");
        assert!(
            db.confirmed(&lsn).await,
            "round {round}: the saved LSN {lsn} is confirmed to the slot after a clean stop"
        );
        assert_eq!(seen.len(), 1, "round {round}: only the new change");
    }
    // The saved position is not a change-log cursor: an operator move is refused, and the row
    // stays as the stream left it.
    let saved = db.saved().await;
    let store = observers_postgres::PostgresCheckpointStore::new(db.pool.clone());
    let refused = store
        .set("direct:wal", Cursor::START, "test")
        .await
        .expect_err("the stream's position is not moved by hand");
    assert!(
        refused.to_string().contains("WAL stream consumer"),
        "{refused}"
    );
    assert_eq!(db.saved().await, saved);
    db.drop().await;
}

/// Values a consumer of the stream must not choke on, read straight from the stream: `json`
/// values jsonb cannot hold (an escaped NUL, numbers beyond numeric's range) are delivered as
/// strings, each with a row in `observer_capture_errors` naming its event; a change whose
/// `jsonb` is nested deeper than the parser allows becomes a poison item (for the DLQ); a
/// change that no longer reads into its retyped table is kept as text and recorded. The stream
/// goes on after each, in commit order.
#[tokio::test]
async fn odd_values_are_kept_or_dead_lettered_and_the_stream_goes_on() {
    let Some(db) = WalDb::new("direct_odd").await else {
        return;
    };
    db.exec(
        "CREATE TABLE docs (id int PRIMARY KEY, doc json);
         CREATE TABLE deep (id int PRIMARY KEY, doc jsonb);
         CREATE TABLE t (id int PRIMARY KEY, v interval)",
    )
    .await;
    db.capture("docs", "Doc").await;
    db.capture("deep", "Deep").await;
    db.capture("t", "T").await;
    let nul = r#"{"a": ["x", "\u0000"]}"#;
    let huge = "[1e131072]";
    let fine = r#"{"a": "\\u0000", "n": [1e131071, -1e-16383]}"#;
    let nested = format!("{}1{}", "{\"a\": ".repeat(200), "}".repeat(200));
    db.exec(&format!(
        "INSERT INTO docs VALUES (1, '{fine}'), (2, '{nul}'), (3, '{huge}');
         INSERT INTO deep VALUES (1, '{nested}');
         INSERT INTO t VALUES (1, '1 day');
         ALTER TABLE t ALTER COLUMN v TYPE int USING 0;
         INSERT INTO t VALUES (2, 5);
         INSERT INTO docs VALUES (4, '[1]');"
    ))
    .await;
    let (source, stream) = db.stream();
    let mut items = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while items.len() < 7 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of 7 items",
            items.len()
        );
        let after = items.last().map_or(Cursor::START, SourceItem::cursor);
        let batch = source.fetch(after, 100).await.unwrap();
        if batch.is_empty() {
            source.wait_for_changes(Duration::from_millis(50)).await;
        }
        items.extend(batch);
    }
    stream.0.send(true).unwrap();
    stream.1.await.unwrap();

    let event = |i: usize| match &items[i] {
        SourceItem::Event(e) => e.clone(),
        SourceItem::Poison { error, .. } => panic!("item {i} is poison: {error}"),
    };
    let doc = |i: usize| event(i).after.unwrap()["doc"].clone();
    let fits: Value = sqlx::query_scalar("SELECT $1::text::jsonb")
        .bind(fine)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(doc(0), fits, "a value that fits is to_jsonb's");
    assert_eq!(doc(1), nul, "kept as its text");
    assert_eq!(doc(2), huge, "kept as its text");
    match &items[3] {
        SourceItem::Poison { error, raw, .. } => {
            assert!(error.contains("after"), "names the column: {error}");
            assert_eq!(raw["entity_type"], "Deep");
        }
        SourceItem::Event(e) => panic!("the deep change is an event: {e:?}"),
    }
    assert_eq!(event(4).after.unwrap()["v"], "1 day", "kept as text");
    assert_eq!(event(5).after.unwrap()["v"], 5, "converted");
    assert_eq!(doc(6), serde_json::json!([1]), "the stream went on");
    let ids: Vec<i64> = items.iter().map(|i| i.cursor().id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "stream order: {ids:?}");

    let errors: Vec<(Option<i64>, String)> =
        sqlx::query_as("SELECT change_id, error FROM observer_capture_errors ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let unfit: Vec<i64> = errors
        .iter()
        .filter(|(_, e)| e.contains("kept json column(s) \"doc\""))
        .filter_map(|(id, _)| *id)
        .collect();
    assert_eq!(unfit, [ids[1], ids[2]], "each names its event: {errors:?}");
    assert_eq!(
        errors
            .iter()
            .filter(|(_, e)| e.contains("kept 1 change(s) as text"))
            .count(),
        1,
        "{errors:?}"
    );
    assert_eq!(db.change_log_rows().await, 0);
    db.drop().await;
}
