//! Redis fault tests: `observers run` with `[dedup] backend = "redis"` against a redis-server this
//! test starts on a free port, kills mid-stream and restarts. Delivery goes on while Redis is down
//! (the in-memory fallback serves dedup), nothing is lost, the breaker / fallback / health
//! transitions are logged, and the dedup marks written during the outage reach the restarted
//! Redis (replay).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{Receiver, TestDb, signal, spawn_run, wait_exit, wait_until, write_config};
use crate::support::{capture, free_port};

const LONG: Duration = Duration::from_secs(60);
const REDIS_SERVER: &str = "redis-server";

/// A redis-server child on a fixed port, without persistence (a restart starts empty, so
/// whatever the restarted server holds was written after it came back).
pub(crate) struct RedisServer {
    port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl RedisServer {
    pub(crate) fn start(port: u16, log: &Path) -> Self {
        let mut s = Self {
            port,
            child: None,
            log: log.to_owned(),
        };
        s.restart();
        s
    }

    pub(crate) fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(REDIS_SERVER)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be on PATH (apt-get install redis-server)");
        self.child = Some(child);
    }

    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub(crate) async fn client(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.url()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match client.get_multiplexed_async_connection().await {
                Ok(c) => return c,
                Err(e) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "redis-server on {} not reachable: {e}",
                        self.port
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Change-log ids of the deliveries, per entity id.
fn delivered(rx: &Receiver) -> BTreeMap<String, Vec<i64>> {
    let mut map: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for d in rx.deliveries() {
        map.entry(d.body["entity_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(d.body["id"].as_i64().unwrap());
    }
    map
}

fn log_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

async fn wait_for_log(path: &Path, needle: &str) {
    wait_until(&format!("log line `{needle}`"), LONG, || {
        log_text(path).contains(needle)
    })
    .await;
}

async fn dedup_mark(conn: &mut redis::aio::MultiplexedConnection, id: i64) -> Option<String> {
    redis::cmd("GET")
        .arg(format!("e2e:dedup:redis-e2e:{id}"))
        .query_async(conn)
        .await
        .unwrap()
}

fn run_config(db: &TestDb, redis: &RedisServer, rx: &Receiver, fallback: &str) -> String {
    format!(
        r#"
[source]
database_url = "{db}"
listener_id = "redis-e2e"
poll_interval = "100ms"

[dedup]
backend = "redis"

[cache]
enabled = true
backend = "redis"

[redis]
url = "{redis}"
key_prefix = "e2e:"
fallback = "{fallback}"
op_timeout = "200ms"
health_interval = "100ms"
health_timeout = "100ms"
breaker_minimum_calls = 3
breaker_window = 5
breaker_open = "300ms"
breaker_success_threshold = 1

[[observers]]
name = "orders"
entity = "Order"

  [[observers.actions]]
  type = "webhook"
  url = "{base}/hooks/orders"
"#,
        db = db.url,
        redis = redis.url(),
        base = rx.base
    )
}

/// Waits until every id has its done mark in Redis.
async fn wait_for_marks(conn: &mut redis::aio::MultiplexedConnection, ids: &[i64], what: &str) {
    let mut missing = ids.to_vec();
    let deadline = std::time::Instant::now() + LONG;
    while !missing.is_empty() {
        let mut still = Vec::new();
        for id in missing {
            if dedup_mark(conn, id).await.as_deref() != Some("d") {
                still.push(id);
            }
        }
        missing = still;
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: no done mark in Redis for {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_mode_survives_a_redis_restart() {
    redis_killed_mid_stream("circuit_breaker").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_based_mode_survives_a_redis_restart() {
    redis_killed_mid_stream("health_based").await;
}

/// Number of cached action results of one entity in Redis.
async fn cached_results(conn: &mut redis::aio::MultiplexedConnection, entity_id: &str) -> usize {
    let (_, keys): (u64, Vec<String>) = redis::cmd("SCAN")
        .arg(0)
        .arg("MATCH")
        .arg(format!(
            "e2e:cache:action:Order:{entity_id}:webhook:orders:0:*"
        ))
        .arg("COUNT")
        .arg(100_000)
        .query_async(conn)
        .await
        .unwrap();
    keys.len()
}

/// Redis up, killed mid-stream, restarted empty: delivery never stops, nothing is lost or
/// repeated, and the dedup marks and cached results written meanwhile reach the new Redis.
async fn redis_killed_mid_stream(fallback: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start(free_port(), &dir.path().join("redis.log"));
    let mut conn = redis.client().await;
    let db = TestDb::new("redis_fault").await;
    db.exec("CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, n int)")
        .await;
    capture(&db, "orders", "Order");
    let rx = Receiver::start().await;
    let config = run_config(&db, &redis, &rx, fallback);
    let path = write_config(&dir, &config);
    let log = dir.path().join("run.log");
    let mut run = spawn_run(&path, &log);

    // Phase 1: Redis up. Every processed event leaves a done mark in Redis.
    db.exec("INSERT INTO orders (n) SELECT g FROM generate_series(1, 20) g")
        .await;
    wait_until("20 entities delivered with Redis up", LONG, || {
        delivered(&rx).len() >= 20
    })
    .await;
    let before: Vec<i64> = delivered(&rx).values().flatten().copied().collect();
    wait_for_marks(&mut conn, &before, "before").await;

    // Phase 2: Redis killed mid-stream; events keep flowing in while it is down.
    let writer = {
        let pool = db.pool.clone();
        tokio::spawn(async move {
            for i in 0..30 {
                sqlx::query("INSERT INTO orders (n) VALUES ($1)")
                    .bind(100 + i)
                    .execute(&pool)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    redis.kill();
    writer.await.unwrap();
    wait_until("50 entities delivered with Redis down", LONG, || {
        delivered(&rx).len() >= 50
    })
    .await;
    wait_for_log(&log, "primary store unavailable; serving from the fallback").await;
    wait_for_log(&log, "health monitor: primary store unhealthy").await;
    let text = log_text(&log);
    if fallback == "circuit_breaker" {
        assert!(
            text.contains("endpoint=redis") && text.contains("circuit breaker opened"),
            "the Redis breaker's transitions are logged:\n{text}"
        );
    }
    let during: BTreeSet<i64> = delivered(&rx)
        .values()
        .flatten()
        .copied()
        .filter(|id| !before.contains(id))
        .collect();
    assert!(during.len() >= 30, "{during:?}");

    // Phase 3: Redis back (empty). The dedup marks written on the fallback are replayed to it.
    redis.restart();
    let mut conn = redis.client().await;
    wait_for_log(&log, "health monitor: primary store healthy").await;
    let during: Vec<i64> = during.into_iter().collect();
    wait_for_marks(&mut conn, &during, "outage writes replayed").await;
    wait_for_log(&log, "fallback writes replayed to the primary").await;
    // The action results cached during the outage were replayed too.
    let during_entities: Vec<String> = delivered(&rx)
        .into_iter()
        .filter(|(_, ids)| ids.iter().any(|id| during.contains(id)))
        .map(|(entity, _)| entity)
        .collect();
    assert_eq!(during_entities.len(), 30);
    for entity in &during_entities {
        assert_eq!(
            cached_results(&mut conn, entity).await,
            1,
            "cached webhook result of entity {entity} replayed"
        );
    }

    // Phase 4: Redis serves again.
    db.exec("INSERT INTO orders (n) SELECT g FROM generate_series(1, 10) g")
        .await;
    wait_until("60 entities delivered after recovery", LONG, || {
        delivered(&rx).len() >= 60
    })
    .await;
    wait_for_log(&log, "primary store recovered; fallback no longer used").await;
    let all = delivered(&rx);
    let after: Vec<i64> = all
        .values()
        .flatten()
        .copied()
        .filter(|id| !before.contains(id) && !during.contains(id))
        .collect();
    assert_eq!(after.len(), 10);
    wait_for_marks(&mut conn, &after, "after").await;

    signal(&run, "TERM");
    assert_eq!(wait_exit(&mut run, Duration::from_secs(15)).await, Some(0));
    eprintln!("--- observers run log ---\n{}", log_text(&log));
    // Nothing lost, nothing delivered twice.
    let all = delivered(&rx);
    assert_eq!(all.len(), 60);
    let twice: Vec<_> = all.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(twice.is_empty(), "delivered twice: {twice:?}");
}
