-- What `observers replay` and retention need.
--
-- observer_replays: one row per `observers replay` run. Its id makes the replay's idempotency
-- keys (`{event_id}:{observer}:{action_index}:replay-{id}`), so receivers that dedupe take a
-- replayed delivery as new.
CREATE TABLE IF NOT EXISTS observer_replays (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    window_from timestamptz NOT NULL,
    window_to   timestamptz NOT NULL,
    filter      jsonb NOT NULL DEFAULT '{}',
    dry_run     boolean NOT NULL,
    same_keys   boolean NOT NULL,
    events      bigint NOT NULL DEFAULT 0,
    actions     bigint NOT NULL DEFAULT 0,
    failed      bigint NOT NULL DEFAULT 0
);

-- Change-log rows deleted by a prune (manual or retention), counted per entity type and minute
-- of creation, so a replay can say how many changes of its window are gone.
CREATE TABLE IF NOT EXISTS observer_pruned_changes (
    entity_type text NOT NULL,
    minute      timestamptz NOT NULL,
    rows        bigint NOT NULL,
    max_id      bigint NOT NULL,
    PRIMARY KEY (minute, entity_type)
);

-- Replay and retention find rows by age: a BRIN index costs writers next to nothing (the log is
-- appended in creation order).
CREATE INDEX IF NOT EXISTS observer_change_log_created_brin
    ON observer_change_log USING brin (created_at);
