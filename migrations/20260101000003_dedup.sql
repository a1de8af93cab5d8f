-- Deduplication claims (PostgresDedupStore): one row per key. A row is in progress while `done`
-- is false (held by `owner`), processed once `done` is true; either way it counts only until
-- `expires_at`. Expired rows are taken over by the next claim and purged in batches.
CREATE TABLE IF NOT EXISTS observer_dedup (
    key        text PRIMARY KEY,
    owner      text,
    done       boolean NOT NULL DEFAULT false,
    expires_at timestamptz NOT NULL
);

CREATE INDEX IF NOT EXISTS observer_dedup_expires_at ON observer_dedup (expires_at);
