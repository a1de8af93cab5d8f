//! The shipped dashboard and alert rules: `promtool check rules` passes on
//! docs/prometheus/alerts.yml, the Grafana JSON is a dashboard with queries, and every
//! `observer_*` name in them and in docs/monitoring.md is a documented family (each of which
//! `families` shows emitted under `observers run`).

use std::collections::BTreeSet;
use std::process::Command;

use crate::root;

/// `promtool ARGS`; `None` (after saying why) when promtool is missing outside CI.
fn promtool(args: &[&str]) -> Option<String> {
    let out = match Command::new("promtool")
        .args(args)
        .current_dir(root().join("docs/prometheus"))
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "promtool is missing ({e}); `cargo xtask test` installs it (apt-get install prometheus)"
            );
            eprintln!(
                "SKIPPED: promtool not installed ({e}); run `cargo xtask test` or apt-get install prometheus"
            );
            return None;
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    assert!(text.contains("SUCCESS"), "{text}");
    Some(text)
}

#[test]
fn promtool_accepts_the_alert_rules() {
    promtool(&["check", "rules", "alerts.yml"]);
}

/// The `alert:` names of a rules file, or the `alertname:` of a rules test file whose
/// `exp_alerts` is not empty (a case where the alert fires).
fn alerts_in(text: &str, key: &str) -> BTreeSet<String> {
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.trim().trim_start_matches("- "))
        .collect();
    let mut out = BTreeSet::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = line.strip_prefix(key) else {
            continue;
        };
        let fires = key == "alert:"
            || lines
                .get(i + 1)
                .is_some_and(|next| next.starts_with("exp_alerts:") && !next.ends_with("[]"));
        if fires {
            out.insert(name.trim().to_owned());
        }
    }
    out
}

#[test]
fn every_alert_fires_in_a_promtool_test() {
    let dir = root().join("docs/prometheus");
    let rules = alerts_in(
        &std::fs::read_to_string(dir.join("alerts.yml")).unwrap(),
        "alert:",
    );
    let tested = alerts_in(
        &std::fs::read_to_string(dir.join("alerts_test.yml")).unwrap(),
        "alertname:",
    );
    assert!(rules.len() >= 15, "{rules:?}");
    let untested: Vec<&String> = rules.difference(&tested).collect();
    assert!(
        untested.is_empty(),
        "alerts without a firing case in docs/prometheus/alerts_test.yml: {untested:?}"
    );
    promtool(&["test", "rules", "alerts_test.yml"]);
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
    // Every documented family is emitted under `observers run`
    // (`families::every_documented_family_moves_under_observers_run`).
    let documented = crate::families::documented_families();
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
        "docs/troubleshooting.md",
    ] {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        for name in names_in(&text) {
            // The bare prefix, and table names, are not metric names.
            if name == "observer_"
                || [
                    "observer_change_log",
                    "observer_checkpoints",
                    "observer_leases",
                ]
                .contains(&name.as_str())
            {
                continue;
            }
            let family = ["_total", "_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(&name);
            assert!(
                documented.contains(family) || documented.contains(&name),
                "{file} names `{name}`, which is not a family of docs/monitoring.md's tables"
            );
        }
    }
}
