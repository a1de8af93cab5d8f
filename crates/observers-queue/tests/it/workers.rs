//! The worker pool against a real PostgreSQL: exactly-once under concurrency, rescue of a
//! killed worker's job, retry backoff, priorities, permanent failure with a DLQ item, and
//! graceful shutdown.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use observers_core::actions::{Action, ActionResult, Invocation};
use observers_core::config::ActionMode;
use observers_core::executor::{ActionSlot, CompiledObserver};
use observers_core::retry::RetryPolicy;
use observers_core::stores::dlq::{DeadLetterQueue, DlqFilter};
use observers_core::stores::jobs::{Job, JobQueue, JobStatus, NewJob};
use observers_core::{EntityEvent, EventKind, ObserverError, ObserverExecutor, ObserverSet};
use observers_postgres::PostgresDeadLetterQueue;
use observers_queue::{ActionJobHandler, JobHandler, PostgresJobQueue, WorkerConfig, WorkerPool};
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::support::eventually;

const DEADLINE: Duration = Duration::from_secs(60);

fn config(name: &str, workers: usize, batch: usize) -> WorkerConfig {
    WorkerConfig {
        worker_id: name.to_owned(),
        queues: vec!["default".into()],
        workers,
        batch_size: batch,
        fetchers: 1,
        retry: RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            multiplier: 2.0,
            jitter: false,
        },
        heartbeat_interval: Duration::from_millis(200),
        stale_after: Duration::from_secs(2),
        poll_interval: Duration::from_millis(500),
        shutdown_grace: Duration::from_secs(5),
    }
}

fn numbered(n: i64) -> NewJob {
    NewJob::new("default", "test", json!({ "n": n }))
}

/// Records every run per job id, and may fail or hang as told.
#[derive(Default)]
struct Recorder {
    runs: Mutex<Vec<(i64, u32, Instant)>>,
    /// Fail this many attempts transiently before succeeding.
    transient_failures: u32,
    permanent: bool,
    /// Never finish.
    hang: bool,
    delay: Duration,
}

impl Recorder {
    fn runs(&self) -> Vec<(i64, u32, Instant)> {
        self.runs.lock().unwrap().clone()
    }

    fn counts(&self) -> HashMap<i64, usize> {
        let mut counts = HashMap::new();
        for (id, _, _) in self.runs() {
            *counts.entry(id).or_default() += 1;
        }
        counts
    }
}

#[async_trait]
impl JobHandler for Recorder {
    async fn run(&self, job: &Job) -> observers_core::Result<()> {
        self.runs
            .lock()
            .unwrap()
            .push((job.id, job.attempts, Instant::now()));
        if self.hang {
            std::future::pending::<()>().await;
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if self.permanent {
            return Err(ObserverError::permanent("OBS-TEST", "bad request"));
        }
        if job.attempts <= self.transient_failures {
            return Err(ObserverError::transient(
                "OBS-TEST",
                format!("flaky {}", job.attempts),
            ));
        }
        Ok(())
    }
}

struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<observers_core::Result<()>>,
}

fn start(q: &Arc<PostgresJobQueue>, handler: Arc<dyn JobHandler>, cfg: WorkerConfig) -> Running {
    let (stop, rx) = watch::channel(false);
    let pool = WorkerPool::new(q.clone(), handler, cfg);
    Running {
        stop,
        task: tokio::spawn(pool.run(rx)),
    }
}

impl Running {
    async fn stop(self) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

async fn wait_stats(
    q: &PostgresJobQueue,
    what: &str,
    f: impl Fn(&observers_core::stores::jobs::JobStats) -> bool,
) {
    eventually(what, DEADLINE, || async { f(&q.stats().await.unwrap()) }).await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn n_workers_run_m_jobs_exactly_once(pool: PgPool) {
    const M: i64 = 3000;
    let q = Arc::new(PostgresJobQueue::new(pool));
    let jobs: Vec<NewJob> = (0..M).map(numbered).collect();
    for chunk in jobs.chunks(500) {
        q.enqueue_many(chunk.to_vec()).await.unwrap();
    }
    let recorder = Arc::new(Recorder::default());
    // Three pools (as three processes would be), four workers each, small batches; one of
    // them with two dequeues in flight.
    let pools: Vec<Running> = (0..3)
        .map(|p| {
            let mut cfg = config(&format!("pool-{p}"), 4, 16);
            cfg.fetchers = if p == 0 { 2 } else { 1 };
            start(&q, recorder.clone(), cfg)
        })
        .collect();
    wait_stats(&q, "every job completed", |s| {
        s.completed == u64::try_from(M).unwrap()
    })
    .await;
    for p in pools {
        p.stop().await;
    }
    let counts = recorder.counts();
    assert_eq!(counts.len(), usize::try_from(M).unwrap(), "every job ran");
    assert!(counts.values().all(|&c| c == 1), "no job ran twice");
    let s = q.stats().await.unwrap();
    assert_eq!((s.pending, s.processing, s.failed), (0, 0, 0));
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_killed_workers_job_is_rescued_and_completed_by_another(pool: PgPool) {
    let q = Arc::new(PostgresJobQueue::new(pool));
    let id = q.enqueue(numbered(1)).await.unwrap().id();
    let hanging = Arc::new(Recorder {
        hang: true,
        ..Recorder::default()
    });
    let doomed = start(&q, hanging.clone(), config("doomed", 1, 1));
    eventually("the doomed worker holds the job", DEADLINE, || async {
        !hanging.runs().is_empty()
    })
    .await;
    // Kill it mid-job: no completion, no release, no more heartbeats.
    doomed.task.abort();
    let _ = doomed.task.await;
    let held = q.list(Some(JobStatus::Processing), 10).await.unwrap();
    assert_eq!(
        (held[0].id, held[0].locked_by.as_deref()),
        (id, Some("doomed"))
    );

    let healthy = Arc::new(Recorder::default());
    let rescuer = start(&q, healthy.clone(), config("rescuer", 2, 4));
    wait_stats(&q, "the job completed", |s| s.completed == 1).await;
    rescuer.stop().await;
    let job = &q.list(None, 10).await.unwrap()[0];
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.locked_by.as_deref(), Some("rescuer"));
    assert_eq!(job.attempts, 2, "the killed run counted as an attempt");
    assert_eq!(healthy.counts().get(&id), Some(&1));
}

#[sqlx::test(migrations = "../../migrations")]
async fn retries_follow_the_configured_backoff(pool: PgPool) {
    let q = Arc::new(PostgresJobQueue::new(pool));
    q.enqueue(numbered(1).with_max_attempts(5)).await.unwrap();
    let flaky = Arc::new(Recorder {
        transient_failures: 3,
        ..Recorder::default()
    });
    let running = start(&q, flaky.clone(), config("w", 2, 4));
    wait_stats(&q, "the job completed after its retries", |s| {
        s.completed == 1
    })
    .await;
    running.stop().await;
    let runs = flaky.runs();
    assert_eq!(
        runs.iter().map(|r| r.1).collect::<Vec<_>>(),
        vec![1, 2, 3, 4],
        "attempt numbers"
    );
    // 200 ms × 2^(attempt − 1), no jitter: never earlier than scheduled.
    for (i, expected_ms) in [200u64, 400, 800].into_iter().enumerate() {
        let gap = runs[i + 1].2 - runs[i].2;
        assert!(
            gap >= Duration::from_millis(expected_ms),
            "retry {} came after {gap:?}, before its {expected_ms} ms backoff",
            i + 1
        );
    }
    let job = &q.list(None, 1).await.unwrap()[0];
    assert_eq!(job.last_error.as_deref(), Some("[OBS-TEST] flaky 3"));
}

#[sqlx::test(migrations = "../../migrations")]
async fn priorities_are_honoured(pool: PgPool) {
    let q = Arc::new(PostgresJobQueue::new(pool));
    let jobs: Vec<NewJob> = (0..60)
        .map(|n| numbered(n).with_priority(i32::try_from(n % 3).unwrap()))
        .collect();
    q.enqueue_many(jobs).await.unwrap();
    let priority: HashMap<i64, i32> = q
        .list(None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|j| (j.id, j.priority))
        .collect();
    let recorder = Arc::new(Recorder::default());
    let running = start(&q, recorder.clone(), config("w", 1, 1));
    wait_stats(&q, "all done", |s| s.completed == 60).await;
    running.stop().await;
    let order: Vec<i32> = recorder.runs().iter().map(|r| priority[&r.0]).collect();
    let mut sorted = order.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(order, sorted, "higher priority ran first");
}

/// An action that always fails: permanently, or transiently.
struct Broken {
    permanent: bool,
}

#[async_trait]
impl Action for Broken {
    fn type_name(&self) -> &'static str {
        "webhook"
    }

    async fn execute(&self, _inv: &Invocation<'_>) -> observers_core::Result<ActionResult> {
        if self.permanent {
            Err(ObserverError::permanent(
                "OBS-HTTP-4XX",
                "HTTP 400 Bad Request",
            ))
        } else {
            Err(ObserverError::transient(
                "OBS-HTTP-5XX",
                "HTTP 503 Service Unavailable",
            ))
        }
    }
}

fn broken_executor(pool: &PgPool, permanent: bool) -> Arc<ObserverExecutor> {
    Arc::new(
        ObserverExecutor::builder(broken_set(permanent))
            .dlq(Arc::new(PostgresDeadLetterQueue::new(pool.clone())))
            .build(),
    )
}

fn order(id: i64) -> EntityEvent {
    EntityEvent::new(
        id,
        "Order",
        id.to_string(),
        EventKind::Insert,
        None,
        Some(json!({"total": 5})),
    )
}

#[sqlx::test(migrations = "../../migrations")]
async fn failing_queued_actions_end_failed_with_their_error_and_a_dlq_item(pool: PgPool) {
    let q = Arc::new(PostgresJobQueue::new(pool.clone()));
    let dlq = PostgresDeadLetterQueue::new(pool.clone());
    for (event_id, permanent) in [(1, true), (2, false)] {
        let exec = broken_executor(&pool, permanent);
        let exec_q: Arc<dyn JobQueue> = q.clone();
        let producer = ObserverExecutor::builder(broken_set(permanent))
            .jobs(exec_q)
            .build();
        let summary = producer.process(&order(event_id)).await.unwrap();
        assert_eq!(summary.actions[0].outcome.as_str(), "queued");
        let running = start(&q, Arc::new(ActionJobHandler::new(exec)), config("w", 2, 4));
        wait_stats(&q, "the job failed for good", |s| {
            s.failed == u64::try_from(event_id).unwrap()
        })
        .await;
        running.stop().await;
    }
    let failed = q.list(Some(JobStatus::Failed), 10).await.unwrap();
    let by_event = |id: i64| {
        failed
            .iter()
            .find(|j| j.payload["event"]["id"] == id)
            .unwrap()
    };
    let permanent = by_event(1);
    assert_eq!(permanent.attempts, 1, "a permanent error is not retried");
    assert_eq!(
        permanent.last_error.as_deref(),
        Some("[OBS-HTTP-4XX] HTTP 400 Bad Request")
    );
    let transient = by_event(2);
    assert_eq!(transient.attempts, 3, "retried until max_attempts");
    assert_eq!(
        transient.last_error.as_deref(),
        Some("[OBS-HTTP-5XX] HTTP 503 Service Unavailable")
    );

    let items = dlq.list(&DlqFilter::default()).await.unwrap();
    assert_eq!(items.len(), 2, "one DLQ item per failed job");
    let item = items.iter().find(|i| i.entry.event.id == 2).unwrap();
    assert_eq!(
        (
            item.entry.observer.as_str(),
            item.entry.action_index,
            item.entry.action_type.as_str()
        ),
        ("notify", 0, "webhook")
    );
    assert_eq!(
        (item.entry.error_code.as_str(), item.entry.attempts),
        ("OBS-HTTP-5XX", 3)
    );
}

fn broken_set(permanent: bool) -> ObserverSet {
    let o = CompiledObserver::new("notify", "Order", EventKind::ALL.to_vec()).with_action(
        ActionSlot::new(Arc::new(Broken { permanent }), "broken").with_mode(ActionMode::Queued),
    );
    let mut set = ObserverSet::new(vec![o], RetryPolicy::none(), Duration::from_secs(5));
    set.job_max_attempts = 3;
    set
}

#[sqlx::test(migrations = "../../migrations")]
async fn shutdown_finishes_running_jobs_and_releases_the_rest(pool: PgPool) {
    let q = Arc::new(PostgresJobQueue::new(pool));
    q.enqueue_many((0..10).map(numbered).collect())
        .await
        .unwrap();
    let slow = Arc::new(Recorder {
        delay: Duration::from_millis(300),
        ..Recorder::default()
    });
    let running = start(&q, slow.clone(), config("w", 2, 4));
    eventually("two jobs started", DEADLINE, || async {
        slow.runs().len() >= 2
    })
    .await;
    running.stop().await;
    let started = slow.runs().len() as u64;
    let s = q.stats().await.unwrap();
    assert_eq!(s.processing, 0, "nothing left held");
    assert_eq!(s.completed, started, "every started job finished");
    assert_eq!(s.pending, 10 - started, "the rest went back");
    let pending = q.list(Some(JobStatus::Pending), 10).await.unwrap();
    assert!(
        pending.iter().all(|j| j.attempts == 0),
        "released jobs keep their attempts"
    );
}
