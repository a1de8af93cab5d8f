//! `[source] kind = "wal"` end to end, on a PostgreSQL with `wal_level = logical`
//! (`OBSERVERS_WAL_DATABASE_URL`, which `cargo xtask test` provides): `capture enable --kind wal`
//! before `run` starts, deliveries in commit order per entity, `observers run` killed with
//! SIGKILL mid-stream and started again (nothing lost), `status`, `capture list`, the slot's
//! metrics, and `capture drop-slot`.

use std::collections::BTreeMap;
use std::time::Duration;

use observers_metrics::Scrape;

use crate::metrics::{ops_url, scrape_until};
use crate::support::{
    Receiver, TestDb, cli, signal, spawn_run, wait_exit, wait_until, write_config,
};

const LONG: Duration = Duration::from_secs(90);

fn config(db: &TestDb, rx: &Receiver) -> String {
    format!(
        r#"
[source]
database_url = "{url}"
listener_id = "wal"
kind = "wal"
slot = "{name}"
publication = "{name}_pub"
batch_size = 50
poll_interval = "100ms"

[retry]
max_attempts = 2
initial_backoff = "20ms"
max_backoff = "100ms"

[dedup]
enabled = false

[metrics]
listen = "127.0.0.1:0"
refresh_interval = "100ms"

[[observers]]
name = "counters"
entity = "Counter"
events = ["insert", "update", "truncate"]

  [[observers.actions]]
  type = "webhook"
  url = "{base}/hooks/counters"
"#,
        url = db.url,
        name = db.name,
        base = rx.base
    )
}

/// Each entity's `n` values in the order delivered.
fn sequences(rx: &Receiver) -> BTreeMap<String, Vec<i64>> {
    let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for d in rx.deliveries() {
        if let Some(n) = d.body["data"]["n"].as_i64() {
            out.entry(d.body["entity_id"].as_str().unwrap_or("").to_owned())
                .or_default()
                .push(n);
        }
    }
    out
}

/// The WAL source under `observers run`, killed once with SIGKILL; returns a scrape with the
/// WAL families moved (for the families test), or `None` without a logical server.
// One scenario, read top to bottom.
#[allow(clippy::too_many_lines)]
pub async fn wal_instance() -> Option<Scrape> {
    let db = TestDb::on_logical("wal").await?;
    db.exec("CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL)")
        .await;
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, &config(&db, &rx));
    let conf = path.to_str().unwrap();
    let out = cli(
        &db,
        &[
            "capture", "enable", "--config", conf, "--table", "counters", "--entity", "Counter",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("kind wal"));
    let out = cli(&db, &["capture", "list"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains(" wal ") && listed.contains(" ok"),
        "{listed}"
    );

    // Committed before `run` starts: the slot keeps them.
    db.exec("INSERT INTO counters SELECT g, 0 FROM generate_series(1, 5) g")
        .await;
    let log = dir.path().join("run.log");
    let mut run = spawn_run(&path, &log);
    let base = ops_url(&log).await;
    wait_until("the five inserts", LONG, || rx.count() >= 5).await;

    // Writers keep updating while `run` is killed and started again.
    let writer = {
        let pool = db.pool.clone();
        tokio::spawn(async move {
            for n in 1..=40 {
                for id in 1..=5 {
                    sqlx::query("UPDATE counters SET n = $2 WHERE id = $1")
                        .bind(id)
                        .bind(n)
                        .execute(&pool)
                        .await
                        .unwrap();
                }
            }
        })
    };
    wait_until("some updates delivered", LONG, || rx.count() >= 30).await;
    signal(&run, "KILL");
    let _ = wait_exit(&mut run, Duration::from_secs(10)).await;
    writer.await.unwrap();
    let log2 = dir.path().join("run2.log");
    let mut run = spawn_run(&path, &log2);
    let base2 = ops_url(&log2).await;
    drop(base);
    wait_until("every counter reaches 40", LONG, || {
        let s = sequences(&rx);
        s.len() == 5 && s.values().all(|v| v.last() == Some(&40))
    })
    .await;
    // Nothing lost; commit order per entity (a redelivery after the kill may repeat a suffix).
    for (id, seq) in sequences(&rx) {
        let mut expected = 0;
        for n in &seq {
            if *n == expected + 1 {
                expected = *n;
            } else {
                assert!(
                    *n <= expected,
                    "counter {id}: {n} after {expected}: {seq:?}"
                );
            }
        }
        assert_eq!(expected, 40, "counter {id} lost an update: {seq:?}");
    }
    db.exec("TRUNCATE counters").await;
    wait_until("the truncate", LONG, || {
        rx.deliveries()
            .iter()
            .any(|d| d.body["event_type"] == "truncate")
    })
    .await;
    let scrape = scrape_until(&base2, "the relay's metrics", |s| {
        s.sum("observer_wal_relayed_changes_total", &[]) > 0.0
            && s.select("observer_wal_slot_retained_bytes", &[])
                .next()
                .is_some()
            && s.select("observer_wal_slot_lag_bytes", &[])
                .next()
                .is_some()
    })
    .await;
    let status = cli(&db, &["status", "--url", &base2]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("Replication Slots") && text.contains(&format!("{}: streaming", db.name)),
        "{text}"
    );
    let refused = cli(&db, &["capture", "drop-slot", "--config", conf]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is being streamed"));
    signal(&run, "TERM");
    assert_eq!(wait_exit(&mut run, Duration::from_secs(15)).await, Some(0));
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let out = cli(&db, &["capture", "drop-slot", "--config", conf]);
        if out.status.success() {
            assert!(String::from_utf8_lossy(&out.stdout).contains("dropped replication slot"));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Some(scrape)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_source_under_observers_run_survives_sigkill() {
    wal_instance().await;
}
