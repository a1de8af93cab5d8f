//! `cargo xtask test`: every test of the workspace, with the services it needs located or
//! started first (README.md, "Run the tests").

use anyhow::Result;

use crate::services;

pub fn run(args: &[String]) -> Result<()> {
    let database_url = services::postgres()?;
    let redis_url = services::redis()?;
    services::python_peers()?;
    services::promtool()?;
    let mut cmd =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["test", "--workspace", "--all-targets"])
        .args(args)
        .env("DATABASE_URL", &database_url)
        .env("REDIS_URL", &redis_url)
        .env("CI", std::env::var("CI").unwrap_or_else(|_| "true".into()));
    crate::run(&mut cmd)
}
