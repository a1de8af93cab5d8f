-- The logical-replication source ([source] kind = "wal"): a capture says which kind installed
-- it, and the relay records, in the same transaction as the change-log rows it writes, the end
-- LSN of the last source transaction copied, so a restart never copies one twice.
ALTER TABLE observer_captures ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT 'trigger';

CREATE TABLE IF NOT EXISTS observer_wal_progress (
    slot_name  text PRIMARY KEY,
    commit_lsn pg_lsn NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The publication a "wal" capture added its table to (NULL for trigger captures).
ALTER TABLE observer_captures ADD COLUMN IF NOT EXISTS publication text;
