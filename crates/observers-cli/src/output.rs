//! The CLI's output layer: the only place that prints, plus logging set-up.

use clap::ValueEnum;
use serde::Serialize;

/// `--format` of every listing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[default]
    Text,
    Json,
}

/// Prints a value as pretty JSON.
pub fn json<T: Serialize>(value: &T) -> crate::CliResult {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Logs go to stderr; stdout stays for command output. `RUST_LOG` overrides.
pub fn init_tracing(verbose: u8, quiet: bool) {
    use std::io::IsTerminal as _;
    let default = match verbose {
        0 if quiet => "warn",
        0 => "warn,observers=info,observers_core=info,observers_postgres=info",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
