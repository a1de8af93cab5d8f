-- The job queue of queued actions and long retry schedules (observers-queue). Seed 003's
-- columns, with `payload` holding the event and the action reference, `attempts` /
-- `max_attempts` / `last_error` in place of retry_count / max_retries / error_message, and
-- `worker_id` holding the worker while a job is processing (kept afterwards as the last one).
CREATE TABLE IF NOT EXISTS observer_jobs (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue_name    text NOT NULL DEFAULT 'default',
    kind          text NOT NULL,
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'processing', 'completed', 'failed')),
    payload       jsonb NOT NULL,
    unique_key    text,
    priority      integer NOT NULL DEFAULT 0,
    run_at        timestamptz NOT NULL DEFAULT now(),
    attempts      integer NOT NULL DEFAULT 0,
    max_attempts  integer NOT NULL DEFAULT 8 CHECK (max_attempts >= 1),
    last_error    text,
    worker_id     text,
    heartbeat_at  timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    completed_at  timestamptz
);

-- Idempotent enqueue. Partial, so keyless jobs do not pay an index entry per update.
CREATE UNIQUE INDEX IF NOT EXISTS observer_jobs_unique_key
    ON observer_jobs (unique_key) WHERE unique_key IS NOT NULL;

-- The dequeue path: due pending jobs of a queue by priority, run_at, id.
CREATE INDEX IF NOT EXISTS observer_jobs_dequeue
    ON observer_jobs (queue_name, priority DESC, run_at, id) WHERE status = 'pending';
-- Stale-job rescue and heartbeats.
CREATE INDEX IF NOT EXISTS observer_jobs_processing
    ON observer_jobs (heartbeat_at) WHERE status = 'processing';
-- Operator listings and bulk retry of failed jobs.
CREATE INDEX IF NOT EXISTS observer_jobs_failed
    ON observer_jobs (id) WHERE status = 'failed';

-- Wakes idle workers (LISTEN observer_jobs) once per enqueueing statement.
CREATE OR REPLACE FUNCTION observer_jobs_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('observer_jobs', '');
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS observer_jobs_notify ON observer_jobs;
CREATE TRIGGER observer_jobs_notify
    AFTER INSERT ON observer_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION observer_jobs_notify();
