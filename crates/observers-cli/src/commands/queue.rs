//! Job-queue wiring of `observers run` and `observers worker`: the PostgreSQL queue behind
//! `mode = "queued"` actions and the worker pool of `[queue] workers`.

use std::sync::Arc;
use std::time::Duration;

use observers_core::ObserverExecutor;
use observers_core::config::{ActionMode, Config};
use observers_core::executor::ExecutorBuilder;
use observers_core::stores::jobs::JobQueue;
use observers_postgres::PgPool;
use observers_queue::{ActionJobHandler, PostgresJobQueue, WorkerConfig, WorkerPool};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::engine;

/// Whether any action of the config runs through the queue.
pub fn has_queued_actions(config: &Config) -> bool {
    config
        .observers
        .iter()
        .flat_map(|o| &o.actions)
        .any(|a| a.get_ref().mode() == ActionMode::Queued)
}

/// Gives the executor the PostgreSQL job queue when queued actions or workers exist.
pub fn attach(builder: ExecutorBuilder, config: &Config, pool: &PgPool) -> ExecutorBuilder {
    if config.queue.workers > 0 || has_queued_actions(config) {
        let queue: Arc<dyn JobQueue> = Arc::new(PostgresJobQueue::new(pool.clone()));
        builder.jobs(queue)
    } else {
        builder
    }
}

/// Starts `workers` workers (none when 0) that run until `stop` turns true.
pub fn spawn_workers(
    config: &Config,
    pool: &PgPool,
    executor: &Arc<ObserverExecutor>,
    workers: usize,
    stop: watch::Receiver<bool>,
) -> Option<JoinHandle<observers_core::Result<()>>> {
    if workers == 0 {
        return None;
    }
    let mut settings = WorkerConfig::from_config(&config.queue, &engine::instance_id());
    settings.queues = config.served_queues();
    settings.workers = workers;
    settings.shutdown_grace = Duration::from_secs(6);
    tracing::info!(workers, worker_id = %settings.worker_id, queues = ?settings.queues, "job workers started");
    let unserved = config.unserved_queues();
    if !unserved.is_empty() {
        tracing::warn!(queues = ?unserved, "queued actions send jobs to queues these workers do not serve ([queue] queues); run workers for them elsewhere");
    }
    let pool = WorkerPool::new(
        Arc::new(PostgresJobQueue::new(pool.clone())),
        Arc::new(ActionJobHandler::new(executor.clone())),
        settings,
    )
    .with_telemetry(executor.telemetry().clone());
    Some(tokio::spawn(pool.run(stop)))
}

/// Waits for the workers to finish their shutdown.
pub async fn join(workers: Option<JoinHandle<observers_core::Result<()>>>) {
    if let Some(handle) = workers {
        match handle.await {
            Ok(Ok(())) => tracing::info!("job workers stopped"),
            Ok(Err(e)) => tracing::warn!(error = %e, "job workers stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "job workers panicked"),
        }
    }
}
