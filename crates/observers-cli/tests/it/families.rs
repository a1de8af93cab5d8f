//! Every metric family docs/monitoring.md documents moves under `observers run`, emitted by the
//! component that owns it. The family list is read from the page itself, so a family that is
//! documented but never emitted fails here. One instance goes through deliveries, a flaky and a
//! dead endpoint (retries, DLQ, an open breaker), a condition that cannot be evaluated,
//! undecodable and unmatched rows, deduplication, cached results and their invalidation, queued
//! actions that complete or fail, search indexing and a query, a change log it cannot read for a
//! while, a failed checkpoint save, a Redis outage and retention of an old resolved DLQ item; an
//! HA pair goes through a takeover of a paused holder, which then finds its checkpoint write
//! fenced. Along the way `/status` and `observers status` must show each part that runs.
// Counters are small integers, exact in f64; one scenario reads best as one function.
#![allow(clippy::float_cmp, clippy::too_many_lines)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use observers_metrics::Scrape;
use serde_json::Value;

use crate::ha::{Group, log_text, until};
use crate::metrics::{get, ops_url, scrape, scrape_until};
use crate::redis_fault::RedisServer;
use crate::root;
use crate::support::{
    Receiver, TestDb, capture, cli, free_port, pause, signal, spawn_run, wait_exit, wait_until,
    write_config,
};

const LONG: Duration = Duration::from_secs(60);

/// The families of the metric tables of docs/monitoring.md (rows starting with an
/// `observer_` name; `` `a_total` / `_b_total` `` names `a_total` and the same stem with `_b_total`).
pub(crate) fn documented_families() -> BTreeSet<String> {
    let page = std::fs::read_to_string(root().join("docs/monitoring.md")).unwrap();
    let mut out = BTreeSet::new();
    for line in page.lines() {
        let Some(cell) = line
            .strip_prefix("| `observer_")
            .and_then(|rest| rest.split(" |").next())
        else {
            continue;
        };
        let cell = format!("`observer_{cell}");
        let names: Vec<&str> = cell
            .split('/')
            .map(|n| n.trim().trim_matches('`'))
            .collect();
        let first = names[0];
        for name in &names {
            if let Some(fragment) = name.strip_prefix('_') {
                let words = fragment.split('_').count();
                let stem: Vec<&str> = first.split('_').collect();
                let stem = stem[..stem.len() - words].join("_");
                out.insert(format!("{stem}_{fragment}"));
            } else {
                out.insert((*name).to_owned());
            }
        }
    }
    out
}

/// Whether `family` moved in `s`: a counter above zero, a histogram with an observation, a
/// gauge with a labelled series (created only when emitted) or an unlabelled one set off zero.
fn moved(s: &Scrape, family: &str) -> bool {
    if family.ends_with("_total") {
        s.sum(family, &[]) > 0.0
    } else if s.select(&format!("{family}_count"), &[]).next().is_some() {
        s.sum(&format!("{family}_count"), &[]) > 0.0
    } else {
        s.select(family, &[])
            .any(|x| !x.labels.is_empty() || x.value != 0.0)
    }
}

/// A webhook endpoint that answers 503 to the first attempt of each delivery (by `webhook-id`)
/// and 200 to the retry.
async fn flaky_endpoint() -> String {
    let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
    let app = axum::Router::new().route(
        "/flaky",
        post(move |headers: HeaderMap| {
            let seen = seen.clone();
            async move {
                let id = headers
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                if seen.lock().unwrap().insert(id) {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", socket.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(socket, app).await.unwrap() });
    base
}

fn config(db: &TestDb, redis: &RedisServer, rx: &Receiver, flaky: &str) -> String {
    format!(
        r#"
[source]
database_url = "{db}"
listener_id = "fam"
batch_size = 50
poll_interval = "100ms"

[retry]
max_attempts = 2
initial_backoff = "10ms"
max_backoff = "50ms"

[breaker]
failure_rate_threshold = 0.9
window_size = 6
minimum_calls = 6
open_duration = "60s"

[dedup]
backend = "redis"
key = "time_bucket"
bucket = "1h"

[cache]
enabled = true
backend = "redis"

[redis]
url = "{redis}"
key_prefix = "fam:"
fallback = "circuit_breaker"
op_timeout = "200ms"
health_interval = "100ms"
health_timeout = "100ms"
breaker_minimum_calls = 3
breaker_window = 5
breaker_open = "300ms"
breaker_success_threshold = 1

[search]
backend = "postgres"
flush_interval = "50ms"

[queue]
workers = 1
max_attempts = 2
initial_backoff = "10ms"
max_backoff = "20ms"
poll_interval = "100ms"

[retention]
dlq_resolved = "1h"
interval = "100ms"

[metrics]
listen = "127.0.0.1:0"
refresh_interval = "100ms"

[[observers]]
name = "orders"
entity = "Order"

  [[observers.actions]]
  type = "webhook"
  url = "{base}/hooks/orders"

  [[observers.actions]]
  type = "webhook"
  url = "{base}/hooks/queued"
  mode = "queued"

[[observers]]
name = "flaky"
entity = "Order"
events = ["insert"]

  [[observers.actions]]
  type = "webhook"
  url = "{flaky}/flaky"

[[observers]]
name = "unevaluable"
entity = "Order"
condition = "missing_column > 1"

  [[observers.actions]]
  type = "log"

[[observers]]
name = "invalidate"
entity = "Order"
events = ["delete"]

  [[observers.actions]]
  type = "cache"
  invalidate_entity = true

[[observers]]
name = "payments"
entity = "Payment"

  [[observers.actions]]
  type = "webhook"
  url = "http://127.0.0.1:1/down"

  [[observers.actions]]
  type = "webhook"
  url = "http://127.0.0.1:1/queued-down"
  mode = "queued"
"#,
        db = db.url,
        redis = redis.url(),
        base = rx.base,
    )
}

/// `observers status --format json` against `db` and the instance at `base`.
fn status_json(db: &TestDb, base: &str) -> Value {
    let out = cli(db, &["status", "--url", base, "--format", "json"]);
    assert!(
        out.status.success(),
        "status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn status_text(db: &TestDb, base: &str) -> String {
    let out = cli(db, &["status", "--url", base]);
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// Polls `observers status --format json` until `cond` holds.
async fn status_until(db: &TestDb, base: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let s = status_json(db, base);
        if cond(&s) {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The checkpoint's error streak and last error.
async fn save_errors(db: &TestDb) -> (i32, Option<String>) {
    sqlx::query_as(
        "SELECT consecutive_errors, last_error FROM observer_checkpoints WHERE listener_id = 'fam'",
    )
    .fetch_optional(&db.pool)
    .await
    .unwrap()
    .unwrap_or((0, None))
}

/// A change-log row written as a source other than the capture trigger would (Debezium): the
/// row image goes to `before` for deletes, to `after` otherwise.
async fn raw_change(db: &TestDb, entity: &str, id: &str, op: &str, image: &str, at: &str) {
    let column = if op == "delete" { "before" } else { "after" };
    db.exec(&format!(
        "INSERT INTO observer_change_log (entity_type, entity_id, operation, {column}, created_at) \
         VALUES ('{entity}', '{id}', '{op}', '{image}'::jsonb, '{at}'::timestamptz)"
    ))
    .await;
}

/// One instance through every scenario but HA; returns the scrapes taken along the way.
async fn single_instance() -> Vec<Scrape> {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start(free_port(), &dir.path().join("redis.log"));
    redis.client().await;
    let db = TestDb::new("families").await;
    db.exec("CREATE TABLE orders (id bigint PRIMARY KEY, n int)")
        .await;
    db.exec("CREATE TABLE payments (id bigint PRIMARY KEY, n int)")
        .await;
    capture(&db, "orders", "Order");
    capture(&db, "payments", "Payment");
    // A resolved DLQ item older than `[retention] dlq_resolved`, for retention to delete.
    db.exec(
        "INSERT INTO observer_dlq_items (event_id, entity_type, entity_id, event, observer, \
         action_index, action_type, error_code, error, status, created_at) \
         VALUES (0, 'Order', '0', '{}', 'orders', 0, 'webhook', 'E', 'e', 'resolved', \
         now() - interval '2 days')",
    )
    .await;
    let rx = Receiver::start().await;
    let flaky = flaky_endpoint().await;
    let path = write_config(&dir, &config(&db, &redis, &rx, &flaky));
    let log = dir.path().join("run.log");
    let mut run = spawn_run(&path, &log);
    let base = ops_url(&log).await;
    let mut scrapes = Vec::new();

    // Deliveries, a flaky endpoint that succeeds on retry, a dead one (retries exhausted, DLQ,
    // then its breaker opens and short-circuits), queued actions that complete or fail.
    db.exec("INSERT INTO orders (id, n) SELECT g, g FROM generate_series(1, 5) g")
        .await;
    db.exec("INSERT INTO payments (id, n) SELECT g, g FROM generate_series(1, 4) g")
        .await;
    wait_until("five orders delivered", LONG, || {
        rx.by_entity("/hooks/orders").len() == 5
    })
    .await;
    let s = scrape_until(&base, "retries, dead letters, an open breaker, jobs", |s| {
        let flaky = [("observer", "flaky")];
        s.sum("observer_retries_successful_total", &flaky) == 5.0
            && s.sum(
                "observer_retries_exhausted_total",
                &[("observer", "payments")],
            ) >= 1.0
            && s.sum("observer_circuit_breaker_rejections_total", &[]) >= 1.0
            && s.sum("observer_jobs_enqueued_total", &[("queue", "default")]) == 9.0
            && s.sum("observer_jobs_completed_total", &[]) == 5.0
            && s.sum("observer_jobs_failed_total", &[]) == 4.0
            && s.sum("observer_dlq_pending_items", &[]) >= 8.0
    })
    .await;
    assert_eq!(s.sum("observer_jobs_retried_total", &[]), 4.0, "{s:?}");
    assert_eq!(
        s.sum(
            "observer_circuit_breaker_state",
            &[("endpoint", "127.0.0.1:1")]
        ),
        1.0
    );
    assert!(
        s.sum(
            "observer_condition_errors_total",
            &[("observer", "unevaluable")]
        ) >= 5.0
    );
    scrapes.push(s);

    // Undecodable and unmatched rows; two changes of one entity in one dedup bucket; the same
    // change twice in different buckets (the second run of each action is served from the
    // cache), then its delete invalidates the entity's cached results.
    let at = |h: u32| format!("2026-01-01T{h:02}:00:00Z");
    for (entity, id, op, image, hour) in [
        ("Order", "poison", "bogus", "{}", 9),
        ("Nobody", "1", "insert", r#"{"id": 1}"#, 9),
        ("Order", "d", "insert", r#"{"id": "d", "n": 1}"#, 10),
        ("Order", "d", "insert", r#"{"id": "d", "n": 2}"#, 10),
        ("Order", "c", "insert", r#"{"id": "c", "n": 1}"#, 11),
        ("Order", "c", "insert", r#"{"id": "c", "n": 1}"#, 12),
    ] {
        raw_change(&db, entity, id, op, image, &at(hour)).await;
    }
    let s = scrape_until(&base, "poison, unmatched, deduplicated, cached", |s| {
        s.sum("observer_poison_events_total", &[]) == 1.0
            && s.sum("observer_observers_matched_zero_total", &[]) >= 1.0
            && s.sum("observer_events_deduplicated_total", &[]) == 1.0
            && s.sum("observer_cache_hits_total", &[("action_type", "webhook")]) >= 1.0
    })
    .await;
    scrapes.push(s);
    raw_change(
        &db,
        "Order",
        "c",
        "delete",
        r#"{"id": "c", "n": 1}"#,
        &at(13),
    )
    .await;
    scrapes.push(
        scrape_until(&base, "the delete evicts c's cached results", |s| {
            s.sum("observer_cache_evictions_total", &[]) >= 1.0
        })
        .await,
    );

    // Search: the processed events are indexed, and a query is answered.
    scrape_until(&base, "events indexed", |s| {
        s.sum(
            "observer_search_indexed_total",
            &[("backend", "postgres"), ("outcome", "ok")],
        ) >= 5.0
    })
    .await;
    let (code, body) = get(&format!("{base}/api/observers/search?entity_type=Order")).await;
    assert_eq!(code, 200, "{body}");
    let s = scrape(&base).await;
    assert_eq!(
        s.sum("observer_search_queries_total", &[("backend", "postgres")]),
        1.0
    );
    scrapes.push(s);

    // /status and `observers status` show every part that runs.
    let st = status_until(&db, &base, "search and the settled queue in status", |st| {
        let jobs = &st["database"]["jobs"][0];
        st["instance"]["search"]["indexed"].as_f64() >= Some(5.0)
            && jobs["pending"] == 0
            && jobs["processing"] == 0
    })
    .await;
    let inst = &st["instance"];
    assert!(inst["events_per_second"].as_f64() > Some(0.0), "{inst:#}");
    assert!(inst["cache"]["hit_ratio"].as_f64() > Some(0.0), "{inst:#}");
    assert_eq!(inst["cache"]["backend"], "redis");
    assert_eq!(inst["search"]["backend"], "postgres");
    assert_eq!(inst["search"]["dropped"], 0);
    assert_eq!(inst["redis"]["fallback_active"], false);
    assert_eq!(inst["redis"]["healthy"], true);
    assert_eq!(inst["redis"]["replay_backlog"], 0);
    let jobs = st["database"]["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0]["queue"], "default");
    assert_eq!(jobs[0]["failed"], 4);
    assert_eq!(jobs[0]["pending"], 0);
    let text = status_text(&db, &base);
    for part in [
        "Events/sec (1min avg):",
        "Cache (redis): Hit Rate",
        "Search (postgres):",
        "Redis: on Redis, healthy, replay backlog 0",
        "Job Queue",
        "default: 0 pending, 0 processing, 4 failed",
    ] {
        assert!(text.contains(part), "`{part}` missing:\n{text}");
    }

    // The change log cannot be read for a while (it is renamed away): errors, backoff, then a
    // reconnect.
    db.exec("ALTER TABLE observer_change_log RENAME TO observer_change_log_away")
        .await;
    let l = [("listener", "fam")];
    scrapes.push(
        scrape_until(&base, "failed reads and a backoff", |s| {
            s.sum("observer_listener_consecutive_errors", &l) >= 2.0
                && s.sum("observer_listener_backoff_seconds", &l) > 0.0
        })
        .await,
    );
    db.exec("ALTER TABLE observer_change_log_away RENAME TO observer_change_log")
        .await;
    scrapes.push(
        scrape_until(&base, "reads work again", |s| {
            s.sum("observer_listener_reconnects_total", &l) >= 1.0
                && s.sum("observer_listener_backoff_seconds", &l) == 0.0
        })
        .await,
    );

    // A checkpoint save fails (a trigger refuses to move the row): counted, and kept as the
    // checkpoint's error streak until a save succeeds.
    db.exec(
        "CREATE FUNCTION refuse_save() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'checkpoint writes refused by test'; END $$",
    )
    .await;
    db.exec(
        "CREATE TRIGGER refuse_save BEFORE UPDATE ON observer_checkpoints FOR EACH ROW \
         WHEN (OLD.last_processed_at IS DISTINCT FROM NEW.last_processed_at) \
         EXECUTE FUNCTION refuse_save()",
    )
    .await;
    db.exec("INSERT INTO orders (id, n) VALUES (100, 1)").await;
    scrapes.push(
        scrape_until(&base, "a failed save", |s| {
            s.sum("observer_checkpoint_save_errors_total", &l) >= 1.0
        })
        .await,
    );
    let (streak, error) = save_errors(&db).await;
    assert!(streak >= 1, "{streak}");
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains("checkpoint writes refused by test")),
        "{error:?}"
    );
    let st = status_json(&db, &base);
    let me = st["database"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["listener_id"] == "fam")
        .cloned()
        .unwrap();
    assert!(me["consecutive_errors"].as_i64() >= Some(1), "{me:#}");
    db.exec("DROP TRIGGER refuse_save ON observer_checkpoints")
        .await;
    db.exec("INSERT INTO orders (id, n) VALUES (101, 1)").await;
    until("a successful save clears the streak", async || {
        save_errors(&db).await == (0, None)
    })
    .await;

    // Redis goes down: operations are served by the fallback, the writes made meanwhile wait
    // for replay, and are replayed once it is back.
    redis.kill();
    db.exec("INSERT INTO orders (id, n) SELECT g, g FROM generate_series(200, 209) g")
        .await;
    let redis_store = [("store", "redis")];
    scrapes.push(
        scrape_until(&base, "the fallback serving", |s| {
            s.sum("observer_fallback_active", &redis_store) == 1.0
                && s.sum("observer_fallback_invocations_total", &redis_store) >= 10.0
                && s.sum("observer_primary_failures_total", &redis_store) >= 1.0
                && s.sum("observer_sync_queue_size", &redis_store) >= 1.0
                && s.sum("observer_health_check_consecutive_failures", &[]) >= 1.0
        })
        .await,
    );
    status_until(
        &db,
        &base,
        "the fallback and Redis's health in status",
        |st| {
            st["instance"]["redis"]["fallback_active"] == true
                && st["instance"]["redis"]["healthy"] == false
                && st["instance"]["redis"]["replay_backlog"].as_u64() >= Some(1)
        },
    )
    .await;
    assert!(status_text(&db, &base).contains("Redis: FALLBACK ACTIVE, UNHEALTHY, replay backlog"));
    redis.restart();
    scrapes.push(
        scrape_until(&base, "the writes replayed", |s| {
            s.sum("observer_fallback_active", &redis_store) == 0.0
                && s.sum("observer_sync_operations_total", &redis_store) >= 1.0
                && s.sum("observer_sync_queue_size", &redis_store) == 0.0
        })
        .await,
    );

    signal(&run, "TERM");
    assert_eq!(
        wait_exit(&mut run, Duration::from_secs(15)).await,
        Some(0),
        "{}",
        log_text(&log)
    );
    scrapes
}

/// An HA pair: `a` holds the partition and is paused mid-delivery, `b` takes over (and, as
/// leader, records the failover); `a` wakes to a lost lease and a fenced checkpoint write.
async fn ha_takeover() -> Vec<Scrape> {
    let g = Group::new("families_ha", 1).await;
    let a = g.spawn("a");
    until("a holds the partition", async || {
        g.holders().await.get(&0).map(String::as_str) == Some("a")
    })
    .await;
    let a_ops = ops_url(&g.log("a")).await;
    let mut b = g.spawn("b");
    let b_ops = ops_url(&g.log("b")).await;
    g.hooks.hold(Some("a"));
    g.write("x", 1).await;
    until("a's request for x", async || {
        g.hooks.by("a").iter().any(|h| h.entity_id == "x")
    })
    .await;
    pause(&a).await;
    g.hooks.hold(None);
    until("b takes the partition over", async || {
        g.holders().await.get(&0).map(String::as_str) == Some("b")
    })
    .await;
    let b_scrape = scrape_until(&b_ops, "b records the failover", |s| {
        s.sum("observer_failovers_total", &[]) >= 1.0
            && s.sum("observer_listeners_failed_total", &[]) >= 1.0
            && s.sum("observer_leader", &[]) == 1.0
            && s.sum("observer_checkpoint_leases_held", &[]) == 1.0
    })
    .await;
    signal(&a, "CONT");
    // a wakes with its in-flight event finishing and its renewal overdue. Whichever runs first
    // decides how a learns it lost the partition: its checkpoint write is fenced, or its
    // renewal is refused and the listener stops before it writes. Both end its lease.
    let a_scrape = scrape_until(
        &a_ops,
        "a's fenced write or refused renewal, and its ended lease",
        |s| {
            (s.sum("observer_fenced_writes_total", &[("listener", "ha")]) >= 1.0
                || s.sum("observer_lease_renewals_total", &[("outcome", "lost")]) >= 1.0)
                && s.sum("observer_lease_hold_duration_seconds_count", &[]) >= 1.0
                && s.sum("observer_lease_renewals_total", &[]) >= 1.0
        },
    )
    .await;
    signal(&b, "TERM");
    assert_eq!(wait_exit(&mut b, Duration::from_secs(15)).await, Some(0));
    vec![a_scrape, b_scrape]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_family_moves_under_observers_run() {
    let mut documented = documented_families();
    assert!(documented.len() > 60, "{documented:?}");
    let mut scrapes = single_instance().await;
    scrapes.extend(ha_takeover().await);
    // The WAL source's families move under `[source] kind = "wal"`, on a logical server.
    match crate::wal::wal_instance().await {
        Some(s) => scrapes.push(s),
        None => documented.retain(|f| !f.starts_with("observer_wal_")),
    }
    // The takeover's race (see `ha_takeover`): when a's refused renewal won it, a never wrote,
    // and the fenced-write family is shown by `ha::a_paused_old_leader_is_fenced_and_steps_down`
    // and the telemetry unit tests instead.
    let renewal_won = !scrapes
        .iter()
        .any(|s| moved(s, "observer_fenced_writes_total"))
        && scrapes
            .iter()
            .any(|s| s.sum("observer_lease_renewals_total", &[("outcome", "lost")]) >= 1.0);
    if renewal_won {
        eprintln!(
            "the paused holder's renewal was refused before it wrote: no fenced write this run"
        );
        documented.remove("observer_fenced_writes_total");
    }
    let still: Vec<&String> = documented
        .iter()
        .filter(|f| !scrapes.iter().any(|s| moved(s, f)))
        .collect();
    assert!(
        still.is_empty(),
        "documented in docs/monitoring.md but never emitted under `observers run`: {still:?}"
    );
}

#[test]
fn the_family_list_is_read_from_the_tables() {
    let documented = documented_families();
    for name in [
        "observer_events_processed_total",
        "observer_cache_misses_total",
        "observer_cache_evictions_total",
        "observer_jobs_processing",
        "observer_jobs_failed_total",
        "observer_lease_hold_duration_seconds",
        "observer_sync_queue_size",
    ] {
        assert!(documented.contains(name), "{name}: {documented:?}");
    }
    let by_prefix: BTreeMap<bool, usize> = documented.iter().fold(BTreeMap::new(), |mut m, n| {
        *m.entry(n.starts_with("observer_")).or_default() += 1;
        m
    });
    assert_eq!(by_prefix.get(&false), None, "{documented:?}");
}
