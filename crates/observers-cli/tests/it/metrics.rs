//! The ops server of `observers run` end to end: after real deliveries and dead-letters,
//! `/metrics` counters equal what happened (receiver deliveries, DLQ rows, checkpoint counts);
//! `/health`, `/ready`, `/status`, `observers status` and `observers metrics` agree; Debezium
//! Server payloads posted to `/ingest/debezium` reach the actions, malformed ones are refused
//! with 400 and write nothing.
// Counters are small integers, exact in f64; one scenario reads best as one function.
#![allow(clippy::float_cmp, clippy::cast_precision_loss, clippy::too_many_lines)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use observers_metrics::Scrape;

use crate::support::{
    Receiver, Run, TestDb, http_client, signal, wait_exit, wait_until, write_config,
};
use crate::support::{capture, cli};

const LONG: Duration = Duration::from_secs(60);
pub(crate) const TOKEN: &str = "test-ops-token";

/// `observers run` with the ops token in its environment.
pub(crate) fn spawn_run_with_token(config: &Path, log: &Path) -> Run {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_observers"))
        .args(["run", "--config", config.to_str().unwrap()])
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "info")
        .env("OBSERVERS_OPS_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map(Run)
        .unwrap()
}

/// Waits for the "ops server listening on http://ADDR" log line and returns the base URL.
pub(crate) async fn ops_url(log: &Path) -> String {
    let deadline = Instant::now() + LONG;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(rest) = text.split("ops server listening on ").nth(1) {
            return rest.split_whitespace().next().unwrap().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no ops server in the log:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A CLI command with the ops token in its environment (as an operator's shell would have it).
fn cli_with_token(db: &TestDb, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_observers"))
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env("OBSERVERS_OPS_TOKEN", TOKEN)
        .env_remove("OBSERVERS_CONFIG")
        .output()
        .unwrap()
}

pub(crate) async fn get(url: &str) -> (u16, String) {
    let resp = http_client().get(url).send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

pub(crate) async fn scrape(base: &str) -> Scrape {
    let (code, text) = get(&format!("{base}/metrics")).await;
    assert_eq!(code, 200);
    Scrape::parse(&text).unwrap()
}

/// Polls `/metrics` until `cond` holds, returning that scrape.
pub(crate) async fn scrape_until(base: &str, what: &str, cond: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + LONG;
    loop {
        let s = scrape(base).await;
        if cond(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn count(db: &TestDb, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

fn config(db: &TestDb, rx: &Receiver, extra: &str) -> String {
    format!(
        r#"
[source]
database_url = "{url}"
listener_id = "e2e"
batch_size = 50
poll_interval = "200ms"

[retry]
max_attempts = 2
initial_backoff = "10ms"
max_backoff = "50ms"

[breaker]
window_size = 100
minimum_calls = 100

[dedup]
enabled = false

[metrics]
listen = "127.0.0.1:0"
refresh_interval = "100ms"
{extra}

[[observers]]
name = "all-orders"
entity = "*"

  [[observers.actions]]
  type = "webhook"
  url = "{base}/hooks/all"

[[observers]]
name = "failing"
entity = "Order"

  [[observers.actions]]
  type = "webhook"
  url = "http://127.0.0.1:1/nothing-listens-here"
"#,
        url = db.url,
        base = rx.base
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_what_happened_and_status_agrees() {
    let db = TestDb::new("metrics").await;
    db.exec("CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, total int)")
        .await;
    assert!(cli(&db, &["migrate"]).status.success());
    capture(&db, "orders", "Order");
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, &config(&db, &rx, ""));
    let log = dir.path().join("run.log");
    let mut run = spawn_run_with_token(&path, &log);
    let base = ops_url(&log).await;

    let (code, body) = get(&format!("{base}/health")).await;
    assert_eq!((code, body.contains("ok")), (200, true));
    let (code, body) = get(&format!("{base}/ready")).await;
    assert_eq!(code, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["checks"]["database"]["ok"], true);

    db.exec("INSERT INTO orders (total) SELECT g FROM generate_series(1, 5) g")
        .await;
    db.exec("UPDATE orders SET total = total + 1 WHERE id <= 2")
        .await;
    wait_until("seven deliveries", LONG, || rx.count() >= 7).await;
    let deadline = Instant::now() + LONG;
    while count(&db, "SELECT count(*) FROM observer_dlq_items").await < 7 {
        assert!(
            Instant::now() < deadline,
            "the failing observer's items never reached the DLQ"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let s = scrape_until(&base, "every event counted and checkpointed", |s| {
        s.sum("observer_listener_events_total", &[("listener", "e2e")]) >= 7.0
            && s.sum("observer_dlq_pending_items", &[]) >= 7.0
            && s.sum("observer_source_backlog", &[("listener", "e2e")]) == 0.0
    })
    .await;
    let delivered = rx.count() as f64;
    let dlq_rows = count(&db, "SELECT count(*) FROM observer_dlq_items").await as f64;
    let checkpointed = count(
        &db,
        "SELECT event_count FROM observer_checkpoints WHERE listener_id = 'e2e'",
    )
    .await as f64;
    assert_eq!(
        s.sum(
            "observer_events_processed_total",
            &[("entity_type", "Order")]
        ),
        7.0
    );
    assert_eq!(
        s.sum(
            "observer_actions_executed_total",
            &[
                ("observer", "all-orders"),
                ("action_type", "webhook"),
                ("outcome", "success")
            ]
        ),
        delivered
    );
    assert_eq!(
        s.sum(
            "observer_actions_executed_total",
            &[("observer", "failing"), ("outcome", "dead_lettered")]
        ),
        dlq_rows
    );
    assert_eq!(
        s.sum("observer_actions_failed_total", &[("observer", "failing")]),
        7.0
    );
    // Every event had the failing observer's action dead-lettered.
    assert_eq!(
        s.sum("observer_events_failed_total", &[("entity_type", "Order")]),
        dlq_rows
    );
    assert_eq!(
        s.sum("observer_dlq_items_total", &[("observer", "failing")]),
        dlq_rows
    );
    assert_eq!(s.sum("observer_dlq_pending_items", &[]), dlq_rows);
    // max_attempts = 2: one retry per failed action, none for the healthy observer.
    assert_eq!(
        s.sum("observer_retries_total", &[("observer", "failing")]),
        7.0
    );
    assert_eq!(
        s.sum(
            "observer_retries_exhausted_total",
            &[("observer", "failing")]
        ),
        7.0
    );
    assert_eq!(
        s.sum("observer_retries_total", &[("observer", "all-orders")]),
        0.0
    );
    assert_eq!(s.sum("observer_observers_matched_total", &[]), 14.0);
    assert_eq!(
        s.sum("observer_listener_events_total", &[("listener", "e2e")]),
        checkpointed
    );
    let saves = s.sum("observer_checkpoint_saves_total", &[("listener", "e2e")]);
    assert!(
        saves >= 1.0 && saves <= s.sum("observer_listener_batches_total", &[("listener", "e2e")])
    );
    assert_eq!(
        s.sum("observer_event_processing_duration_seconds_count", &[]),
        7.0
    );
    assert_eq!(s.sum("observer_commit_to_dispatch_seconds_count", &[]), 7.0);
    assert_eq!(
        s.sum(
            "observer_action_duration_seconds_count",
            &[("action_type", "webhook")]
        ),
        14.0
    );
    for family in [
        "observer_build_info",
        "observer_events_processed",
        "observer_event_processing_duration_seconds",
        "observer_observers_registered",
        "observer_actions_executed",
        "observer_action_duration_seconds",
        "observer_retry_delay_seconds",
        "observer_dlq_items",
        "observer_dlq_pending_items",
        "observer_listener_batches",
        "observer_listener_batch_duration_seconds",
        "observer_checkpoint_saves",
        "observer_checkpoint_save_duration_seconds",
        "observer_checkpoint_lag_seconds",
        "observer_cutoff_lag_seconds",
        "observer_source_backlog",
        "observer_commit_to_dispatch_seconds",
        "observer_listeners_active",
        "observer_leader",
    ] {
        assert!(s.has_family(family), "/metrics lacks {family}");
    }
    assert_eq!(s.sum("observer_observers_registered", &[]), 2.0);

    // /status and the two commands read the same figures. With a token set, /status (error
    // texts) needs it.
    let (code, _) = get(&format!("{base}/status")).await;
    assert_eq!(code, 401);
    let resp = http_client()
        .get(format!("{base}/status"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["instance"]["listener_id"], "e2e");
    assert_eq!(status["metrics"]["events_processed"], 7.0);
    assert_eq!(status["database"]["dlq_pending"], 7);
    assert_eq!(status["database"]["listeners"][0]["listener_id"], "e2e");

    let out = cli_with_token(&db, &["status", "--url", &base, "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["database"]["dlq_pending"], 7);
    assert_eq!(report["database"]["listeners"][0]["events_processed"], 7);
    assert_eq!(report["instance"]["metrics"]["events_processed"], 7.0);
    let out = cli_with_token(&db, &["status", "--url", &base]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Observer System Status") && text.contains("Pending: 7"),
        "{text}"
    );

    let out = cli(&db, &["metrics", "--url", &base, "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(m["summary"]["events_processed"], 7.0);
    assert_eq!(m["summary"]["actions"]["dead_lettered"], 7.0);
    assert_eq!(m["summary"]["events_failed"], 7.0);

    signal(&run, "TERM");
    assert_eq!(wait_exit(&mut run, Duration::from_secs(10)).await, Some(0));
    // With the instance gone, status still reports the database and says why.
    let out = cli(&db, &["status", "--url", &base, "--format", "json"]);
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["instance"]["reachable"], false);
    let out = cli(&db, &["metrics", "--url", &base]);
    assert_eq!(out.status.code(), Some(1));
}

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/debezium")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

async fn post(url: &str, token: Option<&str>, body: Vec<u8>) -> (u16, serde_json::Value) {
    let mut req = http_client()
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_server_payloads_reach_the_actions_and_malformed_ones_write_nothing() {
    let db = TestDb::new("debezium").await;
    assert!(cli(&db, &["migrate"]).status.success());
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = r#"
[metrics.debezium]
entities = { "inventory.customers" = "Customer" }
"#;
    // The catch-all observer also takes snapshot reads (`op = "r"`), which arrive as kind `read`.
    let text = config(&db, &rx, extra)
        .replace("entity = \"Order\"", "entity = \"Nothing\"")
        .replace(
            "entity = \"*\"",
            "entity = \"*\"\nevents = [\"insert\", \"update\", \"delete\", \"read\"]",
        );
    let path = write_config(&dir, &text);
    let log = dir.path().join("run.log");
    let mut run = spawn_run_with_token(&path, &log);
    let base = ops_url(&log).await;
    let url = format!("{base}/ingest/debezium");

    let (code, _) = post(&url, None, fixture("insert.json")).await;
    assert_eq!(code, 401);
    let (code, _) = post(&url, Some("wrong"), fixture("insert.json")).await;
    assert_eq!(code, 401);

    for (name, kind) in [
        ("snapshot_read.json", "read"),
        ("insert.json", "insert"),
        ("update.json", "update"),
        ("delete.json", "delete"),
    ] {
        let before = rx.count();
        let (code, body) = post(&url, Some(TOKEN), fixture(name)).await;
        assert_eq!(code, 200, "{name}: {body}");
        assert_eq!(body["written"], 1, "{name}: {body}");
        wait_until(name, LONG, || rx.count() > before).await;
        let d = rx.deliveries().pop().unwrap();
        assert_eq!(d.body["entity_type"], "Customer", "{name}");
        assert_eq!(d.body["event_type"], kind, "{name}");
        assert_eq!(d.body["entity_id"], "1004", "{name}");
    }
    let last = rx.deliveries();
    assert_eq!(last[1].body["data"]["email"], "annek@noanswer.org");
    assert_eq!(last[2].body["data"]["first_name"], "Anne Marie");
    assert_eq!(last[2].body["before"]["first_name"], "Anne");
    assert_eq!(last[3].body["before"]["id"], 1004);

    // A batch (array) of Debezium Server events with a tombstone, all in one request.
    let before = rx.count();
    let (code, body) = post(&url, Some(TOKEN), fixture("batch.json")).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        (body["written"].as_u64(), body["skipped"].as_u64()),
        (Some(2), Some(1))
    );
    wait_until("the batch", LONG, || rx.count() >= before + 2).await;

    // Malformed: 400 naming the problem, and nothing of the batch written.
    let rows = count(&db, "SELECT count(*) FROM observer_change_log").await;
    for (name, want) in [
        ("malformed_batch.json", "event 1: missing `op`"),
        ("malformed_no_id.json", "no id column `id`"),
    ] {
        let (code, body) = post(&url, Some(TOKEN), fixture(name)).await;
        assert_eq!(code, 400, "{name}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(want), "{name}: {error}");
    }
    let (code, body) = post(&url, Some(TOKEN), b"{\"op\": ".to_vec()).await;
    assert_eq!(code, 400);
    assert!(body["error"].as_str().unwrap().contains("not valid JSON"));
    assert_eq!(
        count(&db, "SELECT count(*) FROM observer_change_log").await,
        rows
    );

    signal(&run, "TERM");
    assert_eq!(wait_exit(&mut run, Duration::from_secs(10)).await, Some(0));
}
