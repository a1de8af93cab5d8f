//! `observers run --config FILE`: the listener, until SIGTERM/Ctrl-C (graceful: in-flight events
//! finish, the checkpoint is saved, exit 0). SIGHUP reloads the config file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use observers_core::config::Config;
use observers_core::{ObserverExecutor, ObserverSet};
use observers_postgres::{ChangeLogListener, PgPool, PostgresCheckpointStore};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use super::{engine, ops, retention};
use crate::CliResult;

/// How long in-flight work may take to finish after SIGTERM before the process exits anyway
/// (unfinished events are re-delivered on the next start).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

pub async fn run(config_path: &Path) -> CliResult {
    let config = super::load_config(config_path)?;
    let url = engine::database_url(&config)?;
    super::ha::check(&config)?;
    let pool = observers_postgres::connect(&url, super::ha::pool_size(&config)).await?;
    observers_postgres::migrate(&pool).await?;
    let (telemetry, metrics) = ops::telemetry(&config);
    let search = super::search::SearchRuntime::start(&config, &pool, &telemetry).await?;
    let executor = Arc::new(
        search
            .attach(engine::executor_builder(&config, &pool, telemetry)?)
            .build(),
    );
    match executor.load_gone_endpoints().await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            disabled = n,
            "endpoints disabled by 410 Gone: their events go to the DLQ (`observers status` lists them, `observers actions enable --url` re-enables)"
        ),
        Err(e) => tracing::warn!(error = %e, "could not read the endpoints disabled by 410 Gone"),
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let retention = retention::spawn(&config, &pool, metrics.clone(), stop_rx.clone());
    // With direct WAL delivery, the changes taken from the stream (for the metrics).
    let direct = super::wal::is_direct(&config).then(|| Arc::new(AtomicU64::new(0)));
    let relay = super::wal::spawn(
        &config,
        &url,
        &pool,
        metrics.clone(),
        direct.clone(),
        stop_rx.clone(),
    )?;
    let mut ops_tasks =
        ops::start(&config, &pool, &executor, metrics, &search, stop_rx.clone()).await?;
    ops_tasks.extend(retention);
    ops_tasks.extend(relay);
    // The queues this process's workers serve are fixed at start.
    let served = if config.queue.workers > 0 {
        config.served_queues()
    } else {
        Vec::new()
    };
    tokio::spawn(signals(
        config_path.to_path_buf(),
        executor.clone(),
        served,
        stop_tx,
    ));
    tracing::info!(
        config = %config_path.display(),
        listener = %config.source.listener_id,
        observers = config.observers.len(),
        "observers running; SIGTERM or Ctrl-C stops, SIGHUP reloads"
    );

    let workers = super::queue::spawn_workers(
        &config,
        &pool,
        &executor,
        config.queue.workers,
        stop_rx.clone(),
    );
    let mut stopping = stop_rx.clone();
    let grace = async move {
        let _ = stopping.wait_for(|s| *s).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let work = async { deliver(&config, &url, &pool, &executor, direct.as_ref(), stop_rx).await };
    tokio::select! {
        result = work => result?,
        () = grace => {
            tracing::warn!("in-flight actions did not finish within {SHUTDOWN_GRACE:?}; they will be re-delivered on the next start");
        }
    }
    for task in ops_tasks {
        let _ = task.await;
    }
    super::queue::join(workers).await;
    search.shutdown().await;
    pool.close().await;
    Ok(())
}

/// Delivers until `stop`: the change log's listeners (the HA group's, or one) and, with direct
/// WAL delivery (`direct` counts its changes), the stream's consumer beside them.
async fn deliver(
    config: &Config,
    url: &str,
    pool: &PgPool,
    executor: &Arc<ObserverExecutor>,
    direct: Option<&Arc<AtomicU64>>,
    stop_rx: watch::Receiver<bool>,
) -> CliResult {
    // With direct WAL delivery the change log still has its listeners: trigger captures,
    // Debezium ingest and what a relay copied before are delivered from it.
    let stream = async {
        match direct {
            Some(counter) => {
                super::wal::run_direct(config, url, pool, executor, counter, stop_rx.clone()).await
            }
            None => Ok(()),
        }
    };
    let change_log = async {
        if config.ha.enabled {
            super::ha::run_group(config, pool, executor.clone(), stop_rx.clone()).await
        } else {
            single(config, pool, executor, stop_rx.clone()).await
        }
    };
    let (change_log, stream) = tokio::join!(change_log, stream);
    change_log.and(stream)
}

/// `observers run` without HA: the change-log listener, until `stop`.
async fn single(
    config: &Config,
    pool: &PgPool,
    executor: &Arc<ObserverExecutor>,
    stop_rx: watch::Receiver<bool>,
) -> CliResult {
    let checkpoints =
        Arc::new(PostgresCheckpointStore::new(pool.clone()).with_instance(engine::instance_id()));
    // A consumer that ran partitioned before reads on from its lowest partition cursor.
    let consumer = config.source.listener_id.as_str();
    checkpoints
        .adopt_partitions(consumer, 1, &[consumer.to_owned()])
        .await?;
    let listener = ChangeLogListener::new(
        pool.clone(),
        checkpoints,
        executor.clone(),
        engine::listener_config(config),
    );
    let stats = listener.run(stop_rx).await?;
    tracing::info!(cursor = %stats.cursor, events = stats.events, "stopped cleanly");
    Ok(())
}

async fn signals(
    config_path: PathBuf,
    executor: Arc<ObserverExecutor>,
    served: Vec<String>,
    stop: watch::Sender<bool>,
) {
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = hup.recv() => reload(&config_path, &executor, &served),
        }
    }
    tracing::info!("stopping: letting in-flight events finish");
    let _ = stop.send(true);
}

/// `served`: the queues this process's workers serve (empty without workers).
fn reload(path: &Path, executor: &ObserverExecutor, served: &[String]) {
    let loaded: Result<(ObserverSet, Vec<String>), String> =
        observers_core::config::load_file(path)
            .map_err(|e| e.to_string())
            .and_then(|c| {
                let set = engine::observer_set(&c).map_err(|e| format!("{:#}", e.error))?;
                Ok((set, c.served_queues()))
            });
    match loaded {
        Ok((set, queues)) => {
            let n = set.observers.len();
            executor.reload(set);
            tracing::info!(observers = n, "config reloaded");
            let unserved: Vec<&String> = queues.iter().filter(|q| !served.contains(q)).collect();
            if !served.is_empty() && !unserved.is_empty() {
                tracing::warn!(queues = ?unserved, "the reloaded config names queues this process's workers do not serve (they are chosen at start); restart to serve them, or serve them elsewhere");
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "config reload refused; the previous config stays in force");
        }
    }
}
