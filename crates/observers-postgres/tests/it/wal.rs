//! The logical-replication source against a real PostgreSQL with `wal_level = logical`
//! (`OBSERVERS_WAL_DATABASE_URL`; `cargo xtask test` starts a private cluster with initdb and
//! removes it afterwards). Each test makes its own database, slot and publication.
//!
//! Checked: values equal the trigger's `to_jsonb` for every common type; per-entity commit
//! order under interleaved transactions (and the ordering suite's randomized writers); a relay killed at any point neither loses nor copies
//! twice; a second relay on the same slot waits; changes committed after `capture enable` and
//! before the relay starts are delivered; TRUNCATE and unchanged TOAST values; the tenant from a
//! logical message; the slot's status and drop.

use std::time::Duration;

use observers_core::Cursor;
use observers_core::stores::source::{EventSource, SourceItem};
use observers_postgres::PgEventSource;
use observers_postgres::capture::{self, CaptureKind, CaptureSpec};
use observers_postgres::wal::{self, WalRelay, WalSettings};
use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;

/// A fresh database on the logical server, migrated, with a slot and publication name of its
/// own; `None` (the suite says SKIPPED) without such a server.
pub(crate) struct WalDb {
    pub(crate) pool: PgPool,
    pub(crate) url: String,
    pub(crate) settings: WalSettings,
    admin: String,
    name: String,
}

impl WalDb {
    pub(crate) async fn new(tag: &str) -> Option<Self> {
        Self::create(tag, "").await
    }

    /// A fresh database created `WITH` these options (e.g. another encoding).
    async fn create(tag: &str, with: &str) -> Option<Self> {
        let base = std::env::var("OBSERVERS_WAL_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty());
        let Some(base) = base else {
            eprintln!("SKIPPED: OBSERVERS_WAL_DATABASE_URL is not set (cargo xtask test sets it)");
            return None;
        };
        let name = format!("wal_{tag}_{}", rand::random::<u32>());
        let mut admin = PgConnection::connect(&base).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {name} {with}"
        )))
        .execute(&mut admin)
        .await
        .unwrap();
        let url = match base.rfind('/') {
            Some(i) => format!("{}/{name}", &base[..i]),
            None => unreachable!("a postgres URL has a path"),
        };
        let pool = observers_postgres::connect(&url, 6).await.unwrap();
        observers_postgres::migrate(&pool).await.unwrap();
        Some(Self {
            pool,
            url,
            settings: WalSettings {
                slot: name.clone(),
                publication: format!("{name}_pub"),
            },
            admin: base,
            name,
        })
    }

    fn kind(&self) -> CaptureKind {
        CaptureKind::Wal {
            publication: self.settings.publication.clone(),
            slot: self.settings.slot.clone(),
        }
    }

    pub(crate) async fn exec(&self, sql: &str) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&self.pool)
            .await
            .unwrap();
    }

    pub(crate) async fn capture(&self, table: &str, entity: &str) {
        capture::enable_as(&self.pool, &CaptureSpec::new(table, entity), &self.kind())
            .await
            .unwrap();
    }

    /// A relay streaming until the returned sender says stop.
    pub(crate) fn relay(&self) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
        let relay = WalRelay::new(self.pool.clone(), &self.url, self.settings.clone()).unwrap();
        let (tx, rx) = watch::channel(false);
        (tx, tokio::spawn(async move { relay.run(rx).await }))
    }

    /// Waits (with a deadline) until the change log holds `n` rows, then reads every event.
    pub(crate) async fn events(&self, n: usize) -> Vec<observers_core::EntityEvent> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let count: i64 = sqlx::query_scalar("SELECT count(*) FROM observer_change_log")
                .fetch_one(&self.pool)
                .await
                .unwrap();
            if usize::try_from(count).unwrap() >= n {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {count} of {n} changes reached the change log"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let src = PgEventSource::new(self.pool.clone());
        let mut cursor = Cursor::START;
        let mut all = Vec::new();
        loop {
            let batch = src.fetch(cursor, 500).await.unwrap();
            let Some(last) = batch.last() else { break };
            cursor = last.cursor();
            for item in batch {
                match item {
                    SourceItem::Event(e) => all.push(e),
                    SourceItem::Poison { error, .. } => panic!("poison row: {error}"),
                }
            }
        }
        all
    }

    /// Captures `by_wal` through the WAL (entity `Wal`) and `by_trigger` by trigger (entity
    /// `Trigger`), starts a relay and runs `values` (SQL with `{t}` for the table) on both.
    async fn write_both_kinds(
        &self,
        values: &str,
    ) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
        self.capture("by_wal", "Wal").await;
        capture::enable(&self.pool, &CaptureSpec::new("by_trigger", "Trigger"))
            .await
            .unwrap();
        let relay = self.relay();
        for t in ["by_trigger", "by_wal"] {
            self.exec(&values.replace("{t}", t)).await;
        }
        relay
    }

    /// A table `items (id, v)` captured as entity `Item`, and a relay streaming it.
    async fn relayed_items(&self) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
        self.exec("CREATE TABLE items (id int PRIMARY KEY, v int)")
            .await;
        self.capture("items", "Item").await;
        self.relay()
    }

    /// Runs each `(session, sql)` step in order on two sessions of their own, so that their
    /// transactions interleave as the steps say.
    pub(crate) async fn interleave(&self, steps: &[(usize, &str)]) {
        let mut sessions = [
            PgConnection::connect(&self.url).await.unwrap(),
            PgConnection::connect(&self.url).await.unwrap(),
        ];
        for (session, sql) in steps {
            sqlx::raw_sql(sqlx::AssertSqlSafe((*sql).to_owned()))
                .execute(&mut sessions[*session])
                .await
                .unwrap();
        }
    }

    /// Waits (with a deadline) until the boolean query `sql`, with `binds`, says true.
    pub(crate) async fn eventually(&self, what: &str, sql: &str, binds: &[&str]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut query = sqlx::query_scalar::<_, bool>(sqlx::AssertSqlSafe(sql.to_owned()));
            for b in binds {
                query = query.bind(*b);
            }
            if query.fetch_one(&self.pool).await.unwrap() {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) async fn drop(self) {
        self.pool.close().await;
        let mut admin = PgConnection::connect(&self.admin).await.unwrap();
        // The slot first (a database with a slot cannot be dropped).
        let _ = sqlx::query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
              WHERE slot_name = $1 AND NOT active",
        )
        .bind(&self.settings.slot)
        .execute(&mut admin)
        .await;
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut admin)
        .await;
    }
}

pub(crate) async fn stop(relay: (watch::Sender<bool>, tokio::task::JoinHandle<()>)) {
    relay.0.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(30), relay.1)
        .await
        .expect("the relay stops on shutdown")
        .unwrap();
}

/// A relay that copied item 1, and item 2 written while another session (returned, in its
/// transaction) holds the progress row, so the relay's write of item 2 cannot commit; with the
/// WAL position just after item 2.
async fn item_behind_a_held_progress_row(
    db: &WalDb,
) -> (
    (watch::Sender<bool>, tokio::task::JoinHandle<()>),
    PgConnection,
    String,
) {
    let relay = db.relayed_items().await;
    db.exec("INSERT INTO items VALUES (1, 1)").await;
    assert_eq!(db.events(1).await.len(), 1);

    let mut blocker = PgConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql("BEGIN; SELECT 1 FROM observer_wal_progress FOR UPDATE")
        .execute(&mut blocker)
        .await
        .unwrap();
    db.exec("INSERT INTO items VALUES (2, 1)").await;
    let after_item: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    (relay, blocker, after_item)
}

/// A relay write that cannot commit (another session holds its progress row) confirms nothing
/// past what is committed, although the server keeps sending keep-alives for WAL beyond it while
/// the write waits: a relay killed then would lose nothing. Released, the write commits and the
/// slot moves on.
#[tokio::test]
async fn a_stalled_relay_write_lets_no_keep_alive_confirm_past_it() {
    let Some(db) = WalDb::new("stall").await else {
        return;
    };
    let (relay, mut blocker, after_item) = item_behind_a_held_progress_row(&db).await;
    // WAL with no captured change after it, which the walsender sends on and asks the relay to
    // confirm with keep-alives.
    db.exec("CREATE TABLE other (x int); INSERT INTO other SELECT generate_series(1, 1000)")
        .await;
    let end: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    // Until the walsender has sent all of it and the relay has answered twice since (its
    // status interval is 500 ms).
    let answered = |pool: PgPool, slot: String, end: String| async move {
        sqlx::query_scalar::<_, bool>(
            "SELECT coalesce(bool_and(r.sent_lsn >= $2::pg_lsn
                                      AND r.reply_time > now() - interval '100 ms'), false)
               FROM pg_stat_replication r
               JOIN pg_replication_slots s ON s.active_pid = r.pid
              WHERE s.slot_name = $1",
        )
        .bind(slot)
        .bind(end)
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut answers = 0;
    while answers < 2 {
        if answered(db.pool.clone(), db.settings.slot.clone(), end.clone()).await {
            answers += 1;
            tokio::time::sleep(Duration::from_millis(600)).await;
        } else {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the walsender sent WAL up to {end}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let confirmed_before_item: bool = sqlx::query_scalar(
        "SELECT confirmed_flush_lsn < $2::pg_lsn FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(&db.settings.slot)
    .bind(&after_item)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        confirmed_before_item,
        "the slot was confirmed past a change whose relay write has not committed"
    );

    sqlx::raw_sql("COMMIT").execute(&mut blocker).await.unwrap();
    assert_eq!(db.events(2).await.len(), 2);
    db.eventually(
        "the slot moves on once the write commits",
        "SELECT confirmed_flush_lsn >= $2::pg_lsn FROM pg_replication_slots WHERE slot_name = $1",
        &[&db.settings.slot, &after_item],
    )
    .await;
    stop(relay).await;
    db.drop().await;
}

/// A relay writes a batch in one statement only while the progress row says what its own last
/// write left there. Here another relay (played by the test) copies a transaction while this
/// relay's write of the same transaction waits for the progress row: the waiting write finds
/// the row moved, writes nothing, and the transaction is in the change log once.
#[tokio::test]
async fn a_write_that_finds_the_progress_row_moved_copies_nothing_twice() {
    let Some(db) = WalDb::new("moved").await else {
        return;
    };
    let (relay, mut other, past_item) = item_behind_a_held_progress_row(&db).await;
    // Until the relay's write of item 2 waits for the progress row.
    db.eventually(
        "the relay's write waits",
        "SELECT count(*) > 0 FROM pg_stat_activity
          WHERE datname = current_database() AND wait_event_type = 'Lock'
            AND query LIKE '%observer_wal_progress%'",
        &[],
    )
    .await;
    sqlx::query(
        "INSERT INTO observer_change_log (entity_type, entity_id, operation, after)
         VALUES ('Item', '2', 'insert', '{\"id\": 2, \"v\": 1}')",
    )
    .execute(&mut other)
    .await
    .unwrap();
    sqlx::query("UPDATE observer_wal_progress SET commit_lsn = $1::text::pg_lsn")
        .bind(&past_item)
        .execute(&mut other)
        .await
        .unwrap();
    sqlx::raw_sql("COMMIT").execute(&mut other).await.unwrap();

    db.exec("INSERT INTO items VALUES (3, 1)").await;
    let events = db.events(3).await;
    stop(relay).await;
    let ids: Vec<&str> = events.iter().map(|e| e.entity_id.as_str()).collect();
    assert_eq!(ids, ["1", "2", "3"], "item 2 is copied once");
    db.drop().await;
}

/// A reader in the relay's process is woken by the relay's write itself, not only by its
/// poller: of 20 changes, each written after the previous one was read, the relay's signal woke
/// the waiting reader at least once (the poller, looking every 2 ms while changes flow, wins
/// some of the races).
#[tokio::test]
async fn a_relay_write_wakes_the_waiting_readers_of_its_process() {
    let Some(db) = WalDb::new("wake").await else {
        return;
    };
    let relay = db.relayed_items().await;
    let src = PgEventSource::new(db.pool.clone());
    let mut cursor = Cursor::START;
    for i in 1..=20 {
        db.exec(&format!("INSERT INTO items VALUES ({i}, {i})"))
            .await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let batch = src.fetch(cursor, 10).await.unwrap();
            if let Some(last) = batch.last() {
                cursor = last.cursor();
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "change {i} arrives");
            src.wait_for_changes(Duration::from_secs(30)).await;
        }
    }
    stop(relay).await;
    assert!(
        src.write_wakes() > 0,
        "no wake-up came from the relay's writes"
    );
    // The source keeps a connection of the pool until it is dropped (closing waits for it).
    drop(src);
    db.drop().await;
}

pub(crate) const EVERY_TYPE: &str = "
    CREATE TYPE mood AS ENUM ('ok', 'sad');
    CREATE TABLE {t} (
        id bigint PRIMARY KEY, n numeric, i8 bigint, f8 float8, f4 real, b boolean, t text,
        tz timestamptz, ts timestamp, d date, tm time, iv interval, u uuid, by bytea,
        ia int[], ta text[], j json, jb jsonb, m mood);
";

pub(crate) const EVERY_VALUE: &str = "
    INSERT INTO {t} VALUES
      (1, 12345678901234567.89, 9223372036854775807, 'NaN', 1.5, true, 'emoji 😀 \"q\" \\ tab\t',
       '2026-12-03 10:11:12.123456+02', '2026-12-03 10:11:12.654321', '2026-12-03', '23:59:59.999999',
       '1 year 2 mons 3 days 04:05:06.7', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x00ff10',
       '{1,NULL,3}', '{a,NULL,\"b c\"}', '{\"n\": 1e400, \"deep\": {\"x\": [1.000000000000000000001]}}',
       '{\"n\": 12345678901234567.89}', 'sad'),
      (2, 1e-30, -9223372036854775808, 'Infinity', '-Infinity', false, '', NULL, NULL, NULL, NULL,
       NULL, NULL, NULL, '{}', '{}', 'null', '[]', 'ok'),
      (3, 'NaN', 0, -0.0, 3.4028235e38, NULL, repeat('x', 100000), NULL, NULL, NULL, NULL,
       NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
";

/// Every common type reaches the change log as the trigger's `to_jsonb` renders it: one table
/// captured by trigger, one through the WAL, the same rows written to both.
#[tokio::test]
async fn wal_values_equal_the_triggers_to_jsonb_for_every_type() {
    let Some(db) = WalDb::new("types").await else {
        return;
    };
    db.exec(&EVERY_TYPE.replace("{t}", "by_wal")).await;
    db.exec(
        &EVERY_TYPE
            .replace("CREATE TYPE mood AS ENUM ('ok', 'sad');", "")
            .replace("{t}", "by_trigger"),
    )
    .await;
    let relay = db.write_both_kinds(EVERY_VALUE).await;
    // An update that leaves the 100 kB TOASTed text alone: pgoutput does not send it.
    db.exec("UPDATE by_wal SET b = true WHERE id = 3; UPDATE by_trigger SET b = true WHERE id = 3")
        .await;
    let events = db.events(8).await;
    stop(relay).await;
    let of = |entity: &str| -> Vec<(String, Option<Value>, Option<Value>)> {
        events
            .iter()
            .filter(|e| e.entity_type == entity)
            .map(|e| (e.entity_id.clone(), e.before.clone(), e.after.clone()))
            .collect()
    };
    let (wal, trigger) = (of("Wal"), of("Trigger"));
    assert_eq!(wal.len(), 4, "{wal:?}");
    assert_eq!(wal, trigger, "both kinds give the same events");
    // And both are what PostgreSQL's to_jsonb says of the rows now.
    let rows: Vec<(String, Value)> =
        sqlx::query_as("SELECT id::text, to_jsonb(r) FROM by_wal r ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    for (id, row) in rows {
        let last = wal.iter().rev().find(|(e, ..)| *e == id).unwrap();
        assert_eq!(last.2.as_ref(), Some(&row), "row {id}");
    }
    let first = &wal[0].2.as_ref().unwrap();
    assert_eq!(first["n"].to_string(), "12345678901234567.89");
    assert_eq!(first["jb"]["n"].to_string(), "12345678901234567.89");
    assert_eq!(
        wal[3].2.as_ref().unwrap()["t"].as_str().unwrap().len(),
        100_000
    );
    db.drop().await;
}

const RENDERED_TYPE: &str = r#"
    CREATE TABLE {t} (
        id bigint PRIMARY KEY, n numeric, i2 smallint, i4 int, f8 float8, f4 real, b boolean,
        t text, vc varchar(10), bc char(6), nm name, c "char", o oid, tz timestamptz,
        ts timestamp, d date, tm time, u uuid, ip inet, cn cidr, mac macaddr, bits bit(3),
        vb varbit, j json, jb jsonb);
"#;

const RENDERED_VALUE: &str = r#"
    INSERT INTO {t} VALUES
      (1, 12345678901234567890123456789.000100, -32768, 2147483647, 1e20, -0.0, true,
       E'back \\ "quoted" \u00e9 \U0001F600 tab\t nl\n ctl\x01', 'ten chars!', 'ab', 'a name',
       'x', 4294967295, '2026-12-03 10:11:12.123456+02', '12026-12-03 10:11:12', '0044-03-15 BC',
       '00:00:00.000001', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '::ffff:10.0.0.1/96',
       '10.0.0.0/8', '08:00:2b:01:02:03', B'101', B'',
       '{"n": 1e400, "n": 2, "deep": [[[1.000000000000000000001]]]}',
       '{"b": 1, "a": [0.10, -0]}'),
      (2, 'NaN', 0, 0, 'NaN', 'Infinity', false, '', '', '', '', '', 0,
       '0044-03-15 12:00:00+00 BC', 'infinity', '-infinity', '24:00:00',
       NULL, NULL, NULL, NULL, NULL, NULL, 'null', '"s"'),
      (3, 1e-30, NULL, NULL, '-Infinity', 1.17549435e-38, NULL, NULL, NULL, NULL, NULL, NULL,
       NULL, '-infinity', '1999-12-31 23:59:59.999999', 'infinity', NULL, NULL, NULL, NULL,
       NULL, NULL, NULL, '[]', '{}');
    UPDATE {t} SET t = 'updated', tz = tz + interval '1 microsecond' WHERE id = 1;
    DELETE FROM {t} WHERE id = 3;
"#;

/// The types the relay renders itself (no conversion on the server) give what the trigger's
/// `to_jsonb` gives, for odd values too (numbers beyond a double, NaN and infinities, BC and
/// five-digit years, padding, escapes, duplicate JSON keys); also when the database's own
/// `DateStyle` would print dates day-first (the relay pins ISO on its replication connection).
#[tokio::test]
async fn relay_rendered_values_equal_the_triggers_to_jsonb() {
    let Some(db) = WalDb::new("rendered").await else {
        return;
    };
    db.exec(&format!(
        "ALTER DATABASE {} SET DateStyle = 'SQL, DMY'; ALTER DATABASE {} SET extra_float_digits = -3",
        db.name, db.name
    ))
    .await;
    for t in ["by_wal", "by_trigger"] {
        db.exec(&RENDERED_TYPE.replace("{t}", t)).await;
    }
    let relay = db.write_both_kinds(RENDERED_VALUE).await;
    let events = db.events(10).await;
    stop(relay).await;
    let of = |entity: &str| -> Vec<(String, String, Option<Value>, Option<Value>)> {
        events
            .iter()
            .filter(|e| e.entity_type == entity)
            .map(|e| {
                let op = format!("{:?}", e.kind);
                (e.entity_id.clone(), op, e.before.clone(), e.after.clone())
            })
            .collect()
    };
    let (wal, trigger) = (of("Wal"), of("Trigger"));
    assert_eq!(wal.len(), 5, "{wal:?}");
    assert_eq!(wal, trigger, "both kinds give the same events");
    let first = wal[0].3.as_ref().unwrap();
    assert_eq!(
        first["n"].to_string(),
        "12345678901234567890123456789.000100"
    );
    assert_eq!(first["f8"].to_string(), "100000000000000000000");
    assert_eq!(first["bc"], "ab    ");
    assert_eq!(first["d"], "0044-03-15 BC");
    assert_eq!(first["tz"], "2026-12-03T08:11:12.123456+00:00");
    // The relay rendered these rows itself: the WAL source's write path for them converts
    // nothing on the server, and no capture error was recorded.
    let errors: i64 = sqlx::query_scalar("SELECT count(*) FROM observer_capture_errors")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(errors, 0);
    db.drop().await;
}

/// Transaction 1 writes first and sets order 1 to `shipped` last; transaction 2 sets it to
/// `paid` in between. The WAL orders by commit: `paid`, then `shipped`. Plus deletes and a
/// TRUNCATE, and a tenant set by a logical message.
#[tokio::test]
async fn wal_delivers_in_commit_order_with_deletes_truncate_and_tenant() {
    let Some(db) = WalDb::new("order").await else {
        return;
    };
    db.exec("CREATE TABLE orders (id int PRIMARY KEY, status text); CREATE TABLE audit (x int)")
        .await;
    db.capture("orders", "Order").await;
    db.exec("INSERT INTO orders VALUES (1, 'new')").await;
    db.interleave(&[
        (0, "BEGIN; INSERT INTO audit VALUES (1)"),
        (1, "BEGIN; UPDATE orders SET status = 'paid' WHERE id = 1; COMMIT"),
        (0, "UPDATE orders SET status = 'shipped' WHERE id = 1; COMMIT"),
        (
            1,
            "BEGIN; SELECT pg_logical_emit_message(true, 'observers', '{\"tenant_id\":\"acme\",\"user_id\":\"u7\"}');
             DELETE FROM orders WHERE id = 1; COMMIT",
        ),
        (0, "INSERT INTO orders VALUES (2, 'x'); TRUNCATE orders"),
    ])
    .await;
    // The relay starts after all of it: the slot kept everything since `capture enable`.
    let relay = db.relay();
    let events = db.events(6).await;
    stop(relay).await;
    let seen: Vec<(String, String, Option<String>)> = events
        .iter()
        .map(|e| {
            (
                e.kind.as_str().to_owned(),
                e.after
                    .as_ref()
                    .or(e.before.as_ref())
                    .and_then(|r| r.get("status"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                e.tenant_id.clone(),
            )
        })
        .collect();
    let expected: Vec<(String, String, Option<String>)> = [
        ("insert", "new", None),
        ("update", "paid", None),
        ("update", "shipped", None),
        ("delete", "shipped", Some("acme")),
        ("insert", "x", None),
        ("truncate", "", None),
    ]
    .iter()
    .map(|(k, s, t)| ((*k).to_owned(), (*s).to_owned(), t.map(str::to_owned)))
    .collect();
    assert_eq!(seen, expected);
    assert_eq!(events[3].user_id.as_deref(), Some("u7"));
    assert_eq!(
        events[1].before.as_ref().unwrap()["status"],
        "new",
        "REPLICA IDENTITY FULL gives before"
    );
    assert_eq!(events[5].entity_id, "");
    db.drop().await;
}

/// Relays killed at random points (the task aborted: its connection drops with no goodbye)
/// while writers commit: every change is in the change log exactly once, in commit order per
/// entity. A second relay started beside the first waits for the slot.
#[tokio::test]
async fn killed_relays_neither_lose_nor_duplicate() {
    let Some(db) = WalDb::new("kill").await else {
        return;
    };
    db.exec("CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL)")
        .await;
    db.capture("counters", "Counter").await;
    let writer = {
        let pool = db.pool.clone();
        tokio::spawn(async move {
            for n in 0..300 {
                let id = n % 5;
                sqlx::query(
                    "INSERT INTO counters VALUES ($1, $2)
                     ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n",
                )
                .bind(id)
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
    let mut kills = 0;
    while !writer.is_finished() {
        let relay = db.relay();
        let rival = db.relay();
        tokio::time::sleep(Duration::from_millis(40 + 30 * kills)).await;
        relay.1.abort();
        rival.1.abort();
        kills += 1;
    }
    writer.await.unwrap();
    let relay = db.relay();
    let events = db.events(300).await;
    stop(relay).await;
    assert!(kills >= 2, "the relay was killed {kills} times");
    assert_eq!(events.len(), 300, "each change exactly once");
    let values: Vec<i64> = events
        .iter()
        .map(|e| e.after.as_ref().unwrap()["n"].as_i64().unwrap())
        .collect();
    assert_eq!(values, (0..300).collect::<Vec<_>>(), "commit order");
    let slot = wal::slot::status(&db.pool, &db.settings.slot)
        .await
        .unwrap()
        .expect("the slot exists");
    assert!(slot.lag_bytes.is_some());
    db.drop().await;
}

/// The randomized concurrent writers of the ordering suite (interleaved transactions, savepoint
/// and whole rollbacks, uncaptured writes, pauses) on a table captured through the WAL, with a
/// relay copying and a reader draining all along: each entity's values arrive exactly once and
/// in commit order.
#[tokio::test]
async fn randomized_writers_never_skip_or_reorder_an_entity_through_the_wal() {
    let Some(db) = WalDb::new("random").await else {
        return;
    };
    db.exec("CREATE TABLE counters (id int PRIMARY KEY, status text, n int NOT NULL DEFAULT 0)")
        .await;
    db.capture("counters", "Counter").await;
    let relay = db.relay();
    crate::ordering::randomized_writers_against(&db.pool, &PgEventSource::new(db.pool.clone()))
        .await;
    stop(relay).await;
    db.drop().await;
}

/// A source transaction bigger than one relay batch is copied in parts, each recorded in the
/// progress row: the first parts reach the change log before the rest, and a relay killed between
/// parts is followed by one that skips what the parts copied. Every change once, in order.
#[tokio::test]
async fn a_big_transaction_is_copied_in_parts_and_a_kill_between_parts_repeats_nothing() {
    const INSERTS: i64 = 20_000;
    const UPDATES: i64 = 3_456;
    let Some(db) = WalDb::new("big").await else {
        return;
    };
    db.exec("CREATE TABLE big (id int PRIMARY KEY, n int NOT NULL)")
        .await;
    db.capture("big", "Big").await;
    let relay = db.relay();
    db.exec(&format!(
        "BEGIN; INSERT INTO big SELECT g, 0 FROM generate_series(1, {INSERTS}) g;
         UPDATE big SET n = 1 WHERE id <= {UPDATES}; COMMIT"
    ))
    .await;
    let partial = || async {
        sqlx::query_as::<_, (Option<String>, i64)>(
            "SELECT partial_lsn::text, partial_changes FROM observer_wal_progress WHERE slot_name = $1",
        )
        .bind(&db.settings.slot)
        .fetch_optional(&db.pool)
        .await
        .unwrap()
        .unwrap_or((None, 0))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while partial().await.1 == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no part was recorded"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    relay.1.abort();
    let _ = relay.1.await;
    let (lsn, parts) = partial().await;
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM observer_change_log")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(lsn.is_some(), "the relay was killed between parts");
    assert_eq!(
        logged, parts,
        "the parts recorded are the rows in the change log"
    );
    assert!(
        logged < INSERTS + UPDATES,
        "the first parts came before the rest"
    );

    let relay = db.relay();
    let events = db.events(usize::try_from(INSERTS + UPDATES).unwrap()).await;
    stop(relay).await;
    let seen: Vec<(String, i64, i64)> = events
        .iter()
        .map(|e| {
            let row = e.after.as_ref().unwrap();
            (
                e.kind.as_str().to_owned(),
                row["id"].as_i64().unwrap(),
                row["n"].as_i64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, i64, i64)> = (1..=INSERTS)
        .map(|id| ("insert".to_owned(), id, 0))
        .chain((1..=UPDATES).map(|id| ("update".to_owned(), id, 1)))
        .collect();
    assert_eq!(seen.len(), expected.len(), "each change exactly once");
    assert!(seen == expected, "in the source transaction's order");
    assert_eq!(
        partial().await,
        (None, 0),
        "the finished transaction clears the part"
    );
    db.drop().await;
}

/// `end_stream` (a new HA leader taking the slot from a former one) ends only the walsender of
/// its own slot: with two relays streaming two slots of the same server, the other keeps
/// streaming through it, and the relay whose stream was ended reconnects and copies on.
#[tokio::test]
async fn ending_a_slots_stream_leaves_every_other_slot_streaming() {
    let (Some(one), Some(two)) = (WalDb::new("end_one").await, WalDb::new("end_two").await) else {
        return;
    };
    for db in [&one, &two] {
        db.exec("CREATE TABLE t (id int PRIMARY KEY)").await;
        db.capture("t", "T").await;
    }
    let (relay_one, relay_two) = (one.relay(), two.relay());
    let active = async |db: &WalDb| {
        wal::slot::status(&db.pool, &db.settings.slot)
            .await
            .unwrap()
            .is_some_and(|s| s.active)
    };
    let pid_of = async |db: &WalDb| -> Option<i32> {
        sqlx::query_scalar("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1")
            .bind(&db.settings.slot)
            .fetch_one(&db.pool)
            .await
            .unwrap()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !(active(&one).await && active(&two).await) {
        assert!(tokio::time::Instant::now() < deadline, "both relays stream");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (one_pid, two_pid) = (pid_of(&one).await, pid_of(&two).await);

    let ended = wal::slot::end_stream(&one.pool, &one.settings.slot)
        .await
        .unwrap();
    assert_eq!(ended, one_pid, "the slot's own walsender is ended");
    assert_eq!(
        pid_of(&two).await,
        two_pid,
        "the other slot keeps its walsender"
    );
    for db in [&one, &two] {
        db.exec("INSERT INTO t VALUES (1)").await;
        assert_eq!(
            db.events(1).await.len(),
            1,
            "{} copies on",
            db.settings.slot
        );
    }
    stop(relay_one).await;
    stop(relay_two).await;
    one.drop().await;
    two.drop().await;
}

/// Slot names are the whole server's: two databases of one server both configured with the same
/// slot name (the default `observers`, say). The second database's capture is refused, naming
/// the database the slot belongs to, instead of counting on a slot that keeps none of its
/// changes; its `status` sees no slot, and its `drop-slot` leaves the other database's alone.
#[tokio::test]
async fn a_slot_of_another_database_is_not_taken_for_ours() {
    let (Some(first), Some(mut second)) = (WalDb::new("slot_a").await, WalDb::new("slot_b").await)
    else {
        return;
    };
    first.exec("CREATE TABLE t (id int PRIMARY KEY)").await;
    first.capture("t", "T").await;
    second.settings.slot.clone_from(&first.settings.slot);
    second.exec("CREATE TABLE t (id int PRIMARY KEY)").await;
    let e = capture::enable_as(&second.pool, &CaptureSpec::new("t", "T"), &second.kind())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&first.settings.slot) && e.contains(&first.name),
        "{e}"
    );
    assert_eq!(
        wal::slot::status(&second.pool, &second.settings.slot)
            .await
            .unwrap(),
        None
    );
    assert!(
        !wal::slot::drop_slot(&second.pool, &second.settings.slot)
            .await
            .unwrap()
    );
    assert!(
        wal::slot::status(&first.pool, &first.settings.slot)
            .await
            .unwrap()
            .is_some(),
        "the first database's slot is still there"
    );
    second.drop().await;
    first.drop().await;
}

/// `drop-slot` is refused while a relay streams and works once it stopped; a capture on a
/// server without logical WAL says what to change.
#[tokio::test]
async fn drop_slot_and_clear_errors() {
    let Some(db) = WalDb::new("slot").await else {
        return;
    };
    db.exec("CREATE TABLE t (id int PRIMARY KEY)").await;
    db.capture("t", "T").await;
    let relay = db.relay();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !wal::slot::status(&db.pool, &db.settings.slot)
        .await
        .unwrap()
        .is_some_and(|s| s.active)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay never streamed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let e = wal::slot::drop_slot(&db.pool, &db.settings.slot)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("is being streamed"), "{e}");
    stop(relay).await;
    // The walsender may take a moment to let go of the slot.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match wal::slot::drop_slot(&db.pool, &db.settings.slot).await {
            Ok(dropped) => {
                assert!(dropped);
                break;
            }
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "{e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    assert!(
        !wal::slot::drop_slot(&db.pool, &db.settings.slot)
            .await
            .unwrap()
    );
    let listed = capture::list(&db.pool).await.unwrap();
    assert_eq!(listed[0].kind, "wal");
    assert!(listed[0].is_healthy(), "{:?}", listed[0].drift);
    db.exec("ALTER TABLE t REPLICA IDENTITY DEFAULT").await;
    let listed = capture::list(&db.pool).await.unwrap();
    assert!(
        listed[0]
            .drift
            .iter()
            .any(|d| d.contains("REPLICA IDENTITY FULL")),
        "{:?}",
        listed[0].drift
    );
    db.drop().await;

    // The shared server runs wal_level = replica.
    if let Ok(url) = std::env::var("DATABASE_URL") {
        let pool = observers_postgres::connect(&url, 1).await.unwrap();
        let level: String = sqlx::query_scalar("SHOW wal_level")
            .fetch_one(&pool)
            .await
            .unwrap();
        if level != "logical" {
            let e = wal::slot::require_logical(&pool).await.unwrap_err();
            assert!(e.to_string().contains("wal_level = logical"), "{e}");
        }
    }
}

/// `capture backfill` works on a table captured through the WAL (no trigger): the rows already
/// there arrive as `read`, and a change written by the relay afterwards follows them.
#[tokio::test]
async fn backfill_of_a_wal_captured_table() {
    let Some(db) = WalDb::new("backfill").await else {
        return;
    };
    db.exec("CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items SELECT g, 'old' FROM generate_series(1, 25) g")
        .await;
    db.capture("items", "Item").await;
    let request = observers_postgres::backfill::BackfillRequest {
        table: "items".into(),
        filter: None,
        batch: 10,
        restart: false,
    };
    let mut backfill = observers_postgres::backfill::Backfill::prepare(&db.pool, &request)
        .await
        .unwrap();
    while backfill.next_batch().await.unwrap().is_some() {}
    db.exec("UPDATE items SET v = 'new' WHERE id = 7").await;
    let relay = db.relay();
    let events = db.events(26).await;
    stop(relay).await;
    let reads = events.iter().filter(|e| e.kind.as_str() == "read").count();
    assert_eq!(reads, 25);
    let last = events.last().unwrap();
    assert_eq!(
        (last.kind.as_str(), last.entity_id.as_str()),
        ("update", "7")
    );
    assert_eq!(last.after.as_ref().unwrap()["v"], "new");
    db.drop().await;
}

/// The server ends the relay's replication connection (`pg_terminate_backend` of its
/// walsender) again and again while a writer commits: the relay reconnects from its progress
/// row and every change is copied exactly once, in commit order.
#[tokio::test]
async fn walsender_terminated_mid_stream_loses_and_repeats_nothing() {
    let Some(db) = WalDb::new("term").await else {
        return;
    };
    db.exec("CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL)")
        .await;
    db.capture("counters", "Counter").await;
    let relay = db.relay();
    let writer = {
        let pool = db.pool.clone();
        tokio::spawn(async move {
            for n in 0..200 {
                sqlx::query(
                    "INSERT INTO counters VALUES ($1, $2)
                     ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n",
                )
                .bind(n % 3)
                .bind(n)
                .execute(&pool)
                .await
                .unwrap();
                if n % 25 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        })
    };
    let mut terminated = 0;
    while !writer.is_finished() {
        let killed: Option<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
              WHERE slot_name = $1 AND active_pid IS NOT NULL",
        )
        .bind(&db.settings.slot)
        .fetch_optional(&db.pool)
        .await
        .unwrap();
        terminated += usize::from(killed == Some(true));
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    writer.await.unwrap();
    let events = db.events(200).await;
    stop(relay).await;
    assert!(terminated >= 1, "the walsender was never terminated");
    let values: Vec<i64> = events
        .iter()
        .map(|e| e.after.as_ref().unwrap()["n"].as_i64().unwrap())
        .collect();
    assert_eq!(
        values,
        (0..200).collect::<Vec<_>>(),
        "exactly once, in commit order"
    );
    db.drop().await;
}

/// A change whose values the server must convert (here an interval) and that no longer read
/// into the table's row type (the column's type changed before the relay caught up) is kept
/// with its text values and an `observer_capture_errors` row; the changes around it are
/// converted as usual and nothing is lost. Values the relay renders itself are rendered as the
/// stream describes the table at that change, so a retyped text column loses nothing either.
#[tokio::test]
async fn values_that_no_longer_fit_the_row_type_are_kept_as_text() {
    let Some(db) = WalDb::new("retyped").await else {
        return;
    };
    db.exec("CREATE TABLE t (id int PRIMARY KEY, v interval, w text)")
        .await;
    db.exec("CREATE TABLE u (id int PRIMARY KEY, v text)").await;
    db.capture("t", "T").await;
    db.capture("u", "U").await;
    db.exec("INSERT INTO t VALUES (1, '1 day', 'abc'); INSERT INTO u VALUES (1, 'abc')")
        .await;
    db.exec(
        "ALTER TABLE t ALTER COLUMN v TYPE int USING 0;
         ALTER TABLE u ALTER COLUMN v TYPE int USING 0",
    )
    .await;
    db.exec("INSERT INTO t VALUES (2, 5, 'x'); INSERT INTO u VALUES (2, 5)")
        .await;
    let relay = db.relay();
    let events = db.events(4).await;
    stop(relay).await;
    let after = |entity: &str, i: usize| {
        events
            .iter()
            .filter(|e| e.entity_type == entity)
            .nth(i)
            .and_then(|e| e.after.clone())
            .unwrap()
    };
    assert_eq!(after("T", 0)["v"], "1 day", "kept as text");
    assert_eq!(after("T", 0)["id"], "1");
    assert_eq!(after("T", 1)["v"], 5, "converted");
    assert_eq!(after("U", 0), serde_json::json!({"id": 1, "v": "abc"}));
    assert_eq!(after("U", 1), serde_json::json!({"id": 2, "v": 5}));
    let errors: Vec<String> =
        sqlx::query_scalar("SELECT error FROM observer_capture_errors ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("kept 1 change(s) as text"), "{errors:?}");
    db.drop().await;
}

/// A `json` column holds what jsonb cannot: a `\u0000` escape, or a number beyond `numeric`'s
/// range. The relay keeps such a value as a JSON string of its text, names the change in
/// `observer_capture_errors`, and carries on: it does not retry the write forever, nothing is
/// lost or reordered, and the values around it stay exact, an escaped backslash before `u0000`
/// and the largest numbers numeric holds among them. Both write paths: a table the relay
/// renders itself (`docs`) and one the server converts (`spans`, with an interval).
#[tokio::test]
async fn json_values_jsonb_cannot_hold_are_kept_as_strings_and_the_relay_carries_on() {
    let Some(db) = WalDb::new("unfit").await else {
        return;
    };
    db.exec("CREATE TABLE docs (id int PRIMARY KEY, doc json)")
        .await;
    db.exec("CREATE TABLE spans (id int PRIMARY KEY, doc json, span interval)")
        .await;
    db.capture("docs", "Doc").await;
    db.capture("spans", "Span").await;
    let relay = db.relay();
    let nul = r#"{"a": ["x", "\u0000"]}"#;
    let huge = "[1e131072]";
    let tiny = r#"{"z": 0e-16384}"#;
    let fine = r#"{"a": "\\u0000", "n": [1e131071, -1e-16383, 0e-16383]}"#;
    db.exec(&format!(
        "INSERT INTO docs VALUES (1, '{fine}'), (2, '{nul}'), (3, '{huge}');
         INSERT INTO spans VALUES (1, '{tiny}', '1 day'), (2, '{fine}', '2 days');
         BEGIN; UPDATE docs SET doc = '[1]' WHERE id = 2; UPDATE spans SET doc = '{nul}'; COMMIT;"
    ))
    .await;
    let events = db.events(8).await;
    stop(relay).await;
    let after = |entity: &str, id: &str, nth: usize| {
        events
            .iter()
            .filter(|e| e.entity_type == entity && e.entity_id == id)
            .nth(nth)
            .and_then(|e| e.after.clone())
            .unwrap_or_else(|| panic!("no change {nth} of {entity} {id}: {events:?}"))
    };
    // Values that fit are the trigger's `to_jsonb`, digit for digit.
    let fits: Value = sqlx::query_scalar("SELECT $1::text::jsonb")
        .bind(fine)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(after("Doc", "1", 0)["doc"], fits);
    assert_eq!(after("Span", "2", 0)["doc"], fits);
    assert_eq!(after("Doc", "2", 1)["doc"], serde_json::json!([1]));
    let update = events
        .iter()
        .filter(|e| e.entity_type == "Doc" && e.entity_id == "2")
        .nth(1)
        .unwrap();
    assert_eq!(update.before.as_ref().unwrap()["doc"], nul, "{update:?}");
    // The others are their text, as json printed it.
    assert_eq!(after("Doc", "2", 0)["doc"], nul);
    assert_eq!(after("Doc", "3", 0)["doc"], huge);
    assert_eq!(after("Span", "1", 0)["doc"], tiny);
    assert_eq!(after("Span", "1", 1)["doc"], nul);
    assert_eq!(after("Span", "1", 0)["span"], "1 day", "converted as usual");
    let order: Vec<(String, String)> = events
        .iter()
        .map(|e| (e.entity_type.clone(), e.entity_id.clone()))
        .collect();
    let pair = |t: &str, i: &str| (t.to_owned(), i.to_owned());
    assert_eq!(
        order,
        [
            pair("Doc", "1"),
            pair("Doc", "2"),
            pair("Doc", "3"),
            pair("Span", "1"),
            pair("Span", "2"),
            pair("Doc", "2"),
            pair("Span", "1"),
            pair("Span", "2"),
        ],
        "commit order"
    );
    let errors: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT l.entity_type, l.entity_id, e.error
           FROM observer_capture_errors e JOIN observer_change_log l ON l.id = e.change_id
          ORDER BY l.id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let named: Vec<(&str, &str)> = errors
        .iter()
        .map(|(t, i, _)| (t.as_str(), i.as_str()))
        .collect();
    assert_eq!(
        named,
        [
            ("Doc", "2"),
            ("Doc", "3"),
            ("Span", "1"),
            // Its before image (the capture set REPLICA IDENTITY FULL).
            ("Doc", "2"),
            ("Span", "1"),
            ("Span", "2")
        ],
        "{errors:?}"
    );
    assert!(
        errors[0]
            .2
            .contains(r#"json column(s) "doc" of this insert"#),
        "{errors:?}"
    );
    db.drop().await;
}

/// The relay's test of whether a `json` value reads as jsonb agrees with the server's, for the
/// edges of `numeric` and of the `\u0000` escape.
#[sqlx::test(migrations = "../../migrations")]
async fn the_relays_jsonb_test_agrees_with_the_server(pool: PgPool) {
    let mut texts: Vec<String> = [
        r#""\u0000""#,
        r#""\\u0000""#,
        r#""\\\u0000""#,
        r#"{"\u0000": 1}"#,
        r#""\u00000""#,
        r#""a\u0001""#,
        r#"["\"", "\u0000"]"#,
        "-0",
        "0e1073741822",
        "0e1073741823",
        "0e-1073741823",
        "1e-1073741823",
        "1.5e99999999999999999999",
        "12.5E+3",
        "-7.25e-3",
        "{\"deep\": [[[[[[[[[[1e-2]]]]]]]]]]}",
    ]
    .map(str::to_owned)
    .to_vec();
    for exponent in [131_070, 131_071, 131_072, -16_382, -16_383, -16_384] {
        for mantissa in ["1", "9.99", "0.001", "-10", "0", "0.0", "100"] {
            texts.push(format!("[{mantissa}e{exponent}]"));
        }
    }
    let fraction = |n: usize| format!("0.{}1", "0".repeat(n));
    texts.push(fraction(16_381));
    texts.push(fraction(16_382));
    texts.push(format!("1{}", "0".repeat(131_071)));
    texts.push(format!("1{}", "0".repeat(131_072)));
    texts.push(format!("0.{}", "0".repeat(16_384)));
    for text in &texts {
        let server = sqlx::query("SELECT $1::text::json::jsonb")
            .bind(text)
            .execute(&pool)
            .await
            .is_ok();
        let short: String = text.chars().take(40).collect();
        assert_eq!(
            wal::render::fits_jsonb(text, false),
            server,
            "{short}… ({} chars): the server says {server}",
            text.len()
        );
    }
}

/// In a database whose encoding is not UTF-8, jsonb also refuses a `\u` escape of a character
/// the encoding lacks (`\u20ac` in LATIN1). The relay keeps a `json` value with an escape above
/// U+007F as a string of its text, with a capture error, and carries on; text in the
/// database's own encoding (`é`) and other values arrive exactly.
#[tokio::test]
async fn in_a_latin1_database_json_escapes_the_encoding_lacks_do_not_stall_the_relay() {
    let Some(db) = WalDb::create(
        "latin1",
        "ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
    )
    .await
    else {
        return;
    };
    db.exec("CREATE TABLE docs (id int PRIMARY KEY, doc json, t text)")
        .await;
    db.capture("docs", "Doc").await;
    let relay = db.relay();
    db.exec(
        r#"INSERT INTO docs VALUES (1, '["\u20ac"]', 'café'), (2, '{"a": "plain"}', 'x'),
                                   (3, '["\u0041"]', 'y')"#,
    )
    .await;
    let events = db.events(3).await;
    stop(relay).await;
    let after: Vec<Value> = events.iter().map(|e| e.after.clone().unwrap()).collect();
    assert_eq!(after[0]["doc"], r#"["\u20ac"]"#, "kept as its text");
    assert_eq!(after[0]["t"], "café");
    assert_eq!(after[1]["doc"], serde_json::json!({"a": "plain"}));
    assert_eq!(after[2]["doc"], serde_json::json!(["A"]));
    let errors: i64 = sqlx::query_scalar("SELECT count(*) FROM observer_capture_errors")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(errors, 1);
    db.drop().await;
}

/// The relay's careful path (values that no longer read into the row type, kept as text) and a
/// json value jsonb cannot hold, in one change: both are kept as text, the change is delivered,
/// and each problem has its row in `observer_capture_errors`.
#[tokio::test]
async fn a_retyped_column_and_an_unfit_json_value_in_one_change_are_both_kept() {
    let Some(db) = WalDb::new("both").await else {
        return;
    };
    db.exec("CREATE TABLE t (id int PRIMARY KEY, v interval, doc json)")
        .await;
    db.capture("t", "T").await;
    db.exec(r#"INSERT INTO t VALUES (1, '1 day', '["\u0000"]')"#)
        .await;
    db.exec("ALTER TABLE t ALTER COLUMN v TYPE int USING 0")
        .await;
    db.exec("INSERT INTO t VALUES (2, 5, '[2]')").await;
    let relay = db.relay();
    let events = db.events(2).await;
    stop(relay).await;
    let first = events[0].after.clone().unwrap();
    assert_eq!(first["v"], "1 day");
    assert_eq!(first["doc"], r#"["\u0000"]"#);
    assert_eq!(
        events[1].after.clone().unwrap()["doc"],
        serde_json::json!([2])
    );
    let errors: Vec<(Option<i64>, String)> =
        sqlx::query_as("SELECT change_id, error FROM observer_capture_errors ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors
            .iter()
            .any(|e| e.1.contains("kept 1 change(s) as text"))
            && errors
                .iter()
                .any(|e| e.0.is_some() && e.1.contains(r#"json column(s) "doc""#)),
        "{errors:?}"
    );
    db.drop().await;
}
