//! `cargo xtask bench`: criterion benches (ratios are computed inside each bench against a
//! baseline measured in the same run).

use anyhow::Result;

pub fn run(args: &[String]) -> Result<()> {
    let mut cmd = vec!["bench", "-p", "observers-benches"];
    cmd.extend(args.iter().map(String::as_str));
    crate::cargo(&cmd)
}
