//! `[source] kind = "wal"` inside `observers run`: the relay that copies the replication slot's
//! stream into the change log (one instance streams a slot at a time; the others wait for it),
//! and a monitor that exports the slot's lag and retained WAL every few seconds.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use observers_core::config::{Config, SourceKind};
use observers_metrics::ObserverMetrics;
use observers_postgres::PgPool;
use observers_postgres::wal::{self, WalRelay, WalSettings};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::CliResult;

/// How often the slot's state is read for the metrics.
const MONITOR_EVERY: Duration = Duration::from_secs(5);

/// The relay settings of `config`.
pub fn settings(config: &Config) -> WalSettings {
    WalSettings {
        slot: config.source.slot.clone(),
        publication: config.source.publication.clone(),
    }
}

/// Starts the relay and the slot monitor when the source kind is `wal`.
pub fn spawn(
    config: &Config,
    url: &str,
    pool: &PgPool,
    metrics: Option<Arc<ObserverMetrics>>,
    stop: watch::Receiver<bool>,
) -> CliResult<Vec<JoinHandle<()>>> {
    if config.source.kind != SourceKind::Wal {
        return Ok(Vec::new());
    }
    let relay = WalRelay::new(pool.clone(), url, settings(config))
        .map_err(|e| crate::Exit::usage(anyhow::anyhow!("[source] kind = \"wal\": {e}")))?;
    let relayed_changes = relay.relayed_changes();
    let slot = config.source.slot.clone();
    let relay_stop = stop.clone();
    let relay_task = tokio::spawn(async move { relay.run(relay_stop).await });
    let monitor_pool = pool.clone();
    let mut monitor_stop = stop;
    let monitor = tokio::spawn(async move {
        let mut reported = 0u64;
        while !*monitor_stop.borrow() {
            if let Some(m) = &metrics {
                let relayed = relayed_changes.load(Ordering::Relaxed);
                m.wal_relayed(&slot, relayed - reported);
                reported = relayed;
                match wal::slot::status(&monitor_pool, &slot).await {
                    Ok(Some(s)) => m.set_wal_slot(
                        &slot,
                        s.lag_bytes.unwrap_or(0),
                        s.retained_bytes.unwrap_or(0),
                    ),
                    Ok(None) => {}
                    Err(e) => tracing::debug!(error = %e, "reading the replication slot failed"),
                }
            }
            tokio::select! {
                () = tokio::time::sleep(MONITOR_EVERY) => {}
                _ = monitor_stop.changed() => {}
            }
        }
    });
    Ok(vec![relay_task, monitor])
}
