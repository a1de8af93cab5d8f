-- The WAL source's direct delivery (`[source] wal_delivery = "direct"`): its consumer delivers
-- from the replication stream without copying into the change log. Its checkpoint row says the
-- id of the last event it saved (`cursor_id`, in the range of ids above 2^62 that only this
-- consumer hands out) and the end LSN of that event's transaction (`wal_lsn`), both written by
-- one statement: a restart streams from `wal_lsn` and numbers the events after it from
-- `cursor_id`, so a redelivered event keeps its id and its actions' idempotency keys.
ALTER TABLE observer_checkpoints ADD COLUMN IF NOT EXISTS wal_lsn pg_lsn;
