//! Running queued actions: a job written by the executor for a `mode = "queued"` action
//! (payload `{observer, action_index, event}`) runs that action of the current observer set,
//! one attempt per run (timeout and circuit breaker apply); a job that fails for good is
//! dead-lettered like an inline action.

use std::sync::Arc;

use async_trait::async_trait;
use observers_core::stores::dlq::DlqEntry;
use observers_core::stores::jobs::Job;
use observers_core::{EntityEvent, ObserverError, ObserverExecutor, Result};
use serde::{Deserialize, Serialize};

use crate::worker::JobHandler;

/// The payload of a queued action's job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedAction {
    pub observer: String,
    pub action_index: usize,
    pub event: EntityEvent,
    /// Appended to the idempotency key (a replay's `replay-{replay_id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_suffix: Option<String>,
}

impl QueuedAction {
    pub fn from_job(job: &Job) -> Result<Self> {
        observers_core::numbers::from_json(&job.payload).map_err(|e| {
            ObserverError::permanent(
                "OBS-JOB-BAD-PAYLOAD",
                format!(
                    "job {} ({}): payload is not a queued action ({e})",
                    job.id, job.kind
                ),
            )
        })
    }
}

/// Runs queued actions through an executor (whose observer set may be reloaded meanwhile)
/// and dead-letters into the executor's DLQ.
pub struct ActionJobHandler {
    executor: Arc<ObserverExecutor>,
}

impl ActionJobHandler {
    pub fn new(executor: Arc<ObserverExecutor>) -> Self {
        Self { executor }
    }
}

#[async_trait]
impl JobHandler for ActionJobHandler {
    async fn run(&self, job: &Job) -> Result<()> {
        let a = QueuedAction::from_job(job)?;
        self.executor
            .run_job(
                &a.event,
                &a.observer,
                a.action_index,
                job.attempts,
                a.key_suffix.as_deref(),
            )
            .await
            .map(|_| ())
    }

    async fn dead_letter(&self, job: &Job, error: &ObserverError) -> Result<()> {
        let a = QueuedAction::from_job(job)?;
        self.executor
            .dlq()
            .push(DlqEntry {
                event: a.event,
                observer: a.observer,
                action_index: a.action_index,
                action_type: job.kind.clone(),
                error_code: error.code().to_owned(),
                error: error.to_string(),
                attempts: job.attempts,
            })
            .await?;
        Ok(())
    }
}
