-- Capture at writer speed, part 6: inserts get a capture function of their own. A table captured
-- by the lean function now has two row triggers: `observers_capture` (AFTER UPDATE OR DELETE,
-- `observers_capture()` as before) and `observers_capture_insert` (AFTER INSERT,
-- `observers_capture_insert()`). The insert function computes no old-row image, writes the
-- operation as a constant, and reads a tenant column only when the trigger names one (a third
-- argument; `capture enable` passes it only then): about 16,000 server instructions fewer per
-- captured insert (callgrind, docs/benchmarks.md). Tables with a column that can hold json keep
-- one trigger on `observers_capture_json()` for all three operations.
--
-- The keying part repeats `observers_capture()` of migration 026 on purpose: a shared helper
-- would add a function call to every captured row.
DO $migration$
DECLARE
    s   text := (SELECT n.nspname
                   FROM pg_catalog.pg_class c
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.oid = 'observer_change_log'::regclass);
    seq text := pg_catalog.pg_get_serial_sequence(format('%I.observer_change_log', s), 'id');
BEGIN
    EXECUTE format($function$
CREATE OR REPLACE FUNCTION %1$I.observers_capture_insert() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
AS $body$
DECLARE
    new_row   pg_catalog.jsonb := pg_catalog.to_jsonb(NEW);
    key       pg_catalog.text := new_row OPERATOR(pg_catalog.->>) TG_ARGV[1];
    key_error pg_catalog.text;
BEGIN
    IF key IS NULL THEN
        -- The id column is NULL or missing: key by the primary key, or record why not.
        SELECT CASE WHEN pg_catalog.count(*) OPERATOR(pg_catalog.=) 1
                    THEN pg_catalog.min(new_row OPERATOR(pg_catalog.->>) a.attname::pg_catalog.text)
                    ELSE pg_catalog.jsonb_agg(new_row OPERATOR(pg_catalog.->) a.attname::pg_catalog.text
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
                'cannot key a insert: id column %%s is %%s and the table has no primary key',
                pg_catalog.quote_ident(TG_ARGV[1]),
                CASE WHEN new_row OPERATOR(pg_catalog.?) TG_ARGV[1] THEN 'null'
                     ELSE 'not in the row (renamed or dropped)' END);
        END IF;
    END IF;

    IF TG_NARGS OPERATOR(pg_catalog.>) 2 THEN
        INSERT INTO %1$I.observer_change_log (entity_type, entity_id, operation, tenant_id, user_id, after)
        VALUES (
            TG_ARGV[0],
            key,
            'insert',
            coalesce(new_row OPERATOR(pg_catalog.->>) TG_ARGV[2],
                     pg_catalog.current_setting('observers.tenant_id', true)),
            pg_catalog.current_setting('observers.user_id', true),
            new_row
        );
    ELSE
        INSERT INTO %1$I.observer_change_log (entity_type, entity_id, operation, tenant_id, user_id, after)
        VALUES (
            TG_ARGV[0],
            key,
            'insert',
            pg_catalog.current_setting('observers.tenant_id', true),
            pg_catalog.current_setting('observers.user_id', true),
            new_row
        );
    END IF;

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
    EXECUTE format('REVOKE ALL ON FUNCTION %I.observers_capture_insert() FROM PUBLIC', s);
END
$migration$;

-- The owner role of migration 029 owns this function too.
DO $migration$
DECLARE
    def text := pg_catalog.pg_get_functiondef('observers_capture_reown()'::pg_catalog.regprocedure);
    was text := $was$ARRAY['observers_capture()', 'observers_capture_json()',$was$;
BEGIN
    IF pg_catalog.strpos(def, was) = 0 THEN
        RAISE EXCEPTION 'function observers_capture_reown() is not the one migration 029 installed';
    END IF;
    EXECUTE pg_catalog.replace(def, was,
        $now$ARRAY['observers_capture()', 'observers_capture_json()', 'observers_capture_insert()',$now$);
END
$migration$;

SELECT observers_capture_reown();

-- Existing lean capture triggers split in two, with their arguments (the tenant column only when
-- one is named) and their state (disabled, or firing always or on replicas only).
DO $migration$
DECLARE
    r     record;
    state text;
BEGIN
    FOR r IN SELECT t.tgrelid::pg_catalog.regclass AS rel, t.tgenabled,
                    pg_catalog.pg_get_triggerdef(t.oid) AS def
               FROM pg_catalog.pg_trigger t
               JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
              WHERE t.tgname = 'observers_capture' AND p.proname = 'observers_capture'
                AND NOT t.tgisinternal AND (t.tgtype::int & 4) <> 0
    LOOP
        EXECUTE format('DROP TRIGGER observers_capture ON %s', r.rel);
        EXECUTE format('DROP TRIGGER IF EXISTS observers_capture_insert ON %s', r.rel);
        -- `CREATE TRIGGER observers_capture AFTER INSERT OR DELETE OR UPDATE ON t ...
        -- EXECUTE FUNCTION s.observers_capture('E', 'id', 'tenant')`
        EXECUTE regexp_replace(r.def, ' AFTER INSERT OR ', ' AFTER ');
        EXECUTE regexp_replace(
                    regexp_replace(
                        regexp_replace(r.def, '^CREATE TRIGGER observers_capture AFTER [A-Z ]+ ON ',
                                       'CREATE TRIGGER observers_capture_insert AFTER INSERT ON '),
                        'EXECUTE FUNCTION (\S*)observers_capture\(',
                        'EXECUTE FUNCTION \1observers_capture_insert('),
                    ', ''''\)$', ')');
        IF r.tgenabled <> 'O' THEN
            state := CASE r.tgenabled WHEN 'D' THEN 'DISABLE' WHEN 'A' THEN 'ENABLE ALWAYS'
                                      ELSE 'ENABLE REPLICA' END;
            EXECUTE format('ALTER TABLE %s %s TRIGGER observers_capture, %s TRIGGER observers_capture_insert',
                           r.rel, state, state);
        END IF;
    END LOOP;
END
$migration$;
