//! `cargo xtask bench`: the criterion benches of core (each next to an in-run baseline), then
//! the PostgreSQL pipeline benchmark (drain rate against pgbench's writer rate, commit-to-
//! webhook latency, checkpoint saves against a raw UPSERT, the capture trigger's cost).
//! Figures are recorded in docs/benchmarks.md.

use anyhow::Result;

use crate::services;

pub fn run(args: &[String]) -> Result<()> {
    let database_url = services::postgres()?;
    if args.iter().any(|a| a == "--ha") {
        return ha(&database_url);
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

/// `cargo xtask bench --ha`: failover time over 20 SIGKILLs and lease acquisition latency
/// (observers-cli's `ha_bench` example, which runs the release `observers` binary).
fn ha(database_url: &str) -> Result<()> {
    crate::cargo(&[
        "build",
        "--release",
        "--quiet",
        "-p",
        "observers-cli",
        "--bin",
        "observers",
    ])?;
    let mut cmd =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args([
        "run",
        "--release",
        "--quiet",
        "-p",
        "observers-cli",
        "--example",
        "ha_bench",
    ])
    .env("DATABASE_URL", database_url);
    crate::run(&mut cmd)
}
