-- Serial groups: jobs with the same `group_key` run one at a time, in id order (the order they
-- were enqueued: a listener enqueues an entity's changes in change-log order). The executor sets
-- `group_key = "{observer}:{action_index}:{entity_type}:{entity_id}"` for queued actions; a job
-- without a group (NULL, as every job enqueued before this migration) is not ordered.
--
-- Dequeue takes a grouped job only when no earlier job of its group is still live (pending,
-- including waiting for a retry, or processing): `NOT EXISTS` over this partial index. A job that
-- failed for good no longer holds its group back (it is dead-lettered). Jobs without a group
-- have no entry in the index and pay nothing.
ALTER TABLE observer_jobs ADD COLUMN IF NOT EXISTS group_key text;
ALTER TABLE observer_jobs_completed ADD COLUMN IF NOT EXISTS group_key text;

CREATE INDEX IF NOT EXISTS observer_jobs_group
    ON observer_jobs (group_key, id) WHERE group_key IS NOT NULL;
