//! graphile_worker (crates.io) 0.14.1 under the same measurements as our queue: enqueue N no-op
//! jobs in batches of 1,000, start the worker, time until the last one completed; then the
//! enqueue→start latency of single jobs on an idle worker. Its fastest documented setup: local
//! queue 500, completion batch delay 0, concurrency 24. Prints one JSON object.
//! Env: DATABASE_URL, JOBS, LATENCY_JOBS. Uses the schema `graphile_worker_rs` (the bench drops it
//! before each run), apart from the npm package's `graphile_worker`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use graphile_worker::{
    IntoTaskHandlerResult, JobSpec, LocalQueueConfig, RawJobSpec, TaskHandler, WorkerContext,
    WorkerOptions,
};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug)]
struct Completed(Arc<AtomicU64>);

#[derive(Clone, Debug)]
struct Starts(Arc<Mutex<HashMap<i64, Instant>>>);

#[derive(Clone, Deserialize, Serialize)]
struct Noop {
    #[serde(default)]
    i: Option<i64>,
}

impl TaskHandler for Noop {
    const IDENTIFIER: &'static str = "noop";

    async fn run(self, ctx: WorkerContext) -> impl IntoTaskHandlerResult {
        if let Some(i) = self.i
            && let Some(s) = ctx.get_ext::<Starts>()
        {
            s.0.lock().unwrap().insert(i, Instant::now());
        }
        if let Some(c) = ctx.get_ext::<Completed>() {
            c.0.fetch_add(1, Ordering::Relaxed);
        }
        Ok::<(), String>(())
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn spec(payload: serde_json::Value) -> RawJobSpec {
    RawJobSpec {
        identifier: "noop".into(),
        payload,
        spec: JobSpec::default(),
    }
}

#[tokio::main]
async fn main() {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let n = env("JOBS", 50_000);
    let probes = env("LATENCY_JOBS", 200);
    let completed = Arc::new(AtomicU64::new(0));
    let starts = Arc::new(Mutex::new(HashMap::new()));
    let worker = WorkerOptions::default()
        .database_url(&url)
        .max_pg_conn(10)
        .schema("graphile_worker_rs")
        .concurrency(24)
        .local_queue(LocalQueueConfig::default().with_size(500))
        .complete_job_batch_delay(Duration::ZERO)
        .add_extension(Completed(completed.clone()))
        .add_extension(Starts(starts.clone()))
        .define_job::<Noop>()
        .init()
        .await
        .expect("graphile_worker init");
    let worker = Arc::new(worker);
    let utils = worker.create_utils();

    let t = Instant::now();
    let mut left = n;
    while left > 0 {
        let k = left.min(1000);
        let jobs: Vec<RawJobSpec> = (0..k).map(|_| spec(serde_json::json!({}))).collect();
        utils.add_raw_jobs(&jobs).await.expect("add_raw_jobs");
        left -= k;
    }
    let enqueue_per_sec = n as f64 / t.elapsed().as_secs_f64();

    let started = Instant::now();
    let runner = worker.clone();
    let handle = tokio::spawn(async move { runner.run().await });
    while completed.load(Ordering::Relaxed) < n as u64 {
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let drain_per_sec = n as f64 / started.elapsed().as_secs_f64();

    let mut lat = Vec::with_capacity(probes);
    for i in 0..probes as i64 {
        let t = Instant::now();
        utils
            .add_raw_jobs(&[spec(serde_json::json!({ "i": i }))])
            .await
            .expect("add probe");
        loop {
            if let Some(at) = starts.lock().unwrap().get(&i).copied() {
                lat.push((at - t).as_secs_f64() * 1000.0);
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((p / 100.0) * lat.len() as f64) as usize % lat.len().max(1)];
    println!(
        "{}",
        serde_json::json!({
            "jobs": n,
            "enqueue_per_sec": enqueue_per_sec,
            "drain_per_sec": drain_per_sec,
            "latency_p50_ms": pct(50.0),
            "latency_p99_ms": pct(99.0),
        })
    );
    worker.request_shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(5), handle).await;
    std::process::exit(0);
}
