//! The HA benchmark behind `cargo xtask bench --ha`: failover time over 20 SIGKILLs of the
//! partition holder (two `observers run` instances, 2 s leases), against the same change's
//! delivery latency with no failure measured in the same run; and the latency of a
//! `PostgresLeaseStore` acquisition against a raw single-row UPSERT round trip on the same pool.
//! Needs the release `observers` binary next to this example (xtask builds it first).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use observers_core::stores::lease::LeaseStore;
use observers_ha::PostgresLeaseStore;
use observers_postgres::PgPool;
use sqlx::{Connection, Executor};

const DB: &str = "observers_ha_bench";
const KILLS: usize = 20;
const TTL: Duration = Duration::from_secs(2);
const LEASE_SAMPLES: usize = 500;

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
    for sql in [
        format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"),
        format!("CREATE DATABASE {DB}"),
    ] {
        admin.execute(sqlx::AssertSqlSafe(sql)).await.unwrap();
    }
    let pool = observers_postgres::connect(&db_url(), 4).await.unwrap();
    observers_postgres::migrate(&pool).await.unwrap();
    pool
}

fn binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("observers");
    assert!(
        bin.exists(),
        "{} missing: cargo build --release -p observers-cli",
        bin.display()
    );
    bin
}

type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

async fn receiver() -> (String, Arrivals) {
    async fn hook(State(seen): State<Arrivals>, body: Bytes) -> &'static str {
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if let Some(id) = body["entity_id"].as_str() {
            seen.lock()
                .unwrap()
                .entry(id.to_owned())
                .or_insert_with(Instant::now);
        }
        "ok"
    }
    let seen: Arrivals = Arc::default();
    let app = axum::Router::new()
        .route("/hook", post(hook))
        .with_state(seen.clone());
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/hook", socket.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(socket, app).await.unwrap() });
    (base, seen)
}

fn spawn(dir: &std::path::Path, hook: &str, name: &str) -> Child {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[source]\ndatabase_url = \"{}\"\nlistener_id = \"bench\"\npoll_interval = \"100ms\"\n\
             [dedup]\nenabled = false\n\
             [ha]\nenabled = true\ngroup = \"bench\"\ninstance_id = \"{name}\"\n\
             lease_ttl = \"{}ms\"\nrenew_interval = \"{}ms\"\n\
             [[observers]]\nname = \"all\"\nentity = \"*\"\n\
             [[observers.actions]]\ntype = \"webhook\"\nurl = \"{hook}\"\n",
            db_url(),
            TTL.as_millis(),
            TTL.as_millis() / 4,
        ),
    )
    .unwrap();
    Command::new(binary())
        .args(["run", "--config", config.to_str().unwrap()])
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn insert(pool: &PgPool, entity_id: &str) -> Instant {
    sqlx::query(
        "INSERT INTO observer_change_log (entity_type, entity_id, operation, after) \
         VALUES ('Bench', $1, 'insert', '{}')",
    )
    .bind(entity_id)
    .execute(pool)
    .await
    .unwrap();
    Instant::now()
}

async fn delivered(seen: &Arrivals, id: &str) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(at) = seen.lock().unwrap().get(id) {
            return *at;
        }
        assert!(Instant::now() < deadline, "{id} never delivered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn holder(pool: &PgPool) -> Option<String> {
    sqlx::query_scalar(
        "SELECT holder FROM observer_leases WHERE name = 'observers/bench/bench/partition/0' \
         AND expires_at > now()",
    )
    .fetch_optional(pool)
    .await
    .unwrap()
    .flatten()
}

async fn registered(pool: &PgPool, name: &str) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM observer_listeners WHERE instance_id = $1 \
           AND last_heartbeat > now() - interval '1 second')",
    )
    .bind(name)
    .fetch_one(pool)
    .await
    .unwrap()
}

fn summary(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    let p = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (p(0.5), p(0.99), *v.last().unwrap())
}

async fn lease_latency(pool: &PgPool) {
    let leases = PostgresLeaseStore::new(pool.clone());
    let mut ours = Vec::with_capacity(LEASE_SAMPLES);
    let mut raw = Vec::with_capacity(LEASE_SAMPLES);
    pool.execute("CREATE TABLE raw_upsert (k text PRIMARY KEY, v bigint)")
        .await
        .unwrap();
    for i in 0..LEASE_SAMPLES {
        let start = Instant::now();
        leases
            .acquire(&format!("bench-{i}"), "me", TTL)
            .await
            .unwrap()
            .unwrap();
        ours.push(start.elapsed());
        let start = Instant::now();
        sqlx::query(
            "INSERT INTO raw_upsert (k, v) VALUES ($1, 1) \
             ON CONFLICT (k) DO UPDATE SET v = raw_upsert.v + 1",
        )
        .bind(format!("k-{i}"))
        .execute(pool)
        .await
        .unwrap();
        raw.push(start.elapsed());
    }
    let (o50, o99, omax) = summary(ours);
    let (r50, r99, _) = summary(raw);
    println!(
        "lease acquisition: p50 {o50:.2?}, p99 {o99:.2?}, max {omax:.2?}; raw UPSERT p50 {r50:.2?}, \
         p99 {r99:.2?}; ratio p50 {:.2}x (goal < 100 ms)",
        o50.as_secs_f64() / r50.as_secs_f64()
    );
}

#[tokio::main]
async fn main() {
    let pool = fresh_db().await;
    lease_latency(&pool).await;

    let dir = tempfile::tempdir().unwrap();
    let (hook, seen) = receiver().await;
    let mut children: HashMap<String, Child> = HashMap::new();
    let mut next = 0;
    let mut start_one = |children: &mut HashMap<String, Child>| {
        let name = format!("i{next}");
        next += 1;
        children.insert(name.clone(), spawn(dir.path(), &hook, &name));
        name
    };
    let first = start_one(&mut children);
    while holder(&pool).await.as_deref() != Some(first.as_str()) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let standby = start_one(&mut children);
    while !registered(&pool, &standby).await {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Baseline: the same change delivered with no failure.
    let mut baseline = Vec::new();
    for i in 0..20 {
        let id = format!("steady-{i}");
        let at = insert(&pool, &id).await;
        baseline.push(delivered(&seen, &id).await - at);
    }

    let mut failovers = Vec::new();
    for k in 0..KILLS {
        let victim = loop {
            if let Some(h) = holder(&pool).await {
                break h;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let mut child = children.remove(&victim).unwrap();
        child.kill().unwrap();
        let killed = Instant::now();
        child.wait().unwrap();
        let id = format!("kill-{k}");
        insert(&pool, &id).await;
        failovers.push(delivered(&seen, &id).await - killed);
        let fresh = start_one(&mut children);
        while !registered(&pool, &fresh).await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for (_, mut c) in children {
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let _ = c.wait();
    }
    let (b50, _, bmax) = summary(baseline);
    let (f50, _, fmax) = summary(failovers);
    println!(
        "failover over {KILLS} SIGKILLs (lease_ttl {TTL:?}, renew {:?}): p50 {f50:.2?}, max \
         {fmax:.2?} (goal <= 2 x lease_ttl = {:?}); no-failure delivery p50 {b50:.2?}, max {bmax:.2?}",
        TTL / 4,
        TTL * 2
    );
}
