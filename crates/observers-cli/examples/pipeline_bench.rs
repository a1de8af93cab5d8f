//! The PostgreSQL pipeline benchmark behind `cargo xtask bench`: every figure is measured next
//! to a baseline from the same run on the same database (pgbench's single-row insert rate, a
//! raw UPSERT), so results are ratios, not absolute claims.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use observers_core::actions::{Action, ActionFactory, ActionResult, Invocation};
use observers_core::config::{ActionConfig, WebhookConfig};
use observers_core::executor::{ActionSlot, CompiledObserver};
use observers_core::retry::RetryPolicy;
use observers_core::stores::checkpoint::CheckpointStore;
use observers_core::{Cursor, EventKind, ObserverExecutor, ObserverSet};
use observers_postgres::{ChangeLogListener, PgPool, PostgresCheckpointStore};
use sqlx::{Connection, Executor};
use tokio::sync::watch;

const DB: &str = "observers_bench";

fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn db_url() -> String {
    let mut u = url::Url::parse(&server_url()).unwrap();
    u.set_path(&format!("/{DB}"));
    u.to_string()
}

async fn fresh_db() -> PgPool {
    let mut admin = sqlx::PgConnection::connect(&server_url()).await.unwrap();
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {DB} WITH (FORCE)"
        )))
        .await
        .unwrap();
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {DB}")))
        .await
        .unwrap();
    let pool = observers_postgres::connect(&db_url(), 8).await.unwrap();
    observers_postgres::migrate(&pool).await.unwrap();
    pool.execute("CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, total numeric NOT NULL, status text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())")
        .await
        .unwrap();
    pool
}

async fn capture(pool: &PgPool, on: bool) {
    if on {
        let spec = observers_postgres::capture::CaptureSpec::new("orders", "Order");
        observers_postgres::capture::enable(pool, &spec)
            .await
            .unwrap();
    } else {
        observers_postgres::capture::disable(pool, "orders")
            .await
            .unwrap();
    }
}

/// pgbench, 4 clients, single-row inserts: transactions per second.
fn pgbench_insert_tps(seconds: u32) -> f64 {
    let script = std::env::temp_dir().join("observers_bench_insert.sql");
    std::fs::write(
        &script,
        "INSERT INTO orders (total, status) VALUES (random() * 200, 'paid');\n",
    )
    .unwrap();
    let out = Command::new("pgbench")
        .args([
            "-n",
            "-c",
            "4",
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            "-f",
            script.to_str().unwrap(),
            &db_url(),
        ])
        .output()
        .expect("pgbench (apt-get install postgresql-client) is needed for the writer baseline");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            l.strip_prefix("tps = ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or_else(|| {
            panic!(
                "pgbench output without tps: {text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

struct Noop(Arc<AtomicUsize>);

#[async_trait]
impl Action for Noop {
    fn type_name(&self) -> &'static str {
        "noop"
    }

    async fn execute(&self, _inv: &Invocation<'_>) -> observers_core::Result<ActionResult> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(ActionResult::default())
    }
}

fn listener_config(id: &str) -> observers_core::listener::ListenerConfig {
    observers_core::listener::ListenerConfig {
        listener_id: id.into(),
        batch_size: 1000,
        poll_interval: Duration::from_millis(200),
        max_in_flight: 64,
        ..Default::default()
    }
}

/// Runs a listener over the current backlog until its checkpoint reaches `end`; rows/s.
async fn drain(pool: &PgPool, id: &str, slot: ActionSlot, rows: usize, end: Cursor) -> f64 {
    let observer =
        CompiledObserver::new("bench", "Order", EventKind::ALL.to_vec()).with_action(slot);
    let set = ObserverSet::new(vec![observer], RetryPolicy::none(), Duration::from_secs(10));
    let executor = Arc::new(
        ObserverExecutor::builder(set)
            .max_concurrent_actions(128)
            .build(),
    );
    let checkpoints = Arc::new(PostgresCheckpointStore::new(pool.clone()));
    let listener = ChangeLogListener::new(
        pool.clone(),
        checkpoints.clone(),
        executor,
        listener_config(id),
    );
    let (tx, rx) = watch::channel(false);
    let started = Instant::now();
    let task = tokio::spawn(async move { listener.run(rx).await });
    loop {
        if checkpoints
            .load(id)
            .await
            .unwrap()
            .is_some_and(|c| c.cursor >= end)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    tx.send(true).unwrap();
    task.await.unwrap().unwrap();
    rows as f64 / elapsed.as_secs_f64()
}

async fn last_cursor(pool: &PgPool) -> Cursor {
    let id: i64 = sqlx::query_scalar("SELECT max(id) FROM observer_change_log")
        .fetch_one(pool)
        .await
        .unwrap();
    Cursor::new(id)
}

type Arrivals = Arc<Mutex<Vec<(i64, Instant)>>>;

async fn receiver() -> (String, Arrivals) {
    async fn hook(State(arrivals): State<Arrivals>, body: Bytes) -> &'static str {
        let now = Instant::now();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if let Some(id) = v["data"]["id"].as_i64() {
            arrivals.lock().unwrap().push((id, now));
        }
        "ok"
    }
    let arrivals: Arrivals = Arc::default();
    let app = axum::Router::new()
        .route("/hook", post(hook))
        .with_state(arrivals.clone());
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", socket.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(socket, app).await.unwrap() });
    (url, arrivals)
}

fn webhook_slot(url: &str) -> ActionSlot {
    let config: WebhookConfig = toml::from_str(&format!("url = \"{url}\"")).unwrap();
    let factory = ActionFactory::new(observers_core::actions::OutboundPolicy::default()).unwrap();
    let action = factory.build(&ActionConfig::Webhook(config)).unwrap();
    ActionSlot::new(action, "webhook")
}

/// Raw loopback HTTP rate with the same client settings and concurrency: the webhook baseline.
async fn raw_http_rate(url: &str, requests: usize) -> f64 {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (client, next, url) = (client.clone(), next.clone(), url.to_owned());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < requests {
                    client
                        .post(&url)
                        .body("{\"data\":{}}")
                        .send()
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    requests as f64 / started.elapsed().as_secs_f64()
}

async fn latency_at(
    pool: &PgPool,
    url: &str,
    arrivals: &Arrivals,
    rate: u32,
    seconds: u32,
) -> (f64, f64, f64) {
    arrivals.lock().unwrap().clear();
    let start = last_cursor(pool).await;
    let checkpoints = Arc::new(PostgresCheckpointStore::new(pool.clone()));
    checkpoints.save("latency", start, 0).await.unwrap();
    let observer = CompiledObserver::new("latency", "Order", vec![EventKind::Insert])
        .with_action(webhook_slot(url));
    let set = ObserverSet::new(vec![observer], RetryPolicy::none(), Duration::from_secs(10));
    let executor = Arc::new(ObserverExecutor::builder(set).build());
    let mut cfg = listener_config("latency");
    cfg.poll_interval = Duration::from_secs(1);
    let listener = ChangeLogListener::new(pool.clone(), checkpoints, executor, cfg);
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(async move { listener.run(rx).await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let commits: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::default();
    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let writers = 4;
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let (pool, commits) = (pool.clone(), commits.clone());
            tokio::spawn(async move {
                let begin = Instant::now();
                let mut k = w;
                while k < total {
                    let due = begin + interval * k;
                    tokio::time::sleep_until(due.into()).await;
                    let id: i64 = sqlx::query_scalar(
                        "INSERT INTO orders (total, status) VALUES (150, 'paid') RETURNING id",
                    )
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                    commits.lock().unwrap().push((id, Instant::now()));
                    k += writers;
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while arrivals.lock().unwrap().len() < total as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tx.send(true).unwrap();
    task.await.unwrap().unwrap();
    let commits = commits.lock().unwrap().clone();
    let arrived: std::collections::HashMap<i64, Instant> =
        arrivals.lock().unwrap().iter().copied().collect();
    let mut lat: Vec<f64> = commits
        .iter()
        .filter_map(|(id, at)| {
            arrived
                .get(id)
                .map(|r| r.saturating_duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
    (pct(0.5), pct(0.99), lat.len() as f64 / commits.len() as f64)
}

async fn checkpoint_rates(pool: &PgPool, seconds: u64) -> (f64, f64) {
    let store = PostgresCheckpointStore::new(pool.clone());
    let run = Duration::from_secs(seconds);
    let started = Instant::now();
    let mut n = 0u32;
    while started.elapsed() < run {
        n += 1;
        store
            .save("cp-bench", Cursor::new(i64::from(n)), 1)
            .await
            .unwrap();
    }
    let ours = f64::from(n) / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut n = 0u32;
    while started.elapsed() < run {
        n += 1;
        sqlx::query(
            "INSERT INTO observer_checkpoints (listener_id, cursor_id) VALUES ('raw', $1) \
             ON CONFLICT (listener_id) DO UPDATE SET cursor_id = EXCLUDED.cursor_id, updated_at = now()",
        )
        .bind(i64::from(n))
        .execute(pool)
        .await
        .unwrap();
    }
    (ours, f64::from(n) / started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() {
    let rows: usize = std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let pool = fresh_db().await;
    println!(
        "# pipeline benchmark ({rows} rows, {} cores)\n",
        std::thread::available_parallelism().map_or(0, usize::from)
    );

    let raw_tps = pgbench_insert_tps(8);
    capture(&pool, true).await;
    let captured_tps = pgbench_insert_tps(8);
    println!(
        "writer: pgbench 4 clients single-row insert: {raw_tps:.0} tx/s without capture, {captured_tps:.0} tx/s with capture"
    );
    println!(
        "  capture trigger cost: {:.2}x the insert rate ({:.0}% slower)\n",
        captured_tps / raw_tps,
        (1.0 - captured_tps / raw_tps) * 100.0
    );

    pool.execute("TRUNCATE observer_change_log; TRUNCATE observer_checkpoints")
        .await
        .unwrap();
    sqlx::query("INSERT INTO orders (total, status) SELECT random() * 200, 'paid' FROM generate_series(1, $1)")
        .bind(i64::try_from(rows).unwrap())
        .execute(&pool)
        .await
        .unwrap();
    let end = last_cursor(&pool).await;
    let count = Arc::new(AtomicUsize::new(0));
    let noop = drain(
        &pool,
        "drain-noop",
        ActionSlot::new(Arc::new(Noop(count.clone())), "noop"),
        rows,
        end,
    )
    .await;
    assert_eq!(count.load(Ordering::Relaxed), rows);
    println!(
        "backlog drain, no-op action: {noop:.0} events/s = {:.2}x the captured writer",
        noop / captured_tps
    );

    let (url, arrivals) = receiver().await;
    let http = drain(&pool, "drain-webhook", webhook_slot(&url), rows, end).await;
    let raw_http = raw_http_rate(&url, 20_000).await;
    println!(
        "backlog drain, webhook to loopback: {http:.0} events/s = {:.2}x the captured writer; raw loopback HTTP {raw_http:.0} req/s ({:.2}x of it)",
        http / captured_tps,
        http / raw_http
    );

    let (p50, p99, delivered) = latency_at(&pool, &url, &arrivals, 1000, 10).await;
    println!(
        "commit-to-webhook latency at 1,000 changes/s: p50 {p50:.1} ms, p99 {p99:.1} ms ({:.1}% delivered)",
        delivered * 100.0
    );

    let (ours, raw) = checkpoint_rates(&pool, 3).await;
    println!(
        "checkpoint saves: {ours:.0}/s vs raw UPSERT {raw:.0}/s ({:.2}x)",
        ours / raw
    );
    pool.close().await;
}
