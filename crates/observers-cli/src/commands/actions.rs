//! `observers actions`: targets disabled by `410 Gone` (`list`) and re-enabling them
//! (`enable --url URL | --all`). A running `observers run` sees a re-enable at the next event
//! for that URL.

use std::fmt::Write as _;

use clap::Subcommand;
use observers_core::stores::gone::{GoneEndpoint, GoneEndpoints};
use observers_postgres::PostgresGoneEndpoints;

use super::db::DbArgs;
use crate::output::{self, Format};
use crate::{CliResult, Exit};

#[derive(Debug, Subcommand)]
pub enum ActionsCommand {
    /// List the URLs disabled by `410 Gone` (their events go to the DLQ).
    List {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Re-enable delivery to a URL disabled by `410 Gone` (as `list` shows it), or to all.
    Enable {
        #[arg(long, conflicts_with = "all")]
        url: Option<String>,
        #[arg(long)]
        all: bool,
    },
}

pub async fn run(cmd: ActionsCommand, db: &DbArgs) -> CliResult {
    let pool = db.migrated_pool().await?;
    let store = PostgresGoneEndpoints::new(pool);
    match cmd {
        ActionsCommand::List { format } => {
            let all = store.list().await?;
            match format {
                Format::Json => output::json(&all)?,
                Format::Text => print!("{}", render(&all)),
            }
        }
        ActionsCommand::Enable { url, all } => {
            if url.is_none() && !all {
                return Err(Exit::usage(anyhow::anyhow!(
                    "say which: --url URL (as `observers actions list` shows it) or --all"
                )));
            }
            let n = store.enable(url.as_deref()).await?;
            match (&url, n) {
                (Some(u), 0) => {
                    return Err(Exit::usage(anyhow::anyhow!(
                        "`{u}` is not disabled (`observers actions list` shows what is)"
                    )));
                }
                (Some(u), _) => println!("re-enabled {u}"),
                (None, n) => println!("re-enabled {n} endpoint(s)"),
            }
        }
    }
    Ok(())
}

/// One line per disabled target (or a line saying there is none).
pub fn render(all: &[GoneEndpoint]) -> String {
    if all.is_empty() {
        return "no endpoint is disabled\n".into();
    }
    let mut o = String::new();
    for g in all {
        let _ = writeln!(
            o,
            "{}  (observer {} action #{}, since {})",
            g.target,
            g.observer,
            g.action_index,
            g.disabled_at.format("%Y-%m-%d %H:%M:%S UTC")
        );
    }
    o
}
