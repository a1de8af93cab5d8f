//! PostgreSQL job queue (`observer_jobs`: `FOR UPDATE SKIP LOCKED` batches, NOTIFY wake-up,
//! heartbeats, stale-job rescue, retries through `run_at`), the handler that runs queued
//! actions, and the worker pool behind `[queue] workers` and `observers worker`.
#![forbid(unsafe_code)]

pub mod error;
pub mod handler;
pub mod pg;
pub mod worker;

pub use error::QueueError;
pub use handler::{ActionJobHandler, QueuedAction};
pub use pg::PostgresJobQueue;
pub use worker::{JobHandler, PoolStats, WorkerConfig, WorkerPool};
