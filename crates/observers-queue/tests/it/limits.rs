//! Hostile peers and broken workers against a real PostgreSQL: a `Retry-After` no date can hold,
//! a panicking action, an error text with NUL bytes, a job that kills its worker every time, and
//! a stale worker finishing a job that was rescued and re-taken by another.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use observers_core::actions::ActionFactory;
use observers_core::config;
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

fn config(name: &str, workers: usize) -> WorkerConfig {
    WorkerConfig {
        worker_id: name.to_owned(),
        queues: vec!["default".into()],
        workers,
        batch_size: 1,
        fetchers: 1,
        retry: observers_core::retry::RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(2),
            multiplier: 2.0,
            jitter: false,
        },
        heartbeat_interval: Duration::from_millis(100),
        stale_after: Duration::from_secs(1),
        poll_interval: Duration::from_millis(200),
        shutdown_grace: Duration::from_secs(5),
    }
}

struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<observers_core::Result<()>>,
    stats: Arc<observers_queue::PoolStats>,
}

fn start(q: &Arc<PostgresJobQueue>, handler: Arc<dyn JobHandler>, cfg: WorkerConfig) -> Running {
    let (stop, rx) = watch::channel(false);
    let pool = WorkerPool::new(q.clone(), handler, cfg);
    let stats = pool.stats();
    Running {
        stop,
        task: tokio::spawn(pool.run(rx)),
        stats,
    }
}

impl Running {
    async fn stop(self) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap().unwrap();
    }

    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn job(q: &PostgresJobQueue, id: i64) -> Job {
    q.list(None, 1000)
        .await
        .unwrap()
        .into_iter()
        .find(|j| j.id == id)
        .unwrap_or_else(|| panic!("job {id} is gone"))
}

async fn wait_status(q: &PostgresJobQueue, id: i64, status: JobStatus) -> Job {
    eventually(&format!("job {id} {status}"), DEADLINE, || async {
        job(q, id).await.status == status
    })
    .await;
    job(q, id).await
}

/// A receiver answering `503` with a `Retry-After` of 9,000,000,000,000 seconds (beyond any
/// date) at `/hook/huge`, and `200` elsewhere.
async fn hostile_receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let hits = Arc::new(Mutex::new(Vec::new()));
    let seen = hits.clone();
    let app = Router::new().route(
        "/hook/{id}",
        post(move |Path(id): Path<String>| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(id.clone());
                let r: Response = if id == "huge" {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        [("retry-after", "9000000000000")],
                        "come back later",
                    )
                        .into_response()
                } else {
                    StatusCode::OK.into_response()
                };
                r
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), hits)
}

fn order(id: i64, entity: &str) -> EntityEvent {
    EntityEvent::new(
        id,
        "Order",
        entity,
        EventKind::Insert,
        None,
        Some(json!({"total": 5})),
    )
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_retry_after_beyond_any_date_fails_the_job_and_the_worker_keeps_working(pool: PgPool) {
    let (base, hits) = hostile_receiver().await;
    let cfg = config::load_str(
        "test.toml",
        &format!(
            "[queue]\nmax_attempts = 5\ninitial_backoff = \"10ms\"\nmax_backoff = \"1h\"\n\
             jitter = false\n\
             [[observers]]\nname = \"hooks\"\nentity = \"Order\"\n\
             [[observers.actions]]\ntype = \"webhook\"\nurl = \"{base}/hook/{{{{ entity_id }}}}\"\n\
             mode = \"queued\"\n"
        ),
        &|_| None,
    )
    .unwrap();
    let factory = ActionFactory::new(cfg.outbound.clone()).unwrap();
    let set = ObserverSet::from_config(&cfg, &factory).unwrap();
    let q = Arc::new(PostgresJobQueue::new(pool.clone()));
    let dlq = Arc::new(PostgresDeadLetterQueue::new(pool.clone()));
    let jobs: Arc<dyn JobQueue> = q.clone();
    let executor = Arc::new(
        ObserverExecutor::builder(set)
            .jobs(jobs)
            .dlq(dlq.clone())
            .build(),
    );
    let mut wc = WorkerConfig::from_config(&cfg.queue, "test");
    wc.heartbeat_interval = Duration::from_millis(100);
    wc.stale_after = Duration::from_secs(1);
    wc.workers = 1;
    let running = start(&q, Arc::new(ActionJobHandler::new(executor.clone())), wc);

    executor.process(&order(1, "huge")).await.unwrap();
    let huge = q.list(None, 10).await.unwrap()[0].id;
    let failed = wait_status(&q, huge, JobStatus::Failed).await;
    let error = failed.last_error.unwrap();
    assert!(
        error.contains("Retry-After") && error.contains("503"),
        "the error says why: {error}"
    );
    assert_eq!(failed.attempts, 1, "no attempt is scheduled past any date");
    // The DLQ item is written right after the failure.
    eventually("dead-lettered", DEADLINE, || async {
        dlq.list(&DlqFilter::default()).await.unwrap().len() == 1
    })
    .await;

    // The worker is alive: the next job runs.
    executor.process(&order(2, "fine")).await.unwrap();
    eventually("the next job completed", DEADLINE, || async {
        q.stats().await.unwrap().completed == 1
    })
    .await;
    running.stop().await;
    assert_eq!(*hits.lock().unwrap(), ["huge", "fine"]);
}

/// Panics on the job whose payload `n` is 1; records every run.
#[derive(Default)]
struct Panicky {
    runs: Mutex<Vec<i64>>,
}

#[async_trait]
impl JobHandler for Panicky {
    async fn run(&self, job: &Job) -> observers_core::Result<()> {
        self.runs.lock().unwrap().push(job.id);
        assert!(job.payload["n"] != 1, "handler bug on job {}", job.id);
        Ok(())
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_panicking_action_fails_its_job_and_frees_its_slot(pool: PgPool) {
    let q = Arc::new(PostgresJobQueue::new(pool));
    let first = q
        .enqueue(NewJob::new("default", "test", json!({"n": 1})))
        .await
        .unwrap()
        .id();
    let second = q
        .enqueue(NewJob::new("default", "test", json!({"n": 2})))
        .await
        .unwrap()
        .id();
    let handler = Arc::new(Panicky::default());
    // One worker: the second job runs only if the panic freed the slot.
    let running = start(&q, handler.clone(), config("w", 1));
    let failed = wait_status(&q, first, JobStatus::Failed).await;
    wait_status(&q, second, JobStatus::Completed).await;
    running.stop().await;
    let error = failed.last_error.unwrap();
    assert!(
        error.contains("panicked") && error.contains("handler bug on job"),
        "{error}"
    );
    assert_eq!(failed.attempts, 1, "a panic is not retried");
    assert_eq!(*handler.runs.lock().unwrap(), [first, second]);
}

/// Fails every run with an error text holding NUL bytes (as a remote body may).
struct NulError;

#[async_trait]
impl JobHandler for NulError {
    async fn run(&self, _job: &Job) -> observers_core::Result<()> {
        Err(ObserverError::transient("OBS-TEST", "bad\0body\0"))
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn an_error_text_with_nul_bytes_is_recorded_and_the_job_retries_then_fails(pool: PgPool) {
    let q = Arc::new(PostgresJobQueue::new(pool));
    let id = q
        .enqueue(NewJob::new("default", "test", json!({})).with_max_attempts(2))
        .await
        .unwrap()
        .id();
    let running = start(&q, Arc::new(NulError), config("w", 1));
    let failed = wait_status(&q, id, JobStatus::Failed).await;
    running.stop().await;
    assert_eq!(failed.attempts, 2, "retried once, as for any error");
    assert_eq!(
        failed.last_error.as_deref(),
        Some("[OBS-TEST] bad\u{FFFD}body\u{FFFD}")
    );
}

/// Holds every run until its gate opens; then succeeds, or fails permanently. Records runs
/// and dead letters.
struct Gate {
    open: watch::Sender<bool>,
    fail: bool,
    runs: Mutex<Vec<(i64, u32)>>,
    dead: Mutex<Vec<(i64, String)>>,
}

impl Gate {
    fn new(fail: bool) -> Arc<Self> {
        Arc::new(Self {
            open: watch::channel(false).0,
            fail,
            runs: Mutex::new(Vec::new()),
            dead: Mutex::new(Vec::new()),
        })
    }

    fn runs(&self) -> Vec<(i64, u32)> {
        self.runs.lock().unwrap().clone()
    }
}

#[async_trait]
impl JobHandler for Gate {
    async fn run(&self, job: &Job) -> observers_core::Result<()> {
        self.runs.lock().unwrap().push((job.id, job.attempts));
        let mut rx = self.open.subscribe();
        let _ = rx.wait_for(|o| *o).await;
        if self.fail {
            Err(ObserverError::permanent("OBS-TEST", "refused"))
        } else {
            Ok(())
        }
    }

    async fn dead_letter(&self, job: &Job, error: &ObserverError) -> observers_core::Result<()> {
        self.dead.lock().unwrap().push((job.id, error.to_string()));
        Ok(())
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_job_that_kills_its_worker_every_time_ends_failed_and_dead_lettered(pool: PgPool) {
    let q = Arc::new(PostgresJobQueue::new(pool));
    let id = q
        .enqueue(NewJob::new("default", "test", json!({})).with_max_attempts(2))
        .await
        .unwrap()
        .id();
    // Two workers die holding the job (its two attempts)...
    for attempt in 1..=2u32 {
        let deadly = Gate::new(false);
        let doomed = start(&q, deadly.clone(), config(&format!("doomed-{attempt}"), 1));
        eventually("the doomed worker took the job", DEADLINE, || async {
            !deadly.runs().is_empty()
        })
        .await;
        assert_eq!(deadly.runs(), [(id, attempt)]);
        doomed.kill().await;
    }
    // ...and the rescuer does not run it a third time: it fails it and dead-letters it.
    let rescuer = Gate::new(false);
    let _ = rescuer.open.send(true);
    let running = start(&q, rescuer.clone(), config("rescuer", 1));
    let failed = wait_status(&q, id, JobStatus::Failed).await;
    eventually("dead-lettered", DEADLINE, || async {
        !rescuer.dead.lock().unwrap().is_empty()
    })
    .await;
    running.stop().await;
    assert!(rescuer.runs().is_empty(), "not run again");
    assert_eq!(failed.attempts, 2);
    let error = failed.last_error.unwrap();
    assert!(error.contains("stopped heartbeating"), "{error}");
    let dead = rescuer.dead.lock().unwrap().clone();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, id);
    assert!(dead[0].1.contains("stopped heartbeating"), "{}", dead[0].1);
}

/// Worker `stale` takes the job and stops heartbeating (a long pause); `fresh` rescues and
/// re-takes it; then `stale` finishes its run. Its completion or failure must not be written,
/// nor counted; `fresh` finishes the job.
async fn a_stale_worker_cannot_finish_a_retaken_job(pool: PgPool, stale_fails: bool) {
    let q = Arc::new(PostgresJobQueue::new(pool));
    let id = q
        .enqueue(NewJob::new("default", "test", json!({})))
        .await
        .unwrap()
        .id();
    let slow = Gate::new(stale_fails);
    let mut paused = config("stale", 1);
    paused.heartbeat_interval = Duration::from_secs(3600);
    paused.stale_after = Duration::from_secs(3600);
    let stale = start(&q, slow.clone(), paused);
    eventually("stale took it", DEADLINE, || async {
        !slow.runs().is_empty()
    })
    .await;
    let quick = Gate::new(false);
    let fresh = start(&q, quick.clone(), config("fresh", 1));
    eventually("fresh re-took it", DEADLINE, || async {
        !quick.runs().is_empty()
    })
    .await;
    // The stale pool may have taken it again meanwhile (its fetcher still runs); fresh holds
    // it in the end, on a later attempt.
    let retaken = quick.runs();
    assert!(
        retaken.len() == 1 && retaken[0].0 == id && retaken[0].1 >= 2,
        "{retaken:?}"
    );

    let _ = slow.open.send(true);
    let stale_stats = stale.stats.clone();
    stale.stop().await;
    let held = job(&q, id).await;
    assert_eq!(
        (held.status, held.locked_by.as_deref()),
        (JobStatus::Processing, Some("fresh")),
        "the stale worker's outcome was not written"
    );
    assert_eq!(
        (stale_stats.completed(), stale_stats.failed()),
        (0, 0),
        "nor counted"
    );
    assert!(slow.dead.lock().unwrap().is_empty(), "nor dead-lettered");

    let _ = quick.open.send(true);
    let done = wait_status(&q, id, JobStatus::Completed).await;
    let fresh_stats = fresh.stats.clone();
    fresh.stop().await;
    assert_eq!(done.locked_by.as_deref(), Some("fresh"));
    assert_eq!(fresh_stats.completed(), 1);
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_stale_worker_cannot_complete_a_retaken_job(pool: PgPool) {
    a_stale_worker_cannot_finish_a_retaken_job(pool, false).await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_stale_worker_cannot_fail_a_retaken_job(pool: PgPool) {
    a_stale_worker_cannot_finish_a_retaken_job(pool, true).await;
}
