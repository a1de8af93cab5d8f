//! `[source] kind = "wal"` inside `observers run`: the relay that copies the replication slot's
//! stream into the change log (or, with `wal_delivery = "direct"`, the consumer that delivers
//! from the stream), and a monitor that exports the slot's lag and retained WAL every
//! few seconds. Under HA only the group's leader runs the relay: it starts when this instance
//! becomes the leader and stops when it no longer is. (PostgreSQL lets one connection stream a
//! slot at a time, and each relay transaction checks and advances the slot's progress row under
//! a row lock, so even a paused former leader that wakes up cannot copy a change twice or skip
//! one.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use observers_core::ObserverExecutor;
use observers_core::config::{Config, SourceKind, WalDelivery};
use observers_core::listener::sleep_or_shutdown;
use observers_metrics::ObserverMetrics;
use observers_postgres::PgPool;
use observers_postgres::wal::direct::{WalDirect, WalDirectListener};
use observers_postgres::wal::{self, WalRelay, WalSettings};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::CliResult;

/// How often the slot's state is read for the metrics.
const MONITOR_EVERY: Duration = Duration::from_secs(5);

/// Under HA, how often the relay's instance checks that it still leads (at most this often; the
/// group's renew interval when that is shorter).
const LEADER_CHECK: Duration = Duration::from_secs(1);

/// The relay settings of `config`.
pub fn settings(config: &Config) -> WalSettings {
    WalSettings {
        slot: config.source.slot.clone(),
        publication: config.source.publication.clone(),
    }
}

/// Whether the config delivers from the stream (`kind = "wal"`, `wal_delivery = "direct"`).
pub fn is_direct(config: &Config) -> bool {
    config.source.kind == SourceKind::Wal && config.source.wal_delivery == WalDelivery::Direct
}

/// A direct consumer of the slot counting in `counter`; under HA its saves are fenced by the
/// group's leader lease.
fn direct_listener(
    config: &Config,
    url: &str,
    pool: &PgPool,
    executor: Arc<ObserverExecutor>,
    counter: &Arc<AtomicU64>,
) -> CliResult<WalDirectListener> {
    let mut direct = WalDirect::new(
        pool.clone(),
        url,
        settings(config),
        &config.source.listener_id,
        Some(super::engine::instance_id()),
    )
    .map_err(|e| crate::Exit::usage(anyhow::anyhow!("[source] kind = \"wal\": {e}")))?
    .with_counter(counter.clone());
    if config.ha.enabled {
        let me =
            observers_ha::MultiListenerConfig::from_config(config).map_err(crate::Exit::usage)?;
        direct = direct.with_fence(me.leader_lease(), me.listener_id);
    }
    Ok(WalDirectListener::new(
        direct,
        executor,
        &super::engine::listener_config(config),
    ))
}

/// Delivers from the stream (`wal_delivery = "direct"`) until `stop`: at once without HA;
/// under HA while this instance leads its group, like the relay (a former leader's stream is
/// ended first, and a save after the lease was lost is refused).
pub async fn run_direct(
    config: &Config,
    url: &str,
    pool: &PgPool,
    executor: &Arc<ObserverExecutor>,
    counter: &Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> CliResult {
    if !config.ha.enabled {
        let listener = direct_listener(config, url, pool, executor.clone(), counter)?;
        let stats = listener.run(stop).await?;
        tracing::info!(cursor = %stats.cursor, events = stats.events, "WAL stream stopped cleanly");
        return Ok(());
    }
    let every = LEADER_CHECK.min(config.ha.renew_interval);
    while !*stop.borrow() {
        if !super::ha::leads(config, pool, "WAL stream").await {
            sleep_or_shutdown(every, &mut stop).await;
            continue;
        }
        tracing::info!(slot = %config.source.slot, "this instance leads the group: starting the WAL stream");
        end_former_stream(config, pool).await;
        let listener = direct_listener(config, url, pool, executor.clone(), counter)?;
        let (session_stop, session_rx) = watch::channel(false);
        let mut task = tokio::spawn(async move { listener.run(session_rx).await });
        let ended = loop {
            tokio::select! {
                ended = &mut task => break Some(ended),
                () = sleep_or_shutdown(every, &mut stop) => {}
            }
            if *stop.borrow() || !super::ha::leads(config, pool, "WAL stream").await {
                break None;
            }
        };
        if !*stop.borrow() {
            tracing::info!(slot = %config.source.slot, "this instance no longer leads the group: stopping the WAL stream");
        }
        let _ = session_stop.send(true);
        let ended = match ended {
            Some(ended) => ended,
            None => task.await,
        };
        match ended {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the WAL stream's consumer stopped"),
            Err(e) => tracing::warn!(error = %e, "the WAL stream's consumer failed"),
        }
    }
    Ok(())
}

/// Ends the slot's stream of a former leader (paused, or cut off from the group), which would
/// hold the slot until the server's `wal_sender_timeout`.
async fn end_former_stream(config: &Config, pool: &PgPool) {
    match wal::slot::end_stream(pool, &config.source.slot).await {
        Ok(Some(pid)) => tracing::warn!(slot = %config.source.slot, pid,
            "ended the replication connection of a former leader's relay"),
        Ok(None) => {}
        Err(e) => tracing::warn!(slot = %config.source.slot, error = %e,
            "could not end the slot's current stream; waiting for it instead"),
    }
}

/// Starts the relay (unless `streamed` counts a direct consumer's changes) and the slot
/// monitor when the source kind is `wal`.
pub fn spawn(
    config: &Config,
    url: &str,
    pool: &PgPool,
    metrics: Option<Arc<ObserverMetrics>>,
    streamed: Option<Arc<AtomicU64>>,
    stop: watch::Receiver<bool>,
) -> CliResult<Vec<JoinHandle<()>>> {
    if config.source.kind != SourceKind::Wal {
        return Ok(Vec::new());
    }
    let mut tasks = Vec::new();
    let relayed_changes = if let Some(streamed) = streamed {
        streamed
    } else {
        {
            let relay = WalRelay::new(pool.clone(), url, settings(config))
                .map_err(|e| crate::Exit::usage(anyhow::anyhow!("[source] kind = \"wal\": {e}")))?;
            let relayed_changes = relay.relayed_changes();
            let relay_stop = stop.clone();
            tasks.push(if config.ha.enabled {
                let (config, pool) = (config.clone(), pool.clone());
                tokio::spawn(
                    async move { relay_while_leading(relay, &config, &pool, relay_stop).await },
                )
            } else {
                tokio::spawn(async move { relay.run(relay_stop).await })
            });
            relayed_changes
        }
    };
    let slot = config.source.slot.clone();
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
            sleep_or_shutdown(MONITOR_EVERY, &mut monitor_stop).await;
        }
    });
    tasks.push(monitor);
    Ok(tasks)
}

/// Runs `relay` while this instance leads its HA group, until `stop`.
async fn relay_while_leading(
    relay: WalRelay,
    config: &Config,
    pool: &PgPool,
    mut stop: watch::Receiver<bool>,
) {
    let relay = Arc::new(relay);
    let every = LEADER_CHECK.min(config.ha.renew_interval);
    while !*stop.borrow() {
        if super::ha::leads(config, pool, "WAL relay").await {
            tracing::info!(slot = %config.source.slot, "this instance leads the group: starting the WAL relay");
            // A former leader's writes are fenced by the progress row.
            end_former_stream(config, pool).await;
            let (session_stop, session_rx) = watch::channel(false);
            let task = {
                let relay = relay.clone();
                tokio::spawn(async move { relay.run(session_rx).await })
            };
            loop {
                sleep_or_shutdown(every, &mut stop).await;
                if *stop.borrow() || !super::ha::leads(config, pool, "WAL relay").await {
                    break;
                }
            }
            if !*stop.borrow() {
                tracing::info!(slot = %config.source.slot, "this instance no longer leads the group: stopping the WAL relay");
            }
            let _ = session_stop.send(true);
            let _ = task.await;
        } else {
            sleep_or_shutdown(every, &mut stop).await;
        }
    }
}
