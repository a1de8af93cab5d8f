//! `cargo xtask bench`: every benchmark, each against a baseline measured in the same run, in the
//! order of `AREAS`; with one or more area flags (`--core`, `--metrics`, `--pipeline`, `--capture`, `--queue`,
//! `--redis`, `--search`, `--brokers`, `--ha`) only those. Other arguments go to the criterion
//! benches (a filter). Figures are recorded in docs/benchmarks.md.

use std::fmt::Write as _;

use anyhow::{Result, bail};

use crate::services;

/// One benchmark area: its flag and what `cargo xtask bench` says it runs.
struct Area {
    flag: &'static str,
    what: &'static str,
    run: fn(&[&str], &str) -> Result<()>,
}

/// Every area, in the order a plain `cargo xtask bench` runs them.
const AREAS: &[Area] = &[
    Area {
        flag: "--core",
        what: "criterion: core's hot paths vs hand-written baselines",
        run: |filter, _| criterion("core", filter),
    },
    Area {
        flag: "--metrics",
        what: "metrics on against off (criterion), then instructions per event (callgrind)",
        run: |filter, db| {
            criterion("metrics", filter)?;
            example("observers-benches", "metrics_instructions", db)
        },
    },
    Area {
        flag: "--pipeline",
        what: "PostgreSQL pipeline: drain vs pgbench writers, latency, saves, trigger cost",
        run: |_, db| example("observers-cli", "pipeline_bench", db),
    },
    Area {
        flag: "--capture",
        what: "capture kinds side by side on a private wal_level = logical PostgreSQL: writer rate \
               (none, minimal trigger, previous, trigger, bare pgoutput, the replication client alone, WAL \
               source and direct delivery), drain, latency; \
               then server instructions per captured insert (callgrind)",
        run: |_, _| {
            let Some(pg) = services::PrivatePostgres::start(&[
                "wal_level=logical",
                "max_wal_senders=10",
                "shared_buffers=1GB",
            ]) else {
                bail!("--capture needs the machine's initdb for a wal_level = logical server");
            };
            example_with(
                "observers-cli",
                "pipeline_bench",
                &pg.url,
                &[("BENCH_CAPTURE", "1")],
            )?;
            capture_instructions(&pg);
            Ok(())
        },
    },
    Area {
        flag: "--queue",
        what: "job queue vs graphile-worker (npm and crate) and pg-boss (needs npm)",
        run: |_, db| example("observers-queue", "queue_bench", db),
    },
    Area {
        flag: "--redis",
        what: "Redis stores vs redis-benchmark, on a redis-server of their own",
        run: |_, db| example("observers-redis", "redis_bench", db),
    },
    Area {
        flag: "--search",
        what: "search on 1M events, then again on a private PostgreSQL (2 GB buffers)",
        run: |_, db| {
            example("observers-search", "search_bench", db)?;
            println!("\nThe same on a private PostgreSQL with shared_buffers = 2GB:");
            if let Some(pg) = services::PrivatePostgres::start(&["shared_buffers=2GB"]) {
                example("observers-search", "search_bench", &pg.url)?;
            }
            Ok(())
        },
    },
    Area {
        flag: "--brokers",
        what: "nats and rabbitmq actions vs plain client loops (local NATS and RabbitMQ)",
        run: |_, db| example("observers-core", "broker_bench", db),
    },
    Area {
        flag: "--ha",
        what: "failover over 20 SIGKILLs and lease acquisition, release binary",
        run: |_, db| {
            crate::cargo(&[
                "build",
                "--release",
                "--quiet",
                "-p",
                "observers-cli",
                "--bin",
                "observers",
                "--example",
                "ha_bench",
            ])?;
            example("observers-cli", "ha_bench", db)
        },
    },
];

/// The lines of `cargo xtask help` that say what `bench` runs.
pub fn usage() -> String {
    let mut out = String::from(
        "  bench              every area below, in this order, each against a baseline of the\n\
         \x20                    same run; with flags, only those areas:\n",
    );
    for a in AREAS {
        let _ = writeln!(out, "                     {:<10} {}", a.flag, a.what);
    }
    out
}

pub fn run(args: &[String]) -> Result<()> {
    let (flags, filter): (Vec<&str>, Vec<&str>) = args
        .iter()
        .map(String::as_str)
        .partition(|a| a.starts_with("--"));
    if let Some(unknown) = flags.iter().find(|f| !AREAS.iter().any(|a| a.flag == **f)) {
        let known: Vec<&str> = AREAS.iter().map(|a| a.flag).collect();
        bail!(
            "unknown bench flag `{unknown}`; the areas are {}",
            known.join(", ")
        );
    }
    let postgres = services::postgres()?;
    for area in AREAS
        .iter()
        .filter(|a| flags.is_empty() || flags.contains(&a.flag))
    {
        println!("\n== cargo xtask bench {}: {}\n", area.flag, area.what);
        (area.run)(&filter, &postgres.url)?;
    }
    Ok(())
}

/// The writer tables `pipeline_bench` leaves in its database, and what each captures with.
const WRITER_TABLES: [(&str, &str); 4] = [
    ("orders_none", "no capture"),
    ("orders_min", "minimal trigger"),
    ("orders_old", "previous trigger"),
    ("orders_trigger", "capture (today)"),
];

/// Server instructions per single-row insert transaction into each writer table: callgrind
/// counts a single-user backend (the private server stopped) running 200 inserts, then 200 and
/// 2,000 more; the difference over 2,000. Repeatable to a fraction of a percent, unlike writer
/// rates on a shared 2-core machine; it counts CPU only (not fsync waits, locks or the client).
fn capture_instructions(pg: &services::PrivatePostgres) {
    if !pg.stop() {
        eprintln!("xtask: the private PostgreSQL did not stop; no instruction counts");
        return;
    }
    let inserts = |table: &str, n: usize| {
        format!("INSERT INTO {table} (total, status) VALUES (random() * 200, 'paid');\n").repeat(n)
    };
    let mut counts = Vec::new();
    for (table, _) in WRITER_TABLES {
        let warm = inserts(table, 200);
        let base = pg.single_user_instructions("observers_bench", &warm);
        let more = pg.single_user_instructions("observers_bench", &(warm + &inserts(table, 2000)));
        let (Some(base), Some(more)) = (base, more) else {
            eprintln!("xtask: valgrind --tool=callgrind did not run; no instruction counts");
            return;
        };
        counts.push(u32::try_from(more.saturating_sub(base) / 2000).unwrap_or(u32::MAX));
    }
    println!(
        "\nserver instructions per single-row insert transaction (callgrind, single-user server)"
    );
    let (none, min) = (counts[0], counts[1]);
    for ((_, what), n) in WRITER_TABLES.iter().zip(&counts) {
        let over = n.saturating_sub(none);
        println!(
            "  {what:<18} {n:>9}  {over:>7} above no capture  {:.2}x the minimal trigger's total",
            f64::from(*n) / f64::from(min)
        );
    }
}

/// One criterion bench of observers-benches, with an optional filter.
fn criterion(bench: &str, filter: &[&str]) -> Result<()> {
    let mut cmd = vec!["bench", "-p", "observers-benches", "--bench", bench];
    if !filter.is_empty() {
        cmd.push("--");
        cmd.extend(filter);
    }
    crate::cargo(&cmd)
}

/// Runs a release-built example with `DATABASE_URL` set.
fn example(package: &str, name: &str, database_url: &str) -> Result<()> {
    example_with(package, name, database_url, &[])
}

/// [`example`] with more environment variables.
fn example_with(package: &str, name: &str, database_url: &str, env: &[(&str, &str)]) -> Result<()> {
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
    .env("DATABASE_URL", database_url)
    .envs(env.iter().copied());
    crate::run(&mut cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_flag_is_refused_naming_every_area() {
        let err = run(&["--pipline".to_owned()]).unwrap_err().to_string();
        assert!(err.contains("`--pipline`"), "{err}");
        for a in AREAS {
            assert!(err.contains(a.flag), "{err}");
            assert!(usage().contains(a.flag));
        }
    }
}
