//! `observers demo`: the first thing a newcomer runs. It creates a demo database, captures an
//! orders table, starts a local webhook receiver, runs observers with conditions, writes some
//! orders and prints each delivery as it arrives, then a summary.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::post;
use observers_core::actions::signing;
use observers_core::stores::dlq::DeadLetterQueue;
use observers_core::telemetry::CountingTelemetry;
use observers_postgres::capture::{self, CaptureSpec};
use observers_postgres::{
    ChangeLogListener, PgPool, PostgresCheckpointStore, PostgresDeadLetterQueue,
};
use sqlx::Executor;
use tokio::sync::watch;

use super::engine;
use crate::CliResult;

const TABLE: &str = "observers_demo_orders";
const SECRET: &str = "whsec_ZGVtby1zZWNyZXQtZm9yLW9ic2VydmVycw==";
const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/observers_demo";

#[derive(Default)]
struct Received {
    count: usize,
}

type Shared = Arc<(Mutex<Received>, Instant)>;

async fn receive(
    State(state): State<Shared>,
    Path(hook): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> &'static str {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let id = header("webhook-id");
    let ts: i64 = header("webhook-timestamp").parse().unwrap_or(0);
    let verified = signing::secret_bytes(SECRET)
        .is_ok_and(|key| signing::verify(&key, &id, ts, &body, &header("webhook-signature")));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let data = &v["data"];
    let detail = match v["event_type"].as_str() {
        Some("delete") => format!("deleted (was {})", v["before"]["status"]),
        _ => format!("total {} status {}", data["total"], data["status"]),
    };
    let elapsed = state.1.elapsed();
    let n = {
        let mut r = state
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        r.count += 1;
        r.count
    };
    println!(
        "  [{:>5} ms] #{n:<2} /hooks/{hook:<12} {} {:<6} order {:<3} {detail:<32} signature {}",
        elapsed.as_millis(),
        v["observer"].as_str().unwrap_or("?"),
        v["event_type"].as_str().unwrap_or("?"),
        v["entity_id"].as_str().unwrap_or("?"),
        if verified { "ok" } else { "INVALID" }
    );
    "ok"
}

fn config_text(receiver: &str, url: &str) -> String {
    format!(
        r#"[source]
database_url = "{url}"
listener_id = "demo"
poll_interval = "250ms"

[[observers]]
name = "big-paid-orders"
entity = "Order"
events = ["insert", "update"]
condition = "total > 100 && status == 'paid'"

  [[observers.actions]]
  type = "webhook"
  url = "{receiver}/hooks/big-paid"
  signing_secret = "{SECRET}"

[[observers]]
name = "status-changes"
entity = "Order"
events = ["update"]
condition = "'status' in changed"

  [[observers.actions]]
  type = "webhook"
  url = "{receiver}/hooks/status"
  signing_secret = "{SECRET}"

[[observers]]
name = "deleted-orders"
entity = "Order"
events = ["delete"]

  [[observers.actions]]
  type = "webhook"
  url = "{receiver}/hooks/deleted"
  signing_secret = "{SECRET}"
"#
    )
}

/// Creates the demo database on the server if it does not exist.
async fn ensure_database(url: &str) -> CliResult<()> {
    let parsed = url::Url::parse(url).context("DATABASE_URL is not a URL")?;
    let name = parsed.path().trim_start_matches('/').to_owned();
    if name.is_empty() {
        return Ok(());
    }
    let mut admin = parsed.clone();
    admin.set_path("/postgres");
    let pool = observers_postgres::connect(admin.as_str(), 1).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&pool)
            .await?;
    if !exists {
        let sql: String = sqlx::query_scalar("SELECT format('CREATE DATABASE %I', $1::text)")
            .bind(&name)
            .fetch_one(&pool)
            .await?;
        if let Err(e) = pool.execute(sqlx::AssertSqlSafe(sql)).await {
            // A concurrent demo may have created it meanwhile.
            tracing::debug!(error = %e, "create database");
        }
    }
    pool.close().await;
    Ok(())
}

async fn prepare(pool: &PgPool) -> CliResult<()> {
    observers_postgres::migrate(pool).await?;
    pool.execute(
        "DROP TABLE IF EXISTS observers_demo_orders; \
         CREATE TABLE observers_demo_orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
             customer text NOT NULL, total numeric(10,2) NOT NULL, status text NOT NULL DEFAULT 'new'); \
         DELETE FROM observer_checkpoints WHERE listener_id = 'demo'; \
         DELETE FROM observer_change_log WHERE entity_type = 'Order';",
    )
    .await?;
    capture::enable(
        pool,
        &CaptureSpec {
            table: TABLE.into(),
            entity: "Order".into(),
            id_column: "id".into(),
            tenant_column: None,
        },
    )
    .await?;
    Ok(())
}

/// Writes the sample changes; returns how many deliveries the observers should make.
async fn write_orders(pool: &PgPool, orders: u32) -> CliResult<usize> {
    let mut expected = 0;
    for i in 0..orders {
        let total = f64::from(50 + 40 * i);
        let status = if i % 2 == 0 { "paid" } else { "new" };
        sqlx::query("INSERT INTO observers_demo_orders (customer, total, status) VALUES ($1, $2::numeric, $3)")
            .bind(format!("customer-{i}"))
            .bind(total.to_string())
            .bind(status)
            .execute(pool)
            .await?;
        if total > 100.0 && status == "paid" {
            expected += 1;
        }
    }
    // Every unpaid order gets paid: a status change, and a big paid order if over 100.
    let paid: Vec<(i64, f64)> = sqlx::query_as(
        "UPDATE observers_demo_orders SET status = 'paid' WHERE status = 'new' RETURNING id, total::float8",
    )
    .fetch_all(pool)
    .await?;
    expected += paid.len() + paid.iter().filter(|(_, t)| *t > 100.0).count();
    // The first order is deleted.
    let deleted = sqlx::query(
        "DELETE FROM observers_demo_orders WHERE id = (SELECT min(id) FROM observers_demo_orders)",
    )
    .execute(pool)
    .await?
    .rows_affected();
    expected += usize::try_from(deleted).unwrap_or(0);
    Ok(expected)
}

pub async fn run(database_url: Option<String>, orders: u32) -> CliResult {
    let started = Instant::now();
    let url = database_url.unwrap_or_else(|| DEFAULT_URL.to_owned());
    println!("Observers demo\n==============\n");
    println!("1. database     {}", super::db::redact(&url));
    ensure_database(&url).await?;
    let pool = observers_postgres::connect(&url, 8).await?;
    prepare(&pool).await?;
    println!(
        "2. captured     table {TABLE} as entity Order (trigger -> observer_change_log -> NOTIFY)"
    );

    let state: Shared = Arc::new((Mutex::new(Received::default()), Instant::now()));
    let app = axum::Router::new()
        .route("/hooks/{hook}", post(receive))
        .with_state(state.clone());
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let receiver = format!("http://{}", socket.local_addr()?);
    tokio::spawn(async move { axum::serve(socket, app).await });
    println!("3. receiver     {receiver}/hooks/* (verifies Standard Webhooks signatures)");

    let text = config_text(&receiver, &url);
    let config = observers_core::config::load_str("demo.toml", &text, &|v| std::env::var(v).ok())?;
    println!("4. observers    (the config, as you would write it in observers.toml)\n");
    for line in text.lines().skip(5) {
        println!("     {line}");
    }
    let telemetry = CountingTelemetry::new();
    let executor = Arc::new(engine::executor(&config, &pool, telemetry.clone())?);
    let checkpoints =
        Arc::new(PostgresCheckpointStore::new(pool.clone()).with_instance(engine::instance_id()));
    let listener = ChangeLogListener::new(
        pool.clone(),
        checkpoints,
        executor,
        engine::listener_config(&config),
    );
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(async move { listener.run(stop_rx).await });

    println!(
        "\n5. writing     {orders} orders (insert), then paying the unpaid ones (update) and deleting the first (delete)\n\n6. deliveries, as they arrive:\n"
    );
    let expected = write_orders(&pool, orders).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let received = loop {
        let n = state
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .count;
        if n >= expected || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _ = stop.send(true);
    let stats = task.await.context("listener task")??;
    let dlq = PostgresDeadLetterQueue::new(pool.clone())
        .count(None)
        .await?;
    println!(
        "\nSummary: {received} of {expected} expected deliveries, {} events processed, {dlq} in the dead-letter queue, cursor {}, {:.1} s",
        stats.events,
        stats.cursor,
        started.elapsed().as_secs_f64()
    );
    println!(
        "\nNext: write your own observers.toml (docs/configuration.md), then\n  observers capture enable --table orders --entity Order\n  observers run --config observers.toml\nand open the web console that `run` serves: http://127.0.0.1:9464/ui/ (failed deliveries, retry; docs/console.md)"
    );
    pool.close().await;
    if received < expected {
        return Err(crate::Exit::from(anyhow::anyhow!(
            "only {received} of {expected} deliveries arrived within 30 s"
        )));
    }
    Ok(())
}
