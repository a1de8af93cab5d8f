//! The `observers` binary: `run` and every ops command. Exit codes: 0 ok, 1 runtime failure,
//! 2 bad usage or bad config.
#![forbid(unsafe_code)]

mod commands;
mod output;
mod progress;

use std::process::ExitCode;

use clap::Parser;

use commands::Cli;

/// An error that carries its exit code.
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub error: anyhow::Error,
}

impl Exit {
    /// Bad usage or bad config: exit 2.
    pub fn usage(error: impl Into<anyhow::Error>) -> Self {
        Self {
            code: 2,
            error: error.into(),
        }
    }
}

impl<E: Into<anyhow::Error>> From<E> for Exit {
    fn from(e: E) -> Self {
        Self {
            code: 1,
            error: e.into(),
        }
    }
}

pub type CliResult<T = ()> = Result<T, Exit>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = matches!(cli.command, commands::Command::Demo { .. });
    output::init_tracing(cli.verbose, quiet);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(commands::dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(exit) => {
            // A URL in an error (a database or Slack URL) keeps its secrets.
            let text = format!("{:#}", exit.error);
            eprintln!("error: {}", observers_core::redact::text(&text));
            ExitCode::from(exit.code)
        }
    }
}
