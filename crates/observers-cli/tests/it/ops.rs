//! Operator tools against `observers run` on the real PostgreSQL: `replay`, retention run by
//! `run`, `debug-event` of a stored entity.

use std::time::Duration;

use serde_json::Value;

use crate::metrics::count;
use crate::support::{
    Receiver, Run, TestDb, capture, cli, json_of, spawn_run, wait_until, write_config,
};

const LONG: Duration = Duration::from_secs(60);

fn config(db: &TestDb, rx: &Receiver, extra: &str) -> String {
    format!(
        r#"
[source]
database_url = "{url}"
listener_id = "ops"
poll_interval = "100ms"

[retry]
max_attempts = 1

[dedup]
enabled = false
{extra}

[[observers]]
name = "paid"
entity = "Order"
condition = "status == 'paid'"

  [[observers.actions]]
  type = "webhook"
  url = "{base}/hooks/paid"

[[observers]]
name = "all"
entity = "Order"

  [[observers.actions]]
  type = "webhook"
  url = "{base}/hooks/all"
"#,
        url = db.url,
        base = rx.base
    )
}

/// `observers replay --config CFG --format json ARGS`, which must succeed.
fn replay(db: &TestDb, cfg: &str, args: &[&str]) -> Value {
    let mut all = vec!["replay", "--config", cfg, "--format", "json"];
    all.extend_from_slice(args);
    json_of(&cli(db, &all))
}

async fn cursor_at_end(db: &TestDb) -> bool {
    sqlx::query_scalar::<_, bool>(
        "SELECT coalesce((SELECT cursor_id FROM observer_checkpoints WHERE listener_id = 'ops'), 0)
             >= (SELECT max(id) FROM observer_change_log)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

async fn wait_processed(db: &TestDb) {
    let deadline = std::time::Instant::now() + LONG;
    while !cursor_at_end(db).await {
        assert!(
            std::time::Instant::now() < deadline,
            "cursor never reached the end of the log"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Three orders (1 and 3 paid) delivered by `observers run` and passed by its cursor.
struct Processed {
    db: TestDb,
    rx: Receiver,
    cfg: String,
    _dir: tempfile::TempDir,
    _run: Run,
}

async fn three_processed_orders(tag: &str) -> Processed {
    let db = TestDb::new(tag).await;
    db.exec("CREATE TABLE orders (id bigint PRIMARY KEY, status text)")
        .await;
    assert!(cli(&db, &["migrate"]).status.success());
    capture(&db, "orders", "Order");
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, &config(&db, &rx, ""));
    let run = spawn_run(&path, &dir.path().join("run.log"));
    db.exec("INSERT INTO orders VALUES (1, 'paid'), (2, 'new'), (3, 'paid')")
        .await;
    wait_until("five deliveries", LONG, || rx.count() >= 5).await;
    wait_processed(&db).await;
    Processed {
        cfg: path.to_str().unwrap().to_owned(),
        db,
        rx,
        _dir: dir,
        _run: run,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_resends_processed_changes_through_matching_observers_with_replay_keys() {
    let Processed { db, rx, cfg, .. } = &three_processed_orders("replay").await;
    let paid = |rx: &Receiver| -> Vec<String> {
        rx.deliveries()
            .into_iter()
            .filter(|d| d.path == "/hooks/paid")
            .map(|d| d.webhook_id)
            .collect()
    };
    assert_eq!(paid(rx).len(), 2);

    // Dry run: lists what would be sent through `paid` (the condition holds for 1 and 3), sends nothing.
    let dry = replay(
        db,
        cfg,
        &["--since", "1h", "--observer", "paid", "--dry-run"],
    );
    assert_eq!(dry["events"], 3, "{dry}");
    assert_eq!(dry["matched_events"], 2, "{dry}");
    let ids: Vec<&str> = dry["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["entity_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["1", "3"]);
    assert_eq!(dry["changes"][0]["actions"][0]["outcome"], "would send");
    assert_eq!(rx.count(), 5, "a dry run sends nothing");

    // The replay: only `paid`, new keys.
    let done = replay(db, cfg, &["--since", "1h", "--observer", "paid"]);
    let rid = done["replay_id"].as_i64().unwrap();
    assert_eq!(done["actions"], 2, "{done}");
    assert_eq!(done["failed"], 0, "{done}");
    wait_until("two replayed deliveries", LONG, || rx.count() >= 7).await;
    let keys = paid(rx);
    assert_eq!(keys.len(), 4, "{keys:?}");
    for key in &keys[2..] {
        assert!(key.ends_with(&format!(":paid:0:replay-{rid}")), "{key}");
        assert!(!keys[..2].contains(key));
    }
    assert_eq!(rx.count(), 7, "`all` was not replayed");

    // --same-keys, one entity: the original key again.
    let same = replay(
        db,
        cfg,
        &[
            "--since",
            "1h",
            "--entity-type",
            "Order",
            "--entity-id",
            "3",
            "--observer",
            "paid",
            "--same-keys",
        ],
    );
    assert_eq!(same["events"], 1, "{same}");
    wait_until("the same-key delivery", LONG, || rx.count() >= 8).await;
    let keys = paid(rx);
    assert!(keys[..2].contains(&keys[4]), "{keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_names_pruned_changes_and_refuses_unknown_observers() {
    let Processed { db, cfg, .. } = &three_processed_orders("replay_pruned").await;
    // Pruned changes are named, not silently skipped.
    let pruned = cli(db, &["changelog", "prune"]);
    assert!(pruned.status.success());
    let after = replay(db, cfg, &["--since", "1h", "--dry-run"]);
    assert_eq!(after["events"], 0, "{after}");
    assert_eq!(after["pruned"]["rows"], 3, "{after}");
    let text = cli(
        db,
        &["replay", "--config", cfg, "--since", "1h", "--dry-run"],
    );
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("3 change(s) created between"), "{text}");
    assert!(text.contains("pruned"), "{text}");

    // Bad input is named.
    let bad = cli(
        db,
        &[
            "replay",
            "--config",
            cfg,
            "--since",
            "1h",
            "--observer",
            "nope",
        ],
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--observer nope"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_applies_retention_in_batches_below_the_slowest_cursor_and_counts_it() {
    let db = TestDb::new("retention").await;
    db.exec("CREATE TABLE orders (id bigint PRIMARY KEY, status text)")
        .await;
    assert!(cli(&db, &["migrate"]).status.success());
    capture(&db, "orders", "Order");
    // Old and recent rows of each table; a slower consumer that has passed nothing yet.
    db.exec(
        "INSERT INTO observer_dlq_items (event_id, entity_type, entity_id, event, observer, action_index, action_type, error_code, error, status, created_at) VALUES
           (1, 'Order', '1', '{}', 'o', 0, 'webhook', 'E', 'e', 'resolved', now() - interval '2 days'),
           (2, 'Order', '2', '{}', 'o', 0, 'webhook', 'E', 'e', 'resolved', now() - interval '3 days'),
           (3, 'Order', '3', '{}', 'o', 0, 'webhook', 'E', 'e', 'resolved', now()),
           (4, 'Order', '4', '{}', 'o', 0, 'webhook', 'E', 'e', 'pending', now() - interval '2 days');
         INSERT INTO observer_jobs_completed (id, queue_name, kind, payload, priority, run_at, attempts, max_attempts, created_at, completed_at) VALUES
           (1, 'default', 'webhook', '{}', 0, now(), 1, 3, now(), now() - interval '2 days'),
           (2, 'default', 'webhook', '{}', 0, now(), 1, 3, now(), now());
         INSERT INTO observer_events (event_id, entity_type, entity_id, event_type, timestamp) VALUES
           (-1, 'Order', '9', 'insert', now() - interval '2 days');
         INSERT INTO observer_checkpoints (listener_id, cursor_id) VALUES ('slow', 0);",
    )
    .await;
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = r#"
[metrics]
listen = "127.0.0.1:0"

[search]
backend = "postgres"

[retention]
change_log = "1ms"
events = "1h"
jobs_completed = "1h"
dlq_resolved = "1h"
interval = "50ms"
batch = 1
"#;
    let path = write_config(&dir, &config(&db, &rx, extra));
    let log = dir.path().join("run.log");
    let _run = spawn_run(&path, &log);
    let base = crate::metrics::ops_url(&log).await;

    db.exec("INSERT INTO orders VALUES (1, 'paid'), (2, 'new'), (3, 'paid')")
        .await;
    wait_until("five deliveries", LONG, || rx.count() >= 5).await;
    wait_processed(&db).await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM observer_change_log").await,
        3,
        "nothing above the slow consumer's cursor went"
    );
    // The slow consumer passes the second change: the first two may go, the third stays.
    db.exec(
        "UPDATE observer_checkpoints SET cursor_id = (SELECT min(id) + 1 FROM observer_change_log) WHERE listener_id = 'slow'",
    )
    .await;

    let deleted = |s: &observers_metrics::Scrape, table: &str| {
        s.sum("observer_retention_deleted_total", &[("table", table)])
    };
    let s = crate::metrics::scrape_until(&base, "retention of every table", |s| {
        deleted(s, "change_log") >= 2.0
            && deleted(s, "dlq_resolved") >= 2.0
            && deleted(s, "jobs_completed") >= 1.0
            && deleted(s, "events") >= 1.0
    })
    .await;
    assert!((deleted(&s, "change_log") - 2.0).abs() < f64::EPSILON);
    assert_eq!(
        count(&db, "SELECT count(*) FROM observer_change_log").await,
        1
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM observer_dlq_items WHERE status = 'pending'"
        )
        .await,
        1,
        "pending DLQ items are not retention's"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM observer_dlq_items").await,
        2
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM observer_jobs_completed").await,
        1
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM observer_events WHERE event_id = -1"
        )
        .await,
        0
    );
    let oldest = s.sum(
        "observer_retention_oldest_row_age_seconds",
        &[("table", "dlq_resolved")],
    );
    assert!(
        oldest < 3600.0,
        "the oldest resolved item kept is recent: {oldest}"
    );
}

/// Order 1 inserted (`new`) and updated (`paid`), order 2 inserted, all processed and indexed, with
/// observers `paid` (a condition), `all`, `failing` (dead-letters) and `queued` (a job).
async fn entity_with_outcomes() -> Processed {
    let db = TestDb::new("debug_entity").await;
    db.exec("CREATE TABLE orders (id bigint PRIMARY KEY, status text)")
        .await;
    assert!(cli(&db, &["migrate"]).status.success());
    capture(&db, "orders", "Order");
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = r#"
[search]
backend = "postgres"
flush_interval = "50ms"

[[observers]]
name = "failing"
entity = "Order"

  [[observers.actions]]
  type = "webhook"
  url = "http://127.0.0.1:1/nothing-listens-here"

[[observers]]
name = "queued"
entity = "Order"

  [[observers.actions]]
  type = "webhook"
  mode = "queued"
  url = "{base}/hooks/queued"
"#;
    let extra = extra.replace("{base}", &rx.base);
    let path = write_config(&dir, &config(&db, &rx, &extra));
    let run = spawn_run(&path, &dir.path().join("run.log"));
    db.exec("INSERT INTO orders VALUES (1, 'new')").await;
    db.exec("UPDATE orders SET status = 'paid' WHERE id = 1")
        .await;
    db.exec("INSERT INTO orders VALUES (2, 'new')").await;
    wait_until("four deliveries", LONG, || rx.count() >= 4).await;
    wait_processed(&db).await;
    let deadline = std::time::Instant::now() + LONG;
    while count(&db, "SELECT count(*) FROM observer_events").await < 3
        || count(&db, "SELECT count(*) FROM observer_dlq_items").await < 3
    {
        assert!(
            std::time::Instant::now() < deadline,
            "audit trail and DLQ never filled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Processed {
        cfg: path.to_str().unwrap().to_owned(),
        db,
        rx,
        _dir: dir,
        _run: run,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_event_of_a_stored_entity_shows_matches_outcomes_and_dlq_items() {
    let Processed { db, cfg, .. } = &entity_with_outcomes().await;
    let debug = |extra: &[&str]| {
        let mut args = vec![
            "debug-event",
            "--config",
            cfg,
            "--entity-type",
            "Order",
            "--entity-id",
            "1",
        ];
        args.extend_from_slice(extra);
        cli(db, &args)
    };
    let out = json_of(&debug(&["--format", "json"]));
    let changes = out["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 2, "{out}");
    let observer = |c: &Value, name: &str| -> Value {
        c["observers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["observer"] == name)
            .unwrap()
            .clone()
    };
    let (insert, update) = (&changes[0], &changes[1]);
    assert_eq!(
        insert["found_in"],
        serde_json::json!(["change_log", "audit_trail"])
    );
    assert_eq!(insert["event"]["kind"], "insert", "{insert}");
    let paid = observer(insert, "paid");
    assert_eq!(paid["matched"], false);
    assert!(paid["why"].as_str().unwrap().contains("is false"), "{paid}");
    assert_eq!(
        observer(insert, "all")["actions"][0]["outcome"],
        "delivered"
    );
    let failing = observer(insert, "failing");
    assert_eq!(
        failing["actions"][0]["outcome"], "dead_lettered",
        "{failing}"
    );
    assert_eq!(failing["actions"][0]["dlq"].as_array().unwrap().len(), 1);
    let queued = &observer(insert, "queued")["actions"][0];
    assert!(
        queued["outcome"]
            .as_str()
            .unwrap()
            .starts_with("queued (job "),
        "{queued}"
    );
    assert!(
        queued["jobs"][0]["unique_key"]
            .as_str()
            .unwrap()
            .starts_with("1:queued:0"),
        "{queued}"
    );
    assert_eq!(observer(update, "paid")["matched"], true);
    assert_eq!(
        observer(update, "paid")["actions"][0]["outcome"],
        "delivered"
    );
    assert_eq!(
        update["audit"]["matched_observers"]
            .as_array()
            .unwrap()
            .len(),
        4
    );

    let last = json_of(&debug(&["--last", "1", "--format", "json"]));
    assert_eq!(last["changes"].as_array().unwrap().len(), 1);
    assert_eq!(last["changes"][0]["event"]["kind"], "update");

    let text = String::from_utf8_lossy(&debug(&[]).stdout).into_owned();
    assert!(text.contains("MATCH    paid"), "{text}");
    assert!(text.contains("dlq item"), "{text}");

    // Pruned from the change log, the changes are still found in the audit trail.
    assert!(cli(db, &["changelog", "prune"]).status.success());
    let pruned = json_of(&debug(&["--format", "json"]));
    assert_eq!(pruned["changes"].as_array().unwrap().len(), 2, "{pruned}");
    assert_eq!(
        pruned["changes"][0]["found_in"],
        serde_json::json!(["audit_trail"])
    );

    let none = cli(
        db,
        &[
            "debug-event",
            "--config",
            cfg,
            "--entity-type",
            "Order",
            "--entity-id",
            "404",
        ],
    );
    assert!(String::from_utf8_lossy(&none.stdout).contains("no change of Order 404"));
}

/// `observers ARGS` with a progress line at every step (`OBSERVERS_PROGRESS_INTERVAL=0s`); stderr
/// is not a terminal here, so the lines are plain.
fn with_progress(db: &TestDb, args: &[&str]) -> (std::process::Output, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_observers"))
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env("OBSERVERS_PROGRESS_INTERVAL", "0s")
        .env_remove("OBSERVERS_CONFIG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_operations_print_progress_lines_and_a_summary() {
    let Processed { db, cfg, .. } = &entity_with_outcomes().await;

    let (out, err) = with_progress(
        db,
        &["replay", "--config", cfg, "--since", "1h", "--dry-run"],
    );
    assert!(out.status.success(), "{err}");
    assert!(err.contains("replay: 1/3 changes (33%)"), "{err}");
    assert!(err.contains("ETA"), "{err}");
    assert!(err.contains("replay: 3 changes in "), "{err}");

    let (_, err) = with_progress(db, &["dlq", "retry", "--all", "--config", cfg]);
    assert!(err.contains("dlq retry: 3/3 items (100%)"), "{err}");
    assert!(err.contains("dlq retry: 3 items in "), "{err}");

    let (out, err) = with_progress(db, &["changelog", "prune", "--batch", "1"]);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("changelog prune: 1 rows, "), "{err}");
    assert!(err.contains("changelog prune: 3 rows in "), "{err}");

    let (out, err) = with_progress(db, &["events", "prune", "--older-than", "0s"]);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("events prune: 3 events, "), "{err}");
    assert!(err.contains("events prune: 3 events in "), "{err}");
}

/// `checkpoint set --latest` skips everything in the change log now, including the rows of a
/// transaction still writing it: it waits (saying so) until that transaction ends, then sets the
/// cursor past its rows, not below them.
#[tokio::test]
async fn checkpoint_set_latest_waits_for_writers_in_flight() {
    let db = TestDb::new("latest").await;
    let migrated = cli(&db, &["migrate"]);
    assert!(migrated.status.success(), "{migrated:?}");
    db.exec(
        "INSERT INTO observer_change_log (entity_type, entity_id, operation, after)
         SELECT 'T', g::text, 'insert', '{}' FROM generate_series(1, 2) g",
    )
    .await;
    let mut writer = db.pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO observer_change_log (entity_type, entity_id, operation, after)
         VALUES ('T', 'open', 'insert', '{}')",
    )
    .execute(&mut *writer)
    .await
    .unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_observers"))
        .args(["checkpoint", "set", "--listener", "ops", "--latest"])
        .env("DATABASE_URL", &db.url)
        .env_remove("OBSERVERS_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The command is looking at the writer (its session asks for the horizon again and again).
    let pool = db.pool.clone();
    let mut looking = false;
    let deadline = std::time::Instant::now() + LONG;
    while !looking {
        assert!(
            std::time::Instant::now() < deadline,
            "the command never looked"
        );
        looking = sqlx::query_scalar(
            "SELECT count(*) > 0 FROM pg_stat_activity
              WHERE datname = current_database() AND query LIKE '%observers_change_horizon_step%'
                AND pid <> pg_backend_pid()",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut child = child;
    assert!(
        child.try_wait().unwrap().is_none(),
        "--latest returned while a writer was in flight"
    );
    writer.commit().await.unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ops: (none) -> 3"
    );
}
