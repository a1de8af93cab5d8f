//! `cargo xtask test`: every test of the workspace; `cargo xtask test-integration`: only the
//! integration suites (each crate's `tests/it`), the ones that talk to PostgreSQL, Redis and the
//! test peers. Either way the services are located or started first (README.md, "Run the
//! tests").

use anyhow::Result;

use crate::services;

/// Which tests to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Everything,
    Integration,
}

pub fn run(scope: Scope, args: &[String]) -> Result<()> {
    // Held until the tests are done: a container started here is removed when they drop.
    let postgres = services::postgres()?;
    let redis = services::redis()?;
    services::python_peers()?;
    services::promtool()?;
    services::browser_peers()?;
    // The WAL source's tests need `wal_level = logical`, which the shared server may not run: a
    // private cluster made with the machine's initdb, removed when the tests are done. It also
    // allows two-phase commit, for the horizon's test with a prepared transaction.
    let logical = match std::env::var("OBSERVERS_WAL_DATABASE_URL") {
        Ok(_) => None,
        Err(_) => services::PrivatePostgres::start(&[
            "wal_level=logical",
            "max_wal_senders=10",
            "max_prepared_transactions=8",
        ]),
    };
    let wal_url = std::env::var("OBSERVERS_WAL_DATABASE_URL")
        .ok()
        .or_else(|| logical.as_ref().map(|pg| pg.url.clone()));
    if wal_url.is_none() {
        eprintln!(
            "xtask: no PostgreSQL with wal_level = logical (no initdb, and \
             OBSERVERS_WAL_DATABASE_URL is not set): the WAL source suite is SKIPPED"
        );
    }
    if std::env::var_os("ELASTICSEARCH_URL").is_none() {
        eprintln!(
            "xtask: ELASTICSEARCH_URL is not set: the live Elasticsearch suite \
             (observers-search es::live) is SKIPPED; CI runs it against a service container"
        );
    }
    let mut cmd =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["test", "--workspace"]);
    match scope {
        Scope::Everything => cmd.arg("--all-targets"),
        Scope::Integration => cmd.args(["--test", "it"]),
    };
    cmd.args(args)
        .env("DATABASE_URL", &postgres.url)
        .env("REDIS_URL", &redis.url)
        .env("OBSERVERS_WAL_DATABASE_URL", wal_url.unwrap_or_default())
        .env("CI", std::env::var("CI").unwrap_or_else(|_| "true".into()));
    crate::run(&mut cmd)
}
