//! `cargo xtask bench --redis`: Redis throughput of the stores, each next to a baseline measured
//! in the same run against the same private redis-server:
//!
//! - cache ops/s (SET then GET, 64-byte values) through `CacheBackend` on one shared
//!   `ConnectionManager`, against `redis-benchmark -t set,get` with as many clients;
//! - the same through a deadpool-redis pool (the connection choice of docs/redis.md);
//! - dedup claims/s (claim + complete) on Redis, through the fallback wrapper with Redis up
//!   (the wrapper's cost), and on the fallback with Redis down.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use observers_core::clock::system_clock;
use observers_core::stores::cache::CacheBackend;
use observers_core::stores::dedup::{DedupStore, MemoryDedupStore};
use observers_core::stores::fallback::{
    FallbackDedupStore, FallbackMode, Resilience, ResilienceConfig,
};
use observers_core::telemetry::NoopTelemetry;
use observers_redis::{RedisCacheBackend, RedisDedupStore, connect, connect_lazy};

const CLIENTS: usize = 50;
/// Operations per figure; `REDIS_BENCH_OPS` overrides.
fn ops() -> usize {
    std::env::var("REDIS_BENCH_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000)
}
const VALUE: usize = 64;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn redis_benchmark(port: u16) -> (f64, f64) {
    let out = Command::new("redis-benchmark")
        .args([
            "-p",
            &port.to_string(),
            "-t",
            "set,get",
            "-n",
            &ops().to_string(),
            "-c",
            &CLIENTS.to_string(),
            "-d",
            &VALUE.to_string(),
            "--csv",
        ])
        .output()
        .expect("redis-benchmark must be installed");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(&format!("\"{name}\"")))
            .and_then(|l| l.split(',').nth(1))
            .map_or_else(
                || panic!("no {name} line in redis-benchmark output:\n{text}"),
                |v| v.trim_matches('"').parse().unwrap(),
            )
    };
    (rps("SET"), rps("GET"))
}

/// `ops()` operations split over `CLIENTS` tasks; returns ops/s.
async fn drive<F, Fut>(op: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let n = ops();
    let started = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let op = op.clone();
            tokio::spawn(async move {
                for i in (c..n).step_by(CLIENTS) {
                    op(i).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    #[allow(clippy::cast_precision_loss)]
    let rate = n as f64 / started.elapsed().as_secs_f64();
    rate
}

async fn cache_rates(cache: Arc<dyn CacheBackend>) -> (f64, f64) {
    let c = cache.clone();
    let set = drive(move |i| {
        let c = c.clone();
        async move {
            c.set(
                &format!("k{}", i % 10_000),
                vec![b'x'; VALUE],
                Duration::from_secs(600),
            )
            .await
            .unwrap();
        }
    })
    .await;
    let c = cache.clone();
    let get = drive(move |i| {
        let c = c.clone();
        async move {
            assert!(c.get(&format!("k{}", i % 10_000)).await.unwrap().is_some());
        }
    })
    .await;
    (set, get)
}

async fn pooled_rates(pool: deadpool_redis::Pool) -> (f64, f64) {
    let p = pool.clone();
    let set = drive(move |i| {
        let p = p.clone();
        async move {
            let mut conn = p.get().await.unwrap();
            redis::cmd("SET")
                .arg(format!("observers:cache:k{}", i % 10_000))
                .arg(vec![b'x'; VALUE])
                .arg("PX")
                .arg(600_000)
                .query_async::<()>(&mut *conn)
                .await
                .unwrap();
        }
    })
    .await;
    let p = pool.clone();
    let get = drive(move |i| {
        let p = p.clone();
        async move {
            let mut conn = p.get().await.unwrap();
            let v: Option<Vec<u8>> = redis::cmd("GET")
                .arg(format!("observers:cache:k{}", i % 10_000))
                .query_async(&mut *conn)
                .await
                .unwrap();
            assert!(v.is_some());
        }
    })
    .await;
    (set, get)
}

async fn claim_rate(store: Arc<dyn DedupStore>, tag: &str) -> f64 {
    let tag = tag.to_owned();
    drive(move |i| {
        let s = store.clone();
        let key = format!("{tag}:{i}");
        async move {
            s.claim(&key, "bench", Duration::from_secs(600))
                .await
                .unwrap();
            s.complete(&key, Duration::from_secs(600)).await.unwrap();
        }
    })
    .await
}

fn wrapped(
    primary: Arc<dyn DedupStore>,
    mode: FallbackMode,
    enforce_timeout: bool,
) -> Arc<dyn DedupStore> {
    let config = ResilienceConfig {
        mode,
        enforce_timeout,
        max_replay: ops() * 2,
        ..ResilienceConfig::default()
    };
    let r = Resilience::new("redis", config, Arc::new(NoopTelemetry));
    Arc::new(FallbackDedupStore::new(
        r,
        primary,
        Arc::new(MemoryDedupStore::new(ops() * 2, system_clock())),
    ))
}

#[tokio::main]
async fn main() {
    let port = free_port();
    let _server = Server(
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed"),
    );
    let url = format!("redis://127.0.0.1:{port}");
    let conn = loop {
        if let Ok(c) = connect(&url).await {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let n = ops();
    println!(
        "Redis benchmark: {CLIENTS} concurrent clients, {n} ops per figure, {VALUE}-byte values, private redis-server on 127.0.0.1:{port}"
    );

    let (bench_set, bench_get) = redis_benchmark(port);
    println!(
        "redis-benchmark (baseline)                  SET {bench_set:>9.0}/s   GET {bench_get:>9.0}/s"
    );

    let cache: Arc<dyn CacheBackend> = Arc::new(RedisCacheBackend::new(conn.clone()));
    let (set, get) = cache_rates(cache).await;
    println!(
        "CacheBackend, one ConnectionManager         SET {set:>9.0}/s   GET {get:>9.0}/s   ({:.2}x / {:.2}x of redis-benchmark)",
        set / bench_set,
        get / bench_get
    );

    for size in [8, CLIENTS] {
        let pool = deadpool_redis::Config::from_url(&url)
            .builder()
            .unwrap()
            .max_size(size)
            .runtime(deadpool_redis::Runtime::Tokio1)
            .build()
            .unwrap();
        let (pset, pget) = pooled_rates(pool).await;
        println!(
            "deadpool-redis, pool of {size:<3}                 SET {pset:>9.0}/s   GET {pget:>9.0}/s   ({:.2}x / {:.2}x of redis-benchmark)",
            pset / bench_set,
            pget / bench_get
        );
    }

    let bare: Arc<dyn DedupStore> =
        Arc::new(RedisDedupStore::new(conn.clone()).with_prefix("bench:dedup:"));
    let through_wrapper = wrapped(bare.clone(), FallbackMode::CircuitBreaker, true);
    let untimed_wrapper = wrapped(bare.clone(), FallbackMode::CircuitBreaker, false);
    // Alternate rounds and keep each one's best, so load from elsewhere hits all alike.
    let (mut direct, mut through, mut untimed) = (0.0_f64, 0.0_f64, 0.0_f64);
    for round in 0..3 {
        direct = direct.max(claim_rate(bare.clone(), &format!("direct{round}")).await);
        through =
            through.max(claim_rate(through_wrapper.clone(), &format!("wrapped{round}")).await);
        untimed =
            untimed.max(claim_rate(untimed_wrapper.clone(), &format!("untimed{round}")).await);
    }
    println!("dedup claim+complete, RedisDedupStore       {direct:>9.0}/s   (best of 3)");
    println!(
        "  through the fallback wrapper, Redis up    {through:>9.0}/s   (best of 3; wrapper cost {:+.1}%)",
        (direct - through) / direct * 100.0
    );
    println!(
        "  same, client-side timeouts only           {untimed:>9.0}/s   (best of 3; wrapper cost {:+.1}%)",
        (direct - untimed) / direct * 100.0
    );
    let dead = connect_lazy(
        &format!("redis://127.0.0.1:{}", free_port()),
        Duration::from_millis(200),
    )
    .unwrap();
    let down: Arc<dyn DedupStore> = Arc::new(RedisDedupStore::new(dead));
    let on_fallback = claim_rate(wrapped(down, FallbackMode::CircuitBreaker, true), "down").await;
    println!(
        "  on the fallback, Redis down (breaker open) {on_fallback:>8.0}/s   ({:.2}x of Redis up)",
        on_fallback / direct
    );
}
