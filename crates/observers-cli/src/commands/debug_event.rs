//! `observers debug-event`: for every observer, whether an event matches and why; with
//! `--execute`, run the matching actions and show their outcome.

use std::io::Read;
use std::path::Path;

use anyhow::Context;
use observers_core::actions::ActionFactory;
use observers_core::config::Config;
use observers_core::executor::MatchDecision;
use observers_core::{EntityEvent, EventKind, ObserverExecutor, ObserverSet};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::output::{self, Format};
use crate::{CliResult, Exit};

/// The event file: the change-log fields, with friendly defaults.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventInput {
    #[serde(default)]
    id: i64,
    entity_type: String,
    #[serde(default)]
    entity_id: Option<Value>,
    #[serde(alias = "event_type", alias = "operation")]
    kind: String,
    #[serde(default)]
    tenant_id: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    timestamp: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default, alias = "old")]
    before: Option<Value>,
    #[serde(default, alias = "new", alias = "data")]
    after: Option<Value>,
}

fn read_event(source: &str) -> CliResult<EntityEvent> {
    let text = if source == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read the event from standard input")?;
        s
    } else {
        std::fs::read_to_string(source)
            .with_context(|| format!("cannot read event file {source}"))?
    };
    let input: EventInput = serde_json::from_str(&text).map_err(|e| {
        Exit::usage(anyhow::anyhow!(
            "{source}:{}:{}: invalid event: {e}",
            e.line(),
            e.column()
        ))
    })?;
    let kind: EventKind = input
        .kind
        .parse()
        .map_err(|e: String| Exit::usage(anyhow::anyhow!("{source}: {e}")))?;
    let entity_id = match input.entity_id {
        Some(Value::String(s)) => s,
        Some(v) => v.to_string(),
        None => input
            .after
            .as_ref()
            .or(input.before.as_ref())
            .and_then(|r| r.get("id"))
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .unwrap_or_default(),
    };
    let mut event = EntityEvent::new(
        input.id,
        input.entity_type,
        entity_id,
        kind,
        input.before,
        input.after,
    );
    event.tenant_id = input.tenant_id;
    event.user_id = input.user_id;
    if let Some(ts) = input.timestamp {
        event.timestamp = ts;
    }
    Ok(event)
}

fn build_set(config: &Config) -> CliResult<ObserverSet> {
    let factory = ActionFactory::new(config.outbound.clone())?;
    Ok(ObserverSet::from_config(config, &factory)?)
}

pub async fn run(
    config_path: &Path,
    event_source: &str,
    execute: bool,
    format: Format,
) -> CliResult {
    let config = super::load_config(config_path)?;
    let event = read_event(event_source)?;
    let executor = ObserverExecutor::builder(build_set(&config)?)
        .max_concurrent_actions(config.executor.max_concurrent_actions)
        .build();
    let set = executor.observers();
    let decisions = set.explain(&event);
    let summary = if execute {
        Some(executor.process(&event).await?)
    } else {
        None
    };
    match format {
        Format::Json => {
            let observers: Vec<Value> = decisions
                .iter()
                .map(|(o, d)| {
                    json!({
                        "observer": o.name,
                        "matched": d.is_match(),
                        "decision": d,
                        "condition": o.condition.as_ref().map(|c| c.source().to_owned()),
                        "actions": o.actions.iter().map(|a| json!({"type": a.action.type_name(), "summary": a.summary})).collect::<Vec<_>>(),
                    })
                })
                .collect();
            output::json(&json!({ "event": event, "observers": observers, "execution": summary }))?;
        }
        Format::Text => {
            println!(
                "event {} {} {} (tenant {}, changed: {})",
                event.kind,
                event.entity_type,
                event.entity_id,
                event.tenant_id.as_deref().unwrap_or("-"),
                if event.changes.is_empty() {
                    "-".to_owned()
                } else {
                    event.changed_fields().join(", ")
                }
            );
            for (o, d) in &decisions {
                println!(
                    "\n{} {}",
                    if d.is_match() { "MATCH   " } else { "no match" },
                    o.name
                );
                println!("  why: {}", reason(o, d));
                if d.is_match() {
                    for (i, a) in o.actions.iter().enumerate() {
                        println!(
                            "  would run action {i}: {} {}",
                            a.action.type_name(),
                            a.summary
                        );
                    }
                }
            }
            let matched = decisions.iter().filter(|(_, d)| d.is_match()).count();
            println!("\n{matched} of {} observers match", decisions.len());
            if let Some(s) = &summary {
                println!("\nexecuted in {:?}:", s.duration);
                for a in &s.actions {
                    println!(
                        "  {} action {} ({}): {} after {} attempt(s){}",
                        a.observer,
                        a.action_index,
                        a.action_type,
                        a.outcome.as_str(),
                        a.attempts,
                        a.error
                            .as_ref()
                            .map(|e| format!(": {e}"))
                            .or_else(|| a.detail.as_ref().map(|d| format!(": {d}")))
                            .unwrap_or_default()
                    );
                }
            }
        }
    }
    Ok(())
}

fn bindings(b: &[(String, Value)]) -> String {
    b.iter()
        .map(|(k, v)| format!("{k} = {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn reason(o: &observers_core::executor::CompiledObserver, d: &MatchDecision) -> String {
    match d {
        MatchDecision::Matched { bindings: b } if o.condition.is_none() => {
            format!("entity {} and kind match; no condition", o.entity)
        }
        MatchDecision::Matched { bindings: b } => format!(
            "condition `{}` is true ({})",
            o.condition.as_ref().map_or("", |c| c.source()),
            bindings(b)
        ),
        MatchDecision::EntityOrKindMismatch => format!(
            "observes entity {} on {}",
            o.entity,
            o.kinds
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join("/")
        ),
        MatchDecision::Disabled => "observer is disabled".into(),
        MatchDecision::TenantExcluded { tenant } => format!(
            "tenant {} is not in {:?}",
            tenant.as_deref().unwrap_or("(none)"),
            o.tenants.as_deref().unwrap_or_default()
        ),
        MatchDecision::ConditionFalse { bindings: b } => format!(
            "condition `{}` is false ({})",
            o.condition.as_ref().map_or("", |c| c.source()),
            bindings(b)
        ),
        MatchDecision::ConditionError { error } => format!(
            "condition `{}` could not be evaluated: {error}",
            o.condition.as_ref().map_or("", |c| c.source())
        ),
    }
}
