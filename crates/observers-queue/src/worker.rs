//! The worker pool: one fetcher per queue dequeues batches into a bounded local buffer, up to
//! `workers` jobs run at once, completions are written in batches, heartbeats keep held jobs
//! alive, stale jobs of dead workers are rescued, failures retry through `run_at` with
//! exponential backoff and jitter, and exhausted or permanent failures end failed (the handler
//! dead-letters them). Shutdown stops fetching, lets running jobs finish within a grace
//! period, and gives every job it still holds back to the queue.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::any::Any;
use std::panic::AssertUnwindSafe;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use futures::FutureExt;
use observers_core::config::QueueConfig;
use observers_core::retry::RetryPolicy;
use observers_core::stores::jobs::{Job, JobQueue, JobStatus, stale_error};
use observers_core::telemetry::{NoopTelemetry, SharedTelemetry, TelemetryEvent};
use observers_core::{ObserverError, Result};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::JoinSet;

/// Runs a job's work. `Err` with a transient error retries (while attempts remain); a
/// permanent error fails the job at once.
#[async_trait]
pub trait JobHandler: Send + Sync {
    async fn run(&self, job: &Job) -> Result<()>;

    /// Called once when a job fails for good (attempts exhausted or permanent error), after
    /// the queue recorded it. Writing the DLQ item is the handler's business.
    async fn dead_letter(&self, _job: &Job, _error: &ObserverError) -> Result<()> {
        Ok(())
    }
}

/// Settings of a pool.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Names this pool in `worker_id` (the holder of its jobs); unique per pool.
    pub worker_id: String,
    pub queues: Vec<String>,
    /// Jobs run at once (at least one).
    pub workers: usize,
    /// Jobs per dequeue; the pool holds at most `workers + 2 × batch_size` jobs.
    pub batch_size: usize,
    /// Dequeues in flight per queue (at least one). A second one keeps the database busy
    /// while the first batch is decoded and handed out (about 10 % more jobs/s in
    /// `queue_bench`); batches may then start out of priority order with each other.
    pub fetchers: usize,
    /// Backoff between attempts (its `max_attempts` is unused: each job carries its own).
    pub retry: RetryPolicy,
    pub heartbeat_interval: Duration,
    pub stale_after: Duration,
    pub poll_interval: Duration,
    /// How long running jobs may take to finish after stop; then they are released.
    pub shutdown_grace: Duration,
}

impl WorkerConfig {
    /// From `[queue]`, with a fresh worker id under `instance`. With no `queues` listed the
    /// pool serves `default`; `observers run` passes [`Config::served_queues`] instead, which
    /// adds the queues the config's actions name.
    ///
    /// [`Config::served_queues`]: observers_core::config::Config::served_queues
    pub fn from_config(config: &QueueConfig, instance: &str) -> Self {
        let queues = if config.queues.is_empty() {
            vec![observers_core::config::DEFAULT_QUEUE.to_owned()]
        } else {
            config.queues.clone()
        };
        Self {
            worker_id: format!("{instance}:{:08x}", rand::random::<u32>()),
            queues,
            workers: config.workers.max(1),
            batch_size: config.batch_size.max(1),
            fetchers: config.fetchers.max(1),
            retry: RetryPolicy::from(config),
            heartbeat_interval: config.heartbeat_interval,
            stale_after: config.stale_after,
            poll_interval: config.poll_interval,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// What a pool did.
#[derive(Debug, Default)]
pub struct PoolStats {
    pub completed: AtomicU64,
    pub retried: AtomicU64,
    pub failed: AtomicU64,
    pub released: AtomicU64,
}

impl PoolStats {
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }
    pub fn retried(&self) -> u64 {
        self.retried.load(Ordering::Relaxed)
    }
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
    pub fn released(&self) -> u64 {
        self.released.load(Ordering::Relaxed)
    }
}

/// A pool of workers over one queue backend.
pub struct WorkerPool {
    queue: Arc<dyn JobQueue>,
    handler: Arc<dyn JobHandler>,
    config: WorkerConfig,
    stats: Arc<PoolStats>,
    telemetry: SharedTelemetry,
}

struct Shared {
    queue: Arc<dyn JobQueue>,
    handler: Arc<dyn JobHandler>,
    config: WorkerConfig,
    stats: Arc<PoolStats>,
    telemetry: SharedTelemetry,
    /// Jobs this pool holds (processing under its worker id).
    held: Mutex<HashSet<i64>>,
    /// Wakes fetchers early (a local retry fell due sooner than the poll).
    wake: Notify,
}

impl Shared {
    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<i64>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn forget(&self, ids: &[i64]) {
        let mut held = self.held();
        for id in ids {
            held.remove(id);
        }
    }
}

impl WorkerPool {
    pub fn new(
        queue: Arc<dyn JobQueue>,
        handler: Arc<dyn JobHandler>,
        config: WorkerConfig,
    ) -> Self {
        Self {
            queue,
            handler,
            config,
            stats: Arc::new(PoolStats::default()),
            telemetry: Arc::new(NoopTelemetry),
        }
    }

    /// Reports every finished run as [`TelemetryEvent::JobFinished`].
    #[must_use]
    pub fn with_telemetry(mut self, telemetry: SharedTelemetry) -> Self {
        self.telemetry = telemetry;
        self
    }

    pub fn stats(&self) -> Arc<PoolStats> {
        self.stats.clone()
    }

    pub fn worker_id(&self) -> &str {
        &self.config.worker_id
    }

    /// Runs until `stop` turns true, then shuts down gracefully.
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> Result<()> {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let batch = self.config.batch_size.max(1);
        let shared = Arc::new(Shared {
            queue: self.queue,
            handler: self.handler,
            config: self.config,
            stats: self.stats,
            telemetry: self.telemetry,
            held: Mutex::new(HashSet::new()),
            wake: Notify::new(),
        });
        let completer = tokio::spawn(completer(shared.clone(), done_rx));
        let (job_tx, mut job_rx) = mpsc::channel::<Job>(2 * batch);
        let (halt_tx, halt_rx) = watch::channel(false);
        let mut background = JoinSet::new();
        for queue in &shared.config.queues {
            for _ in 0..shared.config.fetchers.max(1) {
                background.spawn(fetcher(
                    shared.clone(),
                    queue.clone(),
                    job_tx.clone(),
                    halt_rx.clone(),
                ));
            }
        }
        drop(job_tx);
        background.spawn(heartbeats(shared.clone(), halt_rx.clone()));

        let permits = Arc::new(Semaphore::new(shared.config.workers.max(1)));
        let mut running = JoinSet::new();
        let mut stop_waiting = stop.clone();
        loop {
            tokio::select! {
                biased;
                () = stopped(&mut stop) => break,
                job = job_rx.recv() => {
                    let Some(job) = job else { break };
                    let permit = tokio::select! {
                        p = permits.clone().acquire_owned() => p,
                        () = stopped(&mut stop_waiting) => {
                            release(&shared, &[job.id]).await;
                            break;
                        }
                    };
                    let Ok(permit) = permit else { break };
                    let shared = shared.clone();
                    let done = done_tx.clone();
                    running.spawn(async move {
                        let id = job.id;
                        // The action's own panics are caught in `run_one` and fail the job;
                        // this catches the rest (recording the outcome), so the job is no
                        // longer heartbeated and its slot is freed: it is rescued when stale.
                        let run = AssertUnwindSafe(run_one(&shared, job, &done)).catch_unwind();
                        if let Err(panic) = run.await {
                            shared.forget(&[id]);
                            tracing::error!(job = id, panic = panic_message(panic.as_ref()), "job bookkeeping panicked; the job will be rescued when stale");
                        }
                        drop(permit);
                    });
                    while let Some(joined) = running.try_join_next() {
                        if let Err(e) = joined && e.is_panic() {
                            tracing::error!(error = %e, "a job task panicked");
                        }
                    }
                }
            }
        }

        // Shutdown: stop fetching, give back what has not started, let running jobs finish.
        let _ = halt_tx.send(true);
        job_rx.close();
        let mut unstarted = Vec::new();
        while let Some(job) = job_rx.recv().await {
            unstarted.push(job.id);
        }
        while background.join_next().await.is_some() {}
        release(&shared, &unstarted).await;
        let grace = shared.config.shutdown_grace;
        let finished = tokio::time::timeout(grace, async {
            while running.join_next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            tracing::warn!(
                ?grace,
                "jobs still running after the shutdown grace; releasing them to the queue"
            );
            running.shutdown().await;
        }
        drop(done_tx);
        let _ = completer.await;
        let left: Vec<i64> = shared.held().iter().copied().collect();
        if !left.is_empty() {
            match shared.queue.release(&shared.config.worker_id, &left).await {
                Ok(n) => {
                    shared.stats.released.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(error = %e, jobs = left.len(), "could not release jobs at shutdown; they will be rescued when stale");
                }
            }
        }
        Ok(())
    }
}

/// Resolves once the flag is true (or its sender is gone); holds no borrow afterwards.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn release(shared: &Shared, ids: &[i64]) {
    if ids.is_empty() {
        return;
    }
    match shared.queue.release(&shared.config.worker_id, ids).await {
        Ok(n) => {
            shared.stats.released.fetch_add(n, Ordering::Relaxed);
            shared.forget(ids);
        }
        Err(e) => {
            tracing::warn!(error = %e, jobs = ids.len(), "could not release jobs; they will be rescued when stale");
        }
    }
}

async fn fetcher(
    shared: Arc<Shared>,
    queue: String,
    tx: mpsc::Sender<Job>,
    mut halt: watch::Receiver<bool>,
) {
    let batch = shared.config.batch_size.max(1);
    let mut backoff = Duration::from_millis(100);
    loop {
        if *halt.borrow() {
            return;
        }
        let slots = tokio::select! {
            s = tx.reserve_many(batch) => match s { Ok(s) => s, Err(_) => return },
            () = stopped(&mut halt) => return,
        };
        let jobs = match shared
            .queue
            .dequeue(&queue, &shared.config.worker_id, batch)
            .await
        {
            Ok(jobs) => {
                backoff = Duration::from_millis(100);
                jobs
            }
            Err(e) => {
                drop(slots);
                tracing::warn!(error = %e, queue, ?backoff, "dequeue failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stopped(&mut halt) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        let got = jobs.len();
        {
            let mut held = shared.held();
            held.extend(jobs.iter().map(|j| j.id));
        }
        for (slot, job) in slots.zip(jobs) {
            slot.send(job);
        }
        if got == batch {
            continue;
        }
        // Drained: sleep until woken, the next scheduled job falls due, or the poll interval.
        let mut wait = shared.config.poll_interval;
        if got == 0
            && let Ok(Some(at)) = shared.queue.next_run_at(&queue).await
        {
            let until = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            wait = wait.min(until.saturating_add(Duration::from_millis(5)));
        }
        if got > 0 || wait.is_zero() {
            continue;
        }
        tokio::select! {
            _ = shared.queue.wait_for_jobs(wait) => {}
            () = shared.wake.notified() => {}
            () = stopped(&mut halt) => return,
        }
    }
}

async fn heartbeats(shared: Arc<Shared>, mut halt: watch::Receiver<bool>) {
    let every = shared.config.heartbeat_interval;
    let mut since_rescue = Duration::ZERO;
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stopped(&mut halt) => return,
        }
        let ids: Vec<i64> = shared.held().iter().copied().collect();
        if let Err(e) = shared.queue.heartbeat(&shared.config.worker_id, &ids).await {
            tracing::warn!(error = %e, jobs = ids.len(), "heartbeat failed");
        }
        since_rescue += every;
        if since_rescue >= shared.config.stale_after / 2 {
            since_rescue = Duration::ZERO;
            match shared.queue.rescue_stale(shared.config.stale_after).await {
                Ok(rescued) => {
                    if rescued.total() > 0 {
                        tracing::info!(
                            requeued = rescued.requeued,
                            failed = rescued.failed.len(),
                            "rescued stale jobs"
                        );
                    }
                    for job in &rescued.failed {
                        shared.stats.failed.fetch_add(1, Ordering::Relaxed);
                        let err = stale_error(job);
                        tracing::warn!(job = job.id, kind = %job.kind, attempts = job.attempts, error = %err, "job failed for good");
                        if let Err(e) = shared.handler.dead_letter(job, &err).await {
                            tracing::error!(job = job.id, error = %e, "could not dead-letter a failed job");
                        }
                    }
                    if !rescued.failed.is_empty() {
                        // Later jobs of their groups may run now.
                        shared.wake.notify_waiters();
                    }
                }
                Err(e) => tracing::warn!(error = %e, "stale-job rescue failed"),
            }
        }
    }
}

/// Writes completions in batches: whatever has accumulated while the last write ran.
async fn completer(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<i64>) {
    let mut buf = Vec::with_capacity(1024);
    while rx.recv_many(&mut buf, 2048).await > 0 {
        let mut attempt = 0;
        let written = loop {
            attempt += 1;
            match shared
                .queue
                .complete_many(&shared.config.worker_id, &buf)
                .await
            {
                Ok(n) => break n,
                Err(e) if attempt < 5 && e.is_transient() => {
                    tracing::warn!(error = %e, "completing jobs failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, jobs = buf.len(), "could not mark jobs completed; they will run again when rescued");
                    break 0;
                }
            }
        };
        let asked = u64::try_from(buf.len()).unwrap_or(u64::MAX);
        if written < asked {
            tracing::warn!(
                jobs = asked - written,
                "completed jobs this worker no longer held (rescued and re-taken, or purged); their completion was not recorded"
            );
        }
        shared.stats.completed.fetch_add(written, Ordering::Relaxed);
        shared.forget(&buf);
        buf.clear();
        // Later jobs of the completed jobs' groups may run now.
        shared.wake.notify_waiters();
    }
}

async fn run_one(shared: &Shared, job: Job, done: &mpsc::UnboundedSender<i64>) {
    let started = Instant::now();
    let result = match AssertUnwindSafe(shared.handler.run(&job))
        .catch_unwind()
        .await
    {
        Ok(result) => result,
        Err(panic) => Err(ObserverError::permanent(
            "OBS-JOB-PANIC",
            format!(
                "the action panicked: {} (a bug: the job is not retried; report it)",
                panic_message(panic.as_ref())
            ),
        )),
    };
    let outcome = match result {
        Ok(()) => {
            if done.send(job.id).is_err() {
                tracing::warn!(job = job.id, "completion channel closed");
            }
            "completed"
        }
        Err(err) => fail(shared, &job, &err).await,
    };
    shared.telemetry.emit(&TelemetryEvent::JobFinished {
        queue: &job.queue,
        outcome,
        duration: started.elapsed(),
    });
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// What follows a failed run.
#[derive(Debug)]
enum Next {
    Retry(DateTime<Utc>),
    /// Failed for good, with the error to record when it differs from the run's.
    GiveUp(Option<ObserverError>),
}

/// `now + delay`, saturating at the latest instant representable (never a panic, whatever
/// the delay).
fn saturating_add(now: DateTime<Utc>, delay: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(delay)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Retry after the backoff, or after `Retry-After` when the endpoint asks for longer, while
/// attempts remain. A `Retry-After` beyond `max_backoff` gives up at once (as inline retries
/// do): the wait may be any number a remote sends, and a job parked for centuries is lost
/// from sight; the DLQ item is retried by an operator instead.
fn next_step(policy: &RetryPolicy, job: &Job, err: &ObserverError, now: DateTime<Utc>) -> Next {
    if !err.is_transient() || job.attempts >= job.max_attempts {
        return Next::GiveUp(None);
    }
    let backoff = policy.delay(job.attempts);
    let delay = match err.retry_after() {
        Some(wait) if wait > policy.max_backoff => {
            let message = match err {
                ObserverError::ActionTransient { message, .. } => message.as_str(),
                _ => "",
            };
            return Next::GiveUp(Some(ObserverError::permanent(
                err.code(),
                format!(
                    "{message}; the endpoint asked to wait {}s (Retry-After), more than \
                     [queue] max_backoff ({}s): failed for good (retry it from the DLQ)",
                    wait.as_secs(),
                    policy.max_backoff.as_secs()
                ),
            )));
        }
        Some(wait) => backoff.max(wait),
        None => backoff,
    };
    Next::Retry(saturating_add(now, delay))
}

/// Records a failed run; returns the telemetry outcome (`retried` or `failed`).
async fn fail(shared: &Shared, job: &Job, err: &ObserverError) -> &'static str {
    let (retry_at, given_up) = match next_step(&shared.config.retry, job, err, Utc::now()) {
        Next::Retry(at) => (Some(at), None),
        Next::GiveUp(e) => (None, e),
    };
    let err = given_up.as_ref().unwrap_or(err);
    let message = err.to_string();
    let outcome = shared
        .queue
        .fail(&shared.config.worker_id, job.id, &message, retry_at)
        .await;
    shared.forget(&[job.id]);
    match outcome {
        Ok(JobStatus::Pending) => {
            shared.stats.retried.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(job = job.id, attempt = job.attempts, error = %message, ?retry_at, "job failed; retry scheduled");
            shared.wake.notify_waiters();
            "retried"
        }
        Ok(_) => {
            shared.stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(job = job.id, kind = %job.kind, attempts = job.attempts, error = %message, "job failed for good");
            if let Err(e) = shared.handler.dead_letter(job, err).await {
                tracing::error!(job = job.id, error = %e, "could not dead-letter a failed job");
            }
            // Later jobs of its group may run now.
            shared.wake.notify_waiters();
            "failed"
        }
        Err(e) => {
            tracing::warn!(job = job.id, error = %e, "could not record a job failure (or this worker no longer holds the job); it runs again when rescued");
            "retried"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use observers_core::stores::jobs::{MemoryJobQueue, NewJob};
    use serde_json::json;
    use std::sync::atomic::AtomicU32;

    /// Fails the first attempt of every job transiently, then succeeds.
    #[derive(Default)]
    struct FlakyOnce {
        runs: AtomicU32,
    }

    #[async_trait]
    impl JobHandler for FlakyOnce {
        async fn run(&self, job: &Job) -> Result<()> {
            self.runs.fetch_add(1, Ordering::SeqCst);
            if job.attempts == 1 {
                return Err(ObserverError::transient("OBS-TEST", "first attempt fails"));
            }
            Ok(())
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 8,
            initial_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(3600),
            multiplier: 5.0,
            jitter: false,
        }
    }

    fn held(attempts: u32, max_attempts: u32) -> Job {
        let at = Utc::now();
        Job {
            id: 1,
            queue: "default".into(),
            kind: "webhook".into(),
            payload: json!({}),
            unique_key: None,
            priority: 0,
            run_at: at,
            attempts,
            max_attempts,
            status: JobStatus::Processing,
            last_error: None,
            locked_by: Some("w".into()),
            heartbeat_at: None,
            created_at: at,
            group_key: None,
        }
    }

    fn transient(retry_after: Option<Duration>) -> ObserverError {
        ObserverError::ActionTransient {
            code: "OBS-HTTP-5XX",
            message: "webhook answered HTTP 503".into(),
            retry_after,
        }
    }

    #[test]
    fn next_step_saturates_and_bounds_retry_after() {
        let now = Utc::now();
        let p = policy();
        let secs = |s: i64| now + TimeDelta::seconds(s);
        let cases: Vec<(u32, ObserverError, Next)> = vec![
            (1, transient(None), Next::Retry(secs(5))),
            (2, transient(None), Next::Retry(secs(25))),
            (
                1,
                transient(Some(Duration::from_secs(60))),
                Next::Retry(secs(60)),
            ),
            (
                2,
                transient(Some(Duration::from_secs(1))),
                Next::Retry(secs(25)),
            ),
            (8, transient(None), Next::GiveUp(None)),
            (
                1,
                ObserverError::permanent("OBS-HTTP-4XX", "400"),
                Next::GiveUp(None),
            ),
        ];
        for (attempts, err, want) in cases {
            let got = next_step(&p, &held(attempts, 8), &err, now);
            assert_eq!(format!("{got:?}"), format!("{want:?}"), "{attempts} {err}");
        }
        for huge in [
            Duration::from_secs(9_000_000_000_000),
            Duration::from_secs(u64::MAX),
            Duration::MAX,
            Duration::from_secs(3601),
        ] {
            let Next::GiveUp(Some(e)) = next_step(&p, &held(1, 8), &transient(Some(huge)), now)
            else {
                panic!("{huge:?} is not given up");
            };
            assert!(!e.is_transient());
            assert_eq!(e.code(), "OBS-HTTP-5XX");
            assert!(e.to_string().contains("Retry-After"), "{e}");
        }
        assert_eq!(saturating_add(now, Duration::MAX), DateTime::<Utc>::MAX_UTC);
        assert_eq!(
            saturating_add(DateTime::<Utc>::MAX_UTC, Duration::from_secs(1)),
            DateTime::<Utc>::MAX_UTC
        );
        // A huge max_backoff (configuration, not remote) saturates instead of panicking.
        let wide = RetryPolicy {
            max_backoff: Duration::MAX,
            initial_backoff: Duration::MAX,
            ..policy()
        };
        assert!(matches!(
            next_step(&wide, &held(1, 8), &transient(Some(Duration::MAX)), now),
            Next::Retry(at) if at == DateTime::<Utc>::MAX_UTC
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pool_over_the_memory_queue_retries_and_completes_every_job() {
        let queue = Arc::new(MemoryJobQueue::new());
        for n in 0..40 {
            queue
                .enqueue(NewJob::new("default", "test", json!({ "n": n })))
                .await
                .unwrap();
        }
        let handler = Arc::new(FlakyOnce::default());
        let config = WorkerConfig {
            worker_id: "w".into(),
            queues: vec!["default".into()],
            workers: 3,
            batch_size: 8,
            fetchers: 2,
            retry: RetryPolicy {
                max_attempts: 3,
                initial_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(5),
                multiplier: 2.0,
                jitter: false,
            },
            heartbeat_interval: Duration::from_millis(50),
            stale_after: Duration::from_secs(5),
            poll_interval: Duration::from_millis(20),
            shutdown_grace: Duration::from_secs(5),
        };
        let pool = WorkerPool::new(queue.clone(), handler.clone(), config);
        let stats = pool.stats();
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(pool.run(rx));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while queue.stats().await.unwrap().completed < 40 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "jobs did not complete"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.send(true).unwrap();
        task.await.unwrap().unwrap();
        assert_eq!(handler.runs.load(Ordering::SeqCst), 80, "two runs per job");
        assert_eq!(
            (stats.completed(), stats.retried(), stats.failed()),
            (40, 40, 0)
        );
        let s = queue.stats().await.unwrap();
        assert_eq!((s.pending, s.processing, s.failed), (0, 0, 0));
    }
}
