-- Capture at writer speed (docs/postgres.md, "What capture costs the writer").
--
-- 1. No NOTIFY from writers: a notifying commit takes a cluster-wide lock, so every transaction
--    that wrote a captured row serialized at commit. Listeners poll the read horizon instead,
--    tightly while changes flow and backing off to `[source] poll_interval` when idle.
-- 2. The trigger no longer computes the `changed` column (a jsonb diff of every update, a third
--    of the trigger's time): the listener computes field changes from `before` and `after`, as it
--    always did. The column stays, filled only by writers that send it (Debezium ingest).
--
-- The body is otherwise 0010's.
DROP TRIGGER IF EXISTS observer_change_log_notify ON observer_change_log;
DROP FUNCTION IF EXISTS observers_notify();

DO $migration$
DECLARE
    s text := (SELECT n.nspname
                 FROM pg_catalog.pg_class c
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                WHERE c.oid = 'observer_change_log'::regclass);
BEGIN
    EXECUTE format($function$
CREATE OR REPLACE FUNCTION %1$I.observers_capture() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $body$
DECLARE
    entity     text := TG_ARGV[0];
    id_col     text := TG_ARGV[1];
    tenant_col text := NULLIF(TG_ARGV[2], '');
    old_row    jsonb;
    new_row    jsonb;
    cur_row    jsonb;
    key        text;
    key_error  text;
    change_id  bigint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        new_row := to_jsonb(NEW);
        cur_row := new_row;
    ELSIF TG_OP = 'UPDATE' THEN
        old_row := to_jsonb(OLD);
        new_row := to_jsonb(NEW);
        cur_row := new_row;
    ELSE
        old_row := to_jsonb(OLD);
        cur_row := old_row;
    END IF;

    key := cur_row ->> id_col;
    IF key IS NULL THEN
        SELECT CASE WHEN count(*) = 1 THEN min(cur_row ->> a.attname)
                    ELSE jsonb_agg(cur_row -> a.attname ORDER BY k.ord)::text END
          INTO key
          FROM pg_catalog.pg_index i
         CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
          JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         WHERE i.indrelid = TG_RELID AND i.indisprimary;
        IF key IS NULL THEN
            key := '';
            key_error := format(
                'cannot key a %%s: id column %%s is %%s and the table has no primary key',
                lower(TG_OP), quote_ident(id_col),
                CASE WHEN cur_row ? id_col THEN 'null' ELSE 'not in the row (renamed or dropped)' END);
        END IF;
    END IF;

    INSERT INTO %1$I.observer_change_log (entity_type, entity_id, operation, tenant_id, user_id, before, after)
    VALUES (
        entity,
        key,
        lower(TG_OP),
        coalesce(cur_row ->> tenant_col, NULLIF(current_setting('observers.tenant_id', true), '')),
        NULLIF(current_setting('observers.user_id', true), ''),
        old_row,
        new_row
    )
    RETURNING id INTO change_id;

    IF key_error IS NOT NULL THEN
        INSERT INTO %1$I.observer_capture_errors (table_schema, table_name, entity_type, change_id, error)
        VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, entity, change_id, key_error);
    END IF;
    RETURN NULL;
END;
$body$
$function$, s);
    EXECUTE format('REVOKE ALL ON FUNCTION %I.observers_capture() FROM PUBLIC', s);
END
$migration$;
