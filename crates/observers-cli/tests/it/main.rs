//! Integration tests of the `observers` binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod backfill;
mod brokers;
mod console;
mod docs;
mod e2e;
mod exact;
mod families;
mod ha;
mod hardening;
mod metrics;
mod monitoring;
mod ops;
mod queue;
mod redis_fault;
mod search;
mod security;
mod support;
mod validate;
mod wal;

use std::process::{Command, Output};

pub fn observers(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_observers"))
        .args(args)
        .env_remove("OBSERVERS_CONFIG")
        .output()
        .unwrap()
}

pub fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}
