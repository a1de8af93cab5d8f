-- Capture at writer speed, part 4: the writer takes no lock of its own. The read horizon
-- (migration 0017) came from a shared advisory lock every transaction writing the change log
-- took in a statement trigger, keyed by the id sequence's value before its first id: about
-- 45,000 server instructions per single-row transaction (a plpgsql call, a sequence read, the
-- lock and a transaction-local marker). The reader now finds the writers in flight from the lock
-- PostgreSQL itself takes for any write: an INSERT into the change log holds ROW EXCLUSIVE on it
-- from before its first id is drawn until its transaction ends (its rows are then visible), or
-- until the savepoint that took it is rolled back.
--
-- What the advisory key told the reader (a bound below each writer's ids), the reader now
-- learns by remembering its last look. `observers_change_horizon_step(known, last_look,
-- holders, bounds)` is one look:
--   1. it reads the id sequence's last value L; when L <= known (the highest id the caller knows
--      is final), nothing was drawn past it, and it returns at once without scanning pg_locks:
--      every writer seen later draws above L;
--   2. then it lists the transactions holding the write lock (the holders);
--   3. each holder gets a bound below its ids: the one it had at the last look, if it was a
--      holder then; otherwise last_look, the L of the last look: it took the lock after that
--      look listed the holders, so it drew its ids after L was read (a prepared transaction not
--      seen before, and every holder at a first look, get `known` instead);
--   4. the horizon is the smaller of L and the lowest bound, and never below `known`;
--   5. rows committed right after it (ids one after another, read after the locks) are final
--      too, so a writer in flight holds back only what comes after its own first id.
-- A holder is named by its virtual transaction id (`v...`) and by each of its transaction ids
-- (`x...`), so a transaction that prepares for two-phase commit (its locks pass to the prepared
-- transaction) is still recognised by its transaction id.
--
-- `observers_change_horizon()` (and `observers_change_horizon_after(known)`, the poller's look
-- of migration 0028) keep their meaning for any reader still running older code: they look,
-- wait until the writers of that look have ended, and return the horizon.
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
    known pg_catalog.int8, last_look pg_catalog.int8, holders pg_catalog.text[],
    bounds pg_catalog.int8[],
    OUT horizon pg_catalog.int8, OUT next_look pg_catalog.int8, OUT next_holders pg_catalog.text[],
    OUT next_bounds pg_catalog.int8[], OUT scanned boolean)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $body$
DECLARE
    last    int8;
    lowest  int8;
    run_end int8;
BEGIN
    horizon := greatest(coalesce(known, 0), 0);
    scanned := false;
    -- First the sequence, then the locks (see above).
    last := coalesce(pg_sequence_last_value(%2$L::regclass), 0);
    next_look := last;
    IF last <= horizon THEN
        RETURN;
    END IF;
    scanned := true;
    WITH lock AS MATERIALIZED (
        -- One read of the lock table (the view reads every backend's locks).
        SELECT l.locktype, l.database, l.relation, l.transactionid, l.virtualtransaction, l.pid,
               l.mode
          FROM pg_locks l
         WHERE l.granted AND l.locktype IN ('relation', 'transactionid')
    ), holder AS (
        SELECT r.virtualtransaction AS vxid, bool_or(r.pid IS NULL) AS prepared
          FROM lock r
         WHERE r.locktype = 'relation'
           AND r.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
           AND r.relation = %3$L::regclass
           AND r.mode IN ('RowExclusiveLock', 'ShareRowExclusiveLock', 'ExclusiveLock',
                          'AccessExclusiveLock')
         GROUP BY r.virtualtransaction
    ), named AS (
        SELECT h.prepared,
               array_append(coalesce(array_agg('x' || t.transactionid::text)
                                         FILTER (WHERE t.transactionid IS NOT NULL), '{}'),
                            'v' || h.vxid) AS keys
          FROM holder h
          LEFT JOIN lock t ON t.locktype = 'transactionid' AND t.virtualtransaction = h.vxid
         GROUP BY h.vxid, h.prepared
    ), bounded AS (
        SELECT n.keys,
               coalesce((SELECT min(b.bound)
                           FROM unnest(holders, bounds) AS b(key, bound)
                          WHERE b.key = ANY (n.keys)),
                        CASE WHEN n.prepared OR last_look IS NULL THEN horizon
                             ELSE greatest(last_look, horizon) END) AS bound
          FROM named n
    )
    SELECT min(b.bound), array_agg(k.key), array_agg(b.bound)
      INTO lowest, next_holders, next_bounds
      FROM bounded b
     CROSS JOIN LATERAL unnest(b.keys) AS k(key);
    horizon := greatest(horizon, least(last, coalesce(lowest, last)));
    IF horizon < last THEN
        -- Committed rows right after the horizon are final too, up to the first id missing
        -- from them (this statement's snapshot is later than the lock read): a writer in flight
        -- does not hold back the rows committed before its first id.
        SELECT max(r.id) INTO run_end
          FROM (SELECT c.id, row_number() OVER (ORDER BY c.id) AS n
                  FROM %4$s c
                 WHERE c.id > horizon
                 ORDER BY c.id
                 LIMIT 100) r
         WHERE r.id = horizon + r.n;
        horizon := greatest(horizon, least(last, coalesce(run_end, horizon)));
    END IF;
END;
$body$
$function$, s, seq, format('%I.observer_change_log', s), format('%I.observer_change_log', s));

    -- One look, then looking again until the writers of that look have ended: every id up to the
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
    SELECT * INTO look FROM %1$I.observers_change_horizon_step(0, NULL, NULL, NULL);
    target := look.next_look;
    WHILE look.horizon < target LOOP
        PERFORM pg_sleep(0.001);
        SELECT * INTO look
          FROM %1$I.observers_change_horizon_step(look.horizon, look.next_look,
                                                   look.next_holders, look.next_bounds);
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
