//! Command-line shape (clap) and dispatch to one module per command.

mod debug_event;
mod validate;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::CliResult;
use crate::output::Format;

#[derive(Debug, Parser)]
#[command(
    name = "observers",
    version,
    about = "React to PostgreSQL row changes: webhooks, email, Slack and more, with no event lost."
)]
pub struct Cli {
    /// More logging (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a config file and print what it declares (exit 2 when invalid).
    ValidateConfig {
        /// The config file (or OBSERVERS_CONFIG).
        #[arg(env = "OBSERVERS_CONFIG")]
        file: PathBuf,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Dry run: show, per observer, whether an event matches and why.
    DebugEvent {
        #[arg(long, env = "OBSERVERS_CONFIG")]
        config: PathBuf,
        /// A JSON event file, or `-` for standard input.
        #[arg(long)]
        event: String,
        /// Also run the actions of the matching observers.
        #[arg(long)]
        execute: bool,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

pub async fn dispatch(cli: Cli) -> CliResult {
    match cli.command {
        Command::ValidateConfig { file, format } => validate::run(&file, format),
        Command::DebugEvent {
            config,
            event,
            execute,
            format,
        } => debug_event::run(&config, &event, execute, format).await,
    }
}

/// Loads and validates a config file; problems are usage errors (exit 2).
pub fn load_config(path: &std::path::Path) -> CliResult<observers_core::config::Config> {
    observers_core::config::load_file(path).map_err(crate::Exit::usage)
}
