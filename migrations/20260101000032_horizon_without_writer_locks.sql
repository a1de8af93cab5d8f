-- Capture at writer speed, part 4: the writer takes no lock of its own. The read horizon
-- (migration 0017) came from a shared advisory lock every transaction writing the change log
-- took in a statement trigger, about 45,000 server instructions per single-row transaction (a
-- plpgsql call, a sequence read, the lock and a transaction-local marker). The reader now finds
-- the writers in flight from the lock PostgreSQL itself takes for any write: an INSERT into the
-- change log holds ROW EXCLUSIVE on it from before its first id is drawn until its transaction
-- ends (its rows are then visible), or until the savepoint that took it is rolled back.
--
-- `observers_change_horizon_step(known, pending_last, pending)` is one look of a reader that
-- remembers its last look:
--   1. it reads the id sequence's last value L (when L <= known, nothing was drawn past what
--      the caller knows is final, and it returns at once without scanning pg_locks);
--   2. then it lists the transactions holding a write lock on the change log (the holders);
--   3. a candidate from an earlier look, (pending_last, pending), is final once none of its
--      holders holds the lock any more: every id at or below pending_last is then committed
--      and visible, or rolled back (its writer held the lock before drawing it, so it was listed
--      then, or had already ended);
--   4. with no holder at all, every id up to L is final; otherwise (L, holders) is the next
--      candidate, unless an earlier one is still waiting (it is kept, so it can resolve).
-- A holder is named by its virtual transaction id (`v...`) and by each of its transaction ids
-- (`x...`), so a transaction that prepares for two-phase commit (its locks pass to the prepared
-- transaction, whose virtual id may differ) is still recognised by its transaction id. A holder
-- that had no transaction id yet at the look (it took the lock, but its first row is not yet
-- written) is marked `?` in the candidate, and the current look marks `?` when a prepared
-- transaction holds the lock: such a candidate waits until no prepared transaction holds it.
--
-- `observers_change_horizon()` (and `observers_change_horizon_after(known)`, the poller's look
-- of migration 0028) keep their meaning for any reader still running older code: they look,
-- wait for the holders of that look to end, and return the horizon.
DO $migration$
DECLARE
    s   text := (SELECT n.nspname
                   FROM pg_catalog.pg_class c
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.oid = 'observer_change_log'::regclass);
    seq text := pg_catalog.pg_get_serial_sequence(format('%I.observer_change_log', s), 'id');
BEGIN
    EXECUTE format($function$
CREATE OR REPLACE FUNCTION %1$I.observers_change_horizon_step(
    known pg_catalog.int8, pending_last pg_catalog.int8, pending pg_catalog.text[],
    OUT horizon pg_catalog.int8, OUT next_last pg_catalog.int8, OUT next_pending pg_catalog.text[],
    OUT scanned boolean)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $body$
DECLARE
    last        int8;
    keys        text[];
    prepared    boolean;
    unnamed     boolean;
    current     text[];
BEGIN
    horizon := greatest(coalesce(known, 0), 0);
    scanned := false;
    -- First the sequence, then the locks (see above).
    last := coalesce(pg_sequence_last_value(%2$L::regclass), 0);
    IF last <= horizon THEN
        RETURN;
    END IF;
    scanned := true;
    WITH holder AS (
        SELECT r.virtualtransaction AS vxid, bool_or(r.pid IS NULL) AS prepared
          FROM pg_locks r
         WHERE r.locktype = 'relation'
           AND r.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
           AND r.relation = %3$L::regclass
           AND r.granted
           AND r.mode IN ('RowExclusiveLock', 'ShareRowExclusiveLock', 'ExclusiveLock',
                          'AccessExclusiveLock')
         GROUP BY r.virtualtransaction
    ), named AS (
        SELECT h.vxid, h.prepared,
               array_agg('x' || t.transactionid::text) FILTER (WHERE t.transactionid IS NOT NULL)
                   AS xids
          FROM holder h
          LEFT JOIN pg_locks t
            ON t.locktype = 'transactionid' AND t.virtualtransaction = h.vxid AND t.granted
         GROUP BY h.vxid, h.prepared
    )
    SELECT array_agg(DISTINCT k.k), bool_or(n.prepared), bool_or(n.xids IS NULL)
      INTO keys, prepared, unnamed
      FROM named n
     CROSS JOIN LATERAL unnest(array_append(coalesce(n.xids, '{}'), 'v' || n.vxid)) AS k(k);
    -- The current look marks a prepared holder with `?`; the candidate made of it marks a holder
    -- without a transaction id instead (see above).
    current := keys || CASE WHEN prepared THEN '{?}'::text[] ELSE '{}'::text[] END;
    IF pending_last IS NOT NULL AND NOT coalesce(pending && current, false) THEN
        horizon := greatest(horizon, pending_last);
        pending_last := NULL;
    END IF;
    IF keys IS NULL THEN
        horizon := greatest(horizon, last);
    ELSIF pending_last IS NOT NULL AND pending_last > horizon THEN
        next_last := pending_last;
        next_pending := pending;
    ELSE
        next_last := last;
        next_pending := keys || CASE WHEN unnamed THEN '{?}'::text[] ELSE '{}'::text[] END;
    END IF;
END;
$body$
$function$, s, seq, format('%I.observer_change_log', s));

    -- One look, then waiting for the writers in flight at that look to end: every id up to the
    -- sequence's value at the call is then final. Waits as long as such a writer stays open.
    EXECUTE format($function$
CREATE OR REPLACE FUNCTION %1$I.observers_change_horizon()
RETURNS pg_catalog.int8
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $body$
DECLARE
    look   record;
    target int8;
BEGIN
    SELECT * INTO look FROM %1$I.observers_change_horizon_step(0, NULL, NULL);
    target := coalesce(look.next_last, look.horizon);
    WHILE look.horizon < target LOOP
        PERFORM pg_sleep(0.001);
        SELECT * INTO look
          FROM %1$I.observers_change_horizon_step(look.horizon, look.next_last, look.next_pending);
    END LOOP;
    RETURN look.horizon;
END;
$body$
$function$, s);

    EXECUTE format($function$
CREATE OR REPLACE FUNCTION %1$I.observers_change_horizon_after(known pg_catalog.int8)
RETURNS pg_catalog.int8
LANGUAGE sql VOLATILE AS $body$
    SELECT CASE WHEN coalesce(pg_catalog.pg_sequence_last_value(%2$L::pg_catalog.regclass), 0)
                         OPERATOR(pg_catalog.>) known
                THEN %1$I.observers_change_horizon() END
$body$
$function$, s, seq);

    EXECUTE format('DROP TRIGGER IF EXISTS observer_change_log_lock ON %I.observer_change_log', s);
    EXECUTE format('DROP FUNCTION IF EXISTS %I.observers_change_log_lock()', s);
END
$migration$;
