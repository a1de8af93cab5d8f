//! `observers replay`: re-runs changes the listener already processed (read back from the change
//! log) through the observers of --config, conditions included. Deliveries carry the idempotency
//! key `{event_id}:{observer}:{action_index}:replay-{replay_id}` unless `--same-keys`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;
use observers_core::actions::idempotency_key_with;
use observers_core::breaker::BreakerRegistry;
use observers_core::config::Config;
use observers_core::executor::ExecutorBuilder;
use observers_core::stores::source::SourceItem;
use observers_core::telemetry::{ActionOutcome, NoopTelemetry, SharedTelemetry};
use observers_core::{EntityEvent, ObserverExecutor};
use observers_postgres::replay::{self, Pruned, ReplayWindow};
use observers_postgres::{PgPool, PostgresDeadLetterQueue, PostgresGoneEndpoints};
use serde::Serialize;
use serde_json::json;

use super::engine;
use crate::output::{self, Format};
use crate::progress::Progress;
use crate::{CliResult, Exit};

/// Change-log rows read per query.
const PAGE: i64 = 500;

#[derive(Debug, Args)]
#[command(
    after_help = "Only changes at or below the cursor of the config's listener are replayed, in \
change-log order. Changes already pruned from the change log cannot be replayed: the report says \
how many of the window were. Progress goes to stderr (OBSERVERS_PROGRESS_INTERVAL when it is not \
a terminal). Guide: docs/operations.md."
)]
#[command(group(clap::ArgGroup::new("start").required(true).args(["since", "from"])))]
pub struct ReplayArgs {
    /// Replay changes created in the last DUR (e.g. `2h`, `1d`).
    #[arg(long, value_parser = humantime::parse_duration)]
    since: Option<Duration>,
    /// Replay changes created at or after TS (RFC 3339, e.g. `2026-01-05T10:00:00Z`).
    #[arg(long)]
    from: Option<DateTime<Utc>>,
    /// Only changes created before TS (default: now).
    #[arg(long)]
    to: Option<DateTime<Utc>>,
    /// Only changes of this entity type.
    #[arg(long)]
    entity_type: Option<String>,
    /// Only changes of this entity id (with --entity-type).
    #[arg(long, requires = "entity_type")]
    entity_id: Option<String>,
    /// Only these observers (repeat the flag); all observers of --config when none is named.
    #[arg(long = "observer", value_name = "NAME")]
    observers: Vec<String>,
    /// List what would be sent, send nothing.
    #[arg(long)]
    dry_run: bool,
    /// Keep the original idempotency keys (receivers that dedupe will drop the replay).
    #[arg(long)]
    same_keys: bool,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

/// One change and what it matched (dry run) or what ran.
#[derive(Debug, Serialize)]
struct Replayed {
    event_id: i64,
    kind: String,
    entity_type: String,
    entity_id: String,
    actions: Vec<ReplayedAction>,
}

#[derive(Debug, Serialize)]
struct ReplayedAction {
    observer: String,
    action_index: usize,
    action_type: String,
    idempotency_key: String,
    /// `would send` in a dry run, else the outcome (`success`, `dead_lettered`, `queued`...).
    outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

#[derive(Debug, Serialize)]
struct Report {
    replay_id: Option<i64>,
    dry_run: bool,
    window: ReplayWindow,
    /// The consumer whose processed changes are replayed, and its cursor.
    consumer: String,
    processed_upto: i64,
    /// Changes of the window the consumer has not processed yet (the listener delivers them).
    not_yet_processed: i64,
    pruned: Pruned,
    /// Changes read, changes with at least one matching observer, actions run, actions failed.
    events: i64,
    matched_events: i64,
    actions: i64,
    failed: i64,
    /// Rows that could not be decoded (they were dead-lettered when first read).
    undecodable: i64,
    changes: Vec<Replayed>,
}

pub async fn run(config_path: &Path, args: ReplayArgs) -> CliResult {
    let mut config = super::load_config(config_path)?;
    select_observers(&mut config, &args.observers)?;
    let url = engine::database_url(&config)?;
    let pool = observers_postgres::connect(&url, 4).await?;
    observers_postgres::migrate(&pool).await?;
    let window = window(&pool, &args).await?;
    let consumer = config.source.listener_id.clone();
    let upto = replay::processed_upto(&pool, &consumer)
        .await?
        .ok_or_else(|| {
            Exit::usage(anyhow::anyhow!(
                "listener `{consumer}` has no checkpoint yet: nothing was processed, nothing to replay"
            ))
        })?;
    let (in_window, not_yet_processed) = replay::count(&pool, &window, upto).await?;
    let pruned = replay::pruned(&pool, &window).await?;

    let replay_id = if args.dry_run {
        None
    } else {
        let filter = json!({
            "entity_type": window.entity_type,
            "entity_id": window.entity_id,
            "observers": args.observers,
        });
        Some(replay::start(&pool, &window, &filter, false, args.same_keys).await?)
    };
    let suffix = match replay_id {
        Some(id) if !args.same_keys => Some(format!("replay-{id}")),
        None if !args.same_keys => Some("replay-{replay_id}".to_owned()),
        _ => None,
    };
    // A replay re-indexes its changes in the audit trail when search is on (not in a dry run).
    let search = if args.dry_run {
        None
    } else {
        let telemetry: SharedTelemetry = Arc::new(NoopTelemetry);
        Some(super::search::SearchRuntime::start(&config, &pool, &telemetry).await?)
    };
    let mut builder = replay_executor(&config, &pool, suffix.clone())?;
    if let Some(search) = &search {
        builder = search.attach(builder);
    }
    let executor = builder.build();

    let mut report = Report {
        replay_id,
        dry_run: args.dry_run,
        window: window.clone(),
        consumer,
        processed_upto: upto,
        not_yet_processed,
        pruned,
        events: 0,
        matched_events: 0,
        actions: 0,
        failed: 0,
        undecodable: 0,
        changes: Vec::new(),
    };
    let mut progress = Progress::new("replay", "changes", Some(in_window.unsigned_abs()));
    let mut after = 0;
    loop {
        let items = replay::read(&pool, &window, after, upto, PAGE).await?;
        let Some(last) = items.last() else { break };
        after = last.cursor().id;
        for item in items {
            let SourceItem::Event(event) = item else {
                report.undecodable += 1;
                continue;
            };
            report.events += 1;
            progress.add(1);
            let actions = if args.dry_run {
                would_send(&executor, &event, suffix.as_deref())
            } else {
                replay_one(&executor, &event, suffix.as_deref()).await?
            };
            report.add(&event, actions);
        }
    }
    progress.finish();
    if let Some(search) = search {
        search.shutdown().await;
    }
    if let Some(id) = replay_id {
        replay::finish(&pool, id, report.events, report.actions, report.failed).await?;
    }
    pool.close().await;
    match args.format {
        Format::Json => output::json(&report)?,
        Format::Text => print_text(&report),
    }
    Ok(())
}

impl Report {
    /// Counts one change's actions; a change nothing matched is not listed.
    fn add(&mut self, event: &EntityEvent, actions: Vec<ReplayedAction>) {
        if actions.is_empty() {
            return;
        }
        let failed = actions
            .iter()
            .filter(|a| {
                a.outcome == ActionOutcome::DeadLettered.as_str()
                    || a.outcome == ActionOutcome::ShortCircuited.as_str()
            })
            .count();
        self.matched_events += 1;
        self.actions += i64::try_from(actions.len()).unwrap_or(i64::MAX);
        self.failed += i64::try_from(failed).unwrap_or(i64::MAX);
        self.changes.push(Replayed {
            event_id: event.id,
            kind: event.kind.to_string(),
            entity_type: event.entity_type.clone(),
            entity_id: event.entity_id.clone(),
            actions,
        });
    }
}

/// Runs one change through the replay's executor.
async fn replay_one(
    executor: &ObserverExecutor,
    event: &EntityEvent,
    suffix: Option<&str>,
) -> CliResult<Vec<ReplayedAction>> {
    Ok(executor
        .process(event)
        .await?
        .actions
        .into_iter()
        .map(|a| ReplayedAction {
            idempotency_key: idempotency_key_with(event.id, &a.observer, a.action_index, suffix),
            outcome: a.outcome.as_str().to_owned(),
            detail: a.error.or(a.detail),
            observer: a.observer,
            action_index: a.action_index,
            action_type: a.action_type.to_owned(),
        })
        .collect())
}

/// Keeps the named observers only; an unknown name is a usage error.
fn select_observers(config: &mut Config, names: &[String]) -> CliResult {
    if names.is_empty() {
        return Ok(());
    }
    for name in names {
        if !config.observers.iter().any(|o| o.name.get_ref() == name) {
            return Err(Exit::usage(anyhow::anyhow!(
                "--observer {name}: no observer of that name in the config (it has: {})",
                config
                    .observers
                    .iter()
                    .map(|o| o.name.get_ref().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    config
        .observers
        .retain(|o| names.contains(o.name.get_ref()));
    Ok(())
}

/// The window, on the database clock (which wrote `created_at`).
async fn window(pool: &PgPool, args: &ReplayArgs) -> CliResult<ReplayWindow> {
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(pool)
        .await
        .context("reading the database clock")?;
    let from = match (args.from, args.since) {
        (Some(from), _) => from,
        (None, Some(since)) => {
            now - chrono::Duration::from_std(since)
                .map_err(|e| Exit::usage(anyhow::anyhow!("--since {since:?}: {e}")))?
        }
        (None, None) => unreachable!("clap requires --since or --from"),
    };
    let to = args.to.unwrap_or(now);
    if to <= from {
        return Err(Exit::usage(anyhow::anyhow!(
            "--to {to} is not after the window's start {from}"
        )));
    }
    Ok(ReplayWindow {
        from,
        to,
        entity_type: args.entity_type.clone(),
        entity_id: args.entity_id.clone(),
    })
}

/// The executor of a replay: the DLQ, job queue and breaker settings of `run`, no dedup and no
/// action cache (both would take the replay for a repeat), and the replay's key suffix.
fn replay_executor(
    config: &Config,
    pool: &PgPool,
    suffix: Option<String>,
) -> CliResult<ExecutorBuilder> {
    let breakers = BreakerRegistry::new(
        config.breaker.clone(),
        observers_core::clock::system_clock(),
        Arc::new(NoopTelemetry),
    );
    let mut builder = ObserverExecutor::builder(engine::observer_set(config)?)
        .breakers(Arc::new(breakers))
        .dlq(Arc::new(PostgresDeadLetterQueue::new(pool.clone())))
        .gone_endpoints(Arc::new(PostgresGoneEndpoints::new(pool.clone())))
        .max_concurrent_actions(config.executor.max_concurrent_actions);
    builder = super::queue::attach(builder, config, pool);
    if let Some(suffix) = suffix {
        builder = builder.key_suffix(suffix);
    }
    Ok(builder)
}

/// A dry run's actions for one change: those of the observers that match it now.
fn would_send(
    executor: &ObserverExecutor,
    event: &EntityEvent,
    suffix: Option<&str>,
) -> Vec<ReplayedAction> {
    let set = executor.observers();
    set.explain(event)
        .into_iter()
        .filter(|(_, d)| d.is_match())
        .flat_map(|(o, _)| {
            o.actions
                .iter()
                .enumerate()
                .map(|(i, a)| ReplayedAction {
                    observer: o.name.clone(),
                    action_index: i,
                    action_type: a.action.type_name().to_owned(),
                    idempotency_key: idempotency_key_with(event.id, &o.name, i, suffix),
                    outcome: "would send".into(),
                    detail: Some(a.summary.clone()),
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn print_text(r: &Report) {
    for c in &r.changes {
        println!(
            "change {} {} {} {}",
            c.event_id, c.kind, c.entity_type, c.entity_id
        );
        for a in &c.actions {
            println!(
                "  {} action {} ({}) key {}: {}{}",
                a.observer,
                a.action_index,
                a.action_type,
                a.idempotency_key,
                a.outcome,
                a.detail
                    .as_ref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            );
        }
    }
    let verb = if r.dry_run {
        "would replay"
    } else {
        "replayed"
    };
    println!(
        "{}{verb} {} change(s) created in [{}, {}): {} matched, {} action(s){}",
        r.replay_id
            .map(|id| format!("replay {id}: "))
            .unwrap_or_default(),
        r.events,
        r.window.from,
        r.window.to,
        r.matched_events,
        r.actions,
        if r.dry_run {
            String::new()
        } else {
            format!(", {} failed (dead-lettered)", r.failed)
        }
    );
    if r.undecodable > 0 {
        println!(
            "{} undecodable row(s) skipped (dead-lettered when first read)",
            r.undecodable
        );
    }
    if r.not_yet_processed > 0 {
        println!(
            "{} change(s) of the window are after listener `{}`'s cursor {}: not processed yet, left to the listener",
            r.not_yet_processed, r.consumer, r.processed_upto
        );
    }
    print_pruned(&r.pruned, &r.window);
}

fn print_pruned(p: &Pruned, w: &ReplayWindow) {
    if p.rows > 0 {
        println!(
            "{} change(s){} created between {} and {} (minutes in the window) were pruned from the change log and cannot be replayed",
            p.rows,
            w.entity_type
                .as_ref()
                .map(|t| format!(" of {t}"))
                .unwrap_or_default(),
            p.first_minute.map_or_else(String::new, |m| m.to_string()),
            p.last_minute.map_or_else(String::new, |m| m.to_string()),
        );
    }
    if let Some((id, at)) = p.oldest_kept
        && at > w.from
    {
        println!(
            "the change log keeps changes from id {id} (created {at}) on; the window starts before that"
        );
    }
}
