//! `observers checkpoint show|set`: where each listener is, and moving it by hand.

use clap::Subcommand;
use observers_core::Cursor;
use observers_core::stores::checkpoint::CheckpointStore;
use observers_postgres::PostgresCheckpointStore;

use super::db::DbArgs;
use crate::output::{self, Format};
use crate::{CliResult, Exit};

#[derive(Debug, Subcommand)]
pub enum CheckpointCommand {
    /// Show every listener's cursor (or one).
    Show {
        #[arg(long)]
        listener: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Move a listener's cursor (recorded in observer_checkpoints_history).
    Set {
        #[arg(long, default_value = "default")]
        listener: String,
        /// A change-log id, as shown by `checkpoint show`.
        #[arg(long, conflicts_with_all = ["latest", "start"])]
        cursor: Option<Cursor>,
        /// Skip everything in the change log now (waits for open transactions writing it to end).
        #[arg(long)]
        latest: bool,
        /// Re-deliver everything still in the change log.
        #[arg(long)]
        start: bool,
        #[arg(long, default_value = "set by operator")]
        reason: String,
    },
}

pub async fn run(cmd: CheckpointCommand, db: &DbArgs) -> CliResult {
    let pool = db.migrated_pool().await?;
    let store = PostgresCheckpointStore::new(pool.clone());
    match cmd {
        CheckpointCommand::Show { listener, format } => {
            let mut all = store.list().await?;
            if let Some(l) = &listener {
                all.retain(|c| &c.listener_id == l);
            }
            match format {
                Format::Json => output::json(&all)?,
                Format::Text => {
                    if all.is_empty() {
                        println!(
                            "no checkpoints yet (a listener writes one after its first batch)"
                        );
                    }
                    for c in &all {
                        println!(
                            "{:<20} cursor {:<20} events {:<10} updated {}",
                            c.listener_id,
                            c.cursor.to_string(),
                            c.events_processed,
                            c.updated_at.to_rfc3339()
                        );
                    }
                }
            }
        }
        CheckpointCommand::Set {
            listener,
            cursor,
            latest,
            start,
            reason,
        } => {
            let target = match (cursor, latest, start) {
                (Some(c), _, _) => c,
                (None, true, _) => latest_cursor(&pool).await?,
                (None, _, true) => Cursor::START,
                (None, false, false) => {
                    return Err(Exit::usage(anyhow::anyhow!(
                        "give --cursor ID, --latest or --start"
                    )));
                }
            };
            // A refused move (the position of a WAL stream consumer) is a bad request.
            let old = store
                .set(&listener, target, &reason)
                .await
                .map_err(|e| match e.code() {
                    "OBS-PG-INVALID" => Exit::usage(e),
                    _ => e.into(),
                })?;
            println!(
                "{listener}: {} -> {target}",
                old.map_or_else(|| "(none)".to_owned(), |c| c.to_string())
            );
        }
    }
    Ok(())
}

async fn latest_cursor(pool: &observers_postgres::PgPool) -> CliResult<Cursor> {
    // Every id drawn so far, once final: rows of transactions still open sit below the largest id,
    // so this waits for those transactions to end (their rows are skipped too).
    let horizon = observers_postgres::source::settled_horizon(pool, |open| {
        eprintln!(
            "waiting for {open} open transaction(s) writing the change log to end \
             (observer_cutoff_lag_seconds shows how long they have been open)"
        );
    })
    .await?;
    Ok(Cursor::new(horizon))
}
