//! End to end against the real PostgreSQL: `observers run` as a process, captured tables, a
//! real webhook receiver; graceful stops, SIGKILL, dropped connections, the DLQ and its retry.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use crate::support::{Receiver, TestDb, signal, spawn_run, wait_exit, wait_until, write_config};
use crate::support::{capture, capture_with, cli};

const LONG: Duration = Duration::from_secs(60);

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
initial_backoff = "20ms"
max_backoff = "100ms"

[dedup]
enabled = false

[[observers]]
name = "all-orders"
entity = "*"

  [[observers.actions]]
  type = "webhook"
  url = "{base}/hooks/all"
{extra}
"#,
        url = db.url,
        base = rx.base
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_updates_deletes_reach_the_webhook_for_every_key_type() {
    let db = TestDb::new("keys").await;
    db.exec("CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, total numeric, status text)").await;
    db.exec("CREATE TABLE tickets (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), title text)")
        .await;
    db.exec("CREATE TABLE skus (code text PRIMARY KEY, price int)")
        .await;
    assert!(cli(&db, &["migrate"]).status.success());
    capture(&db, "orders", "Order");
    capture(&db, "tickets", "Ticket");
    capture_with(&db, "skus", "Sku", "code");
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, &config(&db, &rx, ""));
    let mut run = spawn_run(&path, &dir.path().join("run.log"));

    db.exec("INSERT INTO orders (total, status) VALUES (150.5, 'new')")
        .await;
    db.exec("UPDATE orders SET status = 'paid'").await;
    db.exec("DELETE FROM orders").await;
    db.exec("INSERT INTO tickets (title) VALUES ('help')").await;
    db.exec("INSERT INTO skus (code, price) VALUES ('SKU-1', 10)")
        .await;
    db.exec("BEGIN; SET LOCAL observers.user_id = 'u-7'; UPDATE skus SET price = 12; COMMIT")
        .await;

    wait_until("six deliveries", LONG, || rx.count() >= 6).await;
    signal(&run, "TERM");
    assert_eq!(wait_exit(&mut run, Duration::from_secs(10)).await, Some(0));

    let all = rx.deliveries();
    let of = |entity: &str| -> Vec<serde_json::Value> {
        all.iter()
            .filter(|x| x.body["entity_type"] == entity)
            .map(|x| x.body.clone())
            .collect()
    };
    let kinds = |list: &[serde_json::Value]| -> Vec<String> {
        list.iter()
            .map(|b| b["event_type"].as_str().unwrap().to_owned())
            .collect()
    };
    let (orders, tickets, skus) = (of("Order"), of("Ticket"), of("Sku"));
    assert_eq!(
        kinds(&orders),
        ["insert", "update", "delete"],
        "in order per entity"
    );
    assert_eq!(kinds(&tickets), ["insert"]);
    assert_eq!(kinds(&skus), ["insert", "update"]);
    let d: Vec<crate::support::Delivery> = [&orders, &tickets, &skus]
        .iter()
        .flat_map(|l| l.iter())
        .map(|b| all.iter().find(|x| &x.body == b).unwrap().clone())
        .collect();
    let insert = &d[0].body;
    for key in [
        "id",
        "observer",
        "entity_type",
        "entity_id",
        "event_type",
        "tenant_id",
        "user_id",
        "timestamp",
        "data",
        "before",
        "changes",
    ] {
        assert!(insert.get(key).is_some(), "`{key}` in {insert}");
    }
    assert_eq!(insert["entity_id"], "1");
    assert_eq!(insert["data"]["total"], 150.5);
    assert_eq!(
        d[1].body["changes"],
        serde_json::json!([{"field": "status", "old": "new", "new": "paid"}])
    );
    assert_eq!(d[2].body["before"]["status"], "paid");
    assert!(d[2].body["data"].is_null());
    let uuid = d[3].body["entity_id"].as_str().unwrap();
    assert_eq!(uuid.len(), 36, "uuid key: {uuid}");
    assert_eq!(d[4].body["entity_id"], "SKU-1");
    assert_eq!(d[5].body["user_id"], "u-7");
    assert_eq!(d[0].webhook_id, format!("{}:all-orders:0", insert["id"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restart_delivers_nothing_twice() {
    let db = TestDb::new("restart").await;
    db.exec("CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, n int)")
        .await;
    capture(&db, "orders", "Order");
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, &config(&db, &rx, ""));
    let log = dir.path().join("run.log");
    for round in 0..3 {
        let mut run = spawn_run(&path, &log);
        db.exec("INSERT INTO orders (n) SELECT g FROM generate_series(1, 40) g")
            .await;
        wait_until("this round's deliveries", LONG, || {
            rx.count() >= 40 * (round + 1)
        })
        .await;
        signal(&run, "TERM");
        assert_eq!(
            wait_exit(&mut run, Duration::from_secs(10)).await,
            Some(0),
            "exit 0 on SIGTERM"
        );
    }
    let ids: Vec<i64> = rx
        .deliveries()
        .iter()
        .map(|d| d.body["id"].as_i64().unwrap())
        .collect();
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(ids.len(), 120);
    assert_eq!(
        unique.len(),
        120,
        "nothing delivered twice across graceful restarts"
    );
    let out = cli(&db, &["checkpoint", "show", "--format", "json"]);
    let cps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cps[0]["listener_id"], "e2e");
    assert_eq!(cps[0]["cursor"]["id"], 120);
}

/// kill -9 of `observers run` several times while changes stream in: nothing lost, per-entity
/// order kept, duplicates bounded by what was in flight (at most one batch per kill).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_streaming_loses_nothing() {
    let db = TestDb::new("kill").await;
    db.exec("CREATE TABLE orders (id bigint PRIMARY KEY, n int)")
        .await;
    capture(&db, "orders", "Order");
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, &config(&db, &rx, ""));
    let log = dir.path().join("run.log");

    let writer = {
        let pool = db.pool.clone();
        tokio::spawn(async move {
            // 20 entities, each updated 25 times: 20 inserts + 480 updates.
            for i in 0..20 {
                sqlx::query("INSERT INTO orders (id, n) VALUES ($1, 0)")
                    .bind(i64::from(i))
                    .execute(&pool)
                    .await
                    .unwrap();
            }
            for step in 1..=24 {
                for i in 0..20 {
                    sqlx::query("UPDATE orders SET n = $2 WHERE id = $1")
                        .bind(i64::from(i))
                        .bind(step)
                        .execute(&pool)
                        .await
                        .unwrap();
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        })
    };
    let kills = 4;
    for k in 0..kills {
        let mut run = spawn_run(&path, &log);
        let target = rx.count() + 40;
        wait_until("progress before the kill", LONG, || {
            rx.count() >= target || writer.is_finished()
        })
        .await;
        signal(&run, "KILL");
        wait_exit(&mut run, Duration::from_secs(10)).await;
        eprintln!("kill {k}: {} deliveries so far", rx.count());
    }
    writer.await.unwrap();
    let mut run = spawn_run(&path, &log);
    let expected: BTreeSet<i64> = (1..=500).collect();
    wait_until("every change delivered", LONG, || {
        rx.deliveries()
            .iter()
            .map(|d| d.body["id"].as_i64().unwrap())
            .collect::<BTreeSet<_>>()
            == expected
    })
    .await;
    signal(&run, "TERM");
    assert_eq!(wait_exit(&mut run, Duration::from_secs(10)).await, Some(0));

    let all = rx.deliveries();
    let duplicates = all.len() - 500;
    assert!(
        duplicates <= kills * 50,
        "{duplicates} duplicates for {kills} kills of batches of 50"
    );
    for (entity, list) in rx.by_entity("/hooks/all") {
        // Ignoring re-deliveries, every entity's changes arrive in order.
        let mut seen = HashSet::new();
        let firsts: Vec<i64> = list
            .iter()
            .map(|d| d.body["id"].as_i64().unwrap())
            .filter(|id| seen.insert(*id))
            .collect();
        assert!(
            firsts.windows(2).all(|w| w[0] < w[1]),
            "entity {entity} out of order: {firsts:?}"
        );
        let ns: Vec<i64> = list
            .iter()
            .filter_map(|d| d.body["data"]["n"].as_i64())
            .collect();
        assert_eq!(
            *ns.last().unwrap(),
            24,
            "entity {entity} ends at its last update"
        );
    }
    for d in &all {
        assert_eq!(
            d.webhook_id,
            format!("{}:all-orders:0", d.body["id"]),
            "duplicates carry the same idempotency key"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_connections_are_survived() {
    let db = TestDb::new("terminate").await;
    db.exec("CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, n int)")
        .await;
    capture(&db, "orders", "Order");
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, &config(&db, &rx, ""));
    let mut run = spawn_run(&path, &dir.path().join("run.log"));
    for round in 1..=4 {
        db.exec("INSERT INTO orders (n) SELECT g FROM generate_series(1, 25) g")
            .await;
        wait_until("some deliveries", LONG, || rx.count() >= 25 * round - 10).await;
        let killed: i64 = sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name <> 'e2e-test'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap_or(0);
        eprintln!("round {round}: terminated {killed} backends");
    }
    let expected: BTreeSet<i64> = (1..=100).collect();
    wait_until("every change delivered after reconnects", LONG, || {
        rx.deliveries()
            .iter()
            .map(|d| d.body["id"].as_i64().unwrap())
            .collect::<BTreeSet<_>>()
            == expected
    })
    .await;
    signal(&run, "TERM");
    assert_eq!(wait_exit(&mut run, Duration::from_secs(10)).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_endpoint_dead_letters_without_blocking_and_dlq_retry_delivers() {
    let db = TestDb::new("dlq").await;
    db.exec("CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, n int)")
        .await;
    capture(&db, "orders", "Order");
    let good = Receiver::start().await;
    let bad = Receiver::start().await;
    bad.fail(true);
    let dir = tempfile::tempdir().unwrap();
    // The breaker stays out of the way here (its own tests cover it): every attempt is made.
    let extra = format!(
        "\n[[observers]]\nname = \"flaky\"\nentity = \"Order\"\n  [[observers.actions]]\n  type = \"webhook\"\n  url = \"{}/hooks/flaky\"\n\n[breaker]\nminimum_calls = 1000\nwindow_size = 1000\n",
        bad.base
    );
    let path = write_config(&dir, &config(&db, &good, &extra));
    let mut run = spawn_run(&path, &dir.path().join("run.log"));
    db.exec("INSERT INTO orders (n) SELECT g FROM generate_series(1, 10) g")
        .await;
    wait_until("healthy observer got everything", LONG, || {
        good.count() >= 10
    })
    .await;
    let list = |db: &TestDb| -> serde_json::Value {
        serde_json::from_slice(&cli(db, &["dlq", "list", "--format", "json"]).stdout).unwrap()
    };
    wait_until("ten DLQ items", LONG, || {
        list(&db).as_array().map_or(0, Vec::len) == 10
    })
    .await;
    assert_eq!(bad.attempts(), 20, "two attempts each");
    let items = list(&db);
    assert_eq!(items[0]["observer"], "flaky");
    assert_eq!(items[0]["error_code"], "OBS-HTTP-5XX");
    signal(&run, "TERM");
    assert_eq!(wait_exit(&mut run, Duration::from_secs(10)).await, Some(0));

    let cfg = path.to_str().unwrap();
    let still = cli(&db, &["dlq", "retry", "--all", "--config", cfg]);
    assert_eq!(still.status.code(), Some(1), "still failing: exit 1");
    bad.fail(false);
    let filtered = cli(
        &db,
        &[
            "dlq",
            "retry",
            "--filter",
            "entity_id == '3'",
            "--config",
            cfg,
            "--format",
            "json",
        ],
    );
    assert!(
        filtered.status.success(),
        "{}",
        String::from_utf8_lossy(&filtered.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&filtered.stdout).unwrap();
    assert_eq!(report["retried"], 1);
    let all = cli(&db, &["dlq", "retry", "--all", "--config", cfg]);
    assert!(
        all.status.success(),
        "{}",
        String::from_utf8_lossy(&all.stderr)
    );
    assert_eq!(
        bad.count(),
        10,
        "every failed action delivered once the endpoint recovered"
    );
    let pending = cli(
        &db,
        &["dlq", "list", "--status", "pending", "--format", "json"],
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&pending.stdout).unwrap(),
        serde_json::json!([])
    );
    let purge = cli(&db, &["dlq", "purge", "--status", "resolved"]);
    assert!(String::from_utf8_lossy(&purge.stdout).contains("purged 10"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_rejects_injection_and_drops_nothing() {
    let db = TestDb::new("inject").await;
    db.exec("CREATE TABLE y (id int PRIMARY KEY)").await;
    let out = cli(
        &db,
        &[
            "capture",
            "enable",
            "--table",
            "x; drop table y",
            "--entity",
            "X",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("x; drop table y"),
        "the error names the input: {stderr}"
    );
    let quoted = cli(
        &db,
        &[
            "capture",
            "enable",
            "--table",
            "\"x; drop table y\"",
            "--entity",
            "X",
        ],
    );
    assert_eq!(quoted.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&quoted.stderr).contains("does not exist"));
    let y: Option<String> = sqlx::query_scalar("SELECT to_regclass('y')::text")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(y.as_deref(), Some("y"), "table y still exists");
}

/// `capture list` (and `status`) flag a captured table whose key column was renamed, while the
/// application's writes to it keep succeeding and being captured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_list_shows_a_renamed_key_column() {
    let db = TestDb::new("drift").await;
    db.exec("CREATE TABLE orders (id int PRIMARY KEY); CREATE TABLE skus (id int PRIMARY KEY)")
        .await;
    capture(&db, "orders", "Order");
    capture(&db, "skus", "Sku");
    db.exec("ALTER TABLE orders RENAME COLUMN id TO order_id")
        .await;
    db.exec("INSERT INTO orders VALUES (5)").await;
    let logged: Vec<String> = sqlx::query_scalar("SELECT entity_id FROM observer_change_log")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(logged, ["5"]);

    let out = cli(&db, &["capture", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let orders = text.lines().find(|l| l.contains("orders")).unwrap();
    let skus = text.lines().find(|l| l.contains("skus")).unwrap();
    assert!(orders.ends_with("DRIFT"), "{text}");
    assert!(skus.ends_with("ok"), "{text}");
    assert!(
        text.contains("id column `id` no longer exists") && text.contains("--id-column order_id"),
        "{text}"
    );
    let json = cli(&db, &["capture", "list", "--format", "json"]);
    let listed: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(listed[0]["table"], "orders");
    assert_eq!(listed[0]["id_column_present"], false);
    assert_eq!(listed[0]["key_columns"], serde_json::json!(["order_id"]));

    let status = cli(&db, &["status", "--url", "http://127.0.0.1:1"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("Captured Tables: 2 (1 DRIFTED"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_exits_2_and_sighup_reload_keeps_running() {
    let db = TestDb::new("reload").await;
    db.exec("CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, n int)")
        .await;
    capture(&db, "orders", "Order");
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, "[[observers]]\nname = 1\n");
    let mut bad = spawn_run(&path, &dir.path().join("bad.log"));
    assert_eq!(wait_exit(&mut bad, Duration::from_secs(10)).await, Some(2));

    let path = write_config(&dir, &config(&db, &rx, ""));
    let mut run = spawn_run(&path, &dir.path().join("run.log"));
    db.exec("INSERT INTO orders (n) VALUES (1)").await;
    wait_until("first delivery", LONG, || rx.count() == 1).await;
    // A broken config is refused on SIGHUP; the old one keeps delivering.
    std::fs::write(&path, "this is not toml").unwrap();
    signal(&run, "HUP");
    db.exec("INSERT INTO orders (n) VALUES (2)").await;
    wait_until("delivery after a refused reload", LONG, || rx.count() == 2).await;
    // A good config with a condition takes effect.
    std::fs::write(
        &path,
        config(&db, &rx, "").replace("entity = \"*\"", "entity = \"*\"\ncondition = \"n > 10\""),
    )
    .unwrap();
    signal(&run, "HUP");
    let log = dir.path().join("run.log");
    wait_until("reload logged", LONG, || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("config reloaded")
    })
    .await;
    db.exec("INSERT INTO orders (n) VALUES (5), (50)").await;
    wait_until("only the matching change", LONG, || rx.count() == 3).await;
    assert_eq!(rx.deliveries()[2].body["data"]["n"], 50);
    signal(&run, "TERM");
    assert_eq!(wait_exit(&mut run, Duration::from_secs(10)).await, Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("config reload refused"), "{text}");
}
