//! `cargo xtask bench`: the criterion benches of core (each next to an in-run baseline), then
//! the PostgreSQL pipeline benchmark (drain rate against pgbench's writer rate, commit-to-
//! webhook latency, checkpoint saves against a raw UPSERT, the capture trigger's cost).
//! Figures are recorded in docs/benchmarks.md. `--redis` runs only the Redis store benchmark.

use anyhow::Result;

use crate::services;

pub fn run(args: &[String]) -> Result<()> {
    if args.iter().any(|a| a == "--redis") {
        return redis();
    }
    let database_url = services::postgres()?;
    let only_pipeline = args.iter().any(|a| a == "--pipeline");
    if !only_pipeline {
        let mut cmd = vec!["bench", "-p", "observers-benches"];
        cmd.extend(
            args.iter()
                .map(String::as_str)
                .filter(|a| *a != "--pipeline"),
        );
        crate::cargo(&cmd)?;
    }
    let mut cmd =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args([
        "run",
        "--release",
        "--quiet",
        "-p",
        "observers-cli",
        "--example",
        "pipeline_bench",
    ])
    .env("DATABASE_URL", database_url);
    crate::run(&mut cmd)
}

/// `--redis`: the Redis store benchmark (it starts its own redis-server; needs redis-server and
/// redis-benchmark on PATH).
fn redis() -> Result<()> {
    let mut cmd =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args([
        "run",
        "--release",
        "--quiet",
        "-p",
        "observers-redis",
        "--example",
        "redis_bench",
    ]);
    crate::run(&mut cmd)
}
