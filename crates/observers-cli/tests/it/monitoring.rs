//! The shipped dashboard and alert rules: `promtool check rules` passes on
//! docs/prometheus/alerts.yml, the Grafana JSON is a dashboard with queries, and every
//! `observer_*` name in them and in docs/monitoring.md is one `/metrics` actually exports.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use observers_core::telemetry::{ActionOutcome, BreakerState, Telemetry, TelemetryEvent};
use observers_metrics::{JobOutcome, ObserverMetrics, Scrape};

use crate::root;

#[test]
fn promtool_accepts_the_alert_rules() {
    let rules = root().join("docs/prometheus/alerts.yml");
    let out = match Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "promtool is missing ({e}); `cargo xtask test` installs it (apt-get install prometheus)"
            );
            eprintln!(
                "skipped: promtool not installed ({e}); run `cargo xtask test` or apt-get install prometheus"
            );
            return;
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool check rules failed:\n{text}");
    assert!(text.contains("SUCCESS"), "{text}");
}

/// An `ObserverMetrics` with a series in every family, as a busy instance would have.
#[allow(clippy::too_many_lines)] // one telemetry event per family, in one list
fn every_family() -> Scrape {
    let m = ObserverMetrics::new();
    let d = Duration::from_millis(1);
    for e in [
        TelemetryEvent::EventProcessed {
            entity_type: "E",
            matched: 0,
            failed: 0,
            duration: d,
        },
        TelemetryEvent::EventDeduplicated { entity_type: "E" },
        TelemetryEvent::ConditionFailed {
            observer: "o",
            error: "x",
        },
        TelemetryEvent::ActionFinished {
            observer: "o",
            action_type: "webhook",
            outcome: ActionOutcome::Success,
            attempts: 2,
            duration: d,
        },
        TelemetryEvent::ActionRetried {
            observer: "o",
            action_type: "webhook",
            attempt: 1,
            delay: d,
        },
        TelemetryEvent::DeadLettered {
            observer: "o",
            action_type: "webhook",
        },
        TelemetryEvent::BreakerTransition {
            endpoint: "h",
            from: BreakerState::Closed,
            to: BreakerState::Open,
        },
        TelemetryEvent::BreakerRejected { endpoint: "h" },
        TelemetryEvent::BatchProcessed {
            listener: "l",
            size: 1,
            duration: d,
        },
        TelemetryEvent::CheckpointSaved {
            listener: "l",
            duration: d,
        },
        TelemetryEvent::ListenerError {
            listener: "l",
            error: "x",
            backoff: d,
        },
        TelemetryEvent::ListenerReconnected {
            listener: "l",
            backoff: d,
        },
        TelemetryEvent::PoisonEvent {
            listener: "l",
            id: 1,
        },
        TelemetryEvent::CutoffLag {
            listener: "l",
            lag: d,
        },
        TelemetryEvent::CommitToDispatch {
            entity_type: "E",
            latency: d,
        },
        TelemetryEvent::SourceBacklog {
            listener: "l",
            rows: 1,
        },
    ] {
        m.emit(&e);
    }
    m.set_dlq_pending(1);
    m.set_checkpoint_lag("l", d);
    m.checkpoint_save_failed("l");
    m.cache_hit("redis");
    m.cache_miss("redis");
    m.cache_evicted("redis", 1);
    m.fallback_invoked("dedup");
    m.set_fallback_active("dedup", true);
    m.primary_failed("dedup");
    m.health_checked("redis", d, false);
    m.sync_operations("dedup", "ok", 1);
    m.set_sync_queue("dedup", 1);
    m.job_enqueued("q");
    m.set_job_depth("q", 1, 1);
    m.retention_deleted("change_log", 1);
    m.set_retention_oldest_age("change_log", d);
    for o in [
        JobOutcome::Completed,
        JobOutcome::Retried,
        JobOutcome::Failed,
    ] {
        m.job_finished("q", o, d);
    }
    m.lease_released(d);
    m.lease_renewal("ok");
    m.fenced_write("l");
    m.search_indexed("postgres", true, 1, d);
    m.search_query("postgres", d);
    Scrape::parse(&m.encode()).unwrap()
}

fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("observer_") {
        if i > 0 && text.as_bytes()[i - 1].is_ascii_alphanumeric() {
            continue;
        }
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        out.insert(name);
    }
    out
}

#[test]
fn dashboard_alerts_and_docs_name_only_exported_metrics() {
    let exported = every_family();
    let grafana = std::fs::read_to_string(root().join("docs/grafana/observers.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&grafana).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let queries = panels
        .iter()
        .filter_map(|p| p["targets"].as_array())
        .flatten()
        .filter(|t| t["expr"].as_str().is_some_and(|e| !e.is_empty()))
        .count();
    assert!(queries >= 20, "the dashboard has only {queries} queries");

    for file in [
        "docs/grafana/observers.json",
        "docs/prometheus/alerts.yml",
        "docs/monitoring.md",
    ] {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        for name in names_in(&text) {
            // The bare prefix, and table names, are not metric names.
            if name == "observer_"
                || ["observer_change_log", "observer_checkpoints"].contains(&name.as_str())
            {
                continue;
            }
            assert!(
                exported.has_family(&name) || exported.samples.iter().any(|s| s.name == name),
                "{file} names `{name}`, which /metrics does not export"
            );
        }
    }
}
