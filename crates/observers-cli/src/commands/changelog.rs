//! `observers changelog prune`: delete change-log rows every consumer has passed.

use clap::Subcommand;

use super::db::DbArgs;
use crate::CliResult;
use crate::output::{self, Format};
use crate::progress::Progress;

#[derive(Debug, Subcommand)]
pub enum ChangelogCommand {
    /// Delete rows below every listener's cursor.
    Prune {
        /// Only rows older than this (e.g. `7d`, `12h`).
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<std::time::Duration>,
        /// Rows deleted per statement.
        #[arg(long, default_value_t = 10_000)]
        batch: i64,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

pub async fn run(cmd: ChangelogCommand, db: &DbArgs) -> CliResult {
    let pool = db.migrated_pool().await?;
    match cmd {
        ChangelogCommand::Prune {
            older_than,
            batch,
            format,
        } => {
            let mut progress = Progress::new("changelog prune", "rows", None);
            let report =
                observers_postgres::changelog::prune_reporting(&pool, older_than, batch, |n| {
                    progress.add(n);
                })
                .await?;
            progress.finish();
            match format {
                Format::Json => output::json(&report)?,
                Format::Text => match report.cutoff {
                    Some(c) => println!(
                        "deleted {} rows at or below {c} (the slowest of {} consumers)",
                        report.deleted, report.consumers
                    ),
                    None => println!("no listener has a checkpoint yet; nothing deleted"),
                },
            }
        }
    }
    Ok(())
}
