-- Listener progress. The cursor is (cursor_txid, cursor_id); last_processed_id mirrors
-- cursor_id for tools that know the seeds' schema. lease_epoch fences writes under HA.
CREATE TABLE IF NOT EXISTS observer_checkpoints (
    listener_id        text PRIMARY KEY,
    cursor_txid        bigint NOT NULL DEFAULT 0,
    cursor_id          bigint NOT NULL DEFAULT 0,
    last_processed_id  bigint NOT NULL DEFAULT 0,
    last_processed_at  timestamptz NOT NULL DEFAULT now(),
    batch_size         integer NOT NULL DEFAULT 0,
    event_count        bigint NOT NULL DEFAULT 0,
    consecutive_errors integer NOT NULL DEFAULT 0,
    last_error         text,
    updated_by         text,
    lease_epoch        bigint,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT observer_checkpoints_valid_cursor CHECK (cursor_txid >= 0 AND cursor_id >= 0)
);

CREATE INDEX IF NOT EXISTS observer_checkpoints_updated_at ON observer_checkpoints (updated_at DESC);

-- Every manual or automatic move of a checkpoint that is not a plain forward save.
CREATE TABLE IF NOT EXISTS observer_checkpoints_history (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    listener_id text NOT NULL,
    old_txid    bigint,
    old_id      bigint,
    new_txid    bigint NOT NULL,
    new_id      bigint NOT NULL,
    reason      text NOT NULL,
    changed_by  text,
    changed_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS observer_checkpoints_history_listener ON observer_checkpoints_history (listener_id, changed_at DESC);

-- Failed actions (and undecodable change-log rows), kept for inspection and retry.
CREATE TABLE IF NOT EXISTS observer_dlq_items (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id      bigint NOT NULL,
    entity_type   text NOT NULL,
    entity_id     text NOT NULL,
    event         jsonb NOT NULL,
    observer      text NOT NULL,
    action_index  integer NOT NULL,
    action_type   text NOT NULL,
    error_code    text NOT NULL,
    error         text NOT NULL,
    attempts      integer NOT NULL DEFAULT 0,
    status        text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'resolved')),
    retry_count   integer NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_retry_at timestamptz
);

CREATE INDEX IF NOT EXISTS observer_dlq_items_status ON observer_dlq_items (status, created_at);
CREATE INDEX IF NOT EXISTS observer_dlq_items_observer ON observer_dlq_items (observer, created_at);

-- The audit log of processed events, indexed for search by the search issue.
CREATE TABLE IF NOT EXISTS observer_events (
    event_id           bigint NOT NULL,
    entity_type        text NOT NULL,
    entity_id          text NOT NULL,
    event_type         text NOT NULL,
    tenant_id          text,
    user_id            text,
    timestamp          timestamptz NOT NULL,
    data               jsonb,
    matched_observers  text[] NOT NULL DEFAULT '{}',
    successful_actions text[] NOT NULL DEFAULT '{}',
    failed_actions     text[] NOT NULL DEFAULT '{}',
    errors             text[] NOT NULL DEFAULT '{}',
    duration_ms        bigint NOT NULL DEFAULT 0,
    indexed_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id)
);

CREATE INDEX IF NOT EXISTS observer_events_entity ON observer_events (entity_type, entity_id, timestamp DESC);
CREATE INDEX IF NOT EXISTS observer_events_timestamp ON observer_events (timestamp DESC);
