//! `observers capture enable|disable|list|drop-slot`: which tables write to the change log, by
//! a trigger or through the logical-replication relay (`[source] kind`).

use clap::{Subcommand, ValueEnum};
use observers_core::config::SourceKind;
use observers_postgres::capture::{self, CaptureKind, CaptureSpec};
use observers_postgres::wal;

use super::db::DbArgs;
use crate::output::{self, Format};
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

pub async fn run(cmd: CaptureCommand, db: &DbArgs) -> CliResult {
    let pool = db.migrated_pool().await?;
    let usage = |e: observers_postgres::PgError| match e {
        observers_postgres::PgError::Invalid(_) => Exit::usage(e),
        other => Exit::from(other),
    };
    match cmd {
        CaptureCommand::Enable {
            table,
            entity,
            id_column,
            tenant_column,
            kind,
        } => {
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
            let spec = CaptureSpec {
                table,
                entity,
                id_column,
                tenant_column,
            };
            let info = capture::enable_as(&pool, &spec, &kind)
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
