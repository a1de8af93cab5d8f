//! `observers capture enable|disable|list|drop-slot|backfill`: which tables write to the
//! change log, by a trigger or through the logical-replication relay (`[source] kind`), and
//! their existing rows emitted as `read` changes.

use clap::{Subcommand, ValueEnum};
use observers_core::config::SourceKind;
use observers_postgres::PgPool;
use observers_postgres::backfill::{Backfill, BackfillRequest};
use observers_postgres::capture::{self, CaptureKind, CaptureSpec};
use observers_postgres::wal;
use serde_json::json;

use super::db::DbArgs;
use crate::output::{self, Format};
use crate::progress::Progress;
use crate::{CliResult, Exit};

#[derive(Debug, Subcommand)]
pub enum CaptureCommand {
    /// Capture a table: install the capture trigger (kind `trigger`), or add it to the
    /// publication and create the slot when missing (kind `wal`). The kind, slot and publication
    /// come from the config's [source] unless --kind says otherwise.
    Enable {
        /// Table name, optionally schema-qualified (`orders`, `shop.orders`).
        #[arg(long)]
        table: String,
        /// Entity type the observers match on (e.g. `Order`).
        #[arg(long)]
        entity: String,
        #[arg(long, default_value = "id")]
        id_column: String,
        #[arg(long)]
        tenant_column: Option<String>,
        /// `trigger` or `wal` (default: the config's [source] kind, else trigger).
        #[arg(long, value_enum)]
        kind: Option<KindArg>,
    },
    /// Stop capturing a table (drops its trigger, or takes it out of the publication).
    Disable {
        #[arg(long)]
        table: String,
    },
    /// Drop the WAL source's replication slot (refused while `observers run` streams it). The
    /// WAL it held is freed; changes not yet relayed are lost to the relay, and the next
    /// `capture enable` or `run` creates a new slot from that moment.
    DropSlot {
        /// The slot (default: the config's [source] slot, else `observers`).
        #[arg(long)]
        slot: Option<String>,
    },
    /// List captured tables.
    List {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Emit a captured table's existing rows into the change log as `read` changes.
    ///
    /// Observers receive them only when their `events` list names "read". Rows go in batches
    /// ordered by the primary key, each batch one short transaction that also records how far
    /// the backfill got: running the same command again (same table and --where) continues
    /// after the last batch, with no row emitted twice; --restart starts over. Rows are read
    /// FOR SHARE for the length of a batch, so a row's read change never follows a change it
    /// predates. The table must be captured (capture enable) so that changes made while
    /// the backfill runs are captured too. Progress goes to stderr.
    Backfill {
        /// A captured table, optionally schema-qualified (`orders`, `shop.orders`).
        #[arg(long)]
        table: String,
        /// Only rows matching this SQL condition on the table's columns (run with the
        /// command's database role), e.g. --where "created_at > now() - interval '30 days'".
        #[arg(long = "where", value_name = "SQL")]
        filter: Option<String>,
        /// Rows per batch (one transaction each, 1 to 100000).
        #[arg(long, default_value_t = 1000)]
        batch: i64,
        /// Start over instead of continuing an earlier backfill of the same table and --where.
        #[arg(long)]
        restart: bool,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KindArg {
    Trigger,
    Wal,
}

/// The config's `[source]` (defaults without `--config`).
fn source_config(db: &DbArgs) -> CliResult<observers_core::config::SourceConfig> {
    Ok(match &db.config {
        Some(path) => super::load_config(path)?.source,
        None => observers_core::config::SourceConfig::default(),
    })
}

/// A request PostgreSQL cannot carry out as asked is bad usage (exit 2).
fn usage(e: observers_postgres::PgError) -> Exit {
    match e {
        observers_postgres::PgError::Invalid(_) => Exit::usage(e),
        other => Exit::from(other),
    }
}

/// `capture enable`: the kind from `--kind`, else the config's `[source] kind`.
async fn enable(pool: &PgPool, db: &DbArgs, spec: CaptureSpec, kind: Option<KindArg>) -> CliResult {
    let source = source_config(db)?;
    let kind = match kind {
        Some(KindArg::Wal) => SourceKind::Wal,
        Some(KindArg::Trigger) => SourceKind::Trigger,
        None => source.kind,
    };
    let kind = match kind {
        SourceKind::Trigger => CaptureKind::Trigger,
        SourceKind::Wal => CaptureKind::Wal {
            publication: source.publication.clone(),
            slot: source.slot.clone(),
        },
    };
    let info = capture::enable_as(pool, &spec, &kind)
        .await
        .map_err(usage)?;
    println!(
        "capturing {}.{} as entity {} (id column {}{}){}",
        info.schema,
        info.table,
        info.entity_type,
        info.id_column,
        info.tenant_column
            .as_deref()
            .map(|t| format!(", tenant column {t}"))
            .unwrap_or_default(),
        match &kind {
            CaptureKind::Trigger => " by trigger".to_owned(),
            CaptureKind::Wal { publication, slot } =>
                format!(" through publication {publication} and slot {slot} (kind wal)"),
        }
    );

    Ok(())
}

pub async fn run(cmd: CaptureCommand, db: &DbArgs) -> CliResult {
    let pool = db.migrated_pool().await?;
    match cmd {
        CaptureCommand::Enable {
            table,
            entity,
            id_column,
            tenant_column,
            kind,
        } => {
            let spec = CaptureSpec {
                table,
                entity,
                id_column,
                tenant_column,
            };
            enable(&pool, db, spec, kind).await?;
        }
        CaptureCommand::DropSlot { slot } => {
            let slot = slot.unwrap_or(source_config(db)?.slot);
            wal::validate_name("slot", &slot).map_err(|e| Exit::usage(anyhow::anyhow!(e)))?;
            if wal::slot::drop_slot(&pool, &slot).await.map_err(usage)? {
                println!("dropped replication slot {slot}");
            } else {
                println!("no replication slot {slot}");
            }
        }
        CaptureCommand::Backfill {
            table,
            filter,
            batch,
            restart,
            format,
        } => {
            let request = BackfillRequest {
                table,
                filter,
                batch,
                restart,
            };
            backfill(&pool, &request, format).await?;
        }
        CaptureCommand::Disable { table } => {
            if capture::disable(&pool, &table).await? {
                println!("stopped capturing {table}");
            } else {
                println!("{table} was not captured");
            }
        }
        CaptureCommand::List { format } => {
            let list = capture::list(&pool).await?;
            match format {
                Format::Json => output::json(&list)?,
                Format::Text => {
                    if list.is_empty() {
                        println!(
                            "no captured tables; add one with `observers capture enable --table T --entity E`"
                        );
                    }
                    for c in &list {
                        println!(
                            "{}.{:<24} {:<7} entity {:<16} id {:<10} tenant {:<10} {}",
                            c.schema,
                            c.table,
                            c.kind,
                            c.entity_type,
                            c.id_column,
                            c.tenant_column.as_deref().unwrap_or("-"),
                            if c.is_healthy() { "ok" } else { "DRIFT" }
                        );
                        for d in &c.drift {
                            println!("    - {d}");
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Runs a backfill to its end, with progress on stderr and a summary on stdout.
async fn backfill(pool: &PgPool, request: &BackfillRequest, format: Format) -> CliResult {
    let mut run = Backfill::prepare(pool, request)
        .await
        .map_err(|e| match e {
            observers_postgres::PgError::Invalid(_) => Exit::usage(e),
            other => Exit::from(other),
        })?;
    let already_done = run.state().finished_at.is_some();
    let mut progress = Progress::new("backfill", "rows", Some(run.remaining()));
    let mut emitted = 0u64;
    while let Some(n) = run.next_batch().await? {
        emitted += n;
        progress.add(n);
    }
    if !already_done {
        progress.finish();
    }
    let state = run.state();
    let table = format!("{}.{}", state.table_schema, state.table_name);
    match format {
        Format::Json => output::json(&json!({
            "table": table,
            "entity_type": state.entity_type,
            "filter": state.filter,
            "emitted": emitted,
            "resumed": run.resumed(),
            "already_done": already_done,
            "state": state,
        }))?,
        Format::Text => {
            if already_done {
                println!(
                    "backfill of {table}{} already finished ({} rows); pass --restart to emit the rows again",
                    shown_filter(&state.filter),
                    state.rows_emitted
                );
            } else {
                println!(
                    "backfill of {table}{}: {emitted} rows emitted as `read` changes of entity {} \
                     ({} in all over {} batches{})",
                    shown_filter(&state.filter),
                    state.entity_type,
                    state.rows_emitted,
                    state.batches,
                    if run.resumed() { ", resumed" } else { "" }
                );
            }
        }
    }
    Ok(())
}

fn shown_filter(filter: &str) -> String {
    if filter.is_empty() {
        String::new()
    } else {
        format!(" where {filter}")
    }
}
