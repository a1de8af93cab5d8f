//! `cargo xtask fuzz [--seconds N] [TARGET...]`: runs the cargo-fuzz targets in `fuzz/`
//! (libFuzzer), each for N seconds (default 60); fails on the first crash and prints the
//! artifact that reproduces it. Installs cargo-fuzz when it is missing. The machine's stable
//! toolchain runs cargo-fuzz's nightly flags through `RUSTC_BOOTSTRAP=1`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

pub const TARGETS: [&str; 6] = [
    "config",
    "condition",
    "template",
    "debezium",
    "change_row",
    "pgoutput",
];

pub fn run(args: &[String]) -> Result<()> {
    let mut seconds = 60u64;
    let mut targets = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                let value = args.next().context("--seconds needs a number")?;
                seconds = value
                    .parse()
                    .with_context(|| format!("--seconds `{value}` is not a whole number"))?;
            }
            t if TARGETS.contains(&t) => targets.push(t.to_owned()),
            other => bail!(
                "unknown fuzz argument `{other}`; targets are {}",
                TARGETS.join(", ")
            ),
        }
    }
    if targets.is_empty() {
        targets = TARGETS.iter().map(|t| (*t).to_owned()).collect();
    }
    smoke(&targets, seconds)
}

/// Runs `targets` for `seconds` each.
pub fn smoke(targets: &[String], seconds: u64) -> Result<()> {
    ensure_cargo_fuzz()?;
    let root = crate::workspace_root();
    for target in targets {
        let corpus = root.join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("cannot create {}", corpus.display()))?;
        println!("xtask: fuzzing `{target}` for {seconds} s");
        let status = fuzz_command()
            .args(["run", "-O", target])
            .arg(&corpus)
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-rss_limit_mb=4096",
            ])
            .current_dir(&root)
            .status()
            .context("cannot start cargo fuzz")?;
        if !status.success() {
            let artifacts = root.join("fuzz/artifacts").join(target);
            bail!(
                "fuzz target `{target}` crashed ({status}); reproducer(s) in {}: {}",
                artifacts.display(),
                newest(&artifacts)
                    .map_or_else(|| "none written".into(), |p| p.display().to_string())
            );
        }
    }
    Ok(())
}

fn fuzz_command() -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("fuzz").env("RUSTC_BOOTSTRAP", "1");
    if std::env::var_os("CARGO_TARGET_DIR").is_none() {
        // Sanitizer-instrumented builds must not share the workspace's target dir.
        cmd.env(
            "CARGO_TARGET_DIR",
            crate::workspace_root().join("target/fuzz"),
        );
    }
    cmd
}

fn ensure_cargo_fuzz() -> Result<()> {
    let present = fuzz_command()
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        println!("xtask: installing cargo-fuzz");
        crate::cargo(&["install", "cargo-fuzz", "--locked"])?;
    }
    Ok(())
}

/// The most recently written file of `dir`.
fn newest(dir: &std::path::Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()
        .map(|(_, p)| p)
}
