//! The job queue end to end: `observers run` with queued webhooks delivers every change through
//! its workers; an `observers worker` process SIGKILLed mid-job loses nothing (another worker
//! rescues the job); `observers jobs list|stats|retry|purge`.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::Value;

use crate::support::{
    Receiver, Run, TestDb, signal, spawn_run, wait_exit, wait_until, write_config,
};
use crate::support::{capture, cli, json_of};

const LONG: Duration = Duration::from_secs(60);

fn spawn_worker(config: &std::path::Path, log: &std::path::Path) -> Run {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_observers"))
        .args([
            "worker",
            "--workers",
            "2",
            "--config",
            config.to_str().unwrap(),
        ])
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map(Run)
        .unwrap()
}

fn config(db: &TestDb, url: &str, queue: &str) -> String {
    format!(
        r#"
[source]
database_url = "{db}"
listener_id = "queue-e2e"
poll_interval = "200ms"

[queue]
{queue}

[[observers]]
name = "orders"
entity = "Order"

  [[observers.actions]]
  type = "webhook"
  url = "{url}"
  timeout = "30s"
  mode = "queued"
"#,
        db = db.url
    )
}

async fn orders_table(db: &TestDb) {
    db.exec("CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, total int)")
        .await;
    assert!(cli(db, &["migrate"]).status.success());
    capture(db, "orders", "Order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_queued_actions_delivers_every_change_through_the_workers() {
    let db = TestDb::new("queued").await;
    orders_table(&db).await;
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        &config(
            &db,
            &format!("{}/hooks/orders", rx.base),
            "workers = 3\npoll_interval = \"200ms\"",
        ),
    );
    let mut run = spawn_run(&path, &dir.path().join("run.log"));
    db.exec("INSERT INTO orders (total) SELECT g FROM generate_series(1, 150) g")
        .await;
    db.exec("UPDATE orders SET total = total + 1 WHERE id <= 50")
        .await;
    wait_until("200 deliveries", LONG, || rx.count() >= 200).await;
    let stats = json_of(&cli(&db, &["jobs", "stats", "--format", "json"]));
    signal(&run, "TERM");
    assert_eq!(wait_exit(&mut run, Duration::from_secs(10)).await, Some(0));

    let deliveries = rx.deliveries();
    assert_eq!(deliveries.len(), 200, "nothing delivered twice");
    let ids: HashSet<&str> = deliveries.iter().map(|d| d.webhook_id.as_str()).collect();
    assert_eq!(ids.len(), 200, "one delivery per change");
    let entities: HashSet<&str> = deliveries
        .iter()
        .map(|d| d.body["entity_id"].as_str().unwrap())
        .collect();
    assert_eq!(entities.len(), 150);
    assert_eq!(stats["failed"], 0);
    assert_eq!(
        stats["pending"].as_u64().unwrap()
            + stats["processing"].as_u64().unwrap()
            + stats["completed"].as_u64().unwrap(),
        200
    );
    let after = json_of(&cli(&db, &["jobs", "stats", "--format", "json"]));
    assert_eq!(
        (
            after["completed"].as_u64(),
            after["pending"].as_u64(),
            after["processing"].as_u64()
        ),
        (Some(200), Some(0), Some(0))
    );
}

/// Hangs on its first request (a job in flight when its worker dies), answers 200 afterwards.
#[derive(Clone, Default)]
struct HangOnce {
    seen: Arc<AtomicUsize>,
    ok: Arc<AtomicUsize>,
}

async fn hang_once(State(s): State<HangOnce>) -> StatusCode {
    if s.seen.fetch_add(1, Ordering::SeqCst) == 0 {
        std::future::pending::<()>().await;
    }
    s.ok.fetch_add(1, Ordering::SeqCst);
    StatusCode::OK
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_worker_process_loses_no_job() {
    let db = TestDb::new("workerkill").await;
    orders_table(&db).await;
    let hook = HangOnce::default();
    let app = axum::Router::new()
        .route("/hook", post(hang_once))
        .with_state(hook.clone());
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", socket.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(socket, app).await.unwrap() });
    let dir = tempfile::tempdir().unwrap();
    // `run` only enqueues; workers run in separate processes.
    let path = write_config(
        &dir,
        &config(
            &db,
            &url,
            "workers = 0\nheartbeat_interval = \"300ms\"\nstale_after = \"2s\"\npoll_interval = \"200ms\"",
        ),
    );
    let mut run = spawn_run(&path, &dir.path().join("run.log"));
    let mut doomed = spawn_worker(&path, &dir.path().join("doomed.log"));
    db.exec("INSERT INTO orders (total) VALUES (7)").await;
    wait_until("the first worker is mid-job", LONG, || {
        hook.seen.load(Ordering::SeqCst) == 1
    })
    .await;
    signal(&doomed, "KILL");
    let _ = wait_exit(&mut doomed, Duration::from_secs(10)).await;
    let held = json_of(&cli(
        &db,
        &["jobs", "list", "--status", "processing", "--format", "json"],
    ));
    assert_eq!(
        held.as_array().unwrap().len(),
        1,
        "the killed worker's job is still held"
    );

    let mut rescuer = spawn_worker(&path, &dir.path().join("rescuer.log"));
    wait_until("the job delivered by the second worker", LONG, || {
        hook.ok.load(Ordering::SeqCst) == 1
    })
    .await;
    let mut completed = Value::Null;
    for _ in 0..500 {
        completed = json_of(&cli(
            &db,
            &["jobs", "list", "--status", "completed", "--format", "json"],
        ));
        if !completed.as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let job = &completed.as_array().unwrap()[0];
    assert_eq!(job["attempts"], 2, "the killed run counted as one attempt");
    assert_ne!(
        job["locked_by"], held[0]["locked_by"],
        "completed by another worker"
    );
    for child in [&mut rescuer, &mut run] {
        signal(child, "TERM");
        assert_eq!(wait_exit(child, Duration::from_secs(10)).await, Some(0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_commands_list_stats_retry_and_purge() {
    let db = TestDb::new("jobscli").await;
    assert!(cli(&db, &["migrate"]).status.success());
    db.exec(
        "INSERT INTO observer_jobs (kind, payload, status, attempts, last_error) VALUES \
         ('email', '{}', 'failed', 8, 'smtp down'), ('webhook', '{}', 'failed', 8, '503')",
    )
    .await;
    db.exec(
        "INSERT INTO observer_jobs_completed (id, queue_name, kind, payload, priority, run_at, \
           attempts, max_attempts, created_at, started_at, completed_at) \
         VALUES (nextval('observer_jobs_id_seq'), 'default', 'webhook', '{}', 0, now(), 1, 8, \
           now(), now() - interval '2 seconds', now() - interval '1 second')",
    )
    .await;

    let stats = json_of(&cli(&db, &["jobs", "stats", "--format", "json"]));
    assert_eq!(
        (
            &stats["pending"],
            &stats["processing"],
            &stats["completed"],
            &stats["failed"]
        ),
        (
            &Value::from(0),
            &Value::from(0),
            &Value::from(1),
            &Value::from(2)
        )
    );
    let avg = stats["avg_run_ms"].as_f64().unwrap();
    assert!((avg - 1000.0).abs() < 1.0, "avg_run_ms {avg}");

    let failed = json_of(&cli(
        &db,
        &["jobs", "list", "--status", "failed", "--format", "json"],
    ));
    let failed = failed.as_array().unwrap();
    assert_eq!(failed.len(), 2);
    assert_eq!(failed[0]["last_error"], "503", "newest first");
    let text = cli(&db, &["jobs", "list"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("smtp down"));

    let one = failed[1]["id"].as_i64().unwrap().to_string();
    assert_eq!(
        json_of(&cli(
            &db,
            &["jobs", "retry", "--id", &one, "--format", "json"]
        ))["retried"],
        1
    );
    assert_eq!(
        json_of(&cli(&db, &["jobs", "retry", "--all", "--format", "json"]))["retried"],
        1
    );
    let pending = json_of(&cli(
        &db,
        &["jobs", "list", "--status", "pending", "--format", "json"],
    ));
    assert!(
        pending
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["attempts"] == 0)
    );
    assert_eq!(
        json_of(&cli(
            &db,
            &["jobs", "purge", "--status", "pending", "--format", "json"]
        ))["purged"],
        2
    );

    assert_eq!(
        cli(&db, &["jobs", "retry"]).status.code(),
        Some(2),
        "retry needs --all or --id"
    );
    assert_eq!(
        cli(&db, &["jobs", "purge", "--status", "processing"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        cli(&db, &["jobs", "list", "--status", "done"])
            .status
            .code(),
        Some(2)
    );
}

fn two_queue_config(db: &TestDb, base: &str, queue: &str) -> String {
    format!(
        r#"
[source]
database_url = "{db}"
listener_id = "queues-e2e"
poll_interval = "100ms"

[queue]
poll_interval = "200ms"
{queue}

[[observers]]
name = "orders"
entity = "Order"

  [[observers.actions]]
  type = "webhook"
  url = "{base}/hooks/urgent"
  mode = "queued"
  queue = "urgent"
  priority = 5

  [[observers.actions]]
  type = "webhook"
  url = "{base}/hooks/bulk"
  mode = "queued"
  queue = "bulk"
"#,
        db = db.url
    )
}

/// Each queued action's jobs go to its `queue`; `observers run` with `[queue] queues =
/// ["urgent"]` serves only that one, `jobs stats` and `jobs list --queue` show each queue, and
/// an `observers worker` whose config lists no queues serves every queue the config names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_serve_the_configured_queues_and_jobs_commands_show_each() {
    let db = TestDb::new("queues").await;
    orders_table(&db).await;
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        &two_queue_config(&db, &rx.base, "workers = 2\nqueues = [\"urgent\"]"),
    );
    let mut run = spawn_run(&path, &dir.path().join("run.log"));
    db.exec("INSERT INTO orders (total) SELECT g FROM generate_series(1, 5) g")
        .await;
    wait_until("5 urgent deliveries", LONG, || rx.count() >= 5).await;
    let stats = json_of(&cli(&db, &["jobs", "stats", "--format", "json"]));
    let queues: Vec<(String, u64, u64)> = stats["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            (
                q["queue"].as_str().unwrap().to_owned(),
                q["pending"].as_u64().unwrap(),
                q["completed"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        queues,
        [("bulk".into(), 5, 0), ("urgent".into(), 0, 5)],
        "{stats}"
    );
    assert_eq!(
        (stats["pending"].as_u64(), stats["completed"].as_u64()),
        (Some(5), Some(5))
    );
    let bulk = json_of(&cli(
        &db,
        &["jobs", "stats", "--queue", "bulk", "--format", "json"],
    ));
    assert_eq!(
        (bulk["pending"].as_u64(), bulk["completed"].as_u64()),
        (Some(5), Some(0))
    );
    let listed = json_of(&cli(
        &db,
        &["jobs", "list", "--queue", "urgent", "--format", "json"],
    ));
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 5);
    assert!(
        listed
            .iter()
            .all(|j| j["queue"] == "urgent" && j["priority"] == 5)
    );
    let text = String::from_utf8_lossy(&cli(&db, &["jobs", "stats"]).stdout).into_owned();
    assert!(text.contains("bulk") && text.contains("urgent"), "{text}");
    assert_eq!(
        cli(&db, &["jobs", "list", "--queue", "no good"])
            .status
            .code(),
        Some(2)
    );
    assert!(
        rx.deliveries().iter().all(|d| d.path == "/hooks/urgent"),
        "no worker serves bulk yet"
    );
    signal(&run, "TERM");
    assert_eq!(wait_exit(&mut run, Duration::from_secs(10)).await, Some(0));

    // A worker whose config lists no queues serves every queue the config names.
    let all = dir.path().join("all.toml");
    std::fs::write(&all, two_queue_config(&db, &rx.base, "workers = 2")).unwrap();
    let _worker = spawn_worker(&all, &dir.path().join("worker.log"));
    wait_until("the bulk jobs delivered", LONG, || rx.count() >= 10).await;
    let bulk = json_of(&cli(
        &db,
        &["jobs", "stats", "--queue", "bulk", "--format", "json"],
    ));
    assert_eq!(bulk["completed"].as_u64(), Some(5));
}
