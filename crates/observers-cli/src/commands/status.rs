//! `observers status`: seed 003's status tree, from the database (listeners and cursors,
//! backlog and lag, the DLQ, the change log) and, when reachable, the running instance's
//! `/status` (metrics summary, breakers). `--format json` prints the same as one object.
//! With `--config` naming an HA group, the group (leader, instances, partitions) too.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use clap::Args;
use observers_core::Cursor;
use observers_core::stores::checkpoint::CheckpointStore;
use observers_core::stores::dlq::{DeadLetterQueue, DlqStatus};
use observers_postgres::{PgPool, PostgresCheckpointStore, PostgresDeadLetterQueue};
use serde::Serialize;
use serde_json::Value;

use super::db::DbArgs;
use super::metrics_cmd::{get, instance_url};
use crate::CliResult;
use crate::output::{self, Format};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The running instance's ops server (default: the config's `[metrics] listen`, else
    /// http://127.0.0.1:9464).
    #[arg(long)]
    pub url: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// One consumer of the change log.
#[derive(Debug, Clone, Serialize)]
pub struct ListenerStatus {
    pub listener_id: String,
    pub cursor: Cursor,
    pub events_processed: u64,
    pub last_save: DateTime<Utc>,
    /// Rows after the cursor.
    pub backlog: u64,
    /// Age of the oldest row after the cursor, in seconds (0 when caught up).
    pub lag_seconds: f64,
    /// Failed checkpoint saves since the last successful one.
    pub consecutive_errors: i32,
    /// The last failed save's error (cleared by a successful save).
    pub last_error: Option<String>,
}

/// What the database says.
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseStatus {
    pub listeners: Vec<ListenerStatus>,
    /// Counted up to `observers_postgres::monitoring::COUNT_CAP`.
    pub change_log_rows: u64,
    /// `change_log_rows` reached the cap: there are at least that many.
    pub change_log_rows_capped: bool,
    pub newest_change: Option<DateTime<Utc>>,
    pub cutoff_lag_seconds: f64,
    pub dlq_pending: u64,
    pub dlq_resolved: u64,
    pub captured_tables: usize,
    /// Captured tables whose definition drifted (`observers capture list` says how).
    pub captures_drifted: usize,
    /// URLs disabled by `410 Gone` (their events go to the DLQ).
    pub disabled_endpoints: Vec<observers_core::stores::gone::GoneEndpoint>,
    /// The job queue, per queue with live jobs.
    pub jobs: Vec<observers_queue::QueueDepth>,
    /// The database's `pgoutput` replication slots (the WAL source's): lag and retained WAL.
    pub replication_slots: Vec<observers_postgres::wal::slot::SlotStatus>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub database: DatabaseStatus,
    /// The instance's `/status`, or `{"reachable": false, ...}`.
    pub instance: Value,
    /// The HA group of `--config` (leader, instances, partition leases); `null` without HA.
    pub group: Option<observers_ha::GroupStatus>,
}

/// The database part, shared with the ops server's `database` section.
pub async fn database_status(pool: &PgPool) -> CliResult<DatabaseStatus> {
    let stats = observers_postgres::changelog::stats(pool).await?;
    let store = PostgresCheckpointStore::new(pool.clone());
    let checkpoints: BTreeMap<String, _> = store
        .list()
        .await?
        .into_iter()
        .map(|c| (c.listener_id.clone(), c))
        .collect();
    let mut listeners = Vec::new();
    let mut cutoff = 0.0f64;
    for c in &stats.consumers {
        let g = observers_postgres::monitoring::source_gauges(pool, &c.listener_id).await?;
        cutoff = cutoff.max(g.cutoff_lag.as_secs_f64());
        let details = store.details(&c.listener_id).await?;
        listeners.push(ListenerStatus {
            listener_id: c.listener_id.clone(),
            cursor: c.cursor,
            events_processed: checkpoints
                .get(&c.listener_id)
                .map_or(0, |k| k.events_processed),
            last_save: c.updated_at,
            backlog: c.backlog,
            lag_seconds: g.checkpoint_lag.as_secs_f64(),
            consecutive_errors: details.as_ref().map_or(0, |d| d.consecutive_errors),
            last_error: details.and_then(|d| d.last_error),
        });
    }
    if stats.consumers.is_empty() {
        let g = observers_postgres::monitoring::source_gauges(pool, "").await?;
        cutoff = g.cutoff_lag.as_secs_f64();
    }
    let dlq = PostgresDeadLetterQueue::new(pool.clone());
    let captures = observers_postgres::capture::list(pool).await?;
    Ok(DatabaseStatus {
        listeners,
        change_log_rows: stats.total_rows,
        change_log_rows_capped: stats.total_rows_capped,
        newest_change: stats.newest_created_at,
        cutoff_lag_seconds: cutoff,
        dlq_pending: dlq.count(Some(DlqStatus::Pending)).await?,
        dlq_resolved: dlq.count(Some(DlqStatus::Resolved)).await?,
        captured_tables: captures.len(),
        captures_drifted: captures.iter().filter(|c| !c.is_healthy()).count(),
        disabled_endpoints: observers_core::stores::gone::GoneEndpoints::list(
            &observers_postgres::PostgresGoneEndpoints::new(pool.clone()),
        )
        .await?,
        jobs: observers_queue::queue_depths(pool).await?,
        replication_slots: observers_postgres::wal::slot::list(pool).await?,
    })
}

pub async fn run(args: StatusArgs, db: &DbArgs) -> CliResult {
    let pool = db.migrated_pool().await?;
    let database = database_status(&observers_postgres::monitoring::status_pool(
        &pool,
        observers_postgres::monitoring::STATUS_STATEMENT_TIMEOUT,
    ))
    .await?;
    let url = instance_url(args.url.as_deref(), db.config.as_deref())?;
    let instance = match get(&format!("{url}/status")).await {
        Ok(body) => serde_json::from_str(&body).unwrap_or_else(
            |e| serde_json::json!({"reachable": false, "url": url, "error": format!("not JSON: {e}")}),
        ),
        Err(e) => serde_json::json!({"reachable": false, "url": url, "error": format!("{e:#}")}),
    };
    let group = match &db.config {
        Some(path) => {
            let config = super::load_config(path)?;
            if config.ha.enabled {
                Some(super::ha::group_status(&config, &pool).await?)
            } else {
                None
            }
        }
        None => None,
    };
    let report = StatusReport {
        database,
        instance,
        group,
    };
    match args.format {
        Format::Json => output::json(&report),
        Format::Text => {
            print!("{}", render(&report));
            Ok(())
        }
    }
}

fn human_bytes(b: Option<i64>) -> String {
    let Some(b) = b else {
        return "?".to_owned();
    };
    #[allow(clippy::cast_precision_loss)]
    let f = b as f64;
    match b {
        ..1024 => format!("{b} B"),
        1024..1_048_576 => format!("{:.1} KiB", f / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1} MiB", f / 1_048_576.0),
        _ => format!("{:.1} GiB", f / 1_073_741_824.0),
    }
}

fn ago(t: DateTime<Utc>) -> String {
    let secs = (Utc::now() - t).num_seconds().max(0);
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}

/// Seed 003's tree.
#[allow(clippy::many_single_char_names)]
pub fn render(report: &StatusReport) -> String {
    use std::fmt::Write as _;
    let mut o = String::from("Observer System Status\n");
    let d = &report.database;
    let inst = &report.instance;
    let _ = writeln!(o, "├── Listeners ({})", d.listeners.len());
    if d.listeners.is_empty() {
        let _ = writeln!(
            o,
            "│   └── none yet (a listener saves a checkpoint after its first batch)"
        );
    }
    for (i, l) in d.listeners.iter().enumerate() {
        let last = i + 1 == d.listeners.len();
        let (branch, pad) = if last {
            ("└──", "    ")
        } else {
            ("├──", "│   ")
        };
        let _ = writeln!(o, "│   {branch} {}", l.listener_id);
        let _ = writeln!(o, "│   {pad}├── Processed Events: {}", l.events_processed);
        let _ = writeln!(
            o,
            "│   {pad}├── Current Backlog: {} events (oldest {:.1}s)",
            l.backlog, l.lag_seconds
        );
        let save = if l.consecutive_errors > 0 {
            format!(
                ", {} FAILED SAVES: {}",
                l.consecutive_errors,
                l.last_error.as_deref().unwrap_or("?")
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            o,
            "│   {pad}└── Checkpoint: {}, Last Save={}{save}",
            l.cursor,
            ago(l.last_save)
        );
    }
    let _ = writeln!(o, "├── Change Log");
    let _ = writeln!(
        o,
        "│   ├── Rows: {}{}",
        d.change_log_rows,
        if d.change_log_rows_capped { "+" } else { "" }
    );
    if d.captures_drifted == 0 {
        let _ = writeln!(o, "│   ├── Captured Tables: {}", d.captured_tables);
    } else {
        let _ = writeln!(
            o,
            "│   ├── Captured Tables: {} ({} DRIFTED: see `observers capture list`)",
            d.captured_tables, d.captures_drifted
        );
    }
    let _ = writeln!(
        o,
        "│   ├── Last Change: {}",
        d.newest_change.map_or_else(|| "never".to_owned(), ago)
    );
    let _ = writeln!(
        o,
        "│   └── Cutoff Lag: {:.1}s (oldest open write transaction)",
        d.cutoff_lag_seconds
    );
    render_slots(&mut o, &d.replication_slots);
    let _ = writeln!(o, "├── Dead-Letter Queue");
    let _ = writeln!(o, "│   ├── Pending: {}", d.dlq_pending);
    let _ = writeln!(o, "│   └── Resolved: {}", d.dlq_resolved);
    render_jobs(&mut o, &d.jobs);
    if !d.disabled_endpoints.is_empty() {
        let _ = writeln!(
            o,
            "├── Disabled Endpoints (410 Gone; `observers actions enable --url URL`)"
        );
        let n = d.disabled_endpoints.len();
        for (i, g) in d.disabled_endpoints.iter().enumerate() {
            let branch = if i + 1 == n { "└──" } else { "├──" };
            let _ = writeln!(o, "│   {branch} {} (observer {})", g.target, g.observer);
        }
    }
    if let Some(group) = &report.group {
        let _ = writeln!(o, "├── HA Group");
        for line in super::ha::render(group).lines() {
            let _ = writeln!(o, "│   {line}");
        }
    }
    render_instance(&mut o, inst);
    o
}

/// The WAL source's replication slots, when there are any.
fn render_slots(o: &mut String, slots: &[observers_postgres::wal::slot::SlotStatus]) {
    use std::fmt::Write as _;
    if slots.is_empty() {
        return;
    }
    let _ = writeln!(o, "├── Replication Slots (kind wal)");
    let n = slots.len();
    for (i, s) in slots.iter().enumerate() {
        let branch = if i + 1 == n { "└──" } else { "├──" };
        let _ = writeln!(
            o,
            "│   {branch} {}: {}, lag {}, retained WAL {}{}",
            s.slot_name,
            if s.active {
                "streaming"
            } else {
                "NOT STREAMING"
            },
            human_bytes(s.lag_bytes),
            human_bytes(s.retained_bytes),
            match s.wal_status.as_deref() {
                Some("lost") => {
                    " (LOST: the slot's WAL was removed; drop it and enable capture again)"
                }
                Some("unreserved") => " (about to lose WAL: max_slot_wal_keep_size reached)",
                _ => "",
            }
        );
    }
}

/// The running instance's part of the tree.
fn render_instance(o: &mut String, inst: &Value) {
    use std::fmt::Write as _;
    let reachable = inst.get("reachable") != Some(&Value::Bool(false));
    if reachable {
        let m = &inst["metrics"];
        let num = |k: &str| m.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        let _ = writeln!(
            o,
            "└── Instance {} (listener {}, up {:.0}s)",
            inst["instance"]["instance_id"].as_str().unwrap_or("?"),
            inst["instance"]["listener_id"].as_str().unwrap_or("?"),
            inst["uptime_seconds"].as_f64().unwrap_or(0.0)
        );
        let _ = writeln!(
            o,
            "    ├── Observers Registered: {}",
            inst["instance"]["observers"]
        );
        let _ = writeln!(o, "    ├── Events Processed: {}", num("events_processed"));
        let _ = writeln!(
            o,
            "    ├── Events/sec (1min avg): {:.1}",
            inst["events_per_second"].as_f64().unwrap_or(0.0)
        );
        if let Some(p99) = m
            .get("event_processing_p99_seconds")
            .and_then(Value::as_f64)
        {
            let _ = writeln!(o, "    ├── Event Processing (p99): {:.1}ms", p99 * 1000.0);
        }
        let actions = m.get("actions").cloned().unwrap_or(Value::Null);
        let _ = writeln!(
            o,
            "    ├── Actions: {} ok, {} dead-lettered",
            actions
                .get("success")
                .and_then(Value::as_f64)
                .unwrap_or(0.0),
            actions
                .get("dead_lettered")
                .and_then(Value::as_f64)
                .unwrap_or(0.0)
        );
        render_parts(o, inst);
        let open = inst["breakers"]
            .as_array()
            .map(|b| {
                b.iter()
                    .filter(|x| x["state"] != "closed")
                    .filter_map(|x| x["endpoint"].as_str().map(str::to_owned))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "    └── Breakers Not Closed: {}",
            if open.is_empty() {
                "none".to_owned()
            } else {
                open.join(", ")
            }
        );
    } else {
        let _ = writeln!(
            o,
            "└── Instance: not reachable at {} ({})",
            inst["url"].as_str().unwrap_or("?"),
            inst["error"].as_str().unwrap_or("?")
        );
    }
}

/// The job queue, per queue with live jobs.
fn render_jobs(o: &mut String, jobs: &[observers_queue::QueueDepth]) {
    use std::fmt::Write as _;
    if jobs.is_empty() {
        return;
    }
    let _ = writeln!(o, "├── Job Queue");
    for (i, q) in jobs.iter().enumerate() {
        let branch = if i + 1 == jobs.len() {
            "└──"
        } else {
            "├──"
        };
        let oldest = q
            .oldest_pending_age_seconds
            .map_or_else(String::new, |a| format!(", oldest waiting {a:.1}s"));
        let _ = writeln!(
            o,
            "│   {branch} {}: {} pending, {} processing, {} failed{oldest}",
            q.queue, q.pending, q.processing, q.failed
        );
    }
}

/// The instance's optional parts (cache, search, Redis fallback), each when it runs.
fn render_parts(o: &mut String, inst: &Value) {
    use std::fmt::Write as _;
    let n = |v: &Value| v.as_f64().unwrap_or(0.0);
    let cache = &inst["cache"];
    if cache.is_object() {
        let ratio = cache["hit_ratio"].as_f64().map_or_else(
            || "no lookups yet".to_owned(),
            |r| format!("{:.0}%", r * 100.0),
        );
        let _ = writeln!(
            o,
            "    ├── Cache ({}): Hit Rate {ratio} ({} hits, {} misses)",
            cache["backend"].as_str().unwrap_or("?"),
            n(&cache["hits"]),
            n(&cache["misses"])
        );
    }
    let search = &inst["search"];
    if search.is_object() {
        let _ = writeln!(
            o,
            "    ├── Search ({}): {} indexed, {} dropped, {} failed",
            search["backend"].as_str().unwrap_or("?"),
            n(&search["indexed"]),
            n(&search["dropped"]),
            n(&search["failed"])
        );
    }
    let redis = &inst["redis"];
    if redis.is_object() {
        let active = if redis["fallback_active"] == Value::Bool(true) {
            "FALLBACK ACTIVE"
        } else {
            "on Redis"
        };
        let health = if redis["healthy"] == Value::Bool(true) {
            "healthy"
        } else {
            "UNHEALTHY"
        };
        let _ = writeln!(
            o,
            "    ├── Redis: {active}, {health}, replay backlog {}",
            n(&redis["replay_backlog"])
        );
    }
}

/// The config's `[metrics] listen`, when a config is given and sets one.
pub fn configured_listen(config: Option<&Path>) -> CliResult<Option<String>> {
    match config {
        Some(p) => Ok(super::load_config(p)?.metrics.listen),
        None => Ok(None),
    }
}
