//! PostgreSQL job queue, queued-action executor and worker pool. Filled by the observers-queue issue (#5); nothing here yet.
