//! `observers validate-config FILE`: a readable report of observers, actions and conditions.

use std::path::Path;

use observers_core::config::{ActionConfig, ActionMode, Config, ConfigError, load_file};
use serde_json::json;

use crate::output::{self, Format};
use crate::{CliResult, Exit};

pub fn run(file: &Path, format: Format) -> CliResult {
    match load_file(file) {
        Ok(config) => {
            match format {
                Format::Json => output::json(&report_json(file, &config))?,
                Format::Text => print!("{}", report_text(file, &config)),
            }
            Ok(())
        }
        Err(e) => {
            if format == Format::Json {
                output::json(&error_json(&e))?;
            }
            Err(Exit::usage(e))
        }
    }
}

fn error_json(e: &ConfigError) -> serde_json::Value {
    json!({
        "valid": false,
        "error": { "file": e.file, "line": e.line, "column": e.column, "key": e.key, "message": e.message }
    })
}

fn kinds(o: &observers_core::config::ObserverConfig) -> Vec<&'static str> {
    o.kinds()
        .into_iter()
        .map(observers_core::EventKind::as_str)
        .collect()
}

fn report_json(file: &Path, config: &Config) -> serde_json::Value {
    let observers: Vec<_> = config
        .observers
        .iter()
        .map(|o| {
            json!({
                "name": o.name(),
                "entity": o.entity(),
                "events": kinds(o),
                "condition": o.condition.as_ref().map(toml::Spanned::get_ref),
                "tenants": o.tenants,
                "enabled": o.enabled,
                "actions": o.actions.iter().map(|a| action_json(a.get_ref())).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "valid": true,
        "file": file.display().to_string(),
        "source": config.source,
        "executor": config.executor,
        "retry": config.retry,
        "observers": observers,
    })
}

fn action_json(a: &ActionConfig) -> serde_json::Value {
    json!({
        "type": a.type_name(),
        "summary": a.summary(),
        "mode": a.mode(),
        "queue": (a.mode() == ActionMode::Queued).then(|| a.job_queue()),
        "priority": (a.mode() == ActionMode::Queued).then(|| a.job_priority()),
        "timeout": a.timeout().map(|t| humantime::format_duration(t).to_string()),
    })
}

fn report_text(file: &Path, config: &Config) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "{}: valid", file.display());
    let src = &config.source;
    let _ = writeln!(
        s,
        "  source     listener_id={} batch_size={} poll_interval={} partitions={}",
        src.listener_id,
        src.batch_size,
        humantime::format_duration(src.poll_interval),
        src.partitions
    );
    let ex = &config.executor;
    let _ = writeln!(
        s,
        "  executor   max_in_flight={} max_concurrent_actions={} action_timeout={}",
        ex.max_in_flight,
        ex.max_concurrent_actions,
        humantime::format_duration(ex.action_timeout)
    );
    let r = &config.retry;
    let _ = writeln!(
        s,
        "  retry      max_attempts={} backoff={}..{} x{} jitter={}",
        r.max_attempts,
        humantime::format_duration(r.initial_backoff),
        humantime::format_duration(r.max_backoff),
        r.multiplier,
        if r.jitter { "full" } else { "off" }
    );
    let _ = writeln!(
        s,
        "  queue      workers={} queues={}",
        config.queue.workers,
        config.served_queues().join(",")
    );
    let _ = writeln!(s, "  observers  {}", config.observers.len());
    for o in &config.observers {
        let tenants = o
            .tenants
            .as_ref()
            .map_or_else(|| "all".to_owned(), |t| t.join(","));
        let _ = writeln!(
            s,
            "\n  {}{}\n    entity     {}\n    events     {}\n    tenants    {}",
            o.name(),
            if o.enabled { "" } else { " (disabled)" },
            o.entity(),
            kinds(o).join(", "),
            tenants
        );
        let condition = o
            .condition
            .as_ref()
            .map_or("(none: every event matches)", |c| c.get_ref().as_str());
        let _ = writeln!(s, "    condition  {condition}");
        for (i, a) in o.actions.iter().enumerate() {
            let a = a.get_ref();
            let mut extra = vec![format!("{:?}", a.mode()).to_lowercase()];
            if a.mode() == ActionMode::Queued {
                extra.push(format!(
                    "queue {} priority {}",
                    a.job_queue(),
                    a.job_priority()
                ));
            }
            if let Some(t) = a.timeout() {
                extra.push(format!("timeout {}", humantime::format_duration(t)));
            }
            if let ActionConfig::Webhook(w) = a
                && w.signing_secret.is_some()
            {
                extra.push("signed".into());
            }
            let _ = writeln!(
                s,
                "    action {i}   {:<8} {}  ({})",
                a.type_name(),
                a.summary(),
                extra.join(", ")
            );
        }
    }
    s
}
