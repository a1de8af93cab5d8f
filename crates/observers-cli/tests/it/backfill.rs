//! `observers capture backfill` end to end: rows that existed before capture reach the observers
//! that name `read` in their `events` (and no other), once each, through `observers run` and a
//! real local HTTP receiver; a rerun resumes or says it is done; `--where` is a backfill of its
//! own; a backfill SIGKILLed mid-way resumes with no row twice and none missing.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::{
    Receiver, TestDb, capture, cli, json_of, signal, spawn_run, wait_exit, wait_until, write_config,
};

const LONG: Duration = Duration::from_secs(60);

fn config(db: &TestDb, rx: &Receiver) -> String {
    format!(
        r#"
[source]
database_url = "{url}"
listener_id = "backfill"
poll_interval = "100ms"

[dedup]
enabled = false

[[observers]]
name = "reads"
entity = "Item"
events = ["read"]

  [[observers.actions]]
  type = "webhook"
  url = "{base}/hooks/reads"

[[observers]]
name = "changes"
entity = "Item"

  [[observers.actions]]
  type = "webhook"
  url = "{base}/hooks/changes"
"#,
        url = db.url,
        base = rx.base
    )
}

/// `observers capture backfill ARGS --format json` with a progress line per batch; the JSON
/// result and the progress text.
fn backfill(db: &TestDb, args: &[&str]) -> (Value, String) {
    let mut all = vec!["capture", "backfill", "--format", "json"];
    all.extend_from_slice(args);
    let out = Command::new(env!("CARGO_BIN_EXE_observers"))
        .args(&all)
        .env("DATABASE_URL", &db.url)
        .env("OBSERVERS_PROGRESS_INTERVAL", "0s")
        .env_remove("OBSERVERS_CONFIG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (json_of(&out), stderr)
}

fn count_of(rx: &Receiver, path: &str) -> usize {
    rx.deliveries().iter().filter(|d| d.path == path).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_reaches_observers_of_read_once_per_row_through_run() {
    let db = TestDb::new("backfill").await;
    db.exec("CREATE TABLE items (id bigint PRIMARY KEY, label text)")
        .await;
    db.exec("INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 50) g")
        .await;
    assert!(cli(&db, &["migrate"]).status.success());
    capture(&db, "items", "Item");
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, &config(&db, &rx));
    let mut run = spawn_run(&path, &dir.path().join("run.log"));

    let (result, progress) = backfill(&db, &["--table", "items", "--batch", "7"]);
    assert_eq!(result["emitted"], 50);
    assert_eq!(result["state"]["batches"], 8);
    assert_eq!(result["entity_type"], "Item");
    assert!(progress.contains("backfill: 7/50 rows (14%)"), "{progress}");
    assert!(progress.contains("backfill: 50 rows in"), "{progress}");

    wait_until("50 read deliveries", LONG, || {
        count_of(&rx, "/hooks/reads") >= 50
    })
    .await;
    // A change after the backfill goes to the observer of inserts, not to the one of reads.
    db.exec("INSERT INTO items VALUES (51, 'new')").await;
    wait_until("the insert delivered", LONG, || {
        count_of(&rx, "/hooks/changes") >= 1
    })
    .await;

    let reads = rx.by_entity("/hooks/reads");
    assert_eq!(reads.len(), 50);
    for (id, got) in &reads {
        assert_eq!(got.len(), 1, "item {id} delivered once");
        let body = &got[0].body;
        assert_eq!(body["event_type"], "read");
        assert_eq!(body["data"]["label"], format!("item {id}"));
        assert!(body["before"].is_null());
        assert_eq!(body["changes"], serde_json::json!([]));
    }
    let changes = rx.by_entity("/hooks/changes");
    assert_eq!(changes.len(), 1, "reads only go to observers naming them");
    assert_eq!(changes["51"][0].body["event_type"], "insert");

    // Again: nothing left; `--where` is a backfill of its own.
    let (again, _) = backfill(&db, &["--table", "items"]);
    assert_eq!(
        (again["emitted"].as_u64(), again["already_done"].as_bool()),
        (Some(0), Some(true))
    );
    let (some, _) = backfill(&db, &["--table", "items", "--where", "id > 45"]);
    assert_eq!(some["emitted"], 6, "46 to 51");
    wait_until("56 read deliveries", LONG, || {
        count_of(&rx, "/hooks/reads") >= 56
    })
    .await;
    let text = cli(&db, &["capture", "backfill", "--table", "items"]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("already finished"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );

    // Bad requests exit 2 and say why.
    for (args, why) in [
        (vec!["--table", "nope"], "does not exist"),
        (
            vec!["--table", "items", "--where", "nope = 1"],
            "--where `nope = 1`",
        ),
        (vec!["--table", "items", "--batch", "0"], "batch size"),
    ] {
        let mut all = vec!["capture", "backfill"];
        all.extend_from_slice(&args);
        let out = cli(&db, &all);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    }

    signal(&run, "TERM");
    assert_eq!(wait_exit(&mut run, Duration::from_secs(10)).await, Some(0));
}

async fn backfill_state(db: &TestDb) -> Option<(i64, bool)> {
    sqlx::query_as("SELECT batches, finished_at IS NOT NULL FROM observer_backfills")
        .fetch_optional(&db.pool)
        .await
        .unwrap()
}

/// A backfill SIGKILLed after a few batches: the rerun continues after the last committed batch,
/// so every row is in the change log once, while rows written meanwhile are captured as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backfill_resumes_with_no_duplicate_and_no_gap() {
    let db = TestDb::new("backfill_kill").await;
    db.exec("CREATE TABLE items (id bigint PRIMARY KEY, label text)")
        .await;
    db.exec("INSERT INTO items SELECT g, 'x' FROM generate_series(1, 20000) g")
        .await;
    assert!(cli(&db, &["migrate"]).status.success());
    capture(&db, "items", "Item");

    let mut child = Command::new(env!("CARGO_BIN_EXE_observers"))
        .args(["capture", "backfill", "--table", "items", "--batch", "20"])
        .env("DATABASE_URL", &db.url)
        .env_remove("OBSERVERS_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + LONG;
    while backfill_state(&db).await.is_none_or(|(b, _)| b < 3) {
        assert!(std::time::Instant::now() < deadline, "no batch committed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    signal(&child, "KILL");
    let _ = child.wait();
    let (batches, finished) = backfill_state(&db).await.unwrap();
    assert!(!finished, "killed before the end ({batches} batches)");
    db.exec("UPDATE items SET label = 'changed' WHERE id IN (1, 19999)")
        .await;

    let (result, _) = backfill(&db, &["--table", "items", "--batch", "500"]);
    assert_eq!(result["resumed"], true);
    assert_eq!(result["state"]["rows_emitted"], 20000);
    let reads: Vec<(String, i64)> = sqlx::query_as(
        "SELECT entity_id, count(*) FROM observer_change_log WHERE operation = 'read' GROUP BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let reads: HashMap<String, i64> = reads.into_iter().collect();
    assert_eq!(reads.len(), 20000, "no gap");
    assert!(reads.values().all(|&n| n == 1), "no duplicate");
    let updates: i64 =
        sqlx::query_scalar("SELECT count(*) FROM observer_change_log WHERE operation = 'update'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(updates, 2);
}
