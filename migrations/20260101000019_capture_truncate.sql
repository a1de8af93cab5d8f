-- TRUNCATE of a captured table is captured: one change-log row of operation `truncate` for the
-- entity type, with an empty entity id and no row images. TRUNCATE fires no row triggers, so a
-- statement trigger `observers_capture_truncate` sits beside the row trigger; `capture enable`
-- installs both, and this migration adds it to every table captured before.
DO $migration$
DECLARE
    s text := (SELECT n.nspname
                 FROM pg_catalog.pg_class c
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                WHERE c.oid = 'observer_change_log'::regclass);
    k record;
BEGIN
    EXECUTE format($function$
CREATE OR REPLACE FUNCTION %1$I.observers_capture_truncate() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $body$
BEGIN
    INSERT INTO %1$I.observer_change_log (entity_type, entity_id, operation, tenant_id, user_id)
    VALUES (
        TG_ARGV[0],
        '',
        'truncate',
        NULLIF(current_setting('observers.tenant_id', true), ''),
        NULLIF(current_setting('observers.user_id', true), '')
    );
    RETURN NULL;
END;
$body$
$function$, s);
    EXECUTE format('REVOKE ALL ON FUNCTION %I.observers_capture_truncate() FROM PUBLIC', s);

    FOR k IN
        SELECT c.table_schema, c.table_name, c.entity_type
          FROM observer_captures c
          JOIN pg_catalog.pg_namespace n ON n.nspname = c.table_schema
          JOIN pg_catalog.pg_class r ON r.relnamespace = n.oid AND r.relname = c.table_name
         WHERE r.relkind IN ('r', 'p')
    LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS observers_capture_truncate ON %I.%I',
                       k.table_schema, k.table_name);
        EXECUTE format('CREATE TRIGGER observers_capture_truncate AFTER TRUNCATE ON %I.%I '
                       'FOR EACH STATEMENT EXECUTE FUNCTION %I.observers_capture_truncate(%L)',
                       k.table_schema, k.table_name, s, k.entity_type);
    END LOOP;
END
$migration$;
