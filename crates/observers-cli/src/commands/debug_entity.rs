//! `observers debug-event --entity-type E --entity-id ID [--last N]`: an entity's recent changes
//! (the change log, and the audit trail when `[search]` is on) and, for each, which observers of
//! --config match and why, and what became of each action: its DLQ items, its jobs, or
//! delivered (processed with neither a DLQ item nor a failure on record).

use std::collections::BTreeMap;
use std::path::Path;

use observers_core::executor::CompiledObserver;
use observers_core::stores::search::{IndexedEvent, SearchQuery};
use observers_core::stores::source::SourceItem;
use observers_core::{EntityEvent, EventKind};
use observers_postgres::entity::{self, DlqOfEvent, JobOfEvent};
use serde::Serialize;

use super::engine;
use crate::output::{self, Format};
use crate::{CliResult, Exit};

/// One change as `debug-event` reports it.
#[derive(Debug, Serialize)]
struct Change {
    event: EntityEvent,
    /// Where it was found: `change_log`, `audit_trail` or both.
    found_in: Vec<&'static str>,
    /// At or below the listener's cursor: it has been processed.
    processed: bool,
    observers: Vec<ObserverOutcome>,
    /// What the audit trail recorded when it was processed.
    #[serde(skip_serializing_if = "Option::is_none")]
    audit: Option<IndexedEvent>,
}

#[derive(Debug, Serialize)]
struct ObserverOutcome {
    observer: String,
    matched: bool,
    why: String,
    actions: Vec<ActionOutcome>,
}

#[derive(Debug, Serialize)]
struct ActionOutcome {
    index: usize,
    action_type: String,
    summary: String,
    /// `delivered`, `dead_lettered`, `resolved` (dead-lettered, then retried successfully),
    /// `queued` (see `jobs`), `not processed yet`, or `not run` (the audit trail has it
    /// unmatched: the config changed since).
    outcome: String,
    dlq: Vec<DlqOfEvent>,
    jobs: Vec<JobOfEvent>,
}

pub async fn run(
    config_path: &Path,
    entity_type: &str,
    entity_id: &str,
    last: u32,
    format: Format,
) -> CliResult {
    if last == 0 {
        return Err(Exit::usage(anyhow::anyhow!("--last must be at least 1")));
    }
    let config = super::load_config(config_path)?;
    let set = engine::observer_set(&config)?;
    let url = engine::database_url(&config)?;
    let pool = observers_postgres::connect(&url, 4).await?;
    observers_postgres::migrate(&pool).await?;

    // By event id: the change log's row (whole) and the audit trail's document.
    let mut events: BTreeMap<i64, (Option<EntityEvent>, Option<IndexedEvent>)> = BTreeMap::new();
    let mut undecodable = 0;
    for item in entity::recent_changes(&pool, entity_type, entity_id, i64::from(last)).await? {
        match item {
            SourceItem::Event(e) => {
                let id = e.id;
                events.entry(id).or_default().0 = Some(e);
            }
            SourceItem::Poison { .. } => undecodable += 1,
        }
    }
    if let Some(backend) = super::search::backend(&config, &pool)? {
        let mut q = SearchQuery::new().with_per_page(last);
        q.entity_type = Some(entity_type.to_owned());
        q.entity_id = Some(entity_id.to_owned());
        for doc in backend.search(&q).await?.results {
            let id = doc.event_id;
            events.entry(id).or_default().1 = Some(doc);
        }
    }
    // The newest `last` of both sources.
    let keep = events.len().saturating_sub(last as usize);
    let events: Vec<_> = events.into_iter().skip(keep).collect();
    let ids: Vec<i64> = events.iter().map(|(id, _)| *id).collect();
    let dlq = entity::dlq_items(&pool, &ids).await?;
    let jobs = entity::jobs(&pool, &ids).await?;
    let cursor = observers_postgres::replay::processed_upto(&pool, &config.source.listener_id)
        .await?
        .unwrap_or(0);
    pool.close().await;

    let changes: Vec<Change> = events
        .into_iter()
        .filter_map(|(id, (logged, audit))| {
            let processed = id <= cursor || audit.is_some();
            let mut found_in = Vec::new();
            if logged.is_some() {
                found_in.push("change_log");
            }
            if audit.is_some() {
                found_in.push("audit_trail");
            }
            let event = logged.or_else(|| audit.as_ref().map(from_audit))?;
            let observers = set
                .explain(&event)
                .into_iter()
                .map(|(o, d)| ObserverOutcome {
                    observer: o.name.clone(),
                    matched: d.is_match(),
                    why: super::debug_event::reason(o, &d),
                    actions: if d.is_match() {
                        actions(o, id, processed, audit.as_ref(), &dlq, &jobs)
                    } else {
                        Vec::new()
                    },
                })
                .collect();
            Some(Change {
                event,
                found_in,
                processed,
                observers,
                audit,
            })
        })
        .collect();

    match format {
        Format::Json => output::json(&serde_json::json!({
            "entity_type": entity_type,
            "entity_id": entity_id,
            "cursor": cursor,
            "undecodable": undecodable,
            "changes": changes,
        }))?,
        Format::Text => print_text(entity_type, entity_id, &changes, undecodable),
    }
    Ok(())
}

/// The actions of a matching observer for event `id`, each with its DLQ items and jobs.
fn actions(
    o: &CompiledObserver,
    id: i64,
    processed: bool,
    audit: Option<&IndexedEvent>,
    dlq: &[DlqOfEvent],
    jobs: &[JobOfEvent],
) -> Vec<ActionOutcome> {
    o.actions
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let index = i64::try_from(i).unwrap_or(i64::MAX);
            let dlq: Vec<DlqOfEvent> = dlq
                .iter()
                .filter(|x| {
                    x.event_id == id && x.observer == o.name && i64::from(x.action_index) == index
                })
                .cloned()
                .collect();
            let jobs: Vec<JobOfEvent> = jobs
                .iter()
                .filter(|x| x.event_id == id && x.observer == o.name && x.action_index == index)
                .cloned()
                .collect();
            ActionOutcome {
                index: i,
                action_type: a.action.type_name().to_owned(),
                summary: a.summary.clone(),
                outcome: outcome(processed, audit, &o.name, &dlq, &jobs),
                dlq,
                jobs,
            }
        })
        .collect()
}

/// What became of one action, from its DLQ items and jobs.
fn outcome(
    processed: bool,
    audit: Option<&IndexedEvent>,
    observer: &str,
    dlq: &[DlqOfEvent],
    jobs: &[JobOfEvent],
) -> String {
    if let Some(item) = dlq.last() {
        return if item.status == "resolved" {
            "resolved".into()
        } else {
            "dead_lettered".into()
        };
    }
    if let Some(job) = jobs.last() {
        return format!("queued (job {} {})", job.id, job.status);
    }
    if !processed {
        return "not processed yet".into();
    }
    if audit.is_some_and(|a| !a.matched_observers.iter().any(|m| m == observer)) {
        return "not run (the observer did not match when the change was processed)".into();
    }
    "delivered".into()
}

/// An event rebuilt from its audit-trail document (the change log no longer holds it): the
/// current row only, no before image.
fn from_audit(doc: &IndexedEvent) -> EntityEvent {
    let row = (!doc.data.is_null()).then(|| doc.data.clone());
    let (before, after) = if doc.event_type == EventKind::Delete {
        (row, None)
    } else {
        (None, row)
    };
    let mut event = EntityEvent::new(
        doc.event_id,
        doc.entity_type.clone(),
        doc.entity_id.clone(),
        doc.event_type,
        before,
        after,
    );
    event.tenant_id.clone_from(&doc.tenant_id);
    event.user_id.clone_from(&doc.user_id);
    event.timestamp = doc.timestamp;
    event
}

fn print_text(entity_type: &str, entity_id: &str, changes: &[Change], undecodable: usize) {
    if changes.is_empty() {
        println!("no change of {entity_type} {entity_id} in the change log or the audit trail");
    }
    for c in changes {
        println!(
            "\nchange {} {} {} {} at {} ({}{})",
            c.event.id,
            c.event.kind,
            c.event.entity_type,
            c.event.entity_id,
            c.event.timestamp,
            c.found_in.join(", "),
            if c.processed {
                ", processed"
            } else {
                ", not processed yet"
            }
        );
        for o in &c.observers {
            println!(
                "  {} {}: {}",
                if o.matched { "MATCH   " } else { "no match" },
                o.observer,
                o.why
            );
            for a in &o.actions {
                println!(
                    "    action {} ({} {}): {}",
                    a.index, a.action_type, a.summary, a.outcome
                );
                for d in &a.dlq {
                    println!(
                        "      dlq item {} {}: {} {} (attempts {}, retries {})",
                        d.id, d.status, d.error_code, d.error, d.attempts, d.retry_count
                    );
                }
                for j in &a.jobs {
                    println!(
                        "      job {} {} key {} (attempts {}){}",
                        j.id,
                        j.status,
                        j.unique_key,
                        j.attempts,
                        j.last_error
                            .as_ref()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        if let Some(a) = &c.audit {
            println!(
                "  audit trail: matched [{}], succeeded [{}], failed [{}]{}",
                a.matched_observers.join(", "),
                a.successful_actions.join(", "),
                a.failed_actions.join(", "),
                if a.errors.is_empty() {
                    String::new()
                } else {
                    format!(", errors: {}", a.errors.join("; "))
                }
            );
        }
    }
    if undecodable > 0 {
        println!(
            "\n{undecodable} undecodable change-log row(s) of this entity (see `observers dlq list`)"
        );
    }
}
