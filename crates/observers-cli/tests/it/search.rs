//! End to end: an event processed by `observers run` is found by `observers search` (full text
//! and entity type) within a second of its delivery, and over `GET /api/observers/search`;
//! `observers events prune` applies retention.

use std::time::{Duration, Instant};

use crate::support::{Receiver, TestDb, signal, spawn_run, wait_exit, wait_until, write_config};
use crate::support::{capture, cli, free_port};

const LONG: Duration = Duration::from_secs(60);
/// The acceptance bound: found within 1 s of the delivery.
const FOUND_WITHIN: Duration = Duration::from_secs(1);

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Polls `observers search ARGS --format json` until it reports `want` matches.
async fn found(db: &TestDb, args: &[&str], want: u64, deadline: Instant) -> serde_json::Value {
    let mut full = vec!["search", "--format", "json"];
    full.extend_from_slice(args);
    loop {
        let body = json(&cli(db, &full));
        if body["total"] == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "observers {full:?}: {want} match(es) not found in time; last answer {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processed_event_is_searchable_within_a_second() {
    let db = TestDb::new("search").await;
    db.exec("CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, total numeric, status text)").await;
    assert!(cli(&db, &["migrate"]).status.success());
    capture(&db, "orders", "Order");
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = write_config(
        &dir,
        &format!(
            r#"
[source]
database_url = "{url}"
listener_id = "e2e-search"
poll_interval = "200ms"

[search]
backend = "postgres"

[metrics]
listen = "127.0.0.1:{port}"

[[observers]]
name = "notify-orders"
entity = "Order"

  [[observers.actions]]
  type = "webhook"
  url = "{base}/hooks/orders"
"#,
            url = db.url,
            base = rx.base
        ),
    );
    let mut run = spawn_run(&path, &dir.path().join("run.log"));

    db.exec("INSERT INTO orders (total, status) VALUES (42, 'zanzibar-express')")
        .await;
    wait_until("the delivery", LONG, || rx.count() >= 1).await;
    let deadline = Instant::now() + FOUND_WITHIN;
    let by_text = found(&db, &["--text", "Zanzibar"], 1, deadline).await;
    let by_entity = found(&db, &["--entity-type", "Order"], 1, deadline).await;
    assert_eq!(by_text, by_entity);
    let doc = &by_text["results"][0];
    assert_eq!(doc["entity_type"], "Order");
    assert_eq!(doc["event_type"], "insert");
    assert_eq!(
        doc["matched_observers"],
        serde_json::json!(["notify-orders"])
    );
    assert_eq!(
        doc["successful_actions"],
        serde_json::json!(["notify-orders:webhook"])
    );
    assert_eq!(doc["data"]["status"], "zanzibar-express");
    assert_eq!(
        json(&cli(
            &db,
            &["search", "--entity-type", "User", "--format", "json"]
        ))["total"],
        0
    );

    let api = format!("http://127.0.0.1:{port}/api/observers/search?text=zanzibar");
    let body: serde_json::Value = crate::support::http_client()
        .get(&api)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["total"], 1);
    assert_eq!(body["facets"]["entity_types"]["Order"], 1);

    signal(&run, "TERM");
    assert_eq!(wait_exit(&mut run, Duration::from_secs(10)).await, Some(0));

    let kept = json(&cli(
        &db,
        &["events", "prune", "--older-than", "1h", "--format", "json"],
    ));
    assert_eq!(kept["deleted"], 0);
    let gone = json(&cli(
        &db,
        &["events", "prune", "--older-than", "0s", "--format", "json"],
    ));
    assert_eq!(gone["deleted"], 1);
    assert_eq!(
        json(&cli(
            &db,
            &["search", "--text", "zanzibar", "--format", "json"]
        ))["total"],
        0
    );
    let bad = cli(&db, &["search", "--per-page", "5000"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--per-page"));
}
