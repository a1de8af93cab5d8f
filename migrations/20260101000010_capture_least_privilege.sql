-- The capture trigger runs with least privilege for the writer: SECURITY DEFINER (it writes the
-- change log with its owner's rights, so application roles need no privilege on any observer_*
-- table and cannot insert events themselves), a pinned search_path (pg_catalog first, pg_temp
-- last, so no object of the writer's, temporary or not, can stand in for a built-in or for the
-- change log) and schema-qualified names for everything outside pg_catalog. EXECUTE is revoked
-- from PUBLIC: a role cannot attach the function to a table of its own to forge events (a
-- trigger's function is checked when the trigger is created, not when it fires).
--
-- The schema is the change log's, resolved now; the body is otherwise 0009's.
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
    changed    text[];
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
        SELECT coalesce(array_agg(n.key ORDER BY n.key), '{}')
          INTO changed
          FROM jsonb_each(new_row) AS n
         WHERE n.value IS DISTINCT FROM old_row -> n.key;
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

    INSERT INTO %1$I.observer_change_log (entity_type, entity_id, operation, tenant_id, user_id, before, after, changed)
    VALUES (
        entity,
        key,
        lower(TG_OP),
        coalesce(cur_row ->> tenant_col, NULLIF(current_setting('observers.tenant_id', true), '')),
        NULLIF(current_setting('observers.user_id', true), ''),
        old_row,
        new_row,
        changed
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
