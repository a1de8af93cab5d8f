//! `cargo xtask ci`: formatting, lints with warnings denied, every test, then a short fuzz
//! smoke of each cargo-fuzz target.

use anyhow::Result;

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
    crate::test::run(&[])?;
    let targets: Vec<String> = crate::fuzz::TARGETS
        .iter()
        .map(|t| (*t).to_owned())
        .collect();
    crate::fuzz::smoke(&targets, 10)
}
