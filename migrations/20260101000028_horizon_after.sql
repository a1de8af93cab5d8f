-- The wake-up poller's question, made cheap when nothing is new: `observers_change_horizon_after(k)`
-- is NULL when no change-log id above `k` has been drawn (the sequence's last value is at or
-- below it), and the horizon otherwise. The poller passes the highest id it knows is final and
-- read, so an idle instance's polls read the sequence only, not `pg_locks` (which
-- `observers_change_horizon()` scans, about 130 us).
DO $migration$
DECLARE
    s   text := (SELECT n.nspname
                   FROM pg_catalog.pg_class c
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.oid = 'observer_change_log'::regclass);
    seq text := pg_catalog.pg_get_serial_sequence(format('%I.observer_change_log', s), 'id');
BEGIN
    EXECUTE format($function$
CREATE OR REPLACE FUNCTION %1$I.observers_change_horizon_after(known pg_catalog.int8)
RETURNS pg_catalog.int8
LANGUAGE sql VOLATILE AS $body$
    SELECT CASE WHEN coalesce(pg_catalog.pg_sequence_last_value(%2$L::pg_catalog.regclass), 0)
                         OPERATOR(pg_catalog.>) known
                THEN %1$I.observers_change_horizon() END
$body$
$function$, s, seq);
END
$migration$;
