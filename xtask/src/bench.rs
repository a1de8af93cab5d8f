//! `cargo xtask bench`: the criterion benches of core (each next to an in-run baseline), then
//! the PostgreSQL pipeline benchmark (drain rate against pgbench's writer rate, commit-to-
//! webhook latency, checkpoint saves against a raw UPSERT, the capture trigger's cost).
//! A flag runs one area's benchmark alone instead (see `AREAS`). Figures are recorded in
//! docs/benchmarks.md.

use anyhow::Result;

use crate::services;

/// `--flag`, package, example: the benchmarks that run alone, each against its own peer or
/// baseline in the same run.
const AREAS: &[(&str, &str, &str)] = &[
    // the job queue against graphile-worker (npm), the graphile_worker crate and pg-boss (npm)
    // on the same PostgreSQL; the peers install into a cache dir
    ("--queue", "observers-queue", "queue_bench"),
    // the Redis stores against redis-benchmark; it starts its own redis-server (needs
    // redis-server and redis-benchmark on PATH)
    ("--redis", "observers-redis", "redis_bench"),
    // the search backend on 1 million events
    ("--search", "observers-search", "search_bench"),
    // publish rate of the nats and rabbitmq actions against a plain client loop of the same
    // crate, on the local NATS (JetStream) and RabbitMQ
    ("--brokers", "observers-core", "broker_bench"),
    // failover time over 20 SIGKILLs and lease acquisition latency; it runs the release
    // `observers` binary, built first
    ("--ha", "observers-cli", "ha_bench"),
];

pub fn run(args: &[String]) -> Result<()> {
    let database_url = services::postgres()?;
    if let Some((_, package, name)) = AREAS
        .iter()
        .find(|(flag, _, _)| args.iter().any(|a| a == flag))
    {
        if *package == "observers-cli" {
            crate::cargo(&[
                "build",
                "--release",
                "--quiet",
                "-p",
                package,
                "--bin",
                "observers",
                "--example",
                name,
            ])?;
        }
        example(package, name, &database_url)?;
        if *name == "search_bench" {
            // Again on a server sized as in production: the stock one's 128 MB of shared
            // buffers hold a quarter of the million events' table and indexes.
            println!("\nThe same on a private PostgreSQL with shared_buffers = 2GB:");
            if let Some(pg) = services::PrivatePostgres::start(&["shared_buffers=2GB"]) {
                example(package, name, &pg.url)?;
            }
        }
        return Ok(());
    }
    if args.iter().any(|a| a == "--metrics") {
        // Time (criterion, metrics on against off, in alternating runs), then instructions
        // (callgrind), which the machine's load does not blur.
        crate::cargo(&["bench", "-p", "observers-benches", "--bench", "metrics"])?;
        return example("observers-benches", "metrics_instructions", &database_url);
    }
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
    example("observers-cli", "pipeline_bench", &database_url)
}

/// Runs a release-built example with `DATABASE_URL` set.
fn example(package: &str, name: &str, database_url: &str) -> Result<()> {
    let mut cmd =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args([
        "run",
        "--release",
        "--quiet",
        "-p",
        package,
        "--example",
        name,
    ])
    .env("DATABASE_URL", database_url);
    crate::run(&mut cmd)
}
