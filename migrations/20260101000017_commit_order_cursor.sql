-- The cursor becomes the change-log id, read below a horizon taken from locks that writing
-- transactions hold (docs/postgres.md, "The cursor"). Until now the cursor was the pair
-- (txid, id), read below the snapshot's xmin: transaction-id order is not commit order, and any
-- open write transaction in the database, captured or not, held back all delivery.
--
-- Writers: before a transaction's first insert into the change log, a statement trigger takes a
-- shared, transaction-scoped advisory lock whose key carries a lower bound of every id the
-- transaction will get (the sequence's last value, read before the first id is drawn). The lock
-- goes with the transaction, after its rows became visible.
--
-- Readers: `observers_change_horizon()` reads the sequence's last value, then the lowest key of
-- those locks; every id at or below the smaller of the two is final (committed and visible to
-- the next statement, or rolled back). The reader then reads ids after its cursor up to the
-- horizon, in id order, in a later statement.
--
-- Per-entity order: the id is drawn by the AFTER ROW capture trigger while the writer holds the
-- row's lock (or the unique-index entry of an inserted key), so for one row the id order is the
-- commit order.
DO $migration$
DECLARE
    s   text := (SELECT n.nspname
                   FROM pg_catalog.pg_class c
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.oid = 'observer_change_log'::regclass);
    seq text := pg_catalog.pg_get_serial_sequence(format('%I.observer_change_log', s), 'id');
BEGIN
    -- No writer is between its first id and its commit while the cursors are converted: SHARE
    -- waits for the transactions writing the log and holds new ones until this one commits.
    EXECUTE format('LOCK TABLE %I.observer_change_log IN SHARE MODE', s);

    -- Each backend must draw ids from the sequence itself, never from a cached range.
    EXECUTE format('ALTER TABLE %I.observer_change_log ALTER COLUMN id SET CACHE 1', s);

    EXECUTE format($function$
CREATE OR REPLACE FUNCTION %1$I.observers_change_log_lock() RETURNS trigger
LANGUAGE plpgsql AS $body$
DECLARE
    low bigint;
BEGIN
    -- Once per transaction: the setting is transaction-local, and so is the lock (both are undone
    -- together when a subtransaction rolls back).
    IF pg_catalog.current_setting('observers.change_log_lock', true) IS DISTINCT FROM 'held' THEN
        low := coalesce(pg_catalog.pg_sequence_last_value(%2$L::regclass), 0) & 4294967295;
        PERFORM pg_catalog.pg_advisory_xact_lock_shared(
            1329746774,
            (CASE WHEN low >= 2147483648 THEN low - 4294967296 ELSE low END)::int4);
        PERFORM pg_catalog.set_config('observers.change_log_lock', 'held', true);
    END IF;
    RETURN NULL;
END;
$body$
$function$, s, seq);

    EXECUTE format($function$
CREATE OR REPLACE FUNCTION %1$I.observers_change_horizon() RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $body$
DECLARE
    last bigint;
    held bigint;
BEGIN
    -- First the sequence, then the locks: a writer that drew an id at or below `last` took its
    -- lock before, so it is either listed below or already visible.
    last := coalesce(pg_sequence_last_value(%2$L::regclass), 0);
    SELECT min(last - ((last - l.objid::text::bigint) & 4294967295))
      INTO held
      FROM pg_locks l
     WHERE l.locktype = 'advisory'
       AND l.classid = 1329746774::oid
       AND l.objsubid = 2
       AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database());
    RETURN least(last, held);
END;
$body$
$function$, s, seq);

    EXECUTE format('DROP TRIGGER IF EXISTS observer_change_log_lock ON %I.observer_change_log', s);
    EXECUTE format(
        'CREATE TRIGGER observer_change_log_lock BEFORE INSERT ON %I.observer_change_log
             FOR EACH STATEMENT EXECUTE FUNCTION %I.observers_change_log_lock()', s, s);

    -- Each consumer resumes just before the first row it had not passed in (txid, id) order;
    -- with no such row, after every id drawn so far. Rows it had passed that sit above that id
    -- are delivered again (at-least-once), none is skipped.
    EXECUTE format($sql$
        INSERT INTO %1$I.observer_checkpoints_history (listener_id, old_txid, old_id, new_txid, new_id, reason, changed_by)
        SELECT c.listener_id, c.cursor_txid, c.cursor_id, 0, n.id, 'upgrade: the cursor is the change-log id', 'observers migrate'
          FROM %1$I.observer_checkpoints c
         CROSS JOIN LATERAL (
               SELECT coalesce(
                          (SELECT min(l.id) - 1 FROM %1$I.observer_change_log l
                            WHERE (l.txid, l.id) > (c.cursor_txid::text::xid8, c.cursor_id)),
                          greatest(c.cursor_id, coalesce(pg_catalog.pg_sequence_last_value(%2$L::regclass), 0))) AS id) n
         WHERE n.id <> c.cursor_id OR c.cursor_txid <> 0$sql$, s, seq);
    EXECUTE format($sql$
        UPDATE %1$I.observer_checkpoints c
           SET cursor_id = h.new_id, last_processed_id = h.new_id
          FROM (SELECT DISTINCT ON (listener_id) listener_id, new_id
                  FROM %1$I.observer_checkpoints_history
                 WHERE reason = 'upgrade: the cursor is the change-log id'
                 ORDER BY listener_id, id DESC) h
         WHERE h.listener_id = c.listener_id$sql$, s);
END
$migration$;

ALTER TABLE observer_checkpoints DROP CONSTRAINT IF EXISTS observer_checkpoints_valid_cursor;
ALTER TABLE observer_checkpoints DROP COLUMN IF EXISTS cursor_txid;
ALTER TABLE observer_checkpoints ADD CONSTRAINT observer_checkpoints_valid_cursor CHECK (cursor_id >= 0);
ALTER TABLE observer_checkpoints_history DROP COLUMN IF EXISTS old_txid;
ALTER TABLE observer_checkpoints_history DROP COLUMN IF EXISTS new_txid;

-- Reads, retention and backlogs go by id now; the writer keeps one index fewer.
DROP INDEX IF EXISTS observer_change_log_txid_id;
