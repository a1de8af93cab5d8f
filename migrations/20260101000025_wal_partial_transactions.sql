-- The WAL relay copies a source transaction bigger than one relay batch in parts: the commit LSN
-- of that transaction (the Begin message's final LSN) and how many of its changes, in stream
-- order, are already in the change log. A restart reads the transaction again from the slot and
-- skips that many; the slot is confirmed only once the whole transaction is copied.
ALTER TABLE observer_wal_progress ADD COLUMN IF NOT EXISTS partial_lsn pg_lsn;
ALTER TABLE observer_wal_progress ADD COLUMN IF NOT EXISTS partial_changes bigint NOT NULL DEFAULT 0;
