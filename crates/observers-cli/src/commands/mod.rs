//! Command-line shape (clap) and dispatch to one module per command.

mod actions;
mod capture;
mod changelog;
mod checkpoint;
mod db;
mod debug_entity;
mod debug_event;
mod demo;
mod dlq;
mod engine;
mod ha;
mod jobs;
mod metrics_cmd;
mod migrate;
mod ops;
mod queue;
mod replay;
mod retention;
mod run;
mod search;
mod sections;
mod status;
mod stores;
mod validate;
mod wal;
mod worker;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::output::Format;
use crate::{CliResult, Exit};

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

    #[command(flatten)]
    pub db: db::DbArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the listener: deliver changes to observers until SIGTERM (SIGHUP reloads --config).
    ///
    /// Also serves the ops server (default http://127.0.0.1:9464): /metrics, /health, /ready,
    /// /status and the web console at /ui/ (retry and purge need OBSERVERS_OPS_TOKEN).
    Run,
    /// Apply the database schema.
    Migrate,
    /// Manage which tables are captured into the change log.
    #[command(subcommand)]
    Capture(capture::CaptureCommand),
    /// Show or move listener checkpoints.
    #[command(subcommand)]
    Checkpoint(checkpoint::CheckpointCommand),
    /// Change-log retention.
    #[command(subcommand)]
    Changelog(changelog::ChangelogCommand),
    /// Inspect, retry and purge dead-lettered actions.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// URLs disabled by `410 Gone`: list them, re-enable one.
    #[command(subcommand)]
    Actions(actions::ActionsCommand),
    /// Check a config file and print what it declares (exit 2 when invalid).
    ValidateConfig {
        /// The config file (default: --config / OBSERVERS_CONFIG).
        file: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Dry run: show, per observer, whether an event matches and why. With --entity-type and
    /// --entity-id: that entity's recent changes (change log, audit trail), which observers
    /// matched and why, each action's outcome, its DLQ items and jobs.
    #[command(group(clap::ArgGroup::new("what").required(true).args(["event", "entity_type"])))]
    DebugEvent {
        /// A JSON event file, or `-` for standard input.
        #[arg(long)]
        event: Option<String>,
        /// Also run the actions of the matching observers (with --event).
        #[arg(long, requires = "event")]
        execute: bool,
        /// The stored entity's type (with --entity-id).
        #[arg(long, requires = "entity_id", conflicts_with = "event")]
        entity_type: Option<String>,
        /// The stored entity's id.
        #[arg(long, requires = "entity_type")]
        entity_id: Option<String>,
        /// How many of the entity's most recent changes.
        #[arg(long, default_value_t = 5, requires = "entity_type")]
        last: u32,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// The system's state: listeners, cursors, backlog and lag, the DLQ (from the database) and
    /// the running instance's /status.
    Status(status::StatusArgs),
    /// Scrape a running instance's /metrics and summarise it.
    Metrics(metrics_cmd::MetricsArgs),
    /// Search the audit trail of processed events.
    Search(search::SearchArgs),
    /// The audit trail of processed events: retention.
    #[command(subcommand)]
    Events(search::EventsCommand),

    /// High availability: the status of the HA group of --config.
    #[command(subcommand)]
    Ha(ha::HaCommand),
    /// A guided tour: a demo database, a captured table, a local webhook receiver, deliveries.
    Demo {
        /// Orders to insert.
        #[arg(long, default_value_t = 5)]
        orders: u32,
    },
    /// Re-run changes the listener already processed through the observers of --config
    /// (conditions included), with new idempotency keys `{event_id}:{observer}:{action_index}:replay-{replay_id}`.
    Replay(replay::ReplayArgs),
    /// Inspect, retry and purge queued jobs.
    #[command(subcommand)]
    Jobs(jobs::JobsCommand),
    /// Run job workers alone (no listener) until SIGTERM: for queued actions on other machines.
    Worker {
        /// Jobs run at once (default: [queue] workers).
        #[arg(long)]
        workers: Option<usize>,
    },
}

pub async fn dispatch(cli: Cli) -> CliResult {
    let db = cli.db;
    match cli.command {
        Command::Run => run::run(&required_config(&db)?).await,
        Command::Migrate => migrate::run(&db).await,
        Command::Capture(cmd) => capture::run(cmd, &db).await,
        Command::Checkpoint(cmd) => checkpoint::run(cmd, &db).await,
        Command::Changelog(cmd) => changelog::run(cmd, &db).await,
        Command::Dlq(cmd) => dlq::run(cmd, &db).await,
        Command::Actions(cmd) => actions::run(cmd, &db).await,
        Command::ValidateConfig { file, format } => {
            let file = file.or(db.config).ok_or_else(|| {
                Exit::usage(anyhow::anyhow!(
                    "give the config file: observers validate-config FILE"
                ))
            })?;
            validate::run(&file, format)
        }
        Command::DebugEvent {
            event,
            execute,
            entity_type,
            entity_id,
            last,
            format,
        } => {
            let config = required_config(&db)?;
            match (event, entity_type, entity_id) {
                (Some(event), _, _) => debug_event::run(&config, &event, execute, format).await,
                (None, Some(t), Some(id)) => {
                    debug_entity::run(&config, &t, &id, last, format).await
                }
                _ => Err(Exit::usage(anyhow::anyhow!(
                    "give --event FILE, or --entity-type E with --entity-id ID"
                ))),
            }
        }
        Command::Search(args) => search::search(args, &db).await,
        Command::Events(cmd) => search::events(cmd, &db).await,

        Command::Ha(cmd) => ha::run(cmd, &db).await,
        Command::Demo { orders } => demo::run(db.database_url.clone(), orders).await,
        Command::Status(args) => status::run(args, &db).await,
        Command::Metrics(args) => metrics_cmd::run(args, db.config.as_deref()).await,
        Command::Jobs(cmd) => jobs::run(cmd, &db).await,
        Command::Replay(args) => replay::run(&required_config(&db)?, args).await,
        Command::Worker { workers } => worker::run(&required_config(&db)?, workers).await,
    }
}

fn required_config(db: &db::DbArgs) -> CliResult<PathBuf> {
    db.config.clone().ok_or_else(|| {
        Exit::usage(anyhow::anyhow!(
            "give the config file with --config FILE (or OBSERVERS_CONFIG)"
        ))
    })
}

/// Loads and validates a config file; problems are usage errors (exit 2).
pub fn load_config(path: &std::path::Path) -> CliResult<observers_core::config::Config> {
    observers_core::config::load_file(path).map_err(Exit::usage)
}
