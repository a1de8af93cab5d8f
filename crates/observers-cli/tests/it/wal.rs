//! `[source] kind = "wal"` end to end, on a PostgreSQL with `wal_level = logical`
//! (`OBSERVERS_WAL_DATABASE_URL`, which `cargo xtask test` provides): `capture enable --kind wal`
//! before `run` starts, deliveries in commit order per entity, `observers run` killed with
//! SIGKILL mid-stream and started again (nothing lost), `status`, `capture list`, the slot's
//! metrics, and `capture drop-slot`; under HA only the leader relays, and a killed leader
//! loses nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use observers_metrics::Scrape;

use crate::metrics::{ops_url, scrape_until};
use crate::support::{
    Receiver, TestDb, cli, pause, signal, spawn_run, wait_exit, wait_until, write_config,
};

const LONG: Duration = Duration::from_secs(90);

fn config(db: &TestDb, rx: &Receiver) -> String {
    format!(
        r#"
[source]
database_url = "{url}"
listener_id = "wal"
kind = "wal"
slot = "{name}"
publication = "{name}_pub"
batch_size = 50
poll_interval = "100ms"

[retry]
max_attempts = 2
initial_backoff = "20ms"
max_backoff = "100ms"

[dedup]
enabled = false

[metrics]
listen = "127.0.0.1:0"
refresh_interval = "100ms"

[[observers]]
name = "counters"
entity = "Counter"
events = ["insert", "update", "truncate"]

  [[observers.actions]]
  type = "webhook"
  url = "{base}/hooks/counters"
"#,
        url = db.url,
        name = db.name,
        base = rx.base
    )
}

/// Each entity's `n` values in the order delivered.
fn sequences(rx: &Receiver) -> BTreeMap<String, Vec<i64>> {
    let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for d in rx.deliveries() {
        if let Some(n) = d.body["data"]["n"].as_i64() {
            out.entry(d.body["entity_id"].as_str().unwrap_or("").to_owned())
                .or_default()
                .push(n);
        }
    }
    out
}

/// A writer that sets counters 1–5 to 1, 2, … `last`, one update per transaction, pausing `pause`
/// after each round.
fn count_up(db: &TestDb, last: i64, pause: Duration) -> tokio::task::JoinHandle<()> {
    let pool = db.pool.clone();
    tokio::spawn(async move {
        for n in 1..=last {
            for id in 1..=5 {
                sqlx::query("UPDATE counters SET n = $2 WHERE id = $1")
                    .bind(id)
                    .bind(n)
                    .execute(&pool)
                    .await
                    .unwrap();
            }
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
    })
}

/// Nothing lost: each counter's deliveries go 1, 2, … `last` in commit order (a redelivery after a
/// kill may repeat a suffix).
fn assert_counted_up_to(rx: &Receiver, last: i64) {
    for (id, seq) in sequences(rx) {
        let mut expected = 0;
        for n in &seq {
            if *n == expected + 1 {
                expected = *n;
            } else {
                assert!(
                    *n <= expected,
                    "counter {id}: {n} after {expected}: {seq:?}"
                );
            }
        }
        assert_eq!(expected, last, "counter {id} lost an update: {seq:?}");
    }
}

/// A change delivered twice (in flight at a kill or a takeover) kept its `webhook-id` (the
/// event's idempotency key).
fn assert_one_key_per_change(rx: &Receiver) {
    let mut keys: BTreeMap<(String, i64), std::collections::BTreeSet<String>> = BTreeMap::new();
    for d in rx.deliveries() {
        if let Some(n) = d.body["data"]["n"].as_i64() {
            let entity = d.body["entity_id"].as_str().unwrap_or("").to_owned();
            keys.entry((entity, n))
                .or_default()
                .insert(d.webhook_id.clone());
        }
    }
    for (change, ids) in &keys {
        assert_eq!(
            ids.len(),
            1,
            "{change:?} delivered under several keys: {ids:?}"
        );
    }
}

/// The WAL source under `observers run`, killed once with SIGKILL; returns a scrape with the
/// WAL families moved (for the families test), or `None` without a logical server.
// One scenario, read top to bottom.
#[allow(clippy::too_many_lines)]
pub async fn wal_instance() -> Option<Scrape> {
    let db = TestDb::on_logical("wal").await?;
    db.exec("CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL)")
        .await;
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, &config(&db, &rx));
    let conf = path.to_str().unwrap();
    capture_counters(&db, &path);
    let out = cli(&db, &["capture", "list"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains(" wal ") && listed.contains(" ok"),
        "{listed}"
    );

    // Committed before `run` starts: the slot keeps them.
    db.exec("INSERT INTO counters SELECT g, 0 FROM generate_series(1, 5) g")
        .await;
    let log = dir.path().join("run.log");
    let mut run = spawn_run(&path, &log);
    let base = ops_url(&log).await;
    wait_until("the five inserts", LONG, || rx.count() >= 5).await;

    // Writers keep updating while `run` is killed and started again.
    let writer = count_up(&db, 40, Duration::ZERO);
    wait_until("some updates delivered", LONG, || rx.count() >= 30).await;
    signal(&run, "KILL");
    let _ = wait_exit(&mut run, Duration::from_secs(10)).await;
    writer.await.unwrap();
    let log2 = dir.path().join("run2.log");
    let mut run = spawn_run(&path, &log2);
    let base2 = ops_url(&log2).await;
    drop(base);
    wait_until("every counter reaches 40", LONG, || {
        let s = sequences(&rx);
        s.len() == 5 && s.values().all(|v| v.last() == Some(&40))
    })
    .await;
    assert_counted_up_to(&rx, 40);
    db.exec("TRUNCATE counters").await;
    wait_until("the truncate", LONG, || {
        rx.deliveries()
            .iter()
            .any(|d| d.body["event_type"] == "truncate")
    })
    .await;
    let scrape = scrape_until(&base2, "the relay's metrics", |s| {
        s.sum("observer_wal_relayed_changes_total", &[]) > 0.0
            && s.select("observer_wal_slot_retained_bytes", &[])
                .next()
                .is_some()
            && s.select("observer_wal_slot_lag_bytes", &[])
                .next()
                .is_some()
    })
    .await;
    let status = cli(&db, &["status", "--url", &base2]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("Replication Slots") && text.contains(&format!("{}: streaming", db.name)),
        "{text}"
    );
    let refused = cli(&db, &["capture", "drop-slot", "--config", conf]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is being streamed"));
    signal(&run, "TERM");
    assert_eq!(wait_exit(&mut run, Duration::from_secs(15)).await, Some(0));
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let out = cli(&db, &["capture", "drop-slot", "--config", conf]);
        if out.status.success() {
            assert!(String::from_utf8_lossy(&out.stdout).contains("dropped replication slot"));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Some(scrape)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_source_under_observers_run_survives_sigkill() {
    wal_instance().await;
}

/// `wal_delivery = "direct"` under `observers run`: changes committed before `run` starts and
/// while it is killed with SIGKILL and started again are all delivered, in commit order per
/// entity, a redelivered change with the same `webhook-id`; nothing of the WAL table is written
/// to the change log, while a table captured by trigger in the same database is delivered
/// beside it; `status` lists the stream's checkpoint.
// One scenario, read top to bottom.
#[allow(clippy::too_many_lines)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_wal_delivery_under_observers_run_survives_sigkill() {
    let Some(db) = TestDb::on_logical("direct").await else {
        return;
    };
    db.exec(
        "CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL);
         CREATE TABLE notes (id int PRIMARY KEY, body text)",
    )
    .await;
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = config(&db, &rx).replace(
        "kind = \"wal\"\n",
        "kind = \"wal\"\nwal_delivery = \"direct\"\n",
    ) + &format!(
        r#"
[[observers]]
name = "notes"
entity = "Note"
events = ["insert"]

  [[observers.actions]]
  type = "webhook"
  url = "{base}/hooks/notes"
"#,
        base = rx.base
    );
    let path = write_config(&dir, &text);
    let conf = path.to_str().unwrap();
    capture_counters(&db, &path);
    let out = cli(
        &db,
        &[
            "capture", "enable", "--config", conf, "--table", "notes", "--entity", "Note",
            "--kind", "trigger",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    db.exec("INSERT INTO counters SELECT g, 0 FROM generate_series(1, 5) g")
        .await;
    let log = dir.path().join("run.log");
    let mut run = spawn_run(&path, &log);
    let base = ops_url(&log).await;
    wait_until("the five inserts", LONG, || rx.count() >= 5).await;
    let writer = count_up(&db, 40, Duration::ZERO);
    wait_until("some updates delivered", LONG, || rx.count() >= 30).await;
    signal(&run, "KILL");
    let _ = wait_exit(&mut run, Duration::from_secs(10)).await;
    writer.await.unwrap();
    drop(base);
    let log2 = dir.path().join("run2.log");
    let mut run = spawn_run(&path, &log2);
    let base2 = ops_url(&log2).await;
    wait_until("every counter reaches 40", LONG, || {
        let s = sequences(&rx);
        s.len() == 5 && s.values().all(|v| v.last() == Some(&40))
    })
    .await;
    assert_counted_up_to(&rx, 40);
    // A change delivered twice (in flight at the kill) kept its idempotency key.
    assert_one_key_per_change(&rx);

    db.exec("INSERT INTO notes VALUES (1, 'by trigger')").await;
    wait_until("the trigger-captured note", LONG, || {
        rx.deliveries().iter().any(|d| d.path.ends_with("/notes"))
    })
    .await;
    let logged: Vec<String> =
        sqlx::query_scalar("SELECT entity_type FROM observer_change_log ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        logged,
        ["Note"],
        "only the trigger's change is in the change log"
    );
    scrape_until(&base2, "the stream's counter", |s| {
        s.sum("observer_wal_relayed_changes_total", &[]) > 0.0
    })
    .await;
    let status = cli(&db, &["status", "--url", &base2]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("wal:wal"),
        "the stream's checkpoint is listed: {text}"
    );
    let refused = cli(
        &db,
        &["checkpoint", "set", "--listener", "wal:wal", "--start"],
    );
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("WAL stream consumer"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    signal(&run, "TERM");
    assert_eq!(wait_exit(&mut run, Duration::from_secs(15)).await, Some(0));
}

/// The config of instance `name` in an HA group on the WAL source: `config` plus `[ha]`, without
/// the metrics server. Returns its path and the path of its log.
fn ha_instance(
    db: &TestDb,
    rx: &Receiver,
    dir: &tempfile::TempDir,
    name: &str,
    direct: bool,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let delivery = if direct { "direct" } else { "change_log" };
    let text = config(db, rx)
        .replace(
            "kind = \"wal\"\n",
            &format!("kind = \"wal\"\nwal_delivery = \"{delivery}\"\n"),
        )
        .replace(
            "[metrics]\nlisten = \"127.0.0.1:0\"\nrefresh_interval = \"100ms\"\n",
            "",
        )
        .replace(
            "[dedup]\nenabled = false\n",
            &format!(
                "[dedup]\nenabled = false\n\n[ha]\nenabled = true\ngroup = \"wal\"\n\
                 instance_id = \"{name}\"\nlease_ttl = \"2s\"\nrenew_interval = \"300ms\"\n"
            ),
        );
    assert!(text.contains("[ha]"), "{text}");
    let path = dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    (path, dir.path().join(format!("{name}.log")))
}

/// `observers capture enable --config CONF` of `counters` as entity `Counter`, through the WAL.
fn capture_counters(db: &TestDb, conf: &std::path::Path) {
    let out = cli(
        db,
        &[
            "capture",
            "enable",
            "--config",
            conf.to_str().unwrap(),
            "--table",
            "counters",
            "--entity",
            "Counter",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("kind wal"));
}

/// Whether the instance logging to `log` has started the WAL relay (or, with direct delivery,
/// the stream) as the group's leader.
fn relays(log: &std::path::Path) -> bool {
    let text = crate::ha::log_text(log);
    text.contains("this instance leads the group: starting the WAL relay")
        || text.contains("this instance leads the group: starting the WAL stream")
}

/// Two instances, `a` and `b`, in an HA group on the WAL source with `counters` captured: `a`
/// leads and relays, `b` stands by, and the five rows inserted have been delivered.
struct HaPair {
    db: TestDb,
    rx: Receiver,
    a: crate::support::Run,
    b: crate::support::Run,
    a_log: std::path::PathBuf,
    b_log: std::path::PathBuf,
    /// Holds the configs and logs.
    _dir: tempfile::TempDir,
}

impl HaPair {
    async fn start(tag: &str) -> Option<Self> {
        Self::start_with(tag, false).await
    }

    /// With `direct`, the instances deliver from the stream (`wal_delivery = "direct"`).
    async fn start_with(tag: &str, direct: bool) -> Option<Self> {
        let db = TestDb::on_logical(tag).await?;
        db.exec("CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL)")
            .await;
        let rx = Receiver::start().await;
        let dir = tempfile::tempdir().unwrap();
        let (a_conf, a_log) = ha_instance(&db, &rx, &dir, "a", direct);
        let (b_conf, b_log) = ha_instance(&db, &rx, &dir, "b", direct);
        capture_counters(&db, &a_conf);
        let a = spawn_run(&a_conf, &a_log);
        wait_until("a leads and relays", LONG, || relays(&a_log)).await;
        let b = spawn_run(&b_conf, &b_log);
        db.exec("INSERT INTO counters SELECT g, 0 FROM generate_series(1, 5) g")
            .await;
        wait_until("the five inserts", LONG, || rx.count() >= 5).await;
        Some(Self {
            db,
            rx,
            a,
            b,
            a_log,
            b_log,
            _dir: dir,
        })
    }
}

/// Two instances in an HA group on the WAL source: only the leader runs the relay (the standby
/// never streams the slot); the leader is killed with SIGKILL while writers commit; the standby
/// takes over the group, starts the relay from the slot's saved progress, and every update
/// arrives, in commit order per entity (a redelivery after the kill may repeat a suffix).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_ha_only_the_leader_relays_and_a_killed_leader_loses_nothing() {
    const UPDATES: i64 = 30;
    // Bound by name, `_dir` lives to the end of the test, and with it the logs read below.
    let Some(HaPair {
        db,
        rx,
        mut a,
        mut b,
        b_log,
        _dir,
        ..
    }) = HaPair::start("wal_ha").await
    else {
        return;
    };

    let writer = count_up(&db, UPDATES, Duration::from_millis(20));
    wait_until("some updates delivered", LONG, || rx.count() >= 25).await;
    let b_before = crate::ha::log_text(&b_log);
    assert!(
        !b_before.contains("WAL relay streaming")
            && !b_before.contains("streamed by another instance")
            && !relays(&b_log),
        "the standby streamed the slot while a led: {b_before}"
    );
    signal(&a, "KILL");
    let _ = wait_exit(&mut a, Duration::from_secs(10)).await;
    writer.await.unwrap();
    wait_until("b takes over the relay", LONG, || relays(&b_log)).await;
    wait_until("every counter reaches the last update", LONG, || {
        let s = sequences(&rx);
        s.len() == 5 && s.values().all(|v| v.last() == Some(&UPDATES))
    })
    .await;
    assert_counted_up_to(&rx, UPDATES);
    signal(&b, "TERM");
    assert_eq!(wait_exit(&mut b, Duration::from_secs(15)).await, Some(0));
}

/// The HA leader paused (SIGSTOP) while its relay streams: its replication connection would hold
/// the slot until the server's `wal_sender_timeout` (60 s here). The new leader ends that
/// connection and relays at once; the woken old leader stops its relay; nothing is lost, commit
/// order per entity holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_ha_a_paused_leaders_stream_is_ended_and_the_new_leader_relays() {
    paused_leader_is_replaced("wal_pause", false).await;
}

/// Direct delivery under HA: only the leader streams; paused (SIGSTOP) while writers commit, it
/// is replaced by the standby, which ends its stream and delivers from the slot's saved LSN. The
/// old leader, woken, stops streaming (its saves are fenced by the leader lease). Nothing is lost,
/// commit order per entity holds, and a change delivered twice kept its `webhook-id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_ha_direct_delivery_survives_a_paused_leader() {
    paused_leader_is_replaced("wal_direct_ha", true).await;
}

/// An HA pair on the WAL source (with `direct`, delivering from the stream); the leader `a` is
/// paused while writers commit, `b` takes over (ending `a`'s replication connection, which would
/// hold the slot until the server's `wal_sender_timeout`, 60 s here), `a` wakes and stops
/// streaming, and one more update goes through: every update arrives, in commit order per
/// entity. With `direct`, a change delivered twice kept its `webhook-id`, and nothing went into
/// the change log.
async fn paused_leader_is_replaced(tag: &str, direct: bool) {
    const UPDATES: i64 = 20;
    // Well under wal_sender_timeout: a takeover that waited for the server would miss it.
    const TAKEOVER: Duration = Duration::from_secs(30);
    let Some(HaPair {
        db,
        rx,
        a,
        mut b,
        a_log,
        b_log,
        _dir,
    }) = HaPair::start_with(tag, direct).await
    else {
        return;
    };
    let what = if direct { "stream" } else { "relay" };
    assert!(!relays(&b_log), "the standby streams while a leads");
    pause(&a).await;
    let writer = count_up(&db, UPDATES, Duration::from_millis(20));
    wait_until("b ends a's stream and takes over", TAKEOVER, || {
        relays(&b_log)
            && crate::ha::log_text(&b_log)
                .contains("ended the replication connection of a former leader's relay")
    })
    .await;
    writer.await.unwrap();
    wait_until("every counter reaches the last update", TAKEOVER, || {
        let s = sequences(&rx);
        s.len() == 5 && s.values().all(|v| v.last() == Some(&UPDATES))
    })
    .await;
    signal(&a, "CONT");
    wait_until("a, awake, stops streaming", LONG, || {
        crate::ha::log_text(&a_log).contains(&format!(
            "no longer leads the group: stopping the WAL {what}"
        ))
    })
    .await;
    db.exec(&format!("UPDATE counters SET n = {}", UPDATES + 1))
        .await;
    wait_until("the update after a woke", LONG, || {
        sequences(&rx)
            .values()
            .all(|v| v.last() == Some(&(UPDATES + 1)))
    })
    .await;
    assert_counted_up_to(&rx, UPDATES + 1);
    if direct {
        assert_one_key_per_change(&rx);
        let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM observer_change_log")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(logged, 0, "nothing copied into the change log");
    }
    signal(&b, "TERM");
    assert_eq!(wait_exit(&mut b, Duration::from_secs(15)).await, Some(0));
    drop(a);
}
