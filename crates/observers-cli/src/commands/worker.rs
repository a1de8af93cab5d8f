//! `observers worker --config FILE`: job workers alone (no listener), for other machines.
//! SIGTERM or Ctrl-C stops them gracefully: running jobs finish, held jobs are released.

use std::path::Path;
use std::sync::Arc;

use observers_core::telemetry::CountingTelemetry;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use super::{engine, queue};
use crate::{CliResult, Exit};

pub async fn run(config_path: &Path, workers: Option<usize>) -> CliResult {
    let config = super::load_config(config_path)?;
    let workers = workers.unwrap_or(config.queue.workers);
    if workers == 0 {
        return Err(Exit::usage(anyhow::anyhow!(
            "no workers to run: [queue] workers is 0; set it or pass --workers N"
        )));
    }
    let url = engine::database_url(&config)?;
    let pool = observers_postgres::connect(&url, 8).await?;
    observers_postgres::migrate(&pool).await?;
    let executor = Arc::new(engine::executor(&config, &pool, CountingTelemetry::new())?);
    let (stop_tx, stop_rx) = watch::channel(false);
    let handle = queue::spawn_workers(&config, &pool, &executor, workers, stop_rx);
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stopping: letting running jobs finish");
    let _ = stop_tx.send(true);
    queue::join(handle).await;
    pool.close().await;
    Ok(())
}
