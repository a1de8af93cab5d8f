//! The durable job queue that long-running actions and long retry schedules go through: the
//! `JobQueue` trait, its job types, and a bounded in-memory queue.
//!
//! Jobs are scheduled in wall time (`run_at` is a `DateTime<Utc>`), because a schedule must mean
//! the same thing to every process and survive restarts. Delivery is at least once: a worker
//! that stops heartbeating loses its jobs to `rescue_stale`, and they run again.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Notify;

use super::lock;
use crate::clock::SharedClock;
use crate::error::{ObserverError, Result};

/// Attempts a job gets when its producer does not say: one, plus the seven retries of the
/// long schedule (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h; docs/queue.md).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 8;

/// How many jobs [`MemoryJobQueue::new`] holds.
pub const DEFAULT_MAX_JOBS: usize = 100_000;

/// A job to enqueue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewJob {
    pub queue: String,
    /// The action type that runs it (`webhook`, `email`, ...).
    pub kind: String,
    pub payload: Value,
    /// Enqueueing twice with the same key yields one job.
    #[serde(default)]
    pub unique_key: Option<String>,
    /// Higher runs first.
    #[serde(default)]
    pub priority: i32,
    /// Not before this instant; `None` means now.
    #[serde(default)]
    pub run_at: Option<DateTime<Utc>>,
    /// At least one.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Jobs with the same group run one at a time, in enqueue order (see [`JobQueue::dequeue`]).
    #[serde(default)]
    pub group_key: Option<String>,
}

fn default_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}

impl NewJob {
    pub fn new(queue: impl Into<String>, kind: impl Into<String>, payload: Value) -> Self {
        Self {
            queue: queue.into(),
            kind: kind.into(),
            payload,
            unique_key: None,
            priority: 0,
            run_at: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            group_key: None,
        }
    }

    #[must_use]
    pub fn with_group_key(mut self, group: impl Into<String>) -> Self {
        self.group_key = Some(group.into());
        self
    }

    #[must_use]
    pub fn with_unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }

    #[must_use]
    pub fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    #[must_use]
    pub fn with_run_at(mut self, run_at: DateTime<Utc>) -> Self {
        self.run_at = Some(run_at);
        self
    }

    #[must_use]
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Pending,
    Processing,
    Completed,
    Failed,
}

impl JobStatus {
    pub const ALL: [JobStatus; 4] = [
        JobStatus::Pending,
        JobStatus::Processing,
        JobStatus::Completed,
        JobStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Processing => "processing",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
        }
    }

    fn index(self) -> usize {
        match self {
            JobStatus::Pending => 0,
            JobStatus::Processing => 1,
            JobStatus::Completed => 2,
            JobStatus::Failed => 3,
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobStatus::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                format!("unknown job status `{s}`; expected one of pending, processing, completed, failed")
            })
    }
}

/// A stored job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: i64,
    pub queue: String,
    pub kind: String,
    pub payload: Value,
    pub unique_key: Option<String>,
    pub priority: i32,
    pub run_at: DateTime<Utc>,
    /// Attempts started so far (incremented by `dequeue`).
    pub attempts: u32,
    pub max_attempts: u32,
    pub status: JobStatus,
    pub last_error: Option<String>,
    /// The worker holding the job while it is processing; kept afterwards as the last worker.
    pub locked_by: Option<String>,
    pub heartbeat_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// The job's serial group, if any.
    #[serde(default)]
    pub group_key: Option<String>,
}

/// What an enqueue did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnqueueOutcome {
    Enqueued(i64),
    /// A job with the same unique key exists (in any status); this is its id.
    Duplicate(i64),
}

impl EnqueueOutcome {
    pub fn id(self) -> i64 {
        match self {
            EnqueueOutcome::Enqueued(id) | EnqueueOutcome::Duplicate(id) => id,
        }
    }

    pub fn is_duplicate(self) -> bool {
        matches!(self, EnqueueOutcome::Duplicate(_))
    }
}

/// Counts by status, and the mean time from dequeue to completion over completed jobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct JobStats {
    pub pending: u64,
    pub processing: u64,
    pub completed: u64,
    pub failed: u64,
    pub avg_run_ms: Option<f64>,
}

/// What a stale-job rescue did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rescued {
    /// Jobs put back to pending (attempts left).
    pub requeued: u64,
    /// Jobs failed for good (their dead run was the last attempt), for the caller to
    /// dead-letter; their `last_error` is [`stale_error`].
    pub failed: Vec<Job>,
}

impl Rescued {
    pub fn total(&self) -> u64 {
        self.requeued
            .saturating_add(u64::try_from(self.failed.len()).unwrap_or(u64::MAX))
    }
}

/// The error of a job failed by rescue: its worker died on the job's last attempt.
pub fn stale_error(job: &Job) -> ObserverError {
    ObserverError::permanent(
        "OBS-JOB-STALE",
        format!(
            "worker {} stopped heartbeating during attempt {} of {} (the job may crash its worker); \
             failed for good",
            job.locked_by.as_deref().unwrap_or("?"),
            job.attempts,
            job.max_attempts
        ),
    )
}

/// A durable queue of jobs. `dequeue` must be atomic: two concurrent calls never return the
/// same job (PostgreSQL: `FOR UPDATE SKIP LOCKED`).
#[async_trait]
pub trait JobQueue: Send + Sync {
    /// Idempotent on `unique_key`.
    async fn enqueue(&self, job: NewJob) -> Result<EnqueueOutcome>;
    /// Up to `max` due jobs (`run_at <= now`) of `queue`, by priority (highest first), then
    /// `run_at`, then id; each becomes processing under `worker` with one more attempt.
    /// A job with a `group_key` is taken only when no job of its group with a lower id is
    /// pending (due or waiting for a retry) or processing: a group runs one job at a time, in
    /// id order. A job that failed for good does not hold its group back.
    async fn dequeue(&self, queue: &str, worker: &str, max: usize) -> Result<Vec<Job>>;
    /// Refreshes `heartbeat_at` of those jobs that `worker` still holds; others are ignored.
    async fn heartbeat(&self, worker: &str, ids: &[i64]) -> Result<()>;
    /// Marks a job `worker` holds (processing under its id) completed. Completing a job that
    /// this worker completed is a no-op; a job it no longer holds (rescued, re-taken, purged)
    /// is an error and stays as it is.
    async fn complete(&self, worker: &str, id: i64) -> Result<()>;
    /// Records a failed attempt of a job `worker` holds. With `retry_at` and attempts left the
    /// job goes back to pending at `retry_at`; otherwise it fails for good. Returns the new
    /// status. A job the worker no longer holds is an error and stays as it is. The error text
    /// is stored as [`crate::text::storable`] makes it.
    async fn fail(
        &self,
        worker: &str,
        id: i64,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
    ) -> Result<JobStatus>;
    /// Handles every processing job whose heartbeat is older than `older_than` (its worker
    /// died): back to pending while it has attempts left, otherwise failed for good (the dead
    /// run was its last attempt: a job that kills its worker every time ends here).
    async fn rescue_stale(&self, older_than: Duration) -> Result<Rescued>;
    async fn stats(&self) -> Result<JobStats>;
    /// Newest first (highest id); all statuses when `status` is `None`.
    async fn list(&self, status: Option<JobStatus>, limit: usize) -> Result<Vec<Job>>;
    /// Failed jobs (all, or those of `ids`) back to pending now, attempts reset; returns how many.
    async fn retry_failed(&self, ids: Option<&[i64]>) -> Result<u64>;
    /// Deletes every job with `status` (not `Processing`: workers hold those); returns how many.
    async fn purge(&self, status: JobStatus) -> Result<u64>;
    /// Waits until a job may be ready (one was enqueued or made pending) or `timeout` passes.
    /// `true` when woken early; wake-ups may be spurious, so dequeue and loop.
    async fn wait_for_jobs(&self, timeout: Duration) -> bool;
    /// Gives back jobs `worker` holds but has not run (shutdown): pending again, the attempt
    /// taken by `dequeue` not counted. Others are ignored; returns how many.
    async fn release(&self, worker: &str, ids: &[i64]) -> Result<u64>;

    /// Enqueues several jobs; outcomes in input order. Backends override it with one round trip.
    async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<EnqueueOutcome>> {
        let mut out = Vec::with_capacity(jobs.len());
        for job in jobs {
            out.push(self.enqueue(job).await?);
        }
        Ok(out)
    }

    /// Completes the jobs among `ids` that `worker` holds (others are skipped: rescued,
    /// re-taken, purged); returns how many were completed. Backends override it with one round
    /// trip.
    async fn complete_many(&self, worker: &str, ids: &[i64]) -> Result<u64> {
        let mut done = 0;
        for &id in ids {
            if self.complete(worker, id).await.is_ok() {
                done += 1;
            }
        }
        Ok(done)
    }

    /// When the next pending job of `queue` falls due (`None`: none pending, or not known),
    /// so an idle worker sleeps until then rather than a whole poll interval.
    async fn next_run_at(&self, _queue: &str) -> Result<Option<DateTime<Utc>>> {
        Ok(None)
    }
}

/// Where wall time comes from: the system, or a fixed instant moved by an injected clock.
#[derive(Debug)]
enum WallClock {
    System,
    Anchored {
        base: DateTime<Utc>,
        origin: Duration,
        clock: SharedClock,
    },
}

impl WallClock {
    fn now(&self) -> DateTime<Utc> {
        match self {
            WallClock::System => Utc::now(),
            WallClock::Anchored {
                base,
                origin,
                clock,
            } => {
                let elapsed = TimeDelta::from_std(clock.now().saturating_sub(*origin))
                    .unwrap_or(TimeDelta::MAX);
                base.checked_add_signed(elapsed)
                    .unwrap_or(DateTime::<Utc>::MAX_UTC)
            }
        }
    }
}

struct Slot {
    job: Job,
    /// When the current (or last) attempt was dequeued.
    started_at: Option<DateTime<Utc>>,
    /// Dequeue-to-completion time, once completed.
    run_ms: Option<f64>,
}

/// Pending jobs of one queue: those already due, in dequeue order, and those scheduled later,
/// in `run_at` order (moved over as they fall due).
#[derive(Default)]
struct Lanes {
    ready: BTreeSet<(Reverse<i32>, DateTime<Utc>, i64)>,
    scheduled: BTreeSet<(DateTime<Utc>, i64, i32)>,
}

#[derive(Default)]
struct QueueState {
    last_id: i64,
    jobs: HashMap<i64, Slot>,
    unique: HashMap<String, i64>,
    /// Job ids per status, indexed by `JobStatus::index`.
    by_status: [BTreeSet<i64>; 4],
    lanes: HashMap<String, Lanes>,
    /// Live (pending or processing) job ids per serial group.
    groups: HashMap<String, BTreeSet<i64>>,
    run_ms_sum: f64,
}

/// Whether an earlier job of `job`'s group is live.
fn blocked(groups: &HashMap<String, BTreeSet<i64>>, job: &Job) -> bool {
    job.group_key
        .as_ref()
        .and_then(|g| groups.get(g))
        .and_then(BTreeSet::first)
        .is_some_and(|&first| first < job.id)
}

impl QueueState {
    fn slot(&mut self, id: i64) -> Result<&mut Slot> {
        self.jobs.get_mut(&id).ok_or_else(|| ObserverError::Store {
            backend: "memory",
            message: format!("job {id} does not exist (it may have been purged)"),
            transient: false,
        })
    }

    fn move_status(&mut self, id: i64, from: JobStatus, to: JobStatus) {
        self.by_status[from.index()].remove(&id);
        self.by_status[to.index()].insert(id);
    }

    /// Puts a pending job in its queue's lanes.
    fn schedule(&mut self, job: &Job) {
        self.lanes
            .entry(job.queue.clone())
            .or_default()
            .scheduled
            .insert((job.run_at, job.id, job.priority));
    }

    /// Makes a job pending at `run_at`, wherever it was.
    fn make_pending(&mut self, id: i64, run_at: Option<DateTime<Utc>>) -> Result<()> {
        let slot = self.slot(id)?;
        let from = slot.job.status;
        slot.job.status = JobStatus::Pending;
        slot.job.locked_by = None;
        slot.job.heartbeat_at = None;
        if let Some(at) = run_at {
            slot.job.run_at = at;
        }
        let job = slot.job.clone();
        self.move_status(id, from, JobStatus::Pending);
        self.schedule(&job);
        Ok(())
    }

    /// The job stops holding back later jobs of its group (completed, failed, removed).
    fn leave_group(&mut self, id: i64) {
        let Some(group) = self.jobs.get(&id).and_then(|s| s.job.group_key.clone()) else {
            return;
        };
        if let Some(live) = self.groups.get_mut(&group) {
            live.remove(&id);
            if live.is_empty() {
                self.groups.remove(&group);
            }
        }
    }

    /// The job is live in its group again (enqueued, retried by an operator).
    fn join_group(&mut self, id: i64) {
        if let Some(group) = self.jobs.get(&id).and_then(|s| s.job.group_key.clone()) {
            self.groups.entry(group).or_default().insert(id);
        }
    }

    fn remove(&mut self, id: i64) -> Option<Slot> {
        self.leave_group(id);
        let slot = self.jobs.remove(&id)?;
        let job = &slot.job;
        self.by_status[job.status.index()].remove(&id);
        if let Some(key) = &job.unique_key
            && self.unique.get(key) == Some(&id)
        {
            self.unique.remove(key);
        }
        if job.status == JobStatus::Pending
            && let Some(lanes) = self.lanes.get_mut(&job.queue)
        {
            lanes.ready.remove(&(Reverse(job.priority), job.run_at, id));
            lanes.scheduled.remove(&(job.run_at, id, job.priority));
        }
        if let Some(ms) = slot.run_ms {
            self.run_ms_sum -= ms;
        }
        if self.by_status[JobStatus::Completed.index()].is_empty() {
            // Keep float drift from outliving the jobs it came from.
            self.run_ms_sum = 0.0;
        }
        Some(slot)
    }

    fn count(&self, status: JobStatus) -> u64 {
        u64::try_from(self.by_status[status.index()].len()).unwrap_or(u64::MAX)
    }
}

/// A bounded in-memory job queue. When full, enqueue first drops the oldest completed job;
/// if none has completed it refuses with a transient error (back-pressure). Failed jobs are
/// never dropped: they wait for an operator.
pub struct MemoryJobQueue {
    state: Mutex<QueueState>,
    max_jobs: usize,
    wall: WallClock,
    notify: Notify,
}

impl fmt::Debug for MemoryJobQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryJobQueue")
            .field("max_jobs", &self.max_jobs)
            .field("jobs", &lock(&self.state).jobs.len())
            .field("wall", &self.wall)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryJobQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryJobQueue {
    /// A queue of at most [`DEFAULT_MAX_JOBS`] on the system wall clock.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_MAX_JOBS)
    }

    /// A queue of at most `max_jobs` (at least one) on the system wall clock.
    pub fn with_capacity(max_jobs: usize) -> Self {
        Self {
            state: Mutex::new(QueueState::default()),
            max_jobs: max_jobs.max(1),
            wall: WallClock::System,
            notify: Notify::new(),
        }
    }

    /// Wall time starts at the current system time and then moves only with `clock`, so tests
    /// drive schedules and heartbeats with a `ManualClock`.
    #[must_use]
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.wall = WallClock::Anchored {
            base: Utc::now(),
            origin: clock.now(),
            clock,
        };
        self
    }

    /// The queue's idea of now.
    pub fn now(&self) -> DateTime<Utc> {
        self.wall.now()
    }

    /// Wakes every waiting worker, and leaves a permit for the next one to wait, so a job
    /// enqueued between a worker's empty dequeue and its wait is not slept through.
    fn wake(&self) {
        self.notify.notify_waiters();
        self.notify.notify_one();
    }

    fn full_error(&self) -> ObserverError {
        ObserverError::store(
            "memory",
            format!(
                "job queue is full ({} jobs, none completed to drop); let workers catch up, \
                 or purge failed or pending jobs",
                self.max_jobs
            ),
        )
    }

    fn not_held(job: &Job, worker: &str, what: &str) -> ObserverError {
        ObserverError::Store {
            backend: "memory",
            message: format!(
                "cannot {what} job {} for worker {worker}: it is {} under {} (a stale worker \
                 may have lost it)",
                job.id,
                job.status,
                job.locked_by.as_deref().unwrap_or("no worker")
            ),
            transient: false,
        }
    }
}

#[async_trait]
impl JobQueue for MemoryJobQueue {
    async fn enqueue(&self, new: NewJob) -> Result<EnqueueOutcome> {
        let now = self.now();
        let mut state = lock(&self.state);
        if let Some(key) = &new.unique_key
            && let Some(&id) = state.unique.get(key)
        {
            return Ok(EnqueueOutcome::Duplicate(id));
        }
        if state.jobs.len() >= self.max_jobs {
            let oldest = state.by_status[JobStatus::Completed.index()]
                .first()
                .copied();
            match oldest {
                Some(id) => {
                    state.remove(id);
                }
                None => return Err(self.full_error()),
            }
        }
        state.last_id += 1;
        let id = state.last_id;
        let job = Job {
            id,
            queue: new.queue,
            kind: new.kind,
            payload: new.payload,
            unique_key: new.unique_key,
            priority: new.priority,
            run_at: new.run_at.unwrap_or(now),
            attempts: 0,
            max_attempts: new.max_attempts.max(1),
            status: JobStatus::Pending,
            last_error: None,
            locked_by: None,
            heartbeat_at: None,
            created_at: now,
            group_key: new.group_key,
        };
        if let Some(key) = &job.unique_key {
            state.unique.insert(key.clone(), id);
        }
        state.by_status[JobStatus::Pending.index()].insert(id);
        state.schedule(&job);
        state.jobs.insert(
            id,
            Slot {
                job,
                started_at: None,
                run_ms: None,
            },
        );
        state.join_group(id);
        drop(state);
        self.wake();
        Ok(EnqueueOutcome::Enqueued(id))
    }

    async fn dequeue(&self, queue: &str, worker: &str, max: usize) -> Result<Vec<Job>> {
        let now = self.now();
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        let Some(lanes) = state.lanes.get_mut(queue) else {
            return Ok(Vec::new());
        };
        while let Some(&(run_at, id, priority)) = lanes.scheduled.first()
            && run_at <= now
        {
            lanes.scheduled.pop_first();
            lanes.ready.insert((Reverse(priority), run_at, id));
        }
        // In order, skipping jobs whose group has an earlier live job (they stay ready).
        let mut taken = Vec::with_capacity(max.min(lanes.ready.len()));
        for &(prio, at, id) in &lanes.ready {
            if taken.len() >= max {
                break;
            }
            let free = state
                .jobs
                .get(&id)
                .is_none_or(|slot| !blocked(&state.groups, &slot.job));
            if free {
                taken.push((prio, at, id));
            }
        }
        for entry in &taken {
            lanes.ready.remove(entry);
        }
        let taken: Vec<i64> = taken.into_iter().map(|(_, _, id)| id).collect();
        let mut jobs = Vec::with_capacity(taken.len());
        for id in taken {
            let Some(slot) = state.jobs.get_mut(&id) else {
                continue;
            };
            slot.job.status = JobStatus::Processing;
            slot.job.attempts = slot.job.attempts.saturating_add(1);
            slot.job.locked_by = Some(worker.to_owned());
            slot.job.heartbeat_at = Some(now);
            slot.started_at = Some(now);
            jobs.push(slot.job.clone());
            state.by_status[JobStatus::Pending.index()].remove(&id);
            state.by_status[JobStatus::Processing.index()].insert(id);
        }
        Ok(jobs)
    }

    async fn heartbeat(&self, worker: &str, ids: &[i64]) -> Result<()> {
        let now = self.now();
        let mut state = lock(&self.state);
        for id in ids {
            if let Some(slot) = state.jobs.get_mut(id)
                && slot.job.status == JobStatus::Processing
                && slot.job.locked_by.as_deref() == Some(worker)
            {
                slot.job.heartbeat_at = Some(now);
            }
        }
        Ok(())
    }

    async fn complete(&self, worker: &str, id: i64) -> Result<()> {
        let now = self.now();
        let mut state = lock(&self.state);
        let slot = state.slot(id)?;
        let mine = slot.job.locked_by.as_deref() == Some(worker);
        match slot.job.status {
            JobStatus::Completed if mine => return Ok(()),
            JobStatus::Processing if mine => {}
            _ => return Err(Self::not_held(&slot.job, worker, "complete")),
        }
        slot.job.status = JobStatus::Completed;
        let run_ms = slot
            .started_at
            .and_then(|s| (now - s).to_std().ok())
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        slot.run_ms = Some(run_ms);
        state.run_ms_sum += run_ms;
        state.move_status(id, JobStatus::Processing, JobStatus::Completed);
        state.leave_group(id);
        drop(state);
        // Later jobs of its group may run now.
        self.wake();
        Ok(())
    }

    async fn complete_many(&self, worker: &str, ids: &[i64]) -> Result<u64> {
        let mut done = 0;
        for &id in ids {
            let held = {
                let state = lock(&self.state);
                state.jobs.get(&id).is_some_and(|s| {
                    s.job.status == JobStatus::Processing
                        && s.job.locked_by.as_deref() == Some(worker)
                })
            };
            if held && self.complete(worker, id).await.is_ok() {
                done += 1;
            }
        }
        Ok(done)
    }

    async fn fail(
        &self,
        worker: &str,
        id: i64,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
    ) -> Result<JobStatus> {
        let mut state = lock(&self.state);
        let slot = state.slot(id)?;
        if slot.job.status != JobStatus::Processing || slot.job.locked_by.as_deref() != Some(worker)
        {
            return Err(Self::not_held(&slot.job, worker, "fail"));
        }
        slot.job.last_error = Some(crate::text::storable(error).into_owned());
        match retry_at {
            Some(at) if slot.job.attempts < slot.job.max_attempts => {
                state.make_pending(id, Some(at))?;
                drop(state);
                self.wake();
                Ok(JobStatus::Pending)
            }
            _ => {
                slot.job.status = JobStatus::Failed;
                state.move_status(id, JobStatus::Processing, JobStatus::Failed);
                state.leave_group(id);
                drop(state);
                // A failed job no longer holds back later jobs of its group.
                self.wake();
                Ok(JobStatus::Failed)
            }
        }
    }

    async fn rescue_stale(&self, older_than: Duration) -> Result<Rescued> {
        let now = self.now();
        let cutoff = TimeDelta::from_std(older_than)
            .ok()
            .and_then(|d| now.checked_sub_signed(d))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let mut state = lock(&self.state);
        let abandoned: Vec<i64> = state.by_status[JobStatus::Processing.index()]
            .iter()
            .copied()
            .filter(|id| {
                state
                    .jobs
                    .get(id)
                    .is_some_and(|s| s.job.heartbeat_at.is_none_or(|h| h < cutoff))
            })
            .collect();
        let mut rescued = Rescued::default();
        for &id in &abandoned {
            let slot = state.slot(id)?;
            if slot.job.attempts < slot.job.max_attempts {
                state.make_pending(id, None)?;
                rescued.requeued += 1;
            } else {
                slot.job.last_error = Some(stale_error(&slot.job).to_string());
                slot.job.status = JobStatus::Failed;
                rescued.failed.push(slot.job.clone());
                state.move_status(id, JobStatus::Processing, JobStatus::Failed);
                state.leave_group(id);
            }
        }
        drop(state);
        if !abandoned.is_empty() {
            tracing::warn!(
                requeued = rescued.requeued,
                failed = rescued.failed.len(),
                "rescued jobs whose worker stopped heartbeating"
            );
            self.wake();
        }
        Ok(rescued)
    }

    async fn stats(&self) -> Result<JobStats> {
        let state = lock(&self.state);
        let completed = state.count(JobStatus::Completed);
        #[expect(
            clippy::cast_precision_loss,
            reason = "a mean needs no more than f64's 52 bits"
        )]
        let avg_run_ms = (completed > 0).then(|| state.run_ms_sum / completed as f64);
        Ok(JobStats {
            pending: state.count(JobStatus::Pending),
            processing: state.count(JobStatus::Processing),
            completed,
            failed: state.count(JobStatus::Failed),
            avg_run_ms,
        })
    }

    async fn list(&self, status: Option<JobStatus>, limit: usize) -> Result<Vec<Job>> {
        let state = lock(&self.state);
        let mut ids: Vec<i64> = match status {
            Some(st) => state.by_status[st.index()]
                .iter()
                .rev()
                .take(limit)
                .copied()
                .collect(),
            None => state.jobs.keys().copied().collect(),
        };
        ids.sort_unstable_by(|a, b| b.cmp(a));
        ids.truncate(limit);
        Ok(ids
            .into_iter()
            .filter_map(|id| state.jobs.get(&id).map(|s| s.job.clone()))
            .collect())
    }

    async fn retry_failed(&self, ids: Option<&[i64]>) -> Result<u64> {
        let now = self.now();
        let mut state = lock(&self.state);
        let failed = &state.by_status[JobStatus::Failed.index()];
        let targets: Vec<i64> = match ids {
            Some(ids) => ids
                .iter()
                .copied()
                .filter(|id| failed.contains(id))
                .collect(),
            None => failed.iter().copied().collect(),
        };
        for &id in &targets {
            state.slot(id)?.job.attempts = 0;
            state.make_pending(id, Some(now))?;
            state.join_group(id);
        }
        drop(state);
        if !targets.is_empty() {
            self.wake();
        }
        Ok(u64::try_from(targets.len()).unwrap_or(u64::MAX))
    }

    async fn purge(&self, status: JobStatus) -> Result<u64> {
        if status == JobStatus::Processing {
            return Err(ObserverError::Store {
                backend: "memory",
                message: "refusing to purge processing jobs: workers hold them; \
                          rescue stale ones first"
                    .to_owned(),
                transient: false,
            });
        }
        let mut state = lock(&self.state);
        let ids: Vec<i64> = state.by_status[status.index()].iter().copied().collect();
        for &id in &ids {
            state.remove(id);
        }
        Ok(u64::try_from(ids.len()).unwrap_or(u64::MAX))
    }

    async fn wait_for_jobs(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.notify.notified())
            .await
            .is_ok()
    }

    async fn release(&self, worker: &str, ids: &[i64]) -> Result<u64> {
        let mut state = lock(&self.state);
        let mut released = 0u64;
        for &id in ids {
            let held = state.jobs.get_mut(&id).is_some_and(|slot| {
                let held = slot.job.status == JobStatus::Processing
                    && slot.job.locked_by.as_deref() == Some(worker);
                if held {
                    slot.job.attempts = slot.job.attempts.saturating_sub(1);
                }
                held
            });
            if held {
                state.make_pending(id, None)?;
                released += 1;
            }
        }
        drop(state);
        if released > 0 {
            self.wake();
        }
        Ok(released)
    }

    async fn next_run_at(&self, queue: &str) -> Result<Option<DateTime<Utc>>> {
        let state = lock(&self.state);
        let free = |id: &i64| {
            state
                .jobs
                .get(id)
                .is_some_and(|slot| !blocked(&state.groups, &slot.job))
        };
        Ok(state.lanes.get(queue).and_then(|l| {
            let ready = l
                .ready
                .iter()
                .filter(|(_, _, id)| free(id))
                .map(|&(_, at, _)| at)
                .min();
            let scheduled = l
                .scheduled
                .iter()
                .find(|(_, id, _)| free(id))
                .map(|&(at, _, _)| at);
            match (ready, scheduled) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use serde_json::json;
    use std::sync::Arc;

    fn queue() -> (MemoryJobQueue, ManualClock) {
        let clock = ManualClock::new();
        (
            MemoryJobQueue::new().with_clock(Arc::new(clock.clone())),
            clock,
        )
    }

    fn job(n: i64) -> NewJob {
        NewJob::new("email", "email", json!({ "n": n }))
    }

    fn ids(jobs: &[Job]) -> Vec<i64> {
        jobs.iter().map(|j| j.id).collect()
    }

    fn secs(s: i64) -> TimeDelta {
        TimeDelta::seconds(s)
    }

    #[tokio::test]
    async fn dequeue_marks_processing_and_orders_by_priority_run_at_id() {
        let (q, clock) = queue();
        let now = q.now();
        let a = q.enqueue(job(1)).await.unwrap().id();
        let b = q.enqueue(job(2).with_priority(5)).await.unwrap().id();
        let c = q
            .enqueue(job(3).with_run_at(now - secs(10)))
            .await
            .unwrap()
            .id();
        let later = q
            .enqueue(job(4).with_priority(9).with_run_at(now + secs(60)))
            .await
            .unwrap()
            .id();
        q.enqueue(NewJob::new("other", "webhook", json!({})))
            .await
            .unwrap();

        let got = q.dequeue("email", "w1", 10).await.unwrap();
        assert_eq!(
            ids(&got),
            vec![b, c, a],
            "priority desc, then run_at, then id"
        );
        for j in &got {
            assert_eq!(j.status, JobStatus::Processing);
            assert_eq!(j.attempts, 1);
            assert_eq!(j.locked_by.as_deref(), Some("w1"));
            assert_eq!(j.heartbeat_at, Some(now));
        }
        assert!(
            q.dequeue("email", "w1", 10).await.unwrap().is_empty(),
            "job 4 is not due"
        );
        assert!(q.dequeue("missing", "w1", 10).await.unwrap().is_empty());
        clock.advance(Duration::from_secs(60));
        assert_eq!(
            ids(&q.dequeue("email", "w1", 10).await.unwrap()),
            vec![later]
        );
        assert_eq!(
            q.dequeue("other", "w1", 0).await.unwrap().len(),
            0,
            "max 0 takes nothing"
        );
        assert_eq!(q.dequeue("other", "w1", 1).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn enqueue_is_idempotent_on_unique_key_in_any_status() {
        let (q, _) = queue();
        let first = q
            .enqueue(job(1).with_unique_key("evt-1:webhook"))
            .await
            .unwrap();
        assert!(matches!(first, EnqueueOutcome::Enqueued(_)));
        let again = q
            .enqueue(job(2).with_unique_key("evt-1:webhook"))
            .await
            .unwrap();
        assert_eq!(again, EnqueueOutcome::Duplicate(first.id()));
        q.dequeue("email", "w", 1).await.unwrap();
        q.complete("w", first.id()).await.unwrap();
        let after = q
            .enqueue(job(3).with_unique_key("evt-1:webhook"))
            .await
            .unwrap();
        assert!(after.is_duplicate() && after.id() == first.id());
        assert_eq!(q.stats().await.unwrap().pending, 0);
        // Purging the job frees its key.
        assert_eq!(q.purge(JobStatus::Completed).await.unwrap(), 1);
        let fresh = q
            .enqueue(job(4).with_unique_key("evt-1:webhook"))
            .await
            .unwrap();
        assert!(!fresh.is_duplicate() && fresh.id() > first.id());
    }

    #[tokio::test]
    async fn fail_retries_at_retry_at_until_attempts_run_out() {
        let (q, clock) = queue();
        let id = q.enqueue(job(1).with_max_attempts(2)).await.unwrap().id();
        q.dequeue("email", "w", 1).await.unwrap();
        let retry_at = q.now() + secs(300);
        assert_eq!(
            q.fail("w", id, "502 from hooks", Some(retry_at))
                .await
                .unwrap(),
            JobStatus::Pending
        );
        let listed = q.list(Some(JobStatus::Pending), 10).await.unwrap();
        assert_eq!(listed[0].run_at, retry_at);
        assert_eq!(listed[0].last_error.as_deref(), Some("502 from hooks"));
        assert_eq!(listed[0].locked_by, None);
        assert!(
            q.dequeue("email", "w", 1).await.unwrap().is_empty(),
            "not before retry_at"
        );
        clock.advance(Duration::from_secs(300));
        let again = q.dequeue("email", "w", 1).await.unwrap();
        assert_eq!(again[0].attempts, 2);
        // Attempts exhausted: fails for good even though a retry was asked for.
        assert_eq!(
            q.fail("w", id, "502 again", Some(q.now())).await.unwrap(),
            JobStatus::Failed
        );
        assert!(
            q.fail("w", id, "twice", None).await.is_err(),
            "only processing jobs fail"
        );
        assert!(
            q.complete("w", id).await.is_err(),
            "a failed job cannot complete"
        );
        assert!(q.complete("w", 999).await.is_err(), "unknown job");

        // No retry_at: fails at once, attempts left or not.
        let other = q.enqueue(job(2)).await.unwrap().id();
        q.dequeue("email", "w", 1).await.unwrap();
        assert_eq!(
            q.fail("w", other, "400", None).await.unwrap(),
            JobStatus::Failed
        );
        assert_eq!(q.stats().await.unwrap().failed, 2);
    }

    #[tokio::test]
    async fn heartbeats_keep_jobs_and_stale_ones_are_rescued() {
        let (q, clock) = queue();
        let a = q.enqueue(job(1)).await.unwrap().id();
        let b = q.enqueue(job(2)).await.unwrap().id();
        q.dequeue("email", "alive", 1).await.unwrap();
        q.dequeue("email", "dead", 1).await.unwrap();
        clock.advance(Duration::from_secs(20));
        // Only the holder's heartbeat counts.
        q.heartbeat("alive", &[a, b]).await.unwrap();
        clock.advance(Duration::from_secs(20));
        assert_eq!(
            q.rescue_stale(Duration::from_secs(30))
                .await
                .unwrap()
                .total(),
            1
        );
        let pending = q.list(Some(JobStatus::Pending), 10).await.unwrap();
        assert_eq!(ids(&pending), vec![b]);
        assert_eq!(
            (pending[0].locked_by.clone(), pending[0].attempts),
            (None, 1)
        );
        assert!(
            q.complete("dead", b).await.is_err(),
            "the dead worker lost it"
        );
        let retaken = q.dequeue("email", "new", 1).await.unwrap();
        assert_eq!((retaken[0].id, retaken[0].attempts), (b, 2));
        assert_eq!(
            q.rescue_stale(Duration::from_secs(30))
                .await
                .unwrap()
                .total(),
            0
        );
        q.complete("alive", a).await.unwrap();
        q.complete("alive", a).await.unwrap();
    }

    #[tokio::test]
    async fn stats_list_retry_failed_and_purge() {
        let (q, clock) = queue();
        for n in 1..=4 {
            q.enqueue(job(n).with_max_attempts(1)).await.unwrap();
        }
        let got = q.dequeue("email", "w", 3).await.unwrap();
        clock.advance(Duration::from_millis(250));
        q.complete("w", got[0].id).await.unwrap();
        clock.advance(Duration::from_millis(500));
        q.complete("w", got[1].id).await.unwrap();
        q.fail("w", got[2].id, "boom", Some(q.now())).await.unwrap();
        let stats = q.stats().await.unwrap();
        assert_eq!(
            (
                stats.pending,
                stats.processing,
                stats.completed,
                stats.failed
            ),
            (1, 0, 2, 1)
        );
        assert_eq!(stats.avg_run_ms, Some(500.0), "(250 + 750) / 2");

        assert_eq!(ids(&q.list(None, 10).await.unwrap()), vec![4, 3, 2, 1]);
        assert_eq!(ids(&q.list(None, 2).await.unwrap()), vec![4, 3]);
        assert_eq!(
            ids(&q.list(Some(JobStatus::Completed), 10).await.unwrap()),
            vec![2, 1]
        );

        assert_eq!(
            q.retry_failed(Some(&[1, 999])).await.unwrap(),
            0,
            "only failed jobs"
        );
        assert_eq!(q.retry_failed(None).await.unwrap(), 1);
        let retried = q.dequeue("email", "w", 10).await.unwrap();
        // Job 4 has been due since it was enqueued; job 3 only since its retry.
        assert_eq!(ids(&retried), vec![4, 3]);
        assert_eq!(retried[1].attempts, 1, "attempts were reset");

        assert!(q.purge(JobStatus::Processing).await.is_err());
        assert_eq!(q.purge(JobStatus::Completed).await.unwrap(), 2);
        let stats = q.stats().await.unwrap();
        assert_eq!((stats.completed, stats.avg_run_ms), (0, None));
        assert_eq!(q.list(None, 10).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn full_queue_drops_oldest_completed_then_pushes_back() {
        let q = MemoryJobQueue::with_capacity(2).with_clock(Arc::new(ManualClock::new()));
        let first = q.enqueue(job(1).with_unique_key("one")).await.unwrap().id();
        q.dequeue("email", "w", 1).await.unwrap();
        q.complete("w", first).await.unwrap();
        q.enqueue(job(2)).await.unwrap();
        q.enqueue(job(3)).await.unwrap();
        assert_eq!(
            q.stats().await.unwrap().completed,
            0,
            "completed history made room"
        );
        let err = q.enqueue(job(4)).await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        // The dropped job's unique key is free again once there is room.
        q.purge(JobStatus::Pending).await.unwrap();
        assert!(
            !q.enqueue(job(5).with_unique_key("one"))
                .await
                .unwrap()
                .is_duplicate()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn wait_for_jobs_wakes_on_enqueue_or_times_out() {
        let q = Arc::new(MemoryJobQueue::new());
        assert!(
            !q.wait_for_jobs(Duration::from_secs(5)).await,
            "nothing enqueued: timeout"
        );
        // An enqueue with nobody waiting is not slept through by the next waiter...
        q.enqueue(job(1)).await.unwrap();
        assert!(q.wait_for_jobs(Duration::from_secs(3600)).await);
        // ...but leaves only one early wake-up behind.
        assert!(!q.wait_for_jobs(Duration::from_secs(5)).await);

        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let q = q.clone();
                tokio::spawn(async move { q.wait_for_jobs(Duration::from_secs(3600)).await })
            })
            .collect();
        // Let every waiter register before the enqueue.
        for _ in 0..5 {
            tokio::task::yield_now().await;
        }
        let started = tokio::time::Instant::now();
        q.enqueue(job(2)).await.unwrap();
        for w in waiters {
            assert!(
                w.await.unwrap(),
                "every waiting worker is woken by the enqueue"
            );
        }
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 8)]
    async fn concurrent_workers_dequeue_each_job_exactly_once() {
        let q = Arc::new(MemoryJobQueue::new());
        for n in 0..1000 {
            q.enqueue(job(n).with_priority(i32::try_from(n % 7).unwrap()))
                .await
                .unwrap();
        }
        let workers: Vec<_> = (0..8)
            .map(|w| {
                let q = q.clone();
                tokio::spawn(async move {
                    let worker = format!("w{w}");
                    let mut seen = Vec::new();
                    loop {
                        let batch = q.dequeue("email", &worker, 7).await.unwrap();
                        if batch.is_empty() {
                            break;
                        }
                        for j in batch {
                            assert_eq!(j.locked_by.as_deref(), Some(worker.as_str()));
                            q.complete(&worker, j.id).await.unwrap();
                            seen.push(j.id);
                        }
                        tokio::task::yield_now().await;
                    }
                    seen
                })
            })
            .collect();
        let mut all = Vec::new();
        for w in workers {
            all.extend(w.await.unwrap());
        }
        assert_eq!(all.len(), 1000, "no job dequeued twice or lost");
        all.sort_unstable();
        all.dedup();
        assert_eq!(all, (1..=1000).collect::<Vec<i64>>());
        let stats = q.stats().await.unwrap();
        assert_eq!(
            (stats.pending, stats.processing, stats.completed),
            (0, 0, 1000)
        );
    }

    #[test]
    fn status_wire_and_text_forms() {
        for st in JobStatus::ALL {
            assert_eq!(serde_json::to_value(st).unwrap(), json!(st.as_str()));
            assert_eq!(st.to_string().parse::<JobStatus>().unwrap(), st);
        }
        assert_eq!(" FAILED ".parse::<JobStatus>().unwrap(), JobStatus::Failed);
        assert!(
            "done"
                .parse::<JobStatus>()
                .unwrap_err()
                .contains("expected one of")
        );
        let new: NewJob =
            serde_json::from_value(json!({"queue": "q", "kind": "webhook", "payload": {}}))
                .unwrap();
        assert_eq!(
            (new.priority, new.max_attempts, new.run_at),
            (0, DEFAULT_MAX_ATTEMPTS, None)
        );
    }
}
