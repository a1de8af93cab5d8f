//! `observers capture enable|disable|list`: which tables write to the change log.

use clap::Subcommand;
use observers_postgres::capture::{self, CaptureSpec};

use super::db::DbArgs;
use crate::output::{self, Format};
use crate::{CliResult, Exit};

#[derive(Debug, Subcommand)]
pub enum CaptureCommand {
    /// Install the capture trigger on a table.
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
    },
    /// Remove the capture trigger from a table.
    Disable {
        #[arg(long)]
        table: String,
    },
    /// List captured tables.
    List {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

pub async fn run(cmd: CaptureCommand, db: &DbArgs) -> CliResult {
    let pool = db.migrated_pool().await?;
    match cmd {
        CaptureCommand::Enable {
            table,
            entity,
            id_column,
            tenant_column,
        } => {
            let spec = CaptureSpec {
                table,
                entity,
                id_column,
                tenant_column,
            };
            let info = capture::enable(&pool, &spec).await.map_err(|e| match e {
                observers_postgres::PgError::Invalid(_) => Exit::usage(e),
                other => Exit::from(other),
            })?;
            println!(
                "capturing {}.{} as entity {} (id column {}{})",
                info.schema,
                info.table,
                info.entity_type,
                info.id_column,
                info.tenant_column
                    .as_deref()
                    .map(|t| format!(", tenant column {t}"))
                    .unwrap_or_default()
            );
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
                            "{}.{:<24} entity {:<16} id {:<10} tenant {:<10} {}",
                            c.schema,
                            c.table,
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
