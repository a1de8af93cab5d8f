//! `cargo xtask bench --search`: the PostgreSQL search backend on 1 million indexed events
//! (generated with SQL), p50/p99 of typical queries against a primary-key lookup measured in
//! the same run, and indexing throughput (through `EventSearchIndexer`) against the executor's
//! in-process rate measured in the same run. Figures go to docs/benchmarks.md.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::too_many_lines,
    clippy::items_after_statements,
    clippy::type_complexity
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use observers_core::actions::{Action, ActionResult, Invocation};
use observers_core::executor::{ActionSlot, CompiledObserver};
use observers_core::retry::RetryPolicy;
use observers_core::stores::search::{IndexedEvent, SearchBackend, SearchQuery};
use observers_core::{EntityEvent, EventKind, ObserverExecutor, ObserverSet};
use observers_search::{EventSearchIndexer, IndexerConfig, PostgresSearchBackend};
use serde_json::json;
use sqlx::{Connection, Executor, PgConnection, PgPool};

const ROWS: i64 = 1_000_000;
const RUNS: usize = 100;
const DB: &str = "obs_search_bench";

const GENERATE: &str = r"
INSERT INTO observer_events (event_id, entity_type, entity_id, event_type, tenant_id, timestamp,
    data, matched_observers, successful_actions, failed_actions, errors, duration_ms, search)
SELECT i, e.t, (i % 50000)::text, (ARRAY['insert','update','delete'])[1 + i % 3],
    'tenant' || (i / 7 % 20), '2026-01-01'::timestamptz + i * interval '1 second',
    jsonb_build_object('status', s.v, 'email', 'customer' || i || '@example.com', 'total', i % 1000),
    ARRAY['notify-' || lower(e.t)],
    CASE WHEN i % 50 = 0 THEN '{}'::text[] ELSE ARRAY['notify-' || lower(e.t) || ':webhook'] END,
    CASE WHEN i % 50 = 0 THEN ARRAY['notify-' || lower(e.t) || ':webhook'] ELSE '{}'::text[] END,
    CASE WHEN i % 50 = 0 THEN ARRAY['notify-' || lower(e.t) || ': [OBS-WEBHOOK-5XX] Gateway Timeout from hooks.example.com'] ELSE '{}'::text[] END,
    i % 100,
    to_tsvector('simple', lower(e.t) || ' ' || (i % 50000) || ' ' || (ARRAY['insert','update','delete'])[1 + i % 3]
        || ' tenant' || (i / 7 % 20) || ' notify ' || lower(e.t) || ' ' || s.v || ' customer' || i || ' example com ' || (i % 1000)
        || CASE WHEN i % 50 = 0 THEN ' obs webhook 5xx gateway timeout from hooks example com' ELSE ' webhook' END)
FROM generate_series(1, $1::bigint) AS i,
    LATERAL (SELECT (ARRAY['Order','User','Invoice','Ticket','Sku'])[1 + i % 5] AS t) e,
    LATERAL (SELECT (ARRAY['paid','pending','refunded','shipped'])[1 + i % 4] AS v) s";

fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

async fn fresh_db() -> PgPool {
    let mut admin = PgConnection::connect(&server_url()).await.unwrap();
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
    let mut url = reqwest::Url::parse(&server_url()).unwrap();
    url.set_path(&format!("/{DB}"));
    let url = url.to_string();
    let pool = observers_postgres::connect(&url, 8).await.unwrap();
    observers_postgres::migrate(&pool).await.unwrap();
    pool
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// p50 and p99 of `RUNS` runs of `f(i)` after 10 warm-up runs.
async fn measure<F, Fut>(mut f: F) -> (Duration, Duration)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for i in 0..10 {
        f(i).await;
    }
    let mut times = Vec::with_capacity(RUNS);
    for i in 0..RUNS {
        let t = Instant::now();
        f(i + 10).await;
        times.push(t.elapsed());
    }
    times.sort();
    (pct(&times, 0.5), pct(&times, 0.99))
}

struct Noop;

#[async_trait]
impl Action for Noop {
    fn type_name(&self) -> &'static str {
        "noop"
    }
    async fn execute(&self, _inv: &Invocation<'_>) -> observers_core::Result<ActionResult> {
        Ok(ActionResult::default())
    }
}

fn event(i: i64) -> EntityEvent {
    EntityEvent::new(
        ROWS + i,
        "Order",
        (i % 5000).to_string(),
        EventKind::Update,
        Some(json!({"status": "pending", "total": i % 1000})),
        Some(
            json!({"status": "paid", "total": i % 1000, "email": format!("customer{i}@example.com")}),
        ),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let pool = fresh_db().await;
    let backend = PostgresSearchBackend::new(pool.clone());

    // 1. One million events, generated in SQL with the indexes dropped, then rebuilt.
    let t = Instant::now();
    let defs: Vec<(String, String)> = sqlx::query_as(
        "SELECT indexname::text, indexdef FROM pg_indexes WHERE tablename = 'observer_events' AND indexname <> 'observer_events_pkey'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for (name, _) in &defs {
        pool.execute(sqlx::AssertSqlSafe(format!("DROP INDEX {name}")))
            .await
            .unwrap();
    }
    sqlx::query(GENERATE)
        .bind(ROWS)
        .execute(&pool)
        .await
        .unwrap();
    for (_, def) in &defs {
        let mut conn = pool.acquire().await.unwrap();
        conn.execute("SET maintenance_work_mem = '256MB'")
            .await
            .unwrap();
        conn.execute(sqlx::AssertSqlSafe(def.clone()))
            .await
            .unwrap();
    }
    pool.execute("VACUUM ANALYZE observer_events")
        .await
        .unwrap();
    println!(
        "generated {ROWS} events and built the indexes in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // 2. Query latency, against a primary-key lookup in the same run.
    let (b50, b99) = measure(|i| {
        let pool = pool.clone();
        async move {
            let id = i64::try_from(i * 3331 % 1_000_000 + 1).unwrap();
            sqlx::query("SELECT * FROM observer_events WHERE event_id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
        }
    })
    .await;
    println!(
        "| baseline: primary-key lookup of one event | {} | {} |",
        ms(b50),
        ms(b99)
    );
    let cases: Vec<(&str, Box<dyn Fn(usize) -> SearchQuery>)> = vec![
        (
            "full text, rare word (`customer<N>`, ~11 matches)",
            Box::new(|i| {
                SearchQuery::new().with_text(format!("customer{}", 10_000 + i * 7919 % 900_000))
            }),
        ),
        (
            "full text, common words (`gateway timeout`, 20,000 matches) + facets",
            Box::new(|_| {
                SearchQuery::new()
                    .with_text("gateway timeout")
                    .with_facets()
            }),
        ),
        (
            "entity type + facets (`Order`, 200,000 matches)",
            Box::new(|i| {
                SearchQuery::new()
                    .with_entity_type(["Order", "User", "Invoice", "Ticket", "Sku"][i % 5])
                    .with_facets()
            }),
        ),
        (
            "entity type + entity id (20 matches)",
            Box::new(|i| {
                SearchQuery::new()
                    .with_entity_type("Order")
                    .with_entity_id(((i * 5) % 50_000).to_string())
            }),
        ),
        (
            "entity type + text + tenant, page 3",
            Box::new(|i| {
                SearchQuery::new()
                    .with_entity_type("User")
                    .with_text("paid")
                    .with_tenant(format!("tenant{}", i % 20))
                    .with_page(3)
            }),
        ),
        (
            "everything, facets (1,000,000 matches)",
            Box::new(|_| SearchQuery::new().with_facets()),
        ),
    ];
    for (name, make) in &cases {
        let (p50, p99) = measure(|i| {
            let q = make(i);
            let backend = &backend;
            async move {
                let r = backend.search(&q).await.unwrap();
                assert!(r.total > 0 || q.text.is_some(), "{q:?}");
            }
        })
        .await;
        println!(
            "| {name} | {} | {} | {:.1}× / {:.1}× |",
            ms(p50),
            ms(p99),
            p50.as_secs_f64() / b50.as_secs_f64(),
            p99.as_secs_f64() / b99.as_secs_f64()
        );
    }

    // 3. Indexing throughput through the indexer vs the executor's in-process rate.
    const N: i64 = 100_000;
    let observer = CompiledObserver::new("notify-sales", "Order", EventKind::ALL.to_vec())
        .with_action(ActionSlot::new(Arc::new(Noop), "noop"));
    let set = ObserverSet::new(vec![observer], RetryPolicy::none(), Duration::from_secs(1));
    let exec = ObserverExecutor::builder(set).build();
    let events: Vec<EntityEvent> = (0..N).map(event).collect();
    let t = Instant::now();
    let mut summaries = Vec::with_capacity(events.len());
    for e in &events {
        summaries.push(exec.process(e).await.unwrap());
    }
    let exec_rate = N as f64 / t.elapsed().as_secs_f64();
    let docs: Vec<IndexedEvent> = events
        .iter()
        .zip(&summaries)
        .map(|(e, s)| observers_search::indexed_event(e, s))
        .collect();
    let (indexer, task) = EventSearchIndexer::start(
        Arc::new(backend.clone()),
        IndexerConfig {
            capacity: usize::try_from(N).unwrap(),
            ..IndexerConfig::default()
        },
    );
    let t = Instant::now();
    for d in docs {
        assert!(indexer.offer(d));
    }
    task.shutdown().await;
    let index_rate = N as f64 / t.elapsed().as_secs_f64();
    let s = indexer.stats();
    assert_eq!(s.indexed, u64::try_from(N).unwrap());
    println!(
        "| indexing through EventSearchIndexer (batches of 500, two writers, all indexes in place, 1M rows) | {index_rate:.0} events/s | executor in-process, one no-op action: {exec_rate:.0} events/s | {:.2}× |",
        index_rate / exec_rate
    );
    pool.close().await;
    let mut admin = PgConnection::connect(&server_url()).await.unwrap();
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {DB} WITH (FORCE)"
        )))
        .await
        .unwrap();
}
