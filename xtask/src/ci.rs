//! `cargo xtask ci`: formatting, lints with warnings denied, then every test.

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
    crate::test::run(&[])
}
