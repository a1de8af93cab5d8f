//! `observers dlq list|show|retry|purge`: inspect and replay failed actions.

use std::time::Duration;

use clap::{Args, Subcommand};
use observers_core::condition::{Condition, ConditionContext};
use observers_core::stores::dlq::{DeadLetterQueue, DlqFilter, DlqItem, DlqStatus};
use observers_core::telemetry::NoopTelemetry;
use observers_postgres::PostgresDeadLetterQueue;
use serde_json::{Value, json};

use super::db::DbArgs;
use super::engine;
use crate::output::{self, Format};
use crate::progress::Progress;
use crate::{CliResult, Exit};

#[derive(Debug, Clone, Args)]
pub struct Selection {
    /// Only this item (repeatable).
    #[arg(long = "id")]
    ids: Vec<i64>,
    /// Only items of this observer.
    #[arg(long)]
    observer: Option<String>,
    /// Only items for this entity type (e.g. `Order`).
    #[arg(long)]
    entity_type: Option<String>,
    /// Only items of this action type (webhook, email, ...; `source` for undecodable rows).
    #[arg(long)]
    action_type: Option<String>,
    /// pending or resolved.
    #[arg(long, value_parser = parse_status)]
    status: Option<DlqStatus>,
    /// Only items older than this (e.g. `1h`, `7d`).
    #[arg(long, value_parser = humantime::parse_duration)]
    older_than: Option<Duration>,
    /// A CEL expression over the item: id, observer, action_type, action_index, error_code,
    /// error, attempts, status, retry_count, entity_type, entity_id, event_id, event_type,
    /// tenant_id, e.g. `error_code == 'OBS-HTTP-5XX' && attempts >= 3`.
    #[arg(long)]
    filter: Option<String>,
}

fn parse_status(s: &str) -> Result<DlqStatus, String> {
    match s {
        "pending" => Ok(DlqStatus::Pending),
        "resolved" => Ok(DlqStatus::Resolved),
        other => Err(format!("unknown status `{other}`; use pending or resolved")),
    }
}

impl Selection {
    fn is_empty(&self) -> bool {
        self.ids.is_empty()
            && self.observer.is_none()
            && self.entity_type.is_none()
            && self.action_type.is_none()
            && self.status.is_none()
            && self.older_than.is_none()
            && self.filter.is_none()
    }

    fn store_filter(&self, limit: Option<usize>) -> CliResult<DlqFilter> {
        let older_than = match self.older_than {
            Some(d) => Some(
                chrono::Utc::now()
                    - chrono::Duration::from_std(d)
                        .map_err(|e| Exit::usage(anyhow::anyhow!("--older-than: {e}")))?,
            ),
            None => None,
        };
        Ok(DlqFilter {
            observer: self.observer.clone(),
            entity_type: self.entity_type.clone(),
            action_type: self.action_type.clone(),
            status: self.status,
            older_than,
            ids: (!self.ids.is_empty()).then(|| self.ids.clone()),
            // A CEL filter applies after the query, so the limit must too.
            limit: if self.filter.is_some() { None } else { limit },
        })
    }

    /// Items matching every criterion, oldest first.
    async fn select(
        &self,
        dlq: &dyn DeadLetterQueue,
        limit: Option<usize>,
    ) -> CliResult<Vec<DlqItem>> {
        let items = dlq.list(&self.store_filter(limit)?).await?;
        let Some(expr) = &self.filter else {
            return Ok(items);
        };
        let condition =
            Condition::compile(expr).map_err(|e| Exit::usage(anyhow::anyhow!("--filter: {e}")))?;
        let mut out = Vec::new();
        for item in items {
            let Value::Object(fields) = item_fields(&item) else {
                continue;
            };
            match condition.evaluate(&ConditionContext::from_fields(&fields)) {
                Ok(true) => out.push(item),
                Ok(false) => {}
                Err(e) => {
                    return Err(Exit::usage(anyhow::anyhow!(
                        "--filter on item {}: {e}",
                        item.id
                    )));
                }
            }
            if limit.is_some_and(|l| out.len() >= l) {
                break;
            }
        }
        Ok(out)
    }
}

fn item_fields(item: &DlqItem) -> Value {
    let e = &item.entry;
    json!({
        "id": item.id, "observer": e.observer, "action_type": e.action_type, "action_index": e.action_index,
        "error_code": e.error_code, "error": e.error, "attempts": e.attempts, "status": item.status.as_str(),
        "retry_count": item.retry_count, "entity_type": e.event.entity_type, "entity_id": e.event.entity_id,
        "event_id": e.event.id, "event_type": e.event.kind.as_str(), "tenant_id": e.event.tenant_id,
    })
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead-lettered actions, oldest first.
    List {
        #[command(flatten)]
        select: Selection,
        /// Most items to show.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show one item in full.
    Show {
        id: i64,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Run the failed actions again (needs --config for the observers); successes are resolved.
    Retry {
        #[command(flatten)]
        select: Selection,
        /// Every pending item.
        #[arg(long)]
        all: bool,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Delete items.
    Purge {
        #[command(flatten)]
        select: Selection,
        #[arg(long)]
        all: bool,
    },
}

pub async fn run(cmd: DlqCommand, db: &DbArgs) -> CliResult {
    let pool = db.migrated_pool().await?;
    let dlq = PostgresDeadLetterQueue::new(pool.clone());
    match cmd {
        DlqCommand::List {
            select,
            limit,
            format,
        } => {
            let items = select.select(&dlq, Some(limit)).await?;
            match format {
                Format::Json => output::json(&items)?,
                Format::Text => print_list(&items),
            }
        }
        DlqCommand::Show { id, format } => {
            let item = dlq
                .get(id)
                .await?
                .ok_or_else(|| Exit::usage(anyhow::anyhow!("no DLQ item {id}")))?;
            match format {
                Format::Json => output::json(&item)?,
                Format::Text => {
                    print_list(std::slice::from_ref(&item));
                    println!(
                        "\nerror:\n  {}\nevent:\n{}",
                        item.entry.error,
                        serde_json::to_string_pretty(&item.entry.event)?
                    );
                }
            }
        }
        DlqCommand::Retry {
            select,
            all,
            format,
        } => retry(select, all, format, db, &pool, &dlq).await?,
        DlqCommand::Purge { select, all } => {
            if !all && select.is_empty() {
                return Err(Exit::usage(anyhow::anyhow!(
                    "say which items: --all, --id N, --status resolved, --older-than D or --filter EXPR"
                )));
            }
            let deleted = if select.filter.is_some() {
                let ids: Vec<i64> = select
                    .select(&dlq, None)
                    .await?
                    .iter()
                    .map(|i| i.id)
                    .collect();
                if ids.is_empty() {
                    0
                } else {
                    dlq.purge(&DlqFilter {
                        ids: Some(ids),
                        ..DlqFilter::default()
                    })
                    .await?
                }
            } else {
                dlq.purge(&select.store_filter(None)?).await?
            };
            println!("purged {deleted} item(s)");
        }
    }
    Ok(())
}

async fn retry(
    mut select: Selection,
    all: bool,
    format: Format,
    db: &DbArgs,
    pool: &observers_postgres::PgPool,
    dlq: &PostgresDeadLetterQueue,
) -> CliResult {
    if !all && select.is_empty() {
        return Err(Exit::usage(anyhow::anyhow!(
            "say which items: --all, --id N, --filter EXPR or another selector"
        )));
    }
    if select.status.is_none() {
        select.status = Some(DlqStatus::Pending);
    }
    let path = db.config.as_ref().ok_or_else(|| {
        Exit::usage(anyhow::anyhow!(
            "dlq retry needs --config FILE (the observers to run the actions with)"
        ))
    })?;
    let config = super::load_config(path)?;
    let executor = engine::executor(&config, pool, std::sync::Arc::new(NoopTelemetry))?;
    let items = select.select(dlq, None).await?;
    let mut results = Vec::new();
    let mut progress = Progress::new("dlq retry", "items", Some(items.len() as u64));
    for item in &items {
        progress.add(1);
        let e = &item.entry;
        let outcome = executor.retry_dead_letter(dlq, item).await?;
        results.push(json!({"id": item.id, "observer": e.observer, "ok": outcome.is_ok(), "error": outcome.err()}));
    }
    progress.finish();
    let failed = results.iter().filter(|r| r["ok"] == false).count();
    match format {
        Format::Json => {
            output::json(&json!({"retried": results.len(), "failed": failed, "items": results}))?;
        }
        Format::Text => {
            for r in &results {
                println!(
                    "{} {} {}",
                    r["id"],
                    if r["ok"] == true {
                        "delivered"
                    } else {
                        "failed"
                    },
                    r["error"].as_str().unwrap_or("")
                );
            }
            println!(
                "retried {}: {} delivered, {failed} still failing",
                results.len(),
                results.len() - failed
            );
        }
    }
    if failed > 0 {
        return Err(Exit::from(anyhow::anyhow!(
            "{failed} item(s) still failing; they stay in the DLQ"
        )));
    }
    Ok(())
}

fn print_list(items: &[DlqItem]) {
    if items.is_empty() {
        println!("the dead-letter queue is empty");
        return;
    }
    println!(
        "{:<6} {:<9} {:<20} {:<8} {:<22} {:<18} {:<8} error",
        "id", "status", "observer", "action", "entity", "code", "tries"
    );
    for i in items {
        let e = &i.entry;
        let error: String = e.error.chars().take(80).collect();
        println!(
            "{:<6} {:<9} {:<20} {:<8} {:<22} {:<18} {:<8} {error}",
            i.id,
            i.status.as_str(),
            if e.observer.is_empty() {
                "(source)"
            } else {
                &e.observer
            },
            format!("{}#{}", e.action_type, e.action_index),
            format!("{}:{}", e.event.entity_type, e.event.entity_id),
            e.error_code,
            format!("{}+{}", e.attempts, i.retry_count),
        );
    }
}
