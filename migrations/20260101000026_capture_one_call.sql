-- Capture at writer speed, part 3: fewer instructions per captured row (counted with callgrind
-- on a single-user server, docs/benchmarks.md).
--
-- 1. The change log's statement trigger loses its WHEN clause. PostgreSQL parses a trigger's WHEN
--    expression again for every statement that fires it, which cost more than the plpgsql call it
--    was meant to spare (about 33,000 instructions per statement against 13,000).
-- 2. The read-horizon lock is taken by that statement trigger alone (as migration 0017 had it),
--    so the capture function no longer checks for it: one place takes the lock, for every writer.
--    It takes the lock and records it in one statement (10,000 instructions fewer than three).
-- 3. The capture function evaluates fewer plpgsql expressions: `to_jsonb(OLD)` and
--    `to_jsonb(NEW)` are NULL when there is no such row, so no branch on the operation, and the
--    insert returns nothing (the rare path that records a key error reads the id with currval).
-- 4. The capture function no longer sets `search_path` on every call (setting and restoring it
--    cost about 16,000 instructions per row). It still runs with its owner's rights, so every
--    name in it, and in the statement trigger it fires, is schema-qualified: types, functions
--    and operators (`OPERATOR(pg_catalog.=)`; no `NULLIF` or `IS DISTINCT FROM`, which look `=`
--    up on the search path). A writer's own search_path cannot reach either function.
DO $migration$
DECLARE
    s   text := (SELECT n.nspname
                   FROM pg_catalog.pg_class c
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.oid = 'observer_change_log'::regclass);
    seq text := pg_catalog.pg_get_serial_sequence(format('%I.observer_change_log', s), 'id');
BEGIN
    EXECUTE format($function$
CREATE OR REPLACE FUNCTION %1$I.observers_change_log_lock() RETURNS trigger
LANGUAGE plpgsql AS $body$
BEGIN
    -- Once per transaction: the setting is transaction-local, and so is the lock (both are undone
    -- together when a subtransaction rolls back). One statement takes both; the key is the
    -- sequence's last value mod 2^32 as a signed int4 (flipping bit 31, then subtracting 2^31).
    IF coalesce(pg_catalog.current_setting('observers.change_log_lock', true)
                    OPERATOR(pg_catalog.<>) 'held', true) THEN
        PERFORM pg_catalog.pg_advisory_xact_lock_shared(
                    1329746774,
                    (((coalesce(pg_catalog.pg_sequence_last_value(%2$L::pg_catalog.regclass), 0)
                       OPERATOR(pg_catalog.&) 4294967295) OPERATOR(pg_catalog.#) 2147483648)
                     OPERATOR(pg_catalog.-) 2147483648)::pg_catalog.int4),
                pg_catalog.set_config('observers.change_log_lock', 'held', true);
    END IF;
    RETURN NULL;
END;
$body$
$function$, s, seq);

    EXECUTE format($function$
CREATE OR REPLACE FUNCTION %1$I.observers_capture() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
AS $body$
DECLARE
    old_row   pg_catalog.jsonb := pg_catalog.to_jsonb(OLD);
    new_row   pg_catalog.jsonb := pg_catalog.to_jsonb(NEW);
    key       pg_catalog.text := coalesce(new_row, old_row) OPERATOR(pg_catalog.->>) TG_ARGV[1];
    key_error pg_catalog.text;
BEGIN
    IF key IS NULL THEN
        -- The id column is NULL or missing: key by the primary key, or record why not.
        SELECT CASE WHEN pg_catalog.count(*) OPERATOR(pg_catalog.=) 1
                    THEN pg_catalog.min(coalesce(new_row, old_row)
                                            OPERATOR(pg_catalog.->>) a.attname::pg_catalog.text)
                    ELSE pg_catalog.jsonb_agg(coalesce(new_row, old_row)
                                                  OPERATOR(pg_catalog.->) a.attname::pg_catalog.text
                                              ORDER BY k.ord)::pg_catalog.text END
          INTO key
          FROM pg_catalog.pg_index i
         CROSS JOIN LATERAL pg_catalog.unnest(i.indkey::pg_catalog.int2[]) WITH ORDINALITY AS k(attnum, ord)
          JOIN pg_catalog.pg_attribute a
            ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid AND a.attnum OPERATOR(pg_catalog.=) k.attnum
         WHERE i.indrelid OPERATOR(pg_catalog.=) TG_RELID AND i.indisprimary;
        IF key IS NULL THEN
            key := '';
            key_error := pg_catalog.format(
                'cannot key a %%s: id column %%s is %%s and the table has no primary key',
                pg_catalog.lower(TG_OP), pg_catalog.quote_ident(TG_ARGV[1]),
                CASE WHEN coalesce(new_row, old_row) OPERATOR(pg_catalog.?) TG_ARGV[1] THEN 'null'
                     ELSE 'not in the row (renamed or dropped)' END);
        END IF;
    END IF;

    INSERT INTO %1$I.observer_change_log (entity_type, entity_id, operation, tenant_id, user_id, before, after)
    VALUES (
        TG_ARGV[0],
        key,
        pg_catalog.lower(TG_OP),
        coalesce(coalesce(new_row, old_row) OPERATOR(pg_catalog.->>) TG_ARGV[2],
                 CASE WHEN pg_catalog.current_setting('observers.tenant_id', true)
                               OPERATOR(pg_catalog.<>) ''
                      THEN pg_catalog.current_setting('observers.tenant_id', true) END),
        CASE WHEN pg_catalog.current_setting('observers.user_id', true) OPERATOR(pg_catalog.<>) ''
             THEN pg_catalog.current_setting('observers.user_id', true) END,
        old_row,
        new_row
    );

    IF key_error IS NOT NULL THEN
        -- currval: the id this session just drew for the row above.
        INSERT INTO %1$I.observer_capture_errors (table_schema, table_name, entity_type, change_id, error)
        VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[0],
                pg_catalog.currval(%2$L::pg_catalog.regclass), key_error);
    END IF;
    RETURN NULL;
END;
$body$
$function$, s, seq);
    EXECUTE format('REVOKE ALL ON FUNCTION %I.observers_capture() FROM PUBLIC', s);

    EXECUTE format('DROP TRIGGER IF EXISTS observer_change_log_lock ON %I.observer_change_log', s);
    EXECUTE format(
        'CREATE TRIGGER observer_change_log_lock BEFORE INSERT ON %I.observer_change_log
             FOR EACH STATEMENT EXECUTE FUNCTION %I.observers_change_log_lock()', s, s);
END
$migration$;
