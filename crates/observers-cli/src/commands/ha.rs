//! HA wiring of the CLI: `observers run` with `[ha] enabled = true` (one listener per held
//! partition, fenced checkpoints, leases released on SIGTERM), and `observers ha status`, the
//! group status that `observers status` and the ops server's `/status` also show.

use std::fmt::Write as _;
use std::sync::Arc;

use clap::Subcommand;
use observers_core::ObserverExecutor;
use observers_core::config::Config;
use observers_ha::{GroupStatus, HaRuntime, MultiListenerConfig};
use observers_postgres::PgPool;
use tokio::sync::watch;

use super::{db, engine};
use crate::output::{self, Format};
use crate::{CliResult, Exit};

#[derive(Debug, Subcommand)]
pub enum HaCommand {
    /// The HA group of --config: leader, instances, partition leases and their lag.
    Status {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

/// Connections `observers run` needs: the single listener, or with HA two per partition on top
/// (reads and fenced saves run concurrently).
pub fn pool_size(config: &Config) -> u32 {
    if config.ha.enabled {
        8 + 2 * config.source.partitions.min(64)
    } else {
        8
    }
}

/// Refuses settings only HA can serve.
pub fn check(config: &Config) -> CliResult {
    if config.source.partitions > 1 && !config.ha.enabled {
        return Err(Exit::usage(anyhow::anyhow!(
            "[source] partitions = {} needs [ha] enabled = true: partitions are shared out \
             through leases",
            config.source.partitions
        )));
    }
    Ok(())
}

/// `observers run` with `[ha] enabled = true`, until `stop` turns true.
pub async fn run_group(
    config: &Config,
    pool: &PgPool,
    executor: Arc<ObserverExecutor>,
    stop: watch::Receiver<bool>,
) -> CliResult {
    let ha = MultiListenerConfig::from_config(config).map_err(Exit::usage)?;
    let runtime = HaRuntime::new(pool.clone(), ha, executor, engine::listener_config(config));
    let summary = runtime.run(stop).await?;
    tracing::info!(
        events = summary.events,
        acquisitions = summary.acquisitions,
        step_downs = summary.step_downs,
        "stopped cleanly; leases released"
    );
    Ok(())
}

pub async fn run(cmd: HaCommand, db: &db::DbArgs) -> CliResult {
    let HaCommand::Status { format } = cmd;
    let path = db.config.clone().ok_or_else(|| {
        Exit::usage(anyhow::anyhow!(
            "give the config file with --config FILE: it names the group and the partitions"
        ))
    })?;
    let config = super::load_config(&path)?;
    let pool = db.migrated_pool().await?;
    let status = group_status(&config, &pool).await?;
    match format {
        Format::Json => output::json(&status),
        Format::Text => {
            print!("{}", render(&status));
            Ok(())
        }
    }
}

/// The status of the HA group a config names.
pub async fn group_status(config: &Config, pool: &PgPool) -> CliResult<GroupStatus> {
    let ha = MultiListenerConfig::from_config(config).map_err(Exit::usage)?;
    Ok(GroupStatus::load(pool, &ha).await?)
}

/// The text form of a group status.
pub fn render(s: &GroupStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "group {} (consumer {}, {} partition(s))",
        s.group, s.consumer, s.partitions
    );
    match &s.leader {
        Some(l) => {
            let _ = writeln!(out, "leader: {} (epoch {})", l.holder, l.epoch);
        }
        None => out.push_str("leader: none\n"),
    }
    out.push_str("instances:\n");
    if s.instances.is_empty() {
        out.push_str("  none registered\n");
    }
    for i in &s.instances {
        let _ = writeln!(
            out,
            "  {:<28} {:<12} heartbeat {:>6.1}s ago  partitions {:?}{}",
            i.instance_id,
            i.state,
            i.heartbeat_age_secs,
            i.partitions,
            if i.is_leader { "  (leader)" } else { "" }
        );
    }
    out.push_str("partitions:\n");
    for lag in &s.lag {
        let lease = s
            .leases
            .iter()
            .find(|l| l.name.ends_with(&format!("/{}", lag.partition)));
        let holder = lease.map_or_else(
            || "unheld".to_owned(),
            |l| format!("{} (epoch {})", l.holder, l.epoch),
        );
        let _ = writeln!(
            out,
            "  {:>3} {:<24} cursor {:<20} lag {} row(s), oldest {:.1}s  held by {}",
            lag.partition,
            lag.cursor_name,
            lag.cursor.as_deref().unwrap_or("none"),
            lag.rows,
            lag.oldest_age_secs,
            holder
        );
    }
    if !s.failovers.is_empty() {
        out.push_str("recent failovers:\n");
        for f in &s.failovers {
            let _ = writeln!(
                out,
                "  {} {} failed (partitions {:?}), detected by {}",
                f.detected_at.format("%Y-%m-%d %H:%M:%S"),
                f.failed_instance,
                f.partitions,
                f.detected_by
            );
        }
    }
    out
}

/// Whether this instance runs the group's single-instance tasks (`what`: retention, the WAL
/// relay): without HA, always; with HA, when it is the group's leader.
pub async fn leads(config: &Config, pool: &PgPool, what: &str) -> bool {
    if !config.ha.enabled {
        return true;
    }
    let Ok(me) = observers_ha::MultiListenerConfig::from_config(config) else {
        return false;
    };
    match group_status(config, pool).await {
        Ok(group) => group
            .instances
            .iter()
            .any(|i| i.instance_id == me.listener_id && i.is_leader),
        Err(e) => {
            tracing::debug!(error = %format!("{:#}", e.error), task = what, "reading the HA group failed");
            false
        }
    }
}
