//! PostgreSQL job queue (`observer_jobs`: `FOR UPDATE SKIP LOCKED` batches, NOTIFY wake-up,
//! heartbeats, stale-job rescue, retries through `run_at`), the handler that runs queued
//! actions, the worker pool behind `[queue] workers` and `observers worker`, per-queue depth
//! for status and per-queue figures for `observers jobs`.
#![forbid(unsafe_code)]

pub mod depth;
pub mod error;
pub mod handler;
pub mod pg;
pub mod stats;
pub mod worker;

pub use depth::{QueueDepth, queue_depths};
pub use error::QueueError;
pub use handler::{ActionJobHandler, QueuedAction};
pub use pg::PostgresJobQueue;
pub use stats::{QueueStats, list_jobs, queue_stats};
pub use worker::{JobHandler, PoolStats, WorkerConfig, WorkerPool};
