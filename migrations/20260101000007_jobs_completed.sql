-- Completed jobs leave `observer_jobs`: a completion DELETEs the job row and INSERTs it, whole,
-- into `observer_jobs_completed` in one statement, instead of a second non-HOT UPDATE of the row.
-- `observer_jobs` keeps only live jobs (pending, processing, failed), so the hot path no longer
-- walks past completed rows however many are kept.
--
-- Enqueue stays idempotent on `unique_key` after completion through `observer_job_keys`, the
-- one place a key is claimed: enqueue inserts the key there (ON CONFLICT DO NOTHING) in the same
-- statement as the job, completion never touches it, and purging a job frees its key. A key thus
-- stays taken while its job exists in either table, race-free (the primary key of one table
-- arbitrates), and a job row no longer carries a unique index through its two updates.
--
-- Upgrades an existing database: existing keys are claimed and completed rows move over.

CREATE TABLE IF NOT EXISTS observer_job_keys (
    unique_key text PRIMARY KEY,
    job_id     bigint NOT NULL
);

CREATE TABLE IF NOT EXISTS observer_jobs_completed (
    id            bigint PRIMARY KEY,
    queue_name    text NOT NULL,
    kind          text NOT NULL,
    payload       jsonb NOT NULL,
    unique_key    text,
    priority      integer NOT NULL,
    run_at        timestamptz NOT NULL,
    attempts      integer NOT NULL,
    max_attempts  integer NOT NULL,
    last_error    text,
    worker_id     text,
    heartbeat_at  timestamptz,
    created_at    timestamptz NOT NULL,
    started_at    timestamptz,
    completed_at  timestamptz NOT NULL DEFAULT now()
);

INSERT INTO observer_job_keys (unique_key, job_id)
SELECT unique_key, id FROM observer_jobs WHERE unique_key IS NOT NULL
ON CONFLICT (unique_key) DO NOTHING;

WITH moved AS (
    DELETE FROM observer_jobs WHERE status = 'completed'
    RETURNING id, queue_name, kind, payload, unique_key, priority, run_at, attempts,
              max_attempts, last_error, worker_id, heartbeat_at, created_at, started_at,
              completed_at
)
INSERT INTO observer_jobs_completed (id, queue_name, kind, payload, unique_key, priority, run_at,
    attempts, max_attempts, last_error, worker_id, heartbeat_at, created_at, started_at,
    completed_at)
SELECT id, queue_name, kind, payload, unique_key, priority, run_at, attempts, max_attempts,
       last_error, worker_id, heartbeat_at, created_at, started_at, coalesce(completed_at, now())
FROM moved
ON CONFLICT (id) DO NOTHING;

-- `observer_job_keys` arbitrates keys now; the row-level unique index only cost index entries.
DROP INDEX IF EXISTS observer_jobs_unique_key;
-- The stale-job rescue (every `stale_after / 2`) scans the live jobs instead: this index cost an
-- entry per dequeue and per heartbeat, and tempted the planner away from the primary key when
-- completing a batch (it scanned every processing job to find the few being completed).
DROP INDEX IF EXISTS observer_jobs_processing;

ALTER TABLE observer_jobs DROP CONSTRAINT IF EXISTS observer_jobs_status_check;
ALTER TABLE observer_jobs ADD CONSTRAINT observer_jobs_status_check
    CHECK (status IN ('pending', 'processing', 'failed'));
