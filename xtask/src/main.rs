//! `cargo xtask`: project automation. One module per subcommand.
#![forbid(unsafe_code)]

mod bench;
mod ci;
mod containers;
mod fuzz;
mod services;
mod test;

use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

fn usage() -> String {
    format!(
        "usage: cargo xtask <command>

commands:
  test               every test of the workspace (unit, integration, doc), against PostgreSQL
                     and Redis: DATABASE_URL / REDIS_URL, else the local servers, else
                     containers started with testcontainers where Docker answers
  test-integration   only the integration suites (each crate's tests/it), which need those services
  ci                 fmt --check, clippy -D warnings, test, then a 10 s fuzz smoke per target
  fuzz               run the cargo-fuzz targets ([--seconds N] per target, default 60; [TARGET...]:
                     config, condition, template, debezium, change_row); fails on a crash
{}  migrate            apply the migrations to DATABASE_URL
  demo               run `observers demo`",
        bench::usage()
    )
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test::run(test::Scope::Everything, &args[1..]),
        Some("test-integration") => test::run(test::Scope::Integration, &args[1..]),
        Some("ci") => ci::run(),
        Some("fuzz") => fuzz::run(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("migrate") => cargo(&["run", "--quiet", "-p", "observers-cli", "--", "migrate"]),
        Some("demo") => cargo(&["run", "--quiet", "-p", "observers-cli", "--", "demo"]),
        Some("-h" | "--help" | "help") | None => {
            println!("{}", usage());
            Ok(())
        }
        Some(other) => Err(anyhow::anyhow!("unknown command `{other}`\n\n{}", usage())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs cargo with `args` from the workspace root; fails on a non-zero exit.
pub fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo).args(args))
}

pub fn run(cmd: &mut Command) -> Result<()> {
    cmd.current_dir(workspace_root());
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

pub fn workspace_root() -> std::path::PathBuf {
    // `cargo run` (the `cargo xtask` alias) says where xtask's manifest is at run time. The path
    // compiled in is a fallback only: a binary built in another checkout that shares the target
    // directory (and is not rebuilt, its sources being no newer) would work on that checkout.
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(
        || env!("CARGO_MANIFEST_DIR").into(),
        std::path::PathBuf::from,
    );
    manifest
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default()
}
