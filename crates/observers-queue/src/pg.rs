//! `PostgresJobQueue`: core's `JobQueue` over `observer_jobs` (live jobs) and
//! `observer_jobs_completed` (where completion moves them). Dequeue takes a batch with
//! `FOR UPDATE SKIP LOCKED` (concurrent workers never get the same job), enqueue is idempotent
//! on `unique_key` (claimed in `observer_job_keys` until the job is purged, whichever table it
//! is in), a statement trigger NOTIFYs `observer_jobs` so idle workers wake at once,
//! and all times (run_at, heartbeats, staleness) use the database clock except the `run_at`
//! a caller passes in.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use observers_core::stores::jobs::{
    EnqueueOutcome, Job, JobQueue, JobStats, JobStatus, NewJob, Rescued,
};
use observers_core::text::{make_json_storable, storable};
use observers_core::{ObserverError, Result};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::error::QueueError;

/// The NOTIFY channel of the jobs table.
pub const CHANNEL: &str = "observer_jobs";

/// The columns of a `JobRow`, as a literal (sqlx wants static SQL).
macro_rules! columns {
    ($p:literal) => {
        concat!(
            $p,
            "id, ",
            $p,
            "queue_name, ",
            $p,
            "kind, ",
            $p,
            "status, ",
            $p,
            "payload, ",
            $p,
            "unique_key, ",
            $p,
            "priority, ",
            $p,
            "run_at, ",
            $p,
            "attempts, ",
            $p,
            "max_attempts, ",
            $p,
            "last_error, ",
            $p,
            "worker_id, ",
            $p,
            "heartbeat_at, ",
            $p,
            "created_at, ",
            $p,
            "group_key"
        )
    };
}

#[derive(sqlx::FromRow)]
pub(crate) struct JobRow {
    id: i64,
    queue_name: String,
    kind: String,
    status: String,
    payload: serde_json::Value,
    unique_key: Option<String>,
    priority: i32,
    run_at: DateTime<Utc>,
    attempts: i32,
    max_attempts: i32,
    last_error: Option<String>,
    worker_id: Option<String>,
    heartbeat_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    group_key: Option<String>,
}

impl JobRow {
    pub(crate) fn into_job(self) -> Result<Job> {
        let status: JobStatus = self
            .status
            .parse()
            .map_err(|e: String| QueueError::Invalid(format!("job {}: {e}", self.id)))?;
        Ok(Job {
            id: self.id,
            queue: self.queue_name,
            kind: self.kind,
            payload: self.payload,
            unique_key: self.unique_key,
            priority: self.priority,
            run_at: self.run_at,
            attempts: u32::try_from(self.attempts).unwrap_or_default(),
            max_attempts: u32::try_from(self.max_attempts).unwrap_or(1),
            status,
            last_error: self.last_error,
            locked_by: self.worker_id,
            heartbeat_at: self.heartbeat_at,
            created_at: self.created_at,
            group_key: self.group_key,
        })
    }
}

fn db(e: sqlx::Error) -> ObserverError {
    QueueError::Database(e).into()
}

fn to_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Jobs in `observer_jobs`. Cheap to clone the pool into; one LISTEN connection is opened
/// lazily, by the first `wait_for_jobs`.
pub struct PostgresJobQueue {
    pool: PgPool,
    wake: Arc<Notify>,
    listener: OnceLock<JoinHandle<()>>,
}

impl std::fmt::Debug for PostgresJobQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresJobQueue")
            .field("listening", &self.listener.get().is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresJobQueue {
    fn drop(&mut self) {
        if let Some(task) = self.listener.get() {
            task.abort();
        }
    }
}

impl PostgresJobQueue {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            wake: Arc::new(Notify::new()),
            listener: OnceLock::new(),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Deletes completed jobs that finished more than `age` ago, `batch` per statement (each
    /// commits on its own, oldest first), freeing their keys like [`JobQueue::purge`]. Returns
    /// how many went (`[retention] jobs_completed`).
    pub async fn purge_completed_older_than(&self, age: Duration, batch: i64) -> Result<u64> {
        let batch = batch.max(1);
        let mut purged = 0u64;
        loop {
            let n: i64 = sqlx::query_scalar(
                "WITH gone AS (DELETE FROM observer_jobs_completed WHERE id IN \
                     (SELECT id FROM observer_jobs_completed \
                       WHERE completed_at < now() - make_interval(secs => $1) \
                       ORDER BY id LIMIT $2) \
                     RETURNING id, unique_key), \
                 freed AS (DELETE FROM observer_job_keys k USING gone \
                           WHERE k.unique_key = gone.unique_key AND k.job_id = gone.id) \
                 SELECT count(*) FROM gone",
            )
            .bind(age.as_secs_f64())
            .bind(batch)
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
            purged += n.unsigned_abs();
            if n < batch {
                return Ok(purged);
            }
        }
    }

    fn ensure_listening(&self) {
        self.listener
            .get_or_init(|| tokio::spawn(listen_loop(self.pool.clone(), self.wake.clone())));
    }

    async fn notify(&self) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(CHANNEL)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    /// The status of a job and the worker that holds (or last held) it.
    async fn status_of(&self, id: i64) -> Result<Option<(JobStatus, Option<String>)>> {
        let row: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT status, worker_id FROM observer_jobs WHERE id = $1 \
             UNION ALL SELECT 'completed', worker_id FROM observer_jobs_completed WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.map(|(s, w)| {
            s.parse::<JobStatus>()
                .map(|st| (st, w))
                .map_err(|e| QueueError::Invalid(format!("job {id}: {e}")).into())
        })
        .transpose()
    }

    fn not_held(
        id: i64,
        worker: &str,
        current: Option<(JobStatus, Option<String>)>,
        what: &str,
    ) -> ObserverError {
        let message = match current {
            None => format!("job {id} does not exist (it may have been purged)"),
            Some((st, holder)) => format!(
                "cannot {what} job {id} for worker {worker}: it is {st} under {} (a stale \
                 worker may have lost it)",
                holder.as_deref().unwrap_or("no worker")
            ),
        };
        QueueError::Invalid(message).into()
    }

    async fn existing_ids(&self, keys: &[&str]) -> Result<HashMap<String, i64>> {
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT job_id, unique_key FROM observer_job_keys WHERE unique_key = ANY($1::text[])",
        )
        .bind(keys)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(rows.into_iter().map(|(id, k)| (k, id)).collect())
    }

    /// Moves the processing jobs among `ids` to `observer_jobs_completed`, in one statement: a
    /// DELETE (no new row version, no index entry) and an INSERT of the row as it was, instead
    /// of a second non-HOT update. The jobs' keys stay claimed in `observer_job_keys`.
    async fn move_completed(&self, worker: &str, ids: &[i64]) -> Result<u64> {
        let moved = sqlx::query(
            "WITH done AS ( \
               DELETE FROM observer_jobs \
               WHERE id = ANY($1::bigint[]) AND status = 'processing' AND worker_id = $2 \
               RETURNING id, queue_name, kind, payload, unique_key, priority, run_at, attempts, \
                 max_attempts, last_error, worker_id, heartbeat_at, created_at, started_at, \
                 group_key) \
             INSERT INTO observer_jobs_completed (id, queue_name, kind, payload, unique_key, \
               priority, run_at, attempts, max_attempts, last_error, worker_id, heartbeat_at, \
               created_at, started_at, completed_at, group_key) \
             SELECT id, queue_name, kind, payload, unique_key, priority, run_at, attempts, \
               max_attempts, last_error, worker_id, heartbeat_at, created_at, started_at, now(), \
               group_key \
             FROM done",
        )
        .bind(ids)
        .bind(worker)
        .execute(&self.pool)
        .await
        .map_err(db)?
        .rows_affected();
        Ok(moved)
    }

    /// One statement: the keyed jobs claim their keys in `observer_job_keys` (the first of a
    /// key in input order wins), and the jobs that are keyless or won their key are inserted.
    /// Ids are drawn in input order, so they ascend with it. `None` when a key that conflicted
    /// was freed (its job purged) before it could be looked up.
    async fn try_enqueue_many(&self, jobs: &[NewJob]) -> Result<Option<Vec<EnqueueOutcome>>> {
        let n = jobs.len();
        let mut queues = Vec::with_capacity(n);
        let mut kinds = Vec::with_capacity(n);
        let mut payloads = Vec::with_capacity(n);
        let mut keys = Vec::with_capacity(n);
        let mut priorities = Vec::with_capacity(n);
        let mut run_ats = Vec::with_capacity(n);
        let mut maxes = Vec::with_capacity(n);
        let mut groups = Vec::with_capacity(n);
        for j in jobs {
            queues.push(j.queue.as_str());
            kinds.push(j.kind.as_str());
            payloads.push(payload_text(&j.payload)?);
            keys.push(j.unique_key.as_deref());
            priorities.push(j.priority);
            run_ats.push(j.run_at);
            maxes.push(to_i32(j.max_attempts.max(1)));
            groups.push(j.group_key.as_deref());
        }
        let rows: Vec<(i64, Option<String>)> = sqlx::query_as(
            "WITH input AS MATERIALIZED ( \
               SELECT nextval('observer_jobs_id_seq') AS id, q, k, p, u, pr, r, m, g \
               FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int4[], \
                           $6::timestamptz[], $7::int4[], $8::text[]) \
                    WITH ORDINALITY AS t(q, k, p, u, pr, r, m, g, ord) \
               ORDER BY ord), \
             claimed AS ( \
               INSERT INTO observer_job_keys (unique_key, job_id) \
               SELECT u, id FROM input WHERE u IS NOT NULL ORDER BY id \
               ON CONFLICT (unique_key) DO NOTHING RETURNING job_id) \
             INSERT INTO observer_jobs \
               (id, queue_name, kind, payload, unique_key, priority, run_at, max_attempts, \
                group_key) \
             OVERRIDING SYSTEM VALUE \
             SELECT i.id, i.q, i.k, i.p::jsonb, i.u, i.pr, COALESCE(i.r, now()), i.m, i.g \
             FROM input i WHERE i.u IS NULL OR i.id IN (SELECT job_id FROM claimed) \
             ORDER BY i.id \
             RETURNING id, unique_key",
        )
        .bind(&queues)
        .bind(&kinds)
        .bind(&payloads)
        .bind(&keys)
        .bind(&priorities)
        .bind(&run_ats)
        .bind(&maxes)
        .bind(&groups)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let mut by_key = HashMap::new();
        let mut keyless = Vec::new();
        for (id, key) in rows {
            match key {
                Some(k) => {
                    by_key.insert(k, id);
                }
                None => keyless.push(id),
            }
        }
        keyless.sort_unstable();
        let mut keyless = keyless.into_iter();
        let missing: Vec<&str> = jobs
            .iter()
            .filter_map(|j| j.unique_key.as_deref())
            .filter(|k| !by_key.contains_key(*k))
            .collect();
        let existing = if missing.is_empty() {
            HashMap::new()
        } else {
            self.existing_ids(&missing).await?
        };
        let mut first_seen = HashSet::new();
        let mut out = Vec::with_capacity(n);
        for j in jobs {
            let outcome = match &j.unique_key {
                None => EnqueueOutcome::Enqueued(keyless.next().ok_or_else(|| {
                    ObserverError::store("postgres", "enqueue_many: fewer rows than jobs")
                })?),
                Some(k) => match (by_key.get(k), existing.get(k)) {
                    // The first job with a new key created it; later ones in the batch are duplicates.
                    (Some(&id), _) => {
                        if first_seen.insert(k.as_str()) {
                            EnqueueOutcome::Enqueued(id)
                        } else {
                            EnqueueOutcome::Duplicate(id)
                        }
                    }
                    (None, Some(&id)) => EnqueueOutcome::Duplicate(id),
                    (None, None) => return Ok(None),
                },
            };
            out.push(outcome);
        }
        Ok(Some(out))
    }
}

/// A payload as JSON text `jsonb` accepts: `\u0000` is rejected there, so a payload with a NUL
/// (from a remote event) is stored with U+FFFD in its place rather than refused.
fn payload_text(payload: &serde_json::Value) -> Result<String> {
    let text = |v: &serde_json::Value| {
        serde_json::to_string(v).map_err(|e| QueueError::Invalid(format!("job payload: {e}")))
    };
    let raw = text(payload)?;
    // The escape also matches an escaped backslash before `u0000`; the walk then finds nothing.
    if raw.contains("\\u0000") {
        let mut clean = payload.clone();
        if make_json_storable(&mut clean) {
            return Ok(text(&clean)?);
        }
    }
    Ok(raw)
}

/// Wakes every waiter and leaves a permit for the next one (no lost wake-up between an empty
/// dequeue and the wait).
fn wake_all(notify: &Notify) {
    notify.notify_waiters();
    notify.notify_one();
}

async fn listen_loop(pool: PgPool, wake: Arc<Notify>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, ?backoff, "job queue LISTEN connection failed; polling until it is back");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        if let Err(e) = listener.listen(CHANNEL).await {
            tracing::warn!(error = %e, "job queue LISTEN failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
            continue;
        }
        backoff = Duration::from_millis(100);
        // Notifications sent while not listening are lost: make workers poll once.
        wake_all(&wake);
        loop {
            match listener.try_recv().await {
                Ok(Some(_)) => wake_all(&wake),
                Ok(None) => {
                    tracing::info!("job queue LISTEN connection re-established; polling");
                    wake_all(&wake);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "job queue LISTEN connection failed; reconnecting");
                    wake_all(&wake);
                    break;
                }
            }
        }
    }
}

#[async_trait]
impl JobQueue for PostgresJobQueue {
    async fn enqueue(&self, job: NewJob) -> Result<EnqueueOutcome> {
        let mut out = self.enqueue_many(vec![job]).await?;
        out.pop()
            .ok_or_else(|| ObserverError::store("postgres", "enqueue: no outcome"))
    }

    async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<EnqueueOutcome>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        for _ in 0..3 {
            if let Some(out) = self.try_enqueue_many(&jobs).await? {
                return Ok(out);
            }
            // A conflicting key was purged in between: insert again.
        }
        Err(ObserverError::store(
            "postgres",
            "enqueue conflicted on a unique key but the existing job vanished; try again",
        ))
    }

    async fn dequeue(&self, queue: &str, worker: &str, max: usize) -> Result<Vec<Job>> {
        // `id = ANY(ARRAY(...))` rather than a join with the picked rows: the planner sizes a
        // join by the whole table and hashes every row of it (a sequential scan per batch,
        // growing with the completed rows kept); the array probes the primary key instead.
        const SQL: &str = concat!(
            "UPDATE observer_jobs j SET status = 'processing', attempts = j.attempts + 1, \
               worker_id = $2, heartbeat_at = now(), started_at = now() \
             WHERE j.id = ANY(ARRAY( \
               SELECT c.id FROM observer_jobs c \
               WHERE c.status = 'pending' AND c.queue_name = $1 AND c.run_at <= now() \
                 AND (c.group_key IS NULL OR NOT EXISTS ( \
                   SELECT 1 FROM observer_jobs e \
                   WHERE e.group_key = c.group_key AND e.id < c.id AND e.status <> 'failed')) \
               ORDER BY c.priority DESC, c.run_at, c.id \
               LIMIT $3 FOR UPDATE OF c SKIP LOCKED)) \
             RETURNING ",
            columns!("j.")
        );
        if max == 0 {
            return Ok(Vec::new());
        }
        let rows: Vec<JobRow> = sqlx::query_as(SQL)
            .bind(queue)
            .bind(worker)
            .bind(i64::try_from(max).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        let mut jobs = rows
            .into_iter()
            .map(JobRow::into_job)
            .collect::<Result<Vec<_>>>()?;
        jobs.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then(a.run_at.cmp(&b.run_at))
                .then(a.id.cmp(&b.id))
        });
        Ok(jobs)
    }

    async fn heartbeat(&self, worker: &str, ids: &[i64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE observer_jobs SET heartbeat_at = now() \
             WHERE id = ANY($2::bigint[]) AND worker_id = $1 AND status = 'processing'",
        )
        .bind(worker)
        .bind(ids)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn complete(&self, worker: &str, id: i64) -> Result<()> {
        if self.move_completed(worker, &[id]).await? == 1 {
            return Ok(());
        }
        match self.status_of(id).await? {
            Some((JobStatus::Completed, Some(w))) if w == worker => Ok(()),
            other => Err(Self::not_held(id, worker, other, "complete")),
        }
    }

    /// One statement; jobs that `worker` no longer holds (rescued, re-taken, purged) are
    /// skipped.
    async fn complete_many(&self, worker: &str, ids: &[i64]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.move_completed(worker, ids).await
    }

    async fn fail(
        &self,
        worker: &str,
        id: i64,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
    ) -> Result<JobStatus> {
        let error = storable(error);
        let status: Option<String> = sqlx::query_scalar(
            "WITH d AS (SELECT $3::timestamptz IS NOT NULL AND attempts < max_attempts AS retry \
                        FROM observer_jobs \
                        WHERE id = $1 AND status = 'processing' AND worker_id = $4 FOR UPDATE) \
             UPDATE observer_jobs j SET last_error = $2, \
               status = CASE WHEN d.retry THEN 'pending' ELSE 'failed' END, \
               run_at = CASE WHEN d.retry THEN $3 ELSE j.run_at END, \
               worker_id = CASE WHEN d.retry THEN NULL ELSE j.worker_id END, \
               heartbeat_at = CASE WHEN d.retry THEN NULL ELSE j.heartbeat_at END \
             FROM d WHERE j.id = $1 RETURNING j.status",
        )
        .bind(id)
        .bind(error.as_ref())
        .bind(retry_at)
        .bind(worker)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        if let Some(s) = status {
            let status = s
                .parse()
                .map_err(|e: String| QueueError::Invalid(format!("job {id}: {e}")))?;
            if status == JobStatus::Failed {
                // Later jobs of its group may run now.
                self.notify().await?;
            }
            Ok(status)
        } else {
            let current = self.status_of(id).await?;
            Err(Self::not_held(id, worker, current, "fail"))
        }
    }

    /// One statement: stale jobs with attempts left go back to pending; those whose dead run
    /// was the last attempt fail for good with an `OBS-JOB-STALE` error (the same text as
    /// [`observers_core::stores::jobs::stale_error`]) and are returned for dead-lettering.
    async fn rescue_stale(&self, older_than: Duration) -> Result<Rescued> {
        let rows: Vec<JobRow> = sqlx::query_as(concat!(
            "WITH stale AS ( \
               SELECT id, attempts < max_attempts AS retry FROM observer_jobs \
               WHERE status = 'processing' \
                 AND (heartbeat_at IS NULL OR heartbeat_at < now() - make_interval(secs => $1)) \
               FOR UPDATE SKIP LOCKED) \
             UPDATE observer_jobs j SET \
               status = CASE WHEN s.retry THEN 'pending' ELSE 'failed' END, \
               last_error = CASE WHEN s.retry THEN j.last_error ELSE format( \
                 '[OBS-JOB-STALE] worker %s stopped heartbeating during attempt %s of %s \
(the job may crash its worker); failed for good', \
                 coalesce(j.worker_id, '?'), j.attempts, j.max_attempts) END, \
               worker_id = CASE WHEN s.retry THEN NULL ELSE j.worker_id END, \
               heartbeat_at = CASE WHEN s.retry THEN NULL ELSE j.heartbeat_at END \
             FROM stale s WHERE j.id = s.id RETURNING ",
            columns!("j.")
        ))
        .bind(older_than.as_secs_f64())
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let mut rescued = Rescued::default();
        for row in rows {
            let job = row.into_job()?;
            if job.status == JobStatus::Failed {
                rescued.failed.push(job);
            } else {
                rescued.requeued += 1;
            }
        }
        if rescued.total() > 0 {
            tracing::warn!(
                requeued = rescued.requeued,
                failed = rescued.failed.len(),
                "rescued jobs whose worker stopped heartbeating"
            );
            self.notify().await?;
        }
        Ok(rescued)
    }

    async fn stats(&self) -> Result<JobStats> {
        let (pending, processing, completed, failed, avg): (i64, i64, i64, i64, Option<f64>) =
            sqlx::query_as(
                "SELECT count(*) FILTER (WHERE status = 'pending'), \
                        count(*) FILTER (WHERE status = 'processing'), \
                        (SELECT count(*) FROM observer_jobs_completed), \
                        count(*) FILTER (WHERE status = 'failed'), \
                        (SELECT avg(extract(epoch FROM completed_at - started_at) * 1000) \
                         FROM observer_jobs_completed)::float8 \
                 FROM observer_jobs",
            )
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        let n = |v: i64| u64::try_from(v).unwrap_or_default();
        Ok(JobStats {
            pending: n(pending),
            processing: n(processing),
            completed: n(completed),
            failed: n(failed),
            avg_run_ms: avg,
        })
    }

    /// Live jobs and completed ones together, newest first (both sides walk their primary key).
    async fn list(&self, status: Option<JobStatus>, limit: usize) -> Result<Vec<Job>> {
        crate::stats::list_jobs(&self.pool, None, status, limit).await
    }

    async fn retry_failed(&self, ids: Option<&[i64]>) -> Result<u64> {
        let retried = sqlx::query(
            "UPDATE observer_jobs SET status = 'pending', attempts = 0, run_at = now(), \
               worker_id = NULL, heartbeat_at = NULL \
             WHERE status = 'failed' AND ($1::bigint[] IS NULL OR id = ANY($1))",
        )
        .bind(ids)
        .execute(&self.pool)
        .await
        .map_err(db)?
        .rows_affected();
        if retried > 0 {
            self.notify().await?;
        }
        Ok(retried)
    }

    async fn purge(&self, status: JobStatus) -> Result<u64> {
        if status == JobStatus::Processing {
            return Err(QueueError::Invalid(
                "refusing to purge processing jobs: workers hold them; rescue stale ones first"
                    .to_owned(),
            )
            .into());
        }
        // Purged jobs free their keys: a later enqueue with the same key creates a new job.
        let purged: i64 = if status == JobStatus::Completed {
            sqlx::query_scalar(
                "WITH gone AS (DELETE FROM observer_jobs_completed RETURNING id, unique_key), \
                 freed AS (DELETE FROM observer_job_keys k USING gone \
                           WHERE k.unique_key = gone.unique_key AND k.job_id = gone.id) \
                 SELECT count(*) FROM gone",
            )
            .fetch_one(&self.pool)
            .await
        } else {
            sqlx::query_scalar(
                "WITH gone AS (DELETE FROM observer_jobs WHERE status = $1 RETURNING id, unique_key), \
                 freed AS (DELETE FROM observer_job_keys k USING gone \
                           WHERE k.unique_key = gone.unique_key AND k.job_id = gone.id) \
                 SELECT count(*) FROM gone",
            )
            .bind(status.as_str())
            .fetch_one(&self.pool)
            .await
        }
        .map_err(db)?;
        Ok(u64::try_from(purged).unwrap_or_default())
    }

    async fn wait_for_jobs(&self, timeout: Duration) -> bool {
        self.ensure_listening();
        tokio::time::timeout(timeout, self.wake.notified())
            .await
            .is_ok()
    }

    async fn release(&self, worker: &str, ids: &[i64]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let released = sqlx::query(
            "UPDATE observer_jobs SET status = 'pending', attempts = greatest(attempts - 1, 0), \
               worker_id = NULL, heartbeat_at = NULL \
             WHERE id = ANY($2::bigint[]) AND worker_id = $1 AND status = 'processing'",
        )
        .bind(worker)
        .bind(ids)
        .execute(&self.pool)
        .await
        .map_err(db)?
        .rows_affected();
        if released > 0 {
            self.notify().await?;
        }
        Ok(released)
    }

    async fn next_run_at(&self, queue: &str) -> Result<Option<DateTime<Utc>>> {
        sqlx::query_scalar(
            "SELECT min(c.run_at) FROM observer_jobs c \
             WHERE c.status = 'pending' AND c.queue_name = $1 \
               AND (c.group_key IS NULL OR NOT EXISTS ( \
                 SELECT 1 FROM observer_jobs e \
                 WHERE e.group_key = c.group_key AND e.id < c.id AND e.status <> 'failed'))",
        )
        .bind(queue)
        .fetch_one(&self.pool)
        .await
        .map_err(db)
    }
}
